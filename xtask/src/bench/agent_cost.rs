//! What the agent itself costs, and how many new flows a second its event
//! path carries (issue 7, workloads 5 and 6): CPU and memory at 1k, 10k and
//! 100k active flows, `/metrics` at 1k, 10k and 50k series, new-flow events
//! at rising rates. Fresh crossmon sessions, after the throughput runs.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};

use super::{
    cargo_bench, minutes,
    monitor::{metrics, sample, Kind, Monitor, Session},
    net::BenchNet,
    render_scale::{self, RenderScale},
    report::{median, verdict},
    sleep,
    udp_flows::{Pattern, Sent, UdpFlows},
};

/// What a cost run keeps in the agent's table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub flows: u64,
    /// Of them, those sent a datagram every second; the others were sent
    /// one at the start and wait out the idle timeout, as on a host where
    /// most flows are finished connections and DNS lookups.
    pub active: u64,
}

/// The cost runs' loads, and how many runs of each (three at 100k
/// active, the target's load; one of the slow warm-up to 100k flows of
/// which 10k stay active).
const LOADS: [(Load, usize); 4] = [
    (Load::all_active(1_000), 3),
    (Load::all_active(10_000), 3),
    (Load::all_active(100_000), 3),
    (
        Load {
            flows: 100_000,
            active: 10_000,
        },
        1,
    ),
];

impl Load {
    const fn all_active(flows: u64) -> Load {
        Load {
            flows,
            active: flows,
        }
    }
}
/// Measured time of each cost run: 8 polls or so, and a clock tick
/// (10 ms) is 0.125 % of a core over it.
const WINDOW: Duration = Duration::from_secs(8);
/// How long the idle flows of a run with some are left quiet before the
/// measured window: past their attempts' 5 s deadline, when the agent's
/// consumers walk a quiet flow once more (`PollView::changed_since`), a
/// poll interval (1 s), and margin.
const QUIET: Duration = Duration::from_secs(10);
/// How long after the last payload sample the cleartext detector may
/// still judge its connection: its 2 s wait for a verdict, and margin.
const VERDICTS: Duration = Duration::from_secs(3);
/// Enough flow-map room for the most flows measured (the default holds
/// 65536).
const FLOW_CAPACITY: &str = "262144";

const COST_MONITOR: Monitor = Monitor {
    name: "crossmon agent cost",
    kind: Kind::Crossmon(&["--flow-capacity", FLOW_CAPACITY]),
    description: "`crossmon run --no-docker --flow-capacity 262144`",
};
const EVENT_MONITOR: Monitor = Monitor {
    name: "crossmon event path",
    kind: Kind::Crossmon(&[]),
    description: "`crossmon run --no-docker`, default settings",
};

/// New flows offered per second, step after step.
const OFFERED: [f64; 9] = [10e3, 15e3, 20e3, 25e3, 35e3, 50e3, 100e3, 200e3, 400e3];
const STEP: Duration = Duration::from_secs(3);
/// A step that sent less than this share of its offered rate found the
/// sender's limit: no higher step would send more.
const SATURATED: f64 = 0.9;
/// Longer than the agent's poll interval (1 s), which is when it reads
/// the kernel's lost counters.
const SETTLE: Duration = Duration::from_millis(1200);
const SETTLE_READINGS: usize = 8;

// Issue 18's targets.
const CPU_TARGET_PERCENT: f64 = 10.0;
const CPU_TARGET_FLOWS: u64 = 100_000;
/// New flows per second the event path must carry without a loss.
const LOSSLESS_TARGET: f64 = 50_000.0;
const RSS_TARGET_MIB: f64 = 64.0;
const RSS_TARGET_FLOWS: u64 = 100_000;
const RENDER_TARGET_MS: f64 = 50.0;
const RENDER_TARGET_SERIES: u64 = 10_000;

/// One cost run.
pub struct CostRun {
    pub load: Load,
    /// Seen by the agent when the window started (`crossmon_flows`).
    pub seen: u64,
    pub cpu_percent: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Payload samples the agent received during the window: whether what
    /// new flows cost crept in.
    pub samples_in_window: u64,
    /// Datagrams per second the sender kept up: below `flows` each flow
    /// went a little longer than a second between datagrams.
    pub sent_rate: f64,
}

