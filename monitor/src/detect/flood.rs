//! `syn_flood`: many SYNs to one destination within a window, and few of
//! those connections completing their handshake.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

use serde_json::json;

use monitor_common::ip_proto;

use super::{config::SynFlood, Alert, ByKey, Detector, Findings, PollEnd, Severity, Traffic};
use crate::{clock, docker::FlowEnd, model::key_addrs};

#[derive(Default)]
struct Target {
    /// (when, SYNs, completed handshakes) per poll.
    polls: VecDeque<(u64, u64, u64)>,
    /// SYNs by source name within the window's polls (approximate: kept
    /// while the target is busy, cleared when it goes quiet).
    sources: ByKey<String, (u64, FlowEnd)>,
    end: Option<FlowEnd>,
    /// SYNs seen since the last check.
    fresh: bool,
}

pub struct FloodDetector {
    config: SynFlood,
    targets: ByKey<(IpAddr, u16), Target>,
}

impl FloodDetector {
    pub fn new(config: &SynFlood) -> Self {
        Self {
            config: config.clone(),
            targets: ByKey::default(),
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
        // Looked up by the borrowed name: a source already counted (most
        // SYNs of a flood) copies nothing.
        entry
            .sources
            .entry_ref(&*Alert::end_name(source))
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
            // The most SYNs; of those, the last name in order.
            let Some((top, (_, source))) = target
                .sources
                .iter()
                .max_by_key(|(name, (n, _))| (*n, *name))
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
                node: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{
        config::SynFlood,
        testkit::{ends, front, Lab, SEC},
    };

    /// `syns` SYNs and `completed` handshakes from each of `sources` to
    /// c9:80 in one poll at `at_ns`; the alerts of its end.
    fn poll(
        detector: &mut FloodDetector,
        lab: &Lab,
        sources: &[[u8; 4]],
        (syns, completed): (u64, u64),
        at_ns: u64,
    ) -> Vec<Alert> {
        let victim = front(9);
        for source in sources {
            detector.observe(
                (IpAddr::from(victim), 80),
                &lab.end(victim),
                &lab.end(*source),
                syns,
                completed,
                at_ns,
            );
        }
        let mut alerts = Vec::new();
        detector.check(at_ns, &mut alerts);
        alerts
    }

    fn detector() -> FloodDetector {
        FloodDetector::new(&SynFlood::default())
    }

    #[test]
    fn a_thousand_unanswered_syns_within_ten_seconds_alert_not_fewer() {
        let lab = Lab::new(8);
        let mut flood = detector();
        assert!(poll(&mut flood, &lab, &[front(2)], (999, 0), SEC).is_empty());
        let alerts = poll(&mut flood, &lab, &[front(2)], (1, 0), 2 * SEC);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, "syn_flood");
        assert_eq!(ends(&alerts[0]), ("c2".into(), Some("c9".into())));
        assert_eq!(alerts[0].evidence["syns"], 1000);
        assert_eq!(alerts[0].evidence["destination_port"], 80);
    }

    #[test]
    fn a_fifth_completed_still_alerts_a_bit_more_is_a_busy_server() {
        let lab = Lab::new(8);
        let mut flood = detector();
        assert_eq!(
            poll(&mut flood, &lab, &[front(2)], (1000, 200), SEC).len(),
            1
        );
        let mut busy = detector();
        assert!(poll(&mut busy, &lab, &[front(2)], (1000, 201), SEC).is_empty());
    }

    #[test]
    fn the_window_holds_ten_seconds_to_the_nanosecond() {
        let lab = Lab::new(8);
        let mut flood = detector();
        poll(&mut flood, &lab, &[front(2)], (600, 0), SEC);
        assert_eq!(
            poll(&mut flood, &lab, &[front(2)], (400, 0), 11 * SEC).len(),
            1
        );
        let mut late = detector();
        poll(&mut late, &lab, &[front(2)], (600, 0), SEC);
        assert!(poll(&mut late, &lab, &[front(2)], (400, 0), 11 * SEC + 1).is_empty());
    }

    #[test]
    fn many_sources_add_up_and_the_top_one_is_named() {
        // A flood from spoofed addresses is counted at the flooder's veth,
        // so it comes from one container; floods from several add up.
        let lab = Lab::new(8);
        let mut flood = detector();
        let sources = [front(2), front(3), front(4)];
        poll(&mut flood, &lab, &sources, (300, 0), SEC);
        let alerts = poll(&mut flood, &lab, &[front(3)], (100, 0), SEC);
        assert_eq!(alerts.len(), 1);
        assert_eq!(ends(&alerts[0]).0, "c3");
        let by_source = alerts[0].evidence["syns_by_source"]
            .as_object()
            .expect("map");
        assert_eq!(by_source.len(), 3);
        assert_eq!(by_source["c3"], 400);
    }

    #[test]
    fn a_poll_without_new_syns_raises_nothing_and_a_quiet_target_is_forgotten() {
        let lab = Lab::new(8);
        let mut flood = detector();
        assert_eq!(poll(&mut flood, &lab, &[front(2)], (2000, 0), SEC).len(), 1);
        assert!(poll(&mut flood, &lab, &[front(2)], (0, 0), 2 * SEC).is_empty());
        let mut alerts = Vec::new();
        flood.check(12 * SEC + 1, &mut alerts);
        assert!(alerts.is_empty() && flood.targets.is_empty());
    }

    #[test]
    fn handshakes_without_syns_never_divide_by_zero() {
        let lab = Lab::new(8);
        let mut flood = detector();
        assert!(poll(&mut flood, &lab, &[front(2)], (0, u64::MAX / 2), SEC).is_empty());
        assert!(poll(&mut flood, &lab, &[front(2)], (u64::MAX / 4, 0), SEC).is_empty());
    }
}
