//! What the series have counted of a flow so far, kept in the flow's own
//! table entry rather than in a map of every flow per series: at 100k
//! flows the traffic series' map was 8 MiB, and its growth next to the
//! table's made the agent's peak memory; under connection churn the TCP
//! health series' map took 9.4 % of the poller's time in its inserts.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use monitor_common::FlowStats;

use super::outcome::Outcome;
use crate::book::Slot;

/// The poller's consumers ([`crate::flows::PollConsumer`]s) update it
/// through the poll's view of the table, which the API reads at the same
/// time under the same read lock: hence atomics. Each field has one
/// consumer as its only reader and writer, on the poller's thread (the
/// traffic series the traffic counts, the connection and the served
/// ports' lookup, the TCP health
/// series the handshake and resets, the detectors their slot; the methods
/// are the crate's alone). A table has one consumer of each kind: a
/// second would take the first one's counts, or share its state of a
/// flow with another flow's. Relaxed loads and stores (plain moves) are
/// all they need.
#[derive(Debug, Default)]
pub struct Exported {
    packets: AtomicU64,
    bytes: AtomicU64,
    /// The result the traffic series counted the flow's first connection
    /// attempt with ([`Outcome::code`]; 0: not yet).
    connection: AtomicU8,
    /// The TCP health series': the handshake was timed, or its attempt's
    /// deadline passed first.
    handshake_done: AtomicBool,
    /// The TCP health series': the flow's RST total its resets series
    /// holds.
    resets: AtomicU32,
    /// The detectors': where their state of the flow sits in their own
    /// store, plus one (0: none yet). An index rather than the state
    /// itself, which flows no container sent (most, on a host without
    /// Docker) would pay for too.
    detector_slot: AtomicU32,
    /// The traffic series': the poll's second (plus one; 0: never) when the
    /// flow last looked its reverse up for the served ports, or, held,
    /// taught them what it shows alone.
    served_lookup_s: AtomicU32,
    /// The traffic series': where the flow's series is in their book
    /// ([`crate::book::Slot`]), and the labelling epoch it was found in
    /// (0: never), past which the flow's labels may differ.
    series_epoch: AtomicU32,
    series_slot: AtomicU32,
}

// Every flow has one: what a consumer adds here, every flow pays for. The
// fields above fill the padding of the traffic series' 17 bytes; the
// detectors' slot made it 32 bytes, which the table entry absorbs by its
// 32-bit poll generation (see `FlowTable::generation`), and the served
// ports' second fills what was left of them. The series' slot takes 8
// more, 0.8 MB at 100k flows, for a flow's labels made once rather than
// at every poll it has traffic.
const _: () = assert!(std::mem::size_of::<Exported>() == 40);

impl Exported {
    /// Whether the flow counted traffic the series do not hold yet.
    pub(crate) fn has_new_traffic(&self, total: &FlowStats) -> bool {
        self.packets.load(Relaxed) != total.packets || self.bytes.load(Relaxed) != total.bytes
    }

    /// What the flow counted since the last take, as (packets, bytes),
    /// now held by the series. Totals only grow (the table keeps evicted
    /// counts); wrapping is the kernel's u64 counters wrapping.
    pub(crate) fn take_new_traffic(&self, total: &FlowStats) -> (u64, u64) {
        let packets = total.packets.wrapping_sub(self.packets.load(Relaxed));
        let bytes = total.bytes.wrapping_sub(self.bytes.load(Relaxed));
        self.packets.store(total.packets, Relaxed);
        self.bytes.store(total.bytes, Relaxed);
        (packets, bytes)
    }

    /// The result the flow's first connection attempt was counted with.
    pub(crate) fn counted_connection(&self) -> Option<Outcome> {
        Outcome::of_code(self.connection.load(Relaxed))
    }

    pub(crate) fn count_connection(&self, result: Outcome) {
        self.connection.store(result.code(), Relaxed);
    }

    /// Whether the flow's handshake needs no more timing.
    pub(crate) fn handshake_done(&self) -> bool {
        self.handshake_done.load(Relaxed)
    }

    pub(crate) fn finish_handshake(&self) {
        self.handshake_done.store(true, Relaxed);
    }

    /// Where the detectors keep their state of the flow, if they do yet.
    pub(crate) fn detector_slot(&self) -> Option<u32> {
        self.detector_slot.load(Relaxed).checked_sub(1)
    }

    pub(crate) fn set_detector_slot(&self, slot: u32) {
        self.detector_slot.store(slot.saturating_add(1), Relaxed);
    }

    /// The detectors' slot, which the flow holds no longer.
    pub(crate) fn take_detector_slot(&self) -> Option<u32> {
        self.detector_slot.swap(0, Relaxed).checked_sub(1)
    }

