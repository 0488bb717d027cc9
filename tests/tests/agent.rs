//! The `crossmon` binary end to end: started before the network exists,
//! it attaches to new veths, serves exact flows over HTTP, and leaves
//! nothing behind on SIGTERM.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{tc::TcAttachType, SchedClassifier};
use integration_tests::{crossmon_bin, require_root, traffic, TestNet};
use serde_json::Value;

const OUR_PROGRAMS: [&str; 2] = ["from_container", "to_container"];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A minimal HTTP/1.0 GET: the API needs nothing more, and the test then
/// depends on no HTTP client's behaviour.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: crossmon\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).unwrap_or_else(|| panic!("GET {path} failed"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn our_programs_on(interface: &str) -> Vec<String> {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .filter_map(|direction| SchedClassifier::query_tcx(interface, direction).ok())
        .flat_map(|(_, programs)| programs)
        .filter_map(|program| program.name_as_str().map(str::to_owned))
        .filter(|name| OUR_PROGRAMS.contains(&name.as_str()))
        .collect()
}

struct Agent {
    child: Child,
    addr: SocketAddr,
}

impl Agent {
    fn start() -> Agent {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let child = Command::new(crossmon_bin())
            .args([
                "run",
                "--no-docker",
                "--poll-interval",
                "200ms",
                "--listen",
                &addr.to_string(),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting crossmon (built by `cargo xtask test`)");
        let agent = Agent { child, addr };
        wait_until("/healthz", || {
            get(addr, "/healthz").is_some_and(|(status, _)| status == 200)
        });
        agent
    }

    /// SIGTERM, then the exit status and what it logged.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
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

#[test]
fn agent_follows_veths_serves_flows_and_detaches_on_sigterm() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    // Created after the agent: it must notice the new veths by itself.
    let net = TestNet::new(3).expect("test network");
    for host in net.hosts() {
        wait_until("attachment to a new veth", || {
            our_programs_on(host.veth_name()).len() == 2
        });
    }
    let (a, b) = (net.host(0), net.host(1));
    traffic::ping(a, b.ip4().into(), 3, 56).expect("ping");

    let (src, dst) = (a.ip4().to_string(), b.ip4().to_string());
    let find = |flows: &Value| -> Option<Value> {
        flows
            .as_array()?
            .iter()
            .find(|f| {
                f["src_ip"] == src.as_str()
                    && f["dst_ip"] == dst.as_str()
                    && f["protocol"] == "icmp"
            })
            .cloned()
    };
    let mut flow = None;
    wait_until("the ping flow in /api/v1/flows", || {
        flow = find(&get_json(agent.addr, "/api/v1/flows")).filter(|f| f["packets"] == 3);
        flow.is_some()
    });
    let flow = flow.expect("flow");
    assert_eq!(flow["bytes"], 3 * 84);
    assert_eq!(
        (flow["src_port"].as_u64(), flow["dst_port"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(flow["interface"], a.veth_name());
    assert_eq!(flow["direction"], "from_container");
    assert_eq!(flow["tcp_flags"], serde_json::json!([]));
    let first =
        chrono::DateTime::parse_from_rfc3339(flow["first_seen"].as_str().expect("first_seen"))
            .expect("RFC 3339");
    let last = chrono::DateTime::parse_from_rfc3339(flow["last_seen"].as_str().expect("last_seen"))
        .expect("RFC 3339");
    assert!(last >= first && (chrono::Utc::now() - last.to_utc()).num_seconds().abs() < 60);

    let events = get_json(agent.addr, "/api/v1/events");
    let new_flow_events = events
        .as_array()
        .expect("events array")
        .iter()
        .filter(|e| {
            e["kind"] == "new_flow"
                && e["flow"]["src_ip"] == src.as_str()
                && e["flow"]["dst_ip"] == dst.as_str()
        })
        .count();
    assert_eq!(new_flow_events, 1);
    let health = get_json(agent.addr, "/healthz");
    assert!(health["attached_interfaces"].as_u64() >= Some(3));
    assert_eq!(health["kernel"]["lost_new_flow"], 0);

    // A veth that vanishes is let go; the agent keeps running.
    drop(net);
    let (status, log) = agent.stop();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("detached from"), "log:\n{log}");
    let interfaces = std::fs::read_dir("/sys/class/net").expect("interfaces");
    for interface in interfaces.flatten() {
        let name = interface.file_name().to_string_lossy().into_owned();
        assert_eq!(
            our_programs_on(&name),
            Vec::<String>::new(),
            "left on {name}"
        );
    }
}

#[test]
fn without_privileges_it_fails_with_one_line_naming_the_capability() {
    if !require_root() {
        return;
    }
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(crossmon_bin())
        .args(["run", "--no-docker", "--listen", "127.0.0.1:0"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got:\n{stderr}");
    assert!(
        lines[0].contains("missing capability") && lines[0].contains("CAP_BPF"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_refused_with_status_2() {
    let output = Command::new(crossmon_bin())
        .args(["run", "--payload-bytes", "4096"])
        .output()
        .expect("crossmon");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--payload-bytes"));
}
