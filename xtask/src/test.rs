//! The test tiers, in the order a failure is cheapest to find.

use anyhow::Context as _;

use crate::cmd;

/// Every workspace member but the eBPF crate, which builds for BPF only.
const HOST_PACKAGES: &[&str] = &["monitor-common", "monitor", "xtask", "integration-tests"];

pub fn lint() -> anyhow::Result<()> {
    tier(
        "rustfmt",
        cmd::cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    // One package at a time: checked together with `--all-targets`, cargo
    // also builds the eBPF crate's binary for the host (via the agent's
    // build-dependency on it), where it cannot link.
    for package in HOST_PACKAGES {
        tier(
            &format!("clippy ({package})"),
            cmd::cargo()
                .args(["clippy", "--package", package, "--all-targets"])
                .args(["--", "-D", "warnings"]),
        )?;
    }
    // The eBPF crate only builds for the BPF target, on nightly.
    tier(
        "clippy (eBPF crate)",
        cmd::nightly_cargo()
            .args(["clippy", "--package", "monitor-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"]),
    )
}

pub fn all(test_args: &[String]) -> anyhow::Result<()> {
    lint()?;
    // The end-to-end tests start the real binary; build it first so they
    // never run a stale one.
    tier(
        "build crossmon",
        cmd::cargo().args(["build", "--package", "monitor", "--bin", "crossmon"]),
    )?;
    let binary = cmd::workspace_root().join("target/debug/crossmon");
    // Tests load programs and build namespaces: one at a time.
    println!("==> tests (unit, program test runs, namespaces + veths, agent)");
    let totals = run_counting(
        cmd::cargo()
            .env("CROSSMON_BIN", &binary)
            .args(["test", "--workspace", "--exclude", "monitor-ebpf", "--"])
            .args(test_args)
            .args(["--test-threads=1"]),
    )?;
    println!("==> all test tiers passed");
    // cargo's own last line is often an empty doc-test run ("0 passed");
    // the sum across every test binary is what a reader of the log needs.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test`, echoing its output, and sums its `test result:` lines.
fn run_counting(command: &mut std::process::Command) -> anyhow::Result<Totals> {
    use std::io::BufRead as _;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test's output")?;
    let mut totals = Totals::default();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                result
                    .split([';', '.'])
                    .find_map(|part| part.trim().strip_suffix(word)?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            totals.passed += count(" passed");
            totals.failed += count(" failed");
            totals.ignored += count(" ignored");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            totals.passed,
            totals.failed.max(1),
            totals.ignored
        );
        anyhow::bail!("tests failed ({status})");
    }
    Ok(totals)
}

fn tier(name: &str, command: &mut std::process::Command) -> anyhow::Result<()> {
    println!("==> {name}");
    cmd::status(name, command)
}