    /// Whether the flow's reverse is due a lookup for the served ports at
    /// `now_ns`: never noted ([`Self::note_served_lookup`]), not in the
    /// last `every_ns`, or not since `stale_ns` (to the second, so a note
    /// of that second is stale too).
    pub(crate) fn served_lookup_due(
        &self,
        now_ns: u64,
        every_ns: u64,
        stale_ns: Option<u64>,
    ) -> bool {
        let last = self.served_lookup_s.load(Relaxed);
        last == 0
            || seconds(now_ns).saturating_add(1).saturating_sub(last) >= seconds(every_ns)
            || stale_ns.is_some_and(|stale_ns| last <= seconds(stale_ns).saturating_add(1))
    }

    /// Whether the flow ever noted a lookup for the served ports.
    pub(crate) fn served_lookup_noted(&self) -> bool {
        self.served_lookup_s.load(Relaxed) != 0
    }

    pub(crate) fn note_served_lookup(&self, now_ns: u64) {
        self.served_lookup_s
            .store(seconds(now_ns).saturating_add(1), Relaxed);
    }

    /// Where the flow's series is, if it was found in labelling `epoch`.
    pub(crate) fn series_slot(&self, epoch: u32) -> Option<Slot> {
        (epoch != 0 && self.series_epoch.load(Relaxed) == epoch)
            .then(|| Slot::from_u32(self.series_slot.load(Relaxed)))
    }

    pub(crate) fn note_series_slot(&self, epoch: u32, slot: Slot) {
        self.series_slot.store(slot.to_u32(), Relaxed);
        self.series_epoch.store(epoch, Relaxed);
    }

    /// The resets the flow sent since the last take, of its total `rst`.
    pub(crate) fn take_new_resets(&self, rst: u32) -> u32 {
        let counted = self.resets.load(Relaxed);
        if rst <= counted {
            return 0;
        }
        self.resets.store(rst, Relaxed);
        rst - counted
    }
}

fn seconds(ns: u64) -> u32 {
    u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(packets: u64) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 60,
            ..FlowStats::default()
        }
    }

    #[test]
    fn each_take_is_what_was_counted_since_the_previous_one() {
        let exported = Exported::default();
        assert!(!exported.has_new_traffic(&total(0)));
        assert!(exported.has_new_traffic(&total(3)));
        assert_eq!(exported.take_new_traffic(&total(3)), (3, 180));
        assert!(!exported.has_new_traffic(&total(3)));
        assert_eq!(exported.take_new_traffic(&total(5)), (2, 120));
        assert_eq!(exported.take_new_traffic(&total(5)), (0, 0));
    }

    #[test]
    fn resets_are_taken_once_each() {
        let exported = Exported::default();
        assert_eq!(exported.take_new_resets(0), 0);
        assert_eq!(exported.take_new_resets(2), 2);
        assert_eq!(exported.take_new_resets(2), 0);
        assert_eq!(exported.take_new_resets(3), 1);
        assert!(!exported.handshake_done());
        exported.finish_handshake();
        assert!(exported.handshake_done());
        assert_eq!(
            exported.take_new_traffic(&total(1)),
            (1, 60),
            "each series' counts are its own"
        );
    }

    #[test]
    fn a_served_lookup_is_due_once_in_each_period() {
        const SEC: u64 = 1_000_000_000;
        let exported = Exported::default();
        let due = |at_s: u64| exported.served_lookup_due(at_s * SEC, 150 * SEC, None);
        assert!(due(0) && due(1), "never noted");
        assert!(!exported.served_lookup_noted());
        exported.note_served_lookup(0);
        assert!(exported.served_lookup_noted());
        assert!(!due(1));
        assert!(!due(149));
        assert!(due(150));
        exported.note_served_lookup(150 * SEC);
        assert!(!due(151));
        assert!(due(300));
        assert!(
            exported.served_lookup_due(151 * SEC, 0, None),
            "a period under a second"
        );
        let stale_since =
            |stale_s: u64| exported.served_lookup_due(151 * SEC, 150 * SEC, Some(stale_s * SEC));
        assert!(stale_since(150), "noted in the stale second");
        assert!(!stale_since(149), "noted after it");
    }

    #[test]
    fn a_series_slot_is_found_in_the_epoch_it_was_noted_in_only() {
        let exported = Exported::default();
        assert_eq!(exported.series_slot(0), None, "epoch 0 notes nothing");
        assert_eq!(exported.series_slot(1), None);
        exported.note_series_slot(1, Slot::from_u32(7));
        assert_eq!(exported.series_slot(1), Some(Slot::from_u32(7)));
        assert_eq!(exported.series_slot(2), None);
        exported.note_series_slot(2, Slot::from_u32(0));
        assert_eq!(exported.series_slot(2), Some(Slot::from_u32(0)));
        assert_eq!(exported.series_slot(1), None);
    }
}
