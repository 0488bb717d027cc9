//! The test tiers, in the order a failure is cheapest to find.

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
    tier(
        "tests (unit, program test runs, namespaces + veths)",
        cmd::cargo()
            .env("CROSSMON_BIN", &binary)
            .args(["test", "--workspace", "--exclude", "monitor-ebpf", "--"])
            .args(test_args)
            .args(["--test-threads=1"]),
    )?;
    println!("==> all test tiers passed");
    Ok(())
}

fn tier(name: &str, command: &mut std::process::Command) -> anyhow::Result<()> {
    println!("==> {name}");
    cmd::status(name, command)
}
