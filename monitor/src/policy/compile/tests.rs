//! The compiled maps, looked up as the kernel looks them up, give the
//! verdict user space gives, on random policies and containers.

use std::net::{IpAddr, Ipv4Addr};

use monitor_common::{ip_proto, PolicyAction};
use proptest::{collection, prelude::*, sample::select};

use super::*;
use crate::{
    docker::Endpoint,
    policy::{evaluate::has_ports, file::Action, select::tests::container},
};

/// The kernel's three lookups (`monitor-ebpf/src/policy.rs`): `None` when
/// the destination is not a container of the sender's network.
fn kernel_lookup(
    compiled: &Compiled,
    ifindex: u32,
    dst: [u8; 16],
    protocol: u8,
    port: u16,
) -> Option<PolicyRuleValue> {
    let mut key = PolicyRuleKey {
        ifindex,
        generation: 0,
        protocol,
        dst_port: if has_ports(protocol) { port } else { 0 },
        dst_addr: dst,
    };
    let mut found = compiled.rules.get(&key);
    if found.is_none() && key.dst_port != 0 {
        key.dst_port = 0;
        found = compiled.rules.get(&key);
    }
    if found.is_none() {
        key.protocol = POLICY_PEER_PROTOCOL;
        key.dst_port = 0;
        found = compiled.rules.get(&key);
    }
    found.copied()
}

fn endpoint(network: &str, last_octet: u8, ifindex: u32) -> Endpoint {
    Endpoint {
        network: network.to_owned(),
        network_id: format!("{network}-id"),
        ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet))),
        ipv6: None,
        mac: Some(format!("02:42:0a:00:00:{last_octet:02x}")),
        gateway: None,
        host_ifindex: Some(ifindex),
    }
}

const SERVICES: [&str; 3] = ["web", "api", "db"];
const NETWORKS: [&str; 2] = ["front", "back"];
const PORTS: [u16; 4] = [80, 443, 5432, 9000];
const PROTOCOLS: [u8; 5] = [
    ip_proto::TCP,
    ip_proto::UDP,
    ip_proto::ICMP,
    ip_proto::ICMPV6,
    132,
];

fn selector() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&SERVICES[..]).prop_map(|s| format!("{{service: shop/{s}}}")),
        select(&SERVICES[..]).prop_map(|s| format!("{{service: {s}}}")),
        (0..4usize).prop_map(|i| format!("{{container: c{i}}}")),
    ]
}

