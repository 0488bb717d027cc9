//! The monitors compared, each started fresh for a session of workloads
//! and stopped after it. Another crossmon configuration is one more entry
//! in [`MONITORS`].

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    net::{BenchNet, BRIDGE},
    noop::NoopClassifier,
    programs::{self, RunCounters},
};
use crate::cmd;

pub enum Kind {
    /// Nothing watches: the bare path every ratio is taken to.
    Bare,
    /// `crossmon run --no-docker` with these extra arguments.
    Crossmon(&'static [&'static str]),
    /// [`NoopClassifier`] on crossmon's hooks: the floor any classifier
    /// there pays.
    NoopClassifier,
    Tcpdump,
    Softflowd,
}

pub struct Monitor {
    pub name: &'static str,
    pub kind: Kind,
    /// What runs, for BENCHMARKS.md.
    pub description: &'static str,
}

/// The name the noop classifier's run counters go by.
pub const NOOP_PROGRAM: &str = "noop";

/// The first is the bare path, the second crossmon at default settings:
/// the targets are about those two.
pub const MONITORS: &[Monitor] = &[
    Monitor {
        name: "none",
        kind: Kind::Bare,
        description: "nothing watches the bridge (the bare path)",
    },
    Monitor {
        name: "crossmon",
        kind: Kind::Crossmon(&[]),
        description: "`crossmon run --no-docker`, default settings: every packet counted per \
                      flow, a new-flow event per flow, the first 128 payload bytes of the first \
                      2 payload packets of each flow sampled; attached to both veths",
    },
    Monitor {
        name: "crossmon counting",
        kind: Kind::Crossmon(&["--payload-bytes", "0", "--new-flow-events", "off"]),
        description: "`crossmon run --no-docker --payload-bytes 0 --new-flow-events off`: \
                      counting only, no payload sample and no new-flow event",
    },
    Monitor {
        name: "noop classifier",
        kind: Kind::NoopClassifier,
        description: "a TC program of two instructions (`return TC_ACT_UNSPEC`) on TCX ingress \
                      and egress of both veths, where crossmon attaches: the cost of the hook \
                      itself, a floor for any classifier (not a monitor)",
    },
    Monitor {
        name: "tcpdump",
        kind: Kind::Tcpdump,
        description: "`tcpdump -i xmb-br -s 128 -w /dev/null`: libpcap capture on the bridge \
                      (promiscuous, so forwarded frames are copied to it)",
    },
    Monitor {
        name: "softflowd",
        kind: Kind::Softflowd,
        description: "`softflowd -d -i xmb-br -n 127.0.0.1:PORT`: libpcap flow exporter on the \
                      bridge, NetFlow v5 to a loopback port nobody listens on",
    },
];

impl Monitor {
    pub fn start(
        &self,
        net: &BenchNet,
        crossmon: &Path,
        log_dir: &Path,
    ) -> anyhow::Result<Session> {
        let log = log_dir.join(format!("{}.log", self.name.replace(' ', "-")));
        let mut session = Session {
            name: self.name,
            child: None,
            programs: BTreeMap::new(),
            log: log.clone(),
            api: None,
            new_flow_events: false,
            noop: None,
        };
        let command = match self.kind {
            Kind::Bare => return Ok(session),
            Kind::NoopClassifier => {
                let noop = NoopClassifier::attach(net)?;
                session.programs.insert(noop.id, NOOP_PROGRAM.to_owned());
                session.noop = Some(noop);
                return Ok(session);
            }
            Kind::Crossmon(extra) => {
                let api = free_loopback_port()?;
                session.api = Some(api);
                // On unless switched off (the only value the bench passes).
                session.new_flow_events = !extra.contains(&"--new-flow-events");
                let mut command = cmd::command(crossmon);
                command
                    .args(["run", "--no-docker", "--listen"])
                    .arg(api.to_string())
                    .args(extra);
                command
            }
            Kind::Tcpdump => {
                let mut command = cmd::command("tcpdump");
                command.args(["-i", BRIDGE, "-s", "128", "-w", "/dev/null"]);
                command
            }
            Kind::Softflowd => {
                // A port bound a moment ago and released: nobody listens,
                // and the exports never leave the machine.
                let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                    .and_then(|socket| socket.local_addr())
                    .context("finding a free loopback UDP port")?
                    .port();
                let mut command = cmd::command("softflowd");
                command
                    .args(["-d", "-i", BRIDGE, "-n"])
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("-p")
                    .arg(log_dir.join("softflowd.pid"))
                    .arg("-c")
                    .arg(log_dir.join("softflowd.ctl"));
                command
            }
        };
        session.spawn(command)?;
        match session.api {
            Some(api) => session.wait_crossmon(net, api)?,
            None => session.wait_capturing()?,
        }
        Ok(session)
    }
}

