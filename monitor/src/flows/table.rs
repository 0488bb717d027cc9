//! Cumulative per-flow totals.
//!
//! The kernel entry of a flow can disappear (LRU eviction under pressure, or
//! our own idle expiry) and come back as a fresh entry counting from zero.
//! The table keeps what earlier incarnations counted, so totals never go
//! down. An incarnation is recognised by its first-seen time.

use monitor_common::{FlowKey, FlowStats};

use std::sync::{Arc, RwLock};

use super::{Exported, FlowSet, ShardedByFlow};
use crate::{model::FlowRecord, sync::read};

#[derive(Default)]
pub struct FlowTable {
    flows: ShardedByFlow<Entry>,
    /// Poll generation, to spot flows absent from the latest read.
    generation: u64,
}

struct Entry {
    /// Totals of kernel incarnations that ended, boxed: most flows never
    /// have one before they expire, and the table holds every flow.
    settled: Option<Box<FlowStats>>,
    /// Latest read of the live kernel entry (zero when none).
    live: FlowStats,
    generation: u64,
    /// What the traffic series counted of the flow: here rather than in a
    /// map of their own, so that each flow has one record.
    exported: Exported,
}

/// A flow the table forgot, with its final totals and what the traffic
/// series had counted of it, so that they count the rest.
#[derive(Debug)]
pub struct EndedFlow {
    pub record: FlowRecord,
    pub exported: Exported,
}

/// What one poll changed.
#[derive(Debug, Default)]
pub struct PollOutcome {
    pub new_flows: usize,
    /// Kernel entries that vanished without us removing them (LRU eviction):
    /// anything counted after our previous read of them is lost.
    pub evicted: usize,
    /// Entries left in the kernel map after the poll.
    pub entries: usize,
    /// Flows the table forgot (idle too long), with their final totals.
    pub expired: Vec<EndedFlow>,
}

impl FlowTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a poll: call [`Self::observe`] for every kernel entry, then
    /// [`Self::end_poll`].
    pub fn begin_poll(&mut self) {
        self.generation += 1;
    }

    pub fn observe(&mut self, key: &FlowKey, current: &FlowStats, outcome: &mut PollOutcome) {
        let generation = self.generation;
        let entry = self.flows.entry(*key).or_insert_with(|| {
            outcome.new_flows += 1;
            Entry {
                settled: None,
                live: FlowStats::default(),
                generation,
                exported: Exported::default(),
            }
        });
        if is_newer_incarnation(&entry.live, current) {
            // Evicted and re-created between two reads.
            entry.settle_live();
            outcome.evicted += 1;
        }
        entry.live = *current;
        entry.generation = generation;
    }

    /// Closes a poll: live entries not seen in it were evicted by the kernel.
    pub fn end_poll(&mut self, outcome: &mut PollOutcome) {
        let generation = self.generation;
        for entry in self.flows.values_mut() {
            if entry.generation != generation && entry.live.first_seen_ns != 0 {
                entry.settle_live();
                outcome.evicted += 1;
            }
        }
    }

    /// Records the final statistics of a kernel entry we removed ourselves.
    pub fn retire(&mut self, key: &FlowKey, last: &FlowStats) {
        if let Some(entry) = self.flows.get_mut(key) {
            if is_newer_incarnation(&entry.live, last) {
                // Evicted and re-created between our read and the take.
                entry.settle_live();
            }
            entry.live = *last;
            entry.settle_live();
        }
    }

    /// Forgets flows whose last packet is older than `cutoff_ns` (monotonic)
    /// and returns them with their final totals.
    pub fn expire(&mut self, cutoff_ns: u64) -> Vec<EndedFlow> {
        let mut expired = Vec::new();
        self.flows.retain(|key, entry| {
            if entry.last_seen_ns() >= cutoff_ns {
                return true;
            }
            expired.push(entry.end(*key));
            false
        });
        expired
    }

    /// Of the flows `candidates` (each with a FIN or an RST), those of
    /// connections closed (an RST either way, or a FIN both ways) whose
    /// last packet either way is older than `cutoff_ns`: both flows of
    /// each, the reverse one when the table has it.
    pub fn closed(&self, candidates: &[FlowKey], cutoff_ns: u64) -> FlowSet {
        let mut closed = FlowSet::default();
        for key in candidates {
            let reversed = key.reversed();
            let Some(flow) = self.flows.get(key).map(Entry::total) else {
                continue;
            };
            let reverse = self.flows.get(&reversed).map(Entry::total);
            let either = reverse.unwrap_or_default();
            let ended = flow.rst != 0 || either.rst != 0 || (flow.fin != 0 && either.fin != 0);
            if ended && flow.last_seen_ns.max(either.last_seen_ns) < cutoff_ns {
                closed.insert(*key);
                if reverse.is_some() {
                    closed.insert(reversed);
                }
            }
        }
        closed
    }

    /// Forgets a flow, returning it with its final totals.
    pub fn end(&mut self, key: &FlowKey) -> Option<EndedFlow> {
        let mut entry = self.flows.remove(key)?;
        Some(entry.end(*key))
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Cumulative totals of every flow.
    pub fn records(&self) -> impl Iterator<Item = FlowRecord> + '_ {
        self.exported_records(0).map(|(record, _)| record)
    }

    /// Cumulative totals of the flows with a packet at or after
    /// `active_since_ns` (every flow at 0), with what the traffic series
    /// counted of each. The others are passed over before their totals
    /// are summed.
    pub(crate) fn exported_records(
        &self,
        active_since_ns: u64,
    ) -> impl Iterator<Item = (FlowRecord, &Exported)> + '_ {
        self.flows
            .iter()
            .filter(move |(_, entry)| entry.last_seen_ns() >= active_since_ns)
            .map(|(key, entry)| {
                let record = FlowRecord {
                    key: *key,
                    stats: entry.total(),
                };
                (record, &entry.exported)
            })
    }

    pub fn get(&self, key: &FlowKey) -> Option<FlowRecord> {
        self.flows.get(key).map(|entry| FlowRecord {
            key: *key,
            stats: entry.total(),
        })
    }
}

