//! What counting costs a packet, by packet type: both programs timed by the
//! kernel around the program alone (BPF_PROG_TEST_RUN) at default settings,
//! and the programs' instruction counts, which do not move with the
//! machine's load. Run by `cargo xtask bench` (root: it loads the
//! programs); the figures each kernel lever of issue 18 was measured by.
//!
//! A flow's later packets are timed over many runs of one frame; a new
//! flow's first packet can be timed only once, so those rows are single
//! runs of distinct flows, beside single runs of the same packets once
//! their flows are counted: the kernel's timing of one run adds the same
//! overhead to both.
//!
//! `--instructions`: the kernel's clock counts instructions, as in a VM
//! under qemu's `-icount shift=0` (one instruction a nanosecond; `cargo
//! xtask bench` boots one so), and the figures are labelled as such. The
//! row of one flow counted on two CPUs at once is left out there: those
//! VMs have one CPU, and what that row measures, the cache line's trips
//! between CPUs, no instruction count shows.

use integration_tests::{frames::*, net::TestNet, timing::median_ns};
use monitor::datapath::{
    self, Datapath, DatapathConfig, Event, PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER,
};
use monitor_common::{ip_proto, tcp_flag};

/// Runs per measure of a flow's later packets.
const REPEAT: u32 = 200_000;
/// Distinct flows whose first packet is timed, per row.
const NEW_FLOWS: u16 = 20_000;
/// Drained every 500 flows: well under a quarter full.
const RING_BYTES: u32 = 1 << 24;
const CLIENT: [u8; 4] = [10, 9, 0, 2];
const SERVER: [u8; 4] = [10, 9, 0, 3];

fn frame(src_port: u16, protocol: u8, flags: u8, payload: usize) -> Vec<u8> {
    let mac = |ip: [u8; 4]| [2, 0, 0, 0, 0, ip[3]];
    let payload = vec![0x5a; payload];
    let l4 = if protocol == ip_proto::TCP {
        tcp(src_port, 80, flags, &payload)
    } else {
        udp(src_port, 8125, &payload)
    };
    ethernet(
        mac(SERVER),
        mac(CLIENT),
        ETH_P_IP,
        &ipv4(CLIENT, SERVER, protocol, &[], 0, &l4),
    )
}

/// Median ns per run of `program` on a flow already counted and sampled,
/// the frame come in through `ingress_ifindex` (0: none).
fn steady(
    dp: &mut Datapath,
    program: &str,
    frame: &[u8],
    ingress_ifindex: u32,
) -> anyhow::Result<f64> {
    let mut events = Vec::new();
    for _ in 0..4 {
        dp.programs.test_run(program, frame)?;
    }
    dp.events.drain(&mut events);
    events.clear();
    let ns = median_ns(|| {
        Ok(dp
            .programs
            .time_runs_from(program, frame, ingress_ifindex, REPEAT)?
            .1)
    })?;
    dp.events.drain(&mut events);
    anyhow::ensure!(
        events.is_empty(),
        "{} events from a flow already sampled",
        events.len()
    );
    Ok(ns)
}

/// Mean ns of single runs of `from_container` on the first packet of
/// `NEW_FLOWS` distinct flows (`first(port)`), and of single runs on the
/// same packets once past the flows' payload samples; checks the events.
/// The ring is drained as the agent would: a ring left over a quarter
/// full wakes its reader at each thirty-second of it filled, which would
/// be timed too.
fn first_packets(
    dp: &mut Datapath,
    first: impl Fn(u16) -> Vec<u8>,
    payload_sampled: bool,
) -> anyhow::Result<(f64, f64)> {
    let frames: Vec<Vec<u8>> = (0..NEW_FLOWS).map(|i| first(20_000 + i)).collect();
    let mut events = Vec::new();
    let mut pass = |dp: &mut Datapath, timed: bool| -> anyhow::Result<f64> {
        let mut total = 0.0;
        for (i, frame) in frames.iter().enumerate() {
            let (_, took) = dp.programs.time_runs(PROGRAM_FROM_CONTAINER, frame, 1)?;
            total += took.as_secs_f64();
            if i % 500 == 499 {
                dp.events.drain(&mut events);
            }
        }
        dp.events.drain(&mut events);
        Ok(if timed {
            total / f64::from(NEW_FLOWS) * 1e9
        } else {
            0.0
        })
    };
    let new = pass(dp, true)?;
    // The second packet of each flow is sampled too (the default of 2).
    pass(dp, false)?;
    let again = pass(dp, true)?;
    let new_flows = events
        .iter()
        .filter(|e| matches!(e, Event::NewFlow { .. }))
        .count();
    let samples = events
        .iter()
        .filter(|e| matches!(e, Event::Payload { .. }))
        .count();
    let expected_samples = if payload_sampled { 2 * frames.len() } else { 0 };
    anyhow::ensure!(
        new_flows == frames.len() && samples == expected_samples,
        "{new_flows} new-flow events and {samples} payload samples from {} new flows",
        frames.len()
    );
    Ok((new, again))
}

