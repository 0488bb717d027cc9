//! Naming both ends of a flow.
//!
//! The container end is known from the veth where the packet was counted,
//! never from the address it carries: a container sending from a spoofed
//! source IP is still named as itself. The other end is looked up by
//! address among container endpoints, network gateways and the host's own
//! addresses.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use monitor_common::{FlowKey, FlowStats};
use serde::Serialize;

use super::{
    swarm::{RemoteEnd, SERVICE_LABEL, STACK_LABEL},
    Container, Endpoint, Inventory,
};
use crate::model::key_addrs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndKind {
    Container,
    /// A bridge network's gateway: the host, as containers see it.
    Gateway,
    /// Another address of the host.
    Host,
    /// A globally routable address outside the host.
    External,
    /// Private, link-local or multicast, and no container or host has it.
    Unknown,
}

/// One end of a flow, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FlowEnd {
    pub kind: EndKind,
    pub name: Option<String>,
    pub id: Option<String>,
    pub image: Option<String>,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    pub network: Option<String>,
    pub ip: Option<IpAddr>,
    /// The Swarm service, its stack and the node the end runs on.
    pub service: Option<String>,
    pub stack: Option<String>,
    pub node: Option<String>,
    /// Running containers that joined this container's network namespace
    /// (`--network container:<it>`): their traffic crosses its interface
    /// and is counted as its own, which no classifier can tell apart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
    /// The container itself, for what the API does not show (labels,
    /// exposed ports).
    #[serde(skip)]
    pub container: Option<Arc<Container>>,
}

impl FlowEnd {
    fn bare(kind: EndKind, ip: IpAddr) -> Self {
        Self {
            kind,
            name: None,
            id: None,
            image: None,
            compose_project: None,
            compose_service: None,
            network: None,
            ip: Some(ip),
            service: None,
            stack: None,
            node: None,
            shared_with: Vec::new(),
            container: None,
        }
    }

    /// A task or container of another node of the swarm, with its
    /// stand-in container: detectors and policies that need a container
    /// on both ends (isolation, new connections) judge it as a local one.
    fn remote(remote: &RemoteEnd, stand_in: &Arc<Container>, ip: IpAddr) -> Self {
        Self {
            name: Some(remote.name.clone()),
            network: Some(remote.network.clone()),
            service: remote.service.clone(),
            stack: remote.stack.clone(),
            node: remote.node.clone(),
            container: Some(stand_in.clone()),
            ..Self::bare(EndKind::Container, ip)
        }
    }

    fn container(
        container: &Arc<Container>,
        endpoint: &Endpoint,
        ip: IpAddr,
        node: Option<&String>,
    ) -> Self {
        Self {
            kind: EndKind::Container,
            name: Some(container.name.clone()),
            id: Some(container.short_id().to_owned()),
            image: Some(container.image.clone()),
            compose_project: container.compose_project.clone(),
            compose_service: container.compose_service.clone(),
            network: Some(endpoint.network.clone()),
            ip: Some(ip),
            service: container.labels.get(SERVICE_LABEL).cloned(),
            stack: container.labels.get(STACK_LABEL).cloned(),
            node: node.cloned(),
            shared_with: Vec::new(),
            container: Some(container.clone()),
        }
    }
}

#[derive(Default)]
pub struct Directory {
    /// (container id, endpoint index) by address and by host-side veth.
    by_ip: HashMap<IpAddr, (String, usize)>,
    by_veth: HashMap<u32, (String, usize)>,
    gateways: HashMap<IpAddr, String>,
    host: HashSet<IpAddr>,
    containers: HashMap<String, Arc<Container>>,
    /// Network id to whether its containers may talk to each other.
    inter_container: HashMap<String, bool>,
    /// This host's swarm node, and the overlay addresses of other nodes
    /// with their stand-in containers.
    node: Option<String>,
    remote: BTreeMap<IpAddr, (RemoteEnd, Arc<Container>)>,
    /// Names of the running containers in each container's namespace
    /// (`--network container:<id>`), by the owner's id.
    joined: HashMap<String, Vec<String>>,
}

impl Directory {
    pub fn new(inventory: Option<&Inventory>, host_addresses: HashSet<IpAddr>) -> Self {
        let mut directory = Directory {
            host: host_addresses,
            ..Directory::default()
        };
        let Some(inventory) = inventory else {
            return directory;
        };
        directory.node.clone_from(&inventory.swarm.node);
        directory.remote = inventory
            .swarm
            .remote
            .iter()
            .map(|(ip, end)| (*ip, (end.clone(), Arc::new(end.as_container(*ip)))))
            .collect();
        for network in inventory.networks.values() {
            directory
                .inter_container
                .insert(network.id.clone(), network.inter_container_communication);
            for gateway in &network.gateways {
                directory.gateways.insert(*gateway, network.name.clone());
            }
        }
        for container in inventory.containers.values() {
            directory.add(container, true);
            if let Some(owner) = container.network_mode.strip_prefix("container:") {
                directory
                    .joined
                    .entry(owner.to_owned())
                    .or_default()
                    .push(container.name.clone());
            }
        }
        // The departed, most recent first, only where no running container
        // (or more recent departed one) has the address or veth: what they
        // counted before they went is still named after them.
        let mut departed: Vec<_> = inventory.departed.values().collect();
        departed.sort_by_key(|(_, left)| std::cmp::Reverse(*left));
        for (container, _) in departed {
            directory.add(container, false);
        }
        directory
    }

