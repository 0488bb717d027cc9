//! `GET /metrics`: one collector per subsystem, registered in one list
//! (the agent's wiring), each writing its families at scrape time from
//! what its subsystem holds, all through one text writer.
//!
//! A new metric is a line in the collector of its subsystem; a new
//! subsystem is one collector file and one `register` call.

mod agent;
mod capture;
mod detect;
mod dns;
mod docker;
mod drops;
mod events;
mod policy;
mod process;
mod tcp;
pub mod text;
mod traffic;

pub use agent::{AgentCollector, DatapathCollector};
pub use capture::CaptureCollector;
pub use detect::{AlertsCollector, ProtocolsCollector};
pub use dns::DnsCollector;
pub use docker::DockerCollector;
pub use drops::DropsCollector;
pub use events::EventsCollector;
pub use policy::PolicyCollector;
pub use process::ProcessCollector;
pub use tcp::TcpCollector;
pub use text::{Exposition, Kind};
pub use traffic::TrafficCollector;

pub use crate::series::MetricsConfig;

use std::{sync::Mutex, time::Instant};

use crate::sync::lock;

/// The families of one subsystem.
pub trait Collector: Send + Sync {
    fn collect(&self, out: &mut Exposition);
}

/// Upper bounds of `crossmon_scrape_duration_seconds`.
const SCRAPE_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

pub struct Metrics {
    collectors: Vec<Box<dyn Collector>>,
    scrapes: Mutex<ScrapeTimes>,
}

/// `crossmon_scrape_duration_seconds`: per bucket, sum, count.
#[derive(Default)]
struct ScrapeTimes {
    buckets: [u64; SCRAPE_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            collectors: Vec::new(),
            scrapes: Mutex::default(),
        }
    }

    /// Adds a subsystem's families to every scrape, in registration order.
    pub fn register(&mut self, collector: impl Collector + 'static) {
        self.collectors.push(Box::new(collector));
    }

    /// The text exposition of everything the agent knows.
    pub fn render(&self) -> String {
        let started = Instant::now();
        let mut out = Exposition::new();
        for collector in &self.collectors {
            collector.collect(&mut out);
        }
        let mut scrapes = lock(&self.scrapes);
        {
            let buckets: Vec<(f64, u64)> = SCRAPE_BUCKETS
                .iter()
                .copied()
                .zip(scrapes.buckets.iter().copied())
                .collect();
            out.family(
                "crossmon_scrape_duration_seconds",
                "Time to render /metrics (the current scrape is counted in the next).",
                Kind::Histogram,
            )
            .histogram(&[], &buckets, scrapes.sum, scrapes.count);
        }
        let seconds = started.elapsed().as_secs_f64();
        for (bound, count) in SCRAPE_BUCKETS.iter().zip(scrapes.buckets.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        scrapes.sum += seconds;
        scrapes.count += 1;
        out.into_text()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::AtomicBool, Arc};

    use super::*;
    use crate::{docker::Snapshot, flows::PollStatus, sync::published};

    #[test]
    fn collectors_write_their_families_in_order_and_empty_ones_not_at_all() {
        let poll = published(PollStatus {
            flows: 3,
            flow_map_entries: 2,
            flow_map_capacity: 65_536,
            ..PollStatus::default()
        });
        let docker = published(Snapshot::default());
        let attach = Arc::new(crate::datapath::AttachStats::default());
        attach.attached(Some(std::time::Duration::from_millis(3)), 7);
        attach.attached(None, 2);
        let mut metrics = Metrics::new();
        metrics.register(AgentCollector {
            poll: poll.clone(),
            docker: docker.clone(),
            attach,
        });
        metrics.register(DatapathCollector { poll });
        metrics.register(DockerCollector {
            up: Some(Arc::new(AtomicBool::new(true))),
            docker,
        });
        let text = metrics.render();
        for line in [
            "crossmon_flows 3\n",
            "crossmon_attached_interfaces 0\n",
            "crossmon_attach_latency_seconds_bucket{le=\"0.002\"} 0\n",
            "crossmon_attach_latency_seconds_bucket{le=\"0.005\"} 1\n",
            "crossmon_attach_latency_seconds_count 1\n",
            "crossmon_unattached_packets_total 9\n",
            "crossmon_flow_map_capacity 65536\n",
            "crossmon_frames_skipped_total{reason=\"not_ip\"} 0\n",
            "crossmon_docker_up 1\n",
            "crossmon_scrape_duration_seconds_bucket{le=\"+Inf\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
        // No engine answered yet, no program statistics: not exposed.
        assert!(!text.contains("crossmon_docker_engine_info"));
        assert!(!text.contains("crossmon_program_runs_total"));
        let flows = text.find("# HELP crossmon_flows ").expect("flows");
        let capacity = text
            .find("# HELP crossmon_flow_map_capacity")
            .expect("capacity");
        assert!(flows < capacity, "registration order");
        // The next scrape counts this one.
        assert!(metrics
            .render()
            .contains("crossmon_scrape_duration_seconds_count 1\n"));
    }
}
