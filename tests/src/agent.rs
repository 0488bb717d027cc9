//! The `crossmon` binary as a process under test, and its HTTP API.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{crossmon_bin, scratch::Scratch, tc_hooks};

pub const OUR_PROGRAMS: [&str; 2] = ["from_container", "to_container"];

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A minimal HTTP/1.0 GET: the API needs nothing more, and the test then
/// depends on no HTTP client's behaviour.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: crossmon\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).unwrap_or_else(|| panic!("GET {path} failed"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_within(what, Duration::from_secs(20), done);
}

/// Like [`wait_until`], for things allowed to take `limit`.
pub fn wait_within(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names of crossmon's programs on `interface`, TCX links and clsact
/// filters alike.
pub fn our_programs_on(interface: &str) -> Vec<String> {
    tc_hooks::programs_on(interface)
        .into_iter()
        .map(|program| program.name)
        .filter(|name| OUR_PROGRAMS.contains(&name.as_str()))
        .collect()
}

/// An agent's HTTP API: the agent this harness started, or one running
/// elsewhere (a Swarm service's).
pub struct AgentApi {
    pub addr: SocketAddr,
}

impl AgentApi {
    /// The agent listening on `addr`, once its `/healthz` answers.
    pub fn at(addr: SocketAddr) -> AgentApi {
        wait_until(&format!("the agent's API at {addr}"), || {
            get(addr, "/healthz").is_some_and(|(status, _)| status == 200)
        });
        AgentApi { addr }
    }

    /// Waits until `/api/v1/containers` shows every one of `names` attached.
    pub fn wait_attached(&self, names: &[&str]) {
        wait_until("containers attached", || {
            let list = get_json(self.addr, "/api/v1/containers");
            names.iter().all(|name| {
                list.as_array().is_some_and(|all| {
                    all.iter()
                        .any(|c| c["name"] == *name && c["attached"] == true)
                })
            })
        });
    }

    /// The container named `name` in `/api/v1/containers`, once `ready`
    /// holds for it.
    pub fn container(&self, name: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let mut found = Value::Null;
        wait_until(&format!("{name} in /api/v1/containers"), || {
            found = get_json(self.addr, "/api/v1/containers")
                .as_array()
                .and_then(|all| all.iter().find(|c| c["name"] == name).cloned())
                .unwrap_or(Value::Null);
            !found.is_null() && ready(&found)
        });
        found
    }

    /// The flow `src -> dst` (container or end names) of `protocol`, once
    /// it has counted exactly `packets` packets.
    pub fn named_flow(&self, src: &str, dst: &str, protocol: &str, packets: u64) -> Value {
        self.flow_where(
            &format!("{src} -> {dst} ({protocol})"),
            |f| f["src"]["name"] == src && f["dst"]["name"] == dst && f["protocol"] == protocol,
            packets,
        )
    }

    /// The first flow `select` picks (`what` says which, when it times
    /// out), once it has counted exactly `packets` packets.
    pub fn flow_where(&self, what: &str, select: impl Fn(&Value) -> bool, packets: u64) -> Value {
        let mut found = Value::Null;
        wait_until(
            &format!("{what} with {packets} packets at {}", self.addr),
            || {
                found = get_json(self.addr, "/api/v1/flows")
                    .as_array()
                    .and_then(|all| all.iter().find(|f| select(f)).cloned())
                    .unwrap_or(Value::Null);
                found["packets"] == packets
            },
        );
        found
    }

    /// Every alert in `/api/v1/alerts`, newest first.
    pub fn alerts(&self) -> Vec<Value> {
        match get_json(self.addr, "/api/v1/alerts") {
            Value::Array(all) => all,
            other => panic!("/api/v1/alerts is not a list: {other}"),
        }
    }

    /// The newest alert of `kind` whose `select` holds, once there is one.
    pub fn wait_for_alert(&self, kind: &str, select: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(&format!("a {kind} alert"), || {
            found = self
                .alerts()
                .into_iter()
                .find(|a| a["kind"] == kind && select(a));
            found.is_some()
        });
        found.unwrap_or_default()
    }
}

/// A `crossmon run` this harness started; its API through `Deref`.
pub struct Agent {
    child: Child,
    api: AgentApi,
    /// Everything it wrote to stderr so far, read as it comes: a full pipe
    /// would block the agent's logging.
    log: Arc<Mutex<String>>,
    log_reader: Option<JoinHandle<()>>,
    /// The agent's own `--state-dir`, unless the test chose one.
    _state: Option<Scratch>,
}

impl Agent {
    /// `crossmon run --poll-interval 200ms --listen <free port> EXTRA`
    /// (with a fresh `--state-dir` unless EXTRA names one), once `/healthz`
    /// answers.
    pub fn start(extra: &[&str]) -> Agent {
        Self::start_under(&[], extra)
    }

    /// Like [`Agent::start`], run by `wrapper` (`setpriv ... `, which execs
    /// it: the pid stays the agent's).
    pub fn start_under(wrapper: &[&str], extra: &[&str]) -> Agent {
        Self::start_at(wrapper, None, extra)
    }

    /// Like [`Agent::start_under`], listening on `listen` (an address of
    /// the namespace `wrapper` runs it in) instead of a free loopback port.
    pub fn start_at(wrapper: &[&str], listen: Option<SocketAddr>, extra: &[&str]) -> Agent {
        Self::launch(wrapper, listen, extra, |addr| {
            get(addr, "/healthz").is_some_and(|(status, _)| status == 200)
        })
    }

    /// Like [`Agent::start`], once `ready(address)` holds: for an API behind
    /// TLS or basic auth, which the plain `get` cannot reach.
    pub fn start_with(extra: &[&str], ready: impl FnMut(SocketAddr) -> bool) -> Agent {
        Self::launch(&[], None, extra, ready)
    }

    fn launch(
        wrapper: &[&str],
        listen: Option<SocketAddr>,
        extra: &[&str],
        mut ready: impl FnMut(SocketAddr) -> bool,
    ) -> Agent {
        let addr: SocketAddr = listen.unwrap_or_else(|| {
            format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("address")
        });
        let state = (!extra.contains(&"--state-dir")).then(|| Scratch::new("state"));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(crossmon_bin());
                command
            }
            None => Command::new(crossmon_bin()),
        };
        command
            .args([
                "run",
                "--poll-interval",
                "200ms",
                "--listen",
                &addr.to_string(),
            ])
            .args(extra);
        if let Some(state) = &state {
            command.arg("--state-dir").arg(state.dir());
        }
        // Standard output carries the alert log (`--alert-log -`); tests
        // read alerts from the API.
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting crossmon (built by `cargo xtask test`)");
        let log = Arc::new(Mutex::new(String::new()));
        let log_reader = child.stderr.take().map(|stderr| {
            let log = log.clone();
            std::thread::spawn(move || collect_lines(stderr, &log))
        });
        let agent = Agent {
            child,
            api: AgentApi { addr },
            log,
            log_reader,
            _state: state,
        };
        wait_until("the agent's API", || ready(addr));
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Ids of the BPF programs it holds (its two classifiers).
    pub fn programs(&self) -> BTreeSet<u32> {
        tc_hooks::held_by(self.pid())
    }

    /// SIGKILL, as a crash or the OOM killer would end it: nothing of its
    /// own runs after. Returns what it logged.
    pub fn kill(mut self) -> String {
        self.child.kill().expect("SIGKILL to crossmon");
        self.child.wait().expect("wait");
        self.finish_log()
    }

    /// SIGTERM, then the exit status and what it logged.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = self.terminate().expect("crossmon did not exit on SIGTERM");
        (status, self.finish_log())
    }

    /// SIGTERM, and the exit status once it exited within 10 s.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The whole log of an agent that exited.
    fn finish_log(&mut self) -> String {
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        self.log()
    }
}

fn collect_lines(stderr: impl Read, log: &Mutex<String>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.push_str(&line);
        log.push('\n');
    }
}

impl std::ops::Deref for Agent {
    type Target = AgentApi;

    fn deref(&self) -> &AgentApi {
        &self.api
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first: an agent in clsact mode killed outright would
        // leave its filters on every container's veth.
        if self.terminate().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
