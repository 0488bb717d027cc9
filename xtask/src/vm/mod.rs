//! The VM kernel tier: Debian's stock kernels of the releases crossmon
//! supports, booted under qemu, each running `crossmon doctor` and the
//! integration tests that need no Docker. The host runs one kernel; the
//! verifier, the attach API (TCX or clsact) and the helpers differ between
//! these. The same VMs, their clock counting instructions, run the bench
//! of instructions per packet type ([`count_instructions`]).

mod boot;
mod fetch;
mod initramfs;

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{cmd, totals::Totals};

/// Starts every line the init script prints for the host.
const MARKER: &str = "@@crossmon-vm";
/// A VM still running after this is killed and its kernel failed: each
/// takes about 90 s under emulation on 2 cores, a hung test forever.
const TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The integration tests that need no Docker.
const TESTS: &[&str] = &["namespaces", "program_runs", "policy", "fuzz"];
/// policy's tests on synthetic frames and on a test net's veths (enforce
/// in both attach modes, the enforce lease); the others need Docker.
const POLICY_TESTS: &[&str] = &[
    "the_kernel_drops_what_the_compiled_policy_denies_and_nothing_else",
    "in_observe_mode_violations_are_counted_and_passed",
    "enforce_drops_denied_datagrams_on_real_veths_in_both_attach_modes",
    "an_enforce_lease_left_unrenewed_lapses_into_observing",
];
/// Tests `#[ignore]`d because the host's kernel lacks what they need and
/// every VM kernel has it, as `(binary, test, why)`. The host tier leaves
/// them out by name, saying so (an ignored test would fail its run as a
/// skip); the VMs run their binaries' ignored tests.
pub const VM_ONLY: &[(&str, &str, &str)] = &[(
    "namespaces",
    "ipvlan_siblings_are_counted_once_at_the_senders_egress",
    "needs the ipvlan driver, a module the VMs load",
)];

/// Tests no VM can pass, whatever its kernel, as `(binary, test, why)`:
/// they need what the VMs lack. The host tier runs them.
const HOST_ONLY: &[(&str, &str, &str)] = &[(
    "program_runs",
    "two_cpus_counting_one_flow_at_once_lose_nothing",
    "needs two CPUs; the VMs have one (`-smp 1`, see boot.rs)",
)];

/// The host tier's libtest arguments leaving [`VM_ONLY`] out.
pub fn host_skips() -> Vec<String> {
    VM_ONLY
        .iter()
        .flat_map(|(_, test, _)| ["--skip".to_owned(), (*test).to_owned()])
        .collect()
}

/// The share of the fuzz's frames run under emulation (see fuzz.rs):
/// about 230,000 program runs, 15 s at some 65 us a run.
const FUZZ_SCALE: &str = "0.3";
/// Lines of the doctor's debug log shown when a kernel fails.
const LOG_TAIL: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::V5_10, Kernel::V6_1, Kernel::V6_12];

    /// Tests this kernel cannot pass, as `(binary, test, why)`: they need
    /// what it lacks. (Such a test fails rather than skips where it runs.)
    fn lacks(self) -> &'static [(&'static str, &'static str, &'static str)] {
        const NEEDS_TCX: (&str, &str, &str) = (
            "namespaces",
            "a_second_tcx_program_after_crossmon_sees_every_packet",
            "needs TCX links (kernel 6.6+)",
        );
        match self {
            Self::V5_10 | Self::V6_1 => &[NEEDS_TCX],
            Self::V6_12 => &[],
        }
    }

    /// What this kernel's VM leaves out: what the kernel lacks, and what
    /// every VM does ([`HOST_ONLY`]).
    fn left_out(self) -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str)> {
        self.lacks().iter().chain(HOST_ONLY)
    }

    /// The Debian suite whose newest cloud kernel is this version.
    fn suite(self) -> &'static str {
        match self {
            Self::V5_10 => "bullseye",
            Self::V6_1 => "bookworm",
            Self::V6_12 => "bookworm-backports",
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V5_10 => "5.10",
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        })
    }
}

/// One command the VM runs, between `begin` and `end` markers.
pub struct Step {
    name: &'static str,
    /// The command line, run through the VM's shell.
    argv: Vec<String>,
}

