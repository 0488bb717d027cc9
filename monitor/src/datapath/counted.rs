//! The veths whose packets are counted where they enter the host: every
//! one in the hash map, and each in the direct-mapped slot `to_container`
//! reads first (`monitor_common::COUNTED_SLOTS_MAP`), which names the veth
//! itself unless several share it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData};
use monitor_common::{counted_slot, COUNTED_SLOT_SHARED};

pub struct CountedIfaces {
    ids: HashMap<MapData, u32, u8>,
    slots: Array<MapData, u32>,
    /// The counted ids of every slot holding one.
    by_slot: BTreeMap<u32, BTreeSet<u32>>,
}

impl CountedIfaces {
    pub(super) fn new(ids: HashMap<MapData, u32, u8>, slots: Array<MapData, u32>) -> Self {
        Self {
            ids,
            slots,
            by_slot: BTreeMap::new(),
        }
    }

    /// Counts veth `id`'s packets as counted at ingress from now on.
    pub(super) fn insert(&mut self, id: u32) -> anyhow::Result<()> {
        let slot = counted_slot(id);
        if !self.by_slot.entry(slot).or_default().insert(id) {
            return Ok(());
        }
        // The hash map first: a slot turned shared is read through it.
        self.ids
            .insert(id, 1, 0)
            .with_context(|| format!("registering interface {id} as counted"))
            .and_then(|()| self.write_slot(slot))
            .inspect_err(|_| self.remove(id))
    }

    /// Forgets veth `id`; absent already is fine.
    pub(super) fn remove(&mut self, id: u32) {
        let slot = counted_slot(id);
        let Some(ids) = self.by_slot.get_mut(&slot) else {
            return;
        };
        if !ids.remove(&id) {
            return;
        }
        if ids.is_empty() {
            self.by_slot.remove(&slot);
        }
        if let Err(err) = self.write_slot(slot) {
            tracing::warn!("{err:#}");
        }
        let _ = self.ids.remove(&id);
    }

    /// The kernel writes a slot with a memcpy, not one store: a program
    /// may read a slot half written, which names no veth (not counted
    /// here; the flow's direction check still keeps the packet from
    /// being counted twice).
    fn write_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        let value = self.by_slot.get(&slot).map_or(0, slot_value);
        self.slots
            .set(slot, value, 0)
            .with_context(|| format!("writing counted interfaces' slot {slot}"))
    }
}

/// What a slot holds for the counted ids that map to it.
fn slot_value(ids: &BTreeSet<u32>) -> u32 {
    let mut each = ids.iter();
    match (each.next(), each.next()) {
        (None, _) => 0,
        // The marker's own id (tag 255, the last ifindex) is read
        // through the hash map, as a shared slot's.
        (Some(&id), None) => id,
        (Some(_), Some(_)) => COUNTED_SLOT_SHARED,
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::veth_id;

    use super::*;

    #[test]
    fn a_slot_names_its_only_veth_and_is_shared_by_several() {
        let set = |ids: &[u32]| ids.iter().copied().collect::<BTreeSet<u32>>();
        assert_eq!(slot_value(&set(&[])), 0);
        assert_eq!(slot_value(&set(&[7])), 7);
        assert_eq!(slot_value(&set(&[7, 9])), COUNTED_SLOT_SHARED);
        assert_eq!(
            slot_value(&set(&[COUNTED_SLOT_SHARED])),
            COUNTED_SLOT_SHARED
        );
    }

    #[test]
    fn consecutive_ifindexes_get_slots_of_their_own() {
        // The host's veths are numbered in a row, as are an overlay
        // sandbox namespace's (tagged in the top byte), which repeat the
        // host's small ifindexes.
        let distinct = |ids: Vec<u32>| {
            let slots: BTreeSet<u32> = ids.iter().copied().map(counted_slot).collect();
            slots.len() == ids.len()
        };
        assert!(distinct((2..4096).collect()));
        assert!(distinct((100_000..104_096).collect()));
        assert!(distinct(
            (2..200)
                .chain((1..=8).flat_map(|tag| (2..64).map(move |i| veth_id(tag, i))))
                .collect()
        ));
    }
}
