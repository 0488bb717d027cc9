//! `/metrics` of the real binary over test networks: exact counts, the
//! exposition promtool accepts, bounded series, counts that survive a
//! full flow map, and closed connections ended early with their exact
//! counts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    io::Read as _,
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use integration_tests::{
    agent::{get_json, our_programs_on, wait_until, wait_within, Agent},
    exposition::{parse, samples_when, scrape, select, sum},
    prometheus::{prometheus_installed, promtool_check_metrics},
    require_root,
    scratch::Scratch,
    traffic::{self, Close, TcpExchange},
    TestNet,
};
use serde_json::Value;

fn attached(net: &TestNet) {
    for host in net.hosts() {
        wait_until("attachment", || {
            our_programs_on(host.veth_name()).len() == 2
        });
    }
}

/// A SYN to a closed port: the kernel answers RST.
fn refused(from: &integration_tests::Host, to: IpAddr, port: u16) {
    let result = from
        .run(|| {
            Ok(TcpStream::connect_timeout(
                &SocketAddr::new(to, port),
                Duration::from_secs(2),
            ))
        })
        .expect("connect from the namespace");
    let err = result.expect_err("nothing listens there");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn metrics_count_packets_and_connection_results_exactly() {
    require_root();
    prometheus_installed();
    let net = TestNet::new(2).expect("test network");
    let agent = Agent::start(&["--no-docker"]);
    attached(&net);
    let (a, b) = (net.host(0), net.host(1));

    traffic::ping(a, b.ip4().into(), 5, 56).expect("ping");
    let exchange = traffic::tcp_exchange(a, b, b.ip4().into(), 8080, b"hello", b"world")
        .expect("tcp exchange");
    refused(a, b.ip4().into(), 8081);

    // Without Docker both ends are `unknown`; the port label tells the
    // served port from everything else.
    let samples = samples_when(agent.addr, "connection results", |s| {
        sum(s, "crossmon_connections_total", &[]) == 2.0
            && sum(s, "crossmon_flow_packets_total", &[("protocol", "tcp")])
                == (exchange.client.segments + exchange.server.segments + 2) as f64
    });
    let icmp = [("protocol", "icmp"), ("destination_port", "none")];
    assert_eq!(sum(&samples, "crossmon_flow_packets_total", &icmp), 10.0);
    assert_eq!(
        sum(&samples, "crossmon_flow_bytes_total", &icmp),
        10.0 * 84.0
    );
    let to_server = [("protocol", "tcp"), ("destination_port", "8080")];
    assert_eq!(
        sum(&samples, "crossmon_flow_packets_total", &to_server),
        exchange.client.segments as f64,
        "the client's segments, all to the served port"
    );
    // The refused SYN and its RST: to an unserved port, and back.
    let unserved = [("protocol", "tcp"), ("destination_port", "ephemeral")];
    assert_eq!(
        sum(&samples, "crossmon_flow_packets_total", &unserved),
        (exchange.server.segments + 2) as f64
    );
    for (result, port) in [("established", "8080"), ("refused", "ephemeral")] {
        assert_eq!(
            sum(
                &samples,
                "crossmon_connections_total",
                &[("result", result), ("destination_port", port)]
            ),
            1.0,
            "{result}"
        );
    }
    assert_eq!(sum(&samples, "crossmon_attached_interfaces", &[]), 2.0);
    assert_eq!(
        select(&samples, "crossmon_docker_up", &[]).count(),
        0,
        "no engine to be up or down with --no-docker"
    );
    assert_eq!(
        sum(&samples, "crossmon_flow_map_capacity", &[]),
        f64::from(monitor_common::DEFAULT_FLOW_CAPACITY)
    );
    assert_eq!(select(&samples, "crossmon_build_info", &[]).count(), 1);
    promtool_check_metrics(&scrape(agent.addr)).expect("promtool check metrics");
}

/// A client back on the ports of its closed connection while crossmon
/// still keeps that connection's flow (the default linger, 5 s): one
/// flow, and every connection an attempt of its own.
#[test]
fn connections_back_on_the_same_ports_are_each_counted() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let agent = Agent::start(&["--no-docker"]);
    attached(&net);
    let (a, b) = (net.host(0), net.host(1));
    // Ports other tests do not use (see the closed connections' test).
    let (port, from_port) = (5820, 45820);
    let connections = 4;
    let mut segments = 0;
    for _ in 0..connections {
        // Aborted by RST, the client's port is free again at once.
        let exchange = traffic::tcp_connection(
            a,
            b,
            (b.ip4().into(), port),
            (b"hello", b"world"),
            Close::Reset,
            Some(from_port),
        )
        .expect("connection from the same port");
        assert_eq!(exchange.client.port, from_port);
        assert_eq!(exchange.client.retransmitted, 0, "no SYN retransmitted");
        segments += exchange.client.segments;
    }
    let to_server = [("protocol", "tcp"), ("destination_port", "5820")];
    let samples = samples_when(agent.addr, "every segment to the server", |s| {
        sum(s, "crossmon_flow_packets_total", &to_server) == segments as f64
    });
    // Each connection's handshake completed, so it is counted at once, by
    // the same poll as its packets.
    assert_eq!(
        sum(&samples, "crossmon_connections_total", &to_server),
        f64::from(connections),
        "{:?}",
        select(&samples, "crossmon_connections_total", &to_server).collect::<Vec<_>>()
    );
    let established = [to_server[0], to_server[1], ("result", "established")];
    assert_eq!(
        sum(&samples, "crossmon_connections_total", &established),
        f64::from(connections)
    );
}

