//! `--flow-log PATH`: one JSON line per connection when it ends, and at an
//! interval while it lasts, for investigation and SIEM ingestion. A line
//! joins the two directions of a connection: both ends named, packets and
//! bytes each way, the TCP outcome. The file rotates by size.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use monitor_common::{ip_proto, FlowKey};
use serde::Serialize;

use crate::{
    clock,
    detect::PayloadVerdict,
    dns::{DnsLog, DnsRecord},
    docker::{Directory, FlowEnd},
    flows::{outcome, ByFlow, FlowSet, Poll, PollConsumer, PollView},
    model::{key_addrs, protocol_name, tcp_flag_names, FlowRecord},
    rotating::RotatingFile,
    series::{handshake_rtt_ns, DropCounts, KernelDrop, Retransmits},
    sync::{lock, Published},
};

#[derive(Clone, Debug)]
pub struct FlowLogConfig {
    pub path: PathBuf,
    /// A connection still active is logged again after this long.
    pub interval: Duration,
    pub max_bytes: u64,
    pub keep: u32,
}

impl FlowLogConfig {
    /// `--flow-log-interval`.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
    /// `--flow-log-max-mib`.
    pub const DEFAULT_MAX_MIB: u64 = 100;
    /// `--flow-log-keep`.
    pub const DEFAULT_KEEP: u32 = 5;
}

/// One line of the flow log. Field names are a contract (docs/alerts.md).
#[derive(Serialize)]
struct FlowLine {
    time: String,
    /// `update` while the connection lasts, `end` once it went idle.
    event: &'static str,
    src: FlowEnd,
    dst: FlowEnd,
    src_ip: String,
    dst_ip: String,
    src_port: u16,
    dst_port: u16,
    protocol: &'static str,
    first_seen: String,
    last_seen: String,
    /// From `src` to `dst`, and back.
    packets: u64,
    bytes: u64,
    reply_packets: u64,
    reply_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpLine>,
    /// `established`, `refused`, `answered`, `unanswered`; absent while
    /// unknown or when the connection began before crossmon.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    /// For a connection unanswered: what the kernel did to its packets,
    /// where it dropped them (`skb:kfree_skb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_drop: Option<KernelDrop>,
    /// What the first payload bytes showed: `{protocol, encrypted}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<PayloadVerdict>,
}

/// A DNS line of the flow log: the record as `/api/v1/dns` serves it,
/// marked `"event": "dns"`.
#[derive(Serialize)]
struct DnsLine {
    event: &'static str,
    #[serde(flatten)]
    record: DnsRecord,
}

#[derive(Serialize)]
struct TcpLine {
    flags: Vec<&'static str>,
    reply_flags: Vec<&'static str>,
    syn: u32,
    syn_ack: u32,
    rst: u32,
    fin: u32,
    /// Connections `src` opened on these ports: more than one where it
    /// came back on them while the line's flows were kept.
    connections: u32,
    /// First SYN to first SYN-ACK, as seen on the veths.
    #[serde(skip_serializing_if = "Option::is_none")]
    handshake_rtt_ms: Option<f64>,
    /// Segments both ends retransmitted (`tcp:tcp_retransmit_skb`);
    /// absent where that tracepoint is not attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    retransmits: Option<u64>,
}

/// What the kernel's tracepoints add to a line: the packets it dropped
/// between two addresses (`skb:kfree_skb`) and the segments retransmitted
/// on a connection (`tcp:tcp_retransmit_skb`).
pub struct KernelView<'a> {
    pub dropped: &'a dyn Fn(IpAddr, IpAddr) -> Option<KernelDrop>,
    pub retransmits: &'a Retransmits,
}

pub struct FlowLog {
    file: RotatingFile,
    interval_ns: u64,
    /// Connections (by the key of their initiating flow) to when they were
    /// last logged.
    logged: ByFlow<u64>,
    /// Final counts of answer flows that ended before their initiator.
    ended_answers: ByFlow<FlowRecord>,
    /// Initiators logged as ended while their answer flow lasts: the
    /// answer must not lead a line of its own once alone.
    ended_leaders: FlowSet,
}

