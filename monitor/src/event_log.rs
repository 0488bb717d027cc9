//! What the agent has received from the ring buffer: totals per kind and a
//! bounded history of the latest events.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use serde::Serialize;

use crate::datapath::Event;
use crate::sync::lock;

/// Latest events kept for the API; older ones are only counted.
const HISTORY: usize = 1024;

#[derive(Default)]
pub struct EventLog {
    new_flow: AtomicU64,
    payload: AtomicU64,
    arp: AtomicU64,
    packet_sample: AtomicU64,
    undecodable: AtomicU64,
    recent: Mutex<VecDeque<Event>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventTotals {
    pub new_flow: u64,
    pub payload: u64,
    pub arp: u64,
    pub packet_sample: u64,
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
            undecodable: self.undecodable.load(Ordering::Relaxed),
        }
    }

    /// The latest events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        let recent = lock(&self.recent);
        recent.iter().cloned().collect()
    }
}
