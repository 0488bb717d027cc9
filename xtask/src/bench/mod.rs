//! `cargo xtask bench`: what crossmon costs the traffic it watches, next to
//! no monitor and two libpcap monitors, all measured in one run on this
//! machine (issue 7).
//!
//! Each repetition runs every monitor once, in an order rotated by one per
//! repetition, so that no monitor always runs first or last (a machine
//! warming up, or a neighbour's load coming and going, spreads over all).
//! A monitor starts fresh for each repetition, and runs the workloads in
//! turn. Figures are medians over the repetitions; a monitor's ratio to
//! the bare path is the mean over the repetitions of its run's ratio to the
//! bare path's run of the same repetition, reported with its confidence
//! interval.
//!
//! The per-program cost is measured in a pass of its own, after the timed
//! workloads of each crossmon session: run-time statistics add two clock
//! reads to every program run, which must not be charged to crossmon's
//! throughput.
//!
//! The agent's own cost and its event path follow, in a pass of their own
//! (`agent_cost`), with the bridge to themselves.

mod agent_cost;
mod cargo_bench;
mod instructions;
mod monitor;
mod net;
mod noop;
mod programs;
mod render_scale;
mod report;
mod udp_flows;
mod workload;

pub use workload::Workload;

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use self::{
    instructions::Instructions,
    monitor::{Session, MONITORS},
    net::BenchNet,
    programs::RunTimeStats,
    report::{load_average, Machine, Measurement, NewFlows, ProgramCost, Report},
    workload::{Delivered, IperfServer},
};
use crate::cmd;

pub struct Options {
    /// Repetitions of every (monitor, workload) pair.
    pub repetitions: usize,
    /// Measured seconds of each workload run.
    pub seconds: u64,
    /// Measured seconds of each workload run in the per-program cost pass.
    pub cost_seconds: u64,
    /// One pass only; BENCHMARKS.md is then left as it is.
    pub only: Option<Pass>,
    /// These workloads only (all when empty); BENCHMARKS.md is then left
    /// as it is.
    pub workloads: Vec<Workload>,
    /// These monitors only, by name (all when empty); as above.
    pub monitors: Vec<String>,
}

impl Options {
    /// A quick look at part of the bench: printed, never written.
    fn partial(&self) -> bool {
        self.repetitions < MIN_REPETITIONS
            || self.only.is_some()
            || !self.workloads.is_empty()
            || !self.monitors.is_empty()
    }

    fn runs_workload(&self, workload: Workload) -> bool {
        self.workloads.is_empty() || self.workloads.contains(&workload)
    }

    fn runs_monitor(&self, name: &str) -> bool {
        self.monitors.is_empty() || self.monitors.iter().any(|m| m == name)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pass {
    /// The workloads under each monitor, and the per-program cost.
    Throughput,
    /// The agent's CPU and memory at 1k, 10k and 100k active flows,
    /// `/metrics` render time and size at 1k, 10k and 50k series, the
    /// new-flow event rate carried without loss (about 3 minutes).
    Agent,
    /// The instructions each program runs per packet type, counted by
    /// qemu in a VM of each supported kernel (about a minute once built;
    /// part of the throughput pass too).
    Instructions,
}

/// Issue 7 asks for at least this many; fewer make a quick try whose
/// table is printed but not written to BENCHMARKS.md.
const MIN_REPETITIONS: usize = 5;

/// A program on a bench veth that is not the monitor's own (another
/// crossmon, from a test run) makes a run wait and repeat this often
/// before its figure is kept anyway, marked.
const TRIES: usize = 3;

const TOOLS: &[&str] = &[
    "ip",
    "ss",
    "tc",
    "iptables",
    "bpftool",
    "iperf3",
    "tcpdump",
    "softflowd",
];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C or SIGTERM end the bench at the next check, so that the
/// monitors are stopped and the network removed by their drops.
fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Sleeps `duration`, failing early when interrupted.
pub fn sleep(duration: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + duration;
    loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

pub fn interrupted() -> anyhow::Result<()> {
    sleep(Duration::ZERO)
}

/// One bench at a time: they would share the machine's two cores, and
/// the fixed `xmb-` names.
fn lock() -> anyhow::Result<File> {
    let path = "/run/lock/crossmon-bench.lock";
    let file = File::create(path).with_context(|| format!("creating {path}"))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another `cargo xtask bench` is running (it holds {path})");
    }
    Ok(file)
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "the bench creates namespaces and loads BPF programs: run it as root"
    );
    ensure!(
        options.seconds >= 1 && options.cost_seconds >= 1,
        "runs last at least a second"
    );
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|tool| cmd::find_program(tool).is_none())
        .collect();
    ensure!(
        missing.is_empty(),
        "not found: {}; `cargo xtask setup` installs them",
        missing.join(", ")
    );
    if let Some(unknown) = options
        .monitors
        .iter()
        .find(|name| !MONITORS.iter().any(|m| m.name == name.as_str()))
    {
        let known: Vec<&str> = MONITORS.iter().map(|m| m.name).collect();
        bail!(
            "no monitor named {unknown:?}; the monitors are {}",
            known.join(", ")
        );
    }
    let _lock = lock()?;

