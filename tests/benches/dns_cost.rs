//! What DNS monitoring costs a packet: `from_container` timed by the
//! kernel around the program alone (BPF_PROG_TEST_RUN, many runs per
//! measure, median of several) on a UDP datagram of a flow already
//! counted and sampled: to another port with DNS events on and off (the
//! port check every packet pays), and a DNS query and a 300-byte DNS
//! answer with DNS events on and off (on: copied into the event ring).
//! Run by `cargo bench -p integration-tests --bench dns_cost` (root: it
//! loads the programs).

use integration_tests::{frames::*, timing::median_ns};
use monitor::datapath::{self, Datapath, DatapathConfig, Event, PROGRAM_FROM_CONTAINER};
use monitor_common::ip_proto;

/// Runs per measure (every DNS run writes a record: the ring holds them).
const REPEAT: u32 = 20_000;
/// 20,000 records of 576 bytes fit.
const RING_BYTES: u32 = 1 << 25;
const CLIENT: [u8; 4] = [10, 9, 0, 2];
const SERVER: [u8; 4] = [10, 9, 0, 3];

fn datagram(src_port: u16, dst_port: u16, payload: usize) -> Vec<u8> {
    let mac = |ip: [u8; 4]| [2, 0, 0, 0, 0, ip[3]];
    ethernet(
        mac(SERVER),
        mac(CLIENT),
        ETH_P_IP,
        &ipv4(
            CLIENT,
            SERVER,
            ip_proto::UDP,
            &[],
            0,
            &udp(src_port, dst_port, &vec![0x5a; payload]),
        ),
    )
}

/// Median ns per run; the ring drained after each measure and its DNS
/// records counted against `dns_records` per run.
fn time(dp: &mut Datapath, frame: &[u8], dns_records: u32) -> anyhow::Result<f64> {
    let mut events = Vec::new();
    // The flow's first packets are sampled: past them before timing.
    for _ in 0..4 {
        dp.programs.test_run(PROGRAM_FROM_CONTAINER, frame)?;
    }
    dp.events.drain(&mut events);
    median_ns(|| {
        let (_, mean) = dp
            .programs
            .time_runs(PROGRAM_FROM_CONTAINER, frame, REPEAT)?;
        events.clear();
        dp.events.drain(&mut events);
        let dns = events
            .iter()
            .filter(|e| matches!(e, Event::Dns { .. }))
            .count();
        anyhow::ensure!(dns == (REPEAT * dns_records) as usize, "{dns} DNS records");
        Ok(mean)
    })
}

fn main() -> anyhow::Result<()> {
    let load = |dns_events| {
        datapath::load(&DatapathConfig {
            ring_bytes: RING_BYTES,
            dns_events,
            ..DatapathConfig::default()
        })
    };
    let (mut on, mut off) = (load(true)?, load(false)?);
    println!("| packet | DNS off | DNS on |");
    println!("|---|---:|---:|");
    for (label, frame, records) in [
        ("UDP to port 8125, 64 bytes", datagram(40_000, 8125, 64), 0),
        ("DNS query, 40 bytes", datagram(40_001, 53, 40), 1),
        ("DNS answer, 300 bytes", datagram(53, 40_002, 300), 1),
    ] {
        let without = time(&mut off, &frame, 0)?;
        let with = time(&mut on, &frame, records)?;
        println!(
            "| {label} | {without:.0} ns | {with:.0} ns ({:+.0}) |",
            with - without
        );
    }
    Ok(())
}