/// `--listen` wants an address; the port is free when asked, and only a
/// race with another program binding it in between would make crossmon
/// fail to start (and say so).
fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .context("finding a free loopback port")
}

pub struct Session {
    pub name: &'static str,
    child: Option<Child>,
    /// The BPF programs the monitor holds (crossmon only), id to name.
    pub programs: BTreeMap<u32, String>,
    log: PathBuf,
    /// crossmon's HTTP API.
    api: Option<SocketAddr>,
    /// crossmon sends an event for each new flow.
    new_flow_events: bool,
    /// Attached while the session lives.
    noop: Option<NoopClassifier>,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Session {
    fn spawn(&mut self, mut command: Command) -> anyhow::Result<()> {
        let log =
            File::create(&self.log).with_context(|| format!("creating {}", self.log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating a log descriptor")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU time the monitor's process has used so far, all its threads,
    /// those that exited included, to a clock tick (`/proc/PID/stat`);
    /// `None` for what runs no process of its own (the bare path, the noop
    /// classifier).
    pub fn process_cpu(&self) -> anyhow::Result<Option<Duration>> {
        let Some(pid) = self.pid() else {
            return Ok(None);
        };
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
            .ok()
            .filter(|&ticks| ticks > 0)
            .context("sysconf(_SC_CLK_TCK)")?;
        let ticks = cpu_ticks(&stat).with_context(|| format!("parsing {path}"))?;
        Ok(Some(Duration::from_nanos(
            ticks.saturating_mul(1_000_000_000) / ticks_per_second,
        )))
    }

    /// The new-flow events crossmon's agent has received so far; `None`
    /// where no such events come (other monitors, or crossmon with them
    /// off).
    pub fn new_flows(&self) -> anyhow::Result<Option<f64>> {
        self.api
            .filter(|_| self.new_flow_events)
            .map(|api| sample(&metrics(api)?, r#"crossmon_events_total{kind="new_flow"}"#))
            .transpose()
            .context("counting crossmon's new-flow events")
    }

    /// crossmon's HTTP API.
    pub fn api(&self) -> anyhow::Result<SocketAddr> {
        self.api
            .with_context(|| format!("{} has no HTTP API", self.name))
    }

    /// Fails, with the end of its log, if the monitor has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        // Ctrl-C reaches the monitors too: say why they exited.
        super::interrupted()?;
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if let Some(status) = child.try_wait().context("checking a monitor")? {
            self.child = None;
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Waits for `done`, failing with the end of the log after
    /// [`START_TIMEOUT`] or if the monitor exits.
    pub fn wait_until(&mut self, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !done() {
            self.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{}: no {what} after {START_TIMEOUT:?}; the end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Ready once `/healthz` answers with at least two attached interfaces
    /// and both bench veths carry crossmon's own programs in both
    /// directions (`/healthz` counts every veth on any bridge, the tests'
    /// and Docker's included, so it alone does not tell which).
    fn wait_crossmon(&mut self, net: &BenchNet, api: SocketAddr) -> anyhow::Result<()> {
        let pid = self.pid().context("crossmon was not started")?;
        self.wait_until("/healthz with 2 attached interfaces", || {
            get(api, "/healthz")
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|health| health.get("attached_interfaces")?.as_u64())
                .is_some_and(|attached| attached >= 2)
        })?;
        self.wait_until("programs on both bench veths", || {
            let Ok(held) = programs::held_by(pid) else {
                return false;
            };
            net.hosts.iter().all(|host| {
                programs::attached_to(&host.veth).is_ok_and(|attached| {
                    attached
                        .iter()
                        .filter(|a| a.id.is_some_and(|id| held.contains_key(&id)))
                        .count()
                        >= 2
                })
            })
        })?;
        for id in programs::held_by(pid)?.into_keys() {
            self.programs.insert(id, programs::name(id)?);
        }
        Ok(())
    }

    /// libpcap sets the bridge promiscuous once its capture is open.
    fn wait_capturing(&mut self) -> anyhow::Result<()> {
        self.wait_until("capture on the bridge", BenchNet::bridge_promiscuous)?;
        // The capture socket is bound before promiscuity is asked for; the
        // ring and filter are set up around it.
        std::thread::sleep(Duration::from_millis(200));
        self.check_running()
    }

    /// The run counters of the monitor's programs, summed by name.
    pub fn program_counters(&self) -> anyhow::Result<BTreeMap<String, RunCounters>> {
        // The noop classifier is the bench's own: its descriptors are here.
        let pid = self.pid().unwrap_or_else(std::process::id);
        let mut by_name = BTreeMap::<String, RunCounters>::new();
        for (id, counters) in programs::held_by(pid)? {
            if let Some(name) = self.programs.get(&id) {
                let sum = by_name.entry(name.clone()).or_default();
                sum.run_time_ns += counters.run_time_ns;
                sum.run_cnt += counters.run_cnt;
            }
        }
        Ok(by_name)
    }

    /// Programs on the bench veths that are not this monitor's: another
    /// crossmon (a test run, say) attached to every veth it could find.
    pub fn foreign_programs(&self, net: &BenchNet) -> anyhow::Result<Vec<String>> {
        let mut foreign = Vec::new();
        for host in &net.hosts {
            for attached in programs::attached_to(&host.veth)? {
                if !attached
                    .id
                    .is_some_and(|id| self.programs.contains_key(&id))
                {
                    let id = attached
                        .id
                        .map_or_else(|| "?".to_owned(), |id| id.to_string());
                    foreign.push(format!("program {id} on {} {}", host.veth, attached.hook));
                }
            }
        }
        Ok(foreign)
    }

    /// SIGTERM, as an operator stops each of them; SIGKILL after 10 s.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.check_running()?;
        self.terminate();
        Ok(())
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill has no memory effects; the pid is our child,
            // not yet reaped, so it names no other process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// utime + stime of a `/proc/PID/stat` line, in clock ticks: fields 14
/// and 15 of proc(5), found from the command's closing parenthesis (the
/// 12th and 13th after it), since a command may hold spaces and
/// parentheses.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(log).and_then(|mut file| file.read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// crossmon's `/metrics` at `api`, as text.
pub fn metrics(api: SocketAddr) -> anyhow::Result<String> {
    get(api, "/metrics").with_context(|| format!("GET http://{api}/metrics"))
}

/// The value of `series` (`name` or `name{label="value",...}`, as the
/// agent writes it) in a `/metrics` text.
pub fn sample(metrics: &str, series: &str) -> anyhow::Result<f64> {
    metrics
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then_some(value)
        })
        .with_context(|| format!("no {series} in /metrics"))?
        .parse()
        .with_context(|| format!("parsing the value of {series}"))
}

/// A minimal HTTP/1.0 GET, for the agent's API on loopback.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: crossmon\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response.split_once("\r\n\r\n")?.1.to_owned())
}

#[cfg(test)]
mod tests {
    use super::cpu_ticks;

    #[test]
    fn cpu_ticks_are_user_and_system_time_after_the_command() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 612 0 0 0 37 5 0 0 20 0 9 0 \
                    1234 5678 90 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(42));
        assert_eq!(cpu_ticks("4242 (truncated) S 1"), None);
    }
}
