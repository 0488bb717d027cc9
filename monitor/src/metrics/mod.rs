//! `GET /metrics`: the Prometheus exposition of traffic between containers,
//! of who the containers are, and of the agent's own health.

pub(crate) mod labels;
mod policy;
mod served;
pub(crate) mod state;
mod text;
mod traffic;

pub use policy::PolicyCollector;
pub use state::AgentSnapshot;
pub use traffic::{MetricsConfig, TrafficMetrics};

use std::sync::Mutex;

use anyhow::Context as _;
use prometheus::{
    process_collector::ProcessCollector, Encoder as _, Histogram, HistogramOpts, Registry,
    TextEncoder,
};

use crate::sync::lock;

pub struct Metrics {
    registry: Registry,
    traffic: Mutex<TrafficMetrics>,
    render_seconds: Histogram,
}

impl Metrics {
    pub fn new(config: MetricsConfig) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let traffic = TrafficMetrics::new(config);
        let render_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "crossmon_scrape_duration_seconds",
                "Time to render /metrics (the current scrape is counted in the next).",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )?;
        registry.register(Box::new(render_seconds.clone()))?;
        registry
            .register(Box::new(ProcessCollector::for_self()))
            .context("registering process metrics")?;
        Ok(Self {
            registry,
            traffic: Mutex::new(traffic),
            render_seconds,
        })
    }

    /// Adds families read at scrape time (the policy's counters).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) -> anyhow::Result<()> {
        self.registry
            .register(collector)
            .context("registering a metrics collector")
    }

    /// The traffic counters, to update after each poll.
    pub fn traffic(&self) -> std::sync::MutexGuard<'_, TrafficMetrics> {
        lock(&self.traffic)
    }

    /// The text exposition format.
    pub fn render(
        &self,
        snapshot: impl FnOnce(&TrafficMetrics) -> AgentSnapshot,
    ) -> anyhow::Result<String> {
        let timer = self.render_seconds.start_timer();
        // The traffic lock is held throughout, so that the traffic series
        // and the agent's view of them (series counts) are one moment.
        let traffic = self.traffic();
        let mut families = self.registry.gather();
        families.extend(snapshot(&traffic).families());
        // A family without series (no containers yet) is not exposed.
        families.retain(|family| !family.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut text)
            .context("encoding /metrics")?;
        let mut text = String::from_utf8(text).context("encoding /metrics")?;
        traffic.encode(&mut text);
        timer.observe_duration();
        Ok(text)
    }
}