/// One step of the event path.
pub struct EventStep {
    pub offered: f64,
    /// New flows per second the sender managed.
    pub achieved: f64,
    pub flows: u64,
    pub events: u64,
    pub lost: u64,
    /// Packets the flow map refused (no flow, so no event).
    pub refused: u64,
}

impl EventStep {
    fn lossless(&self) -> bool {
        self.lost == 0 && self.refused == 0
    }

    /// Every flow sent is an event, a loss or a refusal, and nothing else
    /// made new flows.
    fn accounted(&self) -> bool {
        self.events + self.lost + self.refused == self.flows
    }
}

pub struct AgentCost {
    pub runs: Vec<CostRun>,
    pub render: RenderScale,
    /// `poll_walk`'s table: the consumers' time per poll, walking every
    /// flow and those that changed.
    pub walk: String,
    /// `table_read`'s table: a read into the flow table, in the previous
    /// read's order and in a new one.
    pub read: String,
    pub steps: Vec<EventStep>,
    pub elapsed: Duration,
}

/// The monitor crate's benches the agent pass quotes, built with the agent.
pub struct AgentBenches {
    render: PathBuf,
    walk: PathBuf,
    read: PathBuf,
}

impl AgentBenches {
    pub fn build() -> anyhow::Result<AgentBenches> {
        println!("==> build the metrics_scale, poll_walk and table_read benches (release)");
        Ok(AgentBenches {
            render: render_scale::build()?,
            walk: cargo_bench::build("monitor", "poll_walk")?,
            read: cargo_bench::build("monitor", "table_read")?,
        })
    }
}

pub fn run(
    net: &BenchNet,
    crossmon: &Path,
    log_dir: &Path,
    benches: &AgentBenches,
) -> anyhow::Result<AgentCost> {
    let started = Instant::now();
    net.quiet_icmp()?;
    let mut runs = Vec::new();
    for (load, repetitions) in LOADS {
        for repetition in 1..=repetitions {
            let run = cost_run(net, crossmon, log_dir, load)?;
            println!(
                "[agent {repetition}/{repetitions}] {} flows, {} active ({} seen): {:.2} % of \
                 one core, RSS {:.1} MiB (peak {:.1}), {} payload samples in the window",
                load.flows,
                load.active,
                run.seen,
                run.cpu_percent,
                run.rss_mib,
                run.peak_rss_mib,
                run.samples_in_window
            );
            runs.push(run);
        }
    }
    let render = render_scale::run(&benches.render)?;
    println!(
        "[agent] /metrics rendered (metrics_scale):\n{}",
        render.table
    );
    let walk = cargo_bench::table(&benches.walk)?;
    println!("[agent] the consumers' walk (poll_walk):\n{walk}");
    let read = cargo_bench::table(&benches.read)?;
    println!("[agent] the flow table's read (table_read):\n{read}");
    let steps = event_path(net, crossmon, log_dir)?;
    let elapsed = started.elapsed();
    println!("agent cost and event path: {}", minutes(elapsed));
    Ok(AgentCost {
        runs,
        render,
        walk,
        read,
        steps,
        elapsed,
    })
}

