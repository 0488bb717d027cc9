//! Detections: alerts on attacks between containers, each with evidence,
//! de-duplicated, logged as JSON lines and counted.
//!
//! After each poll every flow is looked at once for what its key alone
//! tells (a spoofed source, a reach for the host), and once its outcome is
//! known as an attempt of its source (scans, sweeps, isolation, new
//! edges); its SYNs and bytes feed the flood and spike windows.

mod baseline;
mod cleartext;
pub mod config;
mod excerpt;
mod flood;
mod host_access;
mod isolation;
mod probes;
mod protocols;
mod scan;
mod spike;
mod spoof;

pub use cleartext::{PayloadVerdict, ProtocolLabels};

use std::{
    net::IpAddr,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use monitor_common::{ip_proto, FlowKey};

use crate::sync::lock;
use crate::{
    alert::{Alert, AlertSink, Severity},
    clock,
    datapath::Event,
    docker::{Directory, FlowEnd},
    flows::{
        outcome::{self, Outcome},
        ByFlow, PollView,
    },
    model::{key_addrs, FlowRecord},
};
use config::DetectConfig;

/// An attempt of a container to reach a destination, with its outcome.
pub struct Attempt {
    pub record: FlowRecord,
    pub outcome: Outcome,
    pub source: FlowEnd,
    pub destination: FlowEnd,
    pub destination_ip: IpAddr,
}

impl Attempt {
    pub fn time(&self) -> String {
        clock::rfc3339_ms(self.record.stats.first_seen_ns)
    }

    pub fn has_ports(&self) -> bool {
        matches!(self.record.key.protocol, ip_proto::TCP | ip_proto::UDP)
    }
}

/// What the detectors remember of one flow.
#[derive(Default)]
struct Seen {
    /// The per-key checks ran (spoofing, host access).
    checked: bool,
    /// Its outcome as an attempt was fed to the detectors, or it is not an
    /// attempt.
    decided: bool,
    syns: u32,
    fins: u32,
    acked: bool,
    bytes: u64,
    /// What the payload of the connection showed, on its client flow.
    payload: Option<PayloadVerdict>,
}

struct State {
    config: DetectConfig,
    flows: ByFlow<Seen>,
    /// Flows that ended at the previous poll: forgotten at the next one,
    /// once the flow log has read their payload verdicts.
    ended: Vec<FlowKey>,
    scans: scan::ScanDetector,
    floods: flood::FloodDetector,
    spikes: spike::SpikeDetector,
    cleartext: cleartext::CleartextDetector,
    baseline: Option<baseline::Baseline>,
}

pub struct Detectors {
    sink: Mutex<AlertSink>,
    state: Mutex<State>,
}

impl Detectors {
    /// `state_dir` keeps the `new_connection` baseline.
    /// `max_series` bounds the protocol counts as it bounds traffic series.
    pub fn new(
        config: DetectConfig,
        sink: AlertSink,
        state_dir: &Path,
        max_series: usize,
    ) -> anyhow::Result<Self> {
        let baseline = config
            .new_connection
            .enabled
            .then(|| baseline::Baseline::open(state_dir, config.new_connection.learning_period))
            .transpose()?;
        Ok(Self {
            sink: Mutex::new(sink),
            state: Mutex::new(State {
                scans: scan::ScanDetector::new(config.port_scan.clone(), config.host_sweep.clone()),
                floods: flood::FloodDetector::new(config.syn_flood.clone()),
                spikes: spike::SpikeDetector::new(config.traffic_spike.clone()),
                cleartext: cleartext::CleartextDetector::new(config.cleartext.clone(), max_series),
                baseline,
                config,
                flows: ByFlow::default(),
                ended: Vec::new(),
            }),
        })
    }

    pub fn sink(&self) -> MutexGuard<'_, AlertSink> {
        lock(&self.sink)
    }

    /// After each poll of the flow map.
    pub fn on_poll(&self, flows: &PollView, directory: &Directory, now_ns: u64) {
        let mut alerts = Vec::new();
        {
            let mut state = lock(&self.state);
            let find = |key: &FlowKey| flows.find(key);
            let state = &mut *state;
            for key in state.ended.drain(..) {
                state.flows.remove(&key);
            }
            for (record, is_ended) in flows.records() {
                state.flow(&record, &find, is_ended, directory, now_ns, &mut alerts);
            }
            state.ended.extend(flows.ended());
            state.scans.expire(now_ns);
            state.floods.check(now_ns, &mut alerts);
            state.spikes.check(now_ns, &mut alerts);
            let seen = &state.flows;
            let judged = |key: &FlowKey| seen.get(key).is_some_and(|s| s.payload.is_some());
            let verdicts = state
                .cleartext
                .check(&find, &judged, directory, now_ns, &mut alerts);
            for (client, verdict) in verdicts {
                state.flows.entry(client).or_default().payload = Some(verdict);
            }
            if let Some(baseline) = &mut state.baseline {
                if let Err(err) = baseline.save() {
                    tracing::warn!("saving the new-connection baseline: {err:#}");
                }
            }
        }
        let mut sink = self.sink();
        for alert in alerts {
            sink.raise(alert, now_ns);
        }
    }

    /// What the payload of the connection whose client flow is `key`
    /// showed, once decided.
    pub fn payload_verdict(&self, key: &FlowKey) -> Option<PayloadVerdict> {
        lock(&self.state).flows.get(key)?.payload
    }

    /// Connections counted by (source, destination, protocol, encrypted).
    pub fn protocol_counts(&self) -> Vec<(ProtocolLabels, u64)> {
        lock(&self.state)
            .cleartext
            .counts()
            .map(|(labels, n)| (labels.clone(), *n))
            .collect()
    }

    /// A flow the policy dropped for its spoofed source: it never reached
    /// the flow map, where `ip_spoof` is otherwise found.
    pub fn on_spoofed_drop(&self, record: &FlowRecord, directory: &Directory, now_ns: u64) {
        if !lock(&self.state).config.ip_spoof.enabled {
            return;
        }
        if let spoof::Check::Spoofed(alert) = spoof::ip_spoof(record, directory) {
            self.sink().raise(*alert, now_ns);
        }
    }

    /// For each batch of events from the kernel.
    pub fn on_events(&self, events: &[Event], directory: &Directory, now_ns: u64) {
        let arp_spoof = {
            let mut state = lock(&self.state);
            for event in events {
                if let Event::Payload {
                    key, data, seen, ..
                } = event
                {
                    state.cleartext.sample(key, data, seen.timestamp_ns, now_ns);
                }
            }
            state.config.arp_spoof.enabled
        };
        if !arp_spoof {
            return;
        }
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

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !v6.is_multicast(),
    }
}

