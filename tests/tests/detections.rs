//! Detections against real containers: each attack raises its alert with
//! the right ends and evidence, benign traffic next to it raises none.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{net::SocketAddr, time::Duration};

use integration_tests::{
    agent::{get_json, Agent},
    docker::{docker_ready, Bypass, Container, DockerNetwork},
    frames::{self, ETH_P_IP},
    net::in_netns,
    scratch::Scratch,
    traffic::{self, RawSocket},
};
use serde_json::Value;

/// `crossmon run --config FILE` with `toml` as the file.
fn agent_with_config(scratch: &Scratch, toml: &str, extra: &[&str]) -> Agent {
    let config = scratch.write("crossmon.toml", toml);
    let config = config.to_str().expect("UTF-8 path");
    Agent::start(&[&["--config", config][..], extra].concat())
}

fn alerts_naming(agent: &Agent, name: &str) -> Vec<Value> {
    agent
        .alerts()
        .into_iter()
        .filter(|a| a["source"]["name"] == name || a["destination"]["name"] == name)
        .collect()
}

fn ipv4(container: &Container, network: &str) -> [u8; 4] {
    container
        .ip(network)
        .expect("ip")
        .parse::<std::net::Ipv4Addr>()
        .expect("IPv4")
        .octets()
}

#[test]
fn scans_and_sweeps_are_alerted_and_a_busy_client_is_not() {
    docker_ready();
    let net = DockerNetwork::create("scan", &[]).expect("network");
    let target = net.run("target");
    let scanner = net.run("scanner");
    let client = net.run("client");
    let server = net.run("server");
    let others: Vec<Container> = (0..3).map(|_| net.run("other")).collect();
    let scratch = Scratch::new("detect");
    // Four distinct refused destinations make a sweep here.
    let agent = agent_with_config(&scratch, "[host_sweep]\nthreshold = 4\n", &[]);
    let mut names = vec![
        target.name.as_str(),
        scanner.name.as_str(),
        client.name.as_str(),
        server.name.as_str(),
    ];
    names.extend(others.iter().map(|c| c.name.as_str()));
    agent.wait_attached(&names);

    // Benign: 30 connections to the one port a server serves.
    let server_ip = server.ip(&net.name).expect("ip");
    client.tcp_sessions(&server, &server_ip, 8080, 30, b"");
    // The scan: 30 closed ports of the target.
    let target_ip = target.ip(&net.name).expect("ip");
    scanner.connect_refused(&target_ip, 30_000..30_030);
    let scan = agent.wait_for_alert("port_scan", |_| true);
    assert_eq!(scan["source"]["name"], scanner.name.as_str());
    assert_eq!(scan["destination"]["name"], target.name.as_str());
    assert_eq!(
        scan["evidence"]["outcomes"]["refused"], 20,
        "alerted at the threshold"
    );
    // The 20 ports tried when it crossed (the outcomes of one poll come
    // in no particular order), lowest first.
    let sample: Vec<u64> = scan["evidence"]["ports_sample"]
        .as_array()
        .expect("sample")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(sample.len(), 20);
    assert!(sample.windows(2).all(|w| w[0] < w[1]));
    assert!(sample.iter().all(|p| (30_000..30_030).contains(p)));
    // The sweep: three more addresses, one port each.
    for other in &others {
        scanner.connect_refused(&other.ip(&net.name).expect("ip"), 80..81);
    }
    let sweep = agent.wait_for_alert("host_sweep", |_| true);
    assert_eq!(sweep["source"]["name"], scanner.name.as_str());
    assert_eq!(sweep["evidence"]["distinct_destinations"], 4);
    assert!(sweep.get("destination").is_none());

    // One alert per kind and pair (the cooldown), none about the client.
    std::thread::sleep(Duration::from_secs(1));
    let kinds: Vec<String> = alerts_naming(&agent, &scanner.name)
        .iter()
        .map(|a| a["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["host_sweep", "port_scan"]);
    assert_eq!(alerts_naming(&agent, &client.name), Vec::<Value>::new());
}

#[test]
fn a_syn_flood_is_alerted_naming_the_flooder() {
    docker_ready();
    let net = DockerNetwork::create("flood", &[]).expect("network");
    let victim = net.run("victim");
    let flooder = net.run("flooder");
    let scratch = Scratch::new("detect");
    let agent = agent_with_config(&scratch, "[syn_flood]\nmin_syns = 300\n", &[]);
    agent.wait_attached(&[&victim.name, &flooder.name]);
    // 400 SYNs from 400 source ports, never followed by an ACK.
    let socket = RawSocket::open_in(&flooder.netns().expect("netns")).expect("raw socket");
    let (src, dst) = (ipv4(&flooder, &net.name), ipv4(&victim, &net.name));
    let (src_mac, dst_mac) = (
        flooder.mac(&net.name).expect("mac"),
        victim.mac(&net.name).expect("mac"),
    );
    for port in 40_000..40_400u16 {
        let segment = frames::tcp(port, 80, monitor_common::tcp_flag::SYN, &[]);
        let packet = frames::ipv4(src, dst, 6, &[], 0, &segment);
        socket
            .send(&frames::ethernet(dst_mac, src_mac, ETH_P_IP, &packet))
            .expect("send");
    }
    let flood = agent.wait_for_alert("syn_flood", |_| true);
    assert_eq!(flood["source"]["name"], flooder.name.as_str());
    assert_eq!(flood["destination"]["name"], victim.name.as_str());
    assert_eq!(flood["evidence"]["destination_port"], 80);
    assert_eq!(flood["evidence"]["completed"], 0);
    assert!(flood["evidence"]["syns"].as_u64().is_some_and(|n| n >= 300));
}

/// A client that reconnects from one port and closes each connection by
/// RST sends as many SYNs as a flooder, and completes every handshake:
/// the kernel counts them, where FINs, which it never sends, would not.
#[test]
fn a_client_reconnecting_from_one_port_is_no_syn_flood() {
    docker_ready();
    let net = DockerNetwork::create("reconnect", &[]).expect("network");
    let server = net.run("server");
    let client = net.run("client");
    let scratch = Scratch::new("detect");
    let agent = agent_with_config(&scratch, "[syn_flood]\nmin_syns = 300\n", &[]);
    agent.wait_attached(&[&server.name, &client.name]);
    let listener = in_netns(&server.netns().expect("netns"), || {
        Ok(std::net::TcpListener::bind(("0.0.0.0", 80))?)
    })
    .expect("listener");
    let target = SocketAddr::from((ipv4(&server, &net.name), 80));
    let connections = 400;
    in_netns(&client.netns().expect("netns"), || {
        for _ in 0..connections {
            let stream = traffic::connect(target, Some(41_000))?;
            let (accepted, _) = listener.accept()?;
            traffic::abort(&stream)?;
            drop(stream);
            drop(accepted);
        }
        Ok(())
    })
    .expect("connections from one port");
    // Every SYN counted in one flow, its connections each counted, and a
    // poll more for the detectors, which see the same read.
    let flows = || get_json(agent.addr, "/api/v1/flows");
    let mut syns = 0;
    integration_tests::agent::wait_until("the client's SYNs counted", || {
        syns = flows()
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["src_port"] == 41_000 && f["dst_port"] == 80)
            .map(|f| f["syn"].as_u64().unwrap_or(0))
            .sum();
        syns >= connections
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        syns, connections,
        "one SYN a connection, none retransmitted"
    );
    let floods: Vec<Value> = agent
        .alerts()
        .into_iter()
        .filter(|a| a["kind"] == "syn_flood")
        .collect();
    assert_eq!(floods, Vec::<Value>::new());
}

#[test]
fn new_connections_are_learnt_then_alerted_and_survive_restarts_and_recreation() {
    docker_ready();
    let net = DockerNetwork::create("edges", &[]).expect("network");
    let service = |name: &str| {
        vec![
            "--network".to_owned(),
            net.name.clone(),
            "-l".to_owned(),
            "com.docker.compose.project=shop".to_owned(),
            "-l".to_owned(),
            format!("com.docker.compose.service={name}"),
        ]
    };
    let run = |what: &str| {
        let options = service(what);
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        Container::run(what, &options).expect("container")
    };
    let web = run("web");
    let mut api = run("api");
    let state = Scratch::new("state");
    let state_dir = state.dir().to_str().expect("UTF-8").to_owned();
    let scratch = Scratch::new("detect");
    let config = "[new_connection]\nlearning_period = \"3s\"\n";
    let agent = agent_with_config(&scratch, config, &["--state-dir", &state_dir]);
    agent.wait_attached(&[&web.name, &api.name]);
    // Learnt: web -> api:8080 while learning.
    web.tcp_sessions(&api, &api.ip(&net.name).expect("ip"), 8080, 1, b"");
    std::thread::sleep(Duration::from_secs(4));
    drop(agent);

    // Re-created with (possibly) another address, and a restarted agent:
    // the known edge stays quiet, a new port is news.
    drop(api);
    api = run("api");
    let agent = agent_with_config(&scratch, config, &["--state-dir", &state_dir]);
    agent.wait_attached(&[&web.name, &api.name]);
    let api_ip = api.ip(&net.name).expect("ip");
    web.tcp_sessions(&api, &api_ip, 8080, 1, b"");
    web.tcp_sessions(&api, &api_ip, 9090, 1, b"");
    let alert = agent.wait_for_alert("new_connection", |_| true);
    assert_eq!(alert["evidence"]["source_service"], "shop/web");
    assert_eq!(alert["evidence"]["destination_service"], "shop/api");
    assert_eq!(alert["evidence"]["destination_port"], 9090);
    std::thread::sleep(Duration::from_secs(1));
    let news: Vec<Value> = agent
        .alerts()
        .into_iter()
        .filter(|a| a["kind"] == "new_connection")
        .collect();
    assert_eq!(news.len(), 1, "only the new port: {news:#?}");
}

#[test]
fn a_spike_on_one_edge_is_alerted_above_the_floor() {
    docker_ready();
    let net = DockerNetwork::create("spike", &[]).expect("network");
    let inside = net.run("inside");
    let drop_box = net.run("dropbox");
    let scratch = Scratch::new("detect");
    let config = "[traffic_spike]\nwindow = \"1s\"\nwarmup_windows = 3\nfactor = 10.0\nmin_bytes = 1000000\n";
    let agent = agent_with_config(&scratch, config, &[]);
    agent.wait_attached(&[&inside.name, &drop_box.name]);
    let target: SocketAddr = format!("{}:9999", drop_box.ip(&net.name).expect("ip"))
        .parse()
        .expect("address");
    let send = |datagrams: usize| {
        in_netns(&inside.netns().expect("netns"), || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for _ in 0..datagrams {
                socket.send_to(&[0u8; 1000], target)?;
            }
            Ok(())
        })
        .expect("udp");
    };
    // A few quiet seconds (about 10 kB each), then 3 MB in one.
    for _ in 0..5 {
        send(10);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(alerts_naming(&agent, &inside.name).is_empty());
    send(3000);
    let spike = agent.wait_for_alert("traffic_spike", |_| true);
    assert_eq!(spike["source"]["name"], inside.name.as_str());
    assert_eq!(spike["destination"]["name"], drop_box.name.as_str());
    // 3000 datagrams of 1028 IP bytes; the burst may straddle two windows,
    // and the one that alerted holds more than the floor.
    assert!(spike["evidence"]["bytes"]
        .as_u64()
        .is_some_and(|b| (1_000_000..=3_084_000).contains(&b)));
}

#[test]
fn traffic_between_isolated_networks_that_gets_through_is_alerted() {
    docker_ready();
    let one = DockerNetwork::create("isol-one", &[]).expect("network");
    let two = DockerNetwork::create("isol-two", &[]).expect("network");
    let a = Container::run("a", &["--network", &one.name]).expect("a");
    let b = Container::run("b", &["--network", &two.name]).expect("b");
    let agent = Agent::start(&[]);
    agent.wait_attached(&[&a.name, &b.name]);
    let (a_ip, b_ip) = (a.ip(&one.name).expect("ip"), b.ip(&two.name).expect("ip"));
    // Docker's isolation holds: the attempt goes unanswered, no alert.
    let blocked = a.exec(&["ping", "-q", "-c", "1", "-W", "1", &b_ip]);
    assert!(blocked.is_err(), "Docker isolates the two networks");
    // A rule in DOCKER-USER (evaluated before Docker's own) opens the way
    // between exactly these two containers: isolation bypassed.
    let _bypass = Bypass::between(&a_ip, &b_ip);
    a.ping(&b_ip, 2);
    let alert = agent.wait_for_alert("isolation_violation", |_| true);
    assert_eq!(alert["source"]["name"], a.name.as_str());
    assert_eq!(alert["destination"]["name"], b.name.as_str());
    assert_eq!(alert["evidence"]["outcome"], "answered");
    assert_eq!(alert["evidence"]["source_networks"][0], one.name.as_str());
    assert_eq!(
        alert["evidence"]["destination_networks"][0],
        two.name.as_str()
    );
}

/// The first bytes of a TLS 1.2 ClientHello record (enough to be told).
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x31, 0x01, 0x00, 0x00, 0x2d, 0x03, 0x03, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x00, 0x00, 0x02, 0x13, 0x01,
    0x01, 0x00, 0x00, 0x00,
];

#[test]
fn cleartext_where_tls_is_required_is_alerted_and_every_protocol_counted() {
    docker_ready();
    let net = DockerNetwork::create("tls", &[]).expect("network");
    let on_net = ["--network", net.name.as_str()];
    let client = net.run("client");
    let web = net.run("web");
    let cache = Container::run(
        "cache",
        &[&on_net[..], &["-l", "crossmon.tls=required"]].concat(),
    )
    .expect("cache");
    let agent = Agent::start(&[]);
    agent.wait_attached(&[&client.name, &web.name, &cache.name]);
    let (web_ip, cache_ip) = (
        web.ip(&net.name).expect("ip"),
        cache.ip(&net.name).expect("ip"),
    );
    let http = b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n";
    // Cleartext HTTP on a TLS port: alerted.
    client.tcp_sessions(&web, &web_ip, 8443, 1, http);
    // TLS on a TLS port, and HTTP where nobody asked for TLS: counted only.
    client.tcp_sessions(&web, &web_ip, 443, 1, CLIENT_HELLO);
    client.tcp_sessions(&web, &web_ip, 8080, 1, http);
    // Redis to a container that declares TLS required: alerted.
    client.tcp_sessions(&cache, &cache_ip, 6379, 1, b"*1\r\n$4\r\nPING\r\n");

    let on_tls_port =
        agent.wait_for_alert("cleartext", |a| a["evidence"]["destination_port"] == 8443);
    assert_eq!(on_tls_port["source"]["name"], client.name.as_str());
    assert_eq!(on_tls_port["destination"]["name"], web.name.as_str());
    assert_eq!(on_tls_port["evidence"]["protocol"], "http");
    // By default the alert quotes the verb only.
    assert_eq!(
        on_tls_port["evidence"]["excerpt"],
        format!("GET [{} bytes redacted]", http.len() - 3)
    );
    let labelled = agent.wait_for_alert("cleartext", |a| a["evidence"]["destination_port"] == 6379);
    assert_eq!(labelled["evidence"]["protocol"], "redis");
    assert!(labelled["evidence"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("crossmon.tls=required")));
    assert_eq!(
        labelled["evidence"]["excerpt"], "[14 bytes redacted]",
        "RESP opens with no verb"
    );
    // The payload leaves through no door: alerts, metrics, events, flows.
    for (door, text) in [
        (
            "alerts",
            serde_json::to_string(&agent.alerts()).expect("json"),
        ),
        ("metrics", integration_tests::exposition::scrape(agent.addr)),
        ("events", get_json(agent.addr, "/api/v1/events").to_string()),
        ("flows", get_json(agent.addr, "/api/v1/flows").to_string()),
    ] {
        for secret in ["/admin", "PING", "Host: web"] {
            assert!(!text.contains(secret), "{secret:?} left through {door}");
        }
    }

    let (c, w) = (client.name.as_str(), web.name.as_str());
    let counted = |protocol: &str, encrypted: &str| {
        integration_tests::exposition::sum(
            &integration_tests::exposition::parse(&integration_tests::exposition::scrape(
                agent.addr,
            )),
            "crossmon_connection_protocols_total",
            &[
                ("source", c),
                ("destination", w),
                ("protocol", protocol),
                ("encrypted", encrypted),
            ],
        )
    };
    integration_tests::agent::wait_until("protocols counted", || {
        counted("http", "false") == 2.0 && counted("tls", "true") == 1.0
    });
    std::thread::sleep(Duration::from_secs(3));
    let cleartext: Vec<Value> = agent
        .alerts()
        .into_iter()
        .filter(|a| a["kind"] == "cleartext")
        .collect();
    assert_eq!(
        cleartext.len(),
        2,
        "not the TLS one, not the plain port: {cleartext:#?}"
    );
}

#[test]
fn an_operator_cap_lets_alerts_quote_that_many_payload_bytes() {
    docker_ready();
    let net = DockerNetwork::create("quote", &[]).expect("network");
    let (client, web) = (net.run("client"), net.run("web"));
    let scratch = Scratch::new("detect");
    let agent = agent_with_config(&scratch, "[cleartext]\nalert_payload_bytes = 12\n", &[]);
    agent.wait_attached(&[&client.name, &web.name]);
    let http = b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n";
    client.tcp_sessions(&web, &web.ip(&net.name).expect("ip"), 8443, 1, http);
    let alert = agent.wait_for_alert("cleartext", |a| a["evidence"]["destination_port"] == 8443);
    assert_eq!(
        alert["evidence"]["excerpt"],
        format!("GET /admin H [{} more bytes]", http.len() - 12)
    );
}
