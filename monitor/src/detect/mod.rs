//! Detections: alerts on attacks between containers, each with evidence.
//!
//! Every detector implements [`Detector`] and is built by [`registry`]
//! from its settings; one switched off is not built. After each poll the
//! registry looks at every flow a watched container sent once for what its
//! key alone tells ([`Detector::first_look`]: a spoofed source, a reach for
//! the host), hands what it added to [`Detector::traffic`] (flood and
//! spike windows), and once its outcome is known hands it as an attempt of
//! its source to [`Detector::attempt`] (scans, sweeps, isolation, new
//! edges). Kernel events go to [`Detector::events`]. What they find goes
//! to the alert sink, de-duplicated, logged and counted there.
//!
//! A new detector is one file implementing [`Detector`] and one line in
//! [`registry`] (plus its settings in `config.rs` and `deploy/crossmon.toml`
//! when it has any).

mod baseline;
mod cleartext;
pub mod config;
mod dns;
mod excerpt;
mod flood;
mod host_access;
mod isolation;
mod probes;
mod protocols;
mod scan;
mod slots;
mod spike;
mod spoof;
#[cfg(test)]
pub(crate) mod testkit;

pub use cleartext::{PayloadVerdict, ProtocolLabels};
pub use protocols::Protocol;

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use monitor_common::{ip_proto, DeniedStats, FlowKey, FlowStats};

use crate::{
    alert::{Alert, AlertSink, Severity},
    book::SeriesBook,
    clock,
    docker::{Directory, FlowEnd},
    event_log::{EventBatch, EventConsumer},
    flows::{
        outcome::{self, Outcome},
        ByFlow, Exported, Poll, PollConsumer,
    },
    model::{key_addrs, FlowRecord},
    sync::{lock, published, Published},
};
use config::{DetectConfig, Enabled};

/// State keyed by what containers choose (addresses, ports, names) and
/// looked up at every attempt or flow: seeded at random, and foldhash
/// rather than SipHash, which showed in the poll's profile under
/// connection churn. hashbrown's, for lookups by a borrowed key that
/// copies it only on insertion (`entry_ref`).
type ByKey<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// A detector: every hook has a default that does nothing, so each
/// implements only what it looks at.
pub trait Detector: Send {
    /// A flow a watched container sent, the first time it is looked at.
    fn first_look(&mut self, _flow: &FlowRecord, _directory: &Directory, _found: &mut Findings) {}

    /// What a flow a watched container sent added since the last poll.
    fn traffic(&mut self, _traffic: &Traffic<'_>, _now_ns: u64) {}

    /// An attempt of a container to reach a destination, once its outcome
    /// is known (once per flow).
    fn attempt(&mut self, _attempt: &Attempt, _directory: &Directory, _found: &mut Findings) {}

    /// After every flow of a poll was looked at: windows close here.
    fn end_of_poll(&mut self, _poll: &PollEnd<'_>, _found: &mut Findings) {}

    /// A batch of kernel events.
    fn events(&mut self, _batch: &EventBatch<'_>, _found: &mut Findings) {}

    /// A flow the policy dropped for its spoofed source: it never reached
    /// the flow map the other hooks read.
    fn spoofed_drop(&mut self, _flow: &FlowRecord, _directory: &Directory, _found: &mut Findings) {}
}

/// Every detector the settings switch on, in the order they look at each
/// flow. A new detector is one line here.
fn registry(config: &DetectConfig, state_dir: &Path) -> anyhow::Result<Vec<Box<dyn Detector>>> {
    let mut all = Registry::default();
    all.add(&config.ip_spoof, |_| spoof::IpSpoof);
    all.add(&config.host_access, host_access::HostAccess::new);
    all.add(&config.port_scan, scan::PortScan::new);
    all.add(&config.host_sweep, scan::HostSweep::new);
    all.add(&config.syn_flood, flood::FloodDetector::new);
    all.add(&config.packet_flood, spike::PacketFloodDetector::new);
    all.add(&config.traffic_spike, spike::SpikeDetector::new);
    all.add(&config.cleartext, cleartext::CleartextDetector::new);
    all.add(&config.isolation_violation, |_| isolation::Isolation);
    all.try_add(&config.new_connection, |c| {
        baseline::Baseline::open(state_dir, c)
    })?;
    all.add(&config.arp_spoof, |_| spoof::ArpSpoof);
    all.add(&config.dns, dns::DnsDetector::new);
    Ok(all.detectors)
}

#[derive(Default)]
struct Registry {
    detectors: Vec<Box<dyn Detector>>,
}

impl Registry {
    /// Builds the detector from its settings, if they switch it on.
    fn add<S: Enabled, D: Detector + 'static>(
        &mut self,
        settings: &S,
        build: impl FnOnce(&S) -> D,
    ) {
        if settings.enabled() {
            self.detectors.push(Box::new(build(settings)));
        }
    }

    fn try_add<S: Enabled, D: Detector + 'static>(
        &mut self,
        settings: &S,
        build: impl FnOnce(&S) -> anyhow::Result<D>,
    ) -> anyhow::Result<()> {
        if settings.enabled() {
            self.detectors.push(Box::new(build(settings)?));
        }
        Ok(())
    }
}

/// What the detectors found while looking at one poll or batch.
#[derive(Default)]
pub struct Findings {
    pub alerts: Vec<Alert>,
    /// Payload verdicts decided, by the connection's client flow.
    pub verdicts: Vec<(FlowKey, PayloadVerdict)>,
    /// Connections whose protocol was decided, counted by their labels
    /// for `crossmon_connection_protocols_total`: a burst of new flows
    /// decides tens of thousands at one poll, mostly alike.
    pub protocols: std::collections::HashMap<ProtocolLabels, u64>,
}

/// What a flow a watched container sent added since the last poll.
pub struct Traffic<'a> {
    pub record: &'a FlowRecord,
    pub source: &'a FlowEnd,
    pub destination: &'a FlowEnd,
    pub new_bytes: u64,
    pub new_packets: u64,
    /// UDP, ICMP: the flow answers one of the pair that began earlier (an
    /// echo reply, a server's datagrams), rather than opening an exchange.
    pub answers: bool,
    /// TCP only: SYNs sent, and handshakes completed (its first ACK, or
    /// each FIN of a reused 4-tuple).
    pub syns: u64,
    pub completed: u64,
}

