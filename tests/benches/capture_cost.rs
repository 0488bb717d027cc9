//! What packet capture costs a packet: `from_container` and `to_container`
//! timed by the kernel around the program alone (BPF_PROG_TEST_RUN, many
//! runs per measure, median of several) on one TCP data segment: with no
//! capture, with one on another veth (the filter map is read), with one on
//! this veth whose filter the packet misses, and with the packet captured
//! (a 118-byte and a 1514-byte frame copied into the capture ring). Run by
//! `cargo xtask bench` (root: it loads the programs).

use integration_tests::{frames::*, synthetic::TEST_RUN_IFINDEX, timing::median_ns};
use monitor::datapath::{
    self, CapturedPacket, Datapath, DatapathConfig, PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER,
};
use monitor_common::{ip_proto, tcp_flag, CaptureFilter, CAPTURE_MATCH_PEER, MAX_SNAPLEN};

/// Runs per measure.
const REPEAT: u32 = 200_000;
/// Runs per measure when every run writes a record: what the ring holds.
const REPEAT_CAPTURED: u32 = 20_000;
/// 20,000 records of 1632 bytes fit.
const RING_BYTES: u32 = 1 << 26;
const CLIENT: [u8; 4] = [10, 9, 0, 2];
const SERVER: [u8; 4] = [10, 9, 0, 3];

fn segment(payload: usize) -> Vec<u8> {
    let mac = |ip: [u8; 4]| [2, 0, 0, 0, 0, ip[3]];
    let tcp = tcp(40_000, 80, tcp_flag::ACK | tcp_flag::PSH, &vec![0; payload]);
    ethernet(
        mac(SERVER),
        mac(CLIENT),
        ETH_P_IP,
        &ipv4(CLIENT, SERVER, ip_proto::TCP, &[], 0, &tcp),
    )
}

fn filter(port: u16) -> CaptureFilter {
    CaptureFilter {
        capture_id: 1,
        snaplen: MAX_SNAPLEN as u32,
        peer: v4_mapped(SERVER),
        port,
        protocol: ip_proto::TCP,
        flags: CAPTURE_MATCH_PEER,
    }
}

/// Median ns per run of `program` on `frame`, the ring drained after each
/// measure (and the records checked when `captured`).
fn time(
    dp: &mut Datapath,
    program: &str,
    frame: &[u8],
    repeat: u32,
    captured: bool,
) -> anyhow::Result<f64> {
    let mut records: Vec<CapturedPacket> = Vec::new();
    let ns = median_ns(|| {
        let (_, mean) = dp.programs.time_runs(program, frame, repeat)?;
        records.clear();
        dp.capture.ring.drain(&mut records);
        let expected = if captured { repeat as usize } else { 0 };
        anyhow::ensure!(
            records.len() == expected,
            "{program}: {} records, expected {expected}",
            records.len()
        );
        Ok(mean)
    })?;
    anyhow::ensure!(
        dp.capture.ring.lost()? == 0,
        "records lost: the ring is too small"
    );
    Ok(ns)
}

fn main() -> anyhow::Result<()> {
    let mut dp = datapath::load(&DatapathConfig {
        capture_ring_bytes: RING_BYTES,
        ..DatapathConfig::default()
    })?;
    // The agent maps the ring only while a capture runs; unmapped, it
    // drains nothing, and every measure would find no records.
    dp.capture.ring.open()?;
    let (small, full) = (segment(64), segment(1460));
    println!("| capture | from_container | to_container |");
    println!("|---|---:|---:|");
    let row = |dp: &mut Datapath,
               label: &str,
               frame: &[u8],
               repeat,
               captured,
               base: Option<(f64, f64)>| {
        let from = time(dp, PROGRAM_FROM_CONTAINER, frame, repeat, captured)?;
        let to = time(dp, PROGRAM_TO_CONTAINER, frame, repeat, captured)?;
        match base {
            None => println!("| {label} | {from:.0} ns | {to:.0} ns |"),
            Some((f, t)) => println!(
                "| {label} | {from:.0} ns ({:+.0}) | {to:.0} ns ({:+.0}) |",
                from - f,
                to - t
            ),
        }
        anyhow::Ok((from, to))
    };
    let off = row(&mut dp, "off", &small, REPEAT, false, None)?;
    dp.capture
        .filters
        .set(TEST_RUN_IFINDEX + 1000, &filter(80))?;
    row(
        &mut dp,
        "on, another veth",
        &small,
        REPEAT,
        false,
        Some(off),
    )?;
    dp.capture.filters.set(TEST_RUN_IFINDEX, &filter(443))?;
    row(
        &mut dp,
        "on, this veth, filter missed",
        &small,
        REPEAT,
        false,
        Some(off),
    )?;
    dp.capture.filters.set(TEST_RUN_IFINDEX, &filter(80))?;
    row(
        &mut dp,
        "on, captured, 118-byte frame",
        &small,
        REPEAT_CAPTURED,
        true,
        Some(off),
    )?;
    row(
        &mut dp,
        "on, captured, 1514-byte frame",
        &full,
        REPEAT_CAPTURED,
        true,
        Some(off),
    )?;
    Ok(())
}