    let throughput = matches!(options.only, None | Some(Pass::Throughput));
    let agent_pass = matches!(options.only, None | Some(Pass::Agent));
    let count_instructions = throughput || options.only == Some(Pass::Instructions);
    println!("==> build crossmon (release)");
    cmd::status(
        "building the agent",
        cmd::cargo().args(["build", "--release", "--package", "monitor"]),
    )?;
    // The programs' own costs (enforcement, capture, DNS) are timed with
    // BPF_PROG_TEST_RUN, beside the throughput figures they belong with.
    let mut program_benches = Vec::new();
    if throughput {
        for bench in cargo_bench::PROGRAM_BENCHES {
            println!("==> build the {} bench (release)", bench.name);
            program_benches.push((bench, cargo_bench::build("integration-tests", bench.name)?));
        }
    }
    // The throughput pass built it among the program benches.
    let datapath_cost = match program_benches
        .iter()
        .find(|(bench, _)| bench.name == instructions::BENCH)
    {
        Some((_, executable)) => Some(executable.clone()),
        None if count_instructions => {
            println!("==> build the {} bench (release)", instructions::BENCH);
            Some(cargo_bench::build(
                "integration-tests",
                instructions::BENCH,
            )?)
        }
        None => None,
    };
    let agent_benches = if agent_pass {
        Some(agent_cost::AgentBenches::build()?)
    } else {
        None
    };
    let crossmon = cmd::target_dir().join("release/crossmon");
    let log_dir = cmd::target_dir().join("bench");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;

