//! The link follower: attaches the programs to container veths the moment
//! the kernel enslaves them to a watched bridge, detaches them when they
//! go, keeps the policy's view of the containers current, and publishes
//! the Docker snapshot every reader uses.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use monitor_common::veth_id;
use netlink_packet_route::link::InfoKind;
use rtnetlink::Handle;
use tokio::sync::watch;

use crate::{
    datapath::{AttachStats, Programs, Side},
    docker::{
        self, host_addresses, owner_of_namespace, Inventory, NamespaceIds, Snapshot, VethOwner,
    },
    links::{self, BridgePort, LinkEvent},
    policy::PolicyInForce,
    sync::{lock, Published},
};

/// Link changes come in bursts (a container start is about eight
/// notifications): one full listing per burst, for what the notifications
/// alone do not settle (a veth that left its bridge, a new bridge).
const RESYNC_AFTER: Duration = Duration::from_millis(100);

pub struct LinkFollower {
    pub programs: Arc<Mutex<Programs>>,
    pub docker: Published<Snapshot>,
    /// `None` with `--no-docker`: every bridge is watched.
    pub inventory: Option<watch::Receiver<Option<Arc<Inventory>>>>,
    pub policy: Option<Arc<Mutex<PolicyInForce>>>,
    pub stats: Arc<AttachStats>,
    /// Docker's `<exec-root>/netns`: the sandboxes of overlay networks,
    /// whose endpoints' veths are attached there.
    pub sandboxes: PathBuf,
    /// `--series-grace`: how long a veth's owner is remembered after the
    /// veth is gone (what it counted is named after it meanwhile).
    pub grace: Duration,
}

/// What the follower keeps between notifications.
struct State {
    /// Every bridge of the host, by ifindex: a notification names a veth's
    /// master by ifindex only.
    bridges: HashMap<u32, String>,
    /// When the notification that showed each veth enslaved was taken off
    /// the socket, until it is attached: the start of its attach latency.
    enslaved_at: HashMap<u32, Instant>,
    /// Whose each veth is, found through the namespace its peer moved
    /// into, while the container runs: a container that talks and exits
    /// at once may be gone before the engine answers an inspection.
    owners: BTreeMap<u32, VethOwner>,
    /// When owned veths went: their owner is forgotten after the grace.
    owners_gone: HashMap<u32, Instant>,
    /// Veths a listing found no owner for: not searched again by listings.
    ownerless: HashSet<u32>,
    namespaces: NamespaceIds,
    /// The last inventory received, and the same with `owners` applied.
    identified: Option<(Arc<Inventory>, Arc<Inventory>)>,
    owners_changed: bool,
    /// Interfaces in other namespaces that could not be attached (by
    /// namespace and id), warned of already.
    not_attached: HashSet<(PathBuf, u32)>,
}

