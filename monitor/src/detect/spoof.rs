//! `ip_spoof` and `arp_spoof`: a container claiming an address Docker did
//! not give it. The sender is known from the veth the packet came in on,
//! so the claim can be checked against what the engine assigned.

use std::net::{IpAddr, Ipv4Addr};

use monitor_common::Direction;
use serde_json::json;

use super::{Alert, Detector, Findings, Severity};
use crate::{
    clock,
    datapath::{
        events::{ArpPacket, Seen},
        Event,
    },
    docker::{inventory::parse_mac, Container, Directory, Endpoint},
    event_log::EventBatch,
    model::{key_addrs, mac_text, protocol_name, FlowRecord},
};

/// Addresses a container may send from on any of its networks. IPv6
/// link-local addresses are the kernel's own, not Docker's, and the
/// unspecified address is what address probes (DHCP, DAD) carry.
fn owns(container: &Container, ip: IpAddr) -> bool {
    let link_local_v6 = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
    ip.is_unspecified()
        || link_local_v6
        || container
            .endpoints
            .iter()
            .any(|e| e.ip == Some(ip) || e.ipv6 == Some(ip))
}

fn assigned(container: &Container) -> Vec<String> {
    container
        .endpoints
        .iter()
        .flat_map(|e| [e.ip, e.ipv6])
        .flatten()
        .map(|ip| ip.to_string())
        .collect()
}

/// What checking one flow for a spoofed source found.
pub enum Check {
    /// The veth's container is not known yet: check again later.
    Undecided,
    Clean,
    Spoofed(Box<Alert>),
}

/// A flow a container sent with a source address that is not its own.
pub fn ip_spoof(record: &FlowRecord, directory: &Directory) -> Check {
    if !record.stats.from_container() {
        return Check::Clean;
    }
    let Some((container, _)) = directory.veth_owner(record.stats.ifindex) else {
        return Check::Undecided;
    };
    let (src, dst) = key_addrs(&record.key);
    if owns(container, src) {
        return Check::Clean;
    }
    let (source, destination) = directory.ends(&record.key, &record.stats);
    let claimed = directory.by_address(src);
    let posing_as = claimed
        .name
        .as_deref()
        .map(|name| format!(" (that of {name})"))
        .unwrap_or_default();
    Check::Spoofed(Box::new(Alert {
        capture: None,
        node: None,
        time: clock::rfc3339_ms(record.stats.first_seen_ns),
        kind: "ip_spoof",
        severity: Severity::Critical,
        summary: format!(
            "{} sent {} packets from {src}{posing_as}, not an address Docker gave it",
            container.name,
            protocol_name(record.key.protocol),
        ),
        evidence: json!({
            "claimed_ip": src.to_string(),
            "assigned_ips": assigned(container),
            "destination_ip": dst.to_string(),
            "destination_port": record.key.dst_port,
            "protocol": protocol_name(record.key.protocol),
            "packets": record.stats.packets,
            "first_seen": clock::rfc3339_ms(record.stats.first_seen_ns),
        }),
        source,
        destination: Some(destination),
    }))
}

