//! The test tiers, in the order a failure is cheapest to find. The first
//! failure stops the run, except among the VM kernels: one kernel's
//! failure says nothing about the next, so each runs. The VM kernels run
//! beside the host's tests; a failure of either waits for the other, and
//! the summary and totals come after both.

use std::{
    env,
    fs::{self, File},
    io::{self, BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    cmd, image,
    totals::Totals,
    vm::{self, Kernel},
};

pub fn lint() -> anyhow::Result<()> {
    let mut tiers = Tiers::default();
    lint_tiers(&mut tiers)?;
    tiers.summary();
    Ok(())
}

/// Every tier, the VM kernels beside the host's tests; with `kernels`,
/// only the VM tier for those (after building what it boots).
pub fn all(test_args: &[String], kernels: &[Kernel]) -> anyhow::Result<()> {
    let mut tiers = Tiers::default();
    let mut totals = Totals::default();
    if kernels.is_empty() {
        host_tiers(&mut tiers, test_args, &mut totals)?;
    } else {
        let binary = build_crossmon(&mut tiers)?;
        vm_tiers(&mut tiers, &binary, test_args, kernels, &mut totals)?;
    }
    tiers.summary();
    let skipped = report_skips(&totals);
    // The last line, in the plain form log readers look for: cargo's own
    // last line is usually an empty doc-test run ("0 passed").
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    tiers.failures()?;
    if !skipped.is_empty() {
        bail!(
            "{} test(s) skipped without being run: {}",
            skipped.len(),
            skipped.join(", ")
        );
    }
    Ok(())
}

/// Prints every skipped (`#[ignore]`d) test, loudly; returns them: any
/// fails the run, as a test never passes by skipping. A count of ignored
/// tests without their names (a test binary whose lines were not seen) is
/// a skip nobody can name: reported as such.
fn report_skips(totals: &Totals) -> Vec<String> {
    let mut skipped = Vec::new();
    for name in &totals.ignored_tests {
        println!("==> SKIPPED: {name}");
        skipped.push(name.clone());
    }
    let unnamed = totals
        .ignored
        .saturating_sub(totals.ignored_tests.len() as u64);
    if unnamed > 0 {
        println!("==> SKIPPED: {unnamed} test(s) whose names were not printed");
        skipped.push(format!("{unnamed} unnamed"));
    }
    skipped
}

/// Lint, build, then the host's tests with the VM tier beside them.
fn host_tiers(tiers: &mut Tiers, test_args: &[String], totals: &mut Totals) -> anyhow::Result<()> {
    lint_tiers(tiers)?;
    let binary = build_crossmon(tiers)?;
    // The sidecar tests build the image from this context in the engine
    // their harness makes sure of (starting dockerd when none runs).
    tiers.run("static crossmon for the sidecar image", || {
        image::stage_context()?;
        Ok("static crossmon".to_owned())
    })?;
    let vms = VmTierProcess::start(test_args)
        .inspect_err(|err| tiers.fail("VM kernels", err))
        .ok();
    host_tests(tiers, &binary, test_args, totals);
    if let Some(vms) = vms {
        vms.finish(tiers, totals);
    }
    Ok(())
}

/// The host's tests, one at a time; a failure is recorded, and the VM
/// tier beside them still waited for.
fn host_tests(tiers: &mut Tiers, binary: &Path, test_args: &[String], totals: &mut Totals) {
    tiers.attempt("tests (single-threaded, as root)", || {
        // One test at a time: tests load programs, create namespaces and
        // bridges, and count packets exactly. `test_args` (a name filter,
        // `--nocapture`) goes to every test binary.
        for (binary, test, why) in vm::VM_ONLY {
            println!("not running {binary}'s {test} on the host: it {why}; the VM tier runs it");
        }
        run_counting(
            cmd::cargo()
                .env("CROSSMON_BIN", binary)
                .env("CROSSMON_IMAGE_CONTEXT", image::context_dir())
                .args(["test", "--workspace", "--exclude", "monitor-ebpf", "--"])
                .args(test_args)
                .args(vm::host_skips())
                .arg("--test-threads=1"),
            totals,
        )?;
        if totals.ran() == 0 && !test_args.is_empty() {
            println!("note: no test matched {test_args:?}");
        }
        Ok(format!("tests ({totals})"))
    });
}

/// The VM tier, every kernel, run by `xtask test --kernel ...` beside the
/// host's tests: a VM keeps one core busy for about 4 minutes a kernel,
/// while the host's tests mostly wait on engines, timers and the network,
/// so the two together take about as long as the host's tests alone. Its
/// output goes to a log, shown whole when it ends.
struct VmTierProcess {
    /// Its exit status and how long it ran, once it ends.
    waiter: thread::JoinHandle<(io::Result<ExitStatus>, Duration)>,
    log: PathBuf,
}

impl VmTierProcess {
    fn start(test_args: &[String]) -> anyhow::Result<Self> {
        let dir = cmd::target_dir().join("vm");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("tier.log");
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let errors = file.try_clone().context("the VM tier's log")?;
        let xtask = env::current_exe().context("finding the running xtask")?;
        let mut command = cmd::command(xtask);
        command.arg("test");
        for kernel in Kernel::ALL {
            command.args(["--kernel", &kernel.to_string()]);
        }
        let started = Instant::now();
        let mut child = command
            .arg("--")
            .args(test_args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(errors)
            .spawn()
            .with_context(|| format!("cannot start the VM tier ({command:?})"))?;
        println!(
            "==> VM kernels, beside the host's tests (their output follows them; as it comes: {})",
            log.display()
        );
        let waiter = thread::spawn(move || (child.wait(), started.elapsed()));
        Ok(Self { waiter, log })
    }

    /// Waits for the VM tier, shows its log, and adds what its tests
    /// reported: a tier that passed when its run did.
    fn finish(self, tiers: &mut Tiers, totals: &mut Totals) {
        let (status, took) = self.waiter.join().unwrap_or_else(|_| {
            let panicked = io::Error::other("the thread waiting for it panicked");
            (Err(panicked), Duration::ZERO)
        });
        println!(
            "==> VM kernels, beside the host's tests: {:.0} s",
            took.as_secs_f64()
        );
        let mut reported = Totals::default();
        match fs::read_to_string(&self.log) {
            Ok(log) => {
                for line in log.lines() {
                    println!("{line}");
                    reported.observe(line);
                }
            }
            Err(err) => println!(
                "cannot read the VM tier's log {}: {err}",
                self.log.display()
            ),
        }
        let counts = reported.to_string();
        *totals += reported;
        match status {
            Ok(status) if status.success() => tiers.passed.push(format!("VM kernels ({counts})")),
            Ok(status) => tiers.fail("VM kernels", &anyhow::anyhow!("{counts}; {status}")),
            Err(err) => tiers.fail(
                "VM kernels",
                &anyhow::Error::new(err).context("waiting for their run"),
            ),
        }
    }
}

/// The agent tests start the real binary: build it first so they never
/// run a stale one, and tell them where it is.
fn build_crossmon(tiers: &mut Tiers) -> anyhow::Result<PathBuf> {
    let mut binary = PathBuf::new();
    tiers.run("build crossmon", || {
        binary = build_agent()?;
        Ok("build crossmon".to_owned())
    })?;
    Ok(binary)
}

/// `cargo build` of the crossmon binary the agent tests start; its path.
pub fn build_agent() -> anyhow::Result<PathBuf> {
    cmd::status(
        "build crossmon",
        cmd::cargo().args(["build", "--package", "monitor", "--bin", "crossmon"]),
    )?;
    Ok(cmd::target_dir().join("debug/crossmon"))
}

/// The VM tier: what the VMs boot with, then one tier per kernel. Every
/// kernel runs even when one fails; [`Tiers::failures`] says which did.
fn vm_tiers(
    tiers: &mut Tiers,
    binary: &Path,
    test_args: &[String],
    kernels: &[Kernel],
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let mut staged = None;
    tiers.run("VM test binaries and initramfs", || {
        staged = Some(vm::stage(binary, test_args)?);
        Ok("VM initramfs".to_owned())
    })?;
    let staged = staged.context("the VM initramfs was not staged")?;
    for &kernel in kernels {
        tiers.attempt(&format!("VM kernel {kernel}"), || {
            let outcome = vm::run(kernel, &staged)?;
            *totals += outcome.totals.clone();
            outcome.verdict()
        });
    }
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

/// The tiers passed so far, for the summary line, and those failed that
/// did not stop the run.
#[derive(Default)]
struct Tiers {
    passed: Vec<String>,
    failed: Vec<String>,
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
        let started = Instant::now();
        let result = tier();
        // Each tier's time, so that a CI run's budget shows where it goes.
        println!("==> {name}: {:.0} s", started.elapsed().as_secs_f64());
        match result {
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

    /// Runs one tier like [`Tiers::run`], but a failure is printed and
    /// recorded, and the run goes on.
    fn attempt(&mut self, name: &str, tier: impl FnOnce() -> anyhow::Result<String>) {
        if let Err(err) = self.run(name, tier) {
            println!("{err:#}");
            self.failed.push(name.to_owned());
        }
    }

    /// Records tier `name` as failed with `err`, the run going on.
    fn fail(&mut self, name: &str, err: &anyhow::Error) {
        println!("==> FAILED: {name}: {err:#}");
        self.failed.push(name.to_owned());
    }

    /// An error naming the tiers [`Tiers::attempt`] saw fail.
    fn failures(&self) -> anyhow::Result<()> {
        if self.failed.is_empty() {
            return Ok(());
        }
        bail!("tiers failed: {}", self.failed.join(", "))
    }

    fn command(&mut self, name: &str, command: &mut Command) -> anyhow::Result<()> {
        self.run(name, || {
            cmd::status(name, command).map(|()| name.to_owned())
        })
    }

    fn summary(&self) {
        if self.failed.is_empty() {
            println!(
                "==> all {} tiers passed: {}",
                self.passed.len(),
                self.passed.join(", ")
            );
        } else {
            println!(
                "==> FAILED: {} (passed: {})",
                self.failed.join(", "),
                self.passed.join(", ")
            );
        }
    }
}

/// Runs `cargo test`, echoing its output, and adds its `test result:`
/// lines to `totals` as they come, a failed run's too: cargo's own last
/// line is often an empty doc-test run, while the sum over every test
/// binary is what a reader of the log needs.
fn run_counting(command: &mut Command, totals: &mut Totals) -> anyhow::Result<()> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let stdout = child.stdout.take().context("cargo test's output")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        totals.observe(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status}); in the test binaries that ran: {totals}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skip_is_named_and_counted() {
        let mut totals = Totals::default();
        for line in [
            "test a_new_skip ... ignored, not yet",
            "test result: ok. 5 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.00s",
        ] {
            totals.observe(line);
        }
        assert_eq!(report_skips(&totals), ["a_new_skip", "1 unnamed"]);
        assert!(report_skips(&Totals::default()).is_empty());
    }
}
