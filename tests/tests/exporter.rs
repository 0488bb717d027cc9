//! The exporter against real containers and a real Prometheus server: exact
//! counts through PromQL, joins on container info, bounded series under a
//! port scan, and series of removed containers going away.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use integration_tests::{
    agent::Agent,
    docker::{docker_ready, Container, DockerNetwork, IMAGE},
    exposition::{parse, samples_when, scrape, select, sum},
    prometheus::{prometheus_installed, Prometheus, Scrape},
};

#[test]
fn prometheus_scrapes_exact_traffic_between_named_containers() {
    docker_ready();
    prometheus_installed();
    let net = DockerNetwork::create("prom", &[]).expect("network");
    let on_net = ["--network", net.name.as_str()];
    let server = net.run("server");
    let client = Container::run(
        "client",
        &[
            &on_net[..],
            &[
                "-l",
                "com.docker.compose.project=shop",
                "-l",
                "com.docker.compose.service=cart",
            ],
        ]
        .concat(),
    )
    .expect("client");
    let hidden = Container::run(
        "hidden",
        &[&on_net[..], &["-l", "crossmon.metrics=off"]].concat(),
    )
    .expect("hidden");
    let agent = Agent::start(&["--series-grace", "1s"]);
    agent.wait_attached(&[&server.name, &client.name, &hidden.name]);
    let prometheus = Prometheus::start(&Scrape::new(agent.addr));
    prometheus.wait_for_target_up();

    let server_ip = server.ip(&net.name).expect("ip");
    client.ping(&server_ip, 5);
    client.tcp_sessions(&server, &server_ip, 8080, 1, b"");
    client.connect_refused(&server_ip, 8081..8082);
    hidden.ping(&server_ip, 2);

    let client_name = client.name.clone();
    let (c, s) = (client_name.as_str(), server.name.as_str());
    prometheus.wait_for_value(
        &format!(
            r#"sum(crossmon_flow_packets_total{{source="{c}",destination="{s}",protocol="icmp"}})"#
        ),
        5.0,
    );
    prometheus.wait_for_value(
        &format!(
            r#"sum(crossmon_flow_bytes_total{{source="{s}",destination="{c}",protocol="icmp",destination_port="none",source_network="{}"}})"#,
            net.name
        ),
        5.0 * 84.0,
    );
    for (port, result) in [("8080", "established"), ("ephemeral", "refused")] {
        prometheus.wait_for_value(
            &format!(
                r#"crossmon_connections_total{{source="{c}",destination="{s}",destination_port="{port}",protocol="tcp",result="{result}"}}"#
            ),
            1.0,
        );
    }
    prometheus.wait_for_value(
        &format!(
            r#"sum(crossmon_connections_total{{source="{c}",result="unanswered"}}) or vector(0)"#
        ),
        0.0,
    );

    // Container info, and a join through it: traffic by compose service.
    let info = prometheus.query(&format!(r#"crossmon_container_info{{container="{c}"}}"#));
    assert_eq!(info.len(), 1, "{info:?}");
    let labels = &info[0].labels;
    assert_eq!(labels["image"], IMAGE);
    assert_eq!(labels["network"], net.name);
    assert_eq!(labels["ip"], client.ip(&net.name).expect("ip"));
    assert_eq!(labels["compose_project"], "shop");
    assert_eq!(labels["compose_service"], "cart");
    assert_eq!(labels["container_id"].len(), 12);
    prometheus.wait_for_value(
        &format!(
            r#"sum by (compose_service) (
                 crossmon_flow_packets_total{{destination="{s}",protocol="icmp"}}
               * on (source) group_left (compose_service)
                 label_replace(crossmon_container_info, "source", "$1", "container", "(.*)")
               )"#
        ),
        5.0,
    );

    // The opted-out container is counted, under `aggregate` only.
    prometheus.wait_for_value(
        &format!(
            r#"sum(crossmon_flow_packets_total{{source="aggregate",destination="{s}",protocol="icmp"}})"#
        ),
        2.0,
    );
    let hidden_name = hidden.name.as_str();
    let samples = parse(&scrape(agent.addr));
    assert!(
        !samples
            .iter()
            .any(|s| s.labels.values().any(|v| v == hidden_name)),
        "no series names the opted-out container"
    );
    assert_eq!(
        sum(
            &samples,
            "crossmon_container_posture",
            &[("container", s), ("check", "runs_as_root")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &samples,
            "crossmon_container_posture",
            &[("container", s), ("check", "privileged")]
        ),
        0.0
    );
    assert_eq!(
        select(&samples, "crossmon_docker_engine_info", &[]).count(),
        1
    );
    assert_eq!(sum(&samples, "crossmon_docker_up", &[]), 1.0);

    // Pings, a connection, a refused port: nothing worth an alert.
    assert_eq!(agent.alerts(), Vec::<serde_json::Value>::new());

    // Removed: its series go once the grace period (1 s) has passed.
    drop(client);
    samples_when(
        agent.addr,
        "the removed container's series gone",
        |samples| !samples.iter().any(|s| s.labels.values().any(|v| v == c)),
    );
}

#[test]
fn a_port_scan_does_not_create_a_series_per_port() {
    docker_ready();
    let net = DockerNetwork::create("scan", &[]).expect("network");
    let target = net.run("target");
    let scanner = net.run("scanner");
    let agent = Agent::start(&[]);
    agent.wait_attached(&[&target.name, &scanner.name]);

    let target_ip = target.ip(&net.name).expect("ip");
    scanner.connect_refused(&target_ip, 20_000..25_000);

    let (from, to) = (scanner.name.as_str(), target.name.as_str());
    let samples = samples_when(agent.addr, "5000 refused connections", |s| {
        sum(
            s,
            "crossmon_connections_total",
            &[("source", from), ("destination", to), ("result", "refused")],
        ) == 5000.0
    });
    let between = |name| {
        samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.get("protocol").map(String::as_str) == Some("tcp")
                    && s.labels.values().any(|v| v == from)
            })
            .collect::<Vec<_>>()
    };
    // SYNs one way, RSTs back: two series, whatever the number of ports.
    let flows = between("crossmon_flow_packets_total");
    assert_eq!(flows.len(), 2, "{flows:#?}");
    assert_eq!(between("crossmon_connections_total").len(), 1);
    assert_eq!(
        sum(
            &samples,
            "crossmon_flow_packets_total",
            &[
                ("source", from),
                ("destination", to),
                ("destination_port", "ephemeral")
            ]
        ),
        5000.0
    );
    assert_eq!(sum(&samples, "crossmon_series_dropped_total", &[]), 0.0);
}
