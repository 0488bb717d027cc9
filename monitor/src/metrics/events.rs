//! What the ring buffer consumer received.

use std::sync::Arc;

use super::{Collector, Exposition, Kind};
use crate::event_log::EventLog;

/// `crossmon_events_total`.
pub struct EventsCollector {
    pub events: Arc<EventLog>,
}

impl Collector for EventsCollector {
    fn collect(&self, out: &mut Exposition) {
        let totals = self.events.totals();
        let mut family = out.family(
            "crossmon_events_total",
            "Events received from the kernel ring buffer, by kind.",
            Kind::Counter,
        );
        for (kind, n) in [
            ("new_flow", totals.new_flow),
            ("payload", totals.payload),
            ("arp", totals.arp),
            ("packet_sample", totals.packet_sample),
            ("dns", totals.dns),
            ("undecodable", totals.undecodable),
        ] {
            family.sample(&[("kind", kind)], n);
        }
    }
}
