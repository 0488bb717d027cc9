//! What the engine says exists: networks, running containers, their
//! endpoints, and the host-side veth of each endpoint.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bollard::{
    models::{ContainerInspectResponse, EndpointSettings},
    query_parameters::{ListContainersOptionsBuilder, ListNetworksOptions},
    Docker,
};
use serde::Serialize;

use monitor_common::{veth_id, veth_id_parts};

use super::{netns, swarm::SwarmView, Posture};

#[derive(Clone, Debug, Default, Serialize)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
    /// The Docker host's name (`GET /info`): on a swarm, the node's host
    /// name, the one Prometheus' `dockerswarm_sd` gives.
    pub name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// The Linux bridge behind a `bridge`-driver network.
    pub bridge: Option<String>,
    pub gateways: Vec<IpAddr>,
    /// `com.docker.network.bridge.enable_icc`: may containers on it talk?
    pub inter_container_communication: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub network: String,
    pub network_id: String,
    pub ip: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
    pub mac: Option<String>,
    /// The network's gateway as this endpoint sees it (the default bridge
    /// leaves it out of the network's own IPAM data).
    pub gateway: Option<IpAddr>,
    /// ifindex of the host-side veth, from the container's namespace.
    pub host_ifindex: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub image: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    /// `bridge`, a network name, `host`, `none`, `container:<id>`.
    pub network_mode: String,
    pub pid: Option<u32>,
    /// The file Docker binds the container's network namespace on
    /// (`<exec-root>/netns/<id>`): how an agent that does not share the
    /// host's PID namespace finds it.
    #[serde(skip)]
    pub sandbox_key: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub posture: Posture,
    pub labels: BTreeMap<String, String>,
    /// Ports the image or `--expose` declares, as (port, IP protocol).
    pub exposed_ports: BTreeSet<(u16, u8)>,
}

impl Container {
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// Why some of this running container's traffic crosses no watched
    /// interface, if it does not: its network mode (`host`, `none`,
    /// `container`: it shares another container's namespace, whose
    /// interface counts its traffic under that container's name), or the
    /// driver of a network whose endpoint's interface (no veth: watched
    /// inside the container's namespace) is not attached (`macvlan`,
    /// `ipvlan`). `attached` says whether an interface id is watched.
    pub fn unwatched(
        &self,
        networks: &BTreeMap<String, Network>,
        attached: impl Fn(u32) -> bool,
    ) -> Option<&'static str> {
        match self.network_mode.as_str() {
            "host" => return Some("host"),
            "none" => return Some("none"),
            mode if mode.starts_with("container:") => return Some("container"),
            _ => {}
        }
        self.endpoints
            .iter()
            .filter(|e| !e.host_ifindex.is_some_and(&attached))
            .find_map(|e| match networks.get(&e.network_id)?.driver.as_str() {
                "macvlan" => Some("macvlan"),
                "ipvlan" => Some("ipvlan"),
                _ => None,
            })
    }

    /// A container as an engine event describes it (`Actor.Attributes`
    /// of `create`, `start`, `die`...: its name, image and every label),
    /// before or without an inspection: events arrive, late or not, even
    /// for a container gone before the engine could be asked about it.
    /// No endpoints: its veths are found by their namespace
    /// ([`Inventory::with_veth_owners`]).
    pub fn announced(id: &str, attributes: &HashMap<String, String>) -> Option<Container> {
        let name = attributes.get("name")?.trim_start_matches('/').to_owned();
        let labels: BTreeMap<String, String> = attributes
            .iter()
            .filter(|(key, _)| !EVENT_ATTRIBUTES.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Some(Container {
            id: id.to_owned(),
            name,
            image: attributes.get("image").cloned().unwrap_or_default(),
            compose_project: labels.get("com.docker.compose.project").cloned(),
            compose_service: labels.get("com.docker.compose.service").cloned(),
            network_mode: String::new(),
            pid: None,
            sandbox_key: None,
            endpoints: Vec::new(),
            posture: Posture::default(),
            labels,
            exposed_ports: BTreeSet::new(),
        })
    }

    /// Whether this comes from an inspection (an event's account has no
    /// network mode).
    fn inspected(&self) -> bool {
        !self.network_mode.is_empty()
    }

    /// Fills what this inspection of an endpoint lacks (veth, addresses)
    /// from an earlier one of the same container on the same network.
    fn keep_known(&mut self, earlier: &Container) {
        for endpoint in &mut self.endpoints {
            let Some(known) = earlier
                .endpoints
                .iter()
                .find(|e| e.network_id == endpoint.network_id)
            else {
                continue;
            };
            endpoint.host_ifindex = endpoint.host_ifindex.or(known.host_ifindex);
            endpoint.ip = endpoint.ip.or(known.ip);
            endpoint.ipv6 = endpoint.ipv6.or(known.ipv6);
            if endpoint.mac.is_none() {
                endpoint.mac.clone_from(&known.mac);
            }
        }
    }

    /// `crossmon.metrics=off`: the operator asked for no series naming it.
    pub fn metrics_off(&self) -> bool {
        self.labels
            .get("crossmon.metrics")
            .is_some_and(|v| v.eq_ignore_ascii_case("off"))
    }
}

