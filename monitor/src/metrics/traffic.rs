//! The traffic series, and who the containers named in them are.

use std::sync::{Arc, Mutex};

use super::{Collector, Exposition, Kind};
use crate::{
    series::{pairs, FlowCounts, TrafficSeries, CONNECTION_LABEL_NAMES, FLOW_LABEL_NAMES},
    sync::lock,
};

/// `crossmon_flow_{packets,bytes}_total`, `crossmon_connections_total`,
/// the series counts, and `crossmon_container_{info,posture}` of every
/// container that may be named in a series. Read under one lock: the
/// series and the counts of them are one moment.
pub struct TrafficCollector {
    pub traffic: Arc<Mutex<TrafficSeries>>,
}

impl Collector for TrafficCollector {
    fn collect(&self, out: &mut Exposition) {
        let traffic = lock(&self.traffic);
        let mut series = out.family(
            "crossmon_series",
            "Series of each traffic metric family (capped by --max-series).",
            Kind::Gauge,
        );
        for (metric, n) in traffic.series_counts() {
            series.sample(&[("metric", metric)], n);
        }
        let mut dropped = out.family(
            "crossmon_series_dropped_total",
            "Label combinations refused by the series cap and counted in the `other` series instead.",
            Kind::Counter,
        );
        for (metric, n) in traffic.dropped() {
            dropped.sample(&[("metric", metric)], n);
        }
        containers(&traffic, out);
        type Count = fn(&FlowCounts) -> u64;
        let flow_families: [(&str, &str, Count); 2] = [
            (
                "crossmon_flow_packets_total",
                "Packets between two ends, counted once where they entered the host.",
                |c| c.packets,
            ),
            (
                "crossmon_flow_bytes_total",
                "Bytes of IP packets (IP header included) between two ends.",
                |c| c.bytes,
            ),
        ];
        for (name, help, value) in flow_families {
            let mut family = out.family(name, help, Kind::Counter);
            for (labels, counts) in traffic.flow_series() {
                family.sample(&pairs(FLOW_LABEL_NAMES, labels.values()), value(counts));
            }
        }
        let mut connections = out.family(
            "crossmon_connections_total",
            "TCP connection attempts by result: established (SYN-ACK), refused (RST), unanswered.",
            Kind::Counter,
        );
        for (labels, count) in traffic.connection_series() {
            connections.sample(&pairs(CONNECTION_LABEL_NAMES, labels.values()), *count);
        }
    }
}

/// Info and posture of every container that may be named in a series;
/// those labelled `crossmon.metrics=off` are left out.
fn containers(traffic: &TrafficSeries, out: &mut Exposition) {
    let shown = || traffic.known_containers().filter(|c| !c.metrics_off());
    let mut info = out.family(
        "crossmon_container_info",
        "A container on each of its networks; always 1. Join on `container`.",
        Kind::Gauge,
    );
    for container in shown() {
        let networks: Vec<(&str, String)> = if container.endpoints.is_empty() {
            vec![(container.network_mode.as_str(), String::new())]
        } else {
            container
                .endpoints
                .iter()
                .map(|e| {
                    let ip = e.ip.or(e.ipv6).map(|ip| ip.to_string());
                    (e.network.as_str(), ip.unwrap_or_default())
                })
                .collect()
        };
        for (network, ip) in &networks {
            info.sample(
                &[
                    ("container", &container.name),
                    ("container_id", container.short_id()),
                    ("image", &container.image),
                    (
                        "compose_project",
                        container.compose_project.as_deref().unwrap_or_default(),
                    ),
                    (
                        "compose_service",
                        container.compose_service.as_deref().unwrap_or_default(),
                    ),
                    ("network", network),
                    ("ip", ip),
                ],
                1u64,
            );
        }
    }
    let mut posture = out.family(
        "crossmon_container_posture",
        "Posture facts of a container: 1 when the check holds (privileged, runs_as_root, cap_net_raw, ...).",
        Kind::Gauge,
    );
    for container in shown() {
        for (check, holds) in container.posture.checks() {
            posture.sample(
                &[("container", &container.name), ("check", check)],
                u64::from(holds),
            );
        }
    }
}
