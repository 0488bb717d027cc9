//! `port_scan` (many ports of one destination) and `host_sweep` (many
//! destinations), from the outcomes of one source's attempts. Refused and
//! unanswered attempts weigh most: a scanner mostly finds nothing, a
//! busy client mostly finds its servers.

use std::{collections::HashMap, net::IpAddr};

use serde_json::json;

use super::{
    config::Scan,
    probes::{Probes, Tried},
    Alert, Attempt, Severity,
};
use crate::{flows::outcome::Outcome, model::protocol_name};

pub struct ScanDetector {
    port_scan: Scan,
    host_sweep: Scan,
    ports: Probes<(String, IpAddr), u16>,
    hosts: Probes<String, IpAddr>,
    /// The poll that last alerted on a key: evidence is built at most once
    /// per poll and source, however many attempts it makes.
    alerted_ports: HashMap<(String, IpAddr), u64>,
    alerted_hosts: HashMap<String, u64>,
}

fn weight(outcome: Outcome, answered_weight: f64) -> f64 {
    if outcome.delivered() && outcome != Outcome::Refused {
        answered_weight
    } else {
        1.0
    }
}

fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl ScanDetector {
    pub fn new(port_scan: Scan, host_sweep: Scan) -> Self {
        Self {
            ports: Probes::new(nanos(port_scan.window)),
            hosts: Probes::new(nanos(host_sweep.window)),
            port_scan,
            host_sweep,
            alerted_ports: HashMap::new(),
            alerted_hosts: HashMap::new(),
        }
    }

    pub fn observe(&mut self, attempt: &Attempt, now_ns: u64, alerts: &mut Vec<Alert>) {
        let source = Alert::end_name(&attempt.source);
        if self.port_scan.enabled && attempt.has_ports() {
            let key = (source.clone(), attempt.destination_ip);
            let score = self.ports.record(
                key.clone(),
                attempt.record.key.dst_port,
                weight(attempt.outcome, self.port_scan.answered_weight),
                attempt.outcome,
                now_ns,
            );
            if score >= self.port_scan.threshold
                && self.alerted_ports.insert(key.clone(), now_ns) != Some(now_ns)
            {
                if let Some(tried) = self.ports.summary(&key) {
                    alerts.push(self.port_scan_alert(attempt, &source, &tried));
                }
            }
        }
        if self.host_sweep.enabled {
            let score = self.hosts.record(
                source.clone(),
                attempt.destination_ip,
                weight(attempt.outcome, self.host_sweep.answered_weight),
                attempt.outcome,
                now_ns,
            );
            if score >= self.host_sweep.threshold
                && self.alerted_hosts.insert(source.clone(), now_ns) != Some(now_ns)
            {
                if let Some(tried) = self.hosts.summary(&source) {
                    alerts.push(self.host_sweep_alert(attempt, &source, &tried));
                }
            }
        }
    }

    pub fn expire(&mut self, now_ns: u64) {
        self.ports.expire(now_ns);
        self.hosts.expire(now_ns);
        self.alerted_ports.retain(|_, at| *at == now_ns);
        self.alerted_hosts.retain(|_, at| *at == now_ns);
    }

    fn port_scan_alert(&self, attempt: &Attempt, source: &str, tried: &Tried<u16>) -> Alert {
        let destination = Alert::end_name(&attempt.destination);
        Alert {
            time: attempt.time(),
            kind: "port_scan",
            severity: Severity::Warning,
            summary: format!(
                "{source} tried {} ports of {destination} within {}",
                tried.distinct,
                humantime::format_duration(self.port_scan.window)
            ),
            evidence: json!({
                "distinct_ports": tried.distinct,
                "score": tried.score,
                "outcomes": tried.outcomes,
                "ports_sample": tried.sample,
                "protocol": protocol_name(attempt.record.key.protocol),
                "destination_ip": attempt.destination_ip.to_string(),
                "window_seconds": self.port_scan.window.as_secs_f64(),
            }),
            source: attempt.source.clone(),
            destination: Some(attempt.destination.clone()),
        }
    }

    fn host_sweep_alert(&self, attempt: &Attempt, source: &str, tried: &Tried<IpAddr>) -> Alert {
        Alert {
            time: attempt.time(),
            kind: "host_sweep",
            severity: Severity::Warning,
            summary: format!(
                "{source} tried {} addresses within {}",
                tried.distinct,
                humantime::format_duration(self.host_sweep.window)
            ),
            evidence: json!({
                "distinct_destinations": tried.distinct,
                "score": tried.score,
                "outcomes": tried.outcomes,
                "destinations_sample": tried.sample.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "window_seconds": self.host_sweep.window.as_secs_f64(),
            }),
            source: attempt.source.clone(),
            // A sweep has no one destination.
            destination: None,
        }
    }
}
