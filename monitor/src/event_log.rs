//! What the agent receives from the ring buffer: the contract of the
//! stages each batch is handed to, then the totals per kind and a bounded
//! history of the latest events, which the event consumer keeps.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use serde::Serialize;

use crate::{datapath::Event, docker::Directory, sync::lock};

/// One batch drained from the ring buffer, as every consumer sees it.
pub struct EventBatch<'a> {
    pub events: &'a [Event],
    /// Records in the batch that did not decode.
    pub undecodable: usize,
    /// Who the addresses and veths are now.
    pub directory: &'a Directory,
    /// CLOCK_MONOTONIC when the batch was read.
    pub now_ns: u64,
}

/// A stage fed by the ring buffer consumer, on its thread, per batch.
pub trait EventConsumer: Send {
    fn on_events(&mut self, batch: &EventBatch<'_>);
}

/// A consumer something else also reads (the detectors): locked per batch.
impl<T: EventConsumer> EventConsumer for std::sync::Arc<Mutex<T>> {
    fn on_events(&mut self, batch: &EventBatch<'_>) {
        lock(self).on_events(batch);
    }
}

/// Latest events kept for the API; older ones are only counted.
const HISTORY: usize = 1024;

#[derive(Default)]
pub struct EventLog {
    new_flow: AtomicU64,
    payload: AtomicU64,
    arp: AtomicU64,
    packet_sample: AtomicU64,
    dns: AtomicU64,
    undecodable: AtomicU64,
    recent: Mutex<VecDeque<Event>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventTotals {
    pub new_flow: u64,
    pub payload: u64,
    pub arp: u64,
    pub packet_sample: u64,
    pub dns: u64,
    pub undecodable: u64,
}

impl EventLog {
    pub fn record(&self, events: impl Iterator<Item = Event>, undecodable: usize) {
        self.undecodable
            .fetch_add(undecodable as u64, Ordering::Relaxed);
        let mut recent = lock(&self.recent);
        for event in events {
            let counter = match event {
                Event::NewFlow { .. } => &self.new_flow,
                Event::Payload { .. } => &self.payload,
                Event::Arp { .. } => &self.arp,
                Event::PacketSample { .. } => &self.packet_sample,
                Event::Dns { .. } => &self.dns,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if recent.len() == HISTORY {
                recent.pop_front();
            }
            recent.push_back(event);
        }
    }

    pub fn totals(&self) -> EventTotals {
        EventTotals {
            new_flow: self.new_flow.load(Ordering::Relaxed),
            payload: self.payload.load(Ordering::Relaxed),
            arp: self.arp.load(Ordering::Relaxed),
            packet_sample: self.packet_sample.load(Ordering::Relaxed),
            dns: self.dns.load(Ordering::Relaxed),
            undecodable: self.undecodable.load(Ordering::Relaxed),
        }
    }

    /// The latest events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        let recent = lock(&self.recent);
        recent.iter().cloned().collect()
    }
}
