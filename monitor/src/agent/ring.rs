//! The ring buffer consumer: on its own thread, the one reader of the
//! kernel's event ring. Each batch goes to every consumer in turn, then
//! into the event log the API serves.

use std::sync::{mpsc, Arc};

use crate::{
    clock,
    datapath::{events::DRAIN_INTERVAL, EventRing},
    docker::Snapshot,
    event_log::{EventBatch, EventConsumer, EventLog},
    sync::Published,
};

pub struct RingConsumer {
    pub ring: EventRing,
    pub consumers: Vec<Box<dyn EventConsumer>>,
    pub log: Arc<EventLog>,
    pub docker: Published<Snapshot>,
}

impl RingConsumer {
    /// Drains until `stop` is dropped.
    pub fn run(mut self, stop: &mpsc::Receiver<()>) {
        let mut events = Vec::new();
        while let Err(mpsc::TryRecvError::Empty) = stop.try_recv() {
            self.ring.wait(DRAIN_INTERVAL);
            let undecodable = self.ring.drain(&mut events);
            if events.is_empty() && undecodable == 0 {
                continue;
            }
            let docker = self.docker.load();
            let batch = EventBatch {
                events: &events,
                undecodable,
                directory: &docker.directory,
                now_ns: clock::monotonic_ns(),
            };
            for consumer in &mut self.consumers {
                consumer.on_events(&batch);
            }
            self.log.record(events.drain(..), undecodable);
        }
    }
}