impl Entry {
    fn total(&self) -> FlowStats {
        match &self.settled {
            Some(settled) => {
                let mut total = **settled;
                settle(&mut total, &self.live);
                total
            }
            None => self.live,
        }
    }

    /// The last packet of any incarnation: the total's, without summing.
    fn last_seen_ns(&self) -> u64 {
        let settled = self
            .settled
            .as_ref()
            .map_or(0, |settled| settled.last_seen_ns);
        self.live.last_seen_ns.max(settled)
    }

    /// The flow as it leaves the table, with its final totals.
    fn end(&mut self, key: FlowKey) -> EndedFlow {
        EndedFlow {
            record: FlowRecord {
                key,
                stats: self.total(),
            },
            exported: std::mem::take(&mut self.exported),
        }
    }

    /// Adds the live incarnation to the settled totals and clears it.
    fn settle_live(&mut self) {
        if self.live.first_seen_ns == 0 {
            return;
        }
        let settled = self.settled.get_or_insert_default();
        settle(settled, &self.live);
        self.live = FlowStats::default();
    }
}

/// Whether `current` is a later kernel entry than the one `live` was read
/// from. The merged first-seen time is a minimum over CPUs, so it can only
/// move *earlier* within one entry (a CPU that stamped first wrote last);
/// only a later one means a new entry.
fn is_newer_incarnation(live: &FlowStats, current: &FlowStats) -> bool {
    live.first_seen_ns != 0 && current.first_seen_ns > live.first_seen_ns
}

/// Adds an incarnation's counts to the settled totals.
fn settle(settled: &mut FlowStats, incarnation: &FlowStats) {
    if incarnation.first_seen_ns == 0 {
        return;
    }
    *settled = crate::model::merge_cpus(&[*settled, *incarnation]);
}

/// The poller's table as others may read it: no way to change it. The
/// poller writes it per batch of a read, never across a syscall, so a
/// reader waits at most one batch. (A copy per poll for readers would cost
/// the table's size again in memory, 14 MB at 100k flows.)
#[derive(Clone)]
pub struct TableReader(Arc<RwLock<FlowTable>>);

impl From<Arc<RwLock<FlowTable>>> for TableReader {
    fn from(table: Arc<RwLock<FlowTable>>) -> Self {
        TableReader(table)
    }
}

