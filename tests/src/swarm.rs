//! A Docker Swarm of real engines on one machine: each node a
//! [`NamespacedEngine`] in a host of one [`TestNet`], which is the underlay
//! its VXLAN overlays run over. The first node is the manager, the others
//! join as workers. Left and torn down on drop, nodes before the underlay.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{engine::NamespacedEngine, TestNet};

pub struct Swarm {
    // Declared before the underlay: engines stop while their namespaces
    // still exist.
    pub nodes: Vec<NamespacedEngine>,
    pub underlay: TestNet,
}

impl Swarm {
    /// `count` nodes named `<prefix>n<i>`; node 0 manages.
    pub fn new(prefix: &str, count: usize) -> anyhow::Result<Self> {
        let underlay = TestNet::new(count).context("the underlay")?;
        let mut swarm = Self {
            nodes: Vec::new(),
            underlay,
        };
        for i in 0..count {
            let host = swarm.underlay.host(i);
            let subnet = 100 + u8::try_from(i).context("node count")?;
            swarm.nodes.push(
                NamespacedEngine::start(&format!("{prefix}n{i}"), host, subnet)
                    .with_context(|| format!("node {i}"))?,
            );
        }
        let manager = swarm.address(0).to_string();
        swarm.nodes[0].docker(&["swarm", "init", "--advertise-addr", &manager])?;
        let token = swarm.nodes[0].text(&["swarm", "join-token", "-q", "worker"])?;
        for i in 1..count {
            let address = swarm.address(i).to_string();
            swarm.nodes[i].docker(&[
                "swarm",
                "join",
                "--advertise-addr",
                &address,
                "--token",
                &token,
                &format!("{manager}:2377"),
            ])?;
        }
        Ok(swarm)
    }

    /// Node `i`'s address on the underlay.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        self.underlay.host(i).ip4()
    }

    pub fn manager(&self) -> &NamespacedEngine {
        &self.nodes[0]
    }

    /// Node `i` leaves the swarm. Soon after its engine restarted, its
    /// swarm agent may still be rejoining, and `leave` can give up at the
    /// daemon's own deadline ("context deadline exceeded") with the node
    /// on its way out: asked again while the engine says it is still in
    /// (each `docker` call itself unbounded, as everywhere in the tests).
    pub fn leave(&self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = node.docker(&["swarm", "leave", "--force"]);
            let state = node
                .text(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
                .with_context(|| format!("node {i}'s engine, after leaving the swarm"))?;
            match state.as_str() {
                "inactive" => return Ok(()),
                "active" | "pending" if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_secs(2));
                }
                _ => {
                    let leave = left.map_or_else(|err| format!("{err:#}"), |_| "done".to_owned());
                    bail!("node {i} did not leave the swarm: its state is {state}; leave: {leave}");
                }
            }
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        // Workers first: a manager that leaves first strands them.
        for node in self.nodes.iter().rev() {
            let _ = node.docker(&["swarm", "leave", "--force"]);
        }
    }
}