    catch_interrupts();
    BenchNet::remove_leftovers();
    let net = BenchNet::create()?;
    let iperf = IperfServer::start(&net)?;
    let machine = Machine::describe();
    let load_before = load_average();
    let busy = load_before
        .split_whitespace()
        .next()
        .and_then(|load| load.parse::<f64>().ok())
        .is_some_and(|load| load > machine.cores as f64 / 2.0);
    if busy {
        println!(
            "note: load average {load_before} on {} cores: other work competes with the bench, \
             expect noisy figures",
            machine.cores
        );
    }
    let stats_already_on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|v| v.trim() != "0");
    if stats_already_on {
        println!("note: kernel.bpf_stats_enabled is already on: every run pays for statistics");
    }

    let mut report = Report {
        monitors: MONITORS,
        measurements: Vec::new(),
        costs: Vec::new(),
        new_flows: Vec::new(),
        agent: None,
        program_benches: Vec::new(),
        instructions: None,
    };
    let bench_started = Instant::now();
    let repetitions = if throughput { options.repetitions } else { 0 };
    for repetition in 0..repetitions {
        for slot in 0..MONITORS.len() {
            let index = (slot + repetition) % MONITORS.len();
            let monitor = &MONITORS[index];
            if !options.runs_monitor(monitor.name) {
                continue;
            }
            interrupted()?;
            let mut session = monitor.start(&net, &crossmon, &log_dir)?;
            let mut line = format!(
                "[{}/{}] {:<18}",
                repetition + 1,
                options.repetitions,
                monitor.name
            );
            for workload in Workload::ALL
                .into_iter()
                .filter(|w| options.runs_workload(*w))
            {
                let run = measure(&net, &mut session, workload, options.seconds)?;
                line.push_str(&format!(
                    "  {} {}{}",
                    workload.display(run.value),
                    workload.unit(),
                    if run.disturbed { "*" } else { "" }
                ));
                report.measurements.push(Measurement {
                    repetition,
                    monitor: index,
                    workload,
                    value: run.value,
                    process_cpu: run.process_cpu,
                    disturbed: run.disturbed,
                });
                if let Some(per_connection) = run.new_flows_per_connection {
                    report.new_flows.push(NewFlows {
                        monitor: index,
                        statistics_pass: false,
                        per_connection,
                    });
                }
            }
            // crossmon's programs, and the noop classifier's: what a program
            // of two instructions reads shows what the statistics add to
            // every run.
            if !session.programs.is_empty() {
                let (costs, new_flows) = program_costs(&net, &session, options, index, repetition)?;
                for cost in costs {
                    if cost.workload == Workload::SmallUdp {
                        line.push_str(&format!("  {} {:.0} ns", cost.program, cost.ns_per_run));
                    }
                    report.costs.push(cost);
                }
                report
                    .new_flows
                    .extend(new_flows.map(|per_connection| NewFlows {
                        monitor: index,
                        statistics_pass: true,
                        per_connection,
                    }));
            }
            session.stop()?;
            println!("{line}");
        }
    }
    for (bench, executable) in &program_benches {
        println!("==> {} ({})", bench.title.to_lowercase(), bench.name);
        report
            .program_benches
            .push((*bench, cargo_bench::table(executable)?));
    }
    let bench_time = bench_started.elapsed();
    let br_netfilter = net.br_netfilter;
    drop(iperf);
    if let Some(benches) = &agent_benches {
        report.agent = Some(agent_cost::run(&net, &crossmon, &log_dir, benches)?);
    }
    drop(net);
    // Before the VMs, which keep a core busy.
    let load_after = load_average();
    if let Some(executable) = &datapath_cost {
        report.instructions = Some(instructions::run(&crossmon, executable)?);
    }

    if throughput {
        println!(
            "\n{}\nRatios to bare, per repetition:\n\n{}\nMean ns per program run (run-time \
             statistics pass):\n\n{}\nCPU of each monitor, % of one core:\n\n{}",
            report.throughput_table(),
            report.ratio_table(),
            report.cost_table(),
            report.cpu_table()
        );
        if let Some(churn) = report.churn_new_flows() {
            println!("\n{churn}");
        }
    }
    for (bench, table) in &report.program_benches {
        println!("\n{} (BPF_PROG_TEST_RUN):\n\n{table}", bench.title);
    }
    if let Some(counted) = &report.instructions {
        println!("\n{}:\n\n{}", instructions::TITLE, counted.markdown());
    }
    if let Some(agent) = &report.agent {
        println!(
            "\nAgent cost:\n\n{}\nEvent path:\n\n{}\n{}\n",
            agent.cost_table(),
            agent.event_table(),
            agent.event_summary()
        );
    }
    for target in report.targets() {
        println!("{target}");
    }
    if report.disturbed() > 0 {
        println!(
            "note: {} runs had another BPF program on the bench veths (marked * above)",
            report.disturbed()
        );
    }
    let total = started.elapsed();
    println!(
        "bench: {repetitions} repetitions in {}, the agent pass in {}, {} in all with the builds",
        minutes(bench_time),
        report
            .agent
            .as_ref()
            .map_or_else(|| "-".to_owned(), |agent| minutes(agent.elapsed)),
        minutes(total)
    );
    if options.partial() {
        println!(
            "note: fewer than {MIN_REPETITIONS} repetitions, or part of the bench only: \
             BENCHMARKS.md is left as it is"
        );
    } else {
        write_benchmarks_md(
            &report,
            &machine,
            options,
            &Conditions {
                load: format!("{load_before} before, {load_after} after"),
                br_netfilter,
                stats_already_on,
                bench_time,
            },
        )?;
    }
    // Written first: the other figures stand without it.
    ensure!(
        !report
            .instructions
            .as_ref()
            .is_some_and(Instructions::failed),
        "a kernel's VM did not count the instructions (above)"
    );
    Ok(())
}