impl Step {
    fn shell_command(&self) -> String {
        self.argv
            .iter()
            .map(|arg| shell_quote(arg))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `arg` as one shell word.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// What the VMs share: where their files go, the first part of their
/// initramfs, and the arguments for their tests.
pub struct Staged {
    dir: PathBuf,
    common: PathBuf,
    test_args: Vec<String>,
}

/// Builds the test binaries and the initramfs part every VM boots with.
/// `test_args` (a name filter, `--nocapture`) goes to the VMs' tests too.
pub fn stage(crossmon: &Path, test_args: &[String]) -> anyhow::Result<Staged> {
    let tests = build_tests()?;
    stage_in(work_dir(), crossmon, &tests, test_args)
}

/// The initramfs part of VMs that run bench `name`, built at
/// `executable`, alone; their files apart from the test tier's.
pub fn stage_bench(crossmon: &Path, name: &str, executable: &Path) -> anyhow::Result<Staged> {
    let programs = [(name.to_owned(), executable.to_path_buf())];
    stage_in(cmd::target_dir().join("vm-bench"), crossmon, &programs, &[])
}

fn stage_in(
    dir: PathBuf,
    crossmon: &Path,
    programs: &[(String, PathBuf)],
    test_args: &[String],
) -> anyhow::Result<Staged> {
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let common = initramfs::common(&dir, crossmon, programs)?;
    Ok(Staged {
        dir,
        common,
        test_args: test_args.to_vec(),
    })
}

/// Where the test tier's initramfs and logs go.
fn work_dir() -> PathBuf {
    cmd::target_dir().join("vm")
}

/// The test binaries of [`TESTS`], by name, built as `cargo test` would.
fn build_tests() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cargo = cmd::cargo();
    // json-render-diagnostics: artifacts on stdout, compiler errors
    // rendered on stderr, shown as they come with cargo's progress.
    cargo.args(["test", "--no-run"]);
    cargo.arg("--message-format=json-render-diagnostics");
    cargo.stderr(std::process::Stdio::inherit());
    cargo.args(["--package", "integration-tests"]);
    for test in TESTS {
        cargo.args(["--test", test]);
    }
    let messages = cmd::output("building the VM's test binaries", &mut cargo)?;
    // Their artifacts also hold the `crossmon` binary the tests may start.
    let tests: Vec<(String, PathBuf)> = test_executables(&messages)
        .into_iter()
        .filter(|(name, _)| TESTS.contains(&name.as_str()))
        .collect();
    for test in TESTS {
        if !tests.iter().any(|(name, _)| name == test) {
            bail!("cargo built no test binary `{test}`");
        }
    }
    Ok(tests)
}

/// `(test target name, executable)` of cargo's `compiler-artifact` messages.
fn test_executables(messages: &str) -> Vec<(String, PathBuf)> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter_map(|message| {
            let name = message["target"]["name"].as_str()?;
            let executable = message["executable"].as_str()?;
            Some((name.to_owned(), PathBuf::from(executable)))
        })
        .collect()
}

/// What each VM runs: the doctor, then the tests one at a time (they count
/// packets exactly), as the host tier does, but for those `kernel` cannot
/// pass.
fn steps(kernel: Kernel, test_args: &[String]) -> Vec<Step> {
    let test = |name: &'static str, args: Vec<String>| {
        let mut argv = vec![format!("{}/{name}", initramfs::TESTS_DIR)];
        argv.push("--test-threads=1".to_owned());
        argv.extend(args);
        for (_, test, _) in kernel.left_out().filter(|(binary, ..)| *binary == name) {
            argv.extend(["--skip".to_owned(), (*test).to_owned()]);
        }
        // libtest refuses the two together, and either given twice.
        let asked = argv
            .iter()
            .any(|arg| arg == "--ignored" || arg == "--include-ignored");
        if !asked && VM_ONLY.iter().any(|(binary, ..)| *binary == name) {
            argv.push("--include-ignored".to_owned());
        }
        Step { name, argv }
    };
    let mut steps = vec![Step {
        name: "doctor",
        argv: vec![initramfs::CROSSMON.to_owned(), "doctor".to_owned()],
    }];
    steps.push(test("namespaces", test_args.to_vec()));
    steps.push(test("program_runs", test_args.to_vec()));
    if let Some(args) = policy_args(test_args) {
        steps.push(test("policy", args));
    }
    // Its table of frames and runs per category, and the seed to replay
    // (libtest refuses a flag given twice).
    let mut fuzz_args = test_args.to_vec();
    if !fuzz_args.iter().any(|arg| arg == "--nocapture") {
        fuzz_args.insert(0, "--nocapture".to_owned());
    }
    let mut fuzz = test("fuzz", fuzz_args);
    fuzz.argv.splice(
        0..0,
        [
            "env".to_owned(),
            format!("CROSSMON_FUZZ_SCALE={FUZZ_SCALE}"),
        ],
    );
    steps.push(fuzz);
    steps
}