/// Whether `flow` carries the connection's line: the initiating flow, or
/// for a connection that began before crossmon, the lower key.
fn leads(flow: &FlowRecord, reverse: Option<&FlowRecord>) -> bool {
    let Some(reverse) = reverse else {
        return true;
    };
    match (
        outcome::is_attempt(flow, Some(reverse)),
        outcome::is_attempt(reverse, Some(flow)),
    ) {
        (true, false) => true,
        (false, true) => false,
        _ => bytes_of(&flow.key) < bytes_of(&reverse.key),
    }
}

fn bytes_of(key: &FlowKey) -> ([u8; 16], [u8; 16], u16, u16) {
    (key.src_addr, key.dst_addr, key.src_port, key.dst_port)
}

impl FlowLog {
    pub fn open(config: &FlowLogConfig) -> anyhow::Result<FlowLog> {
        Ok(FlowLog {
            file: RotatingFile::open(&config.path, config.max_bytes, config.keep)?,
            interval_ns: u64::try_from(config.interval.as_nanos()).unwrap_or(u64::MAX),
            logged: ByFlow::default(),
            ended_answers: ByFlow::default(),
            ended_leaders: FlowSet::default(),
        })
    }

    /// After each poll: lines for connections that ended, and for those
    /// active and not logged within the interval.
    /// `payload` gives the verdict on a connection's payload by the key of
    /// its client flow.
    pub fn on_poll(
        &mut self,
        flows: &PollView,
        directory: &Directory,
        payload: &dyn Fn(&FlowKey) -> Option<PayloadVerdict>,
        kernel: &KernelView<'_>,
        now_ns: u64,
    ) {
        let find = |key: &FlowKey| {
            flows
                .find(key)
                .or_else(|| self.ended_answers.get(key).copied())
        };
        let mut lines = Vec::new();
        let mut answers_ended = Vec::new();
        let mut written = Vec::new();
        let mut finished_answers = Vec::new();
        // Every flow, not only those that changed: a connection is due
        // its interval line however long it has been quiet since its last.
        for (record, is_ended) in flows.every_record() {
            let reverse = find(&record.key.reversed());
            if self.ended_leaders.contains(&record.key.reversed()) {
                if is_ended {
                    finished_answers.push(record.key);
                }
                continue;
            }
            if !leads(&record, reverse.as_ref()) {
                if is_ended {
                    answers_ended.push(record);
                }
                continue;
            }
            let last = self.logged.get(&record.key).copied();
            let since = last.unwrap_or(record.stats.first_seen_ns);
            let due = now_ns.saturating_sub(since) >= self.interval_ns
                && last.is_none_or(|at| record.stats.last_seen_ns > at);
            if !is_ended && !due {
                continue;
            }
            let verdict = payload(&record.key);
            lines.push(self.line(
                &record,
                reverse.as_ref(),
                is_ended,
                (directory, kernel),
                verdict,
                now_ns,
            ));
            written.push((record.key, is_ended));
        }
        for key in finished_answers {
            self.ended_leaders.remove(&key.reversed());
        }
        for (key, is_ended) in written {
            if is_ended {
                self.logged.remove(&key);
                if self.ended_answers.remove(&key.reversed()).is_none()
                    && flows.is_live(&key.reversed())
                {
                    self.ended_leaders.insert(key);
                }
            } else {
                self.logged.insert(key, now_ns);
            }
        }
        for answer in answers_ended {
            // Kept until its initiator ends; bounded like the table.
            if flows.is_live(&answer.key.reversed()) {
                self.ended_answers.insert(answer.key, answer);
            }
        }
        for line in lines {
            if let Err(err) = self.file.write_line(&line) {
                tracing::warn!("flow log: {err:#}");
                break;
            }
        }
    }