fn write_benchmarks_md(
    report: &Report<'_>,
    machine: &Machine,
    options: &Options,
    conditions: &Conditions,
) -> anyhow::Result<()> {
    let levers_path = cmd::workspace_root().join(LEVERS);
    let levers = std::fs::read_to_string(&levers_path)
        .with_context(|| format!("reading {}", levers_path.display()))?;
    let path = cmd::workspace_root().join("BENCHMARKS.md");
    let text = benchmarks_md(report, machine, options, &levers, conditions);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A Markdown file quoted under a `##` heading: its own title gives way
/// to that heading, its sections move a level down.
fn quoted(file: &str) -> String {
    let mut md = String::new();
    for text in file
        .lines()
        .skip_while(|text| text.starts_with("# ") || text.is_empty())
    {
        if text.starts_with('#') {
            md.push('#');
        }
        line(&mut md, text);
    }
    md
}

fn minutes(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

/// One workload run under a monitor.
struct Run {
    value: f64,
    /// The monitor's process CPU over the run, in cores (see
    /// [`Session::process_cpu`]).
    process_cpu: Option<f64>,
    /// crossmon's new-flow events a connection (connection churn).
    new_flows_per_connection: Option<f64>,
    /// Another program sat on the bench veths through every try.
    disturbed: bool,
}

/// One workload run, clear of foreign programs on the bench veths if it can
/// be.
fn measure(
    net: &BenchNet,
    session: &mut Session,
    workload: Workload,
    seconds: u64,
) -> anyhow::Result<Run> {
    for _ in 0..TRIES {
        let before = session.foreign_programs(net)?;
        if !before.is_empty() {
            println!("  waiting: {} on the bench veths", before.join(", "));
            sleep(Duration::from_secs(5))?;
            continue;
        }
        let run = timed_run(net, session, workload, seconds)?;
        let after = session.foreign_programs(net)?;
        if after.is_empty() {
            return Ok(run);
        }
        println!("  repeating: {} came during the run", after.join(", "));
    }
    Ok(Run {
        disturbed: true,
        ..timed_run(net, session, workload, seconds)?
    })
}

/// The workload once, with what the monitor's process spent meanwhile.
fn timed_run(
    net: &BenchNet,
    session: &mut Session,
    workload: Workload,
    seconds: u64,
) -> anyhow::Result<Run> {
    let new_flows_before = new_flows_before(session, workload)?;
    let cpu_before = session.process_cpu()?;
    let started = Instant::now();
    let delivered = workload.run(net, seconds)?;
    let elapsed = started.elapsed();
    session.check_running()?;
    let process_cpu = match (cpu_before, session.process_cpu()?) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before).as_secs_f64() / elapsed.as_secs_f64())
        }
        _ => None,
    };
    let new_flows_per_connection = new_flows_per_connection(session, new_flows_before, &delivered)?;
    Ok(Run {
        value: delivered.rate,
        process_cpu,
        new_flows_per_connection,
        disturbed: false,
    })
}

/// crossmon's new-flow events before a run of `workload`, where the run
/// is churn and crossmon sends them; see [`new_flows_per_connection`].
fn new_flows_before(session: &Session, workload: Workload) -> anyhow::Result<Option<f64>> {
    if workload == Workload::Churn {
        session.new_flows()
    } else {
        Ok(None)
    }
}

/// The new-flow events crossmon's agent received since `before` over the
/// connections the run attempted: the churn figures measure flow creation
/// only where that is about 2 (a connection whose ports come back while
/// crossmon still keeps their closed flows counts into those).
fn new_flows_per_connection(
    session: &Session,
    before: Option<f64>,
    delivered: &Delivered,
) -> anyhow::Result<Option<f64>> {
    let (Some(before), Some(connections)) = (before, delivered.connections) else {
        return Ok(None);
    };
    if connections == 0 {
        return Ok(None);
    }
    // The agent drains the ring every 50 ms, but its consumer can wait out
    // a poll behind the table's lock: read until the count holds still.
    let read = || {
        session
            .new_flows()?
            .context("crossmon's new-flow events went away")
    };
    let mut after = read()?;
    for _ in 0..20 {
        sleep(Duration::from_millis(100))?;
        let now = read()?;
        if now == after {
            break;
        }
        after = now;
    }
    Ok(Some((after - before) / connections as f64))
}

/// Each workload once more with run-time statistics on: mean ns per run of
/// each of the session's programs, and the CPU they took; the session is
/// monitor `monitor`'s in `repetition`.
fn program_costs(
    net: &BenchNet,
    session: &Session,
    options: &Options,
    monitor: usize,
    repetition: usize,
) -> anyhow::Result<(Vec<ProgramCost>, Option<f64>)> {
    let _stats = RunTimeStats::enable()?;
    let mut costs = Vec::new();
    let mut churn_new_flows = None;
    for workload in Workload::ALL
        .into_iter()
        .filter(|w| options.runs_workload(*w))
    {
        let before = session.program_counters()?;
        let new_flows_before = new_flows_before(session, workload)?;
        let started = Instant::now();
        let delivered = workload.run(net, options.cost_seconds)?;
        let elapsed_ns = started.elapsed().as_nanos() as f64;
        let counters = session.program_counters()?;
        churn_new_flows = churn_new_flows.or(new_flows_per_connection(
            session,
            new_flows_before,
            &delivered,
        )?);
        for (program, after) in counters {
            let before = before.get(&program).copied().unwrap_or_default();
            let runs = after.run_cnt.saturating_sub(before.run_cnt);
            let ns = after.run_time_ns.saturating_sub(before.run_time_ns);
            if runs > 0 {
                costs.push(ProgramCost {
                    monitor,
                    repetition,
                    workload,
                    program,
                    ns_per_run: ns as f64 / runs as f64,
                    cpu: ns as f64 / elapsed_ns,
                });
            }
        }
    }
    Ok((costs, churn_new_flows))
}

