//! The `crossmon` binary as a process under test, and its HTTP API.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{tc::TcAttachType, SchedClassifier};
use serde_json::Value;

use crate::{crossmon_bin, scratch::Scratch};

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

pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn our_programs_on(interface: &str) -> Vec<String> {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .filter_map(|direction| SchedClassifier::query_tcx(interface, direction).ok())
        .flat_map(|(_, programs)| programs)
        .filter_map(|program| program.name_as_str().map(str::to_owned))
        .filter(|name| OUR_PROGRAMS.contains(&name.as_str()))
        .collect()
}

pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    /// The agent's own `--state-dir`, unless the test chose one.
    _state: Option<Scratch>,
}

impl Agent {
    /// `crossmon run --poll-interval 200ms --listen <free port> EXTRA`
    /// (with a fresh `--state-dir` unless EXTRA names one), once `/healthz`
    /// answers.
    pub fn start(extra: &[&str]) -> Agent {
        Self::start_with(extra, |addr| {
            get(addr, "/healthz").is_some_and(|(status, _)| status == 200)
        })
    }

    /// Like [`Agent::start`], once `ready(address)` holds: for an API behind
    /// TLS or basic auth, which the plain `get` cannot reach.
    pub fn start_with(extra: &[&str], mut ready: impl FnMut(SocketAddr) -> bool) -> Agent {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let state = (!extra.contains(&"--state-dir")).then(|| Scratch::new("state"));
        let mut command = Command::new(crossmon_bin());
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
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting crossmon (built by `cargo xtask test`)");
        let agent = Agent {
            child,
            addr,
            _state: state,
        };
        wait_until("the agent's API", || ready(addr));
        agent
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

    /// SIGTERM, then the exit status and what it logged.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "crossmon did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut log);
        }
        (status, log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
