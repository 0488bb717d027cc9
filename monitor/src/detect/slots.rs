//! The detectors' state of each flow a watched container sent, in slots
//! the flow's table entry points to ([`Exported`]'s detector slot): found
//! by index at each poll rather than by hashing the flow's key into a map
//! as long as the table, and without the key beside it.

use crate::flows::Exported;

pub(super) struct FlowSlots<T> {
    slots: Vec<T>,
    /// Slots of flows that ended, to be taken again first.
    free: Vec<u32>,
}

impl<T> Default for FlowSlots<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Default> FlowSlots<T> {
    /// The state of the flow whose entry `exported` is, new in a free slot
    /// if the flow has none yet; none once the store holds the most slots
    /// an entry can point to (4 billion).
    pub(super) fn of(&mut self, exported: &Exported) -> Option<&mut T> {
        let slot = match exported.detector_slot() {
            Some(slot) => {
                debug_assert!(
                    (slot as usize) < self.slots.len(),
                    "the slot of another store: one per table"
                );
                slot
            }
            None => {
                let slot = self.take()?;
                exported.set_detector_slot(slot);
                slot
            }
        };
        self.slots.get_mut(slot as usize)
    }

    /// A free slot, or a new one below `u32::MAX` (the entry stores it
    /// plus one).
    fn take(&mut self) -> Option<u32> {
        if let Some(slot) = self.free.pop() {
            return Some(slot);
        }
        let slot = u32::try_from(self.slots.len())
            .ok()
            .filter(|&slot| slot < u32::MAX)?;
        self.slots.push(T::default());
        Some(slot)
    }

    /// Frees the slot of a flow that ended, for a later flow.
    pub(super) fn release(&mut self, exported: &Exported) {
        let Some(slot) = exported.take_detector_slot() else {
            return;
        };
        if let Some(state) = self.slots.get_mut(slot as usize) {
            *state = T::default();
            self.free.push(slot);
        }
    }

    /// Slots in use.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_keeps_its_slot_and_an_ended_one_frees_it() {
        let mut slots = FlowSlots::<u64>::default();
        let (first, second) = (Exported::default(), Exported::default());
        let mut add = |exported: &Exported, n: u64| *slots.of(exported).expect("a slot") += n;
        add(&first, 5);
        add(&second, 7);
        add(&first, 1);
        let value = |slots: &mut FlowSlots<u64>, exported: &Exported| slots.of(exported).copied();
        assert_eq!(
            (value(&mut slots, &first), value(&mut slots, &second)),
            (Some(6), Some(7))
        );
        assert_eq!(slots.len(), 2);

        slots.release(&first);
        slots.release(&first);
        assert_eq!(slots.len(), 1, "released once");
        let third = Exported::default();
        assert_eq!(
            value(&mut slots, &third),
            Some(0),
            "the freed slot, cleared"
        );
        assert_eq!(third.detector_slot(), Some(0));
        assert_eq!(value(&mut slots, &second), Some(7));
        assert_eq!(slots.len(), 2);
    }
}