/// The end of a poll, for the detectors that decide then.
pub struct PollEnd<'a> {
    /// A flow by key, live or just ended.
    pub find: &'a dyn Fn(&FlowKey) -> Option<FlowRecord>,
    /// Whether a connection (by its client flow) already has a payload
    /// verdict.
    pub judged: &'a dyn Fn(&FlowKey) -> bool,
    /// Whether a flow ended at this poll.
    pub ended: &'a dyn Fn(&FlowKey) -> bool,
    pub directory: &'a Directory,
    pub now_ns: u64,
}

/// An attempt of a container to reach a destination, with its outcome.
pub struct Attempt {
    pub record: FlowRecord,
    pub outcome: Outcome,
    pub source: FlowEnd,
    pub destination: FlowEnd,
    pub destination_ip: IpAddr,
    /// CLOCK_MONOTONIC of the poll that decided it.
    pub poll_ns: u64,
}

impl Attempt {
    pub fn time(&self) -> String {
        clock::rfc3339_ms(self.record.stats.first_seen_ns)
    }

    pub fn has_ports(&self) -> bool {
        matches!(self.record.key.protocol, ip_proto::TCP | ip_proto::UDP)
    }
}

/// The payload verdicts of the connections the detectors still follow, by
/// client flow: what readers outside the poller (the API's graph) see of
/// them, swapped whole after a poll that changed them.
pub type RecentVerdicts = ByFlow<PayloadVerdict>;

/// Verdicts published at most; beyond, the rest are left out (the graph
/// then shows those connections' encryption as unknown).
pub const MAX_PUBLISHED_VERDICTS: usize = 20_000;

/// What the registry remembers of one flow.
#[derive(Default)]
struct Seen {
    /// The first look ran (spoofing, host access).
    checked: bool,
    /// Its outcome as an attempt was handed over, or it is not an attempt.
    decided: bool,
    syns: u32,
    fins: u32,
    handshakes: u32,
    acked: bool,
    bytes: u64,
    packets: u64,
}

/// The detectors the settings switch on, and what they share: each flow's
/// state, the alert sink, the protocol counts.
pub struct Detectors {
    detectors: Vec<Box<dyn Detector>>,
    sink: Arc<Mutex<AlertSink>>,
    /// What the detectors saw of each flow a watched container sent, freed
    /// as the flow ends.
    flows: slots::FlowSlots<Seen>,
    /// What the payload of each connection showed, by its client flow:
    /// apart from `flows`, as the flow log reads it a poll after the flow
    /// ended, and few flows have one.
    verdicts_by_flow: ByFlow<PayloadVerdict>,
    /// Flows that ended at the previous poll: forgotten at the next one,
    /// once the flow log has read their payload verdicts.
    ended: Vec<FlowKey>,
    protocols: SeriesBook<ProtocolLabels, u64>,
    /// The verdicts as last published, and whether they changed since.
    verdicts: Published<RecentVerdicts>,
    verdicts_changed: bool,
}

