//! The test harness itself, in the running kernel and without crossmon:
//! a test net comes up silent, carries exactly the traffic the helpers say
//! they sent, delivers raw frames unchanged, and leaves nothing behind.
//! And the real Prometheus server and promtool the exporter's tests use.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    panic::AssertUnwindSafe,
    process::Command,
    time::Duration,
};

use integration_tests::{
    agent::wait_until,
    frames::{self, Ends, ETH_P_IP, ETH_P_IPV6},
    mib::{snmp6_counter, snmp_counter},
    prometheus::{
        prometheus_installed, promtool_check_metrics, promtool_check_rules, promtool_test_rules,
        Prometheus, Scrape, Tls,
    },
    require_root,
    scratch::Scratch,
    traffic::{self, RawSocket},
    TestNet,
};

fn stdout(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// True when bridged IPv4 passes through iptables (`br_netfilter`, loaded
/// once dockerd has run), which validates headers and reassembles
/// fragments before the other port sees them.
fn br_netfilter_active() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|value| value.trim() == "1")
}

#[test]
fn a_net_comes_up_silent_with_unique_names_and_leaves_nothing_behind() {
    require_root();
    let net = TestNet::new(3).expect("test network");
    let other = TestNet::new(1).expect("a second test network");
    assert_ne!(net.bridge_name(), other.bridge_name());
    assert_ne!(net.gateway_v4(), other.gateway_v4());
    assert_ne!(net.host(0).netns_name(), other.host(0).netns_name());
    drop(other);

    let mut names = vec![net.bridge_name().to_owned()];
    for host in net.hosts() {
        assert!(host.veth_name().len() <= 15, "{}", host.veth_name());
        let master = std::fs::read_link(format!("/sys/class/net/{}/master", host.veth_name()))
            .expect("veth is a bridge port");
        assert!(master.ends_with(net.bridge_name()));
        names.push(host.veth_name().to_owned());
        names.push(host.netns_name().to_owned());
    }
    assert!(net.bridge_name().len() <= 15);
    assert_eq!(
        stdout(
            "cat",
            &[&format!("/sys/class/net/{}/ifindex", net.bridge_name())]
        )
        .trim(),
        net.bridge_ifindex().to_string()
    );

    // Nothing may arrive on any host by itself: no ARP, neighbour
    // discovery, router solicitation or multicast report from the bridge,
    // its ports or the other hosts. Router solicitations would come 1 s
    // after setup at the earliest.
    let sockets: Vec<RawSocket> = net
        .hosts()
        .iter()
        .map(|host| RawSocket::open(host).expect("raw socket"))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    for (host, socket) in net.hosts().iter().zip(&sockets) {
        let stray = socket.received(Duration::from_millis(10)).expect("read");
        assert!(
            stray.is_empty(),
            "{} received {} frames nobody sent: {:02x?}",
            host.netns_name(),
            stray.len(),
            stray.first()
        );
    }
    drop(sockets);

    drop(net);
    let namespaces = stdout("ip", &["netns", "list"]);
    let links = stdout("ip", &["-o", "link", "show"]);
    let rules = stdout("iptables", &["-S", "FORWARD"]) + &stdout("ip6tables", &["-S", "FORWARD"]);
    for name in &names {
        assert!(!namespaces.contains(name.as_str()), "namespace {name} left");
        assert!(!links.contains(name.as_str()), "link {name} left");
        assert!(
            !rules.contains(name.as_str()),
            "firewall rule for {name} left"
        );
    }
}

#[test]
fn pings_reach_hosts_and_the_gateway_and_are_all_the_ip_traffic_sent() {
    require_root();
    let net = TestNet::new(3).expect("test network");
    let (a, b, c) = (net.host(0), net.host(1), net.host(2));
    let echos = || snmp_counter(a, "Icmp", "OutEchos").expect("Icmp:OutEchos");
    let v6_octets = || snmp6_counter(a, "Ip6OutOctets").expect("Ip6OutOctets");
    let (echos_before, octets_before) = (echos(), v6_octets());

    traffic::ping(a, b.ip4().into(), 3, 56).expect("ping v4");
    traffic::ping(a, c.ip6().into(), 4, 100).expect("ping v6");
    traffic::ping(b, net.gateway_v4().into(), 2, 56).expect("ping gateway v4");
    traffic::ping(b, net.gateway_v6().into(), 2, 56).expect("ping gateway v6");

    assert_eq!(echos() - echos_before, 3);
    // Four echo requests of 40 + 8 + 100 bytes, and not one byte more: no
    // MLD report or neighbour solicitation went out meanwhile.
    assert_eq!(v6_octets() - octets_before, 4 * 148);
}

