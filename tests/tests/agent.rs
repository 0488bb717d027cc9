//! The `crossmon` binary end to end: started before the network exists,
//! it attaches to new veths, serves exact flows over HTTP, and leaves
//! nothing behind on SIGTERM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::process::Command;

use integration_tests::{
    agent::{get_json, our_programs_on, wait_until, Agent},
    crossmon_bin, require_root, traffic, TestNet,
};
use serde_json::Value;

#[test]
fn agent_follows_veths_serves_flows_and_detaches_on_sigterm() {
    require_root();
    let agent = Agent::start(&["--no-docker"]);
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
    require_root();
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
