//! Naming both ends of a flow.
//!
//! The container end is known from the veth where the packet was counted,
//! never from the address it carries: a container sending from a spoofed
//! source IP is still named as itself. The other end is looked up by
//! address among container endpoints, network gateways and the host's own
//! addresses.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
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

/// One end of a flow, as the API shows it: who it is, and the address the
/// flow carried. Who it is ([`EndIdentity`], through `Deref`) is built once
/// per directory and shared by every flow of that end, so naming both ends
/// of each flow at each poll copies no strings.
#[derive(Clone, Debug)]
pub struct FlowEnd {
    identity: Arc<EndIdentity>,
    pub ip: Option<IpAddr>,
}

/// Everything of a [`FlowEnd`] but its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndIdentity {
    pub kind: EndKind,
    pub name: Option<String>,
    pub id: Option<String>,
    pub image: Option<String>,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    pub network: Option<String>,
    /// The Swarm service, its stack and the node the end runs on.
    pub service: Option<String>,
    pub stack: Option<String>,
    pub node: Option<String>,
    /// Running containers that joined this container's network namespace
    /// (`--network container:<it>`): their traffic crosses its interface
    /// and is counted as its own, which no classifier can tell apart.
    pub shared_with: Vec<String>,
    /// The container itself, for what the API does not show (labels,
    /// exposed ports).
    pub container: Option<Arc<Container>>,
}

/// The API's and alert log's flow-end object, its address among the
/// identity's fields where it always was (docs/alerts.md shows the order).
impl Serialize for FlowEnd {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;

        let who = &*self.identity;
        let mut end = serializer.serialize_struct("FlowEnd", 12)?;
        end.serialize_field("kind", &who.kind)?;
        end.serialize_field("name", &who.name)?;
        end.serialize_field("id", &who.id)?;
        end.serialize_field("image", &who.image)?;
        end.serialize_field("compose_project", &who.compose_project)?;
        end.serialize_field("compose_service", &who.compose_service)?;
        end.serialize_field("network", &who.network)?;
        end.serialize_field("ip", &self.ip)?;
        end.serialize_field("service", &who.service)?;
        end.serialize_field("stack", &who.stack)?;
        end.serialize_field("node", &who.node)?;
        if who.shared_with.is_empty() {
            end.skip_field("shared_with")?;
        } else {
            end.serialize_field("shared_with", &who.shared_with)?;
        }
        end.end()
    }
}

impl std::ops::Deref for FlowEnd {
    type Target = EndIdentity;

    fn deref(&self) -> &EndIdentity {
        &self.identity
    }
}

impl FlowEnd {
    pub fn new(identity: Arc<EndIdentity>, ip: Option<IpAddr>) -> Self {
        Self { identity, ip }
    }

    /// Its identity by address: one for every end that shares it.
    pub fn identity_ref(&self) -> IdentityRef {
        IdentityRef(Arc::as_ptr(&self.identity) as usize)
    }
}

/// An end's identity by the address of the one the directory built (see
/// [`FlowEnd`]): hashed and compared in an instruction or two, where its
/// names would cost a string hash and compare per flow. Ends with one
/// identity are named alike; the converse need not hold. Meaningful while
/// an end that holds the identity is kept: a freed one's address may be
/// reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdentityRef(usize);

