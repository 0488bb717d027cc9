//! `port_scan` (many ports of one destination) and `host_sweep` (many
//! destinations), from the outcomes of one source's attempts. Refused and
//! unanswered attempts weigh most: a scanner mostly finds nothing, a
//! busy client mostly finds its servers.

use std::{collections::HashMap, net::IpAddr};

use serde_json::json;

use super::{
    config::Scan,
    probes::{Probes, Tried},
    Alert, Attempt, Detector, Findings, PollEnd, Severity,
};
use crate::{docker::Directory, flows::outcome::Outcome, model::protocol_name};

/// `port_scan`: one source, many ports of one destination.
pub struct PortScan {
    config: Scan,
    ports: Probes<(String, IpAddr), u16>,
    /// The poll that last alerted on a key: evidence is built at most once
    /// per poll and source, however many attempts it makes.
    alerted: HashMap<(String, IpAddr), u64>,
}

/// `host_sweep`: one source, many destinations.
pub struct HostSweep {
    config: Scan,
    hosts: Probes<String, IpAddr>,
    alerted: HashMap<String, u64>,
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

impl PortScan {
    pub fn new(config: &Scan) -> Self {
        Self {
            ports: Probes::new(nanos(config.window)),
            config: config.clone(),
            alerted: HashMap::new(),
        }
    }
}

impl Detector for PortScan {
    fn attempt(&mut self, attempt: &Attempt, _: &Directory, found: &mut Findings) {
        if !attempt.has_ports() {
            return;
        }
        let now_ns = attempt.poll_ns;
        let source = Alert::end_name(&attempt.source);
        let key = (source.clone(), attempt.destination_ip);
        let score = self.ports.record(
            key.clone(),
            attempt.record.key.dst_port,
            weight(attempt.outcome, self.config.answered_weight),
            attempt.outcome,
            now_ns,
        );
        if score >= self.config.threshold
            && self.alerted.insert(key.clone(), now_ns) != Some(now_ns)
        {
            if let Some(tried) = self.ports.summary(&key) {
                found
                    .alerts
                    .push(port_scan_alert(&self.config, attempt, &source, &tried));
            }
        }
    }

    fn end_of_poll(&mut self, poll: &PollEnd<'_>, _: &mut Findings) {
        self.ports.expire(poll.now_ns);
        self.alerted.retain(|_, at| *at == poll.now_ns);
    }
}

impl HostSweep {
    pub fn new(config: &Scan) -> Self {
        Self {
            hosts: Probes::new(nanos(config.window)),
            config: config.clone(),
            alerted: HashMap::new(),
        }
    }
}

impl Detector for HostSweep {
    fn attempt(&mut self, attempt: &Attempt, _: &Directory, found: &mut Findings) {
        let now_ns = attempt.poll_ns;
        let source = Alert::end_name(&attempt.source);
        let score = self.hosts.record(
            source.clone(),
            attempt.destination_ip,
            weight(attempt.outcome, self.config.answered_weight),
            attempt.outcome,
            now_ns,
        );
        if score >= self.config.threshold
            && self.alerted.insert(source.clone(), now_ns) != Some(now_ns)
        {
            if let Some(tried) = self.hosts.summary(&source) {
                found
                    .alerts
                    .push(host_sweep_alert(&self.config, attempt, &source, &tried));
            }
        }
    }

    fn end_of_poll(&mut self, poll: &PollEnd<'_>, _: &mut Findings) {
        self.hosts.expire(poll.now_ns);
        self.alerted.retain(|_, at| *at == poll.now_ns);
    }
}

fn port_scan_alert(config: &Scan, attempt: &Attempt, source: &str, tried: &Tried<u16>) -> Alert {
    let destination = Alert::end_name(&attempt.destination);
    Alert {
        capture: None,
        time: attempt.time(),
        kind: "port_scan",
        severity: Severity::Warning,
        summary: format!(
            "{source} tried {} ports of {destination} within {}",
            tried.distinct,
            humantime::format_duration(config.window)
        ),
        evidence: json!({
            "distinct_ports": tried.distinct,
            "score": tried.score,
            "outcomes": tried.outcomes,
            "ports_sample": tried.sample,
            "protocol": protocol_name(attempt.record.key.protocol),
            "destination_ip": attempt.destination_ip.to_string(),
            "window_seconds": config.window.as_secs_f64(),
        }),
        source: attempt.source.clone(),
        destination: Some(attempt.destination.clone()),
    }
}

fn host_sweep_alert(
    config: &Scan,
    attempt: &Attempt,
    source: &str,
    tried: &Tried<IpAddr>,
) -> Alert {
    Alert {
        capture: None,
        time: attempt.time(),
        kind: "host_sweep",
        severity: Severity::Warning,
        summary: format!(
            "{source} tried {} addresses within {}",
            tried.distinct,
            humantime::format_duration(config.window)
        ),
        evidence: json!({
            "distinct_destinations": tried.distinct,
            "score": tried.score,
            "outcomes": tried.outcomes,
            "destinations_sample": tried.sample.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "window_seconds": config.window.as_secs_f64(),
        }),
        source: attempt.source.clone(),
        // A sweep has no one destination.
        destination: None,
    }
}