/// libtest options followed by a value, which is no name filter.
const VALUE_OPTIONS: &[&str] = &[
    "--skip",
    "--test-threads",
    "--format",
    "--color",
    "--logfile",
    "--shuffle-seed",
    "-Z",
];

/// The policy binary's arguments: [`POLICY_TESTS`] by exact name, those of
/// them the name filters in `test_args` select (all without filters), and
/// the other options; None when the filters select neither.
fn policy_args(test_args: &[String]) -> Option<Vec<String>> {
    let mut filters = Vec::new();
    let mut options = Vec::new();
    let mut exact = false;
    let mut args = test_args.iter();
    while let Some(arg) = args.next() {
        if arg == "--exact" {
            exact = true;
        } else if VALUE_OPTIONS.contains(&arg.as_str()) {
            options.push(arg.clone());
            options.extend(args.next().cloned());
        } else if arg.starts_with('-') {
            options.push(arg.clone());
        } else {
            filters.push(arg.as_str());
        }
    }
    let selected: Vec<String> = POLICY_TESTS
        .iter()
        .filter(|name| {
            filters.is_empty()
                || filters.iter().any(|filter| {
                    if exact {
                        *name == filter
                    } else {
                        name.contains(filter)
                    }
                })
        })
        .map(|name| (*name).to_owned())
        .collect();
    if selected.is_empty() {
        return None;
    }
    options.push("--exact".to_owned());
    options.extend(selected);
    Some(options)
}

/// How one kernel did.
pub struct Outcome {
    pub kernel: Kernel,
    pub totals: Totals,
    pub elapsed: Duration,
    /// What failed, one line each; empty when all passed.
    pub failures: Vec<String>,
    console_log: PathBuf,
    doctor_log: PathBuf,
}

/// Boots `kernel` with the staged initramfs and its modules, running the
/// tests, and judges what the console said.
pub fn run(kernel: Kernel, staged: &Staged) -> anyhow::Result<Outcome> {
    for (binary, test, why) in kernel.left_out() {
        println!("kernel {kernel}: not running {binary}'s {test}: it {why}");
    }
    let steps = steps(kernel, &staged.test_args);
    let (_, vm, boot) = boot_with(kernel, staged, &steps, false)?;
    Ok(Outcome {
        kernel,
        totals: boot.console.totals.clone(),
        elapsed: boot.elapsed,
        failures: failures(&boot),
        console_log: vm.console_log,
        doctor_log: vm.second_serial_log,
    })
}

/// What a program printed in a VM whose clock counts instructions.
pub struct Counted {
    /// The kernel's Debian package, version included.
    pub package: String,
    pub output: Vec<String>,
}

/// Boots `kernel` with its clock counting instructions (see
/// [`boot::Vm::count_instructions`]) to run the staged program `name`
/// with `args`; what it printed, or why it failed.
pub fn count_instructions(
    kernel: Kernel,
    staged: &Staged,
    name: &'static str,
    args: &[&str],
) -> anyhow::Result<Counted> {
    let mut argv = vec![format!("{}/{name}", initramfs::TESTS_DIR)];
    argv.extend(args.iter().map(|arg| (*arg).to_owned()));
    let (package, vm, boot) = boot_with(kernel, staged, &[Step { name, argv }], true)?;
    let failures = failures(&boot);
    if !failures.is_empty() {
        bail!(
            "{name} in kernel {kernel}'s VM failed: {} (console: {})",
            failures.join("; "),
            vm.console_log.display()
        );
    }
    let output = boot
        .console
        .steps
        .into_iter()
        .find(|step| step.name == name)
        .map(|step| step.output)
        .unwrap_or_default();
    Ok(Counted { package, output })
}

