//! `--flow-log`: a JSON line per connection once it ends, joining both
//! directions with both ends named.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::time::Duration;

use integration_tests::{
    agent::{wait_until, Agent},
    docker::{docker_ready, DockerNetwork},
    scratch::Scratch,
};
use serde_json::Value;

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[test]
fn connections_that_end_are_logged_once_with_both_directions() {
    docker_ready();
    let net = DockerNetwork::create("flowlog", &[]).expect("network");
    let client = net.run("client");
    let server = net.run("server");
    let scratch = Scratch::new("flowlog");
    let path = scratch.path("flows.jsonl");
    let agent = Agent::start(&[
        "--flow-log",
        path.to_str().expect("UTF-8"),
        "--idle-timeout",
        "2s",
    ]);
    agent.wait_attached(&[&client.name, &server.name]);
    let server_ip = server.ip(&net.name).expect("ip");
    client.ping(&server_ip, 3);
    client.tcp_sessions(
        &server,
        &server_ip,
        8080,
        1,
        b"GET / HTTP/1.1\r\nHost: s\r\n\r\n",
    );

    let mut logged = Vec::new();
    wait_until("both connections logged as ended", || {
        logged = lines(&path)
            .into_iter()
            .filter(|l| l["src"]["name"] == client.name.as_str())
            .filter(|l| l["protocol"] == "icmp" || l["protocol"] == "tcp")
            .collect();
        logged.len() >= 2
    });
    std::thread::sleep(Duration::from_secs(1));
    let logged: Vec<Value> = lines(&path)
        .into_iter()
        .filter(|l| {
            l["src"]["name"] == client.name.as_str() || l["dst"]["name"] == client.name.as_str()
        })
        // The container's own IPv6 housekeeping (router solicitations,
        // MLD) is logged too; the test looks at its two connections.
        .filter(|l| l["protocol"] == "icmp" || l["protocol"] == "tcp")
        .collect();
    assert_eq!(logged.len(), 2, "one line per connection: {logged:#?}");
    let icmp = logged
        .iter()
        .find(|l| l["protocol"] == "icmp")
        .expect("ping line");
    assert_eq!(icmp["event"], "end");
    assert_eq!(icmp["dst"]["name"], server.name.as_str());
    assert_eq!(
        (icmp["packets"].as_u64(), icmp["reply_packets"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        (icmp["bytes"].as_u64(), icmp["reply_bytes"].as_u64()),
        (Some(3 * 84), Some(3 * 84))
    );
    assert_eq!(icmp["outcome"], "answered");
    let tcp = logged
        .iter()
        .find(|l| l["protocol"] == "tcp")
        .expect("tcp line");
    assert_eq!(tcp["dst_port"], 8080);
    assert_eq!(tcp["dst_ip"], server_ip.as_str());
    assert_eq!(tcp["outcome"], "established");
    assert_eq!(tcp["payload"]["protocol"], "http");
    assert_eq!(tcp["payload"]["encrypted"], false);
    assert_eq!(tcp["tcp"]["syn"], 1);
    assert_eq!(tcp["tcp"]["syn_ack"], 1);
    assert!(tcp["reply_packets"].as_u64().is_some_and(|n| n >= 2));
    assert!(tcp["tcp"]["reply_flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == "FIN")));
}
