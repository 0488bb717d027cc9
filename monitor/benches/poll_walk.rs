//! What the poll's consumers cost when most flows are idle: the traffic
//! series, TCP health and the detectors over 100k TCP flows between 200
//! synthetic containers (50k established connections), of which all, a
//! tenth or a hundredth counted a packet at each poll. Two agents side by
//! side, polled alike and in turn: one walks every flow, as the agent did
//! before, the other what the poller leaves it (the flows with a packet
//! since the previous poll, see `PollView::changed_since`). Only the consumers
//! are timed: the table's read of the kernel map is the same for both and
//! not in the figures. Run by `cargo bench -p monitor --bench poll_walk`.

mod synthetic;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use monitor::{
    alert::AlertSink,
    detect::{config::DetectConfig, Detectors},
    docker::{Directory, Inventory},
    flows::{FlowTable, Poll, PollConsumer, PollOutcome, PollView},
    series::{MetricsConfig, Retransmits, TcpHealth, TrafficSeries},
};
use monitor_common::{ip_proto, tcp_flag, Direction, FlowKey, FlowStats};
use synthetic::{container_ip, inventory, CONTAINERS};

const SEC: u64 = 1_000_000_000;
const FLOWS: usize = 100_000;
const SERVER_PORT: u16 = 8080;
/// Polls a second apart before the timed ones: the idle flows' attempts
/// are then past their deadline (5 s), which walks them once more.
const WARM_POLLS: u64 = 8;
const TIMED_POLLS: usize = 7;

/// The kernel map's entries: both flows of each connection, the first
/// `active` of them (whole connections) counting a packet at each poll.
struct Kernel {
    flows: Vec<(FlowKey, FlowStats)>,
    active: usize,
}

impl Kernel {
    fn new(active: usize, now: u64) -> Kernel {
        let mut flows = Vec::with_capacity(FLOWS);
        for i in 0..(FLOWS / 2) as u32 {
            let client = i % CONTAINERS;
            let round = i / CONTAINERS;
            let server = (client + 1 + round % (CONTAINERS - 1)) % CONTAINERS;
            let port = 30_000 + u16::try_from(round).unwrap_or(u16::MAX);
            let key = FlowKey::ipv4(
                container_ip(client).octets(),
                port,
                container_ip(server).octets(),
                SERVER_PORT,
                ip_proto::TCP,
            );
            let sent = |from: u32| FlowStats {
                packets: 3,
                bytes: 300,
                first_seen_ns: now,
                last_seen_ns: now,
                ifindex: 1000 + from,
                direction: Direction::FromContainer as u8,
                ..FlowStats::default()
            };
            flows.push((
                key,
                FlowStats {
                    syn: 1,
                    tcp_flags: tcp_flag::SYN | tcp_flag::ACK | tcp_flag::PSH,
                    ..sent(client)
                },
            ));
            flows.push((
                key.reversed(),
                FlowStats {
                    syn_ack: 1,
                    tcp_flags: tcp_flag::SYN | tcp_flag::ACK | tcp_flag::PSH,
                    ..sent(server)
                },
            ));
        }
        Kernel { flows, active }
    }

    /// A packet on each active flow at `now`.
    fn tick(&mut self, now: u64) {
        for (_, stats) in &mut self.flows[..self.active] {
            stats.packets += 1;
            stats.bytes += 100;
            stats.last_seen_ns = now;
        }
    }
}

/// One agent's table and consumers.
struct Agent {
    table: FlowTable,
    traffic: TrafficSeries,
    health: TcpHealth,
    detectors: Detectors,
    /// Whether it walks only the flows that changed.
    changed: bool,
    previous_ns: Option<u64>,
}

impl Agent {
    fn new(changed: bool, state_dir: &std::path::Path) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let sink = Arc::new(Mutex::new(AlertSink::new(None, 60 * SEC)));
        Ok(Agent {
            table: FlowTable::new(),
            traffic: TrafficSeries::new(MetricsConfig::default()),
            health: TcpHealth::new(10_000, 600 * SEC, None),
            detectors: Detectors::new(&DetectConfig::default(), sink, state_dir, 10_000)?,
            changed,
            previous_ns: None,
        })
    }

    /// Reads the kernel's entries, then hands the poll to the consumers;
    /// the consumers' time.
    fn poll(
        &mut self,
        kernel: &Kernel,
        directory: &Directory,
        inventory: &Inventory,
        now: u64,
    ) -> Duration {
        let mut outcome = PollOutcome::default();
        self.table.begin_poll(now);
        for (key, stats) in &kernel.flows {
            self.table.observe(key, stats, &mut outcome);
        }
        self.table.end_poll(&mut outcome);
        let previous = self.previous_ns.replace(now);
        let started = Instant::now();
        let mut flows = PollView::new(&self.table, &[]);
        if let Some(previous) = previous.filter(|_| self.changed) {
            flows = flows.changed_since(previous, now);
        }
        self.traffic.update(&flows, directory, Some(inventory), now);
        self.health
            .update(&flows, directory, &Retransmits::default(), now);
        self.detectors.on_poll(&Poll {
            flows,
            directory,
            inventory: Some(inventory),
            denied: &[],
            now_ns: now,
        });
        started.elapsed()
    }

    /// Packets the traffic series counted.
    fn packets(&self) -> u64 {
        self.traffic
            .flow_series()
            .map(|(_, counts)| counts.packets)
            .sum()
    }
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let ports = BTreeSet::from([(SERVER_PORT, ip_proto::TCP)]);
    let inventory = inventory(&ports);
    let directory = Directory::new(Some(&inventory), Default::default());
    let state_dir = std::env::temp_dir().join(format!("crossmon-poll-walk-{}", std::process::id()));
    println!(
        "| flows | of them active | consumers per poll, walking every flow (median of \
         {TIMED_POLLS}) | walking those that changed | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for active in [FLOWS, FLOWS / 10, FLOWS / 100] {
        let mut now = 1_000 * SEC;
        let mut kernel = Kernel::new(active, now);
        let mut every = Agent::new(false, &state_dir.join(format!("every-{active}")))?;
        let mut changed = Agent::new(true, &state_dir.join(format!("changed-{active}")))?;
        let (mut every_times, mut changed_times) = (Vec::new(), Vec::new());
        for poll in 0..WARM_POLLS + TIMED_POLLS as u64 {
            if poll > 0 {
                now += SEC;
                kernel.tick(now);
            }
            // In turn, each first every other poll.
            let (first, second) = if poll % 2 == 0 {
                (&mut every, &mut changed)
            } else {
                (&mut changed, &mut every)
            };
            let first_time = first.poll(&kernel, &directory, &inventory, now);
            let second_time = second.poll(&kernel, &directory, &inventory, now);
            if poll >= WARM_POLLS {
                let (every_time, changed_time) = if poll % 2 == 0 {
                    (first_time, second_time)
                } else {
                    (second_time, first_time)
                };
                every_times.push(every_time);
                changed_times.push(changed_time);
            }
        }
        anyhow::ensure!(
            every.packets() == changed.packets(),
            "the two agents counted {} and {} packets",
            every.packets(),
            changed.packets()
        );
        let (every_ms, changed_ms) = (median(every_times), median(changed_times));
        println!(
            "| {FLOWS} | {active} | {every_ms:.1} ms | {changed_ms:.1} ms | {:.2} |",
            changed_ms / every_ms
        );
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
}
