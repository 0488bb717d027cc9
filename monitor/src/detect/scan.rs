//! `port_scan` (many ports of one destination) and `host_sweep` (many
//! destinations of one source), from the outcomes of attempts. Refused and
//! unanswered attempts weigh most: a scanner mostly finds nothing, a busy
//! client mostly finds its servers.
//!
//! Each is judged over two windows: a short one with its threshold, and a
//! long one with a higher threshold that a slow scan, kept under the short
//! one's, still crosses. A port scan is counted by destination, whoever
//! tries its ports, so a scan split among several containers adds up; a
//! sweep by source, and from its ARP requests too (on a bridge, a probe of
//! an address no one has never leaves as IP, only as ARP).

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    net::IpAddr,
    time::Duration,
};

use hashbrown::Equivalent;

use monitor_common::Direction;
use serde_json::json;

use super::{
    config::Scan,
    probes::{Probes, Tried},
    Alert, Attempt, ByKey, Detector, Findings, PollEnd, Severity,
};
use crate::{
    clock,
    datapath::Event,
    docker::{Directory, EndKind, FlowEnd},
    event_log::EventBatch,
    flows::outcome::Outcome,
    model::protocol_name,
};

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy)]
enum Crossed {
    Short,
    Long,
}

/// The distinct targets of each key in the short and the long window.
struct Windows<K, T> {
    config: Scan,
    fast: Probes<K, T>,
    slow: Probes<K, T>,
}

impl<K: Eq + Hash, T: Eq + Hash + Ord + Copy> Windows<K, T> {
    fn new(config: &Scan) -> Self {
        Self {
            config: config.clone(),
            fast: Probes::new(nanos(config.window)),
            slow: Probes::new(nanos(config.slow_window)),
        }
    }

    /// Records an attempt; when the key is over a threshold, the window
    /// that crossed (the short one first).
    fn record<Q>(&mut self, key: &Q, target: T, outcome: Outcome, now_ns: u64) -> Option<Crossed>
    where
        Q: Hash + Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        let weight = if outcome.delivered() && outcome != Outcome::Refused {
            self.config.answered_weight
        } else {
            1.0
        };
        let fast = self.fast.record(key, target, weight, outcome, now_ns);
        let slow = self.slow.record(key, target, weight, outcome, now_ns);
        // Sums of tenths are not exact in binary: 100 answered and 10
        // refused targets weigh 19.99999999999998, and must make 20.
        let reaches = |score: f64, threshold: f64| score + 1e-9 >= threshold;
        if reaches(fast, self.config.threshold) {
            Some(Crossed::Short)
        } else if reaches(slow, self.config.slow_threshold) {
            Some(Crossed::Long)
        } else {
            None
        }
    }

    /// What `key` tried in the window that crossed, and its length: built
    /// once per alert, not per attempt (a full port scan stays linear).
    fn summary<Q>(&self, key: &Q, crossed: Crossed) -> Option<(Tried<T>, Duration)>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        match crossed {
            Crossed::Short => Some((self.fast.summary(key)?, self.config.window)),
            Crossed::Long => Some((self.slow.summary(key)?, self.config.slow_window)),
        }
    }

    fn expire(&mut self, now_ns: u64) {
        self.fast.expire(now_ns);
        self.slow.expire(now_ns);
    }

    fn remembers(&self, key: &K) -> bool {
        self.slow.contains(key)
    }
}

/// Keys alerted at the current poll or batch: evidence is built at most
/// once per key and poll, however many attempts cross.
struct Once<K> {
    at: HashMap<K, u64>,
}

impl<K: Eq + Hash> Once<K> {
    fn new() -> Self {
        Self { at: HashMap::new() }
    }

    fn first(&mut self, key: K, now_ns: u64) -> bool {
        self.at.insert(key, now_ns) != Some(now_ns)
    }

    fn forget_before(&mut self, now_ns: u64) {
        self.at.retain(|_, at| *at == now_ns);
    }
}

/// One source of attempts on a destination's ports.
struct Prober {
    end: FlowEnd,
    attempts: u64,
    last_ns: u64,
}

/// `port_scan`: many ports of one destination, by one source or several.
pub struct PortScan {
    ports: Windows<IpAddr, u16>,
    /// Who tried each destination's ports within the long window, by name.
    probers: ByKey<IpAddr, ByKey<String, Prober>>,
    /// The source an alert on a destination named: kept while the scan
    /// lasts, so that its alerts stay one pair (de-duplicated) however
    /// the sources' shares change.
    named: HashMap<IpAddr, FlowEnd>,
    once: Once<IpAddr>,
    slow_window_ns: u64,
}

