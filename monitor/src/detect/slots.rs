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
    /// if the flow has none yet.
    pub(super) fn of(&mut self, exported: &Exported) -> &mut T {
        let held = exported
            .detector_slot()
            .filter(|&slot| (slot as usize) < self.slots.len());
        let slot = held.unwrap_or_else(|| {
            let slot = self.free.pop().unwrap_or_else(|| {
                self.slots.push(T::default());
                // Never past u32: the table would hold 4 billion flows.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            });
            exported.set_detector_slot(slot);
            slot
        });
        &mut self.slots[slot as usize]
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
        *slots.of(&first) += 5;
        *slots.of(&second) += 7;
        *slots.of(&first) += 1;
        assert_eq!((*slots.of(&first), *slots.of(&second)), (6, 7));
        assert_eq!(slots.len(), 2);

        slots.release(&first);
        slots.release(&first);
        assert_eq!(slots.len(), 1, "released once");
        let third = Exported::default();
        assert_eq!(*slots.of(&third), 0, "the freed slot, cleared");
        assert_eq!(third.detector_slot(), Some(0));
        assert_eq!(*slots.of(&second), 7);
        assert_eq!(slots.len(), 2);
    }
}
