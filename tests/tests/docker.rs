//! crossmon against a real Docker engine with real containers: names on
//! both ends of every flow, exact counts, and the mapping kept right while
//! containers come, go, move and lie about their address.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{get_json, our_programs_on, wait_until, Agent},
    docker::{docker, docker_ready, Container, DockerNetwork, IMAGE},
    docker_proxy::{DockerProxy, Request},
    frames::{self, ETH_P_IP},
    scratch::Scratch,
    traffic::RawSocket,
};
use serde_json::Value;

fn attached(c: &Value) -> bool {
    c["attached"] == true
}

#[test]
fn flows_between_named_containers_on_two_networks_and_docker0() {
    docker_ready();
    let front = DockerNetwork::create("front", &[]).expect("network");
    let back = DockerNetwork::create("back", &[]).expect("network");
    let compose = [
        "-l",
        "com.docker.compose.project=shop",
        "-l",
        "com.docker.compose.service=web",
    ];
    let web = Container::run(
        "web",
        &[&["--network", front.name.as_str()][..], &compose].concat(),
    )
    .expect("web");
    let api = Container::run("api", &["--network", &front.name]).expect("api");
    docker(&["network", "connect", &back.name, &api.name]).expect("connect api to back");
    let db = Container::run("db", &["--network", &back.name]).expect("db");
    let legacy = Container::run("legacy", &[]).expect("container on docker0");
    let on_host =
        Container::run("hostnet", &["--network", "host"]).expect("host-network container");

    let agent = Agent::start(&[]);
    for name in [&web.name, &api.name, &db.name, &legacy.name] {
        agent.container(name, attached);
    }
    let api_json = agent.container(&api.name, |c| {
        c["networks"].as_array().is_some_and(|n| n.len() == 2)
    });
    assert!(api_json["networks"]
        .as_array()
        .expect("networks")
        .iter()
        .all(|n| n["attached"] == true));

    web.ping(&api.ip(&front.name).expect("ip"), 3);
    api.ping(&db.ip(&back.name).expect("ip"), 4);
    let gateway = docker(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.bridge.Gateway}}",
        &legacy.name,
    ])
    .expect("docker0 gateway");
    let gateway = String::from_utf8_lossy(&gateway.stdout).trim().to_owned();
    legacy.ping(&gateway, 2);

    let request = agent.named_flow(&web.name, &api.name, "icmp", 3);
    assert_eq!(request["bytes"], 3 * 84);
    assert_eq!(request["src"]["kind"], "container");
    assert_eq!(request["src"]["image"], IMAGE);
    assert_eq!(request["src"]["network"], front.name.as_str());
    assert_eq!(request["src"]["compose_project"], "shop");
    assert_eq!(request["src"]["compose_service"], "web");
    assert_eq!(request["src"]["id"].as_str().map(str::len), Some(12));
    assert_eq!(request["dst"]["network"], front.name.as_str());
    assert_eq!(
        request["dst"]["ip"],
        api.ip(&front.name).expect("ip").as_str()
    );
    assert_eq!(
        agent.named_flow(&api.name, &web.name, "icmp", 3)["bytes"],
        3 * 84
    );

    let there = agent.named_flow(&api.name, &db.name, "icmp", 4);
    assert_eq!(
        (
            there["src"]["network"].as_str(),
            there["dst"]["network"].as_str()
        ),
        (Some(back.name.as_str()), Some(back.name.as_str()))
    );
    assert_eq!(
        agent.named_flow(&db.name, &api.name, "icmp", 4)["bytes"],
        4 * 84
    );

    let to_host = agent.named_flow(&legacy.name, "gateway", "icmp", 2);
    assert_eq!(
        (
            to_host["dst"]["kind"].as_str(),
            to_host["dst"]["network"].as_str()
        ),
        (Some("gateway"), Some("bridge"))
    );
    let from_host = agent.named_flow("gateway", &legacy.name, "icmp", 2);
    assert_eq!(from_host["direction"], "to_container");

    let host_mode = agent.container(&on_host.name, |_| true);
    assert_eq!(
        (
            host_mode["network_mode"].as_str(),
            host_mode["attached"].as_bool()
        ),
        (Some("host"), Some(false))
    );

    let health = get_json(agent.addr, "/healthz");
    assert_eq!(health["docker_up"], true);
    assert!(health["docker_engine"]["api_version"].is_string());
}

/// The engine's own socket, where the harness's dockerd listens.
const ENGINE: &str = "/var/run/docker.sock";