/// Fetches `kernel` (or takes it from the cache) and boots it with the
/// staged initramfs, its modules and an init running `steps`: the kernel's
/// package, the VM and what its run showed.
fn boot_with(
    kernel: Kernel,
    staged: &Staged,
    steps: &[Step],
    count_instructions: bool,
) -> anyhow::Result<(String, boot::Vm, boot::Boot)> {
    let files = fetch::kernel(kernel.suite())
        .with_context(|| format!("fetching Debian {}'s kernel", kernel.suite()))?;
    println!(
        "kernel {kernel}: {} (cached in {})",
        files.package,
        fetch::cache_dir()?.join(kernel.suite()).display()
    );
    let dir = staged.dir.join(kernel.suite());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initramfs = initramfs::for_kernel(&staged.common, &files.modules, steps, &dir)?;
    let vm = boot::Vm {
        vmlinuz: files.vmlinuz,
        initramfs,
        console_log: dir.join("console.log"),
        second_serial_log: dir.join("doctor-debug.log"),
        timeout: TIMEOUT,
        count_instructions,
    };
    let boot = boot::boot(&vm)?;
    Ok((files.package, vm, boot))
}

/// One line per failure of the run: the VM's own, then each step's.
fn failures(boot: &boot::Boot) -> Vec<String> {
    let console = &boot.console;
    let mut failures = Vec::new();
    if boot.timed_out {
        failures.push(format!("killed after {} s", TIMEOUT.as_secs()));
    } else if console.kernel.is_none() {
        failures.push("init never ran (no kernel line on the console)".to_owned());
    } else if !console.done {
        failures.push("the VM stopped before init's end (a kernel panic?)".to_owned());
    }
    for module in &console.insmod_failed {
        failures.push(format!("insmod {module} failed"));
    }
    for step in &console.steps {
        if let Some(failure) = step_failure(step) {
            failures.push(format!("{}: {failure}", step.name));
        }
    }
    failures
}

fn step_failure(step: &boot::StepReport) -> Option<String> {
    let Some(code) = step.exit else {
        return Some("did not finish".to_owned());
    };
    if step.name == "doctor" {
        // No Docker engine runs in the VM: that check fails by design,
        // every other must pass.
        let failed: Vec<&str> = step
            .failed_checks
            .iter()
            .map(String::as_str)
            .filter(|check| check.split_whitespace().next() != Some("docker"))
            .collect();
        return (!failed.is_empty()).then(|| failed.join("; "));
    }
    if code == 0 {
        return None;
    }
    if step.failed_tests.is_empty() {
        Some(format!("exit status {code}"))
    } else {
        Some(format!(
            "exit status {code}, failed: {}",
            step.failed_tests.join(", ")
        ))
    }
}

impl Outcome {
    /// The tier's verdict: a summary when every step passed; else the
    /// failures, after the tail of the doctor's debug log.
    pub fn verdict(&self) -> anyhow::Result<String> {
        let summary = format!(
            "VM kernel {} ({}; {:.0} s)",
            self.kernel,
            self.totals,
            self.elapsed.as_secs_f64()
        );
        if self.failures.is_empty() {
            return Ok(summary);
        }
        self.print_doctor_tail();
        bail!(
            "kernel {} failed:\n  {}\n(console: {}, doctor's debug log: {})",
            self.kernel,
            self.failures.join("\n  "),
            self.console_log.display(),
            self.doctor_log.display()
        )
    }

