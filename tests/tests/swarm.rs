//! Docker Swarm across real engines: three nodes in namespaces of their
//! own on an underlay bridge, an attachable overlay between them, a global
//! service with a task on each node, and one crossmon per node (run in the
//! node's namespace against the node's engine, as the stack runs it).
//!
//! Each agent attaches to its own containers' veths inside the overlay's
//! sandbox namespace, counts a cross-host flow exactly, names the far end
//! (task, service, stack, node) from what its engine's overlay gossip
//! says, and alerts on a port scan across nodes; a node restarting takes
//! nothing from the others' counts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use integration_tests::{
    agent::{wait_within, Agent},
    docker::IMAGE,
    engine::NamespacedEngine,
    net::in_netns,
    prometheus::{prometheus_installed, Prometheus, Scrape},
    require_root,
    swarm::Swarm,
};
use serde_json::Value;

const NETWORK: &str = "xmov";
const SERVICE: &str = "web";
const STACK: &str = "xmst";
const API_PORT: u16 = 9810;
const UDP_PORT: u16 = 7000;
/// One source port for every send: one flow, counted on across sends.
const UDP_SOURCE_PORT: u16 = 40_000;

fn container_ip(i: usize) -> String {
    format!("10.232.7.{}", 10 + i)
}

/// `/proc/PID/ns/net` of container `name` of `node`.
fn netns_of(node: &NamespacedEngine, name: &str) -> String {
    let pid = node
        .text(&["inspect", "-f", "{{.State.Pid}}", name])
        .expect("pid");
    format!("/proc/{pid}/ns/net")
}

/// The name and overlay address of the service's task on `node`.
fn task_on(node: &NamespacedEngine) -> (String, String) {
    let name = node
        .text(&[
            "ps",
            "--filter",
            &format!("label=com.docker.swarm.service.name={SERVICE}"),
            "--format",
            "{{.Names}}",
        ])
        .expect("docker ps");
    let ip = node
        .text(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
            &name,
        ])
        .expect("task address");
    (name, ip)
}

/// crossmon in `node`'s namespace, on its engine, listening on the node's
/// underlay address.
fn agent_on(swarm: &Swarm, i: usize) -> Agent {
    let node = &swarm.nodes[i];
    let netns = format!("--net={}", node.netns_path());
    let docker_host = format!("DOCKER_HOST={}", node.docker_host());
    let exec_root = node.exec_root().display().to_string();
    Agent::start_at(
        &["nsenter", &netns, "env", &docker_host],
        Some(SocketAddr::new(swarm.address(i).into(), API_PORT)),
        &["--docker-exec-root", &exec_root],
    )
}

/// `count` UDP datagrams from the namespace `from` (port `UDP_SOURCE_PORT`)
/// to `to:UDP_PORT`, where
/// a socket bound in the namespace `sink` receives them all.
fn udp(from: &str, sink: &str, to: &str, count: usize) {
    let socket = in_netns(sink, || Ok(UdpSocket::bind(("0.0.0.0", UDP_PORT))?)).expect("sink");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let target: SocketAddr = format!("{to}:{UDP_PORT}").parse().unwrap();
    in_netns(from, || {
        let sender = UdpSocket::bind(("0.0.0.0", UDP_SOURCE_PORT))?;
        for i in 0..count {
            sender.send_to(format!("datagram {i}").as_bytes(), target)?;
        }
        Ok(())
    })
    .expect("sending");
    let mut buffer = [0u8; 64];
    for i in 0..count {
        socket
            .recv_from(&mut buffer)
            .unwrap_or_else(|err| panic!("datagram {i} of {count} to {to}: {err}"));
    }
}

/// The flow of `protocol` from address `src` to `dst` in `agent`'s API,
/// once it has exactly `packets` packets.
fn flow(agent: &Agent, src: &str, dst: &str, protocol: &str, packets: u64) -> Value {
    agent.flow_where(
        &format!("{src} -> {dst} ({protocol})"),
        |f| f["src"]["ip"] == src && f["dst"]["ip"] == dst && f["protocol"] == protocol,
        packets,
    )
}

/// `end`'s name, service, stack and node, as strings or null.
fn identity(end: &Value) -> [Value; 4] {
    [
        end["name"].clone(),
        end["service"].clone(),
        end["stack"].clone(),
        end["node"].clone(),
    ]
}

