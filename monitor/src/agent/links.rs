//! The link follower: attaches the programs to container veths as they
//! come and go, keeps the policy's view of the containers current, and
//! publishes the Docker snapshot every reader uses.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use monitor_common::veth_id;
use tokio::sync::watch;

use crate::{
    datapath::Programs,
    docker::{Inventory, Snapshot},
    links,
    policy::PolicyInForce,
    sync::{lock, Published},
};

/// Attaches to the bridge-enslaved veths that are container endpoints (to
/// every bridge-enslaved veth with `--no-docker`), and to the veths of
/// overlay endpoints in their networks' sandboxes (under `sandboxes`,
/// Docker's `<exec-root>/netns`), and follows link and container changes.
/// It publishes the Docker snapshot: the directory first (a container's
/// identity is known before its veth is counted), then the veths attached.
pub async fn follow_links(
    programs: Arc<Mutex<Programs>>,
    docker: Published<Snapshot>,
    mut inventory: Option<watch::Receiver<Option<Arc<Inventory>>>>,
    policy: Option<Arc<Mutex<PolicyInForce>>>,
    sandboxes: PathBuf,
) -> anyhow::Result<()> {
    let (handle, changes) = links::watch()?;
    let mut changes = std::pin::pin!(changes);
    loop {
        let mut ports = links::bridge_veths(&handle).await?;
        let known = inventory.as_mut().and_then(|receiver| {
            // Only container endpoints, and none before the engine first
            // answers: a veth crossmon cannot name is not its to watch.
            let known = receiver.borrow_and_update().clone();
            let endpoints: HashSet<u32> = known.iter().flat_map(|k| k.container_veths()).collect();
            ports.retain(|port| endpoints.contains(&port.ifindex));
            known
        });
        // A container's policy is in force before its veth is attached.
        if let Some(policy) = &policy {
            lock(policy).on_inventory(known.clone());
        }
        // Also without Docker: a new bridge brings a new host address.
        let identified = Snapshot::new(known, docker.load().interfaces.clone());
        let (known, directory) = (identified.inventory.clone(), identified.directory.clone());
        docker.store(Arc::new(identified));
        let overlay_ports: Vec<SandboxPort> = known
            .iter()
            .flat_map(|k| k.overlay_veths())
            .map(|(network_id, tag, ifindex)| SandboxPort {
                netns: sandboxes.join(sandbox_name(network_id)),
                tag,
                ifindex,
            })
            .collect();
        let interfaces = {
            let mut programs = lock(&programs);
            sync_attachments(&mut programs, &ports, &overlay_ports);
            programs
                .attached()
                .map(|a| (a.ifindex, a.name.clone()))
                .collect()
        };
        docker.store(Arc::new(Snapshot {
            inventory: known,
            directory,
            interfaces,
        }));
        let inventory_changed = async {
            match inventory.as_mut() {
                Some(receiver) => receiver.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            change = changes.next() => if change.is_none() {
                anyhow::bail!("the rtnetlink notification stream ended");
            },
            open = inventory_changed => if !open {
                anyhow::bail!("the Docker follower stopped");
            },
        }
        // Containers come up in bursts of link changes: one listing for all.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while futures::FutureExt::now_or_never(changes.next())
            .flatten()
            .is_some()
        {}
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

fn sync_attachments(
    programs: &mut Programs,
    ports: &[links::BridgePort],
    overlay_ports: &[SandboxPort],
) {
    let wanted: BTreeMap<u32, &links::BridgePort> = ports.iter().map(|p| (p.ifindex, p)).collect();
    let wanted_overlay: BTreeMap<u32, &SandboxPort> =
        overlay_ports.iter().map(|p| (p.id(), p)).collect();
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
    for port in ports {
        if programs.is_attached(port.ifindex) {
            continue;
        }
        match programs.attach(&port.name, port.ifindex, port.bridge_ifindex) {
            Ok(()) => {
                tracing::info!(interface = %port.name, bridge = %port.bridge_name, "attached")
            }
            // Often a veth deleted between listing and attaching.
            Err(err) => tracing::warn!(interface = %port.name, "not attached: {err:#}"),
        }
    }
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