impl PortScan {
    pub fn new(config: &Scan) -> Self {
        Self {
            ports: Windows::new(config),
            probers: ByKey::default(),
            named: HashMap::new(),
            once: Once::new(),
            slow_window_ns: nanos(config.slow_window),
        }
    }
}

impl Detector for PortScan {
    fn attempt(&mut self, attempt: &Attempt, _: &Directory, found: &mut Findings) {
        if !attempt.has_ports() {
            return;
        }
        let now_ns = attempt.poll_ns;
        let destination = attempt.destination_ip;
        let prober = self
            .probers
            .entry(destination)
            .or_default()
            .entry_ref(&*Alert::end_name(&attempt.source))
            .or_insert_with(|| Prober {
                end: attempt.source.clone(),
                attempts: 0,
                last_ns: now_ns,
            });
        prober.attempts += 1;
        prober.last_ns = now_ns;
        let crossed = self.ports.record(
            &destination,
            attempt.record.key.dst_port,
            attempt.outcome,
            now_ns,
        );
        let Some(crossed) = crossed else {
            return;
        };
        if !self.once.first(destination, now_ns) {
            return;
        }
        let Some((tried, window)) = self.ports.summary(&destination, crossed) else {
            return;
        };
        let probers = self.probers.get(&destination);
        let top = probers
            // The most attempts; of those, the last name in order.
            .and_then(|p| p.iter().max_by_key(|(name, p)| (p.attempts, *name)))
            .map_or_else(|| attempt.source.clone(), |(_, p)| p.end.clone());
        let source = self.named.entry(destination).or_insert(top).clone();
        let by_source: BTreeMap<&String, u64> = probers
            .into_iter()
            .flatten()
            .map(|(name, p)| (name, p.attempts))
            .collect();
        found.alerts.push(Alert {
            capture: None,
            node: None,
            time: attempt.time(),
            kind: "port_scan",
            severity: Severity::Warning,
            summary: format!(
                "{} tried {} ports of {} within {}{}",
                Alert::end_name(&source),
                tried.distinct,
                Alert::end_name(&attempt.destination),
                humantime::format_duration(window),
                if by_source.len() > 1 {
                    format!(", with {} other sources", by_source.len() - 1)
                } else {
                    String::new()
                }
            ),
            evidence: json!({
                "distinct_ports": tried.distinct,
                "score": tried.score,
                "outcomes": tried.outcomes,
                "ports_sample": tried.sample,
                "protocol": protocol_name(attempt.record.key.protocol),
                "destination_ip": destination.to_string(),
                "window_seconds": window.as_secs_f64(),
                "attempts_by_source": by_source,
            }),
            source,
            destination: Some(attempt.destination.clone()),
        });
    }

    fn end_of_poll(&mut self, poll: &PollEnd<'_>, _: &mut Findings) {
        let now_ns = poll.now_ns;
        self.ports.expire(now_ns);
        self.once.forget_before(now_ns);
        let cutoff = now_ns.saturating_sub(self.slow_window_ns);
        self.probers.retain(|_, probers| {
            probers.retain(|_, p| p.last_ns >= cutoff);
            !probers.is_empty()
        });
        let ports = &self.ports;
        self.named
            .retain(|destination, _| ports.remembers(destination));
    }
}

/// `host_sweep`: one source, many destinations.
pub struct HostSweep {
    hosts: Windows<String, IpAddr>,
    once: Once<String>,
}

impl HostSweep {
    pub fn new(config: &Scan) -> Self {
        Self {
            hosts: Windows::new(config),
            once: Once::new(),
        }
    }

    /// One destination `source` tried; an alert when that makes a sweep.
    fn tried(
        &mut self,
        source: &FlowEnd,
        destination: IpAddr,
        outcome: Outcome,
        time: impl FnOnce() -> String,
        now_ns: u64,
    ) -> Option<Alert> {
        let name = Alert::end_name(source);
        let crossed = self.hosts.record(&*name, destination, outcome, now_ns)?;
        if !self.once.first(name.clone().into_owned(), now_ns) {
            return None;
        }
        let (tried, window) = self.hosts.summary(&*name, crossed)?;
        Some(Alert {
            capture: None,
            node: None,
            time: time(),
            kind: "host_sweep",
            severity: Severity::Warning,
            summary: format!(
                "{name} tried {} addresses within {}",
                tried.distinct,
                humantime::format_duration(window)
            ),
            evidence: json!({
                "distinct_destinations": tried.distinct,
                "score": tried.score,
                "outcomes": tried.outcomes,
                "destinations_sample": tried.sample.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "window_seconds": window.as_secs_f64(),
            }),
            source: source.clone(),
            // A sweep has no one destination.
            destination: None,
        })
    }
}