impl Detectors {
    /// `state_dir` keeps the `new_connection` baseline; `max_series`
    /// bounds the protocol counts as it bounds traffic series.
    pub fn new(
        config: &DetectConfig,
        sink: Arc<Mutex<AlertSink>>,
        state_dir: &Path,
        max_series: usize,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            detectors: registry(config, state_dir)?,
            sink,
            flows: slots::FlowSlots::default(),
            verdicts_by_flow: ByFlow::default(),
            ended: Vec::new(),
            protocols: SeriesBook::new(
                max_series,
                ("other".into(), "other".into(), "other", false),
            ),
            verdicts: published(RecentVerdicts::default()),
            verdicts_changed: false,
        })
    }

    /// Flows whose state the detectors hold: never more than the table's.
    #[cfg(test)]
    pub(crate) fn followed_flows(&self) -> usize {
        self.flows.len()
    }

    /// The payload verdicts of recent connections, as published after
    /// each poll that changed them.
    pub fn verdicts(&self) -> Published<RecentVerdicts> {
        self.verdicts.clone()
    }

    /// Swaps in the verdicts of the flows still followed, when they
    /// changed: a copy per change rather than a lock readers would share
    /// with the poller.
    fn publish_verdicts(&mut self) {
        if !std::mem::take(&mut self.verdicts_changed) {
            return;
        }
        let verdicts: RecentVerdicts = self
            .verdicts_by_flow
            .iter()
            .map(|(key, verdict)| (*key, *verdict))
            .take(MAX_PUBLISHED_VERDICTS)
            .collect();
        self.verdicts.store(Arc::new(verdicts));
    }

    /// What the payload of the connection whose client flow is `key`
    /// showed, once decided.
    pub fn payload_verdict(&self, key: &FlowKey) -> Option<PayloadVerdict> {
        self.verdicts_by_flow.get(key).copied()
    }

    /// Connections counted by (source, destination, protocol, encrypted).
    pub fn protocol_counts(&self) -> impl Iterator<Item = (&ProtocolLabels, &u64)> {
        self.protocols.iter()
    }

    fn raise(&mut self, found: Findings, now_ns: u64) {
        for (client, verdict) in found.verdicts {
            self.verdicts_by_flow.insert(client, verdict);
            self.verdicts_changed = true;
        }
        for (labels, connections) in found.protocols {
            *self.protocols.value(&labels, now_ns) += connections;
        }
        if found.alerts.is_empty() {
            return;
        }
        let mut sink = lock(&self.sink);
        for alert in found.alerts {
            sink.raise(alert, now_ns);
        }
    }

    /// One flow of a poll, with its table entry's `exported`. Its reverse
    /// is looked up only for a flow that changed: most of a busy host's
    /// flows did not since the last poll.
    fn flow(
        &mut self,
        record: &FlowRecord,
        ended: bool,
        exported: &Exported,
        poll: &Poll<'_>,
        found: &mut Findings,
    ) {
        let (directory, now_ns) = (poll.directory, poll.now_ns);
        // Only flows a watched container sent: the sender is known by its
        // veth. Flows towards containers are the other side's business; a
        // veth with no container yet (one just started) is looked at again
        // once the directory names it (the poll after walks the flows of a
        // veth named otherwise). Neither is remembered: at 100k flows that
        // is megabytes.
        if !record.stats.from_container() || directory.veth_owner(record.stats.ifindex).is_none() {
            return;
        }
        // None only past 4 billion flows followed.
        let Some(seen) = self.flows.of(exported) else {
            return;
        };
        let changed = seen.bytes != record.stats.bytes || !seen.decided || !seen.checked;
        if !changed {
            return;
        }
        let (source, destination) = directory.ends(&record.key, &record.stats);
        if !seen.checked {
            seen.checked = true;
            for detector in &mut self.detectors {
                detector.first_look(record, directory, found);
            }
        }
        let new_bytes = record.stats.bytes.saturating_sub(seen.bytes);
        seen.bytes = record.stats.bytes;
        let new_packets = record.stats.packets.saturating_sub(seen.packets);
        seen.packets = record.stats.packets;
        // The reverse tells whether a flow answers, and decides an attempt:
        // a decided TCP flow needs neither (at 100k busy connections, one
        // lookup per flow and poll fewer).
        let reverse = if record.key.protocol != ip_proto::TCP || !seen.decided {
            poll.flows.find(&record.key.reversed())
        } else {
            None
        };
        let reverse = reverse.as_ref();
        let (mut syns, mut completed) = (0, 0);
        if record.key.protocol == ip_proto::TCP {
            syns = u64::from(record.stats.syn.saturating_sub(seen.syns));
            seen.syns = record.stats.syn;
            // A connection completed when its client acknowledged (the
            // kernel counts each handshake, a busy client's reusing the
            // 4-tuple too; the flow's ACK stands in where its SYN and ACK
            // fell in two kernel entries, the first evicted) or closed
            // it: a flooder does neither.
            let first_ack = !seen.acked && outcome::handshake_completed(record);
            seen.acked |= first_ack;
            let fins = record.stats.fin.saturating_sub(seen.fins);
            seen.fins = record.stats.fin;
            let handshakes = record.stats.handshakes.saturating_sub(seen.handshakes);
            seen.handshakes = record.stats.handshakes;
            completed = u64::from(fins.max(handshakes)).max(u64::from(first_ack));
        }
        let traffic = Traffic {
            record,
            source: &source,
            destination: &destination,
            new_bytes,
            new_packets,
            answers: record.key.protocol != ip_proto::TCP && !outcome::is_attempt(record, reverse),
            syns,
            completed,
        };
        for detector in &mut self.detectors {
            detector.traffic(&traffic, now_ns);
        }
        if seen.decided {
            return;
        }
        let (_, destination_ip) = key_addrs(&record.key);
        // Multicast and broadcast reach no one in particular (IPv6
        // neighbour and router discovery, mDNS): not an attempt on a host.
        if !outcome::is_attempt(record, reverse) || !is_unicast(destination_ip) {
            seen.decided = true;
            return;
        }
        let Some(outcome) = outcome::outcome(record, reverse, ended, now_ns) else {
            return;
        };
        seen.decided = true;
        let attempt = Attempt {
            record: *record,
            outcome,
            source,
            destination,
            destination_ip,
            poll_ns: now_ns,
        };
        for detector in &mut self.detectors {
            detector.attempt(&attempt, directory, found);
        }
    }
}

