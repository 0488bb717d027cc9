//! Which containers left the inventory, and when: every series family
//! keeps a departed container's series for the grace period
//! (`--series-grace`), so a last scrape still sees their final counts and
//! joins their info series, and then removes them.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::docker::{Container, Inventory};

pub struct Departures {
    /// Containers (by name) in the last inventory.
    present: HashMap<String, Arc<Container>>,
    /// Those that left it, with when.
    departed: HashMap<String, (Arc<Container>, u64)>,
    grace_ns: u64,
}

/// Containers departed longer than the grace period.
pub struct Gone {
    /// Their series not updated since go.
    pub cutoff_ns: u64,
    pub names: HashSet<String>,
}

impl Gone {
    /// Whether a series labelled by these names belongs to a container
    /// gone.
    pub fn any(&self, names: &[&String]) -> bool {
        names.iter().any(|name| self.names.contains(*name))
    }
}

impl Departures {
    pub fn new(grace_ns: u64) -> Self {
        Self {
            present: HashMap::new(),
            departed: HashMap::new(),
            grace_ns,
        }
    }

    /// Notes which containers left, and which came back.
    pub fn follow(&mut self, inventory: Option<&Inventory>, now_ns: u64) {
        let Some(inventory) = inventory else {
            return;
        };
        let now: HashMap<String, Arc<Container>> = inventory
            .containers
            .values()
            .map(|c| (c.name.clone(), Arc::new(c.clone())))
            .collect();
        for (name, container) in self.present.drain() {
            if !now.contains_key(&name) {
                self.departed.insert(name, (container, now_ns));
            }
        }
        self.departed.retain(|name, _| !now.contains_key(name));
        self.present = now;
    }

    /// The containers departed longer than the grace period, forgotten
    /// here: the caller removes their series. `None` when there are none.
    pub fn take_gone(&mut self, now_ns: u64) -> Option<Gone> {
        let cutoff_ns = now_ns.saturating_sub(self.grace_ns);
        let names: HashSet<String> = self
            .departed
            .iter()
            .filter(|(_, (_, left))| *left < cutoff_ns)
            .map(|(name, _)| name.clone())
            .collect();
        if names.is_empty() {
            return None;
        }
        self.departed.retain(|name, _| !names.contains(name));
        Some(Gone { cutoff_ns, names })
    }

    /// Running containers, and departed ones within their grace period.
    pub fn known_containers(&self) -> impl Iterator<Item = &Arc<Container>> {
        self.present
            .values()
            .chain(self.departed.values().map(|(container, _)| container))
    }
}