/// Whether anyone has `ip`: an ARP request for it gets an answer.
fn arp_outcome(directory: &Directory, ip: IpAddr) -> Outcome {
    match directory.by_address(ip).kind {
        EndKind::Container | EndKind::Gateway | EndKind::Host => Outcome::Answered,
        EndKind::External | EndKind::Unknown => Outcome::Unanswered,
    }
}

impl Detector for HostSweep {
    fn attempt(&mut self, attempt: &Attempt, _: &Directory, found: &mut Findings) {
        found.alerts.extend(self.tried(
            &attempt.source,
            attempt.destination_ip,
            attempt.outcome,
            || attempt.time(),
            attempt.poll_ns,
        ));
    }

    /// ARP requests a container sent, each for the address it wants to
    /// reach. A gratuitous one (for its own address) reaches for no one.
    fn events(&mut self, batch: &EventBatch<'_>, found: &mut Findings) {
        for event in batch.events {
            let Event::Arp { seen, arp, .. } = event else {
                continue;
            };
            let (Some(1), Some(target)) = (arp.operation, arp.target_ip) else {
                continue;
            };
            if seen.direction != Direction::FromContainer || arp.sender_ip == Some(target) {
                continue;
            }
            let Some(source) = batch.directory.by_veth_end(seen.ifindex) else {
                continue;
            };
            let target = IpAddr::V4(target);
            let outcome = arp_outcome(batch.directory, target);
            found.alerts.extend(self.tried(
                &source,
                target,
                outcome,
                || clock::rfc3339_ms(seen.timestamp_ns),
                batch.now_ns,
            ));
        }
    }

    fn end_of_poll(&mut self, poll: &PollEnd<'_>, _: &mut Findings) {
        self.hosts.expire(poll.now_ns);
        self.once.forget_before(poll.now_ns);
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::ip_proto::{ICMP, TCP, UDP};

    use super::*;
    use crate::detect::testkit::{
        arp, batch, end_poll, ends, front, try_attempt, Lab, GATEWAY, SEC,
    };

    fn port_scan() -> PortScan {
        PortScan::new(&Scan::default())
    }

    fn host_sweep() -> HostSweep {
        HostSweep::new(&Scan::default())
    }

    /// `src` tries each of `ports` of `dst` at `at_ns`, each one poll;
    /// the alerts, by the port that raised them.
    fn scan_ports(
        detector: &mut PortScan,
        lab: &Lab,
        (src, dst): ([u8; 4], [u8; 4]),
        ports: impl IntoIterator<Item = u16>,
        outcome: Outcome,
        at_ns: u64,
    ) -> Vec<(u16, Alert)> {
        let mut alerts = Vec::new();
        for port in ports {
            let attempt = lab.attempt(src, dst, port, TCP, outcome, at_ns);
            alerts.extend(
                try_attempt(detector, lab, &attempt)
                    .into_iter()
                    .map(|a| (port, a)),
            );
            end_poll(detector, lab, at_ns);
        }
        alerts
    }

    #[test]
    fn a_port_scan_alerts_at_the_twentieth_refused_port_not_before() {
        let lab = Lab::new(3);
        let mut scan = port_scan();
        let pair = (front(2), front(3));
        let alerts = scan_ports(&mut scan, &lab, pair, 1..=19, Outcome::Refused, SEC);
        assert!(alerts.is_empty(), "19 ports: below the threshold");
        let alerts = scan_ports(&mut scan, &lab, pair, [20], Outcome::Refused, SEC);
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0].1;
        assert_eq!(alert.kind, "port_scan");
        assert_eq!(ends(alert), ("c2".into(), Some("c3".into())));
        assert_eq!(alert.evidence["distinct_ports"], 20);
        assert_eq!(alert.evidence["outcomes"]["refused"], 20);
        assert_eq!(alert.evidence["window_seconds"], 60.0);
        assert_eq!(alert.evidence["attempts_by_source"]["c2"], 20);
    }

