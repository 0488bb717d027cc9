//! What the poll's consumers cost when most flows are idle: the traffic
//! series, TCP health and the detectors over 100k TCP flows between 200
//! synthetic containers (50k established connections), of which all, a
//! tenth or a hundredth counted a packet at each poll; then connection
//! churn, 10k connections opened and closed each second, each flow ended
//! after a 5 s linger as the poller ends closed connections; then a tenth
//! and a hundredth active again, a container (of no flow) starting or
//! stopping between each two polls. Two agents side by side, polled alike
//! and in turn: one walks every flow, as the agent did before, the other
//! what the poller leaves it (the flows that changed since the previous
//! poll, see `PollView::changed_since`, and those the directory names
//! otherwise, `Directory::renamed_since`). Only the consumers, and the
//! comparison of directories, are timed: the table's read of the kernel
//! map is the same for both and not in the figures. Run by `cargo bench
//! -p monitor --bench poll_walk`.

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
    flows::{EndedFlow, FlowTable, Poll, PollConsumer, PollOutcome, PollView},
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
/// `active` of them (whole connections) counting a packet at each poll;
/// or, under churn, the connections of the last `LINGER_POLLS` polls.
struct Kernel {
    flows: Vec<(FlowKey, FlowStats)>,
    active: usize,
    /// Connections opened and closed at each poll (0: none).
    churn: u32,
    opened: u32,
    /// Flows the last tick took out, closed `LINGER_POLLS` polls ago.
    ended: Vec<FlowKey>,
}

/// How many polls a closed connection's flows stay (the 5 s linger).
const LINGER_POLLS: u64 = 5;
const CHURN: u32 = 10_000;

/// Both flows of the `n`th connection between the synthetic containers,
/// first seen at `now`: a SYN, its SYN-ACK, a packet of data and, under
/// churn, a FIN each way.
fn connection(n: u32, now: u64, closed: bool) -> [(FlowKey, FlowStats); 2] {
    let client = n % CONTAINERS;
    let round = n / CONTAINERS;
    let server = (client + 1 + round % (CONTAINERS - 1)) % CONTAINERS;
    let port = 1_024 + u16::try_from(round % 60_000).unwrap_or(u16::MAX);
    let key = FlowKey::ipv4(
        container_ip(client).octets(),
        port,
        container_ip(server).octets(),
        SERVER_PORT,
        ip_proto::TCP,
    );
    let fin = u32::from(closed);
    let flags = tcp_flag::SYN | tcp_flag::ACK | tcp_flag::PSH;
    let flags = if closed { flags | tcp_flag::FIN } else { flags };
    let sent = |from: u32| FlowStats {
        packets: 3,
        bytes: 300,
        first_seen_ns: now,
        last_seen_ns: now,
        ifindex: 1000 + from,
        direction: Direction::FromContainer as u8,
        fin,
        tcp_flags: flags,
        ..FlowStats::default()
    };
    [
        (
            key,
            FlowStats {
                syn: 1,
                ..sent(client)
            },
        ),
        (
            key.reversed(),
            FlowStats {
                syn_ack: 1,
                ..sent(server)
            },
        ),
    ]
}

impl Kernel {
    fn new(active: usize, now: u64) -> Kernel {
        let flows = (0..(FLOWS / 2) as u32)
            .flat_map(|n| connection(n, now, false))
            .collect();
        Kernel {
            flows,
            active,
            churn: 0,
            opened: 0,
            ended: Vec::new(),
        }
    }

    fn churning(per_poll: u32) -> Kernel {
        Kernel {
            flows: Vec::new(),
            active: 0,
            churn: per_poll,
            opened: 0,
            ended: Vec::new(),
        }
    }

