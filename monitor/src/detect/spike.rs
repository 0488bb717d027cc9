//! `traffic_spike`: bytes on one edge (source to destination) in a window
//! far above that edge's own moving average, and above a floor so that
//! quiet edges page nobody: what exfiltration looks like. `udp_flood` and
//! `icmp_flood` are the same test on the packets of one protocol a
//! container sends another, with a shorter window and no warm-up: a flood
//! is a rate no edge had before, and its first window is already one.

use std::{net::IpAddr, time::Duration};

use hashbrown::{hash_map::EntryRef, HashMap};
use monitor_common::ip_proto;
use serde_json::json;

use super::{
    config::{PacketFlood, TrafficSpike},
    Alert, Detector, Findings, PollEnd, Severity, Traffic,
};
use crate::{
    book::{owned_and_borrowed, SeriesLabels as _},
    clock,
    docker::{FlowEnd, IdentityRef},
    model::protocol_name,
};

/// Weight of the newest window in the moving average.
const ALPHA: f64 = 0.3;
/// Windows an edge stays silent before it is forgotten: its baseline has
/// almost nothing left by then.
const QUIET_WINDOWS: u32 = 20;

/// How an edge's windows are judged.
#[derive(Clone, Copy)]
struct Limits {
    window_ns: u64,
    factor: f64,
    floor: u64,
    warmup_windows: u32,
}

struct Edge {
    source: FlowEnd,
    destination: FlowEnd,
    window_start_ns: u64,
    amount: u64,
    baseline: f64,
    windows: u32,
    quiet_windows: u32,
    /// The open window already alerted: it closes without another, and
    /// stays out of the baseline.
    alerted: bool,
}

owned_and_borrowed! {
    /// An edge by its ends' names ([`Alert::end_name`]) and, for a flood,
    /// the protocol of its packets (a spike counts the bytes of every
    /// protocol).
    struct EdgeKey;
    /// [`EdgeKey`] borrowed from an end's identity, to find a known edge
    /// with: every identity pair with new traffic looks its edge up at
    /// every poll.
    struct EdgeKeyRef {
        source, destination;
        protocol: Option<u8>
    }
}

/// An edge whose window went over its limits.
struct Spike<'a> {
    key: &'a EdgeKey,
    edge: &'a Edge,
    amount: u64,
    now_ns: u64,
}

/// Amounts per edge in tumbling windows, each judged against the moving
/// average of the edge's earlier windows.
struct EdgeWindows {
    limits: Limits,
    /// Names are chosen by containers: the hash is seeded at random.
    edges: HashMap<EdgeKey, Edge, foldhash::fast::RandomState>,
    /// What flows added since the windows were last judged, by their ends'
    /// identities: many flows share an edge, and an identity is found in
    /// a few instructions where a name costs a string hash and compare
    /// per flow. Added to `edges` by name before the windows are judged.
    /// An entry per pair of identities with traffic in the poll: as many
    /// as edges, or more where an end has an identity on each of its
    /// networks.
    pending: HashMap<PendingKey, Pending, foldhash::fast::RandomState>,
}

/// An edge as [`Alert::end_name`] names it, by each end's identity and,
/// where that has no name (an external or unknown end), its address; and
/// the protocol.
type PendingKey = (
    (IdentityRef, Option<IpAddr>),
    (IdentityRef, Option<IpAddr>),
    Option<u8>,
);

/// What an edge's flows added; its ends are kept, which keeps their
/// identities ([`IdentityRef`]) from being freed and their addresses
/// reused.
struct Pending {
    source: FlowEnd,
    destination: FlowEnd,
    amount: u64,
    since_ns: u64,
}

/// An end as [`PendingKey`] holds it.
fn pending_end(end: &FlowEnd) -> (IdentityRef, Option<IpAddr>) {
    (
        end.identity_ref(),
        end.name.is_none().then_some(end.ip).flatten(),
    )
}