#[test]
fn agents_on_three_nodes_count_and_name_overlay_flows_between_them() {
    require_root();
    prometheus_installed();
    let mut swarm = Swarm::new("xmsw", 3).expect("a three-node swarm");
    let manager = swarm.manager();
    manager
        .docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            "10.232.7.0/24",
            NETWORK,
        ])
        .expect("overlay");
    manager
        .docker(&[
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            SERVICE,
            "--mode",
            "global",
            "--network",
            NETWORK,
            "--label",
            &format!("com.docker.stack.namespace={STACK}"),
            "--container-label",
            &format!("com.docker.stack.namespace={STACK}"),
            IMAGE,
            "sleep",
            "600",
        ])
        .expect("a global service");
    for (i, node) in swarm.nodes.iter().enumerate() {
        node.docker(&[
            "run",
            "-d",
            "--name",
            &format!("c{i}"),
            "--network",
            NETWORK,
            "--ip",
            &container_ip(i),
            IMAGE,
            "sleep",
            "600",
        ])
        .expect("container on the overlay");
    }
    let mut tasks = Vec::new();
    for node in &swarm.nodes {
        wait_within("the service's task", Duration::from_secs(60), || {
            task_on(node).1.starts_with("10.232.7.")
        });
        tasks.push(task_on(node));
    }
    let hostnames: Vec<String> = swarm.nodes.iter().map(|n| n.name.clone()).collect();

    let agents: Vec<Agent> = (0..3).map(|i| agent_on(&swarm, i)).collect();
    for (i, agent) in agents.iter().enumerate() {
        agent.wait_attached(&[&format!("c{i}"), &tasks[i].0]);
        let c = agent.container(&format!("c{i}"), |c| c["attached"] == true);
        let ifindex = c["networks"][0]["ifindex"].as_u64().unwrap();
        assert!(
            ifindex >= 1 << 24,
            "c{i}'s veth is in the overlay's sandbox, its id tagged: {c}"
        );
    }

    // Each container and task speaks once, so that every sandbox bridge
    // knows every MAC: a frame to one it has not learnt yet is flooded to
    // all its ports, and each port would count it.
    let ping_once = |node: &NamespacedEngine, from: &str, to: &str| {
        node.docker(&["exec", from, "ping", "-q", "-c", "1", "-W", "5", to])
            .unwrap_or_else(|err| panic!("{from} -> {to}: {err:#}"));
    };
    for (i, node) in swarm.nodes.iter().enumerate() {
        for peer in (0..3)
            .map(container_ip)
            .chain(tasks.iter().map(|t| t.1.clone()))
        {
            ping_once(node, &format!("c{i}"), &peer);
        }
        ping_once(node, &tasks[i].0, &container_ip(i));
    }

    // c0 on node 0 sends 5 datagrams to the task on node 1.
    // Prometheus finds the three agents through the manager, and labels
    // each with its node.
    let prometheus = Prometheus::start(&Scrape {
        swarm: Some(swarm.manager().docker_host()),
        ..Scrape::new(SocketAddr::new(swarm.address(0).into(), API_PORT))
    });
    prometheus.wait_for_value("count(up == 1)", 3.0);
    let mut nodes: Vec<String> = prometheus
        .query("up")
        .into_iter()
        .map(|s| s.labels["node"].clone())
        .collect();
    nodes.sort();
    assert_eq!(nodes, hostnames);

    let c0 = netns_of(&swarm.nodes[0], "c0");
    let task1 = netns_of(&swarm.nodes[1], &tasks[1].0);
    udp(&c0, &task1, &tasks[1].1, 5);
    let sent = flow(&agents[0], &container_ip(0), &tasks[1].1, "udp", 5);
    assert_eq!(sent["direction"], "from_container", "{sent}");
    let received = flow(&agents[1], &container_ip(0), &tasks[1].1, "udp", 5);
    assert_eq!(received["direction"], "to_container", "{received}");
    // Node 0 manages: it names node 1 by host name and knows the stack.
    let c0_name = Value::from("c0");
    assert_eq!(
        identity(&sent["src"]),
        [
            c0_name.clone(),
            Value::Null,
            Value::Null,
            hostnames[0].clone().into()
        ],
        "{sent}"
    );
    // The task is named alike on both nodes: node 1, a worker, from its
    // own container's labels.
    let task1_identity = [
        Value::from(tasks[1].0.as_str()),
        SERVICE.into(),
        STACK.into(),
        hostnames[1].clone().into(),
    ];
    assert_eq!(identity(&sent["dst"]), task1_identity, "{sent}");
    assert_eq!(identity(&received["dst"]), task1_identity, "{received}");
    // The far node, which only a manager could name, by address.
    assert_eq!(
        identity(&received["src"]),
        [
            c0_name,
            Value::Null,
            Value::Null,
            swarm.address(0).to_string().into()
        ],
        "{received}"
    );

    // The cross-host view: the flow once on each side, by node.
    for node in &hostnames[..2] {
        prometheus.wait_for_value(
            &format!(
                r#"sum(crossmon_flow_packets_total{{source="c0",protocol="udp",node="{node}"}})"#
            ),
            5.0,
        );
    }

    // A port scan across nodes: c2 on node 2 against c0 on node 0.
    let c2 = netns_of(&swarm.nodes[2], "c2");
    in_netns(&c2, || {
        for port in 30_000..30_030 {
            let target: SocketAddr = format!("{}:{port}", container_ip(0)).parse()?;
            let err = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .expect_err("nothing listens");
            anyhow::ensure!(err.kind() == std::io::ErrorKind::ConnectionRefused, "{err}");
        }
        Ok(())
    })
    .expect("refused connections");
    let scan = agents[2].wait_for_alert("port_scan", |a| a["source"]["name"] == "c2");
    assert_eq!(scan["destination"]["name"], "c0", "{scan}");
    assert_eq!(
        scan["destination"]["node"],
        swarm.address(0).to_string(),
        "{scan}"
    );

    // Node 2's engine restarts: nodes 0 and 1 keep their counts, and count on.
    swarm.nodes[2].restart().expect("node 2 restarts");
    udp(&c0, &task1, &tasks[1].1, 3);
    flow(&agents[0], &container_ip(0), &tasks[1].1, "udp", 8);
    flow(&agents[1], &container_ip(0), &tasks[1].1, "udp", 8);
    drop(agents);
}
