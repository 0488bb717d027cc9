//! The HTTP API: `/api/v1/...`, `/metrics`, `/healthz` and the live map
//! (`/`), served from what the pipeline's stages publish, never from their
//! working state.

pub mod graph;
mod ui;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use axum::{
    extract::{RawQuery, State},
    routing::get,
    Json, Router,
};
use monitor_common::ip_proto;
use serde::Serialize;

use crate::{
    alert::{Alert, AlertSink},
    capture::{CaptureRequest, Captures, Target},
    clock,
    datapath::Event,
    detect::RecentVerdicts,
    dns::{DnsLog, DnsRecord},
    docker::{FlowEnd, Posture, Snapshot},
    event_log::EventLog,
    flows::{PollStatus, TableReader},
    metrics::{text::CONTENT_TYPE, Metrics},
    model::{key_addrs, mac_text, protocol_name, tcp_flag_names, FlowRecord},
    series::{handshake_rtt_ns, Retransmits},
    sync::{lock, Published},
};

/// Everything the API reads: what each stage publishes for readers.
pub struct ReadModel {
    /// The poller's status, swapped once per poll.
    pub poll: Published<PollStatus>,
    /// The containers and the veths watched, swapped by the link follower.
    pub docker: Published<Snapshot>,
    /// Whether the Docker engine answers (false with `--no-docker`).
    pub docker_up: Arc<AtomicBool>,
    /// The poller's flow table, read-only.
    pub flows: TableReader,
    /// The event consumer's totals and latest events.
    pub events: Arc<EventLog>,
    /// The alert sink's latest alerts.
    pub alerts: Arc<Mutex<AlertSink>>,
    /// The detectors' payload verdicts of recent connections, swapped
    /// after a poll that changed them.
    pub verdicts: Published<RecentVerdicts>,
    /// The DNS tracker's recent records.
    pub dns: Arc<DnsLog>,
    /// The kernel's retransmissions by flow, swapped after each poll.
    pub retransmits: Published<Retransmits>,
    /// The collectors of `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The running packet captures, started by `/api/v1/capture`.
    pub captures: Arc<Captures>,
}

type Model = State<Arc<ReadModel>>;

pub fn router(model: ReadModel) -> Router {
    let state = Arc::new(model);
    Router::new()
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/events", get(events))
        .route("/api/v1/dns", get(dns))
        .route("/api/v1/containers", get(containers))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/capture", get(capture))
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::stylesheet))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// One flow in the API. Field names are a contract.
#[derive(Serialize)]
pub struct FlowJson {
    pub src_ip: String,
    pub dst_ip: String,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: &'static str,
    pub ip_version: u8,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub tcp_flags: Vec<&'static str>,
    pub syn: u32,
    pub syn_ack: u32,
    pub rst: u32,
    pub fin: u32,
    /// TCP connections the flow opened as their client: more than one
    /// where the client came back on the same ports while the flow was
    /// kept.
    pub connections: u32,
    /// TCP clients: first SYN to the answer's first SYN-ACK, as seen on
    /// the veths; absent until both were seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_rtt_ms: Option<f64>,
    /// Segments this flow's sender retransmitted
    /// (`tcp:tcp_retransmit_skb`); absent where that tracepoint is not
    /// attached, and on other protocols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u64>,
    /// `from_container` or `to_container`: where the packets were counted.
    pub direction: &'static str,
    /// Interface where the flow was counted: a host-side veth, or a
    /// macvlan or ipvlan container's own interface in its namespace.
    pub interface: Option<String>,
    pub src: FlowEnd,
    pub dst: FlowEnd,
}

