//! What the agent's benches share: a host of synthetic containers, as the
//! engine would describe them, on one Compose network.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use monitor::docker::{Container, Endpoint, Inventory, Posture};

pub const CONTAINERS: u32 = 200;

/// Container `i`'s address; its host-side veth is `1000 + i`.
pub fn container_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + 2 + i)
}

/// Containers 0 to `count - 1`, each exposing `ports`.
pub fn inventory(count: u32, ports: &BTreeSet<(u16, u8)>) -> Inventory {
    let mut inventory = Inventory::default();
    for i in 0..count {
        let id = format!("{i:064x}");
        inventory.containers.insert(
            id.clone(),
            Container {
                id,
                name: format!("shop-service-{i:03}-1"),
                image: "registry.example/shop/service:1.4.2".into(),
                compose_project: Some("shop".into()),
                compose_service: Some(format!("service-{i:03}")),
                network_mode: "shop_default".into(),
                pid: None,
                sandbox_key: None,
                endpoints: vec![Endpoint {
                    network: "shop_default".into(),
                    network_id: "n".repeat(64),
                    ip: Some(IpAddr::V4(container_ip(i))),
                    ipv6: None,
                    mac: None,
                    gateway: None,
                    host_ifindex: Some(1000 + i),
                }],
                posture: Posture::default(),
                labels: BTreeMap::new(),
                exposed_ports: ports.clone(),
            },
        );
    }
    inventory
}