impl EdgeWindows {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            edges: HashMap::default(),
            pending: HashMap::default(),
        }
    }

    fn add(
        &mut self,
        (source, destination): (&FlowEnd, &FlowEnd),
        protocol: Option<u8>,
        amount: u64,
        now_ns: u64,
    ) {
        if amount == 0 {
            return;
        }
        let key = (pending_end(source), pending_end(destination), protocol);
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            source: source.clone(),
            destination: destination.clone(),
            amount: 0,
            since_ns: now_ns,
        });
        pending.amount = pending.amount.saturating_add(amount);
    }

    /// Adds what is pending to the edges, by name.
    fn take_pending(&mut self) {
        for ((_, _, protocol), pending) in self.pending.drain() {
            let (source, destination) = (&pending.source, &pending.destination);
            let (source_name, destination_name) =
                (Alert::end_name(source), Alert::end_name(destination));
            let key = EdgeKeyRef {
                source: &source_name,
                destination: &destination_name,
                protocol,
            };
            let edge = match self.edges.entry_ref(&key) {
                EntryRef::Occupied(edge) => edge.into_mut(),
                EntryRef::Vacant(edge) => edge.insert_with_key(
                    key.to_labels(),
                    Edge {
                        source: source.clone(),
                        destination: destination.clone(),
                        window_start_ns: pending.since_ns,
                        amount: 0,
                        baseline: 0.0,
                        windows: 0,
                        quiet_windows: 0,
                        alerted: false,
                    },
                ),
            };
            edge.amount = edge.amount.saturating_add(pending.amount);
        }
    }

    /// Hands each edge over its limits to `alert`, once per window: as
    /// soon as the open window gets there (a flood is alerted while it
    /// lasts), else when it closes. Closes the windows that ended by
    /// `now_ns`.
    fn check(&mut self, now_ns: u64, mut alert: impl FnMut(&Spike<'_>)) {
        self.take_pending();
        let limits = self.limits;
        let over = |edge: &Edge, amount: u64| {
            edge.windows >= limits.warmup_windows
                && amount >= limits.floor
                && amount as f64 >= limits.factor * edge.baseline
        };
        for (key, edge) in &mut self.edges {
            while now_ns.saturating_sub(edge.window_start_ns) >= limits.window_ns {
                let amount = std::mem::take(&mut edge.amount);
                let alerted = std::mem::take(&mut edge.alerted);
                if over(edge, amount) {
                    if !alerted {
                        alert(&Spike {
                            key,
                            edge,
                            amount,
                            now_ns,
                        });
                    }
                } else {
                    // A spike stays out of the average, so a sustained
                    // transfer keeps standing out.
                    edge.baseline = if edge.windows == 0 {
                        amount as f64
                    } else {
                        ALPHA * amount as f64 + (1.0 - ALPHA) * edge.baseline
                    };
                    edge.windows = edge.windows.saturating_add(1);
                }
                edge.quiet_windows = if amount == 0 {
                    edge.quiet_windows.saturating_add(1)
                } else {
                    0
                };
                edge.window_start_ns = edge.window_start_ns.saturating_add(limits.window_ns);
            }
            if !edge.alerted && over(edge, edge.amount) {
                edge.alerted = true;
                alert(&Spike {
                    key,
                    edge,
                    amount: edge.amount,
                    now_ns,
                });
            }
        }
        self.edges
            .retain(|_, edge| edge.quiet_windows < QUIET_WINDOWS);
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

pub struct SpikeDetector {
    config: TrafficSpike,
    windows: EdgeWindows,
}

impl SpikeDetector {
    pub fn new(config: &TrafficSpike) -> Self {
        Self {
            windows: EdgeWindows::new(Limits {
                window_ns: nanos(config.window),
                factor: config.factor,
                floor: config.min_bytes,
                warmup_windows: config.warmup_windows,
            }),
            config: config.clone(),
        }
    }

    /// Bytes a flow added this poll.
    pub fn observe(&mut self, source: &FlowEnd, destination: &FlowEnd, bytes: u64, now_ns: u64) {
        self.windows.add((source, destination), None, bytes, now_ns);
    }

    /// Alerts for the windows over their limits by `now_ns`.
    pub fn check(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        let config = &self.config;
        self.windows
            .check(now_ns, |spike| alerts.push(spike_alert(config, spike)));
    }
}

fn spike_alert(config: &TrafficSpike, spike: &Spike<'_>) -> Alert {
    let Spike {
        edge,
        amount: bytes,
        now_ns,
        ..
    } = *spike;
    let factor = bytes as f64 / edge.baseline.max(1.0);
    Alert {
        capture: None,
        node: None,
        time: clock::rfc3339_ms(now_ns),
        kind: "traffic_spike",
        severity: Severity::Warning,
        summary: format!(
            "{} sent {bytes} bytes to {} within {}, {factor:.0}x its usual",
            Alert::end_name(&edge.source),
            Alert::end_name(&edge.destination),
            humantime::format_duration(config.window)
        ),
        evidence: json!({
            "bytes": bytes,
            "baseline_bytes": edge.baseline,
            "factor": factor,
            "windows_of_history": edge.windows,
            "window_seconds": config.window.as_secs_f64(),
        }),
        source: edge.source.clone(),
        destination: Some(edge.destination.clone()),
    }
}

impl Detector for SpikeDetector {
    fn traffic(&mut self, traffic: &Traffic<'_>, now_ns: u64) {
        self.observe(
            traffic.source,
            traffic.destination,
            traffic.new_bytes,
            now_ns,
        );
    }

    fn end_of_poll(&mut self, poll: &PollEnd<'_>, found: &mut Findings) {
        self.check(poll.now_ns, &mut found.alerts);
    }
}

/// `udp_flood` and `icmp_flood`: packets of one protocol from one
/// container to one destination, counted on the flows that open an
/// exchange (an ICMP flood's echo replies are the victim's answers, not
/// a flood of its own).
pub struct PacketFloodDetector {
    config: PacketFlood,
    windows: EdgeWindows,
}

impl PacketFloodDetector {
    pub fn new(config: &PacketFlood) -> Self {
        Self {
            windows: EdgeWindows::new(Limits {
                window_ns: nanos(config.window),
                factor: config.factor,
                floor: config.min_packets,
                warmup_windows: 0,
            }),
            config: config.clone(),
        }
    }
}

/// The alert kind of a flood of `protocol`, if it is one this detector
/// follows.
fn flood_kind(protocol: u8) -> Option<&'static str> {
    match protocol {
        ip_proto::UDP => Some("udp_flood"),
        ip_proto::ICMP | ip_proto::ICMPV6 => Some("icmp_flood"),
        _ => None,
    }
}

impl Detector for PacketFloodDetector {
    fn traffic(&mut self, traffic: &Traffic<'_>, now_ns: u64) {
        let protocol = traffic.record.key.protocol;
        if traffic.answers || flood_kind(protocol).is_none() {
            return;
        }
        self.windows.add(
            (traffic.source, traffic.destination),
            Some(protocol),
            traffic.new_packets,
            now_ns,
        );
    }

    fn end_of_poll(&mut self, poll: &PollEnd<'_>, found: &mut Findings) {
        let config = &self.config;
        let alerts = &mut found.alerts;
        self.windows.check(poll.now_ns, |spike| {
            alerts.extend(flood_alert(config, spike))
        });
    }
}

fn flood_alert(config: &PacketFlood, spike: &Spike<'_>) -> Option<Alert> {
    let Spike {
        key: EdgeKey {
            source,
            destination,
            protocol,
        },
        edge,
        amount: packets,
        now_ns,
    } = *spike;
    let protocol = (*protocol)?;
    let kind = flood_kind(protocol)?;
    let window = config.window.as_secs_f64();
    Some(Alert {
        capture: None,
        node: None,
        time: clock::rfc3339_ms(now_ns),
        kind,
        severity: Severity::Critical,
        summary: format!(
            "{source} sent {packets} {} packets to {destination} within {}, its usual {:.0}",
            protocol_name(protocol),
            humantime::format_duration(config.window),
            edge.baseline,
        ),
        evidence: json!({
            "protocol": protocol_name(protocol),
            "packets": packets,
            "baseline_packets": edge.baseline,
            "windows_of_history": edge.windows,
            "window_seconds": window,
        }),
        source: edge.source.clone(),
        destination: Some(edge.destination.clone()),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use monitor_common::ip_proto::TCP;

    use super::*;
    use crate::{
        detect::testkit::{end_poll, ends, front, traffic, Lab, SEC},
        docker::Directory,
    };

    const WINDOW: u64 = 1_000_000_000;

    #[test]
    fn a_window_far_above_the_edges_average_alerts_once_warm() {
        let mut detector = SpikeDetector::new(&TrafficSpike {
            enabled: true,
            window: Duration::from_secs(1),
            factor: 10.0,
            min_bytes: 10_000,
            warmup_windows: 3,
        });
        let end = |ip: &str| Directory::default().by_address(ip.parse().expect("ip"));
        let (a, b) = (end("10.0.0.2"), end("10.0.0.3"));
        let mut alerts = Vec::new();
        // Three ordinary windows of 2,000 bytes, then 50,000.
        for (window, bytes) in [2_000, 2_000, 2_000, 50_000, 2_000].into_iter().enumerate() {
            let start = window as u64 * WINDOW;
            detector.observe(&a, &b, bytes, start + 1);
            detector.check(start + WINDOW + 1, &mut alerts);
            assert_eq!(alerts.len(), usize::from(window >= 3), "window {window}");
        }
        assert_eq!(alerts[0].evidence["bytes"], 50_000);
        assert_eq!(alerts[0].evidence["baseline_bytes"], 2_000.0);
    }

    #[test]
    fn a_spike_below_the_floor_is_quiet() {
        let mut detector = SpikeDetector::new(&TrafficSpike {
            enabled: true,
            window: Duration::from_secs(1),
            factor: 2.0,
            min_bytes: 1_000_000,
            warmup_windows: 1,
        });
        let end = |ip: &str| Directory::default().by_address(ip.parse().expect("ip"));
        let (a, b) = (end("10.0.0.2"), end("10.0.0.3"));
        let mut alerts = Vec::new();
        for (window, bytes) in [100, 90_000].into_iter().enumerate() {
            let start = window as u64 * WINDOW;
            detector.observe(&a, &b, bytes, start + 1);
            detector.check(start + WINDOW + 1, &mut alerts);
        }
        assert!(alerts.is_empty());
    }

    #[test]
    fn an_edge_adds_up_the_flows_its_names_share_and_no_others() {
        let mut detector = SpikeDetector::new(&TrafficSpike {
            enabled: true,
            window: Duration::from_secs(1),
            factor: 1.0,
            min_bytes: 50_000,
            warmup_windows: 0,
        });
        // One container as two directories name it (two identities of one
        // name), and two addresses no container has.
        let (lab, relabelled) = (Lab::new(3), Lab::new(3));
        let to = lab.end(front(3));
        let nobody = Directory::default();
        let unnamed = |ip: &str| nobody.by_address(ip.parse().expect("ip"));
        for (from, bytes) in [
            (lab.end(front(2)), 30_000),
            (relabelled.end(front(2)), 20_000),
            (unnamed("192.168.7.2"), 30_000),
            (unnamed("192.168.7.3"), 30_000),
        ] {
            detector.observe(&from, &to, bytes, 1);
        }
        let mut alerts = Vec::new();
        detector.check(2, &mut alerts);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(ends(&alerts[0]), ("c2".into(), Some("c3".into())));
        assert_eq!(alerts[0].evidence["bytes"], 50_000);
    }

    const MIB: u64 = 1024 * 1024;

    /// At the defaults, c2 sends c3 `per_minute[m]` bytes at the start of
    /// minute `m` (each poll closes what is due, then counts); the alerts,
    /// with the minute of each, by the end of the last one.
    fn minutes(per_minute: &[u64]) -> Vec<(u64, Alert)> {
        let lab = Lab::new(3);
        let mut detector = SpikeDetector::new(&TrafficSpike::default());
        let (a, b) = (lab.end(front(2)), lab.end(front(3)));
        let mut alerts = Vec::new();
        let mut poll = |detector: &mut SpikeDetector, minute: u64| {
            let mut found = Vec::new();
            detector.check(minute * 60 * SEC, &mut found);
            alerts.extend(found.into_iter().map(|a| (minute, a)));
        };
        for (minute, bytes) in (0u64..).zip(per_minute) {
            poll(&mut detector, minute);
            detector.observe(&a, &b, *bytes, minute * 60 * SEC);
            poll(&mut detector, minute);
        }
        poll(&mut detector, per_minute.len() as u64);
        alerts
    }

    #[test]
    fn at_the_defaults_a_hundred_mib_in_a_minute_alerts_at_once_not_a_byte_less() {
        assert!(minutes(&[MIB, MIB, MIB, MIB, MIB, 100 * MIB - 1]).is_empty());
        let alerts = minutes(&[MIB, MIB, MIB, MIB, MIB, 100 * MIB]);
        assert_eq!(
            alerts.len(),
            1,
            "alerted while open, not again as it closes"
        );
        assert_eq!(alerts[0].0, 5);
        assert_eq!(ends(&alerts[0].1), ("c2".into(), Some("c3".into())));
        assert_eq!(alerts[0].1.evidence["windows_of_history"], 5);
    }

    #[test]
    fn a_new_edge_waits_two_windows_before_it_can_spike() {
        let bulk = [200 * MIB; 6];
        assert!(
            minutes(&bulk).is_empty(),
            "a bulk edge from its start is its own baseline"
        );
        let alerts = minutes(&[MIB, 200 * MIB, 200 * MIB]);
        assert!(alerts.is_empty(), "the second window is still learnt");
        let alerts = minutes(&[MIB, MIB, 200 * MIB]);
        assert_eq!(alerts.len(), 1, "the third can spike");
    }

    #[test]
    fn ten_times_the_baseline_alerts_a_little_less_does_not() {
        // 16 MiB a minute: a power of two, so the average is exact.
        let warm = [16 * MIB; 5];
        assert!(minutes(&[&warm[..], &[160 * MIB - 1]].concat()).is_empty());
        assert_eq!(minutes(&[&warm[..], &[160 * MIB]].concat()).len(), 1);
    }

    #[test]
    fn an_edge_quiet_for_twenty_windows_is_forgotten() {
        let lab = Lab::new(3);
        let mut detector = SpikeDetector::new(&TrafficSpike::default());
        let (a, b) = (lab.end(front(2)), lab.end(front(3)));
        detector.observe(&a, &b, MIB, 0);
        let mut alerts = Vec::new();
        detector.check(20 * 60 * SEC, &mut alerts);
        assert_eq!(detector.windows.edges.len(), 1, "19 quiet windows");
        detector.check(21 * 60 * SEC, &mut alerts);
        assert!(detector.windows.edges.is_empty());
    }

    fn packet_flood() -> PacketFloodDetector {
        PacketFloodDetector::new(&PacketFlood::default())
    }

    /// `packets` of `protocol` from c2 to c3 in one poll at `at_ns`.
    fn flood(
        detector: &mut PacketFloodDetector,
        lab: &Lab,
        protocol: u8,
        (packets, answers): (u64, bool),
        at_ns: u64,
    ) -> Vec<Alert> {
        let record = lab.flow(front(2), front(3), 53, protocol);
        let ends = lab.directory.ends(&record.key, &record.stats);
        let mut seen = traffic(&record, &ends, packets, packets * 100);
        seen.answers = answers;
        detector.traffic(&seen, at_ns);
        end_poll(detector, lab, at_ns)
    }

    #[test]
    fn fifty_thousand_udp_packets_within_ten_seconds_alert_not_fewer() {
        let lab = Lab::new(3);
        let mut detector = packet_flood();
        assert!(flood(&mut detector, &lab, ip_proto::UDP, (49_999, false), SEC).is_empty());
        let alerts = flood(&mut detector, &lab, ip_proto::UDP, (1, false), 2 * SEC);
        assert_eq!(alerts.len(), 1, "while the window is open");
        assert_eq!(alerts[0].kind, "udp_flood");
        assert_eq!(alerts[0].severity, Severity::Critical);
        assert_eq!(ends(&alerts[0]), ("c2".into(), Some("c3".into())));
        assert_eq!(alerts[0].evidence["packets"], 50_000);
        // Once per window: more of it, and its close, raise nothing.
        assert!(flood(&mut detector, &lab, ip_proto::UDP, (40_000, false), 3 * SEC).is_empty());
        assert!(end_poll(&mut detector, &lab, 11 * SEC).is_empty());
    }

    #[test]
    fn icmp_floods_alert_and_their_echo_replies_do_not() {
        let lab = Lab::new(3);
        let mut detector = packet_flood();
        let replies = flood(&mut detector, &lab, ip_proto::ICMP, (200_000, true), SEC);
        assert!(replies.is_empty());
        let alerts = flood(&mut detector, &lab, ip_proto::ICMP, (60_000, false), SEC);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, "icmp_flood");
    }

    #[test]
    fn tcp_is_the_syn_floods_business() {
        let lab = Lab::new(3);
        let mut detector = packet_flood();
        assert!(flood(&mut detector, &lab, TCP, (1_000_000, false), SEC).is_empty());
    }

    #[test]
    fn protocols_and_windows_do_not_add_up() {
        let lab = Lab::new(3);
        let mut detector = packet_flood();
        assert!(flood(&mut detector, &lab, ip_proto::UDP, (30_000, false), SEC).is_empty());
        assert!(flood(&mut detector, &lab, ip_proto::ICMP, (30_000, false), SEC).is_empty());
        // The UDP window began at 1 s: 30,000 more after it closed are
        // the next one's.
        assert!(end_poll(&mut detector, &lab, 11 * SEC).is_empty());
        assert!(flood(
            &mut detector,
            &lab,
            ip_proto::UDP,
            (30_000, false),
            11 * SEC
        )
        .is_empty());
    }

    #[test]
    fn a_stream_ten_times_its_usual_rate_and_over_the_floor_alerts() {
        let lab = Lab::new(3);
        let mut detector = packet_flood();
        // Six windows of 10,000 (1,000 a second, far below the floor),
        // each poll at the start of one (closing the one before).
        for window in 0..6 {
            let at = SEC + window * 10 * SEC;
            assert!(end_poll(&mut detector, &lab, at).is_empty());
            assert!(flood(&mut detector, &lab, ip_proto::UDP, (10_000, false), at).is_empty());
        }
        assert!(end_poll(&mut detector, &lab, 61 * SEC).is_empty());
        // 99,999 is under ten times 10,000.
        assert!(flood(
            &mut detector,
            &lab,
            ip_proto::UDP,
            (99_999, false),
            62 * SEC
        )
        .is_empty());
        assert_eq!(
            flood(&mut detector, &lab, ip_proto::UDP, (1, false), 63 * SEC).len(),
            1
        );
    }
}