impl TableReader {
    /// What `each` makes of every flow and its reverse flow (the other
    /// direction, when in the table), read under one read lock.
    pub fn map<T>(&self, mut each: impl FnMut(FlowRecord, Option<FlowRecord>) -> T) -> Vec<T> {
        let table = read(&self.0);
        table
            .records()
            .map(|record| {
                let reverse = table.get(&record.key.reversed());
                each(record, reverse)
            })
            .collect()
    }

    /// Like [`Self::map`], keeping only what `each` returns: a reader
    /// that wants a few flows copies no more.
    pub fn filter_map<T>(&self, each: impl FnMut(FlowRecord) -> Option<T>) -> Vec<T> {
        read(&self.0).records().filter_map(each).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src_addr: [1; 16],
            dst_addr: [2; 16],
            src_port: port,
            dst_port: 80,
            protocol: 6,
            ip_version: 6,
            _pad: [0; 2],
        }
    }

    fn stats(first: u64, last: u64, packets: u64) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 60,
            first_seen_ns: first,
            last_seen_ns: last,
            ..FlowStats::default()
        }
    }

    fn poll(table: &mut FlowTable, entries: &[(FlowKey, FlowStats)]) -> PollOutcome {
        let mut outcome = PollOutcome::default();
        table.begin_poll();
        for (k, s) in entries {
            table.observe(k, s, &mut outcome);
        }
        table.end_poll(&mut outcome);
        outcome
    }

    #[test]
    fn totals_follow_the_live_entry() {
        let mut table = FlowTable::new();
        assert_eq!(poll(&mut table, &[(key(1), stats(10, 20, 3))]).new_flows, 1);
        assert_eq!(poll(&mut table, &[(key(1), stats(10, 30, 5))]).new_flows, 0);
        assert_eq!(table.get(&key(1)).map(|r| r.stats.packets), Some(5));
    }

    #[test]
    fn an_evicted_and_recreated_entry_keeps_earlier_counts() {
        let mut table = FlowTable::new();
        poll(&mut table, &[(key(1), stats(10, 20, 3))]);
        let outcome = poll(&mut table, &[(key(1), stats(50, 60, 2))]);
        assert_eq!(outcome.evicted, 1);
        let record = table.get(&key(1)).expect("flow kept");
        assert_eq!(record.stats.packets, 5);
        assert_eq!(record.stats.first_seen_ns, 10);
        assert_eq!(record.stats.last_seen_ns, 60);
    }

    #[test]
    fn a_vanished_entry_is_settled_then_continued() {
        let mut table = FlowTable::new();
        poll(&mut table, &[(key(1), stats(10, 20, 3))]);
        assert_eq!(poll(&mut table, &[]).evicted, 1);
        assert_eq!(table.get(&key(1)).map(|r| r.stats.packets), Some(3));
        poll(&mut table, &[(key(1), stats(70, 80, 4))]);
        assert_eq!(table.get(&key(1)).map(|r| r.stats.packets), Some(7));
    }

    #[test]
    fn an_earlier_first_seen_is_the_same_entry_seen_by_another_cpu() {
        let mut table = FlowTable::new();
        poll(&mut table, &[(key(1), stats(20, 30, 3))]);
        let outcome = poll(&mut table, &[(key(1), stats(15, 40, 5))]);
        assert_eq!(outcome.evicted, 0);
        assert_eq!(table.get(&key(1)).map(|r| r.stats.packets), Some(5));
    }

    #[test]
    fn a_take_after_an_unseen_eviction_keeps_both_incarnations() {
        let mut table = FlowTable::new();
        poll(&mut table, &[(key(1), stats(10, 20, 3))]);
        table.retire(&key(1), &stats(50, 60, 2));
        assert_eq!(table.get(&key(1)).map(|r| r.stats.packets), Some(5));
    }

    #[test]
    fn retired_flows_keep_their_final_counts_until_expired() {
        let mut table = FlowTable::new();
        poll(
            &mut table,
            &[(key(1), stats(10, 20, 3)), (key(2), stats(10, 90, 1))],
        );
        table.retire(&key(1), &stats(10, 25, 4));
        assert_eq!(poll(&mut table, &[(key(2), stats(10, 90, 1))]).evicted, 0);
        let expired = table.expire(50);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].record.stats.packets, 4);
        assert_eq!(table.len(), 1);
    }
}