struct Conditions {
    load: String,
    br_netfilter: bool,
    stats_already_on: bool,
    bench_time: Duration,
}

/// Each lever's gain on its own, measured apart from any one run (each
/// build against the one before it): quoted whole in `BENCHMARKS.md`.
const LEVERS: &str = "docs/benchmark-levers.md";

/// `BENCHMARKS.md`: this run's figures, then `levers` (the text of
/// [`LEVERS`]) under a heading of this file's level.
fn benchmarks_md(
    report: &Report<'_>,
    machine: &Machine,
    options: &Options,
    levers: &str,
    conditions: &Conditions,
) -> String {
    let mut md = String::new();
    line(&mut md, "# Benchmarks");
    line(&mut md, "");
    line(
        &mut md,
        "What crossmon costs the traffic it watches, next to no monitor and two libpcap \
         monitors, measured in one run of `cargo xtask bench` (this file is its output; run it \
         again to replace it). Figures are medians; in brackets, the ratio to the bare path: \
         each repetition's run over the bare path's run of the same repetition, averaged over \
         the repetitions (the centre of the interval in the second table, which says how far \
         the ratio can be trusted; runs marked * are left out of it). The last column is how \
         far apart the bare path's own runs landed ((max - min) / median).",
    );
    line(&mut md, "");
    line(&mut md, &format!("- date: {}", machine.date));
    line(
        &mut md,
        &format!("- kernel: {} ({})", machine.kernel, machine.os),
    );
    line(
        &mut md,
        &format!(
            "- CPU: {}, {} cores; memory {}",
            machine.cpu, machine.cores, machine.memory
        ),
    );
    line(
        &mut md,
        &format!("- crossmon: revision {}, release build", machine.revision),
    );
    line(&mut md, &format!("- tools: {}", machine.tools));
    line(
        &mut md,
        &format!(
            "- CPU vulnerabilities and mitigations: {}",
            machine.mitigations
        ),
    );
    line(
        &mut md,
        &format!(
            "- {} repetitions, {} s per workload run ({} s in the cost pass), {} for them; {} for \
             the agent pass; load average {}",
            options.repetitions,
            options.seconds,
            options.cost_seconds,
            minutes(conditions.bench_time),
            report
                .agent
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |agent| minutes(agent.elapsed)),
            conditions.load
        ),
    );
    line(&mut md, "");
    line(&mut md, "## Throughput");
    line(&mut md, "");
    md.push_str(&report.throughput_table());
    line(&mut md, "");
    if let Some(churn) = report.churn_new_flows() {
        line(&mut md, &churn);
        line(&mut md, "");
    }
    line(
        &mut md,
        "Ratio to the bare path repetition by repetition (each run over the bare path's run of \
         the same repetition, the monitors' order rotated): lowest to highest, and the 95 % \
         confidence interval of their mean (Student's t). Where an interval straddles a target, \
         more repetitions (`--repetitions`) narrow it.",
    );
    line(&mut md, "");
    md.push_str(&report.ratio_table());
    line(&mut md, "");
    line(&mut md, "## Targets (issue 18)");
    line(&mut md, "");
    for target in report.targets() {
        line(&mut md, &format!("- {target}"));
    }
    line(&mut md, "");
    line(&mut md, "## Cost per program run");
    line(&mut md, "");
    line(
        &mut md,
        "Mean ns per run of each program, from the kernel's run-time statistics \
         (`BPF_ENABLE_STATS`, what `kernel.bpf_stats_enabled=1` turns on), in a pass of its own \
         after the timed runs of each session with programs of its own. A run is one packet, \
         except in TCP bulk, where a veth passes GSO super-packets of up to 64 KiB whole: one \
         run each. The `noop` rows are the noop classifier's two instructions: what the hook's \
         call into a program and the statistics' own clock reads add to every run, measured \
         alike.",
    );
    line(&mut md, "");
    md.push_str(&report.cost_table());
    line(&mut md, "");
    line(&mut md, "## CPU of each monitor");
    line(&mut md, "");
    line(
        &mut md,
        "What each monitor took of the machine while it watched, in % of one core, medians over \
         the repetitions: `process`, its own process over the timed runs (crossmon's agent, \
         tcpdump, softflowd; all threads, from `/proc/PID/stat`, to a clock tick); `programs`, \
         its BPF programs' run time over the runs of the statistics pass above, statistics \
         included (the noop classifier's figure is what they and the hook's call cost). A pcap \
         monitor's copies of packets into its ring are made by the kernel on the workload's \
         time, in neither figure. On a machine the workload keeps busy, what a monitor takes \
         the workload loses: this is the direct part of the gap between a ratio and 1; the rest \
         is indirect (caches, wake-ups). Each session is fresh and its runs short: work an \
         agent owes a run's flows after it (crossmon walks a flow again at its attempt's 5 s \
         deadline, and keeps a closed one 5 s) falls partly outside the run, so on churn the \
         process figure is below the agent's steady cost.",
    );
    line(&mut md, "");
    md.push_str(&report.cpu_table());
    line(&mut md, "");
    for (bench, table) in &report.program_benches {
        line(&mut md, &format!("## {}", bench.title));
        line(&mut md, "");
        line(&mut md, bench.about);
        line(&mut md, "");
        md.push_str(table);
        line(&mut md, "");
    }
    if let Some(counted) = &report.instructions {
        line(&mut md, &format!("## {}", instructions::TITLE));
        line(&mut md, "");
        line(&mut md, instructions::ABOUT);
        line(&mut md, "");
        md.push_str(&counted.markdown());
        line(&mut md, "");
    }
    if let Some(agent) = &report.agent {
        md.push_str(&agent.markdown());
        line(&mut md, "");
    }
    line(&mut md, "## Each lever's gain on its own");
    line(&mut md, "");
    line(
        &mut md,
        &format!(
            "Not measured by this run: quoted from `{LEVERS}` as it stood when this file was \
             written."
        ),
    );
    line(&mut md, "");
    md.push_str(&quoted(levers));
    line(&mut md, "");
    line(&mut md, "## How it was measured");
    line(&mut md, "");
    line(
        &mut md,
        "A Linux bridge `xmb-br` with two network namespaces on veths (the shape of a Docker \
         bridge network), created by the bench and removed after it; traffic only between the \
         two namespaces. Offloads as veths have them (TSO/GSO on). IPv6 off and neighbours \
         pinned, so nothing else crosses the bridge.",
    );
    line(
        &mut md,
        if conditions.br_netfilter {
            "`br_netfilter` was loaded (as on any host where dockerd has run): bridged frames pass \
         iptables and conntrack in every run, the bare path's included."
        } else {
            "`br_netfilter` was not loaded: bridged frames skip iptables."
        },
    );
    if conditions.stats_already_on {
        line(
            &mut md,
            "`kernel.bpf_stats_enabled` was already on when the bench started: every run paid \
             for run-time statistics.",
        );
    }
    line(&mut md, "");
    line(
        &mut md,
        "Each repetition runs every monitor once, the order rotated by one per repetition; a \
         monitor is started fresh for each repetition and runs the workloads in turn. A run \
         during which a BPF program that was not the monitor's own sat on the bench veths \
         (another crossmon, from a test run on the same machine) is repeated; marked `*` below \
         if it still had one after three tries.",
    );
    line(&mut md, "");
    line(&mut md, "Monitors:");
    line(&mut md, "");
    for monitor in report.monitors {
        line(
            &mut md,
            &format!("- **{}**: {}", monitor.name, monitor.description),
        );
    }
    line(&mut md, "");
    line(&mut md, "Workloads:");
    line(&mut md, "");
    for workload in Workload::ALL {
        line(
            &mut md,
            &format!("- **{}**: {}", workload.title(), workload.description()),
        );
    }
    line(&mut md, "");
    line(&mut md, "## Every run");
    line(&mut md, "");
    md.push_str(&report.raw_table());
    md
}

fn line(md: &mut String, text: &str) {
    md.push_str(text);
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::{quoted, report::median};

    #[test]
    fn a_quoted_file_loses_its_title_and_its_sections_move_down() {
        assert_eq!(
            quoted("# Levers\n\nText.\n\n## Kernel\n\n| a |\n"),
            "Text.\n\n### Kernel\n\n| a |\n"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