impl State {
    /// `find` looks up the reverse flow, only for a flow that changed: most
    /// of a busy host's flows did not since the last poll.
    fn flow(
        &mut self,
        record: &FlowRecord,
        find: &dyn Fn(&FlowKey) -> Option<FlowRecord>,
        ended: bool,
        directory: &Directory,
        now_ns: u64,
        alerts: &mut Vec<Alert>,
    ) {
        // Only flows a watched container sent: the sender is known by its
        // veth. Flows towards containers are the other side's business; a
        // veth with no container yet (one just started) is looked at again
        // at the next poll. Neither is remembered: at 100k flows that is
        // megabytes.
        if !record.stats.from_container() || directory.veth_owner(record.stats.ifindex).is_none() {
            return;
        }
        let seen = self.flows.entry(record.key).or_default();
        let changed = seen.bytes != record.stats.bytes || !seen.decided || !seen.checked;
        if !changed {
            return;
        }
        let (source, destination) = directory.ends(&record.key, &record.stats);
        if !seen.checked {
            seen.checked = true;
            if self.config.ip_spoof.enabled {
                if let spoof::Check::Spoofed(alert) = spoof::ip_spoof(record, directory) {
                    alerts.push(*alert);
                }
            }
            if self.config.host_access.enabled {
                alerts.extend(host_access::host_access(
                    record,
                    directory,
                    &self.config.host_access.ports,
                ));
            }
        }
        let new_bytes = record.stats.bytes.saturating_sub(seen.bytes);
        seen.bytes = record.stats.bytes;
        self.spikes
            .observe(&source, &destination, new_bytes, now_ns);
        if record.key.protocol == ip_proto::TCP {
            let syns = u64::from(record.stats.syn.saturating_sub(seen.syns));
            seen.syns = record.stats.syn;
            // A connection completed when its client acknowledged (first
            // one of this flow) or closed it (each later one, as a busy
            // client reuses the 4-tuple): a flooder does neither.
            let first_ack = !seen.acked && outcome::handshake_completed(record);
            seen.acked |= first_ack;
            let fins = record.stats.fin.saturating_sub(seen.fins);
            seen.fins = record.stats.fin;
            let completed = u64::from(fins).max(u64::from(first_ack));
            if syns > 0 || completed > 0 {
                let (_, dst) = key_addrs(&record.key);
                self.floods.observe(
                    (dst, record.key.dst_port),
                    &destination,
                    &source,
                    syns,
                    completed,
                    now_ns,
                );
            }
        }
        if seen.decided {
            return;
        }
        let (_, destination_ip) = key_addrs(&record.key);
        let reverse = find(&record.key.reversed());
        let reverse = reverse.as_ref();
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
        };
        self.scans.observe(&attempt, now_ns, alerts);
        if self.config.isolation_violation.enabled {
            alerts.extend(isolation::isolation_violation(&attempt, directory));
        }
        if let Some(baseline) = &mut self.baseline {
            alerts.extend(baseline.observe(&attempt));
        }
    }
}
