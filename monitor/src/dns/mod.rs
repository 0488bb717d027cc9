//! DNS per container: the messages the kernel sends up from port 53
//! (`Event::Dns`, UDP and TCP, both directions) parsed
//! (`datapath::dns`), each
//! query matched with its answer into a [`DnsRecord`]: who asked, what,
//! what came back, how fast. The records are kept for `/api/v1/dns`,
//! queued for the flow log, and counted by container and response code
//! for `/metrics` (names are never labels: they are unbounded).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use monitor_common::{Direction, FlowKey};
use serde::Serialize;

use crate::{
    book::SeriesBook,
    clock,
    datapath::{
        dns as wire,
        events::{Event, Seen},
    },
    docker::{end_name, Directory},
    event_log::{EventBatch, EventConsumer},
    model::{key_addrs, protocol_name},
    sync::lock,
};

/// Records kept for the API, newest last.
pub const RECENT: usize = 1024;
/// Records waiting for the flow log's next poll; beyond, the oldest go.
const UNLOGGED: usize = 16_384;
/// Queries waiting for their answer; beyond, the oldest is given up.
const PENDING: usize = 4096;
/// A query unanswered for this long is recorded without an answer.
pub const ANSWER_TIMEOUT_NS: u64 = 5_000_000_000;

/// One query and what answered it. Field names are a contract
/// (docs/operating.md).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsRecord {
    /// When the query was seen (the answer's time when no query was).
    pub time: String,
    /// Who asked: a container's name, or `host`, `gateway`, `external`,
    /// `unknown`.
    pub container: String,
    pub client_ip: String,
    /// Who answered (or was asked), named the same way.
    pub server: String,
    pub server_ip: String,
    /// `udp` or `tcp`.
    pub protocol: &'static str,
    pub id: u16,
    pub name: String,
    /// `A`, `AAAA`, ..., `TYPEnnn`.
    #[serde(rename = "type")]
    pub qtype: String,
    /// `NOERROR`, `NXDOMAIN`, ...; absent when no answer came.
    pub rcode: Option<&'static str>,
    /// The answer section: addresses, names, or `N bytes` for other types.
    pub answers: Vec<String>,
    /// From query to answer as seen on the veths, when both were seen.
    pub latency_ms: Option<f64>,
}

/// Who a message is between, with its id: a query and its answer share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Exchange {
    client: [u8; 16],
    server: [u8; 16],
    client_port: u16,
    server_port: u16,
    protocol: u8,
    id: u16,
}

struct Pending {
    record: DnsRecord,
    seen_ns: u64,
}

/// Counts for `/metrics`: queries by container, responses by container
/// and response code, queries given up unanswered by container.
#[derive(Default)]
pub struct DnsCounts {
    pub queries: HashMap<String, u64>,
    pub responses: HashMap<(String, &'static str), u64>,
    pub unanswered: HashMap<String, u64>,
    /// Messages from port 53 that did not parse (or a TCP segment that
    /// does not start a message).
    pub malformed: u64,
}

/// What the DNS tracker publishes: the recent records, the flow log's
/// queue, the counts. Shared with the API, `/metrics` and the flow log.
pub struct DnsLog {
    recent: Mutex<VecDeque<DnsRecord>>,
    unlogged: Mutex<VecDeque<DnsRecord>>,
    counts: Mutex<SeriesCounts>,
}

struct SeriesCounts {
    queries: SeriesBook<String, u64>,
    responses: SeriesBook<(String, &'static str), u64>,
    unanswered: SeriesBook<String, u64>,
    malformed: u64,
}

impl DnsLog {
    /// `max_series` bounds the series of each family as traffic series are.
    pub fn new(max_series: usize) -> Arc<Self> {
        Arc::new(Self {
            recent: Mutex::new(VecDeque::new()),
            unlogged: Mutex::new(VecDeque::new()),
            counts: Mutex::new(SeriesCounts {
                queries: SeriesBook::new(max_series, crate::book::OTHER.to_owned()),
                responses: SeriesBook::new(
                    max_series,
                    (crate::book::OTHER.to_owned(), crate::book::OTHER),
                ),
                unanswered: SeriesBook::new(max_series, crate::book::OTHER.to_owned()),
                malformed: 0,
            }),
        })
    }

    /// The latest records, oldest first.
    pub fn recent(&self) -> Vec<DnsRecord> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// The records not yet written to the flow log, oldest first.
    pub fn take_unlogged(&self) -> Vec<DnsRecord> {
        lock(&self.unlogged).drain(..).collect()
    }

    pub fn counts(&self) -> DnsCounts {
        let counts = lock(&self.counts);
        DnsCounts {
            queries: counts
                .queries
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            responses: counts
                .responses
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            unanswered: counts
                .unanswered
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            malformed: counts.malformed,
        }
    }