fn rule() -> impl Strategy<Value = String> {
    (
        selector(),
        selector(),
        select(&["tcp", "udp", "icmp", "any"][..]),
        collection::btree_set(select(&PORTS[..]), 0..3),
        select(&["allow", "alert", "deny"][..]),
    )
        .prop_map(|(from, to, protocol, ports, action)| {
            let ports: Vec<String> = if protocol == "icmp" {
                Vec::new()
            } else {
                ports.iter().map(u16::to_string).collect()
            };
            format!(
                "{{from: {from}, to: {to}, protocol: {protocol}, ports: [{}], action: {action}}}",
                ports.join(", ")
            )
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        collection::vec(rule(), 0..6),
        select(&["allow", "alert", "deny"][..]),
        select(&["allow", "alert", "deny"][..]),
    )
        .prop_map(|(rules, star, front)| {
            let rules: Vec<String> = rules
                .iter()
                .enumerate()
                .map(|(i, r)| format!("  - {{name: r{i}, {}\n", &r[1..]))
                .collect();
            let text = format!(
                "version: 1\ndefaults: {{\"*\": {star}, front: {front}}}\nrules:\n{}",
                rules.concat()
            );
            Policy::parse(&text).expect("generated policies are valid")
        })
}

/// Four containers, each on one or both networks.
fn inventory() -> impl Strategy<Value = Inventory> {
    collection::vec((select(&SERVICES[..]), 1..4usize), 4).prop_map(|specs| {
        let mut inventory = Inventory::default();
        for (i, (service, networks)) in specs.into_iter().enumerate() {
            let mut c = container(&format!("c{i}"), Some("shop"), Some(service));
            for (n, network) in NETWORKS.iter().enumerate() {
                if networks & (1 << n) != 0 {
                    let octet = (i * 2 + n) as u8 + 2;
                    c.endpoints
                        .push(endpoint(network, octet, 100 + u32::from(octet)));
                }
            }
            inventory.containers.insert(c.id.clone(), c);
        }
        inventory
    })
}

proptest! {
    #[test]
    fn the_kernel_lookups_agree_with_the_policy(
        policy in policy(),
        inventory in inventory(),
        protocol in select(&PROTOCOLS[..]),
        port in prop_oneof![select(&PORTS[..]), Just(1234u16)],
    ) {
        let mut slots = SlotBook::default();
        let compiled = compile(&policy, &inventory, &mut slots);
        for src in inventory.containers.values() {
            for src_end in &src.endpoints {
                let ifindex = src_end.host_ifindex.expect("veth");
                prop_assert!(compiled.ifaces.contains_key(&ifindex));
                for dst in inventory.containers.values() {
                    for dst_end in &dst.endpoints {
                        let Some(IpAddr::V4(ip)) = dst_end.ip else { continue };
                        let found = kernel_lookup(
                            &compiled, ifindex, ip.to_ipv6_mapped().octets(), protocol, port,
                        );
                        if src.id == dst.id || dst_end.network_id != src_end.network_id {
                            prop_assert_eq!(found, None, "only peers of the network");
                            continue;
                        }
                        let expected = evaluate(&policy, src, dst, &src_end.network, protocol, port);
                        let found = found.expect("a peer always has an entry");
                        prop_assert_eq!(found.action, expected.action.kernel() as u8);
                        let name = expected.counter_name();
                        prop_assert_eq!(slots.name_of(found.slot), Some(name.as_str()));
                    }
                }
            }
        }
    }
}

#[test]
fn a_two_container_network_compiles_to_these_entries() {
    let policy = Policy::parse(
        "version: 1\ndefaults: {\"*\": deny}\nrules:\n  - {name: web-api, from: {service: shop/web}, to: {service: shop/api}, protocol: tcp, ports: [80]}\n",
    )
    .expect("valid");
    let mut web = container("web", Some("shop"), Some("web"));
    web.endpoints.push(endpoint("front", 2, 12));
    let mut api = container("api", Some("shop"), Some("api"));
    api.endpoints.push(endpoint("front", 3, 13));
    let mut inventory = Inventory::default();
    for c in [web, api] {
        inventory.containers.insert(c.id.clone(), c);
    }
    let mut slots = SlotBook::default();
    let compiled = compile(&policy, &inventory, &mut slots);
    assert_eq!(compiled.ifaces.len(), 2);
    assert_eq!(compiled.ifaces[&12].ipv4[12..], [10, 0, 0, 2]);
    assert_eq!(compiled.ifaces[&12].mac, [2, 0x42, 10, 0, 0, 2]);
    // web -> api: port 80 and the default marker; api -> web: the marker.
    assert_eq!(compiled.rules.len(), 3);
    let api_ip = Ipv4Addr::new(10, 0, 0, 3).to_ipv6_mapped().octets();
    let allowed = kernel_lookup(&compiled, 12, api_ip, ip_proto::TCP, 80).expect("entry");
    assert_eq!(allowed.action, PolicyAction::Allow as u8);
    assert_eq!(slots.name_of(allowed.slot), Some("web-api"));
    let denied = kernel_lookup(&compiled, 12, api_ip, ip_proto::TCP, 81).expect("entry");
    assert_eq!(denied.action, PolicyAction::Deny as u8);
    assert_eq!(slots.name_of(denied.slot), Some("default:front"));
    assert_eq!(policy.default_for("front"), Action::Deny);
}

#[test]
fn slots_outlive_reloads_and_overflow_into_other() {
    let mut slots = SlotBook::default();
    let a = slots.slot("a");
    assert_eq!(slots.slot("b"), a + 1);
    assert_eq!(slots.slot("a"), a, "a name keeps its slot");
    for i in 0..POLICY_SLOTS {
        slots.slot(&format!("n{i}"));
    }
    assert_eq!(slots.name_of(slots.clone().slot("one more")), Some("other"));
}

#[test]
fn remote_overlay_ends_are_judged_as_destinations() {
    use crate::docker::swarm::{RemoteEnd, SERVICE_LABEL};
    let policy = Policy::parse(&format!(
        "version: 1\ndefaults: {{\"*\": allow}}\nrules:\n  - {{name: no-db, from: {{container: web}}, to: {{labels: {{{SERVICE_LABEL}: db}}}}, protocol: tcp, action: deny}}\n  - {{name: no-task, from: {{container: web}}, to: {{container: other.1.x}}, protocol: udp, action: deny}}\n",
    ))
    .expect("valid");
    let mut web = container("web", None, None);
    web.endpoints.push(endpoint("ov", 2, 1 << 24 | 12));
    let mut inventory = Inventory::default();
    inventory.containers.insert(web.id.clone(), web);
    let remote = |name: &str, service: Option<&str>| RemoteEnd {
        name: name.to_owned(),
        service: service.map(str::to_owned),
        stack: None,
        node: Some("10.0.9.2".to_owned()),
        network: "ov".to_owned(),
        network_id: "ov-id".to_owned(),
    };
    let ip = |octet| IpAddr::V4(Ipv4Addr::new(10, 0, 0, octet));
    let swarm = &mut inventory.swarm.remote;
    swarm.insert(ip(3), remote("db.1.abc", Some("db")));
    swarm.insert(ip(4), remote("other.1.x", None));
    // This host's own address, as the gossip lists it too: not twice.
    swarm.insert(ip(2), remote("web", None));
    let mut slots = SlotBook::default();
    let compiled = compile(&policy, &inventory, &mut slots);
    let lookup = |octet, protocol| {
        let addr = Ipv4Addr::new(10, 0, 0, octet).to_ipv6_mapped().octets();
        let found = kernel_lookup(&compiled, 1 << 24 | 12, addr, protocol, 80).expect("entry");
        (found.action, slots.name_of(found.slot).map(str::to_owned))
    };
    let deny = PolicyAction::Deny as u8;
    let allow = PolicyAction::Allow as u8;
    assert_eq!(lookup(3, ip_proto::TCP), (deny, Some("no-db".to_owned())));
    assert_eq!(lookup(3, ip_proto::UDP).0, allow);
    assert_eq!(lookup(4, ip_proto::UDP), (deny, Some("no-task".to_owned())));
    assert_eq!(lookup(4, ip_proto::TCP).0, allow);
    // Two remote ends, each a marker and one rule's entry; none to itself.
    assert_eq!(compiled.rules.len(), 4);
    assert_eq!(compiled.ifaces.len(), 1);
}
