//! Families built at scrape time from the agent's current state: who the
//! containers are, how the agent and its programs are doing.

use std::sync::Arc;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::{
    alert::Severity,
    datapath::{KernelCounters, ProgramRunStats},
    detect::ProtocolLabels,
    docker::{Container, EngineInfo},
    event_log::EventTotals,
};

/// What the agent knows at the moment of a scrape.
pub struct AgentSnapshot {
    pub attached_interfaces: usize,
    pub flows: usize,
    pub flow_map_entries: usize,
    pub flow_map_capacity: u32,
    pub flows_evicted: u64,
    pub kernel: KernelCounters,
    pub events: EventTotals,
    /// `None` with `--no-docker`: the gauge is not exported then.
    pub docker_up: Option<bool>,
    pub engine: Option<EngineInfo>,
    /// `None` unless `kernel.bpf_stats_enabled` is on.
    pub programs: Option<Vec<ProgramRunStats>>,
    pub containers: Vec<Arc<Container>>,
    pub series: [(&'static str, usize); 2],
    /// Connections by (source, destination, protocol, encrypted).
    pub protocols: Vec<(ProtocolLabels, u64)>,
    /// Alerts raised: (kind, severity, source, count).
    pub alerts: Vec<(&'static str, Severity, String, u64)>,
}

pub(crate) type Row = (Vec<(&'static str, String)>, f64);

fn family(name: &str, help: &str, kind: MetricType, rows: Vec<Row>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    for (labels, value) in rows {
        let mut metric = Metric::from_label(
            labels
                .into_iter()
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.to_owned());
                    pair.set_value(value);
                    pair
                })
                .collect(),
        );
        if kind == MetricType::COUNTER {
            let mut counter = Counter::default();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        family.mut_metric().push(metric);
    }
    family
}

pub(crate) fn gauge(name: &str, help: &str, rows: Vec<Row>) -> MetricFamily {
    family(name, help, MetricType::GAUGE, rows)
}

pub(crate) fn counter(name: &str, help: &str, rows: Vec<Row>) -> MetricFamily {
    family(name, help, MetricType::COUNTER, rows)
}

fn single(value: f64) -> Vec<Row> {
    vec![(Vec::new(), value)]
}

fn flag(value: bool) -> f64 {
    if value {
        1.0
    } else {
        0.0
    }
}

impl AgentSnapshot {
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut families = vec![
            gauge(
                "crossmon_build_info",
                "The running crossmon build; always 1.",
                vec![(
                    vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
                    1.0,
                )],
            ),
            gauge(
                "crossmon_attached_interfaces",
                "Container veths the programs are attached to.",
                single(self.attached_interfaces as f64),
            ),
            gauge(
                "crossmon_flows",
                "Flows the agent currently tracks (active or idle within --idle-timeout).",
                single(self.flows as f64),
            ),
            gauge(
                "crossmon_flow_map_entries",
                "Entries in the kernel flow map at the latest read.",
                single(self.flow_map_entries as f64),
            ),
            gauge(
                "crossmon_flow_map_capacity",
                "Entries the kernel flow map holds before evicting (--flow-capacity).",
                single(f64::from(self.flow_map_capacity)),
            ),
            counter(
                "crossmon_flows_evicted_total",
                "Kernel flow entries evicted by a full map; their counts up to the previous read are kept.",
                single(self.flows_evicted as f64),
            ),
            counter(
                "crossmon_packets_total",
                "IP packets the programs counted into flows.",
                single(self.kernel.packets as f64),
            ),
            counter(
                "crossmon_frames_skipped_total",
                "Frames passed on without a flow: not IP, or malformed.",
                vec![
                    (vec![("reason", "not_ip".into())], self.kernel.non_ip as f64),
                    (
                        vec![("reason", "malformed".into())],
                        self.kernel.malformed as f64,
                    ),
                    (
                        vec![("reason", "map_update_failed".into())],
                        self.kernel.flow_update_failed as f64,
                    ),
                ],
            ),
            counter(
                "crossmon_events_total",
                "Events received from the kernel ring buffer, by kind.",
                [
                    ("new_flow", self.events.new_flow),
                    ("payload", self.events.payload),
                    ("arp", self.events.arp),
                    ("packet_sample", self.events.packet_sample),
                    ("undecodable", self.events.undecodable),
                ]
                .into_iter()
                .map(|(kind, n)| (vec![("kind", kind.to_owned())], n as f64))
                .collect(),
            ),
            counter(
                "crossmon_events_lost_total",
                "Events the kernel could not queue because the ring buffer was full, by kind.",
                [
                    ("new_flow", self.kernel.lost_new_flow),
                    ("payload", self.kernel.lost_payload),
                    ("arp", self.kernel.lost_arp),
                    ("packet_sample", self.kernel.lost_packet_sample),
                ]
                .into_iter()
                .map(|(kind, n)| (vec![("kind", kind.to_owned())], n as f64))
                .collect(),
            ),
            gauge(
                "crossmon_docker_up",
                "Whether the Docker engine answers (1) or not (0); absent with --no-docker.",
                self.docker_up.map(flag).map(single).unwrap_or_default(),
            ),
            gauge(
                "crossmon_series",
                "Series of each traffic metric family (capped by --max-series).",
                self.series
                    .iter()
                    .map(|(metric, n)| (vec![("metric", (*metric).to_owned())], *n as f64))
                    .collect(),
            ),
        ];
        families.push(counter(
            "crossmon_connection_protocols_total",
            "Connections by the protocol their first payload bytes show, and whether they were encrypted.",
            self.protocols
                .iter()
                .map(|((source, destination, protocol, encrypted), n)| {
                    (
                        vec![
                            ("source", source.clone()),
                            ("destination", destination.clone()),
                            ("protocol", (*protocol).to_owned()),
                            ("encrypted", encrypted.to_string()),
                        ],
                        *n as f64,
                    )
                })
                .collect(),
        ));
        families.push(counter(
            "crossmon_alerts_total",
            "Alerts raised (after de-duplication), by kind, severity and source.",
            self.alerts
                .iter()
                .map(|(kind, severity, source, n)| {
                    (
                        vec![
                            ("kind", (*kind).to_owned()),
                            ("severity", severity.name().to_owned()),
                            ("source", source.clone()),
                        ],
                        *n as f64,
                    )
                })
                .collect(),
        ));
        if let Some(engine) = &self.engine {
            families.push(gauge(
                "crossmon_docker_engine_info",
                "The Docker engine crossmon follows; always 1.",
                vec![(
                    vec![
                        ("version", engine.version.clone()),
                        ("api_version", engine.api_version.clone()),
                    ],
                    1.0,
                )],
            ));
        }
        if let Some(programs) = &self.programs {
            families.extend(self.program_families(programs));
        }
        families.extend(self.container_families());
        families
    }

    fn program_families(&self, programs: &[ProgramRunStats]) -> [MetricFamily; 2] {
        let rows = |value: &dyn Fn(&ProgramRunStats) -> f64| {
            programs
                .iter()
                .map(|p| (vec![("program", p.name.to_owned())], value(p)))
                .collect()
        };
        [
            counter(
                "crossmon_program_run_seconds_total",
                "Time the kernel spent in each program (kernel.bpf_stats_enabled=1 only).",
                rows(&|p| p.run_time.as_secs_f64()),
            ),
            counter(
                "crossmon_program_runs_total",
                "Runs of each program (kernel.bpf_stats_enabled=1 only).",
                rows(&|p| p.run_count as f64),
            ),
        ]
    }

    /// Info and posture of every container that may be named in a series;
    /// those labelled `crossmon.metrics=off` are left out.
    fn container_families(&self) -> [MetricFamily; 2] {
        let shown = || self.containers.iter().filter(|c| !c.metrics_off());
        let info = shown()
            .flat_map(|container| {
                let networks: Vec<(String, String)> = if container.endpoints.is_empty() {
                    vec![(container.network_mode.clone(), String::new())]
                } else {
                    container
                        .endpoints
                        .iter()
                        .map(|e| {
                            let ip = e.ip.or(e.ipv6).map(|ip| ip.to_string());
                            (e.network.clone(), ip.unwrap_or_default())
                        })
                        .collect()
                };
                networks.into_iter().map(move |(network, ip)| {
                    (
                        vec![
                            ("container", container.name.clone()),
                            ("container_id", container.short_id().to_owned()),
                            ("image", container.image.clone()),
                            (
                                "compose_project",
                                container.compose_project.clone().unwrap_or_default(),
                            ),
                            (
                                "compose_service",
                                container.compose_service.clone().unwrap_or_default(),
                            ),
                            ("network", network),
                            ("ip", ip),
                        ],
                        1.0,
                    )
                })
            })
            .collect();
        let posture = shown()
            .flat_map(|container| {
                container
                    .posture
                    .checks()
                    .into_iter()
                    .map(|(check, value)| {
                        (
                            vec![
                                ("container", container.name.clone()),
                                ("check", check.to_owned()),
                            ],
                            flag(value),
                        )
                    })
            })
            .collect();
        [
            gauge(
                "crossmon_container_info",
                "A container on each of its networks; always 1. Join on `container`.",
                info,
            ),
            gauge(
                "crossmon_container_posture",
                "Posture facts of a container: 1 when the check holds (privileged, runs_as_root, cap_net_raw, ...).",
                posture,
            ),
        ]
    }
}