    fn publish(&self, record: DnsRecord, now_ns: u64) {
        {
            let mut counts = lock(&self.counts);
            *match record.rcode {
                Some(rcode) => counts
                    .responses
                    .value(&(record.container.clone(), rcode), now_ns),
                None => counts.unanswered.value(&record.container, now_ns),
            } += 1;
        }
        push_bounded(&mut lock(&self.unlogged), record.clone(), UNLOGGED);
        push_bounded(&mut lock(&self.recent), record, RECENT);
    }
}

fn push_bounded(queue: &mut VecDeque<DnsRecord>, record: DnsRecord, cap: usize) {
    if queue.len() == cap {
        queue.pop_front();
    }
    queue.push_back(record);
}

/// The event consumer's stage: parses DNS events and matches answers to
/// queries, publishing into its [`DnsLog`].
pub struct DnsTracker {
    log: Arc<DnsLog>,
    pending: HashMap<Exchange, Pending>,
    /// Pending exchanges in the order they came, to give up the oldest.
    order: VecDeque<(Exchange, u64)>,
}

impl DnsTracker {
    pub fn new(log: Arc<DnsLog>) -> Self {
        Self {
            log,
            pending: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// One DNS message as the kernel saw it.
    pub fn message(&mut self, seen: &Seen, key: &FlowKey, data: &[u8], directory: &Directory) {
        let Ok(message) = wire::parse(wire::message_bytes(key.protocol, data)) else {
            lock(&self.log.counts).malformed += 1;
            return;
        };
        let (src, dst) = key_addrs(key);
        // The container behind the veth is named by it; the other end by
        // address.
        let name_of = |ip: IpAddr, behind_veth: bool| {
            behind_veth
                .then(|| directory.by_veth_end(seen.ifindex))
                .flatten()
                .unwrap_or_else(|| directory.by_address(ip))
        };
        let from_veth = seen.direction == Direction::FromContainer;
        let (src_end, dst_end) = (name_of(src, from_veth), name_of(dst, !from_veth));
        let question = message.questions.first();
        if !message.response {
            let exchange = Exchange {
                client: key.src_addr,
                server: key.dst_addr,
                client_port: key.src_port,
                server_port: key.dst_port,
                protocol: key.protocol,
                id: message.id,
            };
            let container = end_name(&src_end).to_owned();
            *lock(&self.log.counts)
                .queries
                .value(&container, seen.timestamp_ns) += 1;
            let record = DnsRecord {
                time: clock::rfc3339_ms(seen.timestamp_ns),
                container,
                client_ip: src.to_string(),
                server: end_name(&dst_end).to_owned(),
                server_ip: dst.to_string(),
                protocol: protocol_name(key.protocol),
                id: message.id,
                name: question.map(|q| q.name.clone()).unwrap_or_default(),
                qtype: question
                    .map(|q| wire::type_name(q.qtype))
                    .unwrap_or_default(),
                rcode: None,
                answers: Vec::new(),
                latency_ms: None,
            };
            self.wait_for_answer(exchange, record, seen.timestamp_ns);
            return;
        }
        let exchange = Exchange {
            client: key.dst_addr,
            server: key.src_addr,
            client_port: key.dst_port,
            server_port: key.src_port,
            protocol: key.protocol,
            id: message.id,
        };
        let answers = message.answers.iter().map(|r| r.data.text()).collect();
        let rcode = Some(wire::rcode_name(message.rcode));
        let record = match self.pending.remove(&exchange) {
            Some(pending) => DnsRecord {
                rcode,
                answers,
                latency_ms: Some(seen.timestamp_ns.saturating_sub(pending.seen_ns) as f64 / 1e6),
                ..pending.record
            },
            None => DnsRecord {
                time: clock::rfc3339_ms(seen.timestamp_ns),
                container: end_name(&dst_end).to_owned(),
                client_ip: dst.to_string(),
                server: end_name(&src_end).to_owned(),
                server_ip: src.to_string(),
                protocol: protocol_name(key.protocol),
                id: message.id,
                name: question.map(|q| q.name.clone()).unwrap_or_default(),
                qtype: question
                    .map(|q| wire::type_name(q.qtype))
                    .unwrap_or_default(),
                rcode,
                answers,
                latency_ms: None,
            },
        };
        self.log.publish(record, seen.timestamp_ns);
    }

    fn wait_for_answer(&mut self, exchange: Exchange, record: DnsRecord, seen_ns: u64) {
        if self.pending.len() >= PENDING {
            self.give_up(|_| true);
        }
        // A retransmitted query keeps the first one's time.
        if self.pending.contains_key(&exchange) {
            return;
        }
        self.pending.insert(exchange, Pending { record, seen_ns });
        self.order.push_back((exchange, seen_ns));
    }

    /// Records the oldest pending queries without an answer while `due`
    /// says so of their time.
    fn give_up(&mut self, due: impl Fn(u64) -> bool) {
        while let Some(&(exchange, seen_ns)) = self.order.front() {
            match self.pending.get(&exchange) {
                // Answered already, or a newer query of the same exchange.
                None => {}
                Some(pending) if pending.seen_ns != seen_ns => {}
                Some(_) if !due(seen_ns) => break,
                Some(_) => {
                    if let Some(pending) = self.pending.remove(&exchange) {
                        self.log.publish(pending.record, seen_ns);
                    }
                }
            }
            self.order.pop_front();
        }
    }

    /// Queries left unanswered past [`ANSWER_TIMEOUT_NS`] are recorded so.
    pub fn expire(&mut self, now_ns: u64) {
        self.give_up(|seen_ns| now_ns.saturating_sub(seen_ns) >= ANSWER_TIMEOUT_NS);
    }
}

impl EventConsumer for DnsTracker {
    fn on_events(&mut self, batch: &EventBatch<'_>) {
        for event in batch.events {
            if let Event::Dns {
                seen, key, data, ..
            } = event
            {
                self.message(seen, key, data, batch.directory);
            }
        }
        self.expire(batch.now_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::ip_proto;
    use wire::build;

    fn seen(direction: Direction, at_ms: u64) -> Seen {
        Seen {
            direction,
            ifindex: 7,
            timestamp_ns: at_ms * 1_000_000,
        }
    }

    const CLIENT: [u8; 4] = [172, 30, 0, 2];
    const SERVER: [u8; 4] = [172, 30, 0, 3];

    #[test]
    fn a_query_and_its_answer_make_one_record_with_latency() {
        let log = DnsLog::new(100);
        let mut tracker = DnsTracker::new(log.clone());
        let directory = Directory::default();
        let query = FlowKey::ipv4(CLIENT, 40000, SERVER, 53, ip_proto::UDP);
        tracker.message(
            &seen(Direction::FromContainer, 1000),
            &query,
            &build::query(77, "db.internal", 1),
            &directory,
        );
        assert!(log.recent().is_empty(), "waits for the answer");
        tracker.message(
            &seen(Direction::FromContainer, 1003),
            &query.reversed(),
            &build::answer(77, "db.internal", 0, &[[10, 1, 2, 3]]),
            &directory,
        );
        let records = log.recent();
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(
            (record.name.as_str(), record.qtype.as_str(), record.rcode),
            ("db.internal", "A", Some("NOERROR"))
        );
        assert_eq!(record.answers, ["10.1.2.3"]);
        assert_eq!(record.latency_ms, Some(3.0));
        assert_eq!(
            (record.client_ip.as_str(), record.server_ip.as_str()),
            ("172.30.0.2", "172.30.0.3")
        );
        assert_eq!(log.take_unlogged().len(), 1);
        assert!(log.take_unlogged().is_empty());
        let counts = log.counts();
        assert_eq!(counts.queries.values().sum::<u64>(), 1);
        assert_eq!(counts.responses.values().sum::<u64>(), 1);
        assert!(counts.unanswered.is_empty());
    }

    #[test]
    fn an_unanswered_query_is_recorded_after_the_timeout_and_garbage_is_counted() {
        let log = DnsLog::new(100);
        let mut tracker = DnsTracker::new(log.clone());
        let directory = Directory::default();
        let key = FlowKey::ipv4(CLIENT, 40001, SERVER, 53, ip_proto::UDP);
        tracker.message(
            &seen(Direction::FromContainer, 0),
            &key,
            &build::query(1, "gone.example", 28),
            &directory,
        );
        tracker.message(
            &seen(Direction::FromContainer, 1),
            &key,
            &[1, 2, 3],
            &directory,
        );
        tracker.expire(ANSWER_TIMEOUT_NS - 1);
        assert!(log.recent().is_empty());
        tracker.expire(ANSWER_TIMEOUT_NS);
        let records = log.recent();
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].rcode, records[0].qtype.as_str()),
            (None, "AAAA")
        );
        assert_eq!(log.counts().malformed, 1);
        assert_eq!(log.counts().unanswered.values().sum::<u64>(), 1);
    }

    #[test]
    fn tcp_messages_are_read_behind_their_length() {
        let log = DnsLog::new(100);
        let mut tracker = DnsTracker::new(log.clone());
        let directory = Directory::default();
        let key = FlowKey::ipv4(CLIENT, 40002, SERVER, 53, ip_proto::TCP);
        let framed = |message: Vec<u8>| {
            let mut out = (message.len() as u16).to_be_bytes().to_vec();
            out.extend(message);
            out
        };
        tracker.message(
            &seen(Direction::FromContainer, 0),
            &key,
            &framed(build::query(5, "big.example", 1)),
            &directory,
        );
        tracker.message(
            &seen(Direction::ToContainer, 2),
            &key.reversed(),
            &framed(build::answer(5, "big.example", 3, &[])),
            &directory,
        );
        let records = log.recent();
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].protocol, records[0].rcode),
            ("tcp", Some("NXDOMAIN"))
        );
    }
}
