//! `GET /api/v1/graph`: who talked to whom in a recent window, for the
//! live map. Nodes are the ends of flows (containers by id; gateways,
//! host, external and unknown addresses as such), edges the connections
//! between two ends folded together, from the side that opened them to the
//! side that answered. Bounded: at most [`MAX_EDGES`] edges (the busiest),
//! [`MAX_FLOWS_PER_EDGE`] connections listed per edge, [`MAX_NODES`] nodes
//! and [`MAX_ALERTS`] alerts; `truncated` counts what was left out.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use monitor_common::{ip_proto, FlowKey};
use serde::Serialize;

use crate::{
    alert::Alert,
    clock,
    detect::{PayloadVerdict, RecentVerdicts},
    docker::{EndKind, FlowEnd, Posture, Snapshot},
    flows::{outcome, ByFlow},
    model::{key_addrs, protocol_name, FlowRecord},
};

/// The window when the query names none, and the longest one served.
pub const DEFAULT_WINDOW_SECONDS: u64 = 300;
pub const MAX_WINDOW_SECONDS: u64 = 86_400;
pub const MAX_EDGES: usize = 500;
pub const MAX_FLOWS_PER_EDGE: usize = 50;
/// Ports listed per edge.
pub const MAX_PORTS_PER_EDGE: usize = 32;
/// Nodes beyond the ends of the edges kept: idle containers, ends named
/// only by alerts.
pub const MAX_NODES: usize = 1_000;
pub const MAX_ALERTS: usize = 200;

#[derive(Debug, Serialize)]
pub struct Graph {
    pub window_seconds: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Newest first.
    pub alerts: Vec<GraphAlert>,
    pub truncated: Truncated,
}

/// What the bounds left out.
#[derive(Debug, Default, Serialize)]
pub struct Truncated {
    pub edges: usize,
    pub flows: usize,
    pub nodes: usize,
    pub alerts: usize,
}

#[derive(Debug, Serialize)]
pub struct Node {
    /// `container:<short id>`, `gateway:<ip>`, `host`, `external:<ip>`,
    /// `unknown:<ip>`.
    pub id: String,
    pub kind: EndKind,
    pub name: Option<String>,
    pub image: Option<String>,
    pub network: Option<String>,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    pub ip: Option<String>,
    /// Containers only.
    pub posture: Option<Posture>,
    /// Alerts in the window naming it, as source or destination.
    pub alerts: usize,
}

#[derive(Debug, Serialize)]
pub struct Edge {
    /// The node that opened the connections, and the one that answered.
    pub source: String,
    pub target: String,
    /// Both directions.
    pub bytes: u64,
    pub packets: u64,
    /// `tcp`, `udp`, `icmp`, ...
    pub protocols: Vec<&'static str>,
    /// What the payload showed (`http`, `tls`, ...), where it was judged.
    pub app_protocols: Vec<&'static str>,
    /// Destination ports (TCP, UDP), lowest first.
    pub ports: Vec<u16>,
    /// The most frequent outcome of the connections' openings, or
    /// `unknown` when crossmon saw none open.
    pub outcome: &'static str,
    /// Openings by outcome.
    pub outcomes: BTreeMap<&'static str, usize>,
    /// A connection's payload was judged and was not encrypted.
    pub cleartext: bool,
    /// Alerts in the window naming both ends.
    pub alerts: usize,
    /// The busiest connections first.
    pub flows: Vec<EdgeFlow>,
}

/// One connection of an edge: its client flow and the answers together.
#[derive(Debug, Serialize)]
pub struct EdgeFlow {
    pub src_ip: String,
    pub dst_ip: String,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: &'static str,
    pub bytes: u64,
    pub packets: u64,
    pub last_seen: String,
    /// `established`, `answered`, `refused`, `unanswered`, or `unknown`
    /// (opened before crossmon looked, or not decided yet).
    pub outcome: &'static str,
    /// `encrypted`, `cleartext`, or `unknown` (no payload judged).
    pub encryption: &'static str,
    pub app_protocol: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct GraphAlert {
    pub time: String,
    pub kind: &'static str,
    pub severity: &'static str,
    pub summary: String,
    /// Node ids.
    pub source: String,
    pub destination: Option<String>,
}

/// What the graph is made from, as the stages published it.
pub struct Inputs<'a> {
    /// The flows seen in the window, and the reverses of those.
    pub flows: &'a [FlowRecord],
    pub window_seconds: u64,
    /// CLOCK_MONOTONIC.
    pub now_ns: u64,
    pub snapshot: &'a Snapshot,
    pub verdicts: &'a RecentVerdicts,
    /// The alerts of the window, newest first.
    pub alerts: &'a [&'a Alert],
}

