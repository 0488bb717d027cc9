//! `host_access`: a container opening connections to the host on ports
//! that hand over the host (the Docker API, SSH) or to a cloud metadata
//! address (instance credentials).

use std::net::IpAddr;

use monitor_common::ip_proto;
use serde_json::json;

use super::{config, Alert, Detector, Findings, Severity};
use crate::{
    clock,
    docker::{Directory, EndKind},
    model::{key_addrs, protocol_name, FlowRecord},
};

/// AWS, GCP, Azure, OpenStack (IPv4) and AWS (IPv6) instance metadata.
const METADATA: [&str; 2] = ["169.254.169.254", "fd00:ec2::254"];

/// A connection attempt from a container to one of the host's `ports` or a
/// metadata address; `None` for anything else.
pub fn host_access(record: &FlowRecord, directory: &Directory, ports: &[u16]) -> Option<Alert> {
    if !record.stats.from_container() || !opens(record) {
        return None;
    }
    let (_, dst) = key_addrs(&record.key);
    let (source, destination) = directory.ends(&record.key, &record.stats);
    let metadata = METADATA
        .iter()
        .any(|address| address.parse::<IpAddr>().is_ok_and(|m| m == dst));
    let to_host = matches!(destination.kind, EndKind::Gateway | EndKind::Host)
        && ports.contains(&record.key.dst_port);
    if !metadata && !to_host {
        return None;
    }
    let who = source.name.clone().unwrap_or_else(|| "a container".into());
    let summary = if metadata {
        format!("{who} contacted the cloud metadata address {dst}")
    } else {
        format!(
            "{who} opened a connection to the host ({dst}) on port {}",
            record.key.dst_port
        )
    };
    Some(Alert {
        capture: None,
        node: None,
        time: clock::rfc3339_ms(record.stats.first_seen_ns),
        kind: "host_access",
        severity: if metadata || record.key.dst_port != 22 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        summary,
        evidence: json!({
            "destination_ip": dst.to_string(),
            "destination_port": record.key.dst_port,
            "protocol": protocol_name(record.key.protocol),
            "metadata_address": metadata,
            "packets": record.stats.packets,
            "syn": record.stats.syn,
        }),
        source,
        destination: Some(destination),
    })
}

/// A TCP flow that began with a SYN, or any UDP flow (metadata and SSH
/// are TCP, but a probe may not be).
fn opens(record: &FlowRecord) -> bool {
    match record.key.protocol {
        ip_proto::TCP => record.stats.syn > 0,
        ip_proto::UDP => true,
        _ => false,
    }
}

/// `host_access` as a detector: the ports it watches.
pub struct HostAccess {
    ports: Vec<u16>,
}

impl HostAccess {
    pub fn new(config: &config::HostAccess) -> Self {
        Self {
            ports: config.ports.clone(),
        }
    }
}

impl Detector for HostAccess {
    fn first_look(&mut self, flow: &FlowRecord, directory: &Directory, found: &mut Findings) {
        found
            .alerts
            .extend(host_access(flow, directory, &self.ports));
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::{
        ip_proto::{ICMP, TCP, UDP},
        Direction,
    };

    use super::*;
    use crate::detect::{
        config::HostAccess as Settings,
        testkit::{ends, front, Lab, GATEWAY},
    };

    fn look(lab: &Lab, record: &FlowRecord) -> Vec<Alert> {
        let mut found = Findings::default();
        HostAccess::new(&Settings::default()).first_look(record, &lab.directory, &mut found);
        found.alerts
    }

    fn opening(lab: &Lab, dst: [u8; 4], port: u16) -> FlowRecord {
        let mut record = lab.flow(front(2), dst, port, TCP);
        record.stats.syn = 1;
        record
    }

    #[test]
    fn the_docker_api_on_the_host_is_critical_ssh_a_warning_other_ports_nothing() {
        let lab = Lab::new(3);
        for (port, severity) in [
            (2375, Severity::Critical),
            (2376, Severity::Critical),
            (22, Severity::Warning),
        ] {
            let alerts = look(&lab, &opening(&lab, GATEWAY, port));
            assert_eq!(alerts.len(), 1, "port {port}");
            assert_eq!(alerts[0].kind, "host_access");
            assert_eq!(alerts[0].severity, severity);
            assert_eq!(ends(&alerts[0]), ("c2".into(), Some("gateway".into())));
        }
        assert!(look(&lab, &opening(&lab, GATEWAY, 80)).is_empty());
        assert!(look(&lab, &opening(&lab, GATEWAY, 2377)).is_empty());
    }

    #[test]
    fn the_metadata_address_is_critical_on_any_port() {
        let lab = Lab::new(3);
        let alerts = look(&lab, &opening(&lab, [169, 254, 169, 254], 80));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::Critical);
        assert_eq!(alerts[0].evidence["metadata_address"], true);
    }

    #[test]
    fn those_ports_on_a_container_or_flows_that_open_nothing_are_not_host_access() {
        let lab = Lab::new(3);
        assert!(look(&lab, &opening(&lab, front(3), 2375)).is_empty());
        // Mid-stream (no SYN), ICMP, or arriving at the container.
        assert!(look(&lab, &lab.flow(front(2), GATEWAY, 2375, TCP)).is_empty());
        assert!(look(&lab, &lab.flow(front(2), GATEWAY, 0, ICMP)).is_empty());
        let mut arriving = opening(&lab, GATEWAY, 2375);
        arriving.stats.direction = Direction::ToContainer as u8;
        assert!(look(&lab, &arriving).is_empty());
        // UDP opens by its first datagram.
        assert_eq!(look(&lab, &lab.flow(front(2), GATEWAY, 22, UDP)).len(), 1);
    }
}
