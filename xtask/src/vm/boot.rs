//! One VM run: qemu with the kernel and its initramfs, the console read
//! line by line (echoed, logged, parsed for the init's markers and the
//! tests' results) and the VM killed if it outlives its time.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Stdio},
    sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::MARKER;
use crate::{cmd, totals::Totals};

pub struct Vm {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    /// Everything the console printed.
    pub console_log: PathBuf,
    /// What the VM writes to its second serial port.
    pub second_serial_log: PathBuf,
    pub timeout: Duration,
    /// The guest's clock counts instructions (qemu's `-icount shift=0`:
    /// one a nanosecond), so the kernel's timing of a program run reads
    /// the instructions it ran, the same on any host.
    pub count_instructions: bool,
}

/// What a VM run showed.
pub struct Boot {
    pub console: Console,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// panic=-1: a panic reboots at once, which -no-reboot turns into qemu's
/// exit; oops=panic: so does an oops, rather than a test hanging until the
/// timeout on what the oopsed task held. loglevel=5: kernel warnings and
/// worse reach the console, the chatter of bridges and veths does not.
/// trust_cpu: `-cpu max` has RDRAND, so the 5.10 kernel's random pool is
/// ready at once and getrandom never blocks a test.
const KERNEL_COMMAND_LINE: &str =
    "console=ttyS0 panic=-1 oops=panic loglevel=5 random.trust_cpu=on";

pub fn boot(vm: &Vm) -> anyhow::Result<Boot> {
    let started = Instant::now();
    let mut qemu = cmd::command("qemu-system-x86_64");
    // TCG: nested KVM hangs at boot on these machines, and emulation works
    // anywhere. `cx16=off`: qemu 7.2's emulation of CMPXCHG16B left
    // garbage in EFLAGS (the trap flag, say), and the slab allocator's
    // per-CPU use of it made about one boot in three oops or double
    // fault, with one vCPU or two; without it the kernel takes a lock
    // instead. One vCPU leaves the host's other core to the host.
    // `-nodefaults`: no network card, so the VM's only interfaces are the
    // ones the tests make.
    qemu.args([
        "-accel",
        "tcg",
        "-cpu",
        "max,cx16=off",
        "-smp",
        "1",
        "-m",
        "2048",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    if vm.count_instructions {
        qemu.args(["-icount", "shift=0"]);
    }
    qemu.arg("-kernel")
        .arg(&vm.vmlinuz)
        .arg("-initrd")
        .arg(&vm.initramfs)
        .args(["-append", KERNEL_COMMAND_LINE])
        .args(["-serial", "stdio", "-serial"])
        .arg(format!("file:{}", vm.second_serial_log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = qemu
        .spawn()
        .with_context(|| format!("cannot start {qemu:?}: install qemu-system-x86"))?;
    let stdout = child.stdout.take().context("qemu's console")?;
    let child = Arc::new(Mutex::new(child));
    let (finished, timed_out) = watchdog(Arc::clone(&child), vm.timeout);

    let mut console = Console::default();
    let read = read_console(stdout, &vm.console_log, &mut console, started);
    if read.is_err() {
        let _ = lock(&child).kill();
    }
    // The watchdog ends with the console; a send error means it already
    // fired.
    let _ = finished.send(());
    let status = lock(&child).wait().context("waiting for qemu")?;
    let timed_out = timed_out.join().unwrap_or(false);
    read?;
    if !status.success() && !timed_out {
        println!("qemu exited with {status}");
    }
    Ok(Boot {
        console,
        timed_out,
        elapsed: started.elapsed(),
    })
}

/// Echoes, logs and parses the console until qemu closes it.
fn read_console(
    stdout: ChildStdout,
    log_path: &Path,
    console: &mut Console,
    started: Instant,
) -> anyhow::Result<()> {
    let log = File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut log = BufWriter::new(log);
    let mut reader = BufReader::new(stdout);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        let read = reader
            .read_until(b'\n', &mut bytes)
            .context("reading the VM's console")?;
        if read == 0 {
            break;
        }
        log.write_all(&bytes).context("writing the console log")?;
        // Test output may hold any bytes; the serial line ends with \r\n.
        let text = String::from_utf8_lossy(&bytes);
        let line = text.trim_end_matches(['\r', '\n']);
        if let Some(shown) = console.line(line, started.elapsed()) {
            println!("{shown}");
        }
    }
    log.flush().context("writing the console log")
}

/// The child, also when the other thread panicked holding it.
fn lock(child: &Mutex<Child>) -> MutexGuard<'_, Child> {
    child.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Kills qemu if nothing is sent on the returned channel within `timeout`;
/// the thread tells whether it did.
fn watchdog(
    child: Arc<Mutex<Child>>,
    timeout: Duration,
) -> (mpsc::Sender<()>, thread::JoinHandle<bool>) {
    let (finished, wait) = mpsc::channel();
    let handle = thread::spawn(move || match wait.recv_timeout(timeout) {
        Err(mpsc::RecvTimeoutError::Timeout) => {
            println!("VM still running after {} s: killing it", timeout.as_secs());
            let _ = lock(&child).kill();
            true
        }
        _ => false,
    });
    (finished, handle)
}

/// One step of the init script, as its markers and output told.
#[derive(Debug, Default, PartialEq)]
pub struct StepReport {
    pub name: String,
    /// None: the step began and never ended (the VM died or was killed).
    pub exit: Option<i32>,
    /// The names libtest lists as failed.
    pub failed_tests: Vec<String>,
    /// `FAIL check detail` lines (`crossmon doctor`'s).
    pub failed_checks: Vec<String>,
    pub seconds: f64,
    /// What the console showed while it ran (kernel warnings included).
    pub output: Vec<String>,
}

/// The console, parsed.
#[derive(Debug, Default)]
pub struct Console {
    /// `uname -r`, once init ran.
    pub kernel: Option<String>,
    pub booted_after: Option<Duration>,
    pub insmod_failed: Vec<String>,
    pub steps: Vec<StepReport>,
    /// Whether init reached its end.
    pub done: bool,
    pub totals: Totals,
    step_started: Duration,
    /// Names under the test binary's last `failures:` line so far.
    failure_names: Option<Vec<String>>,
    /// Whether the last line was part of a `FAIL` check.
    in_failed_check: bool,
}

impl Console {
    /// Takes one line (without its line end) seen `at` after qemu started;
    /// returns what to print for it.
    pub fn line(&mut self, line: &str, at: Duration) -> Option<String> {
        let Some(marker) = line.strip_prefix(MARKER).map(str::trim) else {
            self.output(line);
            return Some(line.to_owned());
        };
        let (what, rest) = marker.split_once(' ').unwrap_or((marker, ""));
        match what {
            "kernel" => {
                self.kernel = Some(rest.to_owned());
                self.booted_after = Some(at);
                Some(format!(
                    "--- kernel {rest} up after {:.1} s",
                    at.as_secs_f64()
                ))
            }
            "insmod-failed" => {
                self.insmod_failed.push(rest.to_owned());
                Some(format!("--- insmod {rest} failed"))
            }
            "begin" => {
                self.step_started = at;
                self.steps.push(StepReport {
                    name: rest.to_owned(),
                    ..StepReport::default()
                });
                Some(format!("--- {rest}"))
            }
            "end" => {
                let (name, code) = rest.rsplit_once(' ').unwrap_or((rest, ""));
                let seconds = (at - self.step_started).as_secs_f64();
                let Some(step) = self.steps.last_mut().filter(|step| step.name == name) else {
                    return Some(line.to_owned());
                };
                step.exit = code.parse().ok();
                step.seconds = seconds;
                Some(format!("--- {name}: exit {code} after {seconds:.0} s"))
            }
            "done" => {
                self.done = true;
                None
            }
            _ => Some(line.to_owned()),
        }
    }

    fn output(&mut self, line: &str) {
        let result = self.totals.observe(line);
        let Some(step) = self.steps.last_mut().filter(|step| step.exit.is_none()) else {
            return;
        };
        step.output.push(line.to_owned());
        // libtest ends a failed run with `failures:` and the names, four
        // spaces in, before its `test result:`. (`test NAME ... FAILED`
        // lines are no help: with --nocapture the test's output comes
        // between the name and the verdict.) A first `failures:` section,
        // of the captured output, is superseded by the second.
        if line == "failures:" {
            self.failure_names = Some(Vec::new());
        } else if result {
            step.failed_tests
                .extend(self.failure_names.take().unwrap_or_default());
        } else if let Some(names) = &mut self.failure_names {
            if let Some(name) = line
                .strip_prefix("    ")
                .filter(|name| !name.is_empty() && !name.contains(char::is_whitespace))
            {
                names.push(name.to_owned());
            }
        }
        if let Some(check) = line.strip_prefix("FAIL ") {
            step.failed_checks.push(check.trim().to_owned());
            self.in_failed_check = true;
        } else if self.in_failed_check && line.starts_with(' ') {
            // A check's detail on further lines, indented: the verifier's
            // last lines when it refused a program.
            if let Some(check) = step.failed_checks.last_mut() {
                check.push_str("\n    ");
                check.push_str(line.trim());
            }
        } else {
            self.in_failed_check = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Console {
        let mut console = Console::default();
        for (i, line) in lines.iter().enumerate() {
            console.line(line, Duration::from_secs(i as u64));
        }
        console
    }

    #[test]
    fn markers_steps_and_results_are_read_from_the_console() {
        let console = feed(&[
            "[    0.000000] Linux version 6.1.0",
            "@@crossmon-vm insmod-failed veth",
            "@@crossmon-vm kernel 6.1.0-50-cloud-amd64",
            "@@crossmon-vm begin doctor",
            "ok   kernel       6.1.0",
            "FAIL programs     from_container: verifier said no; its last lines:",
            "  invalid read from stack R10 off=-184 size=8",
            "(the whole log with RUST_LOG=debug)",
            "@@crossmon-vm end doctor 1",
            "@@crossmon-vm begin namespaces",
            "test udp_is_counted ... ok",
            "test tcp_is_counted ... FAILED",
            "",
            "failures:",
            "",
            "---- tcp_is_counted stdout ----",
            "    indented: output",
            "",
            "failures:",
            "    tcp_is_counted",
            "",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.00s",
            "@@crossmon-vm end namespaces 101",
            "@@crossmon-vm begin fuzz",
        ]);
        assert_eq!(console.kernel.as_deref(), Some("6.1.0-50-cloud-amd64"));
        assert_eq!(console.booted_after, Some(Duration::from_secs(2)));
        assert_eq!(console.insmod_failed, ["veth"]);
        assert!(!console.done);
        assert_eq!(console.totals.to_string(), "1 passed, 1 failed, 0 ignored");
        let [doctor, namespaces, fuzz] = &console.steps[..] else {
            panic!("{:?}", console.steps);
        };
        assert_eq!(doctor.exit, Some(1));
        assert_eq!(
            doctor.failed_checks,
            [
                "programs     from_container: verifier said no; its last lines:\n    \
              invalid read from stack R10 off=-184 size=8"
            ]
        );
        assert_eq!((namespaces.exit, namespaces.seconds), (Some(101), 13.0));
        assert_eq!(namespaces.failed_tests, ["tcp_is_counted"]);
        assert_eq!(namespaces.output.len(), 12);
        assert_eq!(namespaces.output[0], "test udp_is_counted ... ok");
        assert_eq!(fuzz.exit, None);
    }
}