/// The attributes the engine adds to a container event's labels.
const EVENT_ATTRIBUTES: [&str; 5] = ["name", "image", "exitCode", "execDuration", "signal"];

/// A veth whose container was found through its namespace
/// ([`super::owner_of_namespace`]), not by the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethOwner {
    pub container: String,
    /// The bridge it is enslaved to: which network it is on.
    pub bridge: String,
}

/// The values of [`Container::unwatched`], in the order metrics list them.
pub const UNWATCHED_REASONS: [&str; 5] = ["host", "macvlan", "ipvlan", "container", "none"];

#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub engine: EngineInfo,
    pub networks: BTreeMap<String, Network>,
    /// Running containers, by id.
    pub containers: BTreeMap<String, Container>,
    /// Overlay networks by id, with the tag of their sandbox namespace
    /// (`monitor_common::veth_id`): their endpoints' `host_ifindex` is the
    /// tagged id of the veth in that namespace. Tag 0: none was left, the
    /// network is not watched.
    pub overlays: BTreeMap<String, u8>,
    /// Containers whose own namespace has programs of its own (their
    /// macvlan or ipvlan interfaces are watched from inside), by id, with
    /// its tag: such an endpoint's `host_ifindex` is the tagged id of its
    /// interface in that namespace.
    pub namespace_tags: BTreeMap<String, u8>,
    /// The swarm this engine is in: its node, who has the overlay
    /// addresses on other nodes.
    pub swarm: SwarmView,
    /// Containers gone from the engine, by id, with when they were last
    /// seen running: kept for `--series-grace`, so that what they counted
    /// before they went is still named after them.
    pub departed: BTreeMap<String, (Container, Instant)>,
}

/// Namespace probes, by (container id, pid): a running process keeps its
/// links until a network is connected or disconnected, which changes the
/// set of endpoint MACs and so the cache key.
#[derive(Default)]
pub struct ProbeCache {
    links: HashMap<(String, u32, Vec<String>), Vec<netns::ContainerLink>>,
    /// Sandbox tags, kept while their network lives: a veth's id must not
    /// change under the flows counted at it.
    overlay_tags: BTreeMap<String, u8>,
    /// Tags of the namespaces of containers with an interface watched
    /// from inside (macvlan, ipvlan), by container id, kept while it runs.
    /// One tag space with the overlays': each tag is one instance of the
    /// programs, in one namespace.
    namespace_tags: BTreeMap<String, u8>,
    /// A cache for one inspection ([`Inventory::inspect_started`]): it
    /// lends the listing's tags but gives none, which only the listing's
    /// cache, knowing them all, can keep unique.
    lends_only: bool,
}

impl ProbeCache {
    /// Tags for the overlay networks among `networks`: kept for known
    /// ones, the lowest free for new ones (none left past 255: not watched).
    fn tag_overlays(&mut self, networks: &BTreeMap<String, Network>) -> BTreeMap<String, u8> {
        self.overlay_tags
            .retain(|id, _| networks.get(id).is_some_and(|n| n.driver == "overlay"));
        for network in networks.values().filter(|n| n.driver == "overlay") {
            if self.overlay_tags.contains_key(&network.id) {
                continue;
            }
            match self.free_tag() {
                Some(tag) => {
                    self.overlay_tags.insert(network.id.clone(), tag);
                }
                None => tracing::warn!(
                    network = %network.name,
                    "more than 255 overlay networks and watched container namespaces: this network is not watched"
                ),
            }
        }
        networks
            .values()
            .filter(|n| n.driver == "overlay")
            .map(|n| {
                let tag = self.overlay_tags.get(&n.id).copied().unwrap_or(0);
                (n.id.clone(), tag)
            })
            .collect()
    }

    /// The tag of container `id`'s namespace: kept for a known one, the
    /// lowest free for a new one; 0 when none is left (or this cache only
    /// lends): its interfaces are not watched.
    fn namespace_tag(&mut self, id: &str, name: &str) -> u8 {
        if let Some(tag) = self.namespace_tags.get(id) {
            return *tag;
        }
        if self.lends_only {
            return 0;
        }
        let Some(tag) = self.free_tag() else {
            tracing::warn!(
                container = %name,
                "more than 255 overlay networks and watched container namespaces: its macvlan or ipvlan interface is not watched"
            );
            return 0;
        };
        self.namespace_tags.insert(id.to_owned(), tag);
        tag
    }