/// An ARP packet a container sent claiming a MAC or IPv4 address that is
/// not its own on that network.
pub fn arp_spoof(
    seen: &Seen,
    eth_src: [u8; 6],
    arp: &ArpPacket,
    directory: &Directory,
) -> Option<Alert> {
    if seen.direction != Direction::FromContainer {
        return None;
    }
    let (container, endpoint) = directory.veth_owner(seen.ifindex)?;
    let own_mac = endpoint.mac.as_deref().and_then(parse_mac)?;
    let wrong_mac = [Some(eth_src), arp.sender_mac]
        .into_iter()
        .flatten()
        .find(|mac| *mac != own_mac);
    let wrong_ip = arp
        .sender_ip
        .filter(|ip| !ip.is_unspecified() && !claims_own(endpoint, *ip));
    let claim = match (wrong_ip, wrong_mac) {
        (Some(ip), _) => format!("claims {ip}"),
        (None, Some(mac)) => format!("sends as MAC {}", mac_text(mac)),
        (None, None) => return None,
    };
    let source = directory.by_veth_end(seen.ifindex)?;
    // Whose address the claim takes over, if anyone's.
    let victim = wrong_ip.map(|ip| directory.by_address(IpAddr::V4(ip)));
    let victim_name = victim
        .as_ref()
        .and_then(|v| v.name.clone())
        .map(|name| format!(", the address of {name}"))
        .unwrap_or_default();
    Some(Alert {
        capture: None,
        node: None,
        time: clock::rfc3339_ms(seen.timestamp_ns),
        kind: "arp_spoof",
        severity: Severity::Critical,
        summary: format!(
            "{} on {}: ARP {} {claim}{victim_name}",
            container.name,
            endpoint.network,
            match arp.operation {
                Some(1) => "request",
                Some(2) => "reply",
                _ => "packet",
            },
        ),
        evidence: json!({
            "operation": arp.operation,
            "eth_src": mac_text(eth_src),
            "sender_mac": arp.sender_mac.map(mac_text),
            "sender_ip": arp.sender_ip.map(|ip| ip.to_string()),
            "target_ip": arp.target_ip.map(|ip| ip.to_string()),
            "assigned_mac": mac_text(own_mac),
            "assigned_ip": endpoint.ip.map(|ip| ip.to_string()),
            "network": endpoint.network,
        }),
        source,
        destination: victim,
    })
}

fn claims_own(endpoint: &Endpoint, ip: Ipv4Addr) -> bool {
    endpoint.ip == Some(IpAddr::V4(ip))
}

/// `ip_spoof`: at a flow's first look, and for flows the policy dropped
/// for their source.
pub struct IpSpoof;

impl Detector for IpSpoof {
    fn first_look(&mut self, flow: &FlowRecord, directory: &Directory, found: &mut Findings) {
        if let Check::Spoofed(alert) = ip_spoof(flow, directory) {
            found.alerts.push(*alert);
        }
    }

    fn spoofed_drop(&mut self, flow: &FlowRecord, directory: &Directory, found: &mut Findings) {
        self.first_look(flow, directory, found);
    }
}

/// `arp_spoof`: the ARP packets the kernel sends up.
pub struct ArpSpoof;