/// What crossmon may ask the engine: reads only, of these endpoints.
fn assert_read_only(requests: &[Request], expected: &[&str]) {
    let endpoint = |path: &str| -> String {
        let path = path.split('?').next().unwrap_or_default();
        // `/v1.41/containers/ID/json` -> `/containers/{id}/json`.
        let path = match path.strip_prefix("/v1.") {
            Some(rest) => rest.find('/').map_or("", |at| &rest[at..]),
            None => path,
        };
        match path.strip_prefix("/containers/") {
            Some(rest) if rest != "json" => format!(
                "/containers/{{id}}/{}",
                rest.split_once('/').map_or("", |(_, tail)| tail)
            ),
            _ => path.to_owned(),
        }
    };
    const READS: &[&str] = &[
        "/_ping",
        "/version",
        "/info",
        "/networks",
        "/containers/json",
        "/containers/{id}/json",
        "/events",
    ];
    for request in requests {
        assert!(
            matches!(request.method.as_str(), "GET" | "HEAD")
                && READS.contains(&endpoint(&request.path).as_str()),
            "crossmon sent the engine {request:?}; all requests: {requests:#?}"
        );
    }
    for wanted in expected {
        assert!(
            requests.iter().any(|r| endpoint(&r.path) == *wanted),
            "no {wanted} among {requests:#?}"
        );
    }
}

#[test]
fn the_mapping_follows_restart_rename_connect_and_a_burst_of_short_lived_containers_reading_only() {
    docker_ready();
    let net = DockerNetwork::create("life", &[]).expect("network");
    let other = DockerNetwork::create("other", &[]).expect("network");
    let mut a = net.run("a");
    let b = net.run("b");
    // Every request crossmon sends the engine passes through the proxy.
    let scratch = Scratch::new("docker-proxy");
    let proxy = DockerProxy::start(&scratch.path("docker.sock"), Path::new(ENGINE)).expect("proxy");
    let agent = Agent::start(&["--docker-host", &proxy.url()]);
    let before = agent.container(&b.name, attached)["networks"][0]["ifindex"].clone();

    let started = Instant::now();
    docker(&["restart", "-t", "0", &b.name]).expect("restart");
    let after = agent.container(&b.name, |c| {
        attached(c) && c["networks"][0]["ifindex"] != before
    });
    eprintln!("restart re-attached in {:?}", started.elapsed());
    assert_ne!(after["networks"][0]["interface"], Value::Null);

    a.rename("renamed").expect("rename");
    agent.container(&a.name, attached);

    docker(&["network", "connect", &other.name, &b.name]).expect("connect");
    let connected = agent.container(&b.name, |c| {
        attached(c) && c["networks"].as_array().is_some_and(|n| n.len() == 2)
    });
    let added = connected["networks"]
        .as_array()
        .and_then(|n| {
            n.iter()
                .find(|e| e["network"] == other.name.as_str())
                .cloned()
        })
        .expect("the new endpoint");
    docker(&["network", "disconnect", &other.name, &b.name]).expect("disconnect");
    agent.container(&b.name, |c| {
        c["networks"].as_array().is_some_and(|n| n.len() == 1)
    });
    let removed_veth = added["interface"].as_str().expect("interface").to_owned();
    wait_until("the disconnected veth to be gone", || {
        our_programs_on(&removed_veth).is_empty()
    });

    // A burst of short-lived containers.
    for _ in 0..30 {
        docker(&[
            "run",
            "-d",
            "--rm",
            "--network",
            &net.name,
            IMAGE,
            "sleep",
            "1",
        ])
        .expect("short-lived container");
    }
    wait_until("the burst to end", || {
        let ps =
            docker(&["ps", "-q", "--filter", &format!("network={}", net.name)]).expect("docker ps");
        String::from_utf8_lossy(&ps.stdout).lines().count() == 2
    });
    // Every attached interface is an endpoint of a live container, and
    // every live endpoint is attached.
    wait_until("attachments to match the live endpoints", || {
        let containers = get_json(agent.addr, "/api/v1/containers");
        let endpoints: usize = containers
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|c| {
                        c["networks"]
                            .as_array()
                            .map_or(0, |n| n.iter().filter(|e| e["attached"] == true).count())
                    })
                    .sum()
            })
            .unwrap_or(0);
        let all_attached = containers
            .as_array()
            .is_some_and(|all| all.iter().all(attached));
        let health = get_json(agent.addr, "/healthz");
        all_attached && health["attached_interfaces"].as_u64() == Some(endpoints as u64)
    });

    // Counts are right for the renamed container after all that.
    a.ping(&b.ip(&net.name).expect("ip"), 3);
    assert_eq!(
        agent.named_flow(&a.name, &b.name, "icmp", 3)["bytes"],
        3 * 84
    );

    // Through all of it, crossmon only read from the engine.
    assert_read_only(
        &proxy.requests(),
        &[
            "/networks",
            "/containers/json",
            "/containers/{id}/json",
            "/events",
        ],
    );
}

