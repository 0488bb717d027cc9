//! The Docker side as one value: the inventory, the directory built from
//! it, and the veths crossmon watches, published whole by the link
//! follower so that every reader sees one consistent moment.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{directory::host_addresses, Directory, Inventory};

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
    /// directory makes the next poll walk every flow (`agent::poller`), and
    /// the link follower resyncs at every link change on a watched bridge.
    pub fn renewed(
        &self,
        inventory: Option<Arc<Inventory>>,
        interfaces: BTreeMap<u32, String>,
    ) -> Snapshot {
        let same_inventory = match (&self.inventory, &inventory) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let host = host_addresses();
        let directory = if same_inventory && self.directory.has_host_addresses(&host) {
            self.directory.clone()
        } else {
            Arc::new(Directory::new(inventory.as_deref(), host))
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
    fn a_directory_is_rebuilt_only_for_a_new_inventory() {
        let inventory = Arc::new(Inventory::default());
        let first = Snapshot::default().renewed(Some(inventory.clone()), BTreeMap::new());
        let again = first.renewed(Some(inventory), [(7, "veth7".into())].into());
        assert!(Arc::ptr_eq(&first.directory, &again.directory));
        assert_eq!(again.interfaces.len(), 1);
        let new = again.renewed(Some(Arc::new(Inventory::default())), BTreeMap::new());
        assert!(!Arc::ptr_eq(&again.directory, &new.directory));
        let gone = new.renewed(None, BTreeMap::new());
        assert!(!Arc::ptr_eq(&new.directory, &gone.directory));
    }
}