impl FlowJson {
    pub fn new(
        record: &FlowRecord,
        interface: Option<String>,
        (src_end, dst_end): (FlowEnd, FlowEnd),
    ) -> Self {
        let (src, dst) = key_addrs(&record.key);
        let stats = &record.stats;
        Self {
            src_ip: src.to_string(),
            dst_ip: dst.to_string(),
            src_port: record.key.src_port,
            dst_port: record.key.dst_port,
            protocol: protocol_name(record.key.protocol),
            ip_version: record.key.ip_version,
            packets: stats.packets,
            bytes: stats.bytes,
            first_seen: clock::rfc3339_ms(stats.first_seen_ns),
            last_seen: clock::rfc3339_ms(stats.last_seen_ns),
            tcp_flags: tcp_flag_names(stats.tcp_flags),
            syn: stats.syn,
            syn_ack: stats.syn_ack,
            rst: stats.rst,
            fin: stats.fin,
            connections: stats.connections,
            handshake_rtt_ms: None,
            retransmits: None,
            direction: stats.direction().name(),
            interface,
            src: src_end,
            dst: dst_end,
        }
    }
}

async fn metrics(State(state): Model) -> axum::response::Response {
    use axum::{http::StatusCode, response::IntoResponse as _};
    // Rendering thousands of series is CPU work: off the async workers.
    let rendered = tokio::task::spawn_blocking(move || state.metrics.render()).await;
    match rendered {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        // A scrape that fails says so: Prometheus marks the target down
        // instead of recording a partial picture.
        Err(join) => {
            tracing::error!("rendering /metrics: {join}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A packet capture of one container, streamed as pcapng (chunked) until
/// its `duration` or `count` is reached or the client goes away; see
/// `capture::CaptureRequest::from_query` for the parameters. A request that
/// cannot be met gets one line: 400 when it names what does not exist, 409
/// when the veths are busy or too many captures run.
async fn capture(State(state): Model, RawQuery(query): RawQuery) -> axum::response::Response {
    use axum::{http::StatusCode, response::IntoResponse as _};
    let request = match CaptureRequest::from_query(query.as_deref().unwrap_or_default()) {
        Ok(request) => request,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    let started =
        Target::resolve(&state.docker.load(), &request).and_then(|t| state.captures.start(t));
    let capture = match started {
        Ok(capture) => capture,
        Err(err) => {
            let status = if err.is_bad_request() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::CONFLICT
            };
            return (status, format!("{err}\n")).into_response();
        }
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(capture.stream(sender));
    let body = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), receiver))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-pcapng")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Recent DNS queries with their answers, newest first.
async fn dns(State(state): Model) -> Json<Vec<DnsRecord>> {
    let mut records = state.dns.recent();
    records.reverse();
    Json(records)
}

/// Recent alerts, newest first.
async fn alerts(State(state): Model) -> Json<Vec<Alert>> {
    Json(lock(&state.alerts).recent().cloned().collect())
}

async fn flows(State(state): Model) -> Json<Vec<FlowJson>> {
    let docker = state.docker.load();
    let retransmits = state.retransmits.load();
    Json(state.flows.map(|record, reverse| {
        let interface = docker.interfaces.get(&record.stats.ifindex).cloned();
        let mut json = FlowJson::new(
            &record,
            interface,
            docker.directory.ends(&record.key, &record.stats),
        );
        json.handshake_rtt_ms =
            handshake_rtt_ns(&record, reverse.as_ref()).map(|ns| ns as f64 / 1e6);
        if record.key.protocol == ip_proto::TCP {
            json.retransmits = retransmits.of_flow(&record.key);
        }
        json
    }))
}

/// Who talked to whom in the last `window` seconds (`?window=SECONDS`,
/// 300 by default): the live map's data.
async fn graph(State(state): Model, RawQuery(query): RawQuery) -> axum::response::Response {
    use axum::{http::StatusCode, response::IntoResponse as _};
    let window_seconds = match graph::window_of(query.as_deref()) {
        Ok(seconds) => seconds,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    // Folding up to the whole flow table is CPU work: off the async workers.
    let built = tokio::task::spawn_blocking(move || {
        let now_ns = clock::monotonic_ns();
        let window_ns = window_seconds.saturating_mul(1_000_000_000);
        let mut flows = state
            .flows
            .filter_map(|record| graph::in_window(&record, now_ns, window_ns).then_some(record));
        // The answers of a connection may have been seen last before the
        // window began: its outcome needs them.
        let keys: crate::flows::ByFlow<()> = flows.iter().map(|r| (r.key, ())).collect();
        let answers = state.flows.filter_map(|record| {
            (!keys.contains_key(&record.key) && keys.contains_key(&record.key.reversed()))
                .then_some(record)
        });
        flows.extend(answers);
        let since = chrono::Utc::now()
            - chrono::Duration::seconds(i64::try_from(window_seconds).unwrap_or(i64::MAX));
        // Copied, so the detectors raising alerts do not wait on the graph.
        let alerts: Vec<Alert> = lock(&state.alerts)
            .recent()
            .filter(|alert| {
                chrono::DateTime::parse_from_rfc3339(&alert.time).map_or(true, |t| t >= since)
            })
            .cloned()
            .collect();
        let alerts: Vec<&Alert> = alerts.iter().collect();
        graph::graph(&graph::Inputs {
            flows: &flows,
            window_seconds,
            now_ns,
            snapshot: &state.docker.load(),
            verdicts: &state.verdicts.load(),
            alerts: &alerts,
        })
    })
    .await;
    match built {
        Ok(graph) => Json(graph).into_response(),
        Err(join) => {
            tracing::error!("building /api/v1/graph: {join}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "building the graph failed; see the agent's log",
            )
                .into_response()
        }
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    attached_interfaces: usize,
    flows: usize,
    docker_up: bool,
    docker_engine: Option<crate::docker::EngineInfo>,
    kernel: crate::datapath::KernelCounters,
    events: crate::event_log::EventTotals,
}

async fn healthz(State(state): Model) -> Json<Health> {
    let (poll, docker) = (state.poll.load(), state.docker.load());
    Json(Health {
        status: "ok",
        attached_interfaces: docker.interfaces.len(),
        flows: poll.flows,
        docker_up: state.docker_up.load(Ordering::Relaxed),
        docker_engine: docker.inventory.as_ref().map(|i| i.engine.clone()),
        kernel: poll.kernel,
        events: state.events.totals(),
    })
}

/// An event in the API. Payload bytes are never served: only their length.
#[derive(Serialize)]
pub struct EventJson {
    pub kind: &'static str,
    pub direction: &'static str,
    pub ifindex: u32,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowKeyJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_len: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arp: Option<ArpJson>,
}

#[derive(Serialize)]
pub struct FlowKeyJson {
    pub src_ip: String,
    pub dst_ip: String,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: &'static str,
}

#[derive(Serialize)]
pub struct ArpJson {
    pub operation: Option<u16>,
    pub eth_src: String,
    pub sender_mac: Option<String>,
    pub sender_ip: Option<String>,
    pub target_mac: Option<String>,
    pub target_ip: Option<String>,
}

impl FlowKeyJson {
    fn new(key: &monitor_common::FlowKey) -> Self {
        let (src, dst) = key_addrs(key);
        Self {
            src_ip: src.to_string(),
            dst_ip: dst.to_string(),
            src_port: key.src_port,
            dst_port: key.dst_port,
            protocol: protocol_name(key.protocol),
        }
    }
}

impl EventJson {
    pub fn new(event: &Event) -> Self {
        let (kind, seen) = match event {
            Event::NewFlow { seen, .. } => ("new_flow", seen),
            Event::Payload { seen, .. } => ("payload", seen),
            Event::Arp { seen, .. } => ("arp", seen),
            Event::PacketSample { seen, .. } => ("packet_sample", seen),
            Event::Dns { seen, .. } => ("dns", seen),
        };
        let mut json = Self {
            kind,
            direction: seen.direction.name(),
            ifindex: seen.ifindex,
            timestamp: clock::rfc3339_ms(seen.timestamp_ns),
            flow: None,
            payload_len: None,
            captured_len: None,
            arp: None,
        };
        match event {
            Event::NewFlow { key, .. } => json.flow = Some(FlowKeyJson::new(key)),
            Event::Payload {
                key,
                payload_len,
                data,
                ..
            }
            | Event::Dns {
                key,
                payload_len,
                data,
                ..
            } => {
                json.flow = Some(FlowKeyJson::new(key));
                json.payload_len = Some(*payload_len);
                json.captured_len = Some(data.len());
            }
            Event::Arp { eth_src, arp, .. } => {
                json.arp = Some(ArpJson {
                    operation: arp.operation,
                    eth_src: mac_text(*eth_src),
                    sender_mac: arp.sender_mac.map(mac_text),
                    sender_ip: arp.sender_ip.map(|ip| ip.to_string()),
                    target_mac: arp.target_mac.map(mac_text),
                    target_ip: arp.target_ip.map(|ip| ip.to_string()),
                });
            }
            Event::PacketSample {
                frame_len, data, ..
            } => {
                json.payload_len = Some(*frame_len);
                json.captured_len = Some(data.len());
            }
        }
        json
    }
}

async fn events(State(state): Model) -> Json<Vec<EventJson>> {
    Json(state.events.recent().iter().map(EventJson::new).collect())
}

/// A container as crossmon knows it.
#[derive(Serialize)]
pub struct ContainerJson {
    pub id: String,
    pub name: String,
    pub image: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    /// `bridge`, a network name, `host`, `none`, `container:<id>`.
    pub network_mode: String,
    /// True when every endpoint's veth is watched.
    pub attached: bool,
    /// Why some of its traffic is not seen: `host`, `macvlan`, `ipvlan`,
    /// `container`, `none` (`crossmon_unwatched_containers`).
    pub unwatched: Option<&'static str>,
    pub networks: Vec<ContainerNetworkJson>,
    pub posture: Posture,
}

#[derive(Serialize)]
pub struct ContainerNetworkJson {
    pub network: String,
    pub ip: Option<String>,
    pub ipv6: Option<String>,
    pub mac: Option<String>,
    /// Host-side veth, found from inside the container's namespace; for a
    /// macvlan or ipvlan endpoint, the id of its own interface there.
    pub ifindex: Option<u32>,
    pub interface: Option<String>,
    pub attached: bool,
    /// `com.docker.network.bridge.enable_icc` of the network: whether
    /// containers on it may talk to each other.
    pub inter_container_communication: Option<bool>,
}

async fn containers(State(state): Model) -> Json<Vec<ContainerJson>> {
    let docker = state.docker.load();
    let Some(inventory) = &docker.inventory else {
        return Json(Vec::new());
    };
    let attached = &docker.interfaces;
    let list = inventory
        .containers
        .values()
        .map(|container| {
            let networks: Vec<ContainerNetworkJson> = container
                .endpoints
                .iter()
                .map(|endpoint| {
                    let interface = endpoint
                        .host_ifindex
                        .and_then(|i| attached.get(&i).cloned());
                    let network = inventory.networks.get(&endpoint.network_id);
                    ContainerNetworkJson {
                        network: endpoint.network.clone(),
                        ip: endpoint.ip.map(|ip| ip.to_string()),
                        ipv6: endpoint.ipv6.map(|ip| ip.to_string()),
                        mac: endpoint.mac.clone(),
                        ifindex: endpoint.host_ifindex,
                        attached: interface.is_some(),
                        interface,
                        inter_container_communication: network
                            .map(|n| n.inter_container_communication),
                    }
                })
                .collect();
            ContainerJson {
                id: container.short_id().to_owned(),
                name: container.name.clone(),
                image: container.image.clone(),
                compose_project: container.compose_project.clone(),
                compose_service: container.compose_service.clone(),
                network_mode: container.network_mode.clone(),
                attached: !networks.is_empty() && networks.iter().all(|n| n.attached),
                unwatched: container.unwatched(&inventory.networks, |ifindex| {
                    attached.contains_key(&ifindex)
                }),
                networks,
                posture: container.posture.clone(),
            }
        })
        .collect();
    Json(list)
}
