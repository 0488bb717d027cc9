//! The link follower: attaches the programs to container veths the moment
//! the kernel enslaves them to a watched bridge, detaches them when they
//! go, keeps the policy's view of the containers current, and publishes
//! the Docker snapshot every reader uses.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
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
    datapath::{AttachStats, Programs},
    docker::{Inventory, Snapshot},
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
}

/// What the follower keeps between notifications.
struct State {
    /// Every bridge of the host, by ifindex: a notification names a veth's
    /// master by ifindex only.
    bridges: HashMap<u32, String>,
    /// When the notification that showed each veth enslaved was taken off
    /// the socket, until it is attached: the start of its attach latency.
    enslaved_at: HashMap<u32, Instant>,
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
        if lock(&self.programs).is_attached(link.ifindex) {
            return false;
        }
        state.enslaved_at.entry(link.ifindex).or_insert(received);
        let inventory = self.known();
        if !self.watches(bridge_name, inventory.as_deref()) {
            return false;
        }
        let port = BridgePort {
            ifindex: link.ifindex,
            name: link.name,
            bridge_ifindex: master,
            bridge_name: bridge_name.clone(),
            peer: None,
        };
        self.attach(handle, state, &port).await;
        self.publish(inventory);
        false
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
        let known = self
            .inventory
            .as_mut()
            .and_then(|receiver| receiver.borrow_and_update().clone());
        let ports: Vec<BridgePort> = links::bridge_ports(&links)
            .into_iter()
            .filter(|port| self.watches(&port.bridge_name, known.as_deref()))
            .collect();
        // A container's policy is in force before its veth is attached.
        if let Some(policy) = &self.policy {
            lock(policy).on_inventory(known.clone());
        }
        // Also without Docker: a new bridge brings a new host address.
        let previous = self.docker.load();
        let mut identified = Snapshot::new(known.clone(), previous.interfaces.clone());
        // Veths still unnamed keep their flows waiting meanwhile.
        identified.unnamed = previous
            .unnamed
            .iter()
            .filter(|ifindex| identified.directory.veth_owner(**ifindex).is_none())
            .copied()
            .collect();
        self.docker.store(Arc::new(identified));
        let overlay_ports: Vec<SandboxPort> = known
            .iter()
            .flat_map(|k| k.overlay_veths())
            .map(|(network_id, tag, ifindex)| SandboxPort {
                netns: self.sandboxes.join(sandbox_name(network_id)),
                tag,
                ifindex,
            })
            .collect();
        self.detach_stale(&ports, &overlay_ports);
        for port in &ports {
            if !lock(&self.programs).is_attached(port.ifindex) {
                self.attach(handle, state, port).await;
            }
        }
        attach_overlays(&mut lock(&self.programs), &overlay_ports);
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

    fn detach_stale(&self, ports: &[BridgePort], overlay_ports: &[SandboxPort]) {
        let wanted: BTreeMap<u32, &BridgePort> = ports.iter().map(|p| (p.ifindex, p)).collect();
        let wanted_overlay: BTreeMap<u32, &SandboxPort> =
            overlay_ports.iter().map(|p| (p.id(), p)).collect();
        let mut programs = lock(&self.programs);
        let stale: Vec<u32> = programs
            .attached()
            .filter(|a| match &a.netns {
                None => wanted
                    .get(&a.ifindex)
                    .is_none_or(|p| p.bridge_ifindex != a.bridge_ifindex),
                Some(netns) => wanted_overlay
                    .get(&a.ifindex)
                    .is_none_or(|p| &p.netns != netns),
            })
            .map(|a| a.ifindex)
            .collect();
        for ifindex in stale {
            match programs.detach(ifindex) {
                Ok(()) => tracing::info!(ifindex, "interface gone or left its bridge: detached"),
                // A deleted veth takes its links with it; nothing left to undo.
                Err(err) => tracing::debug!("{err:#}"),
            }
        }
    }

    /// Attaches to one veth; records how long after its notification, and
    /// how many packets crossed it before.
    async fn attach(&self, handle: &Handle, state: &mut State, port: &BridgePort) {
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
        // Read after attaching: what the interface counted up to just
        // after the programs were in place (a bound from above).
        let before = match links::link(handle, port.ifindex).await {
            Ok(link) => link.map_or(0, |link| link.packets),
            Err(err) => {
                tracing::debug!(interface = %port.name, "counters after attaching: {err:#}");
                0
            }
        };
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
        let snapshot = self.docker.load();
        let same_inventory = match (&snapshot.inventory, &inventory) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let directory = if same_inventory {
            snapshot.directory.clone()
        } else {
            Snapshot::new(inventory.clone(), BTreeMap::new()).directory
        };
        let interfaces: BTreeMap<u32, String> = lock(&self.programs)
            .attached()
            .map(|a| (a.ifindex, a.name.clone()))
            .collect();
        // Only with Docker: without it no veth is ever named.
        let unnamed = if self.inventory.is_some() {
            interfaces
                .keys()
                .filter(|ifindex| directory.veth_owner(**ifindex).is_none())
                .copied()
                .collect()
        } else {
            BTreeSet::new()
        };
        self.docker.store(Arc::new(Snapshot {
            inventory,
            directory,
            interfaces,
            unnamed,
        }));
    }
}

/// A container's veth in an overlay network's sandbox namespace.
struct SandboxPort {
    netns: PathBuf,
    tag: u8,
    /// In that namespace.
    ifindex: u32,
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

/// Attaches to overlay endpoints' veths in their sandboxes (known from the
/// inventory only: no notification of another namespace reaches ours).
fn attach_overlays(programs: &mut Programs, overlay_ports: &[SandboxPort]) {
    for port in overlay_ports {
        if programs.is_attached(port.id()) {
            continue;
        }
        let sandbox = port.netns.display();
        match programs.attach_in(&port.netns, port.tag, port.ifindex) {
            Ok(()) => {
                tracing::info!(%sandbox, ifindex = port.ifindex, "attached in an overlay sandbox")
            }
            Err(err) => tracing::warn!(%sandbox, ifindex = port.ifindex, "not attached: {err:#}"),
        }
    }
}

/// `docker0`, or `br-` and the first 12 hex digits of the network's id:
/// the names Docker gives bridges it creates.
fn is_docker_bridge_name(name: &str) -> bool {
    name == "docker0"
        || name.strip_prefix("br-").is_some_and(|id| {
            id.len() == 12
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
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
}