#[test]
fn series_beyond_the_cap_fold_into_other_and_are_counted() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let agent = Agent::start(&["--no-docker", "--max-series", "1"]);
    attached(&net);
    let (a, b) = (net.host(0), net.host(1));
    // Two label combinations: ICMP, then UDP to an unserved port.
    traffic::ping(a, b.ip4().into(), 1, 56).expect("ping");
    samples_when(agent.addr, "the ICMP series", |s| {
        sum(s, "crossmon_flow_packets_total", &[("protocol", "icmp")]) == 2.0
    });
    traffic::udp_send(a, b, b.ip4().into(), 9999, &[b"x", b"y", b"z"]).expect("udp");
    let samples = samples_when(agent.addr, "the overflow series", |s| {
        sum(s, "crossmon_flow_packets_total", &[("protocol", "other")]) == 3.0
    });
    let other = select(
        &samples,
        "crossmon_flow_packets_total",
        &[("protocol", "other")],
    )
    .next()
    .expect("overflow series");
    assert!(other.labels.values().all(|v| v == "other"), "{other:?}");
    assert_eq!(
        sum(
            &samples,
            "crossmon_series_dropped_total",
            &[("metric", "flow")]
        ),
        1.0
    );
    assert_eq!(
        select(&samples, "crossmon_flow_packets_total", &[]).count(),
        2
    );
    assert_eq!(
        sum(&samples, "crossmon_flow_packets_total", &[]),
        5.0,
        "every packet is still counted"
    );
}

#[test]
fn counts_survive_a_full_flow_map() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    // Room for 8 flows; 20 make the kernel evict.
    let agent = Agent::start(&["--no-docker", "--flow-capacity", "8"]);
    attached(&net);
    let (a, b) = (net.host(0), net.host(1));
    for i in 0..20u16 {
        traffic::udp_send(a, b, b.ip4().into(), 7000 + i, &[b"one", b"two"]).expect("udp");
        // One poll (200 ms) between flows, as flows come and go in life:
        // whatever a poll read stays counted after an eviction.
        std::thread::sleep(Duration::from_millis(300));
    }
    let samples = samples_when(agent.addr, "all 40 packets", |s| {
        sum(s, "crossmon_flow_packets_total", &[]) == 40.0
    });
    assert_eq!(sum(&samples, "crossmon_flow_bytes_total", &[]), 40.0 * 31.0);
    assert!(sum(&samples, "crossmon_flows_evicted_total", &[]) > 0.0);
    assert!(sum(&samples, "crossmon_flow_map_entries", &[]) <= 8.0);
}

/// A connection the client closed its side of (its FIN, acknowledged)
/// while the server keeps its own open: the two sockets, held open.
fn half_closed(
    from: &integration_tests::Host,
    to: &integration_tests::Host,
    port: u16,
) -> (TcpStream, TcpStream) {
    let address = SocketAddr::new(to.ip4().into(), port);
    let listener = to
        .run(|| Ok(TcpListener::bind(address)?))
        .expect("listening in the namespace");
    let client = from
        .run(|| {
            Ok(TcpStream::connect_timeout(
                &address,
                Duration::from_secs(2),
            )?)
        })
        .expect("connect from the namespace");
    let (mut server, _) = listener.accept().expect("accept");
    client.shutdown(Shutdown::Write).expect("the client's FIN");
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(
        server.read(&mut [0; 1]).expect("read"),
        0,
        "the FIN arrived"
    );
    (client, server)
}

/// The flow log's end line of the connection to `port`, once written.
fn ended(path: &std::path::Path, port: u16) -> Value {
    let mut found = Value::Null;
    wait_until(
        &format!("the end of the connection to {port} logged"),
        || {
            found = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).expect("one JSON object per line"))
                .find(|line| line["dst_port"] == port && line["event"] == "end")
                .unwrap_or(Value::Null);
            !found.is_null()
        },
    );
    found
}