impl EndIdentity {
    pub fn bare(kind: EndKind) -> Self {
        Self {
            kind,
            name: None,
            id: None,
            image: None,
            compose_project: None,
            compose_service: None,
            network: None,
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
    fn remote(remote: &RemoteEnd, stand_in: Container) -> Self {
        Self {
            name: Some(remote.name.clone()),
            network: Some(remote.network.clone()),
            service: remote.service.clone(),
            stack: remote.stack.clone(),
            node: remote.node.clone(),
            container: Some(Arc::new(stand_in)),
            ..Self::bare(EndKind::Container)
        }
    }

    fn container(
        container: &Arc<Container>,
        endpoint: &Endpoint,
        node: Option<&String>,
        shared_with: Vec<String>,
    ) -> Self {
        Self {
            kind: EndKind::Container,
            name: Some(container.name.clone()),
            id: Some(container.short_id().to_owned()),
            image: Some(container.image.clone()),
            compose_project: container.compose_project.clone(),
            compose_service: container.compose_service.clone(),
            network: Some(endpoint.network.clone()),
            service: container.labels.get(SERVICE_LABEL).cloned(),
            stack: container.labels.get(STACK_LABEL).cloned(),
            node: node.cloned(),
            shared_with,
            container: Some(container.clone()),
        }
    }

    fn named(kind: EndKind, name: &str, network: Option<String>) -> Self {
        Self {
            name: Some(name.to_owned()),
            network,
            ..Self::bare(kind)
        }
    }
}

/// The directory's maps are keyed by addresses and interface indexes that
/// containers choose or cause: seeded at random (foldhash, several times
/// faster than std's SipHash, which showed in the poll's profile).
type ByKey<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A container's endpoint: who it is, and which of its endpoints.
#[derive(PartialEq, Eq)]
struct Slot {
    identity: Arc<EndIdentity>,
    endpoint: usize,
}

#[derive(Default)]
pub struct Directory {
    id: DirectoryId,
    by_ip: ByKey<IpAddr, Slot>,
    by_veth: ByKey<u32, Slot>,
    gateways: ByKey<IpAddr, Arc<EndIdentity>>,
    host: HashSet<IpAddr, foldhash::fast::RandomState>,
    /// Network id to whether its containers may talk to each other.
    inter_container: ByKey<String, bool>,
    /// The overlay addresses of other nodes of the swarm, each end with its
    /// stand-in container.
    remote: ByKey<IpAddr, Arc<EndIdentity>>,
    /// The ends nothing names but their kind.
    nameless: Nameless,
}

/// Tells a directory from every other one this process made: a directory
/// never changes, so what was made of one (a flow's series labels) holds
/// while the same id is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectoryId(u64);

impl Default for DirectoryId {
    fn default() -> Self {
        static MADE: AtomicU64 = AtomicU64::new(0);
        Self(MADE.fetch_add(1, Relaxed))
    }
}

struct Nameless {
    host: Arc<EndIdentity>,
    external: Arc<EndIdentity>,
    unknown: Arc<EndIdentity>,
}

impl Default for Nameless {
    fn default() -> Self {
        Self {
            host: Arc::new(EndIdentity::named(EndKind::Host, "host", None)),
            external: Arc::new(EndIdentity::bare(EndKind::External)),
            unknown: Arc::new(EndIdentity::bare(EndKind::Unknown)),
        }
    }
}

/// Which container endpoint holds each address and veth, before their
/// identities are built (those need every running container's
/// `--network container:` joiners).
#[derive(Default)]
struct Claims<'a> {
    by_ip: HashMap<IpAddr, (&'a Container, usize)>,
    by_veth: HashMap<u32, (&'a Container, usize)>,
    /// Each gateway's network name. Unlike addresses and veths, the last
    /// one told wins, a departed container's too (as it always has: a
    /// network's gateway keeps its network whoever tells it).
    gateways: HashMap<IpAddr, &'a str>,
}

impl<'a> Claims<'a> {
    /// A container's endpoints, replacing what they had (`running`) or
    /// only where nothing is known; gateways whatever they had.
    fn add(&mut self, container: &'a Container, running: bool) {
        for (index, endpoint) in container.endpoints.iter().enumerate() {
            if let Some(gateway) = endpoint.gateway {
                self.gateways.insert(gateway, &endpoint.network);
            }
            for ip in [endpoint.ip, endpoint.ipv6].into_iter().flatten() {
                claim(self.by_ip.entry(ip), (container, index), running);
            }
            if let Some(ifindex) = endpoint.host_ifindex {
                claim(self.by_veth.entry(ifindex), (container, index), running);
            }
        }
    }
}

impl Directory {
    pub fn new<'a>(inventory: Option<&'a Inventory>, host_addresses: HashSet<IpAddr>) -> Self {
        let mut directory = Directory {
            host: host_addresses.into_iter().collect(),
            ..Directory::default()
        };
        let Some(inventory) = inventory else {
            return directory;
        };
        let node = inventory.swarm.node.as_ref();
        directory.remote = inventory
            .swarm
            .remote
            .iter()
            .map(|(ip, end)| {
                (
                    *ip,
                    Arc::new(EndIdentity::remote(end, end.as_container(*ip))),
                )
            })
            .collect();
        let mut claims = Claims::default();
        for network in inventory.networks.values() {
            directory
                .inter_container
                .insert(network.id.clone(), network.inter_container_communication);
            for gateway in &network.gateways {
                claims.gateways.insert(*gateway, &network.name);
            }
        }
        let mut joined: HashMap<&str, Vec<String>> = HashMap::new();
        for container in inventory.containers.values() {
            claims.add(container, true);
            if let Some(owner) = container.network_mode.strip_prefix("container:") {
                joined
                    .entry(owner)
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
            // One copy of a container names it: the inventory keeps the
            // running and the departed apart, and a running one would win.
            if !inventory.containers.contains_key(&container.id) {
                claims.add(container, false);
            }
        }
        directory.gateways = claims
            .gateways
            .iter()
            .map(|(ip, network)| {
                let end =
                    EndIdentity::named(EndKind::Gateway, "gateway", Some((*network).to_owned()));
                (*ip, Arc::new(end))
            })
            .collect();
        // One identity per endpoint, whichever addresses and veth it holds,
        // and one shared copy of each container.
        let mut containers: HashMap<&str, Arc<Container>> = HashMap::new();
        let mut identities: HashMap<(&str, usize), Arc<EndIdentity>> = HashMap::new();
        let mut slot = |(container, endpoint): (&'a Container, usize)| {
            let identity = match identities.entry((&container.id, endpoint)) {
                Entry::Occupied(known) => known.get().clone(),
                Entry::Vacant(new) => {
                    let shared = containers
                        .entry(&container.id)
                        .or_insert_with(|| Arc::new(container.clone()));
                    let joiners = joined.get(container.id.as_str()).cloned();
                    let identity = EndIdentity::container(
                        shared,
                        container.endpoints.get(endpoint)?,
                        node,
                        joiners.unwrap_or_default(),
                    );
                    new.insert(Arc::new(identity)).clone()
                }
            };
            Some(Slot { identity, endpoint })
        };
        directory.by_ip = claims
            .by_ip
            .into_iter()
            .filter_map(|(ip, c)| Some((ip, slot(c)?)))
            .collect();
        directory.by_veth = claims
            .by_veth
            .into_iter()
            .filter_map(|(ifindex, c)| Some((ifindex, slot(c)?)))
            .collect();
        directory
    }

    /// Whether the host's own addresses are `host`, as when built, but
    /// for IPv6 link-local ones: each veth brings its own and takes it
    /// away, and a directory would be rebuilt and compared with the last
    /// for each veth that came or went. Such an address is named the
    /// host's from the next rebuild on (a container start or stop).
    pub fn has_host_addresses(&self, host: &HashSet<IpAddr>) -> bool {
        let routed = |ip: &&IpAddr| !is_link_local_v6(**ip);
        self.host.iter().filter(routed).all(|ip| host.contains(ip))
            && host.iter().filter(routed).all(|ip| self.host.contains(ip))
    }

    pub fn id(&self) -> DirectoryId {
        self.id
    }

    /// What this directory names differently from an `earlier` one, by
    /// address and by veth; `None` when a change reaches flows that no
    /// address or veth bounds: the networks that deny inter-container
    /// communication changed (one created or removed, or switched either
    /// way), which decides [`Self::may_talk`] for every flow between
    /// their containers.
    pub fn renamed_since(&self, earlier: &Directory) -> Option<Renamed> {
        let mut renamed = Renamed::default();
        if std::ptr::eq(self, earlier) {
            return Some(renamed);
        }
        if self.isolated_networks() != earlier.isolated_networks() {
            return None;
        }
        // Any other address is external or unknown by itself, in both.
        for ip in self.named_addresses().chain(earlier.named_addresses()) {
            if self.by_address(*ip).identity != earlier.by_address(*ip).identity {
                renamed.addresses.insert(*ip);
            }
        }
        for ifindex in self.by_veth.keys().chain(earlier.by_veth.keys()) {
            if self.by_veth.get(ifindex) != earlier.by_veth.get(ifindex) {
                renamed.veths.insert(*ifindex);
            }
        }
        Some(renamed)
    }

    /// The networks that deny inter-container communication: the only
    /// ones [`Self::may_talk`] tells from a network it does not know.
    fn isolated_networks(&self) -> HashSet<&str> {
        self.inter_container
            .iter()
            .filter(|(_, allowed)| !**allowed)
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// The addresses [`Self::by_address`] finds in its maps.
    fn named_addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.by_ip
            .keys()
            .chain(self.remote.keys())
            .chain(self.gateways.keys())
            .chain(&self.host)
    }

    /// The container and endpoint behind a host-side veth.
    pub fn veth_owner(&self, ifindex: u32) -> Option<(&Arc<Container>, &Endpoint)> {
        let slot = self.by_veth.get(&ifindex)?;
        let container = slot.identity.container.as_ref()?;
        Some((container, container.endpoints.get(slot.endpoint)?))
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
        self.veth_end(ifindex, ip)
    }

    fn veth_end(&self, ifindex: u32, ip: IpAddr) -> Option<FlowEnd> {
        let slot = self.by_veth.get(&ifindex)?;
        Some(FlowEnd::new(slot.identity.clone(), Some(ip)))
    }

    /// Who has address `ip`.
    pub fn by_address(&self, ip: IpAddr) -> FlowEnd {
        let identity = if let Some(slot) = self.by_ip.get(&ip) {
            &slot.identity
        } else if let Some(remote) = self.remote.get(&ip) {
            remote
        } else if let Some(gateway) = self.gateways.get(&ip) {
            gateway
        } else if self.host.contains(&ip) {
            &self.nameless.host
        } else if is_global(ip) {
            &self.nameless.external
        } else {
            &self.nameless.unknown
        };
        FlowEnd::new(identity.clone(), Some(ip))
    }

    /// Both ends of a flow: the container behind the veth where it was
    /// counted, and the other end by address.
    pub fn ends(&self, key: &FlowKey, stats: &FlowStats) -> (FlowEnd, FlowEnd) {
        let (src, dst) = key_addrs(key);
        let by_veth = |ip| self.veth_end(stats.ifindex, ip);
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

/// The addresses and veths that one directory names otherwise than an
/// earlier one (see [`Directory::renamed_since`]): a flow that carries
/// none of them, nor was counted at one of them, is named as before.
#[derive(Debug, Default)]
pub struct Renamed {
    addresses: HashSet<IpAddr, foldhash::fast::RandomState>,
    veths: HashSet<u32, foldhash::fast::RandomState>,
}

impl Renamed {
    /// With the veths held at one poll and not the other, or the other
    /// way round: their young flows are left out, or handed over, from
    /// now on.
    pub fn with_holds_changed(mut self, before: &HashSet<u32>, now: &HashSet<u32>) -> Self {
        self.veths.extend(before.symmetric_difference(now).copied());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.veths.is_empty()
    }

    /// Whether the flow `key`, counted at `ifindex`, may be named
    /// otherwise than before.
    pub fn touches(&self, key: &FlowKey, ifindex: u32) -> bool {
        if self.veths.contains(&ifindex) {
            return true;
        }
        if self.addresses.is_empty() {
            return false;
        }
        let (src, dst) = key_addrs(key);
        self.addresses.contains(&src) || self.addresses.contains(&dst)
    }
}

/// Takes an address or veth for `slot`: always for a running container,
/// only if free for a departed one.
fn claim<K, S>(entry: Entry<'_, K, S>, slot: S, running: bool) {
    match entry {
        Entry::Occupied(mut taken) => {
            if running {
                taken.insert(slot);
            }
        }
        Entry::Vacant(free) => {
            free.insert(slot);
        }
    }
}

fn is_link_local_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
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
                || is_link_local_v6(ip))
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
pub fn end_name(end: &FlowEnd) -> &str {
    match end.kind {
        EndKind::Container => match &end.container {
            Some(container) if container.metrics_off() => AGGREGATE,
            _ => end.name.as_deref().unwrap_or("unknown"),
        },
        EndKind::Gateway => "gateway",
        EndKind::Host => "host",
        EndKind::External => "external",
        EndKind::Unknown => "unknown",
    }
}

/// How a service is named where names must outlive containers (the
/// new-connection baseline, `require_tls`): `project/service` for compose
/// services, `stack/service` (or the service) for Swarm services, else the
/// container's name, else the kind of end (`gateway`, `host`, `external`,
/// `unknown`): never an address, which changes.
pub fn service_name(end: &FlowEnd) -> String {
    let mut name = String::new();
    write_service_name(end, &mut name);
    name
}

/// [`service_name`] into `name`, whatever it held: a caller that names
/// an end at every attempt reuses one buffer.
pub fn write_service_name(end: &FlowEnd, name: &mut String) {
    name.clear();
    let (first, second) = match (&end.compose_project, &end.compose_service) {
        (Some(project), Some(service)) => (Some(project.as_str()), service.as_str()),
        _ => match (&end.stack, &end.service) {
            (Some(stack), Some(service)) => (Some(stack.as_str()), service.as_str()),
            (None, Some(service)) => (None, service.as_str()),
            _ => (None, end_name(end)),
        },
    };
    if let Some(first) = first {
        name.push_str(first);
        name.push('/');
    }
    name.push_str(second);
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

    fn on_shop(id: &str, ip: [u8; 4], veth: u32) -> Container {
        Container {
            id: id.repeat(12),
            name: id.into(),
            image: "busybox".into(),
            compose_project: None,
            compose_service: None,
            network_mode: String::new(),
            pid: None,
            sandbox_key: None,
            endpoints: vec![Endpoint {
                network: "shop".into(),
                network_id: "n1".into(),
                ip: Some(IpAddr::from(ip)),
                ipv6: None,
                mac: None,
                gateway: Some(IpAddr::from([172, 27, 0, 1])),
                host_ifindex: Some(veth),
            }],
            posture: Default::default(),
            labels: Default::default(),
            exposed_ports: Default::default(),
        }
    }

    #[test]
    fn running_containers_take_addresses_from_departed_ones_and_share_their_identity() {
        let web = on_shop("a", [172, 27, 0, 2], 10);
        let joiner = Container {
            network_mode: format!("container:{}", web.id),
            endpoints: Vec::new(),
            ..on_shop("j", [0, 0, 0, 0], 0)
        };
        let gone_here = on_shop("g", [172, 27, 0, 2], 11);
        let gone_alone = on_shop("o", [172, 27, 0, 3], 12);
        // Never both running and departed, but were it so the running wins.
        let mut twin = web.clone();
        twin.endpoints[0].network = "old".into();
        let inventory = Inventory {
            containers: [&web, &joiner].map(|c| (c.id.clone(), c.clone())).into(),
            departed: [&gone_here, &gone_alone, &twin]
                .map(|c| (c.id.clone(), (c.clone(), std::time::Instant::now())))
                .into(),
            ..Inventory::default()
        };
        let directory = Directory::new(Some(&inventory), HashSet::new());
        let name = |ip: [u8; 4]| directory.by_address(IpAddr::from(ip)).name.clone();
        assert_eq!(name([172, 27, 0, 2]).as_deref(), Some("a"));
        assert_eq!(name([172, 27, 0, 3]).as_deref(), Some("o"));
        assert_eq!(name([172, 27, 0, 1]).as_deref(), Some("gateway"));
        assert_eq!(
            directory
                .by_veth_end(11)
                .and_then(|end| end.name.clone())
                .as_deref(),
            Some("g"),
            "a departed container keeps a veth no one else has"
        );
        // Both flows of a connection name the container with one identity.
        let key = FlowKey::ipv4([172, 27, 0, 2], 40_000, [172, 27, 0, 3], 80, 6);
        let sent = FlowStats {
            ifindex: 10,
            direction: monitor_common::Direction::FromContainer as u8,
            ..FlowStats::default()
        };
        let (source, _) = directory.ends(&key, &sent);
        let by_address = directory.by_address(IpAddr::from([172, 27, 0, 2]));
        assert!(Arc::ptr_eq(&source.identity, &by_address.identity));
        assert_eq!(
            directory.by_veth_end(10).unwrap().network.as_deref(),
            Some("shop")
        );
        assert_eq!(source.shared_with, ["j"]);
        assert_eq!(
            serde_json::to_string(&source).unwrap(),
            r#"{"kind":"container","name":"a","id":"aaaaaaaaaaaa","image":"busybox","compose_project":null,"compose_service":null,"network":"shop","ip":"172.27.0.2","service":null,"stack":null,"node":null,"shared_with":["j"]}"#
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
    fn a_rebuilt_directory_tells_which_addresses_and_veths_it_names_otherwise() {
        use super::super::inventory::Network;

        // Networks by id, each with whether it allows inter-container
        // communication: n1 is the containers' own.
        let built =
            |containers: &[&Container], departed: &[&Container], networks: &[(&str, bool)]| {
                let network = |(id, icc): &(&str, bool)| Network {
                    id: (*id).into(),
                    name: (*id).into(),
                    driver: "bridge".into(),
                    bridge: None,
                    // The containers' endpoints tell n1's.
                    gateways: Vec::new(),
                    inter_container_communication: *icc,
                };
                let inventory = Inventory {
                    networks: networks
                        .iter()
                        .map(|n| (n.0.to_owned(), network(n)))
                        .collect(),
                    containers: containers
                        .iter()
                        .map(|c| (c.id.clone(), (*c).clone()))
                        .collect(),
                    departed: departed
                        .iter()
                        .map(|c| (c.id.clone(), ((*c).clone(), std::time::Instant::now())))
                        .collect(),
                    ..Inventory::default()
                };
                let host = HashSet::from([IpAddr::from([192, 0, 2, 10])]);
                Directory::new(Some(&inventory), host)
            };
        let renamed = |now: &Directory, before: &Directory| {
            let renamed = now
                .renamed_since(before)
                .expect("bounded by addresses and veths");
            let mut addresses: Vec<String> =
                renamed.addresses.iter().map(ToString::to_string).collect();
            let mut veths: Vec<u32> = renamed.veths.iter().copied().collect();
            addresses.sort();
            veths.sort_unstable();
            (addresses, veths)
        };
        let (web, db) = (
            on_shop("a", [172, 27, 0, 2], 10),
            on_shop("b", [172, 27, 0, 3], 11),
        );
        let open = [("n1", true)];
        let before = built(&[&web], &[], &open);
        assert_eq!(
            renamed(&built(&[&web], &[], &open), &before),
            (vec![], vec![]),
            "the same inventory, built again"
        );
        assert_eq!(
            renamed(&built(&[&web, &db], &[], &open), &before),
            (vec!["172.27.0.3".to_owned()], vec![11]),
            "a container started"
        );
        let mut moved = web.clone();
        moved.name = "a-renamed".into();
        assert_eq!(
            renamed(&built(&[&moved], &[], &open), &before),
            (vec!["172.27.0.2".to_owned()], vec![10]),
            "a container renamed"
        );
        assert_eq!(
            renamed(&built(&[], &[&web], &open), &before),
            (vec![], vec![]),
            "a container stopped: still named by what it was"
        );
        assert_eq!(
            renamed(&built(&[&db], &[&web], &open), &before),
            (vec!["172.27.0.3".to_owned()], vec![11]),
            "another started meanwhile"
        );
        assert!(
            built(&[&web], &[], &[("n1", false)])
                .renamed_since(&before)
                .is_none(),
            "inter-container communication denied reaches flows no address bounds"
        );
        assert_eq!(
            renamed(&built(&[&web], &[], &[("n1", true), ("n2", true)]), &before),
            (vec![], vec![]),
            "a network created that allows it changes no flow's fate"
        );
        assert!(
            built(&[&web], &[], &[("n1", true), ("n2", false)])
                .renamed_since(&before)
                .is_none(),
            "a container may name one that denies it before a directory lists it \
             (networks are listed before containers)"
        );
        let key = FlowKey::ipv4([172, 27, 0, 4], 40_000, [172, 27, 0, 3], 80, 6);
        let started = built(&[&web, &db], &[], &open)
            .renamed_since(&before)
            .unwrap();
        assert!(started.touches(&key, 12), "towards the started container");
        assert!(started.touches(&key.reversed(), 12));
        assert!(started.touches(&FlowKey::ipv4([10, 0, 0, 9], 1, [10, 0, 0, 8], 2, 17), 11));
        assert!(!started.touches(
            &FlowKey::ipv4([172, 27, 0, 2], 1, [172, 27, 0, 1], 2, 17),
            10
        ));
    }

    #[test]
    fn host_addresses_include_loopback() {
        assert!(host_addresses().contains(&IpAddr::from([127, 0, 0, 1])));
    }
}
