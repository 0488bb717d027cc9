//! Docker Swarm across real engines: three nodes in namespaces of their
//! own on an underlay bridge, an attachable overlay between them, a global
//! service with a task on each node, and one crossmon per node: the
//! sidecar image deployed with deploy/swarm/stack.yml as it is shipped (a
//! global service with two capabilities, without the host's PID
//! namespace: it finds containers' namespaces by their sandbox keys),
//! beside the stack's Prometheus on the manager (an image of the test's
//! Prometheus binary, under the stack's image name).
//!
//! Each agent attaches to its own containers' veths inside the overlay's
//! sandbox namespace, counts a cross-host flow exactly, names the far end
//! (task, service, stack, node) from what its engine's overlay gossip
//! says, and alerts on a port scan, spoofing, cleartext, a new connection
//! and broken isolation across nodes, each alert naming the node that
//! raised it; a capture of a cross-host flow holds exactly its packets on
//! both nodes; the stack's Prometheus finds and scrapes the three agents;
//! a node restarting, then leaving the swarm, takes nothing from the
//! others' counts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{get, wait_within, AgentApi},
    caps,
    docker::{tcp_sessions, IMAGE},
    engine::NamespacedEngine,
    exposition::{parse, scrape, sum},
    frames::{self, ETH_P_IP},
    net::{datagrams_delivered, in_netns},
    prometheus::{prometheus_installed, PrometheusApi},
    prometheus_image, require_root,
    scratch::Scratch,
    sidecar_image::SidecarImage,
    swarm::Swarm,
    traffic::RawSocket,
    tshark::{capture, running_captures, tshark, IN, OUT},
};
use monitor::datapath::preflight::{CAPABILITIES, CAP_SYS_ADMIN};
use serde_json::Value;

const NETWORK: &str = "xmov";
const SERVICE: &str = "web";
const STACK: &str = "xmst";
const API_PORT: u16 = 9810;
/// The stack crossmon is deployed as.
const CROSSMON_STACK: &str = "xmcm";
/// Where the stack's Prometheus answers, on the manager (the stack's
/// default).
const PROMETHEUS_PORT: u16 = 9090;
/// How long the stack's Prometheus may take to show a change: its
/// configuration as shipped scrapes every 15 s.
const PROMETHEUS_PATIENCE: Duration = Duration::from_secs(40);
const STACK_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/swarm/stack.yml");
const UDP_PORT: u16 = 7000;
/// One source port for every send: one flow, counted on across sends.
const UDP_SOURCE_PORT: u16 = 40_000;

fn container_ip(i: usize) -> String {
    format!("10.232.7.{}", 10 + i)
}

/// An attachable overlay `name` on `subnet`, created on the manager.
fn create_overlay(swarm: &Swarm, name: &str, subnet: &str) {
    swarm
        .manager()
        .docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            subnet,
            name,
        ])
        .unwrap_or_else(|err| panic!("overlay {name}: {err:#}"));
}