    /// A packet on each active flow at `now`; under churn, the flows
    /// closed `LINGER_POLLS` ago out and the poll's new connections in.
    fn tick(&mut self, now: u64) {
        for (_, stats) in &mut self.flows[..self.active] {
            stats.packets += 1;
            stats.bytes += 100;
            stats.last_seen_ns = now;
        }
        self.ended.clear();
        if self.churn == 0 {
            return;
        }
        let (ended, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flows)
            .into_iter()
            .partition(|(_, stats)| stats.last_seen_ns + LINGER_POLLS * SEC <= now);
        self.ended = ended.into_iter().map(|(key, _)| key).collect();
        self.flows = kept;
        for n in self.opened..self.opened + self.churn {
            self.flows.extend(connection(n, now, true));
        }
        self.opened += self.churn;
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
    /// The previous poll's time and directory.
    previous: Option<(u64, Arc<Directory>)>,
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
            previous: None,
        })
    }

    /// Reads the kernel's entries, then hands the poll to the consumers;
    /// the consumers' time.
    fn poll(&mut self, kernel: &Kernel, host: &Host, now: u64) -> Duration {
        let Host {
            directory,
            inventory,
        } = host;
        let mut outcome = PollOutcome::default();
        self.table.begin_poll(now);
        for (key, stats) in &kernel.flows {
            self.table.observe(key, stats, &mut outcome);
        }
        self.table.end_poll(&mut outcome);
        let ended: Vec<EndedFlow> = kernel
            .ended
            .iter()
            .filter_map(|key| self.table.end(key))
            .collect();
        let previous = self.previous.replace((now, Arc::clone(directory)));
        let started = Instant::now();
        let mut flows = PollView::new(&self.table, &ended);
        let since = previous
            .filter(|_| self.changed)
            .and_then(|(previous_ns, previous)| {
                Some((previous_ns, directory.renamed_since(&previous)?))
            });
        if let Some((since, renamed)) = since {
            flows = flows.renamed(renamed).changed_since(since, now);
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

/// What the engine tells of the host at a poll.
struct Host {
    directory: Arc<Directory>,
    inventory: Inventory,
}

impl Host {
    fn of(inventory: Inventory) -> Host {
        Host {
            directory: Arc::new(Directory::new(Some(&inventory), Default::default())),
            inventory,
        }
    }
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

const START: u64 = 1_000 * SEC;

/// Two agents polled alike and in turn over `kernel`, the host as one of
/// `hosts` after the other: the median time of each's consumers, walking
/// every flow and those that changed, in ms.
fn side_by_side(
    mut kernel: Kernel,
    hosts: &[Host],
    state_dir: &std::path::Path,
) -> anyhow::Result<(f64, f64)> {
    let run = format!("{}-{}-{}", kernel.active, kernel.churn, hosts.len());
    let mut every = Agent::new(false, &state_dir.join(format!("every-{run}")))?;
    let mut changed = Agent::new(true, &state_dir.join(format!("changed-{run}")))?;
    let (mut every_times, mut changed_times) = (Vec::new(), Vec::new());
    let mut now = START;
    for poll in 0..WARM_POLLS + TIMED_POLLS as u64 {
        if poll > 0 || kernel.churn > 0 {
            now += SEC;
            kernel.tick(now);
        }
        // In turn, each first every other poll.
        let (first, second) = if poll % 2 == 0 {
            (&mut every, &mut changed)
        } else {
            (&mut changed, &mut every)
        };
        let host = &hosts[usize::try_from(poll).unwrap_or(0) % hosts.len()];
        let first_time = first.poll(&kernel, host, now);
        let second_time = second.poll(&kernel, host, now);
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
    Ok((median(every_times), median(changed_times)))
}

fn main() -> anyhow::Result<()> {
    let ports = BTreeSet::from([(SERVER_PORT, ip_proto::TCP)]);
    let steady = [Host::of(inventory(CONTAINERS, &ports))];
    // The last container has no flow: it starts, then stops and is
    // forgotten, between each two polls.
    let starting = [
        Host::of(inventory(CONTAINERS, &ports)),
        Host::of(inventory(CONTAINERS + 1, &ports)),
    ];
    let state_dir = std::env::temp_dir().join(format!("crossmon-poll-walk-{}", std::process::id()));
    println!(
        "| flows | of them active | consumers per poll, walking every flow (median of \
         {TIMED_POLLS}) | walking those that changed | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let row = |kernel: Kernel, hosts: &[Host], what: &str| -> anyhow::Result<()> {
        let (every_ms, changed_ms) = side_by_side(kernel, hosts, &state_dir)?;
        println!(
            "| {what} | {every_ms:.1} ms | {changed_ms:.1} ms | {:.2} |",
            changed_ms / every_ms
        );
        Ok(())
    };
    for active in [FLOWS, FLOWS / 10, FLOWS / 100] {
        row(
            Kernel::new(active, START),
            &steady,
            &format!("{FLOWS} | {active}"),
        )?;
    }
    let kept = 2 * CHURN * u32::try_from(LINGER_POLLS).unwrap_or(u32::MAX);
    row(
        Kernel::churning(CHURN),
        &steady,
        &format!(
            "{kept} | churn: {CHURN} connections a second, closed at once, kept {LINGER_POLLS} s"
        ),
    )?;
    for active in [FLOWS / 10, FLOWS / 100] {
        row(
            Kernel::new(active, START),
            &starting,
            &format!("{FLOWS} | {active}, a container starting or stopping at each poll"),
        )?;
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
}
