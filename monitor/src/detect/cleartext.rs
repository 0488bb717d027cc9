//! `cleartext`: what protocol each connection speaks, from the first
//! payload bytes of both sides, counted by protocol and encryption; an
//! alert where TLS is required and the connection is not encrypted.
//!
//! TLS is required on the well-known TLS ports and `tls_ports`, for the
//! destinations named in `require_tls` (compose service, container name or
//! port), and for containers labelled `crossmon.tls=required`.

use monitor_common::FlowKey;
use serde_json::json;

use super::{
    config::Cleartext,
    excerpt::excerpt,
    protocols::{classify, tls_expected, Protocol},
    Alert, Detector, Findings, PollEnd, Severity,
};
use crate::{
    clock,
    datapath::Event,
    docker::{end_name, service_name, Directory, FlowEnd},
    event_log::EventBatch,
    flows::{outcome, ByFlow},
    model::{protocol_name, FlowRecord},
};

/// Samples a connection waits for, at most, before its verdict, from its
/// first sampled packet: settled by the poll its flow expires at.
const SETTLE_NS: u64 = 2_000_000_000;
/// And from when that sample was read: an answer's sample queued behind it
/// in the ring is read by then, even when the agent fell behind.
const READ_GRACE_NS: u64 = 500_000_000;
/// Flows with samples awaiting a verdict; beyond, new ones are ignored.
const MAX_PENDING: usize = 50_000;
/// Samples kept per flow (the kernel sends up to two per CPU).
const SAMPLES_PER_FLOW: usize = 4;

/// (source, destination, protocol, encrypted).
pub type ProtocolLabels = (String, String, &'static str, bool);

struct Pending {
    /// When the first sample's packet was seen, and when it was read.
    first_ns: u64,
    read_ns: u64,
    samples: Vec<Vec<u8>>,
}

pub struct CleartextDetector {
    config: Cleartext,
    /// Payload samples by the flow they came on.
    pending: ByFlow<Pending>,
}

/// What a connection's payload showed, as the flow log records it.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PayloadVerdict {
    pub protocol: Protocol,
    pub encrypted: bool,
}

/// What the samples of one connection showed.
struct Verdict {
    protocol: Protocol,
    encrypted: bool,
    client_opened_with_tls: bool,
    samples: usize,
}

impl CleartextDetector {
    pub fn new(config: &Cleartext) -> Self {
        Self {
            config: config.clone(),
            pending: ByFlow::default(),
        }
    }

    /// A payload sample from the kernel, of a packet seen at `at_ns` and
    /// read at `now_ns` (monotonic).
    pub fn sample(&mut self, key: &FlowKey, data: &[u8], at_ns: u64, now_ns: u64) {
        if data.is_empty() {
            return;
        }
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(key) {
            return;
        }
        let pending = self.pending.entry(*key).or_insert_with(|| Pending {
            first_ns: at_ns,
            read_ns: now_ns,
            samples: Vec::new(),
        });
        if pending.samples.len() < SAMPLES_PER_FLOW {
            pending.samples.push(data.to_vec());
        }
    }

    /// Decides the connections whose samples have settled, and returns
    /// the verdicts by client flow. `find` looks a flow up among the live
    /// and the just-ended ones; `judged` tells a connection decided before.
    pub fn check(
        &mut self,
        find: &dyn Fn(&FlowKey) -> Option<FlowRecord>,
        judged: &dyn Fn(&FlowKey) -> bool,
        directory: &Directory,
        now_ns: u64,
        found: &mut Findings,
    ) {
        // Group the settled samples by connection, keyed by its client flow.
        let mut connections: ByFlow<Vec<(bool, Vec<u8>)>> = ByFlow::default();
        let mut done = Vec::new();
        for (key, pending) in &self.pending {
            let record = find(key);
            let settled = now_ns.saturating_sub(pending.first_ns) >= SETTLE_NS
                && now_ns.saturating_sub(pending.read_ns) >= READ_GRACE_NS;
            if !settled {
                continue;
            }
            done.push(*key);
            let Some(record) = record else {
                continue;
            };
            let from_client = client_side(&record, find(&key.reversed()).as_ref());
            let client = if from_client { *key } else { key.reversed() };
            let samples = connections.entry(client).or_default();
            samples.extend(pending.samples.iter().map(|s| (from_client, s.clone())));
        }
        for key in done {
            self.pending.remove(&key);
        }
        for (client, samples) in connections {
            // Judged once: later samples (another CPU's budget, TLS records
            // past the handshake) tell nothing new.
            if judged(&client) {
                continue;
            }
            let Some(record) = find(&client) else {
                continue;
            };
            let verdict = verdict(&samples, client.dst_port);
            found.verdicts.push((
                client,
                PayloadVerdict {
                    protocol: verdict.protocol,
                    encrypted: verdict.encrypted,
                },
            ));
            let (source, destination) = directory.ends(&record.key, &record.stats);
            found.protocols.push((
                end_name(&source),
                end_name(&destination),
                verdict.protocol.name(),
                verdict.encrypted,
            ));
            // Judged only when crossmon saw the connection open: samples
            // taken mid-stream (TLS records past the handshake) tell no
            // protocol.
            let opened_seen = outcome::is_attempt(&record, find(&client.reversed()).as_ref());
            if let Some(reason) = self.tls_required(&record, &destination) {
                if !verdict.encrypted && opened_seen {
                    let first = samples
                        .iter()
                        .find(|(from_client, _)| *from_client)
                        .or(samples.first())
                        .map(|(_, data)| data.as_slice())
                        .unwrap_or_default();
                    let excerpt = excerpt(first, self.config.alert_payload_bytes);
                    found.alerts.push(alert(
                        &record,
                        (source, destination),
                        &verdict,
                        &reason,
                        excerpt,
                        now_ns,
                    ));
                }
            }
        }
    }