    fn print_doctor_tail(&self) {
        let Ok(log) = fs::read_to_string(&self.doctor_log) else {
            println!(
                "no debug log of the doctor at {}",
                self.doctor_log.display()
            );
            return;
        };
        let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
        println!(
            "--- last {} lines of `RUST_LOG=debug crossmon doctor` on {}:",
            tail.len(),
            self.kernel
        );
        for line in tail {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn policy_runs_only_its_tests_without_docker() {
        let all = policy_args(&[]).unwrap_or_default();
        assert_eq!(all[0], "--exact");
        assert_eq!(all.len(), 1 + POLICY_TESTS.len());
        assert_eq!(
            policy_args(&args(&["--nocapture", "observe"])),
            Some(args(&[
                "--nocapture",
                "--exact",
                "in_observe_mode_violations_are_counted_and_passed"
            ]))
        );
        assert_eq!(policy_args(&args(&["udp"])), None);
        assert_eq!(policy_args(&args(&["--exact", "observe"])), None);
        assert_eq!(
            policy_args(&args(&["--skip", "kernel", "mode"])).map(|a| a.len()),
            // --skip kernel --exact, the observe test and the attach modes'.
            Some(5)
        );
    }

    #[test]
    fn steps_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("--test-threads=1"), "--test-threads=1");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let steps = steps(Kernel::V6_1, &args(&["a b"]));
        let fuzz = steps.last().map(Step::shell_command).unwrap_or_default();
        assert_eq!(
            fuzz,
            format!(
                "env CROSSMON_FUZZ_SCALE={FUZZ_SCALE} /tests/fuzz --test-threads=1 --nocapture 'a b'"
            )
        );
    }

    #[test]
    fn kernels_without_tcx_skip_the_test_that_needs_it() {
        let namespaces = |kernel| {
            steps(kernel, &[])
                .iter()
                .find(|step| step.name == "namespaces")
                .map(Step::shell_command)
                .unwrap_or_default()
        };
        assert!(namespaces(Kernel::V5_10)
            .contains(" --skip a_second_tcx_program_after_crossmon_sees_every_packet "));
        assert!(!namespaces(Kernel::V6_12).contains("--skip"));
    }

    #[test]
    fn every_vm_leaves_out_what_no_vm_can_run() {
        for kernel in Kernel::ALL {
            for (binary, test, _) in HOST_ONLY {
                assert!(TESTS.contains(binary), "{binary} is not run in the VMs");
                let argv = steps(kernel, &[])
                    .into_iter()
                    .find(|step| step.name == *binary)
                    .map(|step| step.argv)
                    .unwrap_or_default();
                assert!(
                    argv.windows(2).any(|pair| pair == args(&["--skip", test])),
                    "{kernel}: {argv:?}"
                );
            }
        }
    }

    #[test]
    fn the_vms_run_the_tests_the_host_leaves_out() {
        let argv = |name: &str, test_args: &[&str]| {
            steps(Kernel::V6_12, &args(test_args))
                .into_iter()
                .find(|step| step.name == name)
                .map(|step| step.argv)
                .unwrap_or_default()
        };
        let ignored = |argv: &[String]| {
            argv.iter()
                .filter(|arg| *arg == "--ignored" || *arg == "--include-ignored")
                .count()
        };
        for (binary, test, _) in VM_ONLY {
            assert!(TESTS.contains(binary), "{binary} is not run in the VMs");
            assert!(argv(binary, &[]).ends_with(&args(&["--include-ignored"])));
            // One of the two flags at most: libtest refuses more.
            assert_eq!(ignored(&argv(binary, &["--ignored", test])), 1);
            assert_eq!(ignored(&argv(binary, &["--include-ignored"])), 1);
            let skips = host_skips();
            assert!(skips.windows(2).any(|pair| pair == args(&["--skip", test])));
        }
        assert_eq!(ignored(&argv("program_runs", &[])), 0);
        assert_eq!(ignored(&argv("fuzz", &[])), 0);
    }

    #[test]
    fn the_doctor_fails_on_any_check_but_docker() {
        let doctor = |checks: &[&str]| boot::StepReport {
            name: "doctor".to_owned(),
            exit: Some(1),
            failed_checks: args(checks),
            ..boot::StepReport::default()
        };
        assert_eq!(step_failure(&doctor(&["docker       no engine"])), None);
        assert_eq!(
            step_failure(&doctor(&["docker x", "programs     refused"])).as_deref(),
            Some("programs     refused")
        );
    }

    #[test]
    fn test_executables_come_from_cargos_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"fuzz","kind":["test"]},"executable":"/t/fuzz-1"}
{"reason":"compiler-artifact","target":{"name":"monitor","kind":["lib"]},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executables(messages),
            [("fuzz".to_owned(), PathBuf::from("/t/fuzz-1"))]
        );
    }
}
