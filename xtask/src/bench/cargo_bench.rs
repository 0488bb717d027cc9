//! Benches of the workspace's crates (`harness = false` programs printing
//! a Markdown table) that `cargo xtask bench` builds once and quotes.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::Context as _;

use crate::cmd;

/// A bench of `integration-tests` that times the programs alone with
/// BPF_PROG_TEST_RUN: part of the throughput pass, a section of its own in
/// the report.
pub struct ProgramBench {
    pub name: &'static str,
    /// The section's heading in `BENCHMARKS.md` and on the terminal.
    pub title: &'static str,
    /// What it times, and how.
    pub about: &'static str,
}

pub const PROGRAM_BENCHES: &[ProgramBench] = &[
    ProgramBench {
        name: "datapath_cost",
        title: "Cost per packet type, and instruction counts",
        about: "Both programs at default settings, timed by the kernel around the program alone \
                (BPF_PROG_TEST_RUN): a flow's later packets in 7 measures of 200,000 runs (the \
                median), a flow's first packet in single runs of 20,000 distinct flows (the \
                mean), beside single runs of the same packets again, which carry the same \
                timing overhead (`tests/benches/datapath_cost.rs`). Then the programs' \
                instruction counts, which do not move with the machine's load: what the \
                verifier processed to accept each, its instructions after loading, and its \
                JITed size. These are the figures each kernel change of issue 18 was measured by.",
    },
    ProgramBench {
        name: "policy_cost",
        title: "Cost of enforcement per packet",
        about: "`from_container` on one TCP data segment, timed by the kernel around the program \
                alone (BPF_PROG_TEST_RUN, 200,000 runs per measure, median of 7): without a \
                policy, then with a policy compiled from a synthetic inventory (client may reach \
                server on TCP 80, the network's default denies) in observe and in enforce mode, \
                on a packet the policy allows and on one it denies \
                (`tests/benches/policy_cost.rs`). Policies need Docker identities, which the \
                bench's namespaces do not have, so it is not a throughput row.",
    },
    ProgramBench {
        name: "capture_cost",
        title: "Cost of packet capture per packet",
        about: "Both programs on one TCP data segment, timed by the kernel around the program \
                alone (BPF_PROG_TEST_RUN, median of 7 measures of 200,000 runs; 20,000 when \
                every run writes a record): no capture (one array lookup), a capture of another \
                veth (plus a hash lookup), one of this veth whose filter the packet misses, and \
                the packet captured into the capture ring (`tests/benches/capture_cost.rs`).",
    },
    ProgramBench {
        name: "dns_cost",
        title: "Cost of DNS monitoring per packet",
        about: "`from_container` on a UDP datagram of a flow already counted and sampled, timed \
                by the kernel around the program alone (BPF_PROG_TEST_RUN, median of 7 measures \
                of 20,000 runs): to another port with DNS events on and off (the port check \
                every packet pays), then a DNS query and a 300-byte answer with DNS events on \
                (copied into the event ring) and off (`tests/benches/dns_cost.rs`).",
    },
];

/// Builds bench `bench` of `package` (release, like `cargo bench`) and
/// returns its executable.
pub fn build(package: &str, bench: &str) -> anyhow::Result<PathBuf> {
    let messages = cmd::output(
        &format!("building the {bench} bench"),
        cmd::cargo()
            .args(["bench", "--package", package, "--bench", bench])
            .args(["--no-run", "--message-format=json"])
            // Cargo's progress, as the agent's build shows it.
            .stderr(Stdio::inherit()),
    )?;
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|message| {
            message.pointer("/target/name").and_then(|n| n.as_str()) == Some(bench)
                && message.get("reason").and_then(|r| r.as_str()) == Some("compiler-artifact")
        })
        .and_then(|artifact| Some(PathBuf::from(artifact.get("executable")?.as_str()?)))
        .with_context(|| format!("cargo named no executable for the {bench} bench"))
}

/// Runs a built bench; what it printed.
pub fn table(executable: &Path) -> anyhow::Result<String> {
    cmd::output(
        &format!("the bench {}", executable.display()),
        &mut cmd::command(executable),
    )
}
