//! Property test of the walk [`super::changed_since`] gives the consumers:
//! they make the same of every poll as when they walk every flow. Random
//! traffic between containers (handshakes answered at once or seconds
//! later, refused or never; UDP answered or not; flows quiet for long
//! stretches, then busy again; retransmissions lost inside a container,
//! which the kernel counts but no flow does; connections closed; flows
//! expired; polls from a tenth of a second to nine seconds apart; packets
//! stamped up to a tick early, as the programs' tick clock does; a client
//! sending from another's address; a container the directory learns of
//! late, its young flows held until then; from then on, containers
//! renamed, relabelled, started or forgotten) goes through two pipelines
//! fed the same kernel reads: one walks every flow at every poll, the
//! other what the poller leaves it. After every poll their traffic and
//! TCP series, alerts and learnt policy must be equal.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use monitor_common::{ip_proto, tcp_flag, Direction, FlowKey, FlowStats};
use proptest::{collection, prelude::*};

use super::{changed_since, Handed, NAME_WAIT};
use crate::{
    alert::{Alert, AlertSink},
    detect::{
        config::DetectConfig,
        testkit::{front, Lab},
        Detectors,
    },
    docker::{Container, Directory},
    flows::{EndedFlow, FlowSet, FlowTable, Poll, PollConsumer, PollOutcome, PollView},
    policy::Learner,
    series::{MetricsConfig, Retransmits, TcpHealth, TrafficSeries},
    sync::lock,
};

const SEC: u64 = 1_000_000_000;
const IDLE_TIMEOUT: u64 = 40 * SEC;
const CLOSE_LINGER: u64 = 5 * SEC;
/// Containers c2 to c5 (ifindex 1002 to 1005): c5 is unknown to the
/// directory until the step a case names.
const CONTAINERS: u8 = 4;

/// The directories a case's steps see once c5 is named: the first one
/// most often, each change between two of them a container's start, stop
/// or edit that the targeted walk must follow.
fn named_directories() -> Vec<Arc<Directory>> {
    let edit = |name: &'static str, edit: fn(&mut Container)| {
        Lab::with(CONTAINERS, move |container| {
            if container.name == name {
                edit(container);
            }
        })
    };
    [
        Lab::new(CONTAINERS),
        // c6 starts, with no flow of its own.
        Lab::new(CONTAINERS + 1),
        edit("c3", |c3| c3.name = "c3-renamed".into()),
        edit("c4", |c4| {
            c4.compose_project = Some("shop".into());
            c4.compose_service = Some("db".into());
        }),
        // c5 forgotten: gone longer than departed containers are kept.
        Lab::new(CONTAINERS - 1),
    ]
    .into_iter()
    .map(|lab| Arc::new(lab.directory))
    .collect()
}

fn directory_choice() -> impl Strategy<Value = usize> {
    prop_oneof![6 => Just(0usize), 1 => 1..5usize]
}
const PORTS: [u16; 3] = [80, 5432, 53];

#[derive(Clone, Copy, Debug)]
enum Segment {
    Syn,
    SynAck,
    Ack,
    Rst,
    Fin,
    /// A TCP segment the sender retransmitted but lost before its veth
    /// (a path dropped inside the container): counted by the kernel's
    /// retransmit tracepoint, never by the flow.
    Lost,
}

/// A packet of the connection (or UDP exchange) between a client and a
/// server, sent by either.
#[derive(Clone, Copy, Debug)]
struct Packet {
    client: u8,
    server: u8,
    port: usize,
    udp: bool,
    from_server: bool,
    /// Sent by the client from the next client's address: named by its
    /// veth, not by its source.
    spoofed: bool,
    segment: Segment,
}

impl Packet {
    fn key(&self) -> FlowKey {
        let client = if self.spoofed && !self.from_server {
            front(2 + (self.client + 1) % CONTAINERS)
        } else {
            front(2 + self.client)
        };
        let server = front(2 + self.server);
        let client_port = 40_000 + u16::from(self.client);
        let protocol = if self.udp {
            ip_proto::UDP
        } else {
            ip_proto::TCP
        };
        let key = FlowKey::ipv4(client, client_port, server, PORTS[self.port], protocol);
        if self.from_server {
            key.reversed()
        } else {
            key
        }
    }

