//! The event ring, read by two threads: the ring reader, the one reader of
//! the kernel's ring, only drains it into batches; the event consumer hands
//! each batch to every consumer in turn, then into the event log the API
//! serves. A consumer that waits (the detectors, locked by the poller for a
//! whole poll) so never stops the draining: the ring is freed as fast as
//! it fills, and the batches wait in memory, up to [`QUEUED_BATCHES`].

use std::sync::{mpsc, Arc};

use crate::{
    clock,
    datapath::{events::DRAIN_INTERVAL, Event, EventRing},
    docker::Snapshot,
    event_log::{EventBatch, EventConsumer, EventLog},
    sync::Published,
};

/// Batches drained and not yet consumed, at most; past them the reader
/// waits and the ring fills, and what the kernel cannot queue it counts as
/// lost. A batch is what a wakeup (a quarter of the ring) or a drain
/// interval brings: eight hold two full rings, at most about 30 MiB.
pub const QUEUED_BATCHES: usize = 8;

/// One drain of the ring.
pub struct Drained {
    events: Vec<Event>,
    undecodable: usize,
    now_ns: u64,
}

pub struct EventReader {
    pub ring: EventRing,
    pub batches: mpsc::SyncSender<Drained>,
}

impl EventReader {
    /// Drains until `stop` is dropped; the consumer ends when the last
    /// batch sent is consumed.
    pub fn run(mut self, stop: &mpsc::Receiver<()>) {
        while let Err(mpsc::TryRecvError::Empty) = stop.try_recv() {
            self.ring.wait(DRAIN_INTERVAL);
            let mut events = Vec::new();
            let undecodable = self.ring.drain(&mut events);
            if events.is_empty() && undecodable == 0 {
                continue;
            }
            let drained = Drained {
                events,
                undecodable,
                now_ns: clock::monotonic_ns(),
            };
            if self.batches.send(drained).is_err() {
                return;
            }
        }
    }
}

pub struct EventConsumers {
    pub consumers: Vec<Box<dyn EventConsumer>>,
    pub log: Arc<EventLog>,
    pub docker: Published<Snapshot>,
}

impl EventConsumers {
    /// Consumes until the reader stops sending.
    pub fn run(mut self, batches: &mpsc::Receiver<Drained>) {
        for drained in batches {
            let docker = self.docker.load();
            let batch = EventBatch {
                events: &drained.events,
                undecodable: drained.undecodable,
                directory: &docker.directory,
                now_ns: drained.now_ns,
            };
            for consumer in &mut self.consumers {
                consumer.on_events(&batch);
            }
            self.log
                .record(drained.events.into_iter(), drained.undecodable);
        }
    }
}