    fn free_tag(&self) -> Option<u8> {
        let used: BTreeSet<u8> = self
            .overlay_tags
            .values()
            .chain(self.namespace_tags.values())
            .copied()
            .collect();
        (1..=u8::MAX).find(|tag| !used.contains(tag))
    }
}

impl EngineInfo {
    /// Asked once per connection: an engine's version cannot change
    /// without the connection dropping.
    pub async fn of(docker: &Docker) -> anyhow::Result<EngineInfo> {
        let version = docker.version().await.context("GET /version")?;
        let info = docker.info().await.context("GET /info")?;
        Ok(EngineInfo {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            name: info.name.unwrap_or_default(),
        })
    }
}

impl Inventory {
    /// Lists and inspects everything running. A container that vanishes
    /// mid-way is skipped, not an error.
    pub async fn sync(
        docker: &Docker,
        engine: &EngineInfo,
        cache: &mut ProbeCache,
    ) -> anyhow::Result<Inventory> {
        let networks = docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .context("GET /networks")?
            .into_iter()
            .filter_map(network)
            .map(|n| (n.id.clone(), n))
            .collect();
        let overlays = cache.tag_overlays(&networks);
        let summaries = docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(false).build()))
            .await
            .context("GET /containers/json")?;
        let mut containers = BTreeMap::new();
        let mut live_keys = Vec::new();
        for id in summaries.into_iter().filter_map(|s| s.id) {
            let Some((container, key)) = inspect(docker, &id, cache, &overlays).await else {
                continue;
            };
            live_keys.extend(key);
            containers.insert(container.id.clone(), container);
        }
        cache.links.retain(|key, _| live_keys.contains(key));
        cache
            .namespace_tags
            .retain(|id, _| containers.contains_key(id));
        let mut inventory = Inventory {
            engine: engine.clone(),
            networks,
            containers,
            overlays,
            namespace_tags: cache.namespace_tags.clone(),
            swarm: SwarmView::default(),
            departed: BTreeMap::new(),
        };
        inventory.swarm = inventory.ask_swarm(docker).await;
        Ok(inventory)
    }

    /// What the engine knows of the swarm's overlays now (nothing outside
    /// a swarm).
    pub async fn ask_swarm(&self, docker: &Docker) -> SwarmView {
        if self.overlays.is_empty() {
            return SwarmView::default();
        }
        let names = self
            .overlays
            .keys()
            .filter_map(|id| Some((id.clone(), self.networks.get(id)?.name.clone())))
            .collect();
        SwarmView::of(docker, &names).await
    }

    /// The veths of overlay endpoints, in their networks' sandboxes: (network
    /// id, tag, ifindex in the sandbox).
    pub fn overlay_veths(&self) -> impl Iterator<Item = (&str, u8, u32)> + '_ {
        self.containers.values().flat_map(move |c| {
            c.endpoints.iter().filter_map(move |e| {
                let tag = *self.overlays.get(&e.network_id)?;
                let (_, ifindex) = veth_id_parts(e.host_ifindex?);
                Some((e.network_id.as_str(), tag, ifindex))
            })
        })
    }

    /// The interfaces watched inside containers' own namespaces: (the
    /// container, its namespace's tag, the ifindex there).
    pub fn namespace_interfaces(&self) -> impl Iterator<Item = (&Container, u8, u32)> + '_ {
        self.containers.values().flat_map(move |c| {
            let tag = self.namespace_tags.get(&c.id).copied().unwrap_or(0);
            c.endpoints.iter().filter_map(move |e| {
                let (id_tag, ifindex) = veth_id_parts(e.host_ifindex?);
                (tag != 0 && id_tag == tag).then_some((c, tag, ifindex))
            })
        })
    }

    /// One container inspected now, at its start: a container that talks
    /// and exits at once may be gone before the next full listing, and
    /// must be named all the same. `None` if it is already stopped.
    pub async fn inspect_started(&self, docker: &Docker, id: &str) -> Option<Container> {
        let mut cache = ProbeCache {
            namespace_tags: self.namespace_tags.clone(),
            lends_only: true,
            ..ProbeCache::default()
        };
        let (container, _) = inspect(docker, id, &mut cache, &self.overlays).await?;
        let stopped =
            container.pid.is_none() && container.endpoints.iter().all(|e| e.host_ifindex.is_none());
        (!stopped).then_some(container)
    }

    /// This inventory with `container` running (what an earlier
    /// inspection of it learnt and this one could not is kept: the
    /// `connect` and `start` events of one start both ask).
    pub fn with_started(&self, mut container: Container) -> Inventory {
        let mut inventory = self.clone();
        if let Some((known, _)) = inventory.departed.remove(&container.id) {
            container.keep_known(&known);
        }
        if let Some(known) = inventory.containers.get(&container.id) {
            container.keep_known(known);
        }
        inventory.containers.insert(container.id.clone(), container);
        inventory
    }

    /// This inventory with `container`, known from an engine event only,
    /// among the departed (as of now) if the inventory knows nothing of
    /// it: the next listing finds it running or leaves it departed for
    /// `--series-grace`. `None` if it is known already.
    pub fn with_announced(&self, container: Container) -> Option<Inventory> {
        if self.containers.contains_key(&container.id) || self.departed.contains_key(&container.id)
        {
            return None;
        }
        let mut inventory = self.clone();
        inventory
            .departed
            .insert(container.id.clone(), (container, Instant::now()));
        Some(inventory)
    }

    /// This inventory with the veths found through their namespaces given
    /// to their containers (running or departed), on the network of their
    /// bridge, where no inspection gave the veth to any container nor that
    /// network's endpoint a veth; a container only an event told of gets
    /// the endpoint (what an inspection found stands).
    pub fn with_veth_owners(&self, owners: &BTreeMap<u32, VethOwner>) -> Inventory {
        let mut inventory = self.clone();
        let inspected: BTreeSet<u32> = self
            .containers
            .values()
            .chain(self.departed.values().map(|(c, _)| c))
            .flat_map(|c| c.endpoints.iter().filter_map(|e| e.host_ifindex))
            .collect();
        for (ifindex, owner) in owners {
            // An inspection named it (the namespace's first container, when
            // `container:` ones share it): that stands.
            if inspected.contains(ifindex) {
                continue;
            }
            let Some(network) = inventory
                .networks
                .values()
                .find(|n| n.bridge.as_deref() == Some(owner.bridge.as_str()))
            else {
                continue;
            };
            let container = match inventory.containers.get_mut(&owner.container) {
                Some(running) => running,
                None => match inventory.departed.get_mut(&owner.container) {
                    Some((departed, _)) => departed,
                    None => continue,
                },
            };
            let inspected = container.inspected();
            match container
                .endpoints
                .iter_mut()
                .find(|e| e.network_id == network.id)
            {
                Some(endpoint) if endpoint.host_ifindex.is_none() => {
                    endpoint.host_ifindex = Some(*ifindex);
                }
                // An inspection's endpoints are all the container has (a
                // network it left is not given back).
                Some(_) => {}
                None if inspected => {}
                None => container.endpoints.push(Endpoint {
                    network: network.name.clone(),
                    network_id: network.id.clone(),
                    ip: None,
                    ipv6: None,
                    mac: None,
                    gateway: None,
                    host_ifindex: Some(*ifindex),
                }),
            }
        }
        inventory
    }

    /// Carries over from `previous` the containers that departed: those it
    /// had running and this one has not, and those departed less than
    /// `grace` ago; and what `previous` knew of a container's endpoints
    /// that this listing no longer could (its process exited between the
    /// listing and the inspection: no namespace to probe, no address).
    pub fn remember_departed(&mut self, previous: &Inventory, grace: Duration) {
        for container in self.containers.values_mut() {
            // Departed too: a container listed while it stops comes back
            // once, inspected with nothing left.
            let known = previous
                .containers
                .get(&container.id)
                .or_else(|| previous.departed.get(&container.id).map(|(c, _)| c));
            if let Some(known) = known {
                container.keep_known(known);
            }
        }
        let now = Instant::now();
        let gone = previous
            .containers
            .values()
            .filter(|c| !self.containers.contains_key(&c.id))
            .map(|c| (c.id.clone(), (c.clone(), now)));
        let kept = previous
            .departed
            .iter()
            .filter(|(id, (_, left))| {
                !self.containers.contains_key(*id) && now.saturating_duration_since(*left) < grace
            })
            .map(|(id, departed)| (id.clone(), departed.clone()));
        self.departed = kept.chain(gone).collect();
    }

    /// Host-side veth ifindexes of every container endpoint.
    pub fn container_veths(&self) -> impl Iterator<Item = u32> + '_ {
        self.containers
            .values()
            .flat_map(|c| c.endpoints.iter().filter_map(|e| e.host_ifindex))
    }
}

