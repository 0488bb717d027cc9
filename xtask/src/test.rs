//! The test tiers, in the order a failure is cheapest to find. The first
//! failure stops the run.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::{cmd, image, totals::Totals};

pub fn lint() -> anyhow::Result<()> {
    let mut tiers = Tiers::default();
    lint_tiers(&mut tiers)?;
    tiers.summary();
    Ok(())
}

pub fn all(test_args: &[String]) -> anyhow::Result<()> {
    let mut tiers = Tiers::default();
    lint_tiers(&mut tiers)?;
    // The agent tests start the real binary: build it first so they never
    // run a stale one, and tell them where it is.
    tiers.command(
        "build crossmon",
        cmd::cargo().args(["build", "--package", "monitor", "--bin", "crossmon"]),
    )?;
    let binary = cmd::target_dir().join("debug/crossmon");
    // The sidecar tests build the image from this context in the engine
    // their harness makes sure of (starting dockerd when none runs).
    tiers.run("static crossmon for the sidecar image", || {
        image::stage_context()?;
        Ok("static crossmon".to_owned())
    })?;
    let mut totals = Totals::default();
    tiers.run("tests (single-threaded, as root)", || {
        // One test at a time: tests load programs, create namespaces and
        // bridges, and count packets exactly. `test_args` (a name filter,
        // `--nocapture`) goes to every test binary.
        totals = run_counting(
            cmd::cargo()
                .env("CROSSMON_BIN", &binary)
                .env("CROSSMON_IMAGE_CONTEXT", image::context_dir())
                .args(["test", "--workspace", "--exclude", "monitor-ebpf", "--"])
                .args(test_args)
                .arg("--test-threads=1"),
        )?;
        if totals.ran() == 0 && !test_args.is_empty() {
            println!("note: no test matched {test_args:?}");
        }
        Ok(format!("tests ({totals})"))
    })?;
    tiers.summary();
    // The last line, in the plain form log readers look for: cargo's own
    // last line is usually an empty doc-test run ("0 passed").
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

fn lint_tiers(tiers: &mut Tiers) -> anyhow::Result<()> {
    tiers.command(
        "rustfmt",
        cmd::cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    // `--workspace` means every member, default-members notwithstanding: the
    // eBPF crate must be excluded by name, or its `#[panic_handler]` binary
    // is checked for the host, beside std's, and fails.
    tiers.command(
        "clippy (host)",
        cmd::cargo()
            .args(["clippy", "--workspace", "--exclude", "monitor-ebpf"])
            .args(["--all-targets", "--", "-D", "warnings"]),
    )?;
    // Compose checks the file as `docker compose up` reads it; no engine
    // needed.
    tiers.command(
        "compose file",
        cmd::command("docker-compose").args(["--file", "docker-compose.yml", "config", "--quiet"]),
    )?;
    // Its own pass, as it builds: nightly, the BPF target, core from
    // rust-src. Checks the lib and the `crossmon` program binary.
    tiers.command(
        "clippy (eBPF)",
        cmd::nightly_cargo()
            .args(["clippy", "--package", "monitor-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"]),
    )
}

/// The tiers passed so far, for the summary line.
#[derive(Default)]
struct Tiers {
    passed: Vec<String>,
}

impl Tiers {
    /// Runs one tier under a `==> name` header; `tier` returns what the
    /// summary says about it.
    fn run(
        &mut self,
        name: &str,
        tier: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        println!("==> {name}");
        match tier() {
            Ok(outcome) => {
                self.passed.push(outcome);
                Ok(())
            }
            Err(err) => {
                let before = if self.passed.is_empty() {
                    "none".to_owned()
                } else {
                    self.passed.join(", ")
                };
                println!("==> FAILED: {name} (passed before it: {before})");
                Err(err.context(format!("tier `{name}` failed")))
            }
        }
    }

    fn command(&mut self, name: &str, command: &mut Command) -> anyhow::Result<()> {
        self.run(name, || {
            cmd::status(name, command).map(|()| name.to_owned())
        })
    }

    fn summary(&self) {
        println!(
            "==> all {} tiers passed: {}",
            self.passed.len(),
            self.passed.join(", ")
        );
    }
}

/// Runs `cargo test`, echoing its output, and sums its `test result:`
/// lines: cargo's own last line is often an empty doc-test run, while the
/// sum over every test binary is what a reader of the log needs.
fn run_counting(command: &mut Command) -> anyhow::Result<Totals> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let stdout = child.stdout.take().context("cargo test's output")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        totals.observe(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status}); in the test binaries that ran: {totals}");
    }
    Ok(totals)
}
