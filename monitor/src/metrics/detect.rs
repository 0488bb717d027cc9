//! What the detectors found: alerts raised, and the protocols connections
//! spoke.

use std::sync::{Arc, Mutex};

use super::{Collector, Exposition, Kind};
use crate::{alert::AlertSink, detect::Detectors, sync::lock};

/// `crossmon_alerts_total`.
pub struct AlertsCollector {
    pub sink: Arc<Mutex<AlertSink>>,
}

impl Collector for AlertsCollector {
    fn collect(&self, out: &mut Exposition) {
        let sink = lock(&self.sink);
        let mut family = out.family(
            "crossmon_alerts_total",
            "Alerts raised (after de-duplication), by kind, severity and source.",
            Kind::Counter,
        );
        for ((kind, severity, source), n) in sink.counts() {
            family.sample(
                &[
                    ("kind", kind),
                    ("severity", severity.name()),
                    ("source", source),
                ],
                *n,
            );
        }
    }
}

/// `crossmon_connection_protocols_total`.
pub struct ProtocolsCollector {
    pub detectors: Arc<Mutex<Detectors>>,
}

impl Collector for ProtocolsCollector {
    fn collect(&self, out: &mut Exposition) {
        let detectors = lock(&self.detectors);
        let mut family = out.family(
            "crossmon_connection_protocols_total",
            "Connections by the protocol their first payload bytes show, and whether they were encrypted.",
            Kind::Counter,
        );
        for ((source, destination, protocol, encrypted), n) in detectors.protocol_counts() {
            family.sample(
                &[
                    ("source", source),
                    ("destination", destination),
                    ("protocol", protocol),
                    ("encrypted", if *encrypted { "true" } else { "false" }),
                ],
                *n,
            );
        }
    }
}