fn cost_run(
    net: &BenchNet,
    crossmon: &Path,
    log_dir: &Path,
    load: Load,
) -> anyhow::Result<CostRun> {
    let Load { flows, active } = load;
    let mut session = COST_MONITOR.start(net, crossmon, log_dir)?;
    let pid = session.pid().context("crossmon was not started")?;
    let api = session.api()?;
    let ticks_per_second = ticks_per_second()?;
    let mut sender = UdpFlows::new(net);
    if active < flows {
        // Every flow once, then the active ones only.
        sender.send_while(flows as f64, Pattern::Cycle(flows), || {
            wait_for_flows(&mut session, api, flows)
        })?;
    }
    let (mut run, sent) = sender.send_while(active as f64, Pattern::Cycle(active), || {
        let seen = wait_for_flows(&mut session, api, flows)?;
        if active < flows {
            sleep(QUIET)?;
        } else {
            // The window measures flows that are active, not new: each
            // new flow's first two datagrams, a second apart, are
            // sampled, and the second round of 100k samples, with its
            // verdicts, would fall in it.
            settled(api, payload_samples)?;
            sleep(VERDICTS)?;
        }
        let samples = payload_samples(api)?;
        let (ticks, at) = (cpu_ticks(pid)?, Instant::now());
        sleep(WINDOW)?;
        let busy = cpu_ticks(pid)?.saturating_sub(ticks) as f64 / ticks_per_second;
        let cpu_percent = busy / at.elapsed().as_secs_f64() * 100.0;
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let mib = |key| {
            status_kib(&status, key)
                .map(|kib| kib as f64 / 1024.0)
                .with_context(|| format!("no {key} in {path}"))
        };
        let (rss_mib, peak_rss_mib) = (mib("VmRSS")?, mib("VmHWM")?);
        // After the readings: a scrape costs the agent CPU too.
        let samples_in_window = payload_samples(api)?.saturating_sub(samples);
        let still = flows_seen(api)?;
        ensure!(
            still >= flows,
            "crossmon tracked {still} flows at the end of the window, not {flows}"
        );
        Ok(CostRun {
            load,
            seen,
            cpu_percent,
            rss_mib,
            peak_rss_mib,
            samples_in_window,
            sent_rate: 0.0,
        })
    })?;
    session.stop()?;
    run.sent_rate = sent.rate();
    if run.sent_rate < 0.95 * active as f64 {
        println!(
            "  note: the sender kept up {:.0} datagrams/s, not {active}: each flow went a little \
             longer than a second between datagrams",
            run.sent_rate
        );
    }
    Ok(run)
}

/// Waits until the agent tracks `flows` flows; returns how many it tracks.
fn wait_for_flows(session: &mut Session, api: SocketAddr, flows: u64) -> anyhow::Result<u64> {
    let mut seen = 0;
    session.wait_until(&format!("crossmon_flows >= {flows}"), || {
        seen = flows_seen(api).unwrap_or(0);
        seen >= flows
    })?;
    Ok(seen)
}

fn flows_seen(api: SocketAddr) -> anyhow::Result<u64> {
    Ok(sample(&metrics(api)?, "crossmon_flows")? as u64)
}

fn ticks_per_second() -> anyhow::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(ticks > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks as f64)
}

/// User and system time of every thread of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("no utime and stime in {path}"))
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The
/// command name (field 2) may hold spaces and parentheses: fields are
/// counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(field(14)? + field(15)?)
}

/// A `kB` value of `/proc/PID/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix(" kB")?.trim().parse().ok()
    })
}

/// The agent's new-flow counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EventCounters {
    events: u64,
    lost: u64,
    refused: u64,
}

