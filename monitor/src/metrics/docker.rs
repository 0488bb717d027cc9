//! The Docker engine crossmon follows.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use super::{Collector, Exposition, Kind};
use crate::{
    docker::{Snapshot, UNWATCHED_REASONS},
    sync::Published,
};

/// `crossmon_docker_up`, `crossmon_docker_engine_info`,
/// `crossmon_unwatched_containers`.
pub struct DockerCollector {
    /// `None` with `--no-docker`: no engine to be up or down.
    pub up: Option<Arc<AtomicBool>>,
    pub docker: Published<Snapshot>,
}

impl Collector for DockerCollector {
    fn collect(&self, out: &mut Exposition) {
        if let Some(up) = &self.up {
            out.family(
                "crossmon_docker_up",
                "Whether the Docker engine answers (1) or not (0); absent with --no-docker.",
                Kind::Gauge,
            )
            .sample(&[], u64::from(up.load(Ordering::Relaxed)));
        }
        let docker = self.docker.load();
        if let Some(inventory) = &docker.inventory {
            let engine = &inventory.engine;
            out.family(
                "crossmon_docker_engine_info",
                "The Docker engine crossmon follows; always 1.",
                Kind::Gauge,
            )
            .sample(
                &[
                    ("version", &engine.version),
                    ("api_version", &engine.api_version),
                ],
                1u64,
            );
            let mut unwatched = [0u64; UNWATCHED_REASONS.len()];
            for container in inventory.containers.values() {
                let reason = container.unwatched(&inventory.networks, |ifindex| {
                    docker.interfaces.contains_key(&ifindex)
                });
                if let Some(i) = UNWATCHED_REASONS.iter().position(|r| Some(*r) == reason) {
                    unwatched[i] += 1;
                }
            }
            let mut family = out.family(
                "crossmon_unwatched_containers",
                "Running containers with traffic that crosses no watched interface, by why: host, macvlan, ipvlan (interface not attached in its namespace), container (another container's namespace), none.",
                Kind::Gauge,
            );
            for (reason, n) in UNWATCHED_REASONS.iter().zip(unwatched) {
                family.sample(&[("reason", reason)], n);
            }
        }
    }
}
