//! What the traffic series have counted of a flow so far, kept in the
//! flow's own table entry: one map keyed by flow rather than a second one
//! in the series (at 100k flows that map was 8 MiB, and its growth next to
//! the table's made the agent's peak memory).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use monitor_common::FlowStats;

/// The agent's one traffic series ([`crate::flows::PollConsumer`] of
/// the poller) update it through the poll's view of the table, which the
/// API reads at the same time under the same read lock: hence atomics.
/// Only that series, on the poller's thread, reads or writes them (the
/// methods are the crate's alone; a second series over the same table
/// would take the first one's counts), so relaxed loads and stores (plain
/// moves) are all they need.
#[derive(Debug, Default)]
pub struct Exported {
    packets: AtomicU64,
    bytes: AtomicU64,
    connection_counted: AtomicBool,
}

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

    /// Whether the flow's connection attempt has its result counted.
    pub(crate) fn connection_counted(&self) -> bool {
        self.connection_counted.load(Relaxed)
    }

    pub(crate) fn count_connection(&self) {
        self.connection_counted.store(true, Relaxed);
    }
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
}