/// Inspects one container and finds its veths; `None` when it is gone.
async fn inspect(
    docker: &Docker,
    id: &str,
    cache: &mut ProbeCache,
    overlays: &BTreeMap<String, u8>,
) -> Option<(Container, Option<(String, u32, Vec<String>)>)> {
    let inspect = match docker.inspect_container(id, None).await {
        Ok(inspect) => inspect,
        Err(err) => {
            tracing::debug!(container = %id, "gone before inspect: {err}");
            return None;
        }
    };
    let mut container = container(inspect)?;
    let key = map_veths(&mut container, cache, overlays).await;
    Some((container, key))
}

fn network(n: bollard::models::Network) -> Option<Network> {
    let id = n.id?;
    let driver = n.driver.unwrap_or_default();
    let options = n.options.unwrap_or_default();
    let bridge = (driver == "bridge").then(|| {
        options
            .get("com.docker.network.bridge.name")
            .cloned()
            .unwrap_or_else(|| format!("br-{}", id.get(..12).unwrap_or(&id)))
    });
    let gateways = n
        .ipam
        .and_then(|ipam| ipam.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|config| config.gateway?.parse().ok())
        .collect();
    Some(Network {
        name: n.name.unwrap_or_else(|| id.clone()),
        id,
        driver,
        bridge,
        gateways,
        inter_container_communication: options
            .get("com.docker.network.bridge.enable_icc")
            .is_none_or(|v| v != "false"),
    })
}