    /// A container's endpoints, replacing what they had (`running`) or
    /// only where nothing is known.
    fn add(&mut self, container: &Container, running: bool) {
        for (index, endpoint) in container.endpoints.iter().enumerate() {
            if let Some(gateway) = endpoint.gateway {
                self.gateways.insert(gateway, endpoint.network.clone());
            }
            let slot = (container.id.clone(), index);
            for ip in [endpoint.ip, endpoint.ipv6].into_iter().flatten() {
                claim(self.by_ip.entry(ip), &slot, running);
            }
            if let Some(ifindex) = endpoint.host_ifindex {
                claim(self.by_veth.entry(ifindex), &slot, running);
            }
        }
        self.containers
            .entry(container.id.clone())
            .or_insert_with(|| Arc::new(container.clone()));
    }

    fn slot(&self, slot: Option<&(String, usize)>, ip: IpAddr) -> Option<FlowEnd> {
        let (id, index) = slot?;
        let container = self.containers.get(id)?;
        Some(FlowEnd {
            shared_with: self.joined.get(id).cloned().unwrap_or_default(),
            ..FlowEnd::container(
                container,
                container.endpoints.get(*index)?,
                ip,
                self.node.as_ref(),
            )
        })
    }

    /// The container and endpoint behind a host-side veth.
    pub fn veth_owner(&self, ifindex: u32) -> Option<(&Arc<Container>, &Endpoint)> {
        let (id, index) = self.by_veth.get(&ifindex)?;
        let container = self.containers.get(id)?;
        Some((container, container.endpoints.get(*index)?))
    }

    /// Whether Docker's configuration lets `a` and `b` talk: they share a
    /// network that allows inter-container communication.
    pub fn may_talk(&self, a: &Container, b: &Container) -> bool {
        a.endpoints.iter().any(|ea| {
            b.endpoints.iter().any(|eb| {
                ea.network_id == eb.network_id
                    && self
                        .inter_container
                        .get(&ea.network_id)
                        .copied()
                        .unwrap_or(true)
            })
        })
    }

    /// The container end behind a host-side veth, with its own address.
    pub fn by_veth_end(&self, ifindex: u32) -> Option<FlowEnd> {
        let (_, endpoint) = self.veth_owner(ifindex)?;
        let ip = endpoint.ip.or(endpoint.ipv6)?;
        self.slot(self.by_veth.get(&ifindex), ip)
    }

    /// Who has address `ip`.
    pub fn by_address(&self, ip: IpAddr) -> FlowEnd {
        if let Some(end) = self.slot(self.by_ip.get(&ip), ip) {
            return end;
        }
        if let Some((remote, stand_in)) = self.remote.get(&ip) {
            return FlowEnd::remote(remote, stand_in, ip);
        }
        if let Some(network) = self.gateways.get(&ip) {
            return FlowEnd {
                network: Some(network.clone()),
                name: Some("gateway".into()),
                ..FlowEnd::bare(EndKind::Gateway, ip)
            };
        }
        if self.host.contains(&ip) {
            return FlowEnd {
                name: Some("host".into()),
                ..FlowEnd::bare(EndKind::Host, ip)
            };
        }
        FlowEnd::bare(
            if is_global(ip) {
                EndKind::External
            } else {
                EndKind::Unknown
            },
            ip,
        )
    }

    /// Both ends of a flow: the container behind the veth where it was
    /// counted, and the other end by address.
    pub fn ends(&self, key: &FlowKey, stats: &FlowStats) -> (FlowEnd, FlowEnd) {
        let (src, dst) = key_addrs(key);
        let by_veth = |ip| self.slot(self.by_veth.get(&stats.ifindex), ip);
        if stats.from_container() {
            (
                by_veth(src).unwrap_or_else(|| self.by_address(src)),
                self.by_address(dst),
            )
        } else {
            (
                self.by_address(src),
                by_veth(dst).unwrap_or_else(|| self.by_address(dst)),
            )
        }
    }
}