fn event_counters(api: SocketAddr) -> anyhow::Result<EventCounters> {
    let text = metrics(api)?;
    let read = |series| sample(&text, series).map(|value| value as u64);
    Ok(EventCounters {
        events: read(r#"crossmon_events_total{kind="new_flow"}"#)?,
        lost: read(r#"crossmon_events_lost_total{kind="new_flow"}"#)?,
        refused: read(r#"crossmon_frames_skipped_total{reason="map_update_failed"}"#)?,
    })
}

fn payload_samples(api: SocketAddr) -> anyhow::Result<u64> {
    Ok(sample(&metrics(api)?, r#"crossmon_events_total{kind="payload"}"#)? as u64)
}

/// What `read` reads once two readings a poll apart agree.
fn settled<T: PartialEq + std::fmt::Debug>(
    api: SocketAddr,
    read: impl Fn(SocketAddr) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut last = read(api)?;
    for _ in 0..SETTLE_READINGS {
        sleep(SETTLE)?;
        let now = read(api)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    println!(
        "  warning: the event counters still moved after {SETTLE_READINGS} readings: {last:?}"
    );
    Ok(last)
}

fn event_path(net: &BenchNet, crossmon: &Path, log_dir: &Path) -> anyhow::Result<Vec<EventStep>> {
    let mut session = EVENT_MONITOR.start(net, crossmon, log_dir)?;
    let api = session.api()?;
    let mut sender = UdpFlows::new(net);
    // A hundred flows first, which spend the server's ICMP burst: its
    // port-unreachables make a flow of their own.
    sender.send_while(1e3, Pattern::Fresh, || sleep(Duration::from_millis(100)))?;
    let mut before = settled(api, event_counters)?;
    let mut steps = Vec::new();
    for offered in OFFERED {
        let ((), sent) = sender.send_while(offered, Pattern::Fresh, || sleep(STEP))?;
        session.check_running()?;
        let after = settled(api, event_counters)?;
        let step = event_step(offered, &sent, before, after);
        println!(
            "[events] offered {offered:.0} new flows/s, sent {:.0}/s: {} flows, {} events, {} \
             lost, {} refused by the map",
            step.achieved, step.flows, step.events, step.lost, step.refused
        );
        if !step.accounted() {
            println!(
                "  warning: events + lost + refused = {}, not the {} flows sent (datagrams \
                 dropped before the programs, or other traffic on a watched veth)",
                step.events + step.lost + step.refused,
                step.flows
            );
        }
        let saturated = step.achieved < SATURATED * offered;
        steps.push(step);
        before = after;
        if saturated {
            println!("  the sender is at its limit: no higher step");
            break;
        }
    }
    session.stop()?;
    Ok(steps)
}

fn event_step(offered: f64, sent: &Sent, before: EventCounters, after: EventCounters) -> EventStep {
    EventStep {
        offered,
        achieved: sent.rate(),
        flows: sent.datagrams,
        events: after.events.saturating_sub(before.events),
        lost: after.lost.saturating_sub(before.lost),
        refused: after.refused.saturating_sub(before.refused),
    }
}

/// The highest step with no loss, every lower step lossless too.
fn sustained(steps: &[EventStep]) -> Option<&EventStep> {
    steps.iter().take_while(|step| step.lossless()).last()
}

impl AgentCost {
    fn median_at(&self, load: Load, figure: impl Fn(&CostRun) -> f64) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter(|run| run.load == load)
                .map(figure)
                .collect(),
        )
    }

    /// Medians over the runs at each flow count.
    pub fn cost_table(&self) -> String {
        let mut out = String::from(
            "| flows | of them active | datagrams/s sent | agent CPU, % of one core | runs | payload \
             samples in each run's window | RSS at the end | peak RSS |\n\
             |---:|---:|---:|---:|---|---|---:|---:|\n",
        );
        for (load, _) in LOADS {
            let runs: Vec<&CostRun> = self.runs.iter().filter(|run| run.load == load).collect();
            let each = |figure: &dyn Fn(&CostRun) -> String| {
                runs.iter()
                    .map(|run| figure(run))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let cell = |figure: Option<f64>, unit: &str| {
                figure.map_or_else(|| "n/a".to_owned(), |value| format!("{value:.2}{unit}"))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                load.flows,
                load.active,
                self.median_at(load, |run| run.sent_rate)
                    .map_or_else(|| "n/a".to_owned(), |rate| format!("{rate:.0}")),
                cell(self.median_at(load, |run| run.cpu_percent), ""),
                each(&|run| format!("{:.2}", run.cpu_percent)),
                each(&|run| run.samples_in_window.to_string()),
                cell(self.median_at(load, |run| run.rss_mib), " MiB"),
                cell(self.median_at(load, |run| run.peak_rss_mib), " MiB"),
            );
        }
        out
    }

    pub fn event_table(&self) -> String {
        let mut out = String::from(
            "| offered, new flows/s | sent, new flows/s | new-flow events | lost | refused by \
             the map | all accounted for |\n|---:|---:|---:|---:|---:|---|\n",
        );
        for step in &self.steps {
            let _ = writeln!(
                out,
                "| {:.0} | {:.0} | {} | {} | {} | {} |",
                step.offered,
                step.achieved,
                step.events,
                step.lost,
                step.refused,
                if step.accounted() { "yes" } else { "no" }
            );
        }
        out
    }

    /// The sustained rate, and what was lost above it.
    pub fn event_summary(&self) -> String {
        let mut out = match sustained(&self.steps) {
            Some(step) => format!(
                "Highest rate with zero loss: {:.0} new flows/s (offered {:.0}).",
                step.achieved, step.offered
            ),
            None => "Loss at every rate tried.".to_owned(),
        };
        let above: Vec<String> = self
            .steps
            .iter()
            .skip_while(|step| step.lossless())
            .map(|step| {
                format!(
                    "{:.0}/s sent: {} of {} lost ({:.1} %), {} refused",
                    step.achieved,
                    step.lost,
                    step.flows,
                    step.lost as f64 / step.flows.max(1) as f64 * 100.0,
                    step.refused
                )
            })
            .collect();
        if above.is_empty() {
            out.push_str(" No step lost any.");
        } else {
            let _ = write!(out, " Above it: {}.", above.join("; "));
        }
        if self
            .steps
            .last()
            .is_some_and(|step| step.achieved < SATURATED * step.offered)
        {
            out.push_str(" The last step is the sender's limit, not the agent's.");
        }
        out
    }

    /// One line per target of issue 18 about the agent, each `pass` or `miss`.
    pub fn targets(&self) -> Vec<String> {
        let cpu = self.median_at(Load::all_active(CPU_TARGET_FLOWS), |run| run.cpu_percent);
        // The issue's target is the peak: the end's RSS would hide the
        // warm-up's burst the host has to have room for.
        let rss = self.median_at(Load::all_active(RSS_TARGET_FLOWS), |run| run.rss_mib);
        let peak = self.median_at(Load::all_active(RSS_TARGET_FLOWS), |run| run.peak_rss_mib);
        let render = self.render.render_ms(RENDER_TARGET_SERIES);
        let lossless = sustained(&self.steps).map(|step| step.offered);
        let shown =
            |figure: Option<f64>| figure.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
        vec![
            format!(
                "agent CPU at {CPU_TARGET_FLOWS} active flows: {} % of one core (target <= \
                 {CPU_TARGET_PERCENT:.0} %): {}",
                shown(cpu),
                verdict(cpu.is_some_and(|cpu| cpu <= CPU_TARGET_PERCENT))
            ),
            format!(
                "agent peak RSS at {RSS_TARGET_FLOWS} active flows: {} MiB, {} at the end \
                 (target <= {RSS_TARGET_MIB:.0} MiB at the peak): {}",
                shown(peak),
                shown(rss),
                verdict(peak.is_some_and(|peak| peak <= RSS_TARGET_MIB))
            ),
            format!(
                "no event lost up to {LOSSLESS_TARGET:.0} new flows/s: lossless up to {} \
                 (offered): {}",
                lossless.map_or_else(|| "none".to_owned(), |rate| format!("{rate:.0}")),
                verdict(lossless.is_some_and(|rate| rate >= LOSSLESS_TARGET))
            ),
            format!(
                "/metrics at {RENDER_TARGET_SERIES} series rendered in {} ms (target < \
                 {RENDER_TARGET_MS:.0} ms): {}",
                shown(render),
                verdict(render.is_some_and(|ms| ms < RENDER_TARGET_MS))
            ),
        ]
    }

    /// The two sections of BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## Agent cost\n\n\
             {}, started fresh for each run, while the client namespace keeps N distinct UDP \
             flows active (one 16-byte datagram per flow per second, paced, to ports nobody \
             listens on) and nothing else crosses the bridge. The flow map is raised from its \
             default 65536 so that 100k flows fit. Where the sender could not keep one \
             datagram per flow per second (second column), flows still stayed active: each went \
             a little longer between datagrams, well within the idle timeout. Once `crossmon_flows` on `/metrics` shows \
             all N, and the payload samples of the flows' first datagrams (two a flow, a \
             second apart) have stopped coming and had their {} s to be judged, the agent's \
             user and system time (`/proc/PID/stat`, every thread) is read \
             over {} s, then its RSS (`VmRSS`) and peak RSS (`VmHWM`). The programs run in \
             the kernel on the sending CPU and are not in these figures: their cost is in the \
             table above. Without Docker, no flow has a container sender, so the detectors keep \
             no state per flow; with Docker, each flow a container sends adds their 64-byte \
             entry and its hash table's slack (about 8 MiB at 100k, by those sizes; not \
             measured here). In the last run, 100k flows were sent one datagram each, then \
             only 10k of them every second: the others sit idle in the table, as most flows \
             do on a host (finished connections and DNS lookups waiting out the idle \
             timeout), and the window starts {} s after their last datagram, once the \
             consumers no longer walk them. Medians; the runs column lists each run's CPU, the \
             next how many payload samples reached the agent during each run's window (a \
             flow's first two datagrams are sampled, before the window opens; any sample in \
             it has its cost in the figure).\n",
            COST_MONITOR.description,
            VERDICTS.as_secs(),
            WINDOW.as_secs(),
            QUIET.as_secs()
        );
        md.push_str(&self.cost_table());
        let _ = writeln!(
            md,
            "\nWhat the poll's consumers (traffic series, TCP health, detectors) cost with \
             Docker identities, which the runs above lack, as `cargo bench -p monitor --bench \
             poll_walk` measures them with the agent's own code (100k TCP flows of 50k \
             connections between 200 synthetic containers; no kernel): two agents polled alike \
             and in turn each second, one walking every flow, the other only those that \
             changed since its previous poll and those its directory names otherwise, as \
             the agent does; all, a tenth or a hundredth of the flows count a packet at each \
             poll, then connections churn, then a tenth and a hundredth again with a \
             container (of no flow) starting or stopping between each two polls. The \
             table's read of the kernel map is the same for both and not timed.\n"
        );
        md.push_str(&self.walk);
        let _ = writeln!(
            md,
            "\nWhat taking a read of the kernel map into the flow table costs \
             (`FlowTable::observe` for each entry), as `cargo bench -p monitor --bench \
             table_read` measures it at 100k flows: two tables polled in turn, one read in the \
             same order at every poll, as the kernel hands out its entries, so that each flow \
             is found where the previous read left it; the other in a new order at every poll, \
             so that each flow is looked up by its key. A buffer larger than the table is \
             written between polls, as the agent's own work evicts the table between reads.\n"
        );
        md.push_str(&self.read);
        let _ = writeln!(
            md,
            "\n`/metrics` render time and size, as `cargo bench -p monitor --bench \
             metrics_scale` measures them with the agent's own labelling and rendering code \
             (series between 200 synthetic containers; no kernel, no HTTP):\n"
        );
        md.push_str(&self.render.table);
        let _ = writeln!(
            md,
            "\n## Event path\n\n\
             {}: a 4 MiB ring buffer, drained every 50 ms or when a quarter full. The client \
             sends one datagram to each new 5-tuple, never used before in the run, at offered \
             rates stepping up, {} s each; every flow queues a new-flow event and, at default \
             settings, a payload sample in the same ring. Per step, the increase of \
             `crossmon_events_total{{kind=\"new_flow\"}}`, `crossmon_events_lost_total\
             {{kind=\"new_flow\"}}` and `crossmon_frames_skipped_total\
             {{reason=\"map_update_failed\"}}`, read once they stop moving; the last column \
             checks that they add up to the flows sent. The server's ICMP rate limit is raised \
             for the agent passes, so that its port-unreachable answers make no flows.\n",
            EVENT_MONITOR.description,
            STEP.as_secs()
        );
        md.push_str(&self.event_table());
        let _ = writeln!(md, "\n{}", self.event_summary());
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_of_a_stat_line() {
        // A command name with a space and a parenthesis, as a process may
        // name itself.
        let stat = "4242 (cross mon)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 987654321 5120 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (crossmon) S 1"), None);
    }

    #[test]
    fn kib_of_a_status_line() {
        let status = "Name:\tcrossmon\nVmHWM:\t   30720 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(20_480));
        assert_eq!(status_kib(status, "VmHWM"), Some(30_720));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    fn step(offered: f64, lost: u64, refused: u64) -> EventStep {
        EventStep {
            offered,
            achieved: offered,
            flows: 1000,
            events: 1000 - lost - refused,
            lost,
            refused,
        }
    }

    #[test]
    fn sustained_rate_is_the_last_before_a_loss() {
        let steps = [
            step(10e3, 0, 0),
            step(25e3, 0, 0),
            step(50e3, 7, 0),
            // Lucky above a loss: not sustained.
            step(100e3, 0, 0),
        ];
        assert_eq!(sustained(&steps).map(|s| s.offered), Some(25e3));
        assert_eq!(sustained(&steps[..2]).map(|s| s.offered), Some(25e3));
        assert!(sustained(&[step(10e3, 1, 0)]).is_none());
        assert!(sustained(&[step(10e3, 0, 1)]).is_none());
        assert!(steps.iter().all(EventStep::accounted));
        let short = EventStep {
            events: 990,
            ..step(10e3, 0, 0)
        };
        assert!(!short.accounted());
    }
}