    /// A line per DNS query answered (or given up) since the last poll.
    pub fn dns(&mut self, records: Vec<DnsRecord>) {
        for record in records {
            let line = DnsLine {
                event: "dns",
                record,
            };
            if let Err(err) = self
                .file
                .write_line(&serde_json::to_string(&line).unwrap_or_default())
            {
                tracing::warn!("flow log: {err:#}");
                break;
            }
        }
    }

    fn line(
        &self,
        record: &FlowRecord,
        reverse: Option<&FlowRecord>,
        ended: bool,
        // Who the ends are, and what the kernel saw of them.
        (directory, kernel): (&Directory, &KernelView<'_>),
        payload: Option<PayloadVerdict>,
        now_ns: u64,
    ) -> String {
        let (src, dst) = key_addrs(&record.key);
        let (src_end, dst_end) = directory.ends(&record.key, &record.stats);
        let stats = &record.stats;
        let reply = reverse.map(|r| r.stats).unwrap_or_default();
        let last_seen = stats.last_seen_ns.max(reply.last_seen_ns);
        let outcome = outcome::is_attempt(record, reverse)
            .then(|| outcome::outcome(record, reverse, ended, now_ns))
            .flatten();
        let line = FlowLine {
            time: clock::rfc3339_ms(if ended { last_seen } else { now_ns }),
            event: if ended { "end" } else { "update" },
            src: src_end,
            dst: dst_end,
            src_ip: src.to_string(),
            dst_ip: dst.to_string(),
            src_port: record.key.src_port,
            dst_port: record.key.dst_port,
            protocol: protocol_name(record.key.protocol),
            first_seen: clock::rfc3339_ms(stats.first_seen_ns),
            last_seen: clock::rfc3339_ms(last_seen),
            packets: stats.packets,
            bytes: stats.bytes,
            reply_packets: reply.packets,
            reply_bytes: reply.bytes,
            tcp: (record.key.protocol == ip_proto::TCP).then(|| TcpLine {
                flags: tcp_flag_names(stats.tcp_flags),
                reply_flags: tcp_flag_names(reply.tcp_flags),
                syn: stats.syn,
                syn_ack: reply.syn_ack,
                rst: stats.rst.saturating_add(reply.rst),
                fin: stats.fin.saturating_add(reply.fin),
                connections: stats.connections,
                handshake_rtt_ms: handshake_rtt_ns(record, reverse).map(|ns| ns as f64 / 1e6),
                retransmits: kernel.retransmits.of_connection(&record.key),
            }),
            kernel_drop: outcome
                .filter(|o| o.name() == "unanswered")
                .and_then(|_| (kernel.dropped)(src, dst)),
            outcome: outcome.map(outcome::Outcome::name),
            payload,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// The payload verdict of a connection, by the key of its client flow.
pub type PayloadSource = Box<dyn Fn(&FlowKey) -> Option<PayloadVerdict> + Send>;

/// The flow log as the poller feeds it, with where payload verdicts come
/// from (the detectors, which decide them).
pub struct FlowLogging {
    pub log: FlowLog,
    pub payload: PayloadSource,
    /// The DNS records to log (a line each) after each poll.
    pub dns: Arc<DnsLog>,
    /// The kernel's drops, where its tracepoint is attached.
    pub drops: Option<Arc<Mutex<DropCounts>>>,
    /// The kernel's retransmissions, published by the TCP health series
    /// (a consumer before this one).
    pub retransmits: Published<Retransmits>,
}

impl PollConsumer for FlowLogging {
    fn on_poll(&mut self, poll: &Poll<'_>) {
        let drops = self.drops.as_ref().map(|drops| lock(drops));
        let dropped = |src, dst| drops.as_ref()?.between(src, dst);
        let retransmits = self.retransmits.load();
        self.log.on_poll(
            &poll.flows,
            poll.directory,
            &*self.payload,
            &KernelView {
                dropped: &dropped,
                retransmits: &retransmits,
            },
            poll.now_ns,
        );
        self.log.dns(self.dns.take_unlogged());
    }
}