impl PollConsumer for Detectors {
    fn on_poll(&mut self, poll: &Poll<'_>) {
        let mut found = Findings::default();
        let flows = &poll.flows;
        let find = |key: &FlowKey| flows.find(key);
        for key in std::mem::take(&mut self.ended) {
            self.verdicts_changed |= self.verdicts_by_flow.remove(&key).is_some();
        }
        for (record, is_ended, exported) in flows.exported_records() {
            self.flow(&record, is_ended, exported, poll, &mut found);
            if is_ended {
                self.flows.release(exported);
            }
        }
        self.ended.extend(flows.ended());
        {
            let verdicts = &self.verdicts_by_flow;
            let judged = |key: &FlowKey| verdicts.contains_key(key);
            let ended = |key: &FlowKey| flows.has_ended(key);
            let end = PollEnd {
                find: &find,
                judged: &judged,
                ended: &ended,
                directory: poll.directory,
                now_ns: poll.now_ns,
            };
            for detector in &mut self.detectors {
                detector.end_of_poll(&end, &mut found);
            }
        }
        for (key, denied) in poll.denied {
            if denied.slot == monitor_common::POLICY_SLOT_SPOOFED_SOURCE {
                let record = spoofed_record(key, denied);
                for detector in &mut self.detectors {
                    detector.spoofed_drop(&record, poll.directory, &mut found);
                }
            }
        }
        self.raise(found, poll.now_ns);
        self.publish_verdicts();
    }
}

impl EventConsumer for Detectors {
    fn on_events(&mut self, batch: &EventBatch<'_>) {
        let mut found = Findings::default();
        for detector in &mut self.detectors {
            detector.events(batch, &mut found);
        }
        self.raise(found, batch.now_ns);
    }
}

/// A flow the policy saw with a spoofed source, as the flow map would have
/// counted it. Dropped, it never reached the flow map `ip_spoof` reads;
/// passed, it did too (the cooldown keeps it one alert).
fn spoofed_record(key: &FlowKey, denied: &DeniedStats) -> FlowRecord {
    FlowRecord {
        key: *key,
        stats: FlowStats {
            packets: denied.packets,
            first_seen_ns: denied.first_seen_ns,
            last_seen_ns: denied.last_seen_ns,
            ifindex: denied.ifindex,
            direction: monitor_common::Direction::FromContainer as u8,
            ..FlowStats::default()
        },
    }
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !v6.is_multicast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_builds_every_detector_switched_on_and_none_other() {
        let state_dir =
            std::env::temp_dir().join(format!("crossmon-registry-{}", std::process::id()));
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let every = registry(&DetectConfig::default(), &state_dir).expect("defaults build");
        assert_eq!(every.len(), 12);
        let off: DetectConfig = toml::from_str(
            "[port_scan]\nenabled = false\n[new_connection]\nenabled = false\n[arp_spoof]\nenabled = false\n",
        )
        .expect("valid");
        assert_eq!(registry(&off, &state_dir).expect("builds").len(), 9);
        let _ = std::fs::remove_dir_all(&state_dir);
    }
}