impl LinkFollower {
    /// Attaches to the veths enslaved to a watched bridge (a Docker
    /// network's; any bridge with `--no-docker`) as their notification
    /// arrives, before the engine says whose they are, and follows link
    /// and container changes.
    /// It publishes the Docker snapshot: the directory first (a container's
    /// identity is known before its veth is counted), then the veths
    /// attached.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let (handle, events) = links::watch()?;
        let mut events = std::pin::pin!(events);
        let mut state = State {
            bridges: HashMap::new(),
            enslaved_at: HashMap::new(),
            owners: BTreeMap::new(),
            owners_gone: HashMap::new(),
            ownerless: HashSet::new(),
            namespaces: NamespaceIds::default(),
            identified: None,
            owners_changed: false,
            not_attached: HashSet::new(),
        };
        let mut resync_at = Some(tokio::time::Instant::now());
        loop {
            let inventory_changed = async {
                match self.inventory.as_mut() {
                    Some(receiver) => receiver.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let resync_due = async {
                match resync_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                event = events.next() => {
                    let Some((received, event)) = event else {
                        anyhow::bail!("the rtnetlink notification stream ended");
                    };
                    if self.on_event(&handle, &mut state, received, event).await {
                        resync_at.get_or_insert(tokio::time::Instant::now() + RESYNC_AFTER);
                    }
                }
                () = resync_due => {
                    resync_at = None;
                    self.resync(&handle, &mut state).await?;
                }
                open = inventory_changed => {
                    if !open {
                        anyhow::bail!("the Docker follower stopped");
                    }
                    self.resync(&handle, &mut state).await?;
                }
            }
        }
    }

    /// Attaches at once to a veth the notification shows on a watched
    /// bridge; returns whether a full listing is needed.
    async fn on_event(
        &self,
        handle: &Handle,
        state: &mut State,
        received: Instant,
        event: LinkEvent,
    ) -> bool {
        let link = match event {
            LinkEvent::New(link) => link,
            LinkEvent::Removed(ifindex) => {
                state.bridges.remove(&ifindex);
                state.enslaved_at.remove(&ifindex);
                return true;
            }
            LinkEvent::Other => return false,
        };
        if link.kind == Some(InfoKind::Bridge) {
            let known = state.bridges.insert(link.ifindex, link.name.clone());
            return known.as_ref() != Some(&link.name);
        }
        let Some(master) = link.master else {
            return lock(&self.programs).is_attached(link.ifindex);
        };
        let Some(bridge_name) = state.bridges.get(&master) else {
            return true;
        };
        if link.kind != Some(InfoKind::Veth) {
            return false;
        }
        let attached = lock(&self.programs).is_attached(link.ifindex);
        if !attached {
            state.enslaved_at.entry(link.ifindex).or_insert(received);
        }
        if !self.watches(bridge_name, self.known().as_deref()) {
            return false;
        }
        let bridge_name = bridge_name.clone();
        if !attached {
            let port = BridgePort {
                ifindex: link.ifindex,
                name: link.name,
                bridge_ifindex: master,
                bridge_name: bridge_name.clone(),
                peer: None,
            };
            self.attach(handle, state, &port).await;
        }
        // The peer is in the container's namespace (the notification of
        // the veth going up, after Docker moved it in): whose it is, while
        // the container's first process runs.
        let found = match link.link_netnsid {
            Some(nsid) => {
                self.find_owner(handle, state, link.ifindex, &bridge_name, nsid)
                    .await
            }
            None => false,
        };
        if !attached || found {
            let inventory = self.identified(state, self.known());
            self.publish(inventory);
        }
        false
    }

    /// Finds the container of veth `ifindex` by the namespace `nsid` its
    /// peer is in, unless known; returns whether it was found now.
    async fn find_owner(
        &self,
        handle: &Handle,
        state: &mut State,
        ifindex: u32,
        bridge: &str,
        nsid: i32,
    ) -> bool {
        // Without Docker there are no containers to name.
        if self.inventory.is_none() || state.owners.contains_key(&ifindex) {
            return false;
        }
        let Some(container) = owner_of_namespace(handle, nsid, &mut state.namespaces).await else {
            tracing::debug!(
                ifindex,
                nsid,
                "no container process in the veth's namespace"
            );
            return false;
        };
        tracing::debug!(ifindex, %container, "veth owner found by its namespace");
        state.owners.insert(
            ifindex,
            VethOwner {
                container,
                bridge: bridge.to_owned(),
            },
        );
        state.owners_changed = true;
        true
    }

    /// `known` with the veth owners found by namespace applied (computed
    /// once per inventory and change of owners).
    fn identified(
        &self,
        state: &mut State,
        known: Option<Arc<Inventory>>,
    ) -> Option<Arc<Inventory>> {
        let known = known?;
        if let Some((source, identified)) = &state.identified {
            if Arc::ptr_eq(source, &known) && !state.owners_changed {
                return Some(identified.clone());
            }
        }
        let identified = if state.owners.is_empty() {
            known.clone()
        } else {
            Arc::new(known.with_veth_owners(&state.owners))
        };
        state.identified = Some((known, identified.clone()));
        state.owners_changed = false;
        Some(identified)
    }

    /// Forgets the owners of veths gone for longer than the grace, and
    /// searches those of attached veths still unnamed (attached by a
    /// listing, or their notification came before any container process
    /// was in the namespace).
    async fn follow_owners(
        &self,
        handle: &Handle,
        state: &mut State,
        links: &HashMap<u32, links::Link>,
        ports: &[BridgePort],
        named: impl Fn(u32) -> bool,
    ) {
        let now = Instant::now();
        for ifindex in state.owners.keys() {
            if !links.contains_key(ifindex) {
                state.owners_gone.entry(*ifindex).or_insert(now);
            }
        }
        let grace = self.grace;
        let expired: Vec<u32> = state
            .owners_gone
            .iter()
            .filter(|(_, gone)| now.saturating_duration_since(**gone) >= grace)
            .map(|(ifindex, _)| *ifindex)
            .collect();
        for ifindex in expired {
            state.owners_gone.remove(&ifindex);
            state.owners.remove(&ifindex);
            state.owners_changed = true;
        }
        state
            .ownerless
            .retain(|ifindex| links.contains_key(ifindex));
        for port in ports {
            let Some((nsid, _)) = port.peer else {
                continue;
            };
            if named(port.ifindex)
                || state.owners.contains_key(&port.ifindex)
                || state.ownerless.contains(&port.ifindex)
            {
                continue;
            }
            if !self
                .find_owner(handle, state, port.ifindex, &port.bridge_name, nsid)
                .await
            {
                state.ownerless.insert(port.ifindex);
            }
        }
    }

    /// Lists every link: attaches what notifications did not, detaches what
    /// left, and publishes the inventory's directory then the attachments.
    async fn resync(&mut self, handle: &Handle, state: &mut State) -> anyhow::Result<()> {
        let links = links::all_links(handle).await?;
        state.bridges = links
            .values()
            .filter(|link| link.kind == Some(InfoKind::Bridge))
            .map(|link| (link.ifindex, link.name.clone()))
            .collect();
        let received = self
            .inventory
            .as_mut()
            .and_then(|receiver| receiver.borrow_and_update().clone());
        let ports: Vec<BridgePort> = links::bridge_ports(&links)
            .into_iter()
            .filter(|port| self.watches(&port.bridge_name, received.as_deref()))
            .collect();
        let previous = self.docker.load();
        self.follow_owners(handle, state, &links, &ports, |ifindex| {
            previous.directory.veth_owner(ifindex).is_some()
        })
        .await;
        let known = self.identified(state, received);
        // A container's policy is in force before its veth is attached.
        if let Some(policy) = &self.policy {
            lock(policy).on_inventory(known.clone());
        }
        // Also without Docker: a new bridge brings a new host address.
        let mut identified = previous.renewed(
            known.clone(),
            previous.interfaces.clone(),
            Some(host_addresses()),
        );
        // Veths still unnamed keep their flows waiting meanwhile.
        identified.unnamed = previous
            .unnamed
            .iter()
            .filter(|ifindex| identified.directory.veth_owner(**ifindex).is_none())
            .copied()
            .collect();
        self.docker.store(Arc::new(identified));
        let overlay_ports =
            known
                .iter()
                .flat_map(|k| k.overlay_veths())
                .map(|(network_id, tag, ifindex)| SandboxPort {
                    netns: self.sandboxes.join(sandbox_name(network_id)),
                    tag,
                    ifindex,
                    side: Side::Host,
                });
        let own_ports = known
            .iter()
            .flat_map(|k| k.namespace_interfaces())
            .filter_map(|(container, tag, ifindex)| {
                Some(SandboxPort {
                    netns: container_namespace(container)?,
                    tag,
                    ifindex,
                    side: Side::Container,
                })
            });
        let sandbox_ports: Vec<SandboxPort> = overlay_ports.chain(own_ports).collect();
        self.detach_stale(&ports, &sandbox_ports);
        for port in &ports {
            if !lock(&self.programs).is_attached(port.ifindex) {
                self.attach(handle, state, port).await;
            }
        }
        attach_sandboxed(
            &mut lock(&self.programs),
            &sandbox_ports,
            &mut state.not_attached,
        );
        state
            .enslaved_at
            .retain(|ifindex, _| links.contains_key(ifindex));
        self.publish(known);
        Ok(())
    }

    /// The inventory as last received (not marked seen: the next listing
    /// still takes it up).
    fn known(&self) -> Option<Arc<Inventory>> {
        self.inventory
            .as_ref()
            .and_then(|receiver| receiver.borrow().clone())
    }

    /// Whether veths on `bridge` are watched: every bridge without Docker;
    /// with it, a Docker network's bridge, known from the inventory or by
    /// the name Docker gives its bridges (so that a network created an
    /// instant ago is watched before the engine lists it); none before the
    /// engine first answers: a veth crossmon cannot name is not its to
    /// watch.
    fn watches(&self, bridge: &str, inventory: Option<&Inventory>) -> bool {
        if self.inventory.is_none() {
            return true;
        }
        let Some(inventory) = inventory else {
            return false;
        };
        inventory
            .networks
            .values()
            .any(|network| network.bridge.as_deref() == Some(bridge))
            || is_docker_bridge_name(bridge)
    }

    fn detach_stale(&self, ports: &[BridgePort], sandbox_ports: &[SandboxPort]) {
        let wanted: BTreeMap<u32, &BridgePort> = ports.iter().map(|p| (p.ifindex, p)).collect();
        let wanted_sandboxed: BTreeMap<u32, &SandboxPort> =
            sandbox_ports.iter().map(|p| (p.id(), p)).collect();
        let mut programs = lock(&self.programs);
        let stale: Vec<u32> = programs
            .attached()
            .filter(|a| match &a.netns {
                None => wanted
                    .get(&a.ifindex)
                    .is_none_or(|p| p.bridge_ifindex != a.bridge_ifindex),
                Some(netns) => wanted_sandboxed
                    .get(&a.ifindex)
                    .is_none_or(|p| &p.netns != netns || p.side != a.side),
            })
            .map(|a| a.ifindex)
            .collect();
        for ifindex in stale {
            match programs.detach(ifindex) {
                Ok(()) => tracing::info!(ifindex, "interface gone or left its bridge: detached"),
                Err(err) => tracing::warn!("{err:#}: its classifiers may keep running"),
            }
        }
    }

    /// Attaches to one veth; records how long after its notification, and
    /// how many packets crossed it before.
    async fn attach(&self, handle: &Handle, state: &mut State, port: &BridgePort) {
        // Read before attaching: what the interface carried without the
        // programs (a bound from below: a packet crossing during the
        // attach calls may be in neither). Read after, it would blame the
        // attach for what crossed the veth once the programs were on it
        // (on a busy bridge, its broadcasts).
        let before = match links::link(handle, port.ifindex).await {
            Ok(link) => link.map_or(0, |link| link.packets),
            Err(err) => {
                tracing::debug!(interface = %port.name, "counters before attaching: {err:#}");
                0
            }
        };
        let attached = lock(&self.programs).attach(&port.name, port.ifindex, port.bridge_ifindex);
        if let Err(err) = attached {
            // Mostly a short-lived container's veth, deleted between its
            // listing and attaching: nothing to attach to any more.
            if links::link(handle, port.ifindex)
                .await
                .is_ok_and(|l| l.is_none())
            {
                tracing::debug!(interface = %port.name, "gone before attaching: {err:#}");
            } else {
                tracing::warn!(interface = %port.name, "not attached: {err:#}");
            }
            return;
        }
        let done = Instant::now();
        let latency = state
            .enslaved_at
            .remove(&port.ifindex)
            .map(|enslaved| done.saturating_duration_since(enslaved));
        self.stats.attached(latency, before);
        tracing::info!(
            interface = %port.name,
            bridge = %port.bridge_name,
            latency_us = latency.map(|l| l.as_micros()),
            unattached_packets = before,
            "attached"
        );
    }

    /// Publishes the attachments, with the veths not yet named.
    fn publish(&self, inventory: Option<Arc<Inventory>>) {
        let interfaces: BTreeMap<u32, String> = lock(&self.programs)
            .attached()
            .map(|a| (a.ifindex, a.name.clone()))
            .collect();
        let mut snapshot = self.docker.load().renewed(inventory, interfaces, None);
        // Only with Docker: without it no veth is ever named.
        if self.inventory.is_some() {
            snapshot.unnamed = snapshot
                .interfaces
                .keys()
                .filter(|ifindex| snapshot.directory.veth_owner(**ifindex).is_none())
                .copied()
                .collect();
        }
        self.docker.store(Arc::new(snapshot));
    }
}

/// An interface in a namespace other than the agent's: a container's
/// veth in an overlay network's sandbox, or a container's own macvlan or
/// ipvlan interface in its namespace.
struct SandboxPort {
    netns: PathBuf,
    tag: u8,
    /// In that namespace.
    ifindex: u32,
    side: Side,
}

impl SandboxPort {
    fn id(&self) -> u32 {
        veth_id(self.tag, self.ifindex)
    }
}

/// Docker's name for the sandbox of overlay network `id`
/// (libnetwork's `osl.GenerateKey("1-" + id)`).
fn sandbox_name(network_id: &str) -> String {
    format!("1-{}", network_id.get(..10).unwrap_or(network_id))
}

/// The network namespace of a container: the file Docker binds it on
/// (`SandboxKey`) where the agent sees it (a Swarm service mounts that
/// directory), or its process's (the compose sidecar has the host's PIDs,
/// not that directory).
fn container_namespace(container: &docker::Container) -> Option<PathBuf> {
    let key = container.sandbox_key.as_ref().map(PathBuf::from);
    match (key, container.pid) {
        (Some(key), _) if key.exists() => Some(key),
        (_, Some(pid)) => Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        (key, None) => key,
    }
}

/// Attaches to interfaces in other namespaces: overlay endpoints' veths
/// in their sandboxes, macvlan and ipvlan interfaces in their containers
/// (known from the inventory only: no notification of another namespace
/// reaches ours). A failure is warned of once per interface (without
/// CAP_SYS_ADMIN every listing fails the same way), then at debug level.
fn attach_sandboxed(
    programs: &mut Programs,
    ports: &[SandboxPort],
    not_attached: &mut HashSet<(PathBuf, u32)>,
) {
    not_attached.retain(|(netns, id)| ports.iter().any(|p| &p.netns == netns && p.id() == *id));
    for port in ports {
        if programs.is_attached(port.id()) {
            continue;
        }
        let netns = port.netns.display();
        let (ifindex, side) = (port.ifindex, port.side);
        match programs.attach_in(&port.netns, port.tag, port.ifindex, port.side) {
            Ok(()) => {
                not_attached.remove(&(port.netns.clone(), port.id()));
                tracing::info!(%netns, ifindex, ?side, "attached in another namespace");
            }
            Err(err) => {
                if not_attached.insert((port.netns.clone(), port.id())) {
                    tracing::warn!(%netns, ifindex, ?side, "not attached: {err:#}");
                } else {
                    tracing::debug!(%netns, ifindex, ?side, "not attached: {err:#}");
                }
            }
        }
    }
}

/// `docker0`, or `br-` and the first 12 hex digits of the network's id:
/// the names Docker gives bridges it creates.
fn is_docker_bridge_name(name: &str) -> bool {
    name == "docker0"
        || name
            .strip_prefix("br-")
            .is_some_and(|id| docker::is_engine_id(id, 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_its_bridges_so() {
        assert!(is_docker_bridge_name("docker0"));
        assert!(is_docker_bridge_name("br-0123456789ab"));
        assert!(!is_docker_bridge_name("br-0123456789a"));
        assert!(!is_docker_bridge_name("br-0123456789AB"));
        assert!(!is_docker_bridge_name("br-lan"));
        assert!(!is_docker_bridge_name("virbr0"));
    }

    #[test]
    fn a_container_namespace_is_its_sandbox_key_where_seen_else_its_process() {
        let attributes = [("name".to_owned(), "c".to_owned())].into_iter().collect();
        let mut container = docker::Container::announced("c", &attributes).expect("container");
        container.pid = Some(42);
        container.sandbox_key = Some("/".into());
        assert_eq!(container_namespace(&container), Some(PathBuf::from("/")));
        container.sandbox_key = Some("/var/run/docker/netns/no-such-sandbox".into());
        let by_pid = Some(PathBuf::from("/proc/42/ns/net"));
        assert_eq!(container_namespace(&container), by_pid);
        container.sandbox_key = None;
        assert_eq!(container_namespace(&container), by_pid);
        container.pid = None;
        assert_eq!(container_namespace(&container), None);
    }
}