fn container(inspect: ContainerInspectResponse) -> Option<Container> {
    let posture = Posture::of(&inspect);
    let config = inspect.config.unwrap_or_default();
    let labels: BTreeMap<String, String> = config.labels.unwrap_or_default().into_iter().collect();
    let exposed_ports = config
        .exposed_ports
        .unwrap_or_default()
        .iter()
        .filter_map(|spec| exposed_port(spec))
        .collect();
    let settings = inspect.network_settings.unwrap_or_default();
    let sandbox_key = settings.sandbox_key.filter(|key| !key.is_empty());
    let endpoints = settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(network, settings)| endpoint(network, settings))
        .collect();
    Some(Container {
        id: inspect.id?,
        name: inspect
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image: config.image.unwrap_or_default(),
        compose_project: labels.get("com.docker.compose.project").cloned(),
        compose_service: labels.get("com.docker.compose.service").cloned(),
        network_mode: inspect
            .host_config
            .and_then(|h| h.network_mode)
            .unwrap_or_default(),
        pid: inspect
            .state
            .and_then(|s| s.pid)
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid != 0),
        sandbox_key,
        endpoints,
        posture,
        labels,
        exposed_ports,
    })
}

/// `80/tcp`, `53/udp` (a bare port is TCP, as in Docker).
fn exposed_port(spec: &str) -> Option<(u16, u8)> {
    let (port, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let protocol = match protocol {
        "tcp" => monitor_common::ip_proto::TCP,
        "udp" => monitor_common::ip_proto::UDP,
        _ => return None,
    };
    Some((port.parse().ok()?, protocol))
}

fn endpoint(network: String, settings: EndpointSettings) -> Endpoint {
    let parse = |text: Option<String>| text.filter(|t| !t.is_empty())?.parse().ok();
    Endpoint {
        network,
        network_id: settings.network_id.unwrap_or_default(),
        ip: parse(settings.ip_address),
        ipv6: parse(settings.global_ipv6_address),
        mac: settings.mac_address.filter(|m| !m.is_empty()),
        gateway: parse(settings.gateway),
        host_ifindex: None,
    }
}

/// Fills each endpoint's host-side veth by matching MAC addresses inside the
/// container's namespace (on an overlay, the veth's id in its network's
/// sandbox); returns the cache key used.
async fn map_veths(
    container: &mut Container,
    cache: &mut ProbeCache,
    overlays: &BTreeMap<String, u8>,
) -> Option<(String, u32, Vec<String>)> {
    let pid = container.pid?;
    if container.network_mode == "host" || container.endpoints.is_empty() {
        return None;
    }
    let mut macs: Vec<String> = container
        .endpoints
        .iter()
        .filter_map(|e| e.mac.clone())
        .collect();
    macs.sort();
    let key = (container.id.clone(), pid, macs);
    if !cache.links.contains_key(&key) {
        match probe(container, pid).await {
            Ok(links) => {
                cache.links.insert(key.clone(), links);
            }
            Err(err) => {
                // The process may have exited already (a container that
                // talks and exits): its namespace lives on until Docker
                // tears its endpoints down, reached through the host veths.
                tracing::debug!(container = %container.name, "namespace probe failed: {err:#}");
                match netns::host_veth_peers().await {
                    Ok(links) => match_veths(container, &links, overlays, || 0),
                    Err(err) => tracing::debug!("probing host veths' peers: {err:#}"),
                }
                return None;
            }
        }
    }
    let links = cache.links.get(&key)?.clone();
    // A namespace is tagged only when an endpoint's interface is watched
    // inside it (not for a bridge a container made in it, Docker in
    // Docker's).
    let (id, name) = (container.id.clone(), container.name.clone());
    let mut own_tag = None;
    match_veths(container, &links, overlays, || {
        *own_tag.get_or_insert_with(|| cache.namespace_tag(&id, &name))
    });
    Some(key)
}

/// The veths inside the container's namespace, named by its pid or, where
/// that pid is not one of the agent's PID namespace (an agent run as a
/// Swarm service, which cannot share the host's), by its `SandboxKey`.
async fn probe(container: &Container, pid: u32) -> anyhow::Result<Vec<netns::ContainerLink>> {
    let by_pid = match netns::container_links(pid).await {
        Ok(links) => return Ok(links),
        Err(err) => err,
    };
    let Some(key) = &container.sandbox_key else {
        return Err(by_pid);
    };
    netns::sandbox_links(std::path::Path::new(key))
        .await
        .map_err(|by_key| anyhow::anyhow!("{by_pid:#}; by its sandbox key: {by_key:#}"))
}

/// Each endpoint's host veth: the one whose peer has the endpoint's MAC;
/// or, for an interface with no peer (macvlan, ipvlan), its tagged id in
/// the container's namespace (tagged by `own_tag`, asked only then; 0:
/// not watched). An
/// endpoint without a MAC (ipvlan ones have none in Docker's inspection)
/// gets the container's one peerless interface no other endpoint's MAC
/// names, if there is exactly one, and that interface's MAC (an ipvlan
/// one's is its parent's): what it sends carries it, and a policy's
/// spoofing check compares with it.
fn match_veths(
    container: &mut Container,
    links: &[netns::ContainerLink],
    overlays: &BTreeMap<String, u8>,
    mut own_tag: impl FnMut() -> u8,
) {
    let macs: Vec<[u8; 6]> = container
        .endpoints
        .iter()
        .filter_map(|e| e.mac.as_deref().and_then(parse_mac))
        .collect();
    let unnamed_peerless: Vec<&netns::ContainerLink> = links
        .iter()
        .filter(|link| link.peer_ifindex.is_none() && !link.mac.is_some_and(|m| macs.contains(&m)))
        .collect();
    for endpoint in &mut container.endpoints {
        let mac = endpoint.mac.as_deref().and_then(parse_mac);
        let link = match mac {
            Some(mac) => links.iter().find(|link| link.mac == Some(mac)),
            None => match unnamed_peerless.as_slice() {
                [only] => {
                    endpoint.mac = only.mac.map(crate::model::mac_text);
                    Some(*only)
                }
                _ => None,
            },
        };
        let tag = overlays.get(&endpoint.network_id).copied();
        endpoint.host_ifindex = link.and_then(|link| match (link.peer_ifindex, tag) {
            (None, _) => {
                let own = own_tag();
                (own != 0 && link.ifindex < veth_id(1, 0)).then(|| veth_id(own, link.ifindex))
            }
            (Some(peer), None) => Some(peer),
            (Some(_), Some(0)) => None,
            (Some(peer), Some(tag)) => (peer < veth_id(1, 0)).then(|| veth_id(tag, peer)),
        });
    }
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use crate::docker::Directory;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
        assert_eq!(parse_mac("02:42:ac:11:00:02:03"), None);
        assert_eq!(parse_mac("zz:42:ac:11:00:02"), None);
    }

    #[test]
    fn unwatched_says_why_by_mode_and_by_driver() {
        let network = |id: &str, driver: &str| Network {
            id: id.into(),
            name: id.into(),
            driver: driver.into(),
            bridge: None,
            gateways: Vec::new(),
            inter_container_communication: true,
        };
        let networks: BTreeMap<String, Network> = [
            network("br", "bridge"),
            network("mv", "macvlan"),
            network("iv", "ipvlan"),
        ]
        .into_iter()
        .map(|n| (n.id.clone(), n))
        .collect();
        let container = |mode: &str, on: &[(&str, Option<u32>)]| Container {
            id: "c".into(),
            name: "c".into(),
            image: String::new(),
            compose_project: None,
            compose_service: None,
            network_mode: mode.into(),
            pid: Some(1),
            sandbox_key: None,
            endpoints: on
                .iter()
                .map(|(network, veth)| Endpoint {
                    network: (*network).into(),
                    network_id: (*network).into(),
                    ip: None,
                    ipv6: None,
                    mac: None,
                    gateway: None,
                    host_ifindex: *veth,
                })
                .collect(),
            posture: Posture::default(),
            labels: BTreeMap::new(),
            exposed_ports: BTreeSet::new(),
        };
        let attached = |ifindex: u32| ifindex == 7;
        let why = |c: Container| c.unwatched(&networks, attached);
        assert_eq!(why(container("host", &[])), Some("host"));
        assert_eq!(why(container("none", &[])), Some("none"));
        assert_eq!(why(container("container:abc", &[])), Some("container"));
        assert_eq!(why(container("mv", &[("mv", None)])), Some("macvlan"));
        assert_eq!(why(container("iv", &[("iv", None)])), Some("ipvlan"));
        assert_eq!(why(container("br", &[("br", Some(7))])), None);
        // Watched on its bridge, unseen on its macvlan network.
        assert_eq!(
            why(container("br", &[("br", Some(7)), ("mv", None)])),
            Some("macvlan")
        );
        // A bridge veth not attached (yet) is no reason of these.
        assert_eq!(why(container("br", &[("br", Some(8))])), None);
        // A macvlan interface watched inside its namespace is no reason.
        assert_eq!(why(container("mv", &[("mv", Some(7))])), None);
    }

    fn link(ifindex: u32, mac: [u8; 6], peer: Option<u32>) -> netns::ContainerLink {
        netns::ContainerLink {
            name: format!("eth{ifindex}"),
            mac: Some(mac),
            ifindex,
            peer_ifindex: peer,
        }
    }

    #[test]
    fn peerless_interfaces_are_named_by_their_tagged_id_in_the_containers_namespace() {
        let endpoint = |network: &str, mac: Option<&str>| Endpoint {
            network: network.into(),
            network_id: network.into(),
            ip: None,
            ipv6: None,
            mac: mac.map(Into::into),
            gateway: None,
            host_ifindex: None,
        };
        let mut container = Container::announced(
            "c",
            &[("name".to_owned(), "c".to_owned())].into_iter().collect(),
        )
        .expect("a container");
        container.endpoints = vec![
            endpoint("br", Some("02:42:ac:11:00:02")),
            endpoint("mv", Some("02:42:0a:ed:00:02")),
            endpoint("iv", None),
        ];
        let links = [
            link(2, [2, 0x42, 0xac, 0x11, 0, 2], Some(40)),
            link(3, [2, 0x42, 0x0a, 0xed, 0, 2], None),
            // An ipvlan interface has its parent's MAC, which Docker does
            // not report.
            link(4, [2, 0, 0, 0, 0, 9], None),
        ];
        let veths = |c: &Container| -> Vec<Option<u32>> {
            c.endpoints.iter().map(|e| e.host_ifindex).collect()
        };
        let mut watched = container.clone();
        match_veths(&mut watched, &links, &BTreeMap::new(), || 5);
        assert_eq!(
            veths(&watched),
            [Some(40), Some(veth_id(5, 3)), Some(veth_id(5, 4))]
        );
        // The ipvlan endpoint takes its interface's MAC, which its frames
        // carry (a policy's spoofing check compares with it).
        assert_eq!(
            watched.endpoints[2].mac.as_deref(),
            Some("02:00:00:00:00:09")
        );
        // No tag left: only the veth is watched.
        let mut untagged = container.clone();
        match_veths(&mut untagged, &links, &BTreeMap::new(), || 0);
        assert_eq!(veths(&untagged), [Some(40), None, None]);
        // Two MAC-less endpoints and two peerless interfaces: no guess.
        let mut ambiguous = container;
        ambiguous.endpoints[1].mac = None;
        match_veths(&mut ambiguous, &links, &BTreeMap::new(), || 5);
        assert_eq!(veths(&ambiguous), [Some(40), None, None]);
        // A bridge the container made inside (Docker in Docker's docker0)
        // names no endpoint: its namespace takes no tag.
        let mut bridged = Container::announced(
            "d",
            &[("name".to_owned(), "d".to_owned())].into_iter().collect(),
        )
        .expect("a container");
        bridged.endpoints = vec![endpoint("br", Some("02:42:ac:11:00:02"))];
        match_veths(&mut bridged, &links[..2], &BTreeMap::new(), || -> u8 {
            panic!("a tag asked for")
        });
        assert_eq!(veths(&bridged), [Some(40)]);
    }

    #[test]
    fn namespace_tags_share_the_overlays_space_and_a_lending_cache_gives_none() {
        let overlay = Network {
            id: "ov".into(),
            name: "ov".into(),
            driver: "overlay".into(),
            bridge: None,
            gateways: Vec::new(),
            inter_container_communication: true,
        };
        let mut cache = ProbeCache::default();
        let overlays = cache.tag_overlays(&[("ov".to_owned(), overlay)].into_iter().collect());
        assert_eq!(overlays.get("ov"), Some(&1));
        assert_eq!(cache.namespace_tag("a", "a"), 2);
        assert_eq!(cache.namespace_tag("b", "b"), 3);
        assert_eq!(cache.namespace_tag("a", "a"), 2, "kept");
        let mut lending = ProbeCache {
            namespace_tags: cache.namespace_tags.clone(),
            lends_only: true,
            ..ProbeCache::default()
        };
        assert_eq!(lending.namespace_tag("b", "b"), 3);
        assert_eq!(lending.namespace_tag("new", "new"), 0);
    }

    #[test]
    fn an_event_names_a_container_and_a_veth_found_by_namespace_joins_it() {
        let attributes: HashMap<String, String> = [
            ("name", "job-1"),
            ("image", "busybox"),
            ("exitCode", "0"),
            ("com.docker.compose.project", "shop"),
            ("team", "payments"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let announced = Container::announced("abc", &attributes).expect("named");
        assert_eq!(announced.name, "job-1");
        assert_eq!(announced.image, "busybox");
        assert_eq!(announced.compose_project.as_deref(), Some("shop"));
        assert_eq!(
            announced.labels.keys().collect::<Vec<_>>(),
            ["com.docker.compose.project", "team"]
        );
        assert!(Container::announced("abc", &HashMap::new()).is_none());

        let mut inventory = Inventory::default();
        inventory.networks.insert(
            "net".into(),
            Network {
                id: "net".into(),
                name: "jobs".into(),
                driver: "bridge".into(),
                bridge: Some("br-jobs".into()),
                gateways: Vec::new(),
                inter_container_communication: true,
            },
        );
        let inventory = inventory.with_announced(announced.clone()).expect("new");
        assert!(inventory.departed.contains_key("abc"));
        // Known already: an event adds nothing.
        assert!(inventory.with_announced(announced).is_none());

        let owners = BTreeMap::from([
            (
                7,
                VethOwner {
                    container: "abc".into(),
                    bridge: "br-jobs".into(),
                },
            ),
            // Unknown container, unknown bridge: left alone.
            (
                8,
                VethOwner {
                    container: "nobody".into(),
                    bridge: "br-jobs".into(),
                },
            ),
            (
                9,
                VethOwner {
                    container: "abc".into(),
                    bridge: "br-other".into(),
                },
            ),
        ]);
        let identified = inventory.with_veth_owners(&owners);
        let (container, _) = &identified.departed["abc"];
        assert_eq!(container.endpoints.len(), 1);
        assert_eq!(container.endpoints[0].network, "jobs");
        assert_eq!(container.endpoints[0].host_ifindex, Some(7));
        let directory = Directory::new(Some(&identified), HashSet::new());
        let (owner, _) = directory.veth_owner(7).expect("veth 7 named");
        assert_eq!(owner.name, "job-1");
        assert!(directory.veth_owner(8).is_none());
        assert!(directory.veth_owner(9).is_none());
        // Applied again: the same (an inspection's veth stands).
        let again = identified.with_veth_owners(&owners);
        assert_eq!(again.departed["abc"].0.endpoints.len(), 1);

        // Inspected since, without that network (disconnected): its veth
        // is not given back; an endpoint the inspection left without a
        // veth gets it.
        let mut inspected = inventory.clone();
        let (container, _) = inspected.departed.get_mut("abc").expect("known");
        container.network_mode = "other".into();
        let identified = inspected.with_veth_owners(&owners);
        assert!(identified.departed["abc"].0.endpoints.is_empty());
        let (container, _) = inspected.departed.get_mut("abc").expect("known");
        container.endpoints = endpoint_without_veth();
        let identified = inspected.with_veth_owners(&owners);
        assert_eq!(
            identified.departed["abc"].0.endpoints[0].host_ifindex,
            Some(7)
        );
    }

    fn endpoint_without_veth() -> Vec<Endpoint> {
        vec![Endpoint {
            network: "jobs".into(),
            network_id: "net".into(),
            ip: None,
            ipv6: None,
            mac: None,
            gateway: None,
            host_ifindex: None,
        }]
    }

    #[test]
    fn exposed_ports_parse_as_docker_writes_them() {
        use monitor_common::ip_proto::{TCP, UDP};
        assert_eq!(exposed_port("80/tcp"), Some((80, TCP)));
        assert_eq!(exposed_port("53/udp"), Some((53, UDP)));
        assert_eq!(exposed_port("8080"), Some((8080, TCP)));
        assert_eq!(exposed_port("132/sctp"), None);
        assert_eq!(exposed_port("http/tcp"), None);
    }
}