/// Takes an address or veth for `slot`: always for a running container,
/// only if free for a departed one.
fn claim<K>(
    entry: std::collections::hash_map::Entry<'_, K, (String, usize)>,
    slot: &(String, usize),
    running: bool,
) {
    match entry {
        std::collections::hash_map::Entry::Occupied(mut taken) => {
            if running {
                taken.insert(slot.clone());
            }
        }
        std::collections::hash_map::Entry::Vacant(free) => {
            free.insert(slot.clone());
        }
    }
}

/// Globally routable unicast (what `IpAddr::is_global` will say once stable).
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
                && v6.to_ipv4_mapped().is_none_or(|v4| is_global(v4.into()))
        }
    }
}

/// Addresses of the host's own interfaces (in the agent's namespace).
pub fn host_addresses() -> HashSet<IpAddr> {
    let mut addresses = HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return addresses;
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of the family it names.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET means sockaddr_in.
                let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                addresses.insert(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6 means sockaddr_in6.
                let sin6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                addresses.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

/// Name of a container that asked not to be named (`crossmon.metrics=off`):
/// its traffic is counted in series shared by all such containers.
pub const AGGREGATE: &str = "aggregate";
/// A container's name, or what kind of end it is.
pub fn end_name(end: &FlowEnd) -> String {
    match end.kind {
        EndKind::Container => match &end.container {
            Some(container) if container.metrics_off() => AGGREGATE.to_owned(),
            _ => end.name.clone().unwrap_or_else(|| "unknown".to_owned()),
        },
        EndKind::Gateway => "gateway".to_owned(),
        EndKind::Host => "host".to_owned(),
        EndKind::External => "external".to_owned(),
        EndKind::Unknown => "unknown".to_owned(),
    }
}

/// How a service is named where names must outlive containers (the
/// new-connection baseline, `require_tls`): `project/service` for compose
/// services, `stack/service` (or the service) for Swarm services, else the
/// container's name, else the kind of end (`gateway`, `host`, `external`,
/// `unknown`): never an address, which changes.
pub fn service_name(end: &FlowEnd) -> String {
    match (&end.compose_project, &end.compose_service) {
        (Some(project), Some(service)) => format!("{project}/{service}"),
        _ => match (&end.stack, &end.service) {
            (Some(stack), Some(service)) => format!("{stack}/{service}"),
            (None, Some(service)) => service.clone(),
            _ => end_name(end),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        let host: HashSet<IpAddr> = ["192.0.2.10".parse().unwrap()].into();
        let directory = Directory::new(None, host);
        assert_eq!(
            directory.by_address("192.0.2.10".parse().unwrap()).kind,
            EndKind::Host
        );
        assert_eq!(
            directory.by_address("203.0.113.7".parse().unwrap()).kind,
            EndKind::External
        );
        assert_eq!(
            directory.by_address("10.1.2.3".parse().unwrap()).kind,
            EndKind::Unknown
        );
        assert_eq!(
            directory.by_address("ff02::1".parse().unwrap()).kind,
            EndKind::Unknown
        );
        assert_eq!(
            directory.by_address("2001:db8::1".parse().unwrap()).kind,
            EndKind::External
        );
    }

    #[test]
    fn containers_may_talk_on_a_shared_network_that_allows_it() {
        use std::collections::BTreeMap;

        use super::super::{inventory::Network, Posture};

        let network = |id: &str, icc: bool| Network {
            id: id.into(),
            name: id.into(),
            driver: "bridge".into(),
            bridge: None,
            gateways: Vec::new(),
            inter_container_communication: icc,
        };
        let container = |id: &str, networks: &[&str]| Container {
            id: id.into(),
            name: id.into(),
            image: String::new(),
            compose_project: None,
            compose_service: None,
            network_mode: String::new(),
            pid: None,
            sandbox_key: None,
            endpoints: networks
                .iter()
                .map(|n| Endpoint {
                    network: (*n).into(),
                    network_id: (*n).into(),
                    ip: None,
                    ipv6: None,
                    mac: None,
                    gateway: None,
                    host_ifindex: None,
                })
                .collect(),
            posture: Posture::default(),
            labels: BTreeMap::new(),
            exposed_ports: Default::default(),
        };
        let inventory = Inventory {
            networks: [network("open", true), network("closed", false)]
                .into_iter()
                .map(|n| (n.id.clone(), n))
                .collect(),
            ..Inventory::default()
        };
        let directory = Directory::new(Some(&inventory), HashSet::new());
        let (a, b, c) = (
            container("a", &["open", "closed"]),
            container("b", &["open"]),
            container("c", &["closed"]),
        );
        assert!(directory.may_talk(&a, &b));
        assert!(!directory.may_talk(&a, &c), "only a network without ICC");
        assert!(!directory.may_talk(&b, &c), "no network at all");
    }

    #[test]
    fn host_addresses_include_loopback() {
        assert!(host_addresses().contains(&IpAddr::from([127, 0, 0, 1])));
    }
}