#[test]
fn a_spoofed_source_address_is_attributed_to_the_sending_container() {
    docker_ready();
    let net = DockerNetwork::create("spoof", &[]).expect("network");
    let attacker = net.run("attacker");
    let victim = net.run("victim");
    let framed = net.run("framed");
    let agent = Agent::start(&[]);
    for name in [&attacker.name, &victim.name, &framed.name] {
        agent.container(name, attached);
    }
    let ip = |c: &Container| -> [u8; 4] {
        c.ip(&net.name)
            .expect("ip")
            .parse::<std::net::Ipv4Addr>()
            .expect("IPv4")
            .octets()
    };
    // UDP from the attacker's veth, claiming to come from `framed`.
    let datagram = frames::udp(4444, 5555, b"not me");
    let packet = frames::ipv4(ip(&framed), ip(&victim), 17, &[], 0, &datagram);
    let frame = frames::ethernet(
        victim.mac(&net.name).expect("mac"),
        attacker.mac(&net.name).expect("mac"),
        ETH_P_IP,
        &packet,
    );
    let socket =
        RawSocket::open_in(&attacker.netns().expect("netns")).expect("raw socket in the attacker");
    for _ in 0..3 {
        socket.send(&frame).expect("send");
    }
    std::thread::sleep(Duration::from_millis(300));
    let spoofed = agent.named_flow(&attacker.name, &victim.name, "udp", 3);
    assert_eq!(
        spoofed["src_ip"],
        framed.ip(&net.name).expect("ip").as_str()
    );
    assert_eq!(
        spoofed["src"]["ip"],
        framed.ip(&net.name).expect("ip").as_str()
    );
    assert_eq!(spoofed["dst_port"], 5555);

    // The lie is an alert, naming the liar and whom it posed as.
    let alert = agent.wait_for_alert("ip_spoof", |_| true);
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["source"]["name"], attacker.name.as_str());
    assert_eq!(alert["destination"]["name"], victim.name.as_str());
    assert_eq!(
        alert["evidence"]["claimed_ip"],
        framed.ip(&net.name).expect("ip").as_str()
    );
    assert_eq!(
        alert["evidence"]["assigned_ips"][0],
        attacker.ip(&net.name).expect("ip").as_str()
    );
    assert!(alert["summary"]
        .as_str()
        .is_some_and(|s| s.contains(framed.name.as_str())));

    // A gratuitous ARP reply claiming the victim's address for the
    // attacker's MAC: the classic poisoning frame.
    let attacker_mac = attacker.mac(&net.name).expect("mac");
    let poison = frames::arp_reply(
        attacker_mac,
        attacker_mac,
        ip(&victim),
        framed.mac(&net.name).expect("mac"),
        ip(&framed),
    );
    for _ in 0..3 {
        socket.send(&poison).expect("send");
    }
    let alert = agent.wait_for_alert("arp_spoof", |_| true);
    assert_eq!(alert["source"]["name"], attacker.name.as_str());
    assert_eq!(alert["destination"]["name"], victim.name.as_str());
    assert_eq!(
        alert["evidence"]["sender_ip"],
        victim.ip(&net.name).expect("ip").as_str()
    );
    // Three frames, one alert: the same kind and pair within the cooldown.
    let alerts = get_json(agent.addr, "/api/v1/alerts");
    let kinds: Vec<&str> = alerts
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["arp_spoof", "ip_spoof"], "newest first, once each");
}

#[test]
fn a_container_reaching_for_the_docker_api_on_the_host_is_alerted() {
    docker_ready();
    let net = DockerNetwork::create("hostapi", &[]).expect("network");
    let curious = net.run("curious");
    let agent = Agent::start(&[]);
    agent.container(&curious.name, attached);
    let gateway = docker(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        &net.name,
    ])
    .expect("gateway");
    let gateway = String::from_utf8_lossy(&gateway.stdout).trim().to_owned();
    // The gateway of the network this test made: the host's address on
    // its bridge. Refused, dropped or (if something listens) accepted:
    // the attempt is the evidence.
    let target: std::net::SocketAddr = format!("{gateway}:2375").parse().expect("address");
    integration_tests::net::in_netns(&curious.netns().expect("netns"), || {
        let _ = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1));
        Ok(())
    })
    .expect("connection attempt");
    let alert = agent.wait_for_alert("host_access", |_| true);
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["source"]["name"], curious.name.as_str());
    assert_eq!(alert["destination"]["kind"], "gateway");
    assert_eq!(alert["evidence"]["destination_port"], 2375);
    assert_eq!(alert["evidence"]["destination_ip"], gateway.as_str());
}

#[test]
fn doctor_passes_here_and_fails_on_a_dead_docker_socket() {
    docker_ready();
    let scratch = Scratch::new("docker-proxy");
    let proxy = DockerProxy::start(&scratch.path("docker.sock"), Path::new(ENGINE)).expect("proxy");
    let healthy = std::process::Command::new(integration_tests::crossmon_bin())
        .args(["doctor", "--docker-host", &proxy.url()])
        .output()
        .expect("crossmon doctor");
    let text = String::from_utf8_lossy(&healthy.stdout);
    assert!(healthy.status.success(), "{text}");
    for check in [
        "kernel",
        "capabilities",
        "attach",
        "programs",
        "docker",
        "containers",
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(check)),
            "no {check} line:\n{text}"
        );
    }
    // Its "read-only access works" is proven by reading, never by writing.
    assert_read_only(&proxy.requests(), &["/version", "/containers/json"]);
    let dead = std::process::Command::new(integration_tests::crossmon_bin())
        .args(["doctor", "--docker-host", "unix:///nonexistent/docker.sock"])
        .output()
        .expect("crossmon doctor");
    let text = String::from_utf8_lossy(&dead.stdout);
    assert!(!dead.status.success());
    assert!(text.lines().any(|l| l.starts_with("FAIL docker")), "{text}");
}
