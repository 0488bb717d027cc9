//! Docker Swarm across real engines: three nodes in namespaces of their
//! own on an underlay bridge, an attachable overlay between them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use integration_tests::{docker::IMAGE, require_root, swarm::Swarm};

#[test]
fn containers_on_three_nodes_reach_each_other_over_an_overlay() {
    require_root();
    let swarm = Swarm::new("xmsw", 3).expect("a three-node swarm");
    let nodes = swarm
        .manager()
        .text(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])
        .expect("node ls");
    assert_eq!(
        nodes.lines().filter(|l| l.ends_with("Ready")).count(),
        3,
        "{nodes}"
    );
    swarm
        .manager()
        .docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            "10.232.7.0/24",
            "xmov",
        ])
        .expect("overlay");
    let ip = |i: usize| format!("10.232.7.{}", 10 + i);
    for (i, node) in swarm.nodes.iter().enumerate() {
        node.docker(&[
            "run",
            "-d",
            "--name",
            &format!("c{i}"),
            "--network",
            "xmov",
            "--ip",
            &ip(i),
            IMAGE,
            "sleep",
            "600",
        ])
        .expect("container on the overlay");
    }
    for (i, node) in swarm.nodes.iter().enumerate() {
        let peer = ip((i + 1) % 3);
        node.docker(&[
            "exec",
            &format!("c{i}"),
            "ping",
            "-c",
            "2",
            "-W",
            "5",
            &peer,
        ])
        .unwrap_or_else(|err| panic!("c{i} -> {peer}: {err:#}"));
    }
    for (i, node) in swarm.nodes.iter().enumerate() {
        let _ = node.docker(&["rm", "-f", &format!("c{i}")]);
    }
    let _ = swarm.manager().docker(&["network", "rm", "xmov"]);
}
