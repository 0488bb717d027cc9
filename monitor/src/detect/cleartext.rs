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
    excerpt::Head,
    protocols::{classify, tls_expected, Protocol},
    Alert, Detector, Findings, PollEnd, Severity,
};
use crate::{
    clock,
    datapath::Event,
    docker::{end_name, service_name, FlowEnd},
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
/// Samples kept per flow (the kernel sends `--payload-packets`, 2 by
/// default, and more when CPUs race on one flow's packets).
const SAMPLES_PER_FLOW: usize = 4;

/// (source, destination, protocol, encrypted).
pub type ProtocolLabels = (String, String, &'static str, bool);

/// A flow's samples awaiting its connection's verdict, classified as they
/// come rather than kept: a burst of new flows holds tens of thousands.
/// Which side the flow is, client or server, is known only at the verdict,
/// so each sample is read as both.
struct Pending {
    /// When the samples have settled: [`SETTLE_NS`] after the first
    /// sample's packet, [`READ_GRACE_NS`] after it was read.
    settled_ns: u64,
    as_client: Reading,
    as_server: Reading,
    samples: u8,
    /// The first sample, as much as an alert's excerpt shows of it.
    head: Head,
}

/// What one side's samples showed, in the order they came.
#[derive(Default)]
struct Reading {
    first: Option<Protocol>,
    known: Option<Protocol>,
    encrypted: bool,
}

impl Reading {
    fn add(&mut self, protocol: Protocol) {
        self.first.get_or_insert(protocol);
        if protocol != Protocol::Unknown {
            self.known.get_or_insert(protocol);
        }
        self.encrypted |= protocol.is_encrypted();
    }
}

impl Pending {
    fn settled(&self, now_ns: u64) -> bool {
        now_ns >= self.settled_ns
    }
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
        let cap = self.config.alert_payload_bytes;
        let pending = self.pending.entry(*key).or_insert_with(|| Pending {
            settled_ns: (at_ns.saturating_add(SETTLE_NS)).max(now_ns.saturating_add(READ_GRACE_NS)),
            as_client: Reading::default(),
            as_server: Reading::default(),
            samples: 0,
            head: Head::of(data, cap),
        });
        if usize::from(pending.samples) < SAMPLES_PER_FLOW {
            pending.samples += 1;
            // The client opened the connection to its destination port; the
            // server's flow goes back from it.
            pending.as_client.add(classify(data, true, key.dst_port));
            pending.as_server.add(classify(data, false, key.src_port));
        }
    }

    /// Decides the connections whose samples have settled, or whose flow
    /// ended at this poll (a closed connection leaves after
    /// `--close-linger`, which may be shorter than the wait: it sends
    /// nothing more), and returns the verdicts by client flow.
    pub fn check(&mut self, poll: &PollEnd<'_>, found: &mut Findings) {
        let (find, now_ns) = (poll.find, poll.now_ns);
        let ready = |key: &FlowKey, pending: &Pending| pending.settled(now_ns) || (poll.ended)(key);
        // Each connection once, from its client flow's samples when they
        // settled, else from its server flow's; in place, not grouped in a
        // second map: at a burst of new flows they are tens of thousands.
        let from_client = |key: &FlowKey| -> Option<bool> {
            let record = find(key)?;
            Some(client_side(&record, find(&key.reversed()).as_ref()))
        };
        for (key, pending) in &self.pending {
            if !ready(key, pending) {
                continue;
            }
            let Some(is_client) = from_client(key) else {
                continue;
            };
            let reverse = key.reversed();
            let other = self
                .pending
                .get(&reverse)
                .filter(|other| ready(&reverse, other))
                .and_then(|other| Some((from_client(&reverse)?, other)));
            let (client, samples) = match (is_client, other) {
                (true, Some((false, server))) => (*key, (Some(pending), Some(server))),
                (true, _) => (*key, (Some(pending), None)),
                // Judged from the client's flow.
                (false, Some((true, _))) => continue,
                (false, _) => (reverse, (None, Some(pending))),
            };
            self.judge(client, samples, poll, found);
        }
        self.pending.retain(|key, pending| !ready(key, pending));
    }

    /// The verdict on one connection from its two flows' settled samples
    /// (either may have none); an alert where it broke a TLS requirement.
    fn judge(
        &self,
        client: FlowKey,
        (client_samples, server_samples): (Option<&Pending>, Option<&Pending>),
        poll: &PollEnd<'_>,
        found: &mut Findings,
    ) {
        let (find, directory, now_ns) = (poll.find, poll.directory, poll.now_ns);
        // Judged once: later samples (TLS records past the handshake, one
        // more from CPUs racing) tell nothing new.
        if (poll.judged)(&client) {
            return;
        }
        let Some(record) = find(&client) else {
            return;
        };
        let verdict = verdict(client_samples, server_samples);
        found.verdicts.push((
            client,
            PayloadVerdict {
                protocol: verdict.protocol,
                encrypted: verdict.encrypted,
            },
        ));
        let (source, destination) = directory.ends(&record.key, &record.stats);
        *found
            .protocols
            .entry((
                end_name(&source).to_owned(),
                end_name(&destination).to_owned(),
                verdict.protocol.name(),
                verdict.encrypted,
            ))
            .or_default() += 1;
        // Judged only when crossmon saw the connection open: samples
        // taken mid-stream (TLS records past the handshake) tell no
        // protocol.
        let opened_seen = outcome::is_attempt(&record, find(&client.reversed()).as_ref());
        if let Some(reason) = self.tls_required(&record, &destination) {
            if !verdict.encrypted && opened_seen {
                // The client's first sample, else the server's.
                let excerpt = client_samples
                    .or(server_samples)
                    .map(|p| p.head.excerpt())
                    .unwrap_or_default();
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
        self.check(poll, found);
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

fn verdict(client: Option<&Pending>, server: Option<&Pending>) -> Verdict {
    let client_reading = client.map(|p| &p.as_client);
    let server_reading = server.map(|p| &p.as_server);
    let readings = || client_reading.into_iter().chain(server_reading);
    Verdict {
        protocol: readings()
            .find_map(|r| r.known)
            .unwrap_or(Protocol::Unknown),
        encrypted: readings().any(|r| r.encrypted),
        client_opened_with_tls: client_reading
            .and_then(|r| r.first)
            .is_some_and(|p| matches!(p, Protocol::Tls | Protocol::Quic)),
        samples: [client, server]
            .into_iter()
            .flatten()
            .map(|p| usize::from(p.samples))
            .sum(),
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
        node: None,
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

#[cfg(test)]
mod tests {
    use monitor_common::{ip_proto::TCP, Direction};

    use super::*;
    use crate::detect::testkit::{ends, front, Lab, SEC};

    const HELLO: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    const GET: &[u8] = b"GET /login?password=hunter2 HTTP/1.1\r\nHost: c3\r\n\r\n";

    /// A connection c2 opened to c3:`port` (its SYN seen, answered), its
    /// client flow's key and the two flows.
    fn connection(lab: &Lab, port: u16, opened_seen: bool) -> (FlowKey, Vec<FlowRecord>) {
        let mut client = lab.flow(front(2), front(3), port, TCP);
        client.stats.syn = u32::from(opened_seen);
        client.stats.first_seen_ns = 1;
        let mut server = lab.flow(front(3), front(2), 40_000, TCP);
        server.key = client.key.reversed();
        server.stats.syn_ack = u32::from(opened_seen);
        server.stats.first_seen_ns = 2;
        (client.key, vec![client, server])
    }

    /// The detector at the defaults but for `config`, decided at `now_ns`
    /// over the flows; the findings.
    fn decide(
        detector: &mut CleartextDetector,
        lab: &Lab,
        flows: &[FlowRecord],
        judged: &dyn Fn(&FlowKey) -> bool,
        now_ns: u64,
    ) -> Findings {
        let find = |key: &FlowKey| flows.iter().find(|f| f.key == *key).copied();
        let mut found = Findings::default();
        let poll = PollEnd {
            find: &find,
            judged,
            ended: &|_| false,
            directory: &lab.directory,
            now_ns,
        };
        detector.check(&poll, &mut found);
        found
    }

    fn defaults() -> CleartextDetector {
        CleartextDetector::new(&Cleartext::default())
    }

    #[test]
    fn http_on_a_tls_port_is_alerted_once_its_samples_settle_without_quoting_them() {
        let lab = Lab::new(3);
        let mut detector = defaults();
        let (client, flows) = connection(&lab, 443, true);
        detector.sample(&client, GET, SEC, SEC);
        let early = decide(&mut detector, &lab, &flows, &|_| false, 3 * SEC - 1);
        assert!(
            early.alerts.is_empty() && early.verdicts.is_empty(),
            "2 s to settle"
        );
        let found = decide(&mut detector, &lab, &flows, &|_| false, 3 * SEC);
        assert_eq!(found.alerts.len(), 1);
        let alert = &found.alerts[0];
        assert_eq!(alert.kind, "cleartext");
        assert_eq!(ends(alert), ("c2".into(), Some("c3".into())));
        assert_eq!(alert.evidence["protocol"], "http");
        assert_eq!(alert.evidence["reason"], "port 443 expects TLS");
        assert!(
            !alert.evidence.to_string().contains("hunter2"),
            "redacted by default"
        );
        assert_eq!(
            found.protocols,
            [(("c2".into(), "c3".into(), "http", false), 1)].into()
        );
        assert!(detector.pending.is_empty());
    }

    #[test]
    fn a_sample_read_late_waits_half_a_second_after_its_read() {
        let lab = Lab::new(3);
        let mut detector = defaults();
        let (client, flows) = connection(&lab, 443, true);
        detector.sample(&client, GET, SEC, 10 * SEC);
        assert!(decide(
            &mut detector,
            &lab,
            &flows,
            &|_| false,
            10 * SEC + SEC / 2 - 1
        )
        .alerts
        .is_empty());
        assert_eq!(
            decide(&mut detector, &lab, &flows, &|_| false, 10 * SEC + SEC / 2)
                .alerts
                .len(),
            1
        );
    }

    #[test]
    fn tls_on_a_tls_port_and_http_where_tls_is_not_required_are_counted_not_alerted() {
        let lab = Lab::new(3);
        let mut detector = defaults();
        let (tls, mut flows) = connection(&lab, 443, true);
        let (http, more) = connection(&lab, 8080, true);
        flows.extend(more);
        detector.sample(&tls, HELLO, SEC, SEC);
        detector.sample(&http, GET, SEC, SEC);
        let found = decide(&mut detector, &lab, &flows, &|_| false, 5 * SEC);
        assert!(found.alerts.is_empty());
        let mut verdicts: Vec<(u16, bool)> = found
            .verdicts
            .iter()
            .map(|(key, v)| (key.dst_port, v.encrypted))
            .collect();
        verdicts.sort_unstable();
        assert_eq!(verdicts, [(443, true), (8080, false)]);
    }

    #[test]
    fn tls_is_required_by_name_by_port_and_by_label() {
        let run = |lab: &Lab, config: Cleartext| {
            let mut detector = CleartextDetector::new(&config);
            let (key, flows) = connection(lab, 8080, true);
            detector.sample(&key, GET, SEC, SEC);
            decide(&mut detector, lab, &flows, &|_| false, 5 * SEC).alerts
        };
        let lab = Lab::new(3);
        let named = |names: &[&str]| Cleartext {
            require_tls: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Cleartext::default()
        };
        assert_eq!(
            run(&lab, named(&["c3"]))[0].evidence["reason"],
            "require_tls names c3"
        );
        assert_eq!(run(&lab, named(&["8080"])).len(), 1);
        assert!(
            run(&lab, named(&["c2", "8081"])).is_empty(),
            "the client is not the destination"
        );
        let tls_ports = Cleartext {
            tls_ports: vec![8080],
            ..Cleartext::default()
        };
        assert_eq!(run(&lab, tls_ports).len(), 1);
        let labelled = Lab::with(3, |c| {
            if c.name == "c3" {
                c.labels.insert("crossmon.tls".into(), "Required".into());
            }
        });
        assert_eq!(run(&labelled, Cleartext::default()).len(), 1);
    }

    #[test]
    fn a_connection_seen_mid_stream_or_judged_before_is_not_alerted() {
        let lab = Lab::new(3);
        let mut detector = defaults();
        let (key, flows) = connection(&lab, 443, false);
        detector.sample(&key, GET, SEC, SEC);
        let found = decide(&mut detector, &lab, &flows, &|_| false, 5 * SEC);
        assert!(
            found.alerts.is_empty(),
            "no SYN seen: a sample past the handshake"
        );
        let (key, flows) = connection(&lab, 443, true);
        detector.sample(&key, GET, SEC, SEC);
        let found = decide(&mut detector, &lab, &flows, &|_| true, 5 * SEC);
        assert!(found.alerts.is_empty() && found.verdicts.is_empty());
    }

    #[test]
    fn the_servers_sample_alone_decides_and_names_the_client_as_source() {
        let lab = Lab::new(3);
        let mut detector = defaults();
        let (key, mut flows) = connection(&lab, 443, true);
        flows[1].stats.direction = Direction::FromContainer as u8;
        detector.sample(&key.reversed(), b"HTTP/1.1 200 OK\r\n\r\n", SEC, SEC);
        let found = decide(&mut detector, &lab, &flows, &|_| false, 5 * SEC);
        assert_eq!(found.alerts.len(), 1);
        assert_eq!(ends(&found.alerts[0]), ("c2".into(), Some("c3".into())));
    }

    #[test]
    fn a_connection_that_ended_before_its_samples_settled_is_judged_at_its_end() {
        let lab = Lab::new(3);
        let mut detector = defaults();
        let (client, flows) = connection(&lab, 443, true);
        detector.sample(&client, GET, SEC, SEC);
        let find = |key: &FlowKey| flows.iter().find(|f| f.key == *key).copied();
        let mut found = Findings::default();
        // Both flows ended at this poll (closed, past a short linger).
        let poll = PollEnd {
            find: &find,
            judged: &|_| false,
            ended: &|_| true,
            directory: &lab.directory,
            now_ns: SEC + SEC / 10,
        };
        detector.check(&poll, &mut found);
        assert_eq!(found.alerts.len(), 1);
        assert_eq!(found.verdicts.len(), 1);
        assert!(detector.pending.is_empty());
    }

    #[test]
    fn hostile_sampling_is_bounded() {
        let mut detector = defaults();
        detector.sample(&FlowKey::ZERO, b"", SEC, SEC);
        assert!(detector.pending.is_empty(), "an empty sample is none");
        for _ in 0..100 {
            detector.sample(&FlowKey::ZERO, GET, SEC, SEC);
        }
        assert_eq!(
            usize::from(detector.pending[&FlowKey::ZERO].samples),
            SAMPLES_PER_FLOW
        );
        for port in 0..=u16::MAX {
            for protocol in [6u8, 17] {
                let key = FlowKey::ipv4([10, 0, 0, 2], port, [10, 0, 0, 3], 443, protocol);
                detector.sample(&key, GET, SEC, SEC);
            }
        }
        assert_eq!(detector.pending.len(), MAX_PENDING);
        // Samples of flows no longer known are dropped once settled.
        let lab = Lab::new(3);
        let found = decide(&mut detector, &lab, &[], &|_| false, 5 * SEC);
        assert!(found.verdicts.is_empty() && detector.pending.is_empty());
    }
}
