//! Detections: alerts on attacks between containers, each with evidence,
//! de-duplicated, logged as JSON lines and counted.

mod alert;
mod host_access;
mod sink;
mod spoof;

pub use alert::{Alert, Severity};
pub use sink::{AlertLog, AlertSink};

use std::{
    collections::HashSet,
    sync::{Mutex, MutexGuard},
};

use monitor_common::FlowKey;

use crate::{
    datapath::Event,
    docker::Directory,
    flows::{FlowRecord, FlowTable},
};

pub struct Detectors {
    sink: Mutex<AlertSink>,
    /// Flows already checked by the per-flow detectors (spoofed source,
    /// host access): they depend only on the flow's key, veth and opening,
    /// so once per flow is enough.
    spoof_checked: Mutex<HashSet<FlowKey>>,
}

impl Detectors {
    pub fn new(sink: AlertSink) -> Self {
        Self {
            sink: Mutex::new(sink),
            spoof_checked: Mutex::default(),
        }
    }

    pub fn sink(&self) -> MutexGuard<'_, AlertSink> {
        self.sink
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After each poll of the flow map.
    pub fn on_poll(
        &self,
        table: &FlowTable,
        expired: &[FlowRecord],
        directory: &Directory,
        now_ns: u64,
    ) {
        let mut checked = self
            .spoof_checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut alerts = Vec::new();
        for record in table.records() {
            if checked.contains(&record.key) {
                continue;
            }
            match spoof::ip_spoof(&record, directory) {
                spoof::Check::Undecided => continue,
                spoof::Check::Clean => {}
                spoof::Check::Spoofed(alert) => alerts.push(*alert),
            }
            alerts.extend(host_access::host_access(&record, directory));
            checked.insert(record.key);
        }
        for record in expired {
            checked.remove(&record.key);
        }
        drop(checked);
        let mut sink = self.sink();
        for alert in alerts {
            sink.raise(alert, now_ns);
        }
    }

    /// For each batch of events from the kernel.
    pub fn on_events(&self, events: &[Event], directory: &Directory, now_ns: u64) {
        let alerts: Vec<Alert> = events
            .iter()
            .filter_map(|event| match event {
                Event::Arp {
                    seen, eth_src, arp, ..
                } => spoof::arp_spoof(seen, *eth_src, arp, directory),
                _ => None,
            })
            .collect();
        let mut sink = self.sink();
        for alert in alerts {
            sink.raise(alert, now_ns);
        }
    }
}
