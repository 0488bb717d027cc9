//! `syn_flood`: many SYNs to one destination within a window, and few of
//! those connections completing their handshake.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
};

use serde_json::json;

use monitor_common::ip_proto;

use super::{config::SynFlood, Alert, Detector, Findings, PollEnd, Severity, Traffic};
use crate::{clock, docker::FlowEnd, model::key_addrs};

#[derive(Default)]
struct Target {
    /// (when, SYNs, completed handshakes) per poll.
    polls: VecDeque<(u64, u64, u64)>,
    /// SYNs by source name within the window's polls (approximate: kept
    /// while the target is busy, cleared when it goes quiet).
    sources: BTreeMap<String, (u64, FlowEnd)>,
    end: Option<FlowEnd>,
    /// SYNs seen since the last check.
    fresh: bool,
}

pub struct FloodDetector {
    config: SynFlood,
    targets: HashMap<(IpAddr, u16), Target>,
}

impl FloodDetector {
    pub fn new(config: &SynFlood) -> Self {
        Self {
            config: config.clone(),
            targets: HashMap::new(),
        }
    }

    /// SYNs (and handshakes completed) a flow added this poll.
    pub fn observe(
        &mut self,
        target: (IpAddr, u16),
        destination: &FlowEnd,
        source: &FlowEnd,
        syns: u64,
        completed: u64,
        now_ns: u64,
    ) {
        let entry = self.targets.entry(target).or_default();
        match entry.polls.back_mut() {
            Some((at, s, c)) if *at == now_ns => {
                *s += syns;
                *c += completed;
            }
            _ => entry.polls.push_back((now_ns, syns, completed)),
        }
        entry
            .sources
            .entry(Alert::end_name(source))
            .or_insert_with(|| (0, source.clone()))
            .0 += syns;
        if syns > 0 {
            entry.fresh = true;
            entry.end = Some(destination.clone());
        }
    }

    /// Closes a poll: alerts for targets over the threshold.
    pub fn check(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        let window_ns = u64::try_from(self.config.window.as_nanos()).unwrap_or(u64::MAX);
        let cutoff = now_ns.saturating_sub(window_ns);
        self.targets.retain(|_, target| {
            while target.polls.front().is_some_and(|(at, ..)| *at < cutoff) {
                target.polls.pop_front();
            }
            if target.polls.is_empty() {
                return false;
            }
            true
        });
        for ((ip, port), target) in &mut self.targets {
            if !std::mem::take(&mut target.fresh) {
                continue;
            }
            let (syns, completed) = target
                .polls
                .iter()
                .fold((0, 0), |(s, c), (_, syns, done)| (s + syns, c + done));
            let ratio = completed as f64 / syns.max(1) as f64;
            if syns < self.config.min_syns || ratio > self.config.max_completed_ratio {
                continue;
            }
            let Some(end) = target.end.clone() else {
                continue;
            };
            let Some((top, (_, source))) = target.sources.iter().max_by_key(|(_, (n, _))| *n)
            else {
                continue;
            };
            let by_source: BTreeMap<&String, u64> = target
                .sources
                .iter()
                .map(|(name, (n, _))| (name, *n))
                .collect();
            alerts.push(Alert {
                capture: None,
                time: clock::rfc3339_ms(now_ns),
                kind: "syn_flood",
                severity: Severity::Critical,
                summary: format!(
                    "{syns} SYNs to {}:{port} within {}, {completed} handshakes completed; most from {top}",
                    Alert::end_name(&end),
                    humantime::format_duration(self.config.window)
                ),
                evidence: json!({
                    "destination_ip": ip.to_string(),
                    "destination_port": port,
                    "syns": syns,
                    "completed": completed,
                    "completed_ratio": ratio,
                    "syns_by_source": by_source,
                    "window_seconds": self.config.window.as_secs_f64(),
                }),
                source: source.clone(),
                destination: Some(end),
            });
        }
    }
}

impl Detector for FloodDetector {
    fn traffic(&mut self, traffic: &Traffic<'_>, now_ns: u64) {
        let key = &traffic.record.key;
        if key.protocol != ip_proto::TCP || (traffic.syns == 0 && traffic.completed == 0) {
            return;
        }
        let (_, dst) = key_addrs(key);
        self.observe(
            (dst, key.dst_port),
            traffic.destination,
            traffic.source,
            traffic.syns,
            traffic.completed,
            now_ns,
        );
    }

    fn end_of_poll(&mut self, poll: &PollEnd<'_>, found: &mut Findings) {
        self.check(poll.now_ns, &mut found.alerts);
    }
}
