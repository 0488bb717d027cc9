//! Container identities made up for tests and benches that judge frames
//! without an engine (the policy compiled from them, run on synthetic
//! frames): one bridge endpoint each, the way the inventory reads Docker.

use std::{collections::BTreeMap, sync::Arc};

use monitor::docker::{Container, Endpoint, Inventory, Posture};

use crate::frames::Mac;

/// BPF_PROG_TEST_RUN runs a classifier as if on the loopback device: a
/// container "behind" it is the one whose packets a test run judges.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// Container `name` on bridge network `network`, with `ip` and `mac`, its
/// host-side veth at `ifindex`.
pub fn container(
    name: &str,
    network: &str,
    (ip, mac): ([u8; 4], Mac),
    gateway: [u8; 4],
    ifindex: u32,
) -> Container {
    Container {
        id: format!("{name}-id"),
        name: name.to_owned(),
        image: String::new(),
        compose_project: None,
        compose_service: None,
        network_mode: network.to_owned(),
        pid: None,
        sandbox_key: None,
        endpoints: vec![Endpoint {
            network: network.to_owned(),
            network_id: format!("{network}-id"),
            ip: Some(ip.into()),
            ipv6: None,
            mac: Some(mac.map(|b| format!("{b:02x}")).join(":")),
            gateway: Some(gateway.into()),
            host_ifindex: Some(ifindex),
        }],
        posture: Posture::default(),
        labels: BTreeMap::new(),
        exposed_ports: Default::default(),
    }
}

/// An inventory of exactly `containers`.
pub fn inventory(containers: impl IntoIterator<Item = Container>) -> Arc<Inventory> {
    let mut inventory = Inventory::default();
    for container in containers {
        inventory.containers.insert(container.id.clone(), container);
    }
    Arc::new(inventory)
}