/// The window a query asks for: `window=SECONDS`, between 1 and
/// [`MAX_WINDOW_SECONDS`].
pub fn window_of(query: Option<&str>) -> Result<u64, String> {
    let value = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("window="));
    let Some(value) = value else {
        return Ok(DEFAULT_WINDOW_SECONDS);
    };
    match value.parse::<u64>() {
        Ok(seconds) if (1..=MAX_WINDOW_SECONDS).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "window must be a number of seconds from 1 to {MAX_WINDOW_SECONDS}"
        )),
    }
}

/// Whether a flow belongs to the window: seen in its last `window_ns`.
pub fn in_window(record: &FlowRecord, now_ns: u64, window_ns: u64) -> bool {
    record.stats.last_seen_ns >= now_ns.saturating_sub(window_ns)
}

/// The node id of a flow end.
pub fn node_id(end: &FlowEnd) -> String {
    let ip = end.ip.map(|ip| ip.to_string()).unwrap_or_default();
    match end.kind {
        EndKind::Container => match (&end.id, &end.name) {
            (Some(id), _) => format!("container:{id}"),
            (None, Some(name)) => format!("container:{name}"),
            (None, None) => format!("container:{ip}"),
        },
        EndKind::Gateway => format!("gateway:{ip}"),
        EndKind::Host => "host".to_owned(),
        EndKind::External => format!("external:{ip}"),
        EndKind::Unknown => format!("unknown:{ip}"),
    }
}

/// One connection: its client flow (the side that opened it) and the
/// answers, either possibly missing from the window.
#[derive(Default)]
struct Connection {
    client: Option<FlowRecord>,
    server: Option<FlowRecord>,
}

/// The key of the client flow of the connection `record` belongs to.
fn client_key(record: &FlowRecord, reverse: Option<&FlowRecord>) -> FlowKey {
    if outcome::is_attempt(record, reverse) {
        return record.key;
    }
    if let Some(reverse) = reverse {
        if outcome::is_attempt(reverse, Some(record)) {
            return reverse.key;
        }
    }
    // Opened before crossmon looked: the client is the side sending to
    // the lower port (the same guess the cleartext detector makes).
    let (ports, reversed) = (
        (record.key.src_port, record.key.dst_port),
        (record.key.dst_port, record.key.src_port),
    );
    if ports.1 < ports.0 || (ports == reversed && record.key.src_addr <= record.key.dst_addr) {
        record.key
    } else {
        record.key.reversed()
    }
}

/// Unicast: multicast and broadcast (neighbour discovery, mDNS) are no
/// one talking to anyone in particular.
fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified()),
    }
}

struct EdgeBuild {
    edge: Edge,
    ports: BTreeSet<u16>,
    protocols: BTreeSet<&'static str>,
    app_protocols: BTreeSet<&'static str>,
}

fn node_of(end: &FlowEnd) -> Node {
    Node {
        id: node_id(end),
        kind: end.kind,
        name: end.name.clone(),
        image: end.image.clone(),
        network: end.network.clone(),
        compose_project: end.compose_project.clone(),
        compose_service: end.compose_service.clone(),
        // The host has many addresses: its node shows none.
        ip: (end.kind != EndKind::Host)
            .then(|| end.ip.map(|ip| ip.to_string()))
            .flatten(),
        // A remote end's posture is known on its own node only.
        posture: end
            .container
            .as_ref()
            .filter(|c| !c.is_stand_in())
            .map(|c| c.posture.clone()),
        alerts: 0,
    }
}

fn encryption(verdict: Option<&PayloadVerdict>) -> &'static str {
    match verdict {
        Some(v) if v.encrypted => "encrypted",
        Some(_) => "cleartext",
        None => "unknown",
    }
}