    /// Counts the packet into the kernel's entry of its flow, as the
    /// programs do at the sender's veth, or into the retransmissions.
    fn count(&self, kernel: &mut Kernel, now: u64) {
        if let Segment::Lost = self.segment {
            if !self.udp {
                *kernel.retransmits.entry(self.key()).or_default() += 1;
            }
            return;
        }
        let sender = if self.from_server {
            self.server
        } else {
            self.client
        };
        let stats = kernel.flows.entry(self.key()).or_insert_with(|| FlowStats {
            first_seen_ns: now,
            ifindex: Lab::veth(front(2 + sender)),
            direction: Direction::FromContainer as u8,
            ..FlowStats::default()
        });
        stats.packets += 1;
        stats.bytes += 60;
        stats.last_seen_ns = now;
        if self.udp {
            return;
        }
        let flags = match self.segment {
            Segment::Syn => {
                stats.syn += 1;
                tcp_flag::SYN
            }
            Segment::SynAck => {
                stats.syn_ack += 1;
                tcp_flag::SYN | tcp_flag::ACK
            }
            Segment::Ack => tcp_flag::ACK,
            Segment::Rst => {
                stats.rst += 1;
                tcp_flag::RST | tcp_flag::ACK
            }
            Segment::Fin => {
                stats.fin += 1;
                tcp_flag::FIN | tcp_flag::ACK
            }
            Segment::Lost => return,
        };
        // A client's connections and handshakes, as the programs tell
        // them (`flow::count_into`): a SYN past the handshake opens the
        // flow's next connection, its flags starting over.
        let before = stats.tcp_flags;
        if flags == tcp_flag::SYN && (stats.connections == 0 || before & tcp_flag::PAST_SYN != 0) {
            stats.connections += 1;
            stats.tcp_flags = flags;
            return;
        }
        if before & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN && flags & tcp_flag::ACK != 0 {
            stats.handshakes += 1;
        }
        stats.tcp_flags |= flags;
    }
}

/// What the programs counted: the flow map, and the retransmissions by
/// flow.
#[derive(Default)]
struct Kernel {
    flows: HashMap<FlowKey, FlowStats>,
    retransmits: HashMap<FlowKey, u64>,
}

/// Time passes, the packets go, then the agent polls.
#[derive(Clone, Debug)]
struct Step {
    after_ms: u64,
    /// How much earlier than when they are counted the packets are
    /// stamped: up to a tick at 100 Hz.
    early_ms: u64,
    /// Counted a millisecond after the previous poll's clock read, past
    /// the previous read of their flows; else at this poll's clock read.
    after_previous_read: bool,
    packets: Vec<Packet>,
}

