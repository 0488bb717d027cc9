//! The Docker engine crossmon follows.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use super::{Collector, Exposition, Kind};
use crate::{docker::Snapshot, sync::Published};

/// `crossmon_docker_up`, `crossmon_docker_engine_info`.
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
        }
    }
}