impl Detector for ArpSpoof {
    fn events(&mut self, batch: &EventBatch<'_>, found: &mut Findings) {
        for event in batch.events {
            if let Event::Arp {
                seen, eth_src, arp, ..
            } = event
            {
                found
                    .alerts
                    .extend(arp_spoof(seen, *eth_src, arp, batch.directory));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::ip_proto::{TCP, UDP};

    use super::*;
    use crate::detect::testkit::{arp, batch, ends, front, Lab, SEC};

    fn ip_check(lab: &Lab, record: &FlowRecord) -> Vec<Alert> {
        let mut found = Findings::default();
        IpSpoof.first_look(record, &lab.directory, &mut found);
        found.alerts
    }

    #[test]
    fn a_container_sending_from_its_own_address_is_clean() {
        let lab = Lab::new(3);
        assert!(ip_check(&lab, &lab.flow(front(2), front(3), 80, TCP)).is_empty());
    }

    #[test]
    fn a_neighbours_address_is_spoofed_and_named() {
        let lab = Lab::new(4);
        // Counted at c2's veth, from c4's address.
        let mut record = lab.flow(front(4), front(3), 80, TCP);
        record.stats.ifindex = Lab::veth(front(2));
        let alerts = ip_check(&lab, &record);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, "ip_spoof");
        assert_eq!(ends(&alerts[0]), ("c2".into(), Some("c3".into())));
        assert!(alerts[0].summary.contains("(that of c4)"));
        assert_eq!(alerts[0].evidence["claimed_ip"], "10.0.0.4");
        assert_eq!(alerts[0].evidence["assigned_ips"][0], "10.0.0.2");
    }

    #[test]
    fn kernel_addresses_and_unknown_veths_are_not_judged() {
        let lab = Lab::new(3);
        let mut unspecified = lab.flow([0, 0, 0, 0], [255, 255, 255, 255], 67, UDP);
        unspecified.stats.ifindex = Lab::veth(front(2));
        assert!(ip_check(&lab, &unspecified).is_empty(), "DHCP's 0.0.0.0");
        let mut link_local = unspecified;
        link_local.key.src_addr = "fe80::1"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets();
        link_local.key.ip_version = 6;
        assert!(ip_check(&lab, &link_local).is_empty());
        let stranger = lab.flow([10, 0, 0, 77], front(3), 80, TCP);
        assert!(matches!(
            ip_spoof(&stranger, &lab.directory),
            Check::Undecided
        ));
        let mut arriving = lab.flow(front(4), front(2), 80, TCP);
        arriving.stats.ifindex = Lab::veth(front(2));
        arriving.stats.direction = Direction::ToContainer as u8;
        assert!(ip_check(&lab, &arriving).is_empty());
    }

    #[test]
    fn a_flow_the_policy_dropped_is_checked_too() {
        let lab = Lab::new(4);
        let mut record = lab.flow(front(4), front(3), 80, TCP);
        record.stats.ifindex = Lab::veth(front(2));
        let mut found = Findings::default();
        IpSpoof.spoofed_drop(&record, &lab.directory, &mut found);
        assert_eq!(found.alerts.len(), 1);
    }

    fn arp_from(sender: [u8; 4], edit: impl FnOnce(&mut [u8; 6], &mut ArpPacket)) -> Event {
        let mut event = arp(sender, 2, front(3), SEC);
        if let Event::Arp { eth_src, arp, .. } = &mut event {
            edit(eth_src, arp);
        }
        event
    }

    #[test]
    fn arp_for_its_own_address_and_mac_is_clean_and_a_probe_too() {
        let lab = Lab::new(3);
        let own = arp_from(front(2), |_, _| {});
        let probe = arp_from(front(2), |_, arp| {
            arp.sender_ip = Some(Ipv4Addr::UNSPECIFIED)
        });
        let short = arp_from(front(2), |_, arp| {
            arp.sender_ip = None;
            arp.sender_mac = None;
        });
        assert!(batch(&mut ArpSpoof, &lab, &[own, probe, short], SEC).is_empty());
    }

    #[test]
    fn arp_claiming_a_neighbours_address_names_the_victim() {
        let lab = Lab::new(4);
        let claim = arp_from(front(2), |_, arp| {
            arp.sender_ip = Some(Ipv4Addr::from(front(4)))
        });
        let alerts = batch(&mut ArpSpoof, &lab, &[claim], SEC);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, "arp_spoof");
        assert_eq!(ends(&alerts[0]), ("c2".into(), Some("c4".into())));
        assert!(alerts[0]
            .summary
            .contains("ARP reply claims 10.0.0.4, the address of c4"));
    }

    #[test]
    fn arp_from_another_mac_is_spoofed_in_either_header() {
        let lab = Lab::new(3);
        let forged = [2, 0, 0, 0, 0, 0x99];
        let in_frame = arp_from(front(2), |eth_src, _| *eth_src = forged);
        let in_arp = arp_from(front(2), |_, arp| arp.sender_mac = Some(forged));
        let alerts = batch(&mut ArpSpoof, &lab, &[in_frame, in_arp], SEC);
        assert_eq!(alerts.len(), 2);
        assert!(alerts
            .iter()
            .all(|a| a.summary.contains("sends as MAC 02:00:00:00:00:99")));
        assert!(alerts.iter().all(|a| a.destination.is_none()));
    }

    #[test]
    fn arp_arriving_at_a_container_or_from_an_unknown_veth_is_not_judged() {
        let lab = Lab::new(3);
        let forged = |event: &mut Event| {
            if let Event::Arp { arp, .. } = event {
                arp.sender_ip = Some(Ipv4Addr::from(front(3)));
            }
        };
        let mut arriving = arp(front(2), 2, front(3), SEC);
        forged(&mut arriving);
        if let Event::Arp { seen, .. } = &mut arriving {
            seen.direction = Direction::ToContainer;
        }
        let mut stranger = arp([10, 0, 0, 77], 2, front(3), SEC);
        forged(&mut stranger);
        assert!(batch(&mut ArpSpoof, &lab, &[arriving, stranger], SEC).is_empty());
    }
}