    /// Why this connection must be encrypted, if it must.
    fn tls_required(&self, record: &FlowRecord, destination: &FlowEnd) -> Option<String> {
        let port = record.key.dst_port;
        if tls_expected(port, &self.config.tls_ports) {
            return Some(format!("port {port} expects TLS"));
        }
        let names = [
            Some(service_name(destination)),
            destination.compose_service.clone(),
            destination.name.clone(),
            Some(port.to_string()),
        ];
        if let Some(name) = names
            .into_iter()
            .flatten()
            .find(|name| self.config.require_tls.contains(name))
        {
            return Some(format!("require_tls names {name}"));
        }
        let labelled = destination.container.as_ref().is_some_and(|c| {
            c.labels
                .get("crossmon.tls")
                .is_some_and(|v| v.eq_ignore_ascii_case("required"))
        });
        labelled.then(|| "the destination is labelled crossmon.tls=required".to_owned())
    }
}

impl Detector for CleartextDetector {
    fn events(&mut self, batch: &EventBatch<'_>, _: &mut Findings) {
        for event in batch.events {
            // A DNS packet's sample comes as its DNS event.
            if let Event::Payload {
                key, data, seen, ..
            }
            | Event::Dns {
                key, data, seen, ..
            } = event
            {
                self.sample(key, data, seen.timestamp_ns, batch.now_ns);
            }
        }
    }

    fn end_of_poll(&mut self, poll: &PollEnd<'_>, found: &mut Findings) {
        self.check(poll.find, poll.judged, poll.directory, poll.now_ns, found);
    }
}

/// Whether `record` is the client's side of its connection: the side that
/// opened it, or for one that began before crossmon, the side sending to
/// the lower port.
fn client_side(record: &FlowRecord, reverse: Option<&FlowRecord>) -> bool {
    if outcome::is_attempt(record, reverse) {
        return true;
    }
    match reverse {
        Some(reverse) if outcome::is_attempt(reverse, Some(record)) => false,
        _ => record.key.dst_port < record.key.src_port,
    }
}

fn verdict(samples: &[(bool, Vec<u8>)], dst_port: u16) -> Verdict {
    let classified: Vec<(bool, Protocol)> = samples
        .iter()
        .map(|(from_client, data)| (*from_client, classify(data, *from_client, dst_port)))
        .collect();
    let known = |from_client: bool| {
        classified
            .iter()
            .find(|(side, p)| *side == from_client && *p != Protocol::Unknown)
            .map(|(_, p)| *p)
    };
    Verdict {
        protocol: known(true).or(known(false)).unwrap_or(Protocol::Unknown),
        encrypted: classified.iter().any(|(_, p)| p.is_encrypted()),
        client_opened_with_tls: classified
            .iter()
            .find(|(side, _)| *side)
            .is_some_and(|(_, p)| matches!(p, Protocol::Tls | Protocol::Quic)),
        samples: samples.len(),
    }
}

fn alert(
    record: &FlowRecord,
    (source, destination): (FlowEnd, FlowEnd),
    verdict: &Verdict,
    reason: &str,
    excerpt: String,
    now_ns: u64,
) -> Alert {
    let what = match verdict.protocol {
        Protocol::Unknown => "traffic that is not TLS".to_owned(),
        protocol => format!("cleartext {}", protocol.name()),
    };
    Alert {
        capture: None,
        time: clock::rfc3339_ms(now_ns),
        kind: "cleartext",
        severity: Severity::Warning,
        summary: format!(
            "{} sent {what} to {} on port {} ({reason})",
            Alert::end_name(&source),
            Alert::end_name(&destination),
            record.key.dst_port
        ),
        // The payload only as `excerpt` allows: redacted unless the
        // operator raised the cap.
        evidence: json!({
            "excerpt": excerpt,
            "protocol": verdict.protocol.name(),
            "client_opened_with_tls": verdict.client_opened_with_tls,
            "samples": verdict.samples,
            "destination_port": record.key.dst_port,
            "transport": protocol_name(record.key.protocol),
            "reason": reason,
        }),
        source,
        destination: Some(destination),
    }
}