#[test]
fn udp_datagrams_arrive_and_match_the_senders_counters() {
    require_root();
    let net = TestNet::new(3).expect("test network");
    let (a, c) = (net.host(0), net.host(2));
    let payloads: [&[u8]; 3] = [b"one", &[b'x'; 500], &[b'y'; 1400]];
    let sent = || snmp_counter(a, "Udp", "OutDatagrams").expect("Udp:OutDatagrams");
    let sent6 = || snmp6_counter(a, "Udp6OutDatagrams").expect("Udp6OutDatagrams");
    let (v4_before, v6_before) = (sent(), sent6());

    let port4 = traffic::udp_send(a, c, c.ip4().into(), 5000, &payloads).expect("udp v4");
    let port6 = traffic::udp_send(a, c, c.ip6().into(), 5000, &payloads).expect("udp v6");
    assert!(port4 != 0 && port6 != 0);
    assert_eq!((sent() - v4_before, sent6() - v6_before), (3, 3));
}

/// `(IP length, TCP flags)` of each TCP frame in `frames` from `src_port`
/// to `dst_port`, IPv4 or IPv6 (no extension headers).
fn tcp_frames(frames: &[Vec<u8>], src_port: u16, dst_port: u16) -> Vec<(u64, u8)> {
    let be16 = |bytes: &[u8], at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    frames
        .iter()
        .filter_map(|frame| {
            let (ip_len, tcp_at) = match be16(frame, 12) {
                ETH_P_IP if frame[23] == 6 => (
                    u64::from(be16(frame, 16)),
                    14 + usize::from(frame[14] & 0xf) * 4,
                ),
                ETH_P_IPV6 if frame[20] == 6 => (40 + u64::from(be16(frame, 18)), 54),
                _ => return None,
            };
            let ports = (be16(frame, tcp_at), be16(frame, tcp_at + 2));
            (ports == (src_port, dst_port)).then(|| (ip_len, frame[tcp_at + 13]))
        })
        .collect()
}

#[test]
fn tcp_exchange_segments_and_bytes_match_what_crossed_the_wire() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let (client, server) = (net.host(0), net.host(1));
    // Below one MSS each way: every segment crosses the veth as one frame
    // (a larger response may cross as one GSO super-packet).
    let request = vec![b'q'; 300];
    let response = vec![b'r'; 1200];
    let cases = [
        (IpAddr::from(server.ip4()), 20, 7001),
        (server.ip6().into(), 40, 7002),
    ];
    for (server_ip, ip_header, port) in cases {
        // Each host's socket sees what arrives at it: what the other sent.
        let at_client = RawSocket::open(client).expect("raw socket on the client");
        let at_server = RawSocket::open(server).expect("raw socket on the server");
        let exchange = traffic::tcp_exchange(client, server, server_ip, port, &request, &response)
            .expect("tcp exchange");
        let (sent_by_client, sent_by_server) = (
            tcp_frames(
                &at_server
                    .received(Duration::from_millis(100))
                    .expect("read"),
                exchange.client.port,
                port,
            ),
            tcp_frames(
                &at_client
                    .received(Duration::from_millis(100))
                    .expect("read"),
                port,
                exchange.client.port,
            ),
        );
        for (side, seen) in [
            (&exchange.client, &sent_by_client),
            (&exchange.server, &sent_by_server),
        ] {
            assert_eq!(side.retransmitted, 0, "{server_ip}: {exchange:?}");
            assert_eq!(side.opens, 1, "{server_ip}: {exchange:?}");
            assert_eq!(side.segments, seen.len() as u64, "{server_ip}: {seen:?}");
            assert_eq!(
                side.ip_bytes(ip_header),
                seen.iter().map(|(len, _)| len).sum::<u64>(),
                "{server_ip}: {seen:?}"
            );
            // The SYN or SYN-ACK alone carries the 4-byte MSS option.
            let syn = seen.iter().filter(|(_, flags)| flags & 0x02 != 0);
            assert_eq!(syn.collect::<Vec<_>>(), [&(ip_header + 24, seen[0].1)]);
        }
    }
}

