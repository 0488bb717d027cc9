//! The Docker side as one value: the inventory, the directory built from
//! it, and the veths crossmon watches, published whole by the link
//! follower so that every reader sees one consistent moment.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    sync::Arc,
};

use super::{host_addresses, Directory, Inventory};

pub struct Snapshot {
    /// The latest inventory, once the engine answered.
    pub inventory: Option<Arc<Inventory>>,
    /// Who an address or a veth is, from that inventory and the host's
    /// own addresses.
    pub directory: Arc<Directory>,
    /// Host-side veths the programs are attached to, by ifindex.
    pub interfaces: BTreeMap<u32, String>,
    /// Attached veths the engine has not named yet: their new flows wait
    /// for the name (see `flows::PollView::holding`).
    pub unnamed: BTreeSet<u32>,
}

impl Snapshot {
    /// The node this agent watches: its Docker host's name, once the
    /// engine answered.
    pub fn node(&self) -> Option<&str> {
        let name = self.inventory.as_deref()?.engine.name.as_str();
        (!name.is_empty()).then_some(name)
    }

    pub fn new(inventory: Option<Arc<Inventory>>, interfaces: BTreeMap<u32, String>) -> Snapshot {
        Snapshot {
            directory: Arc::new(Directory::new(inventory.as_deref(), host_addresses())),
            inventory,
            interfaces,
            unnamed: BTreeSet::new(),
        }
    }

    /// The snapshot of `inventory`, keeping this one's directory where
    /// neither the inventory nor the host's addresses changed: a new
    /// directory is compared with the last at the next poll
    /// (`agent::poller`), and the link follower resyncs at every link
    /// change on a watched bridge.
    /// `host`: the host's addresses as they are now, where they may have
    /// changed (a resync); `None` keeps those of this snapshot's directory
    /// for the same inventory.
    pub fn renewed(
        &self,
        inventory: Option<Arc<Inventory>>,
        interfaces: BTreeMap<u32, String>,
        host: Option<HashSet<IpAddr>>,
    ) -> Snapshot {
        let same_inventory = match (&self.inventory, &inventory) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let directory = match host {
            Some(host) if !same_inventory || !self.directory.has_host_addresses(&host) => {
                Arc::new(Directory::new(inventory.as_deref(), host))
            }
            None if !same_inventory => {
                Arc::new(Directory::new(inventory.as_deref(), host_addresses()))
            }
            _ => self.directory.clone(),
        };
        Snapshot {
            inventory,
            directory,
            interfaces,
            unnamed: BTreeSet::new(),
        }
    }
}

impl Default for Snapshot {
    /// Nothing known yet but the host's addresses.
    fn default() -> Self {
        Snapshot::new(None, BTreeMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_rebuilt_only_for_a_new_inventory_or_host_address() {
        let addresses = |list: &[&str]| -> HashSet<IpAddr> {
            list.iter().map(|ip| ip.parse().unwrap()).collect()
        };
        let host = addresses(&["192.0.2.10", "fe80::1"]);
        let inventory = Arc::new(Inventory::default());
        let first =
            Snapshot::default().renewed(Some(inventory.clone()), BTreeMap::new(), Some(host));
        let same = |a: &Snapshot, b: &Snapshot| Arc::ptr_eq(&a.directory, &b.directory);
        // A veth came, with its link-local address.
        let veth = first.renewed(
            Some(inventory.clone()),
            [(7, "veth7".into())].into(),
            Some(addresses(&["192.0.2.10", "fe80::1", "fe80::2"])),
        );
        assert!(same(&first, &veth));
        assert_eq!(veth.interfaces.len(), 1);
        let attached = veth.renewed(Some(inventory.clone()), BTreeMap::new(), None);
        assert!(same(&veth, &attached));
        let bridge = attached.renewed(
            Some(inventory),
            BTreeMap::new(),
            Some(addresses(&["192.0.2.10", "198.51.100.1"])),
        );
        assert!(!same(&attached, &bridge), "a new bridge's address");
        let started = bridge.renewed(Some(Arc::new(Inventory::default())), BTreeMap::new(), None);
        assert!(!same(&bridge, &started), "a new inventory");
        let gone = started.renewed(None, BTreeMap::new(), None);
        assert!(!same(&started, &gone));
    }
}