/// A cell for a figure the kernel would not give: why, with no `|` to
/// break the table.
fn not_measured(err: anyhow::Error) -> String {
    format!("n/a: {}", err.root_cause()).replace('|', "/")
}

/// The worst case of one shared entry: two CPUs adding to the same
/// counters at once, each run's cache line taken from the other CPU.
/// The mean ns of a run on each, or why it could not run.
fn contended(dp: &mut Datapath, frame: &[u8]) -> String {
    dp.programs
        .time_runs_on_cpus(PROGRAM_FROM_CONTAINER, frame, REPEAT, 2)
        .map_or_else(not_measured, |runs| {
            let ns = runs.iter().map(|run| run.as_nanos() as f64).sum::<f64>();
            format!("{:.0}", ns / runs.len() as f64)
        })
}

fn main() -> anyhow::Result<()> {
    let instructions = std::env::args().any(|arg| arg == "--instructions");
    let mut dp = datapath::load(&DatapathConfig {
        ring_bytes: RING_BYTES,
        ..DatapathConfig::default()
    })?;
    let unit = if instructions {
        "instructions per run"
    } else {
        "ns per run"
    };
    println!("| packet | program | {unit} |");
    println!("|---|---|---:|");
    let udp_64 = frame(40_000, ip_proto::UDP, 0, 64);
    let tcp_1448 = frame(40_001, ip_proto::TCP, tcp_flag::ACK, 1448);
    for (label, frame) in [
        ("UDP, 64-byte payload, flow counted", &udp_64),
        ("TCP, 1448-byte segment, flow counted", &tcp_1448),
    ] {
        for program in [PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER] {
            // `to_container` counts what no watched veth counted first:
            // a flow of its own, from an address of the other host.
            let ns = steady(&mut dp, program, frame, 0)?;
            println!("| {label} | `{program}` | {ns:.0} |");
        }
    }
    if !instructions {
        println!(
            "| UDP, 64-byte payload, one flow counted on two CPUs at once | `{PROGRAM_FROM_CONTAINER}` | {} |",
            contended(&mut dp, &udp_64)
        );
    }
    // Container to container: what left a watched veth was counted there,
    // and `to_container` only tells that it came in through one.
    let net = TestNet::new(1)?;
    let sender = net.host(0);
    dp.programs.attach(
        sender.veth_name(),
        sender.veth_ifindex(),
        net.bridge_ifindex(),
    )?;
    // 5.10's BPF_PROG_TEST_RUN refuses an ingress ifindex: the rows after
    // this one still have their figures.
    let bridged = steady(
        &mut dp,
        PROGRAM_TO_CONTAINER,
        &udp_64,
        sender.veth_ifindex(),
    )
    .map_or_else(not_measured, |ns| format!("{ns:.0}"));
    println!("| UDP, 64-byte payload, bridged from a watched veth | `{PROGRAM_TO_CONTAINER}` | {bridged} |");
    let (new, again) = first_packets(&mut dp, |p| frame(p, ip_proto::UDP, 0, 64), true)?;
    println!("| UDP, first datagram of a new flow (single runs) | `{PROGRAM_FROM_CONTAINER}` | {new:.0} |");
    println!(
        "| UDP, the same flows past their samples (single runs) | `{PROGRAM_FROM_CONTAINER}` | {again:.0} |"
    );
    let (new, again) = first_packets(
        &mut dp,
        |p| frame(p, ip_proto::TCP, tcp_flag::SYN, 0),
        false,
    )?;
    println!(
        "| TCP SYN of a new connection (single runs) | `{PROGRAM_FROM_CONTAINER}` | {new:.0} |"
    );
    println!(
        "| TCP, the same SYNs again, flows counted (single runs) | `{PROGRAM_FROM_CONTAINER}` | {again:.0} |"
    );

    println!();
    println!("| program | instructions the verifier processed | instructions after loading (xlated) | JITed bytes |");
    println!("|---|---:|---:|---:|");
    for stats in dp.programs.run_stats()? {
        let shown = |n: Option<u32>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        println!(
            "| `{}` | {} | {} | {} |",
            stats.name,
            shown(stats.verified_instructions),
            shown(stats.translated_instructions),
            shown(stats.jited_bytes),
        );
    }
    Ok(())
}