#[test]
fn edge_case_frames_cross_the_bridge_byte_for_byte() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let (a, b) = (net.host(0), net.host(1));
    let ends = Ends::between(a, b, 1000, 2000);
    // Valid at the IP layer: every bridge forwards them untouched.
    let valid = [
        ends.ipv4_udp(b"reference"),
        ends.ipv4_options_udp(b"options"),
        ends.ipv4_tcp_cut_short(),
        ends.ipv6_udp(b"v6"),
        ends.ipv6_extension_chain_udp(b"chain"),
        frames::arp_reply(
            a.mac(),
            a.mac(),
            net.gateway_v4().octets(),
            b.mac(),
            b.ip4().octets(),
        ),
    ];
    // Broken IPv4, and a fragment that cannot be reassembled: a bridge under
    // br_netfilter drops them before the other port.
    let broken = [
        ends.ipv4_bad_ihl(b"bad ihl"),
        ends.ipv4_cut_in_header(),
        ends.runt_ipv4(),
        ends.ipv4_later_fragment(&[7; 16]),
    ];
    let all: Vec<Vec<u8>> = valid.iter().chain(&broken).cloned().collect();
    let received = traffic::capture_frames(b, Duration::from_millis(300), || {
        traffic::send_frames(a, &all)
    })
    .expect("capture");

    for frame in &valid {
        assert!(received.contains(frame), "lost or changed: {frame:02x?}");
    }
    for frame in &broken {
        assert_eq!(
            received.contains(frame),
            !br_netfilter_active(),
            "br_netfilter active: {}; frame {frame:02x?}",
            br_netfilter_active()
        );
    }
    assert_eq!(
        received.len(),
        all.iter().filter(|f| received.contains(f)).count(),
        "only the frames sent arrive"
    );
}

#[test]
fn a_vlan_tag_arrives_as_metadata_and_a_hand_built_chain_reaches_a_socket() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let (a, b) = (net.host(0), net.host(1));
    let ends = Ends::between(a, b, 1000, 2000);
    let tagged = ends.vlan_ipv4_udp(7, b"tagged");
    let received = traffic::capture_frames(b, Duration::from_millis(300), || {
        traffic::send_frames(a, std::slice::from_ref(&tagged))
    })
    .expect("capture");
    // The receiving stack moves the 802.1Q tag out of the frame into the
    // packet's metadata before AF_PACKET sees it.
    assert_eq!(received, [ends.ipv4_udp(b"tagged")]);

    // The extension chain is well-formed down to the UDP checksum: the
    // kernel hands its payload to a socket.
    let sink = b
        .run(|| Ok(UdpSocket::bind(SocketAddr::from(([0u16; 8], 2000)))?))
        .expect("bind in b");
    sink.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    traffic::send_frames(a, &[ends.ipv6_extension_chain_udp(b"chain")]).expect("send");
    let mut buffer = [0u8; 64];
    let (len, from) = sink.recv_from(&mut buffer).expect("datagram");
    assert_eq!(&buffer[..len], b"chain");
    assert_eq!(from, SocketAddr::from((a.ip6(), 1000)));
}

const DEMO: &str = "# HELP demo_total A demo.\n# TYPE demo_total counter\ndemo_total{a=\"b\"} 42\n";

