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
}

impl Default for Snapshot {
    /// Nothing known yet but the host's addresses.
    fn default() -> Self {
        Snapshot::new(None, BTreeMap::new())
    }
}