fn packet() -> impl Strategy<Value = Packet> {
    let segment = prop_oneof![
        3 => Just(Segment::Syn),
        3 => Just(Segment::SynAck),
        4 => Just(Segment::Ack),
        1 => Just(Segment::Rst),
        1 => Just(Segment::Fin),
        1 => Just(Segment::Lost),
    ];
    (
        0..CONTAINERS,
        0..CONTAINERS,
        0..PORTS.len(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.1),
        segment,
    )
        .prop_map(
            |(client, server, port, udp, from_server, spoofed, segment)| Packet {
                client,
                server,
                port,
                udp,
                from_server,
                spoofed,
                segment,
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    let after_ms = prop_oneof![100..1_500u64, 1_500..9_000u64];
    // Most polls see nothing new: the flows go quiet.
    let packets = prop_oneof![
        2 => Just(Vec::new()),
        3 => collection::vec(packet(), 1..6),
    ];
    (after_ms, 0..=10u64, any::<bool>(), packets).prop_map(
        |(after_ms, early_ms, after_previous_read, packets)| Step {
            after_ms,
            early_ms,
            after_previous_read,
            packets,
        },
    )
}

/// The detectors at thresholds this little traffic crosses, so that
/// their alerts take part in the comparison.
fn sensitive() -> DetectConfig {
    toml::from_str(
        r#"
        [port_scan]
        threshold = 2.0
        slow_threshold = 3.0
        [host_sweep]
        threshold = 2.0
        slow_threshold = 3.0
        [syn_flood]
        min_syns = 3
        [packet_flood]
        min_packets = 4
        factor = 2.0
        [new_connection]
        learning_period = "20s"
        [traffic_spike]
        window = "10s"
        min_bytes = 120
        factor = 2.0
        warmup_windows = 1
        "#,
    )
    .expect("valid settings")
}

/// One agent: its table, and the consumers it feeds.
struct Pipeline {
    table: FlowTable,
    consumers: Consumers,
}

struct Consumers {
    traffic: TrafficSeries,
    health: TcpHealth,
    detectors: Detectors,
    sink: Arc<Mutex<AlertSink>>,
    learner: Learner,
    state_dir: PathBuf,
}

impl Pipeline {
    /// `grace_ns`: the traffic series' (`--series-grace`).
    fn new(grace_ns: u64) -> Pipeline {
        static CASE: AtomicUsize = AtomicUsize::new(0);
        let state_dir = std::env::temp_dir().join(format!(
            "crossmon-quiet-flows-{}-{}",
            std::process::id(),
            CASE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let sink = Arc::new(Mutex::new(AlertSink::new(None, 60 * SEC)));
        let detectors =
            Detectors::new(&sensitive(), sink.clone(), &state_dir, 10_000).expect("detectors");
        Pipeline {
            table: FlowTable::new(),
            consumers: Consumers {
                traffic: TrafficSeries::new(MetricsConfig {
                    grace_ns,
                    ..MetricsConfig::default()
                }),
                health: TcpHealth::new(10_000, 600 * SEC, None),
                detectors,
                sink,
                learner: Learner::default(),
                state_dir,
            },
        }
    }

    /// The kernel map's entries into the table, as `poll_once` reads them.
    fn read(&mut self, kernel: &[(FlowKey, FlowStats)], now: u64) {
        let mut outcome = PollOutcome::default();
        self.table.begin_poll(now);
        for (key, stats) in kernel {
            self.table.observe(key, stats, &mut outcome);
        }
        self.table.end_poll(&mut outcome);
    }

    /// The flows `poll_once` took out of the kernel map (idle, or of a
    /// closed connection) out of the table, with the idle ones it forgets.
    fn end(
        &mut self,
        taken: &[(FlowKey, FlowStats)],
        closed: &FlowSet,
        now: u64,
    ) -> Vec<EndedFlow> {
        for (key, last) in taken {
            self.table.retire(key, last);
        }
        let mut ended = self.table.expire(now - IDLE_TIMEOUT);
        ended.extend(closed.iter().filter_map(|key| self.table.end(key)));
        ended
    }
}

impl Consumers {
    fn consume(
        &mut self,
        flows: PollView,
        directory: &Directory,
        retransmits: &Retransmits,
        now: u64,
    ) {
        self.traffic.update(&flows, directory, None, now);
        self.health.update(&flows, directory, retransmits, now);
        self.learner.on_poll(&flows, directory, now);
        self.detectors.on_poll(&Poll {
            flows,
            directory,
            inventory: None,
            denied: &[],
            now_ns: now,
        });
    }

    /// What the consumers made of the polls so far, in an order of its own.
    fn made(&self) -> Vec<String> {
        let mut made: Vec<String> = self
            .traffic
            .flow_series()
            .map(|(labels, counts)| format!("flow {labels:?} {} {}", counts.packets, counts.bytes))
            .chain(
                self.traffic
                    .connection_series()
                    .map(|(labels, count)| format!("connections {labels:?} {count}")),
            )
            .chain(self.health.rtt().map(|(pair, histogram)| {
                format!("rtt {pair:?} {:?} {}", histogram.buckets, histogram.count)
            }))
            .chain(
                self.health
                    .resets()
                    .map(|(pair, count)| format!("resets {pair:?} {count}")),
            )
            .chain(
                self.health
                    .retransmits()
                    .map(|(pair, count)| format!("retransmits {pair:?} {count}")),
            )
            // By kind and target: which of several sources a port scan
            // alert names depends on the order of the poll's attempts,
            // which each table's own hash seed sets.
            .chain(lock(&self.sink).recent().map(|alert| {
                let target = alert.destination.as_ref().map(Alert::end_name);
                format!("alert {} {:?} {target:?}", alert.kind, alert.severity)
            }))
            .chain(
                self.learner
                    .to_yaml(std::time::Duration::from_secs(1))
                    .lines()
                    .filter(|line| !line.starts_with('#'))
                    // Wall-clock time, read at each call: the two
                    // pipelines' calls can straddle a second (always
                    // when the host has been up less than the cases'
                    // simulated clock, when the stamp is the time now).
                    .map(|line| {
                        line.split_once(", first seen ")
                            .map_or(line, |(kept, _)| kept)
                    })
                    .map(|line| format!("policy {line}")),
            )
            .collect();
        made.sort();
        made
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn consumers_make_the_same_of_each_poll_walking_only_flows_that_changed(
        steps in collection::vec(step(), 1..40),
        named_at in 0..40usize,
        directories in collection::vec(directory_choice(), 40),
        short_grace in any::<bool>(),
    ) {
        // A short grace has served ports forgotten and looked up again
        // within the cases' time, and within a name's hold.
        let grace_ns = if short_grace { 12 * SEC } else { MetricsConfig::default().grace_ns };
        let mut every = Pipeline::new(grace_ns);
        let mut changed = Pipeline::new(grace_ns);
        let mut kernel = Kernel::default();
        let mut handed: Option<Handed> = None;
        let unnamed = Arc::new(Lab::new(CONTAINERS - 1).directory);
        let named = named_directories();
        let mut now = 1_000 * SEC;
        for (index, step) in steps.iter().enumerate() {
            let counted = if step.after_previous_read { now + 1_000_000 } else { now + step.after_ms * 1_000_000 };
            now += step.after_ms * 1_000_000;
            for packet in &step.packets {
                packet.count(&mut kernel, counted - step.early_ms * 1_000_000);
            }
            let directory = if index < named_at { &unnamed } else { &named[directories[index]] };
            let read: Vec<_> = kernel.flows.iter().map(|(key, stats)| (*key, *stats)).collect();
            every.read(&read, now);
            changed.read(&read, now);
            let closing: Vec<FlowKey> = read
                .iter()
                .filter(|(key, stats)| {
                    key.protocol == ip_proto::TCP
                        && (stats.rst != 0 || stats.fin != 0)
                        && stats.last_seen_ns < now - CLOSE_LINGER
                })
                .map(|(key, _)| *key)
                .collect();
            let closed = every.table.closed(&closing, now - CLOSE_LINGER);
            let taken: Vec<_> = read
                .iter()
                .filter(|(key, stats)| {
                    stats.last_seen_ns < now - IDLE_TIMEOUT || closed.contains(key)
                })
                .copied()
                .collect();
            for (key, _) in &taken {
                kernel.flows.remove(key);
            }
            let ended_every = every.end(&taken, &closed, now);
            let ended_changed = changed.end(&taken, &closed, now);
            // c5's veth, unnamed, has its young flows held as the poller
            // holds them.
            let held: HashSet<u32> = if index < named_at {
                HashSet::from([Lab::veth(front(2 + CONTAINERS - 1))])
            } else {
                HashSet::new()
            };
            let young = now - NAME_WAIT.as_secs() * SEC;
            let since = changed_since(handed.as_ref(), directory, &held);
            handed = Some(Handed {
                now_ns: now,
                directory: Arc::clone(directory),
                held: held.clone(),
            });
            let retransmits = || Retransmits::from(Some(kernel.retransmits.clone()));
            every.consumers.consume(
                PollView::new(&every.table, &ended_every).holding(held.clone(), young),
                directory,
                &retransmits(),
                now,
            );
            let mut view = PollView::new(&changed.table, &ended_changed).holding(held, young);
            if let Some((since, renamed)) = since {
                view = view.renamed(renamed).changed_since(since, now);
            }
            changed.consumers.consume(view, directory, &retransmits(), now);
            prop_assert_eq!(every.consumers.made(), changed.consumers.made(), "after step {}", index);
            // A flow that left the table without the detectors freeing
            // its state would change nothing the pipelines make.
            for pipeline in [&every, &changed] {
                prop_assert!(pipeline.consumers.detectors.followed_flows() <= pipeline.table.len());
            }
        }
    }
}
