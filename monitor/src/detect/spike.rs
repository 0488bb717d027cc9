//! `traffic_spike`: bytes on one edge (source to destination) in a window
//! far above that edge's own moving average, and above a floor so that
//! quiet edges page nobody: what exfiltration looks like.

use std::collections::HashMap;

use serde_json::json;

use super::{config::TrafficSpike, Alert, Detector, Findings, PollEnd, Severity, Traffic};
use crate::{clock, docker::FlowEnd};

/// Weight of the newest window in the moving average.
const ALPHA: f64 = 0.3;

struct Edge {
    source: FlowEnd,
    destination: FlowEnd,
    window_start_ns: u64,
    bytes: u64,
    baseline: f64,
    windows: u32,
    quiet_windows: u32,
}

pub struct SpikeDetector {
    config: TrafficSpike,
    window_ns: u64,
    edges: HashMap<(String, String), Edge>,
}

impl SpikeDetector {
    pub fn new(config: &TrafficSpike) -> Self {
        Self {
            window_ns: u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX),
            config: config.clone(),
            edges: HashMap::new(),
        }
    }

    /// Bytes a flow added this poll.
    pub fn observe(&mut self, source: &FlowEnd, destination: &FlowEnd, bytes: u64, now_ns: u64) {
        if bytes == 0 {
            return;
        }
        let key = (Alert::end_name(source), Alert::end_name(destination));
        let edge = self.edges.entry(key).or_insert_with(|| Edge {
            source: source.clone(),
            destination: destination.clone(),
            window_start_ns: now_ns,
            bytes: 0,
            baseline: 0.0,
            windows: 0,
            quiet_windows: 0,
        });
        edge.bytes = edge.bytes.saturating_add(bytes);
    }

    /// Closes the windows that ended by `now_ns`.
    pub fn check(&mut self, now_ns: u64, alerts: &mut Vec<Alert>) {
        let config = &self.config;
        for edge in self.edges.values_mut() {
            while now_ns.saturating_sub(edge.window_start_ns) >= self.window_ns {
                let bytes = std::mem::take(&mut edge.bytes);
                let spike = edge.windows >= config.warmup_windows
                    && bytes >= config.min_bytes
                    && bytes as f64 >= config.factor * edge.baseline;
                if spike {
                    alerts.push(alert(config, edge, bytes, now_ns));
                } else {
                    // A spike stays out of the average, so a sustained
                    // transfer keeps standing out.
                    edge.baseline = if edge.windows == 0 {
                        bytes as f64
                    } else {
                        ALPHA * bytes as f64 + (1.0 - ALPHA) * edge.baseline
                    };
                    edge.windows = edge.windows.saturating_add(1);
                }
                edge.quiet_windows = if bytes == 0 {
                    edge.quiet_windows + 1
                } else {
                    0
                };
                edge.window_start_ns += self.window_ns;
            }
        }
        // An edge silent for many windows has a baseline of almost nothing
        // left: forget it rather than keep every edge ever seen.
        self.edges.retain(|_, edge| edge.quiet_windows < 20);
    }
}

fn alert(config: &TrafficSpike, edge: &Edge, bytes: u64, now_ns: u64) -> Alert {
    let factor = bytes as f64 / edge.baseline.max(1.0);
    Alert {
        capture: None,
        time: clock::rfc3339_ms(now_ns),
        kind: "traffic_spike",
        severity: Severity::Warning,
        summary: format!(
            "{} sent {bytes} bytes to {} within {}, {factor:.0}x its usual",
            Alert::end_name(&edge.source),
            Alert::end_name(&edge.destination),
            humantime::format_duration(config.window)
        ),
        evidence: json!({
            "bytes": bytes,
            "baseline_bytes": edge.baseline,
            "factor": factor,
            "windows_of_history": edge.windows,
            "window_seconds": config.window.as_secs_f64(),
        }),
        source: edge.source.clone(),
        destination: Some(edge.destination.clone()),
    }
}

impl Detector for SpikeDetector {
    fn traffic(&mut self, traffic: &Traffic<'_>, now_ns: u64) {
        self.observe(
            traffic.source,
            traffic.destination,
            traffic.new_bytes,
            now_ns,
        );
    }

    fn end_of_poll(&mut self, poll: &PollEnd<'_>, found: &mut Findings) {
        self.check(poll.now_ns, &mut found.alerts);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::docker::Directory;

    const WINDOW: u64 = 1_000_000_000;

    #[test]
    fn a_window_far_above_the_edges_average_alerts_once_warm() {
        let mut detector = SpikeDetector::new(&TrafficSpike {
            enabled: true,
            window: Duration::from_secs(1),
            factor: 10.0,
            min_bytes: 10_000,
            warmup_windows: 3,
        });
        let end = |ip: &str| Directory::default().by_address(ip.parse().expect("ip"));
        let (a, b) = (end("10.0.0.2"), end("10.0.0.3"));
        let mut alerts = Vec::new();
        // Three ordinary windows of 2,000 bytes, then 50,000.
        for (window, bytes) in [2_000, 2_000, 2_000, 50_000, 2_000].into_iter().enumerate() {
            let start = window as u64 * WINDOW;
            detector.observe(&a, &b, bytes, start + 1);
            detector.check(start + WINDOW + 1, &mut alerts);
            assert_eq!(alerts.len(), usize::from(window >= 3), "window {window}");
        }
        assert_eq!(alerts[0].evidence["bytes"], 50_000);
        assert_eq!(alerts[0].evidence["baseline_bytes"], 2_000.0);
    }

    #[test]
    fn a_spike_below_the_floor_is_quiet() {
        let mut detector = SpikeDetector::new(&TrafficSpike {
            enabled: true,
            window: Duration::from_secs(1),
            factor: 2.0,
            min_bytes: 1_000_000,
            warmup_windows: 1,
        });
        let end = |ip: &str| Directory::default().by_address(ip.parse().expect("ip"));
        let (a, b) = (end("10.0.0.2"), end("10.0.0.3"));
        let mut alerts = Vec::new();
        for (window, bytes) in [100, 90_000].into_iter().enumerate() {
            let start = window as u64 * WINDOW;
            detector.observe(&a, &b, bytes, start + 1);
            detector.check(start + WINDOW + 1, &mut alerts);
        }
        assert!(alerts.is_empty());
    }
}