/// Container `name` on `node`, started with `options`, sleeping.
fn sleeper(node: &NamespacedEngine, name: &str, options: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend(options);
    args.extend([IMAGE, "sleep", "600"]);
    node.docker(&args)
        .unwrap_or_else(|err| panic!("{name} on {}: {err:#}", node.name));
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

/// `docker ARGS` against the manager, with `env`, failing with stderr.
fn on_manager(swarm: &Swarm, env: &[(&str, &str)], args: &[&str]) -> String {
    let output = swarm
        .manager()
        .docker_with_env(env, args)
        .expect("docker on the manager");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// deploy/swarm/stack.yml, as shipped, with the sidecar image loaded on
/// every node and the Prometheus image built on the manager under the
/// stack's name for it: one agent per node, each found at its node's
/// address, and Prometheus at the manager's. The test engines' sockets
/// and exec roots are named after their nodes, which the stack's
/// variables take as Swarm templates.
fn deploy_stack(swarm: &Swarm, image: &str) -> (Vec<AgentApi>, PrometheusApi) {
    for node in &swarm.nodes {
        node.load(image).expect("the sidecar image on every node");
    }
    let prometheus_image = prometheus_image::stack_default().expect("the stack's Prometheus image");
    prometheus_image::build_in(swarm.manager(), &prometheus_image)
        .expect("the Prometheus image on the manager");
    on_manager(
        swarm,
        &[
            ("CROSSMON_IMAGE", image),
            ("CROSSMON_DOCKER_SOCKET", "/run/{{.Node.Hostname}}.sock"),
            ("CROSSMON_DOCKER_EXEC_ROOT", "/run/{{.Node.Hostname}}"),
        ],
        &[
            "stack",
            "deploy",
            "--detach=true",
            "--resolve-image",
            "never",
            "--compose-file",
            STACK_FILE,
            CROSSMON_STACK,
        ],
    );
    let addrs: Vec<SocketAddr> = (0..swarm.nodes.len())
        .map(|i| SocketAddr::new(swarm.address(i).into(), API_PORT))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !addrs
        .iter()
        .all(|addr| get(*addr, "/healthz").is_some_and(|(status, _)| status == 200))
    {
        if Instant::now() > deadline {
            let service = format!("{CROSSMON_STACK}_crossmon");
            panic!(
                "the stack's agents did not answer within 90 s:\n{}\n{}",
                on_manager(swarm, &[], &["service", "ps", "--no-trunc", &service]),
                on_manager(swarm, &[], &["service", "logs", "--tail", "20", &service]),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let prometheus = SocketAddr::new(swarm.address(0).into(), PROMETHEUS_PORT);
    wait_within("the stack's Prometheus", Duration::from_secs(60), || {
        get(prometheus, "/-/ready").is_some_and(|(status, _)| status == 200)
    });
    (
        addrs.into_iter().map(AgentApi::at).collect(),
        PrometheusApi::at(prometheus, PROMETHEUS_PATIENCE),
    )
}

/// Where the test's policy is, inside the agents' containers.
const POLICY_DIR: &str = "/etc/crossmon-policy";
/// c0's UDP to the service's tasks on this port breaks the policy.
const DENIED_PORT: u16 = 7001;
const DENIED_RULE: &str = "c0-not-7001";

/// The stack's agents of the first `nodes` nodes, once rolled over by
/// `docker service update CHANGES` with `mode` in force.
fn agents_updated(swarm: &Swarm, changes: &[&str], mode: &str, nodes: usize) -> Vec<AgentApi> {
    let service = format!("{CROSSMON_STACK}_crossmon");
    let mut update = vec![
        "service",
        "update",
        "--detach=true",
        "--update-parallelism",
        "0",
    ];
    update.extend(changes);
    update.push(&service);
    on_manager(swarm, &[], &update);
    (0..nodes)
        .map(|i| {
            let addr = SocketAddr::new(swarm.address(i).into(), API_PORT);
            wait_within(
                &format!("node {i}'s agent in {mode} mode"),
                Duration::from_secs(60),
                || {
                    get(addr, "/metrics").is_some_and(|(_, text)| {
                        sum(&parse(&text), "crossmon_policy_info", &[("mode", mode)]) == 1.0
                    })
                },
            );
            AgentApi::at(addr)
        })
        .collect()
}

/// `crossmon_policy_drops_total{rule}` or `_violations_total{rule}`.
fn policy_count(agent: &AgentApi, family: &str, rule: &str) -> f64 {
    sum(&parse(&scrape(agent.addr)), family, &[("rule", rule)])
}

/// The MAC address of container `name` of `node` on the overlay.
fn mac_of(node: &NamespacedEngine, name: &str) -> [u8; 6] {
    let text = node
        .text(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").MacAddress}}}}"),
            name,
        ])
        .expect("mac");
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

/// The state the manager gives node `name` (`ready`, `down`).
fn manager_node_state(swarm: &Swarm, name: &str) -> String {
    on_manager(
        swarm,
        &[],
        &["node", "inspect", "-f", "{{.Status.State}}", name],
    )
    .trim()
    .to_owned()
}

/// The stack's agent on `node` runs as the stack says: not privileged,
/// on the host network, in a PID namespace of its own, holding exactly
/// SYS_ADMIN and the documented capabilities it does not stand for.
fn assert_least_privilege(node: &NamespacedEngine) {
    let id = node
        .text(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={CROSSMON_STACK}_crossmon"),
        ])
        .expect("the agent's container");
    let config = node
        .text(&[
            "inspect",
            "-f",
            "{{.HostConfig.Privileged}} {{.HostConfig.NetworkMode}} pid:{{.HostConfig.PidMode}}",
            &id,
        ])
        .expect("inspect");
    assert_eq!(config, "false host pid:", "{}", node.name);
    let pid = node
        .text(&["inspect", "-f", "{{.State.Pid}}", &id])
        .expect("pid");
    let pid: u32 = pid.parse().expect("a pid");
    let expected = caps::mask(
        CAPABILITIES
            .iter()
            .filter(|cap| !cap.sys_admin_grants)
            .map(|cap| cap.bit),
    ) | caps::mask([CAP_SYS_ADMIN]);
    assert_eq!(caps::effective(pid), expected, "{}", node.name);
    let pid_namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_ne!(pid_namespace(&pid.to_string()), pid_namespace("self"));
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
fn flow(agent: &AgentApi, src: &str, dst: &str, protocol: &str, packets: u64) -> Value {
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
    let image = SidecarImage::build();
    let mut swarm = Swarm::new("xmsw", 3).expect("a three-node swarm");
    let manager = swarm.manager();
    create_overlay(&swarm, NETWORK, "10.232.7.0/24");
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
        sleeper(
            node,
            &format!("c{i}"),
            &["--network", NETWORK, "--ip", &container_ip(i)],
        );
    }
    let mut tasks = Vec::new();
    for node in &swarm.nodes {
        wait_within("the service's task", Duration::from_secs(60), || {
            task_on(node).1.starts_with("10.232.7.")
        });
        tasks.push(task_on(node));
    }
    let hostnames: Vec<String> = swarm.nodes.iter().map(|n| n.name.clone()).collect();

    let (agents, prometheus) = deploy_stack(&swarm, &image.0);
    for node in &swarm.nodes {
        assert_least_privilege(node);
    }
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

    // The stack's Prometheus finds the three agents through the manager's
    // engine, scrapes each, and labels each with its node.
    prometheus.wait_for_value("count(up == 1)", 3.0);
    let mut nodes: Vec<(String, f64)> = prometheus
        .query(r#"up{job="crossmon"}"#)
        .into_iter()
        .map(|s| (s.labels["node"].clone(), s.value))
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        nodes,
        hostnames
            .iter()
            .map(|n| (n.clone(), 1.0))
            .collect::<Vec<_>>()
    );

    // c0 on node 0 sends 5 datagrams to the task on node 1.

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
    assert_eq!(scan["node"], hostnames[2], "{scan}");
    assert_eq!(
        scan["destination"]["node"],
        swarm.address(0).to_string(),
        "{scan}"
    );

    // Spoofing across nodes: c2 sends UDP to c0 claiming c1's address;
    // node 2's agent sees it leave c2 and names the liar.
    let datagram = frames::udp(4444, 5555, b"not me");
    let octets = |ip: String| ip.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let packet = frames::ipv4(
        octets(container_ip(1)),
        octets(container_ip(0)),
        17,
        &[],
        0,
        &datagram,
    );
    let frame = frames::ethernet(
        mac_of(&swarm.nodes[0], "c0"),
        mac_of(&swarm.nodes[2], "c2"),
        ETH_P_IP,
        &packet,
    );
    let socket = RawSocket::open_in(&c2).expect("raw socket in c2");
    for _ in 0..3 {
        socket.send(&frame).expect("send");
    }
    let spoof = agents[2].wait_for_alert("ip_spoof", |a| a["source"]["name"] == "c2");
    assert_eq!(spoof["destination"]["name"], "c0", "{spoof}");
    assert_eq!(spoof["evidence"]["claimed_ip"], container_ip(1), "{spoof}");
    assert_eq!(spoof["node"], hostnames[2], "{spoof}");

    // Cleartext HTTP on a TLS port, c0 on node 0 to c1 on node 1: alerted
    // by the sender's agent, the far end named.
    let c1 = netns_of(&swarm.nodes[1], "c1");
    tcp_sessions(
        &c0,
        &c1,
        &container_ip(1),
        8443,
        1,
        b"GET /admin HTTP/1.1\r\nHost: c1\r\n\r\n",
    );
    let cleartext = agents[0].wait_for_alert("cleartext", |a| {
        a["source"]["name"] == "c0" && a["evidence"]["destination_port"] == 8443
    });
    assert_eq!(cleartext["destination"]["name"], "c1", "{cleartext}");
    assert_eq!(cleartext["evidence"]["protocol"], "http", "{cleartext}");
    assert_eq!(cleartext["node"], hostnames[0], "{cleartext}");

    // Node 2's engine restarts: nodes 0 and 1 keep their counts, and count on.
    swarm.nodes[2].restart().expect("node 2 restarts");
    udp(&c0, &task1, &tasks[1].1, 3);
    flow(&agents[0], &container_ip(0), &tasks[1].1, "udp", 8);
    flow(&agents[1], &container_ip(0), &tasks[1].1, "udp", 8);
    // Node 2 leaves the swarm and the manager forgets it: the same.
    swarm.leave(2).expect("node 2 leaves");
    let node2 = hostnames[2].as_str();
    wait_within("node 2 down", Duration::from_secs(30), || {
        manager_node_state(&swarm, node2) == "down"
    });
    on_manager(&swarm, &[], &["node", "rm", "--force", node2]);
    udp(&c0, &task1, &tasks[1].1, 3);
    flow(&agents[0], &container_ip(0), &tasks[1].1, "udp", 11);
    flow(&agents[1], &container_ip(0), &tasks[1].1, "udp", 11);

    // Before any policy: in enforce mode the router's forwarding, from
    // addresses not its own, would be dropped as spoofed.
    isolation_broken_across_nodes(&swarm, &agents, &hostnames);

    // A flow policy judges a pair across nodes as a pair on one node: the
    // task on node 1 is a destination of c0's veth on node 0, selected by
    // the service label the overlay's gossip carries.
    let policy = Scratch::new("swarm-policy");
    policy.write(
        "policy.yml",
        &format!(
            "version: 1\ndefaults: {{\"*\": allow}}\nrules:\n  - {{name: {DENIED_RULE}, from: {{container: c0}}, to: {{labels: {{com.docker.swarm.service.name: {SERVICE}}}}}, protocol: udp, ports: [{DENIED_PORT}], action: deny}}\n"
        ),
    );
    // Past the rollover, the baseline of connections (learnt since the
    // agents' first start) is no longer learning.
    policy.write(
        "detectors.toml",
        "[new_connection]\nlearning_period = \"1s\"\n",
    );
    let dir = policy.dir().to_str().unwrap();
    let policy_file = format!("{POLICY_DIR}/policy.yml");
    let denied = format!("{}:{DENIED_PORT}", tasks[1].1);
    let allowed = format!("{}:{UDP_PORT}", tasks[1].1);
    // Observe: delivered, counted and alerted by node 0's agent.
    let mount = format!("type=bind,source={dir},target={POLICY_DIR},readonly=true");
    let observe = format!("run --policy {policy_file} --config {POLICY_DIR}/detectors.toml");
    let agents = agents_updated(
        &swarm,
        &["--mount-add", &mount, "--args", &observe],
        "observe",
        2,
    );
    agents[0].wait_attached(&["c0"]);
    assert_eq!(datagrams_delivered(&c0, &task1, &denied, 4), 4);
    wait_within("4 violations", Duration::from_secs(10), || {
        policy_count(&agents[0], "crossmon_policy_violations_total", DENIED_RULE) == 4.0
    });
    let violation =
        agents[0].wait_for_alert("policy_violation", |a| a["evidence"]["rule"] == DENIED_RULE);
    assert_eq!(
        identity(&violation["destination"]),
        task1_identity,
        "{violation}"
    );
    assert_eq!(violation["source"]["name"], "c0", "{violation}");
    assert_eq!(violation["evidence"]["verdict"], "passed", "{violation}");
    assert_eq!(datagrams_delivered(&c0, &task1, &allowed, 3), 3);
    // Enforce: the denied datagrams are dropped at c0's veth, exactly
    // counted; the allowed port still passes.
    let enforce = format!("{observe} --enforce");
    let agents = agents_updated(&swarm, &["--args", &enforce], "enforce", 2);
    agents[0].wait_attached(&["c0"]);
    assert_eq!(datagrams_delivered(&c0, &task1, &denied, 6), 0);
    wait_within("6 drops", Duration::from_secs(10), || {
        policy_count(&agents[0], "crossmon_policy_drops_total", DENIED_RULE) == 6.0
    });
    assert_eq!(datagrams_delivered(&c0, &task1, &allowed, 3), 3);
    assert_eq!(
        policy_count(&agents[0], "crossmon_policy_drops_total", DENIED_RULE),
        6.0
    );

    new_connection_across_nodes(&swarm, &agents, &hostnames);
    capture_across_nodes(&agents, &c0, &task1, &tasks[1]);
}

/// The alerts of `kind` of `agent` whose `select` holds, once the agent
/// has had two polls more to raise any other.
fn alerts_settled(agent: &AgentApi, kind: &str, select: impl Fn(&Value) -> bool) -> Vec<Value> {
    std::thread::sleep(Duration::from_secs(2));
    agent
        .alerts()
        .into_iter()
        .filter(|a| a["kind"] == kind && select(a))
        .collect()
}

/// The one alert of `kind` whose `select` holds that node 0's agent raised
/// (`node0` its host name) about c0 as the source, named with its node.
fn one_alert_of_c0(
    agent: &AgentApi,
    kind: &str,
    select: impl Fn(&Value) -> bool + Copy,
    node0: &str,
) -> Value {
    agent.wait_for_alert(kind, select);
    let alerts = alerts_settled(agent, kind, select);
    let [alert] = alerts.as_slice() else {
        panic!("one {kind}, not {alerts:?}");
    };
    assert_eq!(alert["node"], node0, "{alert}");
    assert_eq!(
        identity(&alert["source"]),
        ["c0".into(), Value::Null, Value::Null, node0.into()],
        "{alert}"
    );
    alert.clone()
}

/// A connection c0 (node 0) never made before, to c1 (node 1): exactly one
/// `new_connection` alert, raised as on a bridge by the sender's agent
/// (detectors judge what a watched container sent), naming both ends and
/// its node; none on node 1.
fn new_connection_across_nodes(swarm: &Swarm, agents: &[AgentApi], hostnames: &[String]) {
    let c0 = netns_of(&swarm.nodes[0], "c0");
    let c1 = netns_of(&swarm.nodes[1], "c1");
    tcp_sessions(&c0, &c1, &container_ip(1), 8082, 1, b"hello");
    let to_c1 = |a: &Value| a["destination"]["name"] == "c1";
    let alert = one_alert_of_c0(&agents[0], "new_connection", to_c1, &hostnames[0]);
    assert_eq!(alert["destination"]["node"], hostnames[1], "{alert}");
    assert_eq!(alert["evidence"]["destination_port"], 8082, "{alert}");
    assert_eq!(alert["evidence"]["outcome"], "established", "{alert}");
    assert!(alerts_settled(&agents[1], "new_connection", to_c1).is_empty());
}

const ISOLATED_NETWORK: &str = "xmiso";

/// i1 on node 1, on an overlay of its own (which d0 on node 0 joins too,
/// so that node 0's engine hears its gossip), reached from c0 (node 0, on
/// the first overlay only) through a router on node 1 on both: Docker
/// isolates c0 from i1, so c0's agent, which names i1 by its stand-in
/// from the gossip, raises exactly one `isolation_violation` naming both
/// and their nodes; node 1's agent, which sees only the router send to
/// i1 on their shared overlay, none.
fn isolation_broken_across_nodes(swarm: &Swarm, agents: &[AgentApi], hostnames: &[String]) {
    create_overlay(swarm, ISOLATED_NETWORK, "10.232.8.0/24");
    sleeper(&swarm.nodes[0], "d0", &["--network", ISOLATED_NETWORK]);
    let node1 = &swarm.nodes[1];
    sleeper(
        node1,
        "r1",
        &[
            "--network",
            NETWORK,
            "--ip",
            "10.232.7.30",
            "--sysctl",
            "net.ipv4.ip_forward=1",
        ],
    );
    node1
        .docker(&[
            "network",
            "connect",
            "--ip",
            "10.232.8.30",
            ISOLATED_NETWORK,
            "r1",
        ])
        .expect("the router on both overlays");
    let i1_ip = "10.232.8.11";
    sleeper(node1, "i1", &["--network", ISOLATED_NETWORK, "--ip", i1_ip]);
    agents[1].wait_attached(&["r1", "i1"]);
    for (netns, route) in [
        (
            netns_of(&swarm.nodes[0], "c0"),
            ["10.232.8.0/24", "via", "10.232.7.30"],
        ),
        (
            netns_of(node1, "i1"),
            ["10.232.7.0/24", "via", "10.232.8.30"],
        ),
    ] {
        let status = std::process::Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ip", "route", "add"])
            .args(route)
            .status()
            .expect("nsenter");
        assert!(status.success(), "route {route:?} in {netns}");
    }
    // Node 0's engine hears of i1, then its agent (which asks every
    // SWARM_REFRESH, 3 s) does: only then is c0's attempt judged.
    wait_within("node 0's engine knows i1", Duration::from_secs(30), || {
        swarm.nodes[0]
            .text(&["network", "inspect", "--verbose", ISOLATED_NETWORK])
            .is_ok_and(|text| text.contains(i1_ip))
    });
    std::thread::sleep(Duration::from_secs(4));
    swarm.nodes[0]
        .docker(&["exec", "c0", "ping", "-q", "-c", "2", "-W", "5", i1_ip])
        .expect("c0 reaches i1 through the router");
    let alert = one_alert_of_c0(&agents[0], "isolation_violation", |_| true, &hostnames[0]);
    assert_eq!(alert["destination"]["name"], "i1", "{alert}");
    assert_eq!(alert["destination"]["node"], hostnames[1], "{alert}");
    assert_eq!(
        alert["evidence"]["source_networks"],
        serde_json::json!([NETWORK]),
        "{alert}"
    );
    assert_eq!(
        alert["evidence"]["destination_networks"],
        serde_json::json!([ISOLATED_NETWORK]),
        "{alert}"
    );
    assert_eq!(alert["evidence"]["outcome"], "answered", "{alert}");
    assert!(alerts_settled(&agents[1], "isolation_violation", |_| true).is_empty());
}

/// A capture on each end of a cross-host flow, c0 (node 0) to the task on
/// node 1, each asked of its own node's agent with the other end as peer:
/// both files hold exactly the 5 datagrams sent, whole, out of c0 and into
/// the task.
fn capture_across_nodes(agents: &[AgentApi], c0: &str, task1: &str, task: &(String, String)) {
    let scratch = Scratch::new("swarm-capture");
    // Who is captured, with which peer, and which way the datagrams go.
    let ends = [
        ("c0", task.1.clone(), OUT),
        (task.0.as_str(), container_ip(0), IN),
    ];
    let files: Vec<_> = (0..ends.len())
        .map(|i| scratch.path(&format!("node{i}.pcapng")))
        .collect();
    let capturing: Vec<_> = ends
        .iter()
        .zip(agents)
        .zip(&files)
        .map(|(((name, peer, _), agent), file)| {
            capture(
                agent.addr,
                &[
                    "--container",
                    name,
                    "--peer",
                    peer,
                    "--protocol",
                    "udp",
                    "--duration",
                    "5s",
                    "-w",
                ],
            )
            .arg(file)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("crossmon capture")
        })
        .collect();
    for agent in &agents[..ends.len()] {
        wait_within("the capture running", Duration::from_secs(5), || {
            running_captures(agent.addr) == 1
        });
    }
    udp(c0, task1, &task.1, 5);
    let frame = (14 + 20 + 8 + "datagram 0".len()).to_string();
    for ((child, file), (name, _, direction)) in capturing.into_iter().zip(&files).zip(&ends) {
        let output = child.wait_with_output().expect("crossmon capture");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let expected: Vec<Vec<String>> = (0..5)
            .map(|_| {
                [
                    name,
                    *direction,
                    &container_ip(0),
                    &task.1,
                    "17",
                    &UDP_SOURCE_PORT.to_string(),
                    &UDP_PORT.to_string(),
                    "",
                    "",
                    "",
                    "",
                    &frame,
                    &frame,
                ]
                .map(|field| (*field).to_owned())
                .to_vec()
            })
            .collect();
        assert_eq!(tshark(file), expected, "{name}'s capture");
    }
}