#[test]
fn closed_connections_end_after_the_linger_with_exact_counts_and_half_closed_ones_stay() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let scratch = Scratch::new("closed");
    let log = scratch.path("flows.jsonl");
    // The agent polls every 200 ms (the harness's setting).
    let (linger, poll) = (Duration::from_secs(1), Duration::from_millis(200));
    let agent = Agent::start(&[
        "--no-docker",
        "--close-linger",
        "1s",
        "--flow-log",
        log.to_str().expect("UTF-8"),
    ]);
    attached(&net);
    let (a, b) = (net.host(0), net.host(1));
    // Ports other tests do not use: the agent counts every veth of the
    // host, other tests' too, and without Docker names their series and
    // ours differ only by port.
    let fin = traffic::tcp_exchange(a, b, b.ip4().into(), 5817, b"hello", b"world")
        .expect("connection closed by FIN both ways");
    let rst = traffic::tcp_connection(
        a,
        b,
        (b.ip4().into(), 5818),
        (b"hello", b"world"),
        Close::Reset,
        None,
    )
    .expect("connection aborted by RST");
    for exchange in [&fin, &rst] {
        assert_eq!(
            (exchange.client.retransmitted, exchange.server.retransmitted),
            (0, 0),
            "the byte counts below assume no retransmission"
        );
    }
    // Opened after the exchanges, lest its segments count among theirs.
    let _held = half_closed(a, b, 5819);
    // Each exchange returned once its namespaces had been quiet for 300
    // ms: their last packet is at least that old. Both connections leave
    // the table (the API) within the linger and a poll, and a second more
    // for a loaded machine's scheduling.
    let port_of = |flow: &Value, port: u16| flow["dst_port"] == port || flow["src_port"] == port;
    let listed = |port: u16| {
        get_json(agent.addr, "/api/v1/flows")
            .as_array()
            .expect("a list of flows")
            .iter()
            .filter(|f| port_of(f, port))
            .count()
    };
    wait_within(
        "the closed connections gone",
        linger + poll + Duration::from_secs(1),
        || listed(5817) + listed(5818) == 0,
    );
    // Gone from the kernel map too: every poll reads every entry of the
    // map into the table, so an entry left there would be back in it. And
    // the half-closed connection, quiet as long as the linger and two
    // polls, is still there.
    std::thread::sleep(linger + 2 * poll);
    assert_eq!((listed(5817), listed(5818)), (0, 0), "back from the map");
    assert_eq!(listed(5819), 2, "a FIN one way only is no close");

    // Ended with their final counts: in the flow log and in the metrics.
    let exact = |line: &Value, exchange: &TcpExchange| {
        assert_eq!(
            [
                &line["packets"],
                &line["bytes"],
                &line["reply_packets"],
                &line["reply_bytes"]
            ],
            [
                exchange.client.segments,
                exchange.client.ip_bytes(20),
                exchange.server.segments,
                exchange.server.ip_bytes(20)
            ],
            "{line:#}"
        );
    };
    exact(&ended(&log, 5817), &fin);
    exact(&ended(&log, 5818), &rst);
    let samples = parse(&scrape(agent.addr));
    for (port, exchange) in [("5817", &fin), ("5818", &rst)] {
        let to_server = [("protocol", "tcp"), ("destination_port", port)];
        assert_eq!(
            (
                sum(&samples, "crossmon_flow_packets_total", &to_server),
                sum(&samples, "crossmon_flow_bytes_total", &to_server)
            ),
            (
                exchange.client.segments as f64,
                exchange.client.ip_bytes(20) as f64
            ),
            "to port {port}"
        );
    }
}

/// `kernel.bpf_stats_enabled` on for the life of the guard, as it was after.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> BpfStats {
        let before = std::fs::read_to_string(BPF_STATS).expect("reading bpf_stats_enabled");
        std::fs::write(BPF_STATS, "1").expect("enabling bpf_stats");
        BpfStats(before)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.0.trim());
    }
}

#[test]
fn program_run_time_is_exported_when_the_kernel_keeps_it() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let agent = Agent::start(&["--no-docker"]);
    attached(&net);
    let samples = parse(&scrape(agent.addr));
    assert_eq!(
        select(&samples, "crossmon_program_runs_total", &[]).count(),
        0,
        "not exported while the kernel does not count"
    );
    let _stats = BpfStats::enable();
    let (a, b) = (net.host(0), net.host(1));
    traffic::ping(a, b.ip4().into(), 10, 56).expect("ping");
    // Each echo request leaves a through one veth and reaches b through
    // the other: one run of each program per packet, at least (other
    // tests' veths may add more).
    let samples = samples_when(agent.addr, "program statistics", |s| {
        ["from_container", "to_container"]
            .iter()
            .all(|program| sum(s, "crossmon_program_runs_total", &[("program", program)]) >= 20.0)
    });
    for program in ["from_container", "to_container"] {
        let seconds = sum(
            &samples,
            "crossmon_program_run_seconds_total",
            &[("program", program)],
        );
        assert!(seconds > 0.0 && seconds < 1.0, "{program}: {seconds} s");
    }
}
