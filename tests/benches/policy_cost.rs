//! What enforcing a flow policy costs a packet: `from_container` timed by
//! the kernel around the program alone (BPF_PROG_TEST_RUN, many runs per
//! measure) on one frame, without a policy, then with one in observe and in
//! enforce mode, on a frame the policy allows and on one it denies. Run by
//! `cargo xtask bench` (root: it loads the programs).
//!
//! The policy is compiled from a synthetic inventory: the bench network is
//! no Docker network, and what is timed is the kernel's part alone.

use std::sync::Arc;

use integration_tests::{
    frames::*,
    scratch::Scratch,
    synthetic::{self, container, TEST_RUN_IFINDEX},
    timing::median_ns,
};
use monitor::{
    datapath::{self, DatapathConfig, Programs, PROGRAM_FROM_CONTAINER},
    docker::Inventory,
    policy::{Policy, PolicyConfig, PolicyInForce},
};
use monitor_common::{ip_proto, tcp_flag};

/// Runs per measure.
const REPEAT: u32 = 200_000;
const CLIENT: [u8; 4] = [10, 9, 0, 2];
const SERVER: [u8; 4] = [10, 9, 0, 3];
const OTHER: [u8; 4] = [10, 9, 0, 4];
const POLICY: &str = "version: 1\ndefaults: {\"*\": deny}\nrules:\n  - {name: client-server, from: {container: client}, to: {container: server}, protocol: tcp, ports: [80]}\n";
const TC_ACT_SHOT: i32 = 2;

/// client (behind the veth test runs use), server and other on one network.
fn inventory() -> Arc<Inventory> {
    let on_bench = |name, ip: [u8; 4], ifindex| {
        container(
            name,
            "bench",
            (ip, [2, 0, 0, 0, 0, ip[3]]),
            [10, 9, 0, 1],
            ifindex,
        )
    };
    synthetic::inventory([
        on_bench("client", CLIENT, TEST_RUN_IFINDEX),
        on_bench("server", SERVER, 1001),
        on_bench("other", OTHER, 1002),
    ])
}

/// A data segment of an established connection, client to `dst`:80.
fn segment(dst: [u8; 4]) -> Vec<u8> {
    let mac = |ip: [u8; 4]| [2, 0, 0, 0, 0, ip[3]];
    let tcp = tcp(40_000, 80, tcp_flag::ACK | tcp_flag::PSH, &[0; 64]);
    ethernet(
        mac(dst),
        mac(CLIENT),
        ETH_P_IP,
        &ipv4(CLIENT, dst, ip_proto::TCP, &[], 0, &tcp),
    )
}

/// Median ns per run, and the verdict.
fn time(programs: &mut Programs, frame: &[u8]) -> anyhow::Result<(f64, i32)> {
    let mut verdict = 0;
    let ns = median_ns(|| {
        let (v, mean) = programs.time_runs(PROGRAM_FROM_CONTAINER, frame, REPEAT)?;
        verdict = v;
        Ok(mean)
    })?;
    Ok((ns, verdict))
}

fn ns(duration: f64) -> String {
    format!("{duration:.0} ns")
}

fn main() -> anyhow::Result<()> {
    let scratch = Scratch::new("policy-cost");
    let path = scratch.write("policy.yaml", POLICY);
    let (allowed, denied) = (segment(SERVER), segment(OTHER));

    let mut bare = datapath::load(&DatapathConfig::default())?;
    let (none, _) = time(&mut bare.programs, &allowed)?;
    drop(bare);

    println!("| policy | allowed packet | denied packet |");
    println!("|---|---:|---:|");
    println!("| none (mode off) | {} | {} |", ns(none), ns(none));
    for enforce in [false, true] {
        let mut loaded = datapath::load(&DatapathConfig::default())?;
        let config = PolicyConfig {
            policy: Policy::load(&path)?,
            path: path.clone(),
            enforce,
        };
        let mut policy = PolicyInForce::start(config, loaded.policy)?;
        policy.on_inventory(Some(inventory()));
        let (pass, _) = time(&mut loaded.programs, &allowed)?;
        let (deny, verdict) = time(&mut loaded.programs, &denied)?;
        anyhow::ensure!(
            (verdict == TC_ACT_SHOT) == enforce,
            "the denied packet got verdict {verdict}"
        );
        println!(
            "| {} | {} (+{}) | {} (+{}){} |",
            if enforce { "enforce" } else { "observe" },
            ns(pass),
            ns(pass - none),
            ns(deny),
            ns(deny - none),
            if enforce { ", dropped" } else { ", passed" },
        );
    }
    Ok(())
}
