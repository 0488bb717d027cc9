//! TCP health between real containers: the handshake's round trip as the
//! veths see it, direct and behind a slow link (tbf with a queue on the
//! server's side: this kernel has no netem), the histogram moving by the
//! queue's delay, in the flow API and the flow log too; resets counted by
//! sender and receiver.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{net::UdpSocket, process::Command, time::Duration};

use integration_tests::{
    agent::{get, get_json, wait_until, Agent},
    docker::{docker_ready, DockerNetwork},
    net::in_netns,
    scratch::Scratch,
};
use serde_json::Value;

/// `crossmon_tcp_handshake_rtt_seconds` of the pair: cumulative bucket
/// counts by bound, the sum and the count.
fn rtt(agent: &Agent, client: &str, server: &str) -> (Vec<(String, f64)>, f64, f64) {
    let (_, text) = get(agent.addr, "/metrics").unwrap();
    let labels = format!("destination=\"{server}\",source=\"{client}\"");
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("crossmon_tcp_handshake_rtt_seconds") else {
            continue;
        };
        let value: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        if !rest.contains(&labels)
            && !rest.contains(&format!("source=\"{client}\",destination=\"{server}\""))
        {
            continue;
        }
        if let Some(bucket) = rest.strip_prefix("_bucket{") {
            let le = bucket
                .split("le=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            buckets.push((le.to_owned(), value));
        } else if rest.starts_with("_sum") {
            sum = value;
        } else if rest.starts_with("_count") {
            count = value;
        }
    }
    (buckets, sum, count)
}

fn bucket(buckets: &[(String, f64)], le: &str) -> f64 {
    buckets
        .iter()
        .find(|(bound, _)| bound == le)
        .map_or(-1.0, |(_, n)| *n)
}

fn resets(agent: &Agent, sender: &str, receiver: &str) -> f64 {
    let (_, text) = get(agent.addr, "/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with("crossmon_tcp_resets_total{"))
        .filter(|l| {
            l.contains(&format!("source=\"{sender}\""))
                && l.contains(&format!("destination=\"{receiver}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn handshake_round_trips_show_a_slow_links_delay_and_resets_are_counted() {
    docker_ready();
    let net = DockerNetwork::create("tcp", &[]).expect("network");
    let client = net.run("client");
    let server = net.run("server");
    let scratch = Scratch::new("tcp");
    let flow_log = scratch.dir().join("flows.jsonl");
    let agent = Agent::start(&[
        "--flow-log",
        flow_log.to_str().unwrap(),
        "--idle-timeout",
        "2s",
    ]);
    agent.wait_attached(&[&client.name, &server.name]);
    let server_ip = server.ip(&net.name).unwrap();
    client.ping(&server_ip, 1);

    client.tcp_sessions(&server, &server_ip, 7000, 5, b"fast");
    wait_until("five round trips", || {
        rtt(&agent, &client.name, &server.name).2 == 5.0
    });
    let (buckets, undelayed_sum, _) = rtt(&agent, &client.name, &server.name);
    assert_eq!(
        bucket(&buckets, "0.01"),
        5.0,
        "a bridge between two containers: under 10 ms: {buckets:?}"
    );

    // A slow link: this kernel has no netem (CONFIG_NET_SCH_NETEM is not
    // set), so the server's link is shaped by tbf at 1 Mbit/s and, before
    // each connection, 84 kB queued on it (60 datagrams of 1400 bytes to
    // the client's discard port): its SYN-ACK waits behind them, about
    // (84 kB - the 10 kB burst) / 125 kB/s = 0.59 s.
    let netns = server.netns().unwrap();
    let tc = |args: &[&str]| {
        let status = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .arg("tc")
            .args(args)
            .status()
            .expect("tc (package iproute2)");
        assert!(status.success(), "tc {args:?}");
    };
    tc(&[
        "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "10kb", "limit",
        "1mb",
    ]);
    let client_ip = client.ip(&net.name).unwrap();
    let flood = in_netns(&netns, || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
    let mut slow = Vec::new();
    for port in 7001..7006 {
        for _ in 0..60 {
            flood.send_to(&[0; 1400], (client_ip.as_str(), 9)).unwrap();
        }
        client.tcp_sessions(&server, &server_ip, port, 1, b"slow");
        // The API shows it on the client's flow (before the 2 s idle
        // timeout takes it).
        let mut shown = None;
        wait_until("the round trip in /api/v1/flows", || {
            shown = get_json(agent.addr, "/api/v1/flows")
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["dst_port"] == port && f["src"]["name"] == client.name.as_str())
                .and_then(|f| f["handshake_rtt_ms"].as_f64());
            shown.is_some()
        });
        slow.extend(shown);
        // The queue drains before the next round.
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_until("ten round trips", || {
        rtt(&agent, &client.name, &server.name).2 == 10.0
    });
    let (buckets, sum, _) = rtt(&agent, &client.name, &server.name);
    assert_eq!(
        bucket(&buckets, "0.25"),
        5.0,
        "the delayed five take over 250 ms: {buckets:?}"
    );
    assert_eq!(bucket(&buckets, "1"), 10.0, "and under 1 s: {buckets:?}");
    println!(
        "handshake round trips: 5 direct, 5 behind a 0.59 s queue; sum {sum:.4} s, {:.1} ms each on average of the delayed: {buckets:?}",
        (sum - undelayed_sum) * 1000.0 / 5.0
    );
    assert_eq!(slow.len(), 5, "one per delayed connection: {slow:?}");
    assert!(
        slow.iter().all(|ms| (250.0..1000.0).contains(ms)),
        "{slow:?}"
    );
    tc(&["qdisc", "del", "dev", "eth0", "root"]);

    client.connect_refused(&server_ip, 7100..7103);
    wait_until("three resets from the server", || {
        resets(&agent, &server.name, &client.name) == 3.0
    });

    wait_until("the delayed connections in the flow log", || {
        let text = std::fs::read_to_string(&flow_log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &Value| {
                (7001..7006).contains(&l["dst_port"].as_u64().unwrap_or(0)) && l["event"] == "end"
            })
            .collect();
        lines.len() == 5
            && lines.iter().all(|l| {
                l["tcp"]["handshake_rtt_ms"]
                    .as_f64()
                    .is_some_and(|ms| (250.0..1000.0).contains(&ms))
            })
    });
}