/// An HTTP server on a loopback port, answering each request with
/// `respond(request head)`; it lives as long as the test process.
fn serve(respond: impl Fn(&str) -> (u16, &'static str) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
            let (status, body) = respond(&head);
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status} X\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn prometheus_scrapes_a_target_evaluates_rules_and_answers_queries() {
    prometheus_installed();
    let scratch = Scratch::new("harness-rules");
    let rules = scratch.write(
        "rules.yml",
        "groups:\n  - name: demo\n    rules:\n\
         \x20     - record: demo:doubled\n        expr: demo_total * 2\n\
         \x20     - alert: DemoHigh\n        expr: demo_total > 40\n        labels: {severity: page}\n",
    );
    promtool_check_rules(&rules).expect("promtool check rules");
    let unit_test = |doubled: u32| {
        format!(
            "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n\
             \x20   input_series:\n      - series: 'demo_total{{a=\"b\"}}'\n        values: '42x3'\n\
             \x20   promql_expr_test:\n      - expr: demo:doubled\n        eval_time: 1m\n\
             \x20       exp_samples:\n          - labels: 'demo:doubled{{a=\"b\"}}'\n\
             \x20           value: {doubled}\n\
             \x20   alert_rule_test:\n      - eval_time: 1m\n        alertname: DemoHigh\n\
             \x20       exp_alerts:\n          - exp_labels: {{severity: page, a: b}}\n"
        )
    };
    promtool_test_rules(&scratch.write("right.yml", &unit_test(84))).expect("promtool test rules");
    let wrong = promtool_test_rules(&scratch.write("wrong.yml", &unit_test(85)));
    assert!(
        wrong.as_ref().is_err_and(|e| e.contains("got:")),
        "{wrong:?}"
    );
    let broken = scratch.write(
        "broken.yml",
        "groups:\n  - name: demo\n    rules:\n      - record: x\n        expr: demo_total *\n",
    );
    let broken = promtool_check_rules(&broken);
    assert!(
        broken.as_ref().is_err_and(|e| e.contains("parse error")),
        "{broken:?}"
    );

    let target = serve(|_| (200, DEMO));
    let prometheus = Prometheus::start(&Scrape {
        job: "demo".to_owned(),
        rule_files: vec![rules],
        ..Scrape::new(target)
    });
    prometheus.wait_for_target_up();
    prometheus.wait_for_value("demo_total", 42.0);
    let samples = prometheus.query("demo_total");
    let labels = &samples[0].labels;
    assert_eq!(
        (labels["a"].as_str(), labels["job"].as_str()),
        ("b", "demo"),
        "{samples:?}"
    );
    assert_eq!(labels["instance"], target.to_string());
    prometheus.wait_for_value(r#"demo:doubled{a="b"}"#, 84.0);
    prometheus.wait_for_value(r#"ALERTS{alertname="DemoHigh",alertstate="firing"}"#, 1.0);

    let scalar = prometheus.query("scalar(demo_total) / 4 + 0.5");
    assert_eq!(
        scalar
            .iter()
            .map(|s| (s.labels.len(), s.value))
            .collect::<Vec<_>>(),
        [(0, 11.0)]
    );
    let refused = std::panic::catch_unwind(AssertUnwindSafe(|| prometheus.query("sum(demo_total")));
    let message = refused.expect_err("a bad query panics");
    let message = message.downcast_ref::<String>().expect("panic message");
    assert!(message.contains("parse error"), "{message}");
}

#[test]
fn prometheus_scrapes_with_basic_auth_and_speaks_https_when_told() {
    prometheus_installed();
    // `prometheus:secret`
    let target = serve(|head| {
        if head.contains("Basic cHJvbWV0aGV1czpzZWNyZXQ=") {
            (200, DEMO)
        } else {
            (401, "who are you?")
        }
    });
    let with = |password: &str| Scrape {
        basic_auth: Some(("prometheus".to_owned(), password.to_owned())),
        ..Scrape::new(target)
    };
    let allowed = Prometheus::start(&with("secret"));
    let refused = Prometheus::start(&with("guess"));
    let scratch = Scratch::new("harness-tls");
    let certificate = rcgen::generate_simple_self_signed(["localhost".to_owned()])
        .expect("self-signed certificate");
    let tls = Prometheus::start(&Scrape {
        https: Some(Tls {
            ca_file: scratch.write("ca.pem", &certificate.cert.pem()),
            server_name: Some("localhost".to_owned()),
        }),
        ..with("secret")
    });

    allowed.wait_for_target_up();
    allowed.wait_for_value("demo_total", 42.0);
    for (prometheus, error) in [(&refused, "401"), (&tls, "HTTPS")] {
        wait_until("a scrape", || prometheus.target_health().0 != "unknown");
        let (health, last_error) = prometheus.target_health();
        assert_eq!(health, "down", "{last_error}");
        assert!(last_error.contains(error), "{last_error}");
    }
}

#[test]
fn promtool_check_metrics_accepts_clean_text_and_names_each_problem() {
    prometheus_installed();
    promtool_check_metrics(DEMO).expect("a clean exposition");
    for (text, problem) in [
        (
            "# HELP demo A demo.\n# TYPE demo counter\ndemo 1\n",
            "\"_total\" suffix",
        ),
        ("# TYPE demo gauge\ndemo 1\n", "no help text"),
        ("demo_total{a=\"b\" 42\n", "parsing error"),
    ] {
        let verdict = promtool_check_metrics(text);
        assert!(
            verdict.as_ref().is_err_and(|e| e.contains(problem)),
            "{text}: {verdict:?}"
        );
    }
}

/// The proxy that proves crossmon only reads from the engine must see a
/// write when one is sent: here the docker CLI asks to pause a container
/// that does not exist (the engine refuses; nothing changes).
#[test]
fn the_docker_proxy_records_every_request_writes_included() {
    integration_tests::docker::docker_ready();
    let scratch = Scratch::new("docker-proxy");
    let proxy = integration_tests::docker_proxy::DockerProxy::start(
        &scratch.path("docker.sock"),
        std::path::Path::new("/var/run/docker.sock"),
    )
    .expect("proxy");
    let host = proxy.url();
    let version = Command::new("docker")
        .args(["-H", &host, "version", "--format", "{{.Server.Version}}"])
        .output()
        .expect("docker version");
    assert!(version.status.success(), "answers pass through the proxy");
    let paused = Command::new("docker")
        .args(["-H", &host, "pause", "crossmon-no-such-container"])
        .output()
        .expect("docker pause");
    assert!(!paused.status.success());
    let requests = proxy.requests();
    assert!(
        requests.iter().any(|r| r.method == "POST"
            && r.path
                .ends_with("/containers/crossmon-no-such-container/pause")),
        "{requests:#?}"
    );
    assert!(requests
        .iter()
        .any(|r| r.method == "GET" && r.path.ends_with("/version")));
}