/// Most frequent first; ties go to the first in this order.
const OUTCOME_ORDER: [&str; 5] = [
    "established",
    "answered",
    "refused",
    "unanswered",
    "unknown",
];

pub fn graph(inputs: &Inputs<'_>) -> Graph {
    let directory = &inputs.snapshot.directory;
    let by_key: ByFlow<FlowRecord> = inputs.flows.iter().map(|r| (r.key, *r)).collect();
    let window_ns = inputs.window_seconds.saturating_mul(1_000_000_000);

    // Flows into connections, by client flow.
    let mut connections: ByFlow<Connection> = ByFlow::default();
    for record in inputs.flows {
        if !in_window(record, inputs.now_ns, window_ns) {
            continue;
        }
        let (src, dst) = key_addrs(&record.key);
        if !is_unicast(src) || !is_unicast(dst) {
            continue;
        }
        let reverse = by_key.get(&record.key.reversed());
        let client = client_key(record, reverse);
        let connection = connections.entry(client).or_default();
        if client == record.key {
            connection.client = Some(*record);
        } else {
            connection.server = Some(*record);
        }
    }

    // Connections into edges.
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut edges: HashMap<(String, String), EdgeBuild> = HashMap::new();
    let mut flows_total: HashMap<(String, String), Vec<EdgeFlow>> = HashMap::new();
    for (client_key, connection) in &connections {
        let (source, destination) = match (&connection.client, &connection.server) {
            (Some(client), _) => directory.ends(&client.key, &client.stats),
            (None, Some(server)) => {
                let (src, dst) = directory.ends(&server.key, &server.stats);
                (dst, src)
            }
            (None, None) => continue,
        };
        let (source_id, target_id) = (node_id(&source), node_id(&destination));
        nodes
            .entry(source_id.clone())
            .or_insert_with(|| node_of(&source));
        nodes
            .entry(target_id.clone())
            .or_insert_with(|| node_of(&destination));
        let sides = [connection.client.as_ref(), connection.server.as_ref()];
        let bytes: u64 = sides.iter().flatten().map(|r| r.stats.bytes).sum();
        let packets: u64 = sides.iter().flatten().map(|r| r.stats.packets).sum();
        let last_seen = sides
            .iter()
            .flatten()
            .map(|r| r.stats.last_seen_ns)
            .max()
            .unwrap_or_default();
        let opened = connection
            .client
            .as_ref()
            .filter(|c| outcome::is_attempt(c, connection.server.as_ref()));
        let outcome = opened
            .and_then(|c| outcome::outcome(c, connection.server.as_ref(), false, inputs.now_ns))
            .map_or("unknown", outcome::Outcome::name);
        let verdict = inputs.verdicts.get(client_key);
        let protocol = protocol_name(client_key.protocol);
        let has_ports = matches!(client_key.protocol, ip_proto::TCP | ip_proto::UDP);
        let key = (source_id.clone(), target_id.clone());
        let build = edges.entry(key.clone()).or_insert_with(|| EdgeBuild {
            edge: Edge {
                source: source_id,
                target: target_id,
                bytes: 0,
                packets: 0,
                protocols: Vec::new(),
                app_protocols: Vec::new(),
                ports: Vec::new(),
                outcome: "unknown",
                outcomes: BTreeMap::new(),
                cleartext: false,
                alerts: 0,
                flows: Vec::new(),
            },
            ports: BTreeSet::new(),
            protocols: BTreeSet::new(),
            app_protocols: BTreeSet::new(),
        });
        build.edge.bytes += bytes;
        build.edge.packets += packets;
        build.protocols.insert(protocol);
        if has_ports {
            build.ports.insert(client_key.dst_port);
        }
        if opened.is_some() {
            *build.edge.outcomes.entry(outcome).or_default() += 1;
        }
        if let Some(verdict) = verdict {
            build.app_protocols.insert(verdict.protocol.name());
            build.edge.cleartext |= !verdict.encrypted;
        }
        let (src_ip, dst_ip) = key_addrs(client_key);
        flows_total.entry(key).or_default().push(EdgeFlow {
            src_ip: src_ip.to_string(),
            dst_ip: dst_ip.to_string(),
            src_port: client_key.src_port,
            dst_port: client_key.dst_port,
            protocol,
            bytes,
            packets,
            last_seen: clock::rfc3339_ms(last_seen),
            outcome,
            encryption: encryption(verdict),
            app_protocol: verdict.map(|v| v.protocol.name()),
        });
    }

    let mut truncated = Truncated::default();
    let mut edges: Vec<Edge> = edges
        .into_iter()
        .map(|(key, mut build)| {
            let mut flows = flows_total.remove(&key).unwrap_or_default();
            flows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.last_seen.cmp(&a.last_seen)));
            truncated.flows += flows.len().saturating_sub(MAX_FLOWS_PER_EDGE);
            flows.truncate(MAX_FLOWS_PER_EDGE);
            build.edge.flows = flows;
            build.edge.ports = build.ports.into_iter().take(MAX_PORTS_PER_EDGE).collect();
            build.edge.protocols = build.protocols.into_iter().collect();
            build.edge.app_protocols = build.app_protocols.into_iter().collect();
            build.edge.outcome = OUTCOME_ORDER
                .into_iter()
                .filter_map(|name| Some((name, *build.edge.outcomes.get(name)?)))
                .fold(None, |best: Option<(&str, usize)>, (name, n)| match best {
                    Some((_, most)) if most >= n => best,
                    _ => Some((name, n)),
                })
                .map_or("unknown", |(name, _)| name);
            build.edge
        })
        .collect();
    edges.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| (&a.source, &a.target).cmp(&(&b.source, &b.target)))
    });
    truncated.edges = edges.len().saturating_sub(MAX_EDGES);
    edges.truncate(MAX_EDGES);
    // Only the ends of the edges kept, then idle containers and ends named
    // by alerts while there is room.
    let mut kept: BTreeMap<String, Node> = BTreeMap::new();
    for edge in &edges {
        for id in [&edge.source, &edge.target] {
            if let Some(node) = nodes.remove(id) {
                kept.insert(id.clone(), node);
            }
        }
    }
    let mut extra: Vec<Node> = Vec::new();
    if let Some(inventory) = &inputs.snapshot.inventory {
        for container in inventory.containers.values() {
            let id = format!("container:{}", container.short_id());
            if kept.contains_key(&id) {
                continue;
            }
            let endpoint = container.endpoints.first();
            extra.push(Node {
                id,
                kind: EndKind::Container,
                name: Some(container.name.clone()),
                image: Some(container.image.clone()),
                network: endpoint
                    .map(|e| e.network.clone())
                    .or_else(|| Some(container.network_mode.clone())),
                compose_project: container.compose_project.clone(),
                compose_service: container.compose_service.clone(),
                ip: endpoint
                    .and_then(|e| e.ip.or(e.ipv6))
                    .map(|ip| ip.to_string()),
                posture: Some(container.posture.clone()),
                alerts: 0,
            });
        }
    }
    for alert in inputs.alerts {
        for end in std::iter::once(&alert.source).chain(alert.destination.as_ref()) {
            let id = node_id(end);
            if !kept.contains_key(&id) && !extra.iter().any(|n| n.id == id) {
                extra.push(node_of(end));
            }
        }
    }
    for node in extra {
        if kept.len() >= MAX_NODES + 2 * MAX_EDGES {
            truncated.nodes += 1;
        } else {
            kept.entry(node.id.clone()).or_insert(node);
        }
    }

    // Alerts onto nodes and edges.
    let mut alerts = Vec::new();
    for alert in inputs.alerts {
        let source = node_id(&alert.source);
        let destination = alert.destination.as_ref().map(node_id);
        for id in std::iter::once(&source).chain(destination.as_ref()) {
            if let Some(node) = kept.get_mut(id) {
                node.alerts += 1;
            }
        }
        if let Some(destination) = &destination {
            for edge in &mut edges {
                let pair = (&edge.source, &edge.target);
                if pair == (&source, destination) || pair == (destination, &source) {
                    edge.alerts += 1;
                }
            }
        }
        if alerts.len() < MAX_ALERTS {
            alerts.push(GraphAlert {
                time: alert.time.clone(),
                kind: alert.kind,
                severity: alert.severity.name(),
                summary: alert.summary.clone(),
                source,
                destination,
            });
        } else {
            truncated.alerts += 1;
        }
    }

    Graph {
        window_seconds: inputs.window_seconds,
        nodes: kept.into_values().collect(),
        edges,
        alerts,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

    use monitor_common::{tcp_flag, FlowStats};

    use super::*;
    use crate::{
        alert::Severity,
        docker::{Container, Endpoint, Inventory},
    };

    const NOW: u64 = 1_000_000_000_000;

    fn container(id: &str, name: &str, ip: [u8; 4], project: Option<&str>) -> Container {
        Container {
            id: format!("{id:0<64}"),
            name: name.to_owned(),
            image: "busybox".to_owned(),
            compose_project: project.map(str::to_owned),
            compose_service: None,
            network_mode: "net".to_owned(),
            pid: None,
            sandbox_key: None,
            endpoints: vec![Endpoint {
                network: "net".to_owned(),
                network_id: "net-id".to_owned(),
                ip: Some(Ipv4Addr::from(ip).into()),
                ipv6: None,
                mac: None,
                gateway: None,
                host_ifindex: None,
            }],
            posture: Posture::default(),
            labels: BTreeMap::new(),
            exposed_ports: Default::default(),
        }
    }

    fn snapshot(containers: Vec<Container>) -> Snapshot {
        let inventory = Inventory {
            containers: containers.into_iter().map(|c| (c.id.clone(), c)).collect(),
            ..Inventory::default()
        };
        Snapshot::new(Some(Arc::new(inventory)), BTreeMap::new())
    }

    fn flow(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), stats: FlowStats) -> FlowRecord {
        let mut key = FlowKey::ZERO;
        key.src_addr = Ipv4Addr::from(src).to_ipv6_mapped().octets();
        key.dst_addr = Ipv4Addr::from(dst).to_ipv6_mapped().octets();
        key.ip_version = 4;
        key.protocol = ip_proto::TCP;
        (key.src_port, key.dst_port) = ports;
        FlowRecord {
            key,
            stats: FlowStats {
                first_seen_ns: NOW - 3_000_000_000,
                last_seen_ns: NOW - 1_000_000_000,
                ..stats
            },
        }
    }

    fn stats(bytes: u64, syn: u32, syn_ack: u32, rst: u32) -> FlowStats {
        FlowStats {
            bytes,
            packets: 3,
            syn,
            syn_ack,
            rst,
            tcp_flags: tcp_flag::ACK,
            ..FlowStats::default()
        }
    }

    fn alert(kind: &'static str, source: FlowEnd, destination: Option<FlowEnd>) -> Alert {
        Alert {
            capture: None,
            node: None,
            time: "2026-12-03T10:00:00.000Z".to_owned(),
            kind,
            severity: Severity::Warning,
            source,
            destination,
            summary: "s".to_owned(),
            evidence: serde_json::Value::Null,
        }
    }

    const CLIENT: [u8; 4] = [172, 20, 0, 2];
    const SERVER: [u8; 4] = [172, 20, 0, 3];
    const SCANNER: [u8; 4] = [172, 20, 0, 4];

    #[test]
    fn connections_fold_into_one_edge_per_pair_with_outcomes_and_alerts() {
        let snapshot = snapshot(vec![
            container(
                "aaa",
                "client",
                CLIENT,
                Some("<img src=x onerror=alert(1)>"),
            ),
            container("bbb", "server", SERVER, None),
            container("ccc", "scanner", SCANNER, None),
            container("ddd", "idle", [172, 20, 0, 9], None),
        ]);
        let mut flows = Vec::new();
        for port in [40_000, 40_001] {
            flows.push(flow(CLIENT, SERVER, (port, 80), stats(100, 1, 0, 0)));
            flows.push(flow(SERVER, CLIENT, (80, port), stats(1_000, 0, 1, 0)));
        }
        for port in [1, 2, 3] {
            flows.push(flow(SCANNER, SERVER, (50_000, port), stats(60, 1, 0, 0)));
            flows.push(flow(SERVER, SCANNER, (port, 50_000), stats(60, 0, 0, 1)));
        }
        // Outside the window: left out.
        let mut old = flow(CLIENT, SERVER, (40_009, 81), stats(5, 1, 0, 0));
        old.stats.last_seen_ns = NOW - 400_000_000_000;
        flows.push(old);
        let mut verdicts = RecentVerdicts::default();
        let end = |ip: [u8; 4]| snapshot.directory.by_address(Ipv4Addr::from(ip).into());
        let alerts = [alert("port_scan", end(SCANNER), Some(end(SERVER)))];
        let alert_refs: Vec<&Alert> = alerts.iter().collect();
        verdicts.insert(
            flows[0].key,
            PayloadVerdict {
                protocol: crate::detect::Protocol::Http,
                encrypted: false,
            },
        );
        let graph = graph(&Inputs {
            flows: &flows,
            window_seconds: 300,
            now_ns: NOW,
            snapshot: &snapshot,
            verdicts: &verdicts,
            alerts: &alert_refs,
        });
        let id = |c: &str| format!("container:{c:0<12}");
        assert_eq!(graph.edges.len(), 2, "{:#?}", graph.edges);
        let web = &graph.edges[0];
        assert_eq!((&web.source, &web.target), (&id("aaa"), &id("bbb")));
        assert_eq!((web.bytes, web.packets), (2_200, 12));
        assert_eq!(web.outcome, "established");
        assert_eq!(web.ports, [80]);
        assert_eq!(web.protocols, ["tcp"]);
        assert_eq!(web.app_protocols, ["http"]);
        assert!(web.cleartext);
        assert_eq!(web.flows.len(), 2);
        assert_eq!(web.alerts, 0);
        let scan = &graph.edges[1];
        assert_eq!((&scan.source, &scan.target), (&id("ccc"), &id("bbb")));
        assert_eq!(scan.outcome, "refused");
        assert_eq!(scan.outcomes.get("refused"), Some(&3));
        assert_eq!(scan.ports, [1, 2, 3]);
        assert_eq!(scan.alerts, 1);
        assert!(scan.flows.iter().all(|f| f.encryption == "unknown"));
        let alerts_of = |c: &str| graph.nodes.iter().find(|n| n.id == id(c)).map(|n| n.alerts);
        assert_eq!(alerts_of("ccc"), Some(1));
        assert_eq!(alerts_of("bbb"), Some(1));
        assert_eq!(alerts_of("aaa"), Some(0));
        assert_eq!(alerts_of("ddd"), Some(0), "idle containers are nodes");
        assert_eq!(graph.alerts[0].source, id("ccc"));
        let client = graph.nodes.iter().find(|n| n.id == id("aaa"));
        assert_eq!(
            client.and_then(|n| n.compose_project.as_deref()),
            Some("<img src=x onerror=alert(1)>"),
            "names are data, escaped by whoever shows them"
        );
    }

    #[test]
    fn non_container_ends_are_nodes_of_their_kind() {
        let snapshot = snapshot(vec![container("aaa", "client", CLIENT, None)]);
        let flows = [
            flow(
                CLIENT,
                [93, 184, 216, 34],
                (40_000, 443),
                stats(10, 1, 0, 0),
            ),
            flow(CLIENT, [224, 0, 0, 251], (5353, 5353), stats(10, 0, 0, 0)),
        ];
        let graph = graph(&Inputs {
            flows: &flows,
            window_seconds: 60,
            now_ns: NOW,
            snapshot: &snapshot,
            verdicts: &RecentVerdicts::default(),
            alerts: &[],
        });
        assert_eq!(graph.edges.len(), 1, "multicast is no one's edge");
        assert_eq!(graph.edges[0].target, "external:93.184.216.34");
        assert_eq!(
            graph.edges[0].outcome, "unknown",
            "no answer yet, and not old enough to be unanswered"
        );
        assert!(graph
            .nodes
            .iter()
            .any(|n| n.id == "external:93.184.216.34" && n.kind == EndKind::External));
    }

    #[test]
    fn the_window_is_bounded() {
        assert_eq!(window_of(None), Ok(DEFAULT_WINDOW_SECONDS));
        assert_eq!(window_of(Some("window=60")), Ok(60));
        assert_eq!(window_of(Some("x=1&window=900")), Ok(900));
        assert!(window_of(Some("window=0")).is_err());
        assert!(window_of(Some("window=abc")).is_err());
        assert!(window_of(Some("window=86401")).is_err());
    }
}