    #[test]
    fn unanswered_udp_ports_count_and_icmp_has_no_ports() {
        let lab = Lab::new(3);
        let mut scan = port_scan();
        let mut alerts = Vec::new();
        for port in 1..=20 {
            let udp = lab.attempt(front(2), front(3), port, UDP, Outcome::Unanswered, SEC);
            alerts.extend(try_attempt(&mut scan, &lab, &udp));
            let icmp = lab.attempt(front(4), front(3), 0, ICMP, Outcome::Unanswered, SEC);
            assert!(try_attempt(&mut scan, &lab, &icmp).is_empty());
        }
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].evidence["protocol"], "udp");
        assert!(alerts[0].evidence["attempts_by_source"].get("c4").is_none());
    }

    #[test]
    fn answered_ports_weigh_a_tenth_and_add_up_exactly() {
        let lab = Lab::new(3);
        let mut scan = port_scan();
        let pair = (front(2), front(3));
        // 100 open ports weigh 10: a client of many services is no scan.
        let open = scan_ports(&mut scan, &lab, pair, 1..=100, Outcome::Established, SEC);
        assert!(open.is_empty());
        let closed = scan_ports(&mut scan, &lab, pair, 101..=109, Outcome::Refused, SEC);
        assert!(closed.is_empty(), "19.0: below");
        let closed = scan_ports(&mut scan, &lab, pair, [110], Outcome::Refused, SEC);
        assert_eq!(closed.len(), 1, "10 + 10 = 20, whatever the float sum");
    }

    #[test]
    fn the_same_port_again_counts_once() {
        let lab = Lab::new(3);
        let mut scan = port_scan();
        let pair = (front(2), front(3));
        let again = std::iter::repeat_n(80, 100);
        let alerts = scan_ports(&mut scan, &lab, pair, again, Outcome::Refused, SEC);
        assert!(alerts.is_empty());
        assert_eq!(
            scan.ports
                .fast
                .summary(&IpAddr::from(front(3)))
                .expect("tried")
                .distinct,
            1
        );
    }

    #[test]
    fn the_window_keeps_what_was_tried_at_its_edge_and_drops_what_is_older() {
        let lab = Lab::new(3);
        let pair = (front(2), front(3));
        // 19 ports at 1 s, the 20th at 61 s: the first are exactly at the
        // window's edge, still in.
        let mut scan = port_scan();
        scan_ports(&mut scan, &lab, pair, 1..=19, Outcome::Refused, SEC);
        end_poll(&mut scan, &lab, 61 * SEC);
        let at_edge = scan_ports(&mut scan, &lab, pair, [20], Outcome::Refused, 61 * SEC);
        assert_eq!(at_edge.len(), 1);
        // One nanosecond later they are out of the minute (and 20 is far
        // below the ten minutes' 40).
        let mut scan = port_scan();
        scan_ports(&mut scan, &lab, pair, 1..=19, Outcome::Refused, SEC);
        end_poll(&mut scan, &lab, 61 * SEC + 1);
        let late = scan_ports(&mut scan, &lab, pair, [20], Outcome::Refused, 61 * SEC + 1);
        assert!(late.is_empty());
    }

    #[test]
    fn a_slow_scan_under_the_minute_threshold_is_alerted_over_ten_minutes() {
        let lab = Lab::new(3);
        let mut scan = port_scan();
        let pair = (front(2), front(3));
        // 15 ports a minute, one every 4 s: never 20 within a minute.
        let mut alerts = Vec::new();
        for port in 1..=60u16 {
            let at = u64::from(port) * 4 * SEC;
            alerts.extend(scan_ports(
                &mut scan,
                &lab,
                pair,
                [port],
                Outcome::Refused,
                at,
            ));
        }
        let ports: Vec<u16> = alerts.iter().map(|(port, _)| *port).collect();
        assert_eq!(ports[0], 40, "the 40th port makes the long window's 40");
        let alert = &alerts[0].1;
        assert_eq!(alert.evidence["window_seconds"], 600.0);
        assert_eq!(alert.evidence["distinct_ports"], 40);
        assert_eq!(ends(alert), ("c2".into(), Some("c3".into())));
    }

    #[test]
    fn a_scan_split_among_three_sources_adds_up_at_its_victim() {
        let lab = Lab::new(5);
        let mut scan = port_scan();
        let victim = front(5);
        let mut alerts = Vec::new();
        // Ports 1..=21 dealt round-robin: 7 each, never 20 from one.
        for port in 1..=21u16 {
            let source = front(2 + (port % 3) as u8);
            alerts.extend(scan_ports(
                &mut scan,
                &lab,
                (source, victim),
                [port],
                Outcome::Refused,
                SEC,
            ));
        }
        assert_eq!(alerts.len(), 1, "once at the 20th port (one poll each)");
        let (port, alert) = &alerts[0];
        assert_eq!(*port, 20);
        assert_eq!(
            alert.evidence["attempts_by_source"]
                .as_object()
                .expect("map")
                .len(),
            3
        );
        assert_eq!(ends(alert).1.as_deref(), Some("c5"));
        let named = ends(alert).0;
        // The next poll's alert names the same source (one pair for the
        // sink's de-duplication), although another tried as many.
        let more = scan_ports(
            &mut scan,
            &lab,
            (front(4), victim),
            [22],
            Outcome::Refused,
            2 * SEC,
        );
        assert_eq!(ends(&more[0].1).0, named);
    }

    #[test]
    fn one_alert_per_poll_however_many_ports_cross() {
        let lab = Lab::new(3);
        let mut scan = port_scan();
        let mut alerts = Vec::new();
        for port in 1..=200 {
            let attempt = lab.attempt(front(2), front(3), port, TCP, Outcome::Refused, SEC);
            alerts.extend(try_attempt(&mut scan, &lab, &attempt));
        }
        end_poll(&mut scan, &lab, SEC);
        assert_eq!(alerts.len(), 1);
    }

    #[test]
    fn state_is_forgotten_after_the_long_window() {
        let lab = Lab::new(3);
        let mut scan = port_scan();
        scan_ports(
            &mut scan,
            &lab,
            (front(2), front(3)),
            1..=30,
            Outcome::Refused,
            SEC,
        );
        assert!(!scan.named.is_empty());
        end_poll(&mut scan, &lab, 601 * SEC + 1);
        assert!(scan.probers.is_empty() && scan.named.is_empty());
        assert!(!scan.ports.remembers(&IpAddr::from(front(3))));
    }

    #[test]
    fn every_port_of_every_protocol_is_bounded_evidence() {
        // Hostile input: all 65,536 ports (0 included) in one poll.
        let lab = Lab::new(3);
        let mut scan = port_scan();
        let mut alerts = Vec::new();
        for port in 0..=u16::MAX {
            let attempt = lab.attempt(front(2), front(3), port, UDP, Outcome::Unanswered, SEC);
            alerts.extend(try_attempt(&mut scan, &lab, &attempt));
        }
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            alerts[0].evidence["ports_sample"].as_array().map(Vec::len),
            Some(20)
        );
        end_poll(&mut scan, &lab, SEC);
        let alert = scan_ports(
            &mut scan,
            &lab,
            (front(2), front(3)),
            [1],
            Outcome::Refused,
            2 * SEC,
        );
        assert_eq!(alert[0].1.evidence["distinct_ports"], 65_536);
    }

    /// `src` tries each address in `targets` at `at_ns`, one poll each.
    fn sweep(
        detector: &mut HostSweep,
        lab: &Lab,
        src: [u8; 4],
        targets: impl IntoIterator<Item = [u8; 4]>,
        outcome: Outcome,
        at_ns: u64,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for target in targets {
            let attempt = lab.attempt(src, target, 80, TCP, outcome, at_ns);
            alerts.extend(try_attempt(detector, lab, &attempt));
            end_poll(detector, lab, at_ns);
        }
        alerts
    }

    fn addresses(range: std::ops::RangeInclusive<u8>) -> impl Iterator<Item = [u8; 4]> {
        range.map(|n| [10, 0, 9, n])
    }

    #[test]
    fn a_sweep_alerts_at_the_twentieth_unanswered_address_not_before() {
        let lab = Lab::new(3);
        let mut detector = host_sweep();
        let none = sweep(
            &mut detector,
            &lab,
            front(2),
            addresses(1..=19),
            Outcome::Unanswered,
            SEC,
        );
        assert!(none.is_empty());
        let alerts = sweep(
            &mut detector,
            &lab,
            front(2),
            addresses(20..=20),
            Outcome::Unanswered,
            SEC,
        );
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, "host_sweep");
        assert_eq!(ends(&alerts[0]), ("c2".into(), None));
        assert_eq!(alerts[0].evidence["distinct_destinations"], 20);
    }

    #[test]
    fn a_load_balancer_over_eighty_backends_is_no_sweep() {
        let lab = Lab::new(82);
        let mut detector = host_sweep();
        let backends = (3..=82).map(front);
        let alerts = sweep(
            &mut detector,
            &lab,
            front(2),
            backends.clone(),
            Outcome::Established,
            SEC,
        );
        assert!(alerts.is_empty());
        // Its ARP requests for them too: every one has an owner.
        let events: Vec<Event> = backends.map(|b| arp(front(2), 1, b, SEC)).collect();
        assert!(batch(&mut detector, &lab, &events, SEC).is_empty());
        // ... and 11 dead backends more still do not make 20 (8 + 11).
        let dead = sweep(
            &mut detector,
            &lab,
            front(2),
            addresses(1..=11),
            Outcome::Unanswered,
            2 * SEC,
        );
        assert!(dead.is_empty());
    }

    #[test]
    fn an_arp_sweep_of_unused_addresses_is_a_sweep() {
        let lab = Lab::new(3);
        let mut detector = host_sweep();
        let ask = |n: u8| arp(front(2), 1, [10, 0, 0, n], SEC);
        // 19 unused addresses, asked again and again: below.
        let events: Vec<Event> = (100..119).flat_map(|n| [ask(n), ask(n)]).collect();
        assert!(batch(&mut detector, &lab, &events, SEC).is_empty());
        let alerts = batch(&mut detector, &lab, &[ask(119)], SEC + 1);
        assert_eq!(alerts.len(), 1);
        assert_eq!(ends(&alerts[0]), ("c2".into(), None));
        assert_eq!(alerts[0].evidence["outcomes"]["unanswered"], 20);
    }

    #[test]
    fn arp_that_asks_for_no_one_else_is_not_counted() {
        let lab = Lab::new(3);
        let mut detector = host_sweep();
        let mut events = vec![arp(front(2), 1, front(2), SEC)];
        for n in 100..=150 {
            // Replies, gratuitous requests, requests cut short, requests
            // seen arriving at a container, requests from an unknown veth.
            events.push(arp(front(2), 2, [10, 0, 0, n], SEC));
            events.push(arp([10, 0, 0, n], 1, [10, 0, 0, n], SEC));
            let mut short = arp(front(2), 1, [10, 0, 0, n], SEC);
            if let Event::Arp { arp, .. } = &mut short {
                arp.target_ip = None;
            }
            events.push(short);
            let mut arriving = arp(front(2), 1, [10, 0, 0, n], SEC);
            if let Event::Arp { seen, .. } = &mut arriving {
                seen.direction = Direction::ToContainer;
            }
            events.push(arriving);
        }
        assert!(batch(&mut detector, &lab, &events, SEC).is_empty());
        assert!(!detector.hosts.remembers(&"c2".to_owned()));
    }

    #[test]
    fn an_address_probed_by_arp_then_ip_counts_once() {
        let lab = Lab::new(3);
        let mut detector = host_sweep();
        let events: Vec<Event> = (100..110)
            .map(|n| arp(front(2), 1, [10, 0, 0, n], SEC))
            .collect();
        batch(&mut detector, &lab, &events, SEC);
        let again = (100..110).map(|n| [10, 0, 0, n]);
        assert!(sweep(
            &mut detector,
            &lab,
            front(2),
            again,
            Outcome::Unanswered,
            SEC
        )
        .is_empty());
        let tried = detector
            .hosts
            .fast
            .summary(&"c2".to_owned())
            .expect("tried");
        assert_eq!(tried.distinct, 10);
        // The gateway answers: a tenth.
        batch(&mut detector, &lab, &[arp(front(2), 1, GATEWAY, SEC)], SEC);
        let tried = detector
            .hosts
            .fast
            .summary(&"c2".to_owned())
            .expect("tried");
        assert!((tried.score - 10.1).abs() < 1e-9);
    }

    #[test]
    fn a_slow_sweep_is_alerted_over_ten_minutes_and_then_forgotten() {
        let lab = Lab::new(3);
        let mut detector = host_sweep();
        let mut first = None;
        for n in 1..=60u8 {
            let at = u64::from(n) * 4 * SEC;
            let alerts = sweep(
                &mut detector,
                &lab,
                front(2),
                addresses(n..=n),
                Outcome::Unanswered,
                at,
            );
            if first.is_none() && !alerts.is_empty() {
                first = Some((n, alerts[0].evidence["window_seconds"].clone()));
            }
        }
        assert_eq!(first, Some((40, serde_json::json!(600.0))));
        end_poll(&mut detector, &lab, 240 * SEC + 600 * SEC + 1);
        assert!(!detector.hosts.remembers(&"c2".to_owned()));
    }
}
