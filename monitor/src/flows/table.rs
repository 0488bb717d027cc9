//! Cumulative per-flow totals.
//!
//! The kernel entry of a flow can disappear (LRU eviction under pressure, or
//! our own idle expiry) and come back as a fresh entry counting from zero.
//! The table keeps what earlier incarnations counted, so totals never go
//! down. An incarnation is recognised by its first-seen time.
//!
//! Every poll reads every kernel entry into the table. The kernel hands
//! them out in the order of its hash buckets, the same order from one read
//! to the next but for the flows that came and went, and unrelated to the
//! table's own hash: looking each flow up by its key was a cache miss or
//! two apiece, a sixth of the agent's time at 100k flows. So the table
//! remembers where the flows of a read sit ([`Slot`]s, in the order read)
//! and expects each flow of the next read where the previous one left it:
//! found there, its key compared and no hash taken; otherwise looked up.

use monitor_common::{ip_proto, FlowKey, FlowStats};

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{Arc, RwLock},
};

use super::{
    sharded::{ShardedByFlow, Slot},
    Exported, FlowSet,
};
use crate::{model::FlowRecord, sync::read};

/// How many flows ahead of the one taken in a read is fetched into the
/// caches: enough for the fetches to overlap, not so many that they are
/// evicted before use.
const PREFETCH_AHEAD: usize = 16;

#[derive(Default)]
pub struct FlowTable {
    flows: ShardedByFlow<Entry>,
    /// Poll generation, to spot flows absent from the latest read. 32
    /// bits, wrapping, keep `Entry` at 128 bytes: only equality with this
    /// poll's or the previous one's is asked, and a flow unread for 2^32
    /// polls is gone long before (the idle timeout; 2^32 polls are 50
    /// days at a 1 ms interval, 136 years at the default). Were it not, a
    /// collision would cost a lookup or leave an eviction uncounted,
    /// nothing worse.
    generation: u32,
    /// Where the flows read in this poll sit, in the order read.
    reading: Vec<Place>,
    /// The same of the previous poll: where this poll's reads are expected.
    read_before: Vec<Place>,
    /// From a position in this read to where its flow is expected in the
    /// previous one: how many flows were in that read and not (yet) in
    /// this one, less those new in this one.
    skew: isize,
    /// The clock of this poll's read (CLOCK_MONOTONIC).
    read_ns: u64,
    /// TCP flows with a FIN or an RST whose kernel entry is gone (the
    /// kernel evicted it, or the agent took it out), by when their
    /// connection may close at the earliest (a last packet): no read
    /// offers them as candidates again, so their close is looked for here
    /// (see [`Self::closed`]). Under churn a full map evicts every closed
    /// connection before its linger ends; without this, the table kept
    /// them for the idle timeout.
    unread_closing: BinaryHeap<Reverse<(u64, FlowKey)>>,
}

/// Where a flow of a read sits, with a fingerprint of its key: a flow
/// read in another place than the previous read's is told without
/// touching the entry expected there (a cache miss).
#[derive(Clone, Copy)]
struct Place {
    slot: Slot,
    fingerprint: u32,
}

struct Entry {
    /// Totals of kernel incarnations that ended, boxed: most flows never
    /// have one before they expire, and the table holds every flow.
    settled: Option<Box<FlowStats>>,
    /// Latest read of the live kernel entry (zero when none).
    live: FlowStats,
    /// The poll that last read the flow, and where in that read's order
    /// (`FlowTable::reading` or `read_before`).
    generation: u32,
    read_at: u32,
    /// When the latest read whose counts showed the flow's reverse
    /// something new (see [`shows_news`]) was made: the read's clock, not
    /// the flow's last packet, which a read can catch older than the
    /// counts it took in the same copy.
    news_ns: u64,
    /// What the series counted of the flow: here rather than in a
    /// map of their own, so that each flow has one record.
    exported: Exported,
}

// The table holds every flow: a byte here is 100 KB at 100k flows.
const _: () = assert!(std::mem::size_of::<Entry>() == 128);

/// A flow the table forgot, with its final totals and what the series had
/// counted of it, so that they count the rest.
#[derive(Debug)]
pub struct EndedFlow {
    pub record: FlowRecord,
    pub exported: Exported,
}

/// What one poll changed.
#[derive(Debug, Default)]
pub struct PollOutcome {
    pub new_flows: usize,
    /// Flows read and looked up by key, not found where the previous read
    /// left them: the new ones, and those after a change of the kernel
    /// map's order (an eviction, a flow created in the same bucket).
    pub looked_up: usize,
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

    /// Room for `flows` without growing: a growth moves entries, and the
    /// next read looks the moved ones up.
    #[cfg(test)]
    fn with_capacity(flows: usize) -> Self {
        Self {
            flows: ShardedByFlow::with_capacity(flows),
            ..Self::default()
        }
    }

    /// Starts a poll, its read at `now_ns`: call [`Self::observe`] for
    /// every kernel entry, then [`Self::end_poll`].
    pub fn begin_poll(&mut self, now_ns: u64) {
        self.generation = self.generation.wrapping_add(1);
        self.read_ns = now_ns;
        std::mem::swap(&mut self.read_before, &mut self.reading);
        self.reading.clear();
        self.skew = 0;
    }

    /// Takes in one kernel entry. Call it in the order the kernel map is
    /// read: a flow is then found where the previous read left it.
    pub fn observe(&mut self, key: &FlowKey, current: &FlowStats, outcome: &mut PollOutcome) {
        let generation = self.generation;
        let position = self.reading.len();
        if let Some(ahead) = (position + PREFETCH_AHEAD)
            .checked_add_signed(self.skew)
            .and_then(|at| self.read_before.get(at))
        {
            self.flows.prefetch(ahead.slot);
        }
        let fingerprint = self.flows.fingerprint(key);
        let expected = self.expected(position, fingerprint);
        let (slot, entry) = match self.flows.at_mut(expected, key) {
            Some(entry) => (expected, entry),
            None => {
                outcome.looked_up += 1;
                let (slot, entry, inserted) = self.flows.get_or_insert_with(*key, || Entry {
                    settled: None,
                    live: FlowStats::default(),
                    generation,
                    read_at: u32::MAX,
                    news_ns: 0,
                    exported: Exported::default(),
                });
                if inserted {
                    outcome.new_flows += 1;
                }
                if entry.generation.wrapping_add(1) == generation {
                    // Read before, elsewhere: the next flows are expected
                    // after it.
                    self.skew = entry.read_at as isize - position as isize;
                } else {
                    // Not in the previous read (new, re-created after an
                    // eviction, or read twice): it took no place there,
                    // and the flow expected here comes next.
                    self.skew -= 1;
                }
                (slot, entry)
            }
        };
        if is_newer_incarnation(&entry.live, current) {
            // Evicted and re-created between two reads.
            entry.settle_live();
            outcome.evicted += 1;
            queue_if_closing(&mut self.unread_closing, key, entry);
        }
        entry.take_in(current, self.read_ns);
        entry.generation = generation;
        entry.read_at = u32::try_from(position).unwrap_or(u32::MAX);
        self.reading.push(Place { slot, fingerprint });
    }

    /// Where the flow read at `position` is expected in the previous
    /// read (past the flows removed since), if a flow with its key's
    /// fingerprint was there.
    fn expected(&mut self, position: usize, fingerprint: u32) -> Slot {
        loop {
            let Some(at) = position.checked_add_signed(self.skew) else {
                return Slot::NONE;
            };
            match self.read_before.get(at) {
                Some(place) if place.slot == Slot::NONE => self.skew += 1,
                Some(place) if place.fingerprint == fingerprint => return place.slot,
                _ => return Slot::NONE,
            }
        }
    }

    /// Closes a poll: live entries not seen in it were evicted by the kernel.
    pub fn end_poll(&mut self, outcome: &mut PollOutcome) {
        let generation = self.generation;
        for (key, entry) in self.flows.iter_mut() {
            if entry.generation != generation && entry.live.first_seen_ns != 0 {
                entry.settle_live();
                outcome.evicted += 1;
                queue_if_closing(&mut self.unread_closing, key, entry);
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
            entry.take_in(last, self.read_ns);
            entry.settle_live();
            // Ended at this poll, unless the take failed half-way.
            queue_if_closing(&mut self.unread_closing, key, entry);
        }
    }

    /// Forgets flows whose last packet is older than `cutoff_ns` (monotonic)
    /// and returns them with their final totals.
    pub fn expire(&mut self, cutoff_ns: u64) -> Vec<EndedFlow> {
        let expired = self.flows.extract(|entry| entry.last_seen_ns() < cutoff_ns);
        expired
            .into_iter()
            .map(|(key, slot, entry)| self.ended(key, slot, entry))
            .collect()
    }

    /// The flows of connections closed (an RST either way, or a FIN both
    /// ways) whose last packet either way is older than `cutoff_ns`, both
    /// flows of each (the reverse one when the table has it), looked for
    /// from `read` (flows of this poll's read with a FIN or an RST) and
    /// from those whose kernel entry is gone (`unread_closing`).
    pub fn closed(&mut self, read: &[FlowKey], cutoff_ns: u64) -> FlowSet {
        let mut closed = FlowSet::default();
        for key in read {
            self.close(key, cutoff_ns, &mut closed);
        }
        let mut again = Vec::new();
        while let Some(Reverse((at_ns, key))) = self.unread_closing.peek().copied() {
            if at_ns >= cutoff_ns {
                break;
            }
            self.unread_closing.pop();
            // A new connection on the same ports closes by its own FIN or
            // RST, which the read offers.
            if self.reopened(&key) || self.reopened(&key.reversed()) {
                continue;
            }
            // Read again since (a late segment), it is looked at all the
            // same: its FIN or RST may be in an earlier incarnation only,
            // which the read's candidates do not show.
            match self.close(&key, cutoff_ns, &mut closed) {
                // Closed: looked at again next poll, found ended by then
                // unless taking it out failed.
                Close::Closed => again.push(Reverse((at_ns, key))),
                Close::Later(last_ns) => again.push(Reverse((last_ns, key))),
                // Ended, or open: its reverse's FIN or RST, when it comes,
                // is read.
                Close::Open => {}
            }
        }
        self.unread_closing.extend(again);
        closed
    }

    /// Whether the flow's kernel entry, created after an earlier one's,
    /// opened a connection again (a SYN or a SYN-ACK).
    fn reopened(&self, key: &FlowKey) -> bool {
        self.flows.get(key).is_some_and(|entry| {
            entry.settled.is_some() && (entry.live.syn != 0 || entry.live.syn_ack != 0)
        })
    }

    /// Whether `key`'s connection is closed, adding both its flows to
    /// `closed` if so; open if the table does not have it.
    fn close(&self, key: &FlowKey, cutoff_ns: u64, closed: &mut FlowSet) -> Close {
        let reversed = key.reversed();
        let Some(flow) = self.flows.get(key).map(Entry::total) else {
            return Close::Open;
        };
        let reverse = self.flows.get(&reversed).map(Entry::total);
        let either = reverse.unwrap_or_default();
        let ended = flow.rst != 0 || either.rst != 0 || (flow.fin != 0 && either.fin != 0);
        if !ended {
            return Close::Open;
        }
        let last_ns = flow.last_seen_ns.max(either.last_seen_ns);
        if last_ns >= cutoff_ns {
            return Close::Later(last_ns);
        }
        closed.insert(*key);
        if reverse.is_some() {
            closed.insert(reversed);
        }
        Close::Closed
    }

    /// Forgets a flow, returning it with its final totals.
    pub fn end(&mut self, key: &FlowKey) -> Option<EndedFlow> {
        let (slot, entry) = self.flows.remove(key)?;
        Some(self.ended(*key, slot, entry))
    }

    /// A flow just removed from `slot`, with its final totals; its place in
    /// the reads the table remembers is empty now, so that the next read
    /// expects the flow after it there.
    fn ended(&mut self, key: FlowKey, slot: Slot, mut entry: Entry) -> EndedFlow {
        let read = if entry.generation == self.generation {
            &mut self.reading
        } else if entry.generation.wrapping_add(1) == self.generation {
            &mut self.read_before
        } else {
            return entry.end(key);
        };
        if let Some(place) = read.get_mut(entry.read_at as usize) {
            if place.slot == slot {
                place.slot = Slot::NONE;
            }
        }
        entry.end(key)
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Cumulative totals of every flow.
    pub fn records(&self) -> impl Iterator<Item = FlowRecord> + '_ {
        self.live_flows().map(|flow| flow.exported_record().0)
    }

    /// Every flow, its totals summed only when read.
    pub(crate) fn live_flows(&self) -> impl Iterator<Item = LiveFlow<'_>> + '_ {
        self.flows
            .iter()
            .map(|(key, entry)| LiveFlow { key, entry })
    }

    /// A flow's cumulative totals, with what the series counted.
    pub(crate) fn exported_record(&self, key: &FlowKey) -> Option<(FlowRecord, &Exported)> {
        self.flows.get(key).map(|entry| entry.exported_record(key))
    }

    pub fn get(&self, key: &FlowKey) -> Option<FlowRecord> {
        self.exported_record(key).map(|(record, _)| record)
    }
}

/// A flow of the table, as a walk over it picks it: what picking reads
/// (the first and last packets, the latest news) without summing its
/// totals, which only a flow picked needs.
#[derive(Clone, Copy)]
pub(crate) struct LiveFlow<'a> {
    key: &'a FlowKey,
    entry: &'a Entry,
}

impl<'a> LiveFlow<'a> {
    pub(crate) fn key(self) -> &'a FlowKey {
        self.key
    }

    /// The first packet of any incarnation, and the last.
    pub(crate) fn first_and_last_ns(self) -> (u64, u64) {
        (self.entry.first_seen_ns(), self.entry.last_seen_ns())
    }

    /// Where the flow's first packet was counted: the total's veth.
    pub(crate) fn ifindex(self) -> u32 {
        self.entry.ifindex()
    }

    /// When the latest read that showed the reverse news was made (see
    /// [`shows_news`]).
    pub(crate) fn news_ns(self) -> u64 {
        self.entry.news_ns
    }

    /// Its cumulative totals, with what the series counted.
    pub(crate) fn exported_record(self) -> (FlowRecord, &'a Exported) {
        self.entry.exported_record(self.key)
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

    /// Takes in a read of the live kernel entry (see [`advance`]), noting
    /// at `read_ns` whether it showed the reverse news.
    fn take_in(&mut self, current: &FlowStats, read_ns: u64) {
        let before = self.live;
        advance(&mut self.live, current);
        if shows_news(&before, &self.live) {
            self.news_ns = read_ns;
        }
    }

    fn exported_record(&self, key: &FlowKey) -> (FlowRecord, &Exported) {
        let record = FlowRecord {
            key: *key,
            stats: self.total(),
        };
        (record, &self.exported)
    }

    /// The first packet of any incarnation: the total's, without summing
    /// (a settled incarnation is earlier than the live one).
    fn first_seen_ns(&self) -> u64 {
        match &self.settled {
            Some(settled) if settled.first_seen_ns != 0 => settled.first_seen_ns,
            _ => self.live.first_seen_ns,
        }
    }

    /// The first incarnation's veth: the total's, without summing.
    fn ifindex(&self) -> u32 {
        let ifindex = match &self.settled {
            Some(settled) if settled.first_seen_ns != 0 => settled.ifindex,
            _ => self.live.ifindex,
        };
        debug_assert_eq!(ifindex, self.total().ifindex);
        ifindex
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

/// Queues a TCP flow whose kernel entry is gone, if it counted a FIN or
/// an RST: see `FlowTable::unread_closing`.
fn queue_if_closing(queue: &mut BinaryHeap<Reverse<(u64, FlowKey)>>, key: &FlowKey, entry: &Entry) {
    let total = entry.total();
    if key.protocol == ip_proto::TCP && (total.fin != 0 || total.rst != 0) {
        queue.push(Reverse((total.last_seen_ns, *key)));
    }
}

/// What [`FlowTable::close`] found of a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    Closed,
    /// Closed, with a packet either way since the cutoff: the last one.
    Later(u64),
    Open,
}

/// Whether `current` is a later kernel entry than the one `live` was read
/// from: an entry's first-seen time is written when it is created and
/// never changes.
fn is_newer_incarnation(live: &FlowStats, current: &FlowStats) -> bool {
    live.first_seen_ns != 0 && current.first_seen_ns > live.first_seen_ns
}

/// Whether a read of a kernel entry, `before` and `after`, shows what a
/// consumer could make something new of in the flow's reverse: the flow's
/// first packet, or a change of its SYN, SYN-ACK or RST counts or of its
/// TCP flags. An attempt is decided by its reverse's existence and these
/// ([`super::outcome`]), and a reverse's packet and byte counts alone
/// decide nothing.
fn shows_news(before: &FlowStats, after: &FlowStats) -> bool {
    before.packets == 0
        || (before.syn, before.syn_ack, before.rst, before.tcp_flags)
            != (after.syn, after.syn_ack, after.rst, after.tcp_flags)
}

/// Takes in a later read of the kernel entry `live` was read from (or of
/// a new one, `live` then cleared). Its counts only grow, but a read can
/// catch one mid-update: the kernel copies a shared entry to user space
/// with a plain `memcpy`, which on x86 may copy a counter other CPUs are
/// adding to in more than one piece. A count that went back keeps the
/// higher value read before, so no total downstream ever shrinks.
fn advance(live: &mut FlowStats, current: &FlowStats) {
    let before = *live;
    *live = *current;
    crate::model::combine_counts(live, &before, u64::max, u32::max);
}

/// Adds an incarnation's counts to the settled totals.
fn settle(settled: &mut FlowStats, incarnation: &FlowStats) {
    if incarnation.first_seen_ns == 0 {
        return;
    }
    *settled = crate::model::merge_counts(&[*settled, *incarnation]);
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
    use std::collections::HashMap;

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
        table.begin_poll(0);
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
    fn a_count_read_lower_than_before_keeps_the_higher_one() {
        let mut table = FlowTable::new();
        let packets = |table: &FlowTable| table.get(&key(1)).map(|r| r.stats.packets);
        poll(&mut table, &[(key(1), stats(10, 20, 300))]);
        // The same entry, one counter caught mid-update by the copy.
        let torn = FlowStats {
            bytes: 300 * 60 + 60,
            ..stats(10, 30, 256)
        };
        poll(&mut table, &[(key(1), torn)]);
        assert_eq!(packets(&table), Some(300));
        assert_eq!(
            table.get(&key(1)).map(|r| r.stats.bytes),
            Some(300 * 60 + 60)
        );
        poll(&mut table, &[(key(1), stats(10, 40, 302))]);
        assert_eq!(packets(&table), Some(302));
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
    fn a_take_after_an_unseen_eviction_keeps_both_incarnations() {
        let mut table = FlowTable::new();
        poll(&mut table, &[(key(1), stats(10, 20, 3))]);
        table.retire(&key(1), &stats(50, 60, 2));
        assert_eq!(table.get(&key(1)).map(|r| r.stats.packets), Some(5));
    }

    #[test]
    fn each_flow_is_found_where_the_previous_read_left_it() {
        let mut table = FlowTable::with_capacity(200);
        // Each flow its own count, so that a flow's read taken into
        // another's entry shows.
        let read = |ports: &[u16], last: u64| -> Vec<(FlowKey, FlowStats)> {
            ports
                .iter()
                .map(|port| (key(*port), stats(10, last, u64::from(*port) + last)))
                .collect()
        };
        let all: Vec<u16> = (0..100).collect();
        let first = poll(&mut table, &read(&all, 20));
        assert_eq!((first.new_flows, first.looked_up), (100, 100));
        assert_eq!(poll(&mut table, &read(&all, 20)).looked_up, 0);

        // The kernel evicted flow 50 and created flow 1000 in a bucket
        // read before: one lookup for the new flow, one to find where the
        // read resumes after the gap.
        let changed: Vec<u16> = (0..20).chain([1000]).chain(20..50).chain(51..100).collect();
        let outcome = poll(&mut table, &read(&changed, 20));
        assert_eq!(
            (outcome.new_flows, outcome.looked_up, outcome.evicted),
            (1, 2, 1)
        );
        assert_eq!(poll(&mut table, &read(&changed, 20)).looked_up, 0);

        // The agent removed flows (one closed, ten idle): their places in
        // the remembered read are empty, and the next read steps over them
        // without a lookup.
        let idle: Vec<(FlowKey, FlowStats)> = read(&changed, 25)
            .into_iter()
            .map(|(key, stats)| match key.src_port {
                port @ 60..70 => (key, read(&[port], 20)[0].1),
                _ => (key, stats),
            })
            .collect();
        poll(&mut table, &idle);
        assert!(table.end(&key(10)).is_some());
        // The ten idle ones, and flow 50, idle since its eviction.
        assert_eq!(table.expire(22).len(), 11);
        let left: Vec<u16> = changed
            .iter()
            .copied()
            .filter(|port| *port != 10 && !(60..70).contains(port))
            .collect();
        let outcome = poll(&mut table, &read(&left, 30));
        assert_eq!((outcome.new_flows, outcome.looked_up), (0, 0));
        assert_eq!(table.len(), left.len());
        for port in &left {
            let stats = table.get(&key(*port)).map(|r| r.stats);
            assert_eq!(
                stats.map(|s| (s.last_seen_ns, s.packets)),
                Some((30, u64::from(*port) + 30))
            );
        }
    }

    /// The kernel map's reads as the table may see them: flows created at
    /// any place, evicted and re-created, taken out by the agent, parts of
    /// the order changed, the table's shards growing and rehashing. What
    /// the table holds of each flow is checked against the sum of its
    /// incarnations after every poll.
    #[test]
    fn totals_hold_whatever_the_reads_order() {
        let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
        // `0..n` (0 when n is 0: an empty map has no place to pick).
        let mut below = |n: usize| rng.usize(..n.max(1));
        let mut table = FlowTable::new();
        // The kernel map in its read order, and each flow's expected
        // total over its incarnations.
        let mut kernel: Vec<(FlowKey, FlowStats)> = Vec::new();
        let mut totals: HashMap<FlowKey, u64> = HashMap::new();
        let mut next_port = 0_u16;
        for round in 1..=80_u64 {
            let now = round * 10;
            match round % 4 {
                // Evictions of flows as last read (what a flow counts
                // between a read and its eviction is lost to the agent),
                // some re-created elsewhere, counting anew.
                0 => {
                    let evicted: Vec<FlowKey> = (0..below(10))
                        .map(|_| kernel.remove(below(kernel.len())).0)
                        .collect();
                    for key in evicted {
                        if below(2) == 0 {
                            let at = below(kernel.len() + 1);
                            kernel.insert(at, (key, stats(now + 1, now + 1, 2)));
                            *totals.entry(key).or_default() += 2;
                        }
                    }
                }
                // A stretch of the order reversed.
                1 => {
                    let from = below(kernel.len());
                    let to = (from + below(20)).min(kernel.len());
                    kernel[from..to].reverse();
                }
                _ => {}
            }
            for (key, stats) in &mut kernel {
                let more = 1 + below(3) as u64;
                stats.packets += more;
                stats.last_seen_ns = now;
                *totals.entry(*key).or_default() += more;
            }
            for _ in 0..below(60) {
                let key = key(next_port);
                next_port += 1;
                let at = below(kernel.len() + 1);
                kernel.insert(at, (key, stats(now, now, 1)));
                *totals.entry(key).or_default() += 1;
            }
            poll(&mut table, &kernel);
            // The agent takes flows out: closed ones, by key.
            for _ in 0..below(8) {
                let (key, _) = kernel.remove(below(kernel.len()));
                let ended = table.end(&key).map(|ended| ended.record.stats.packets);
                assert_eq!(ended, totals.remove(&key));
            }
            assert_eq!(table.len(), totals.len(), "round {round}");
            for (key, total) in &totals {
                let packets = table.get(key).map(|record| record.stats.packets);
                assert_eq!(packets, Some(*total), "round {round}");
            }
        }
        assert!(table.len() > 1000, "{} flows: the shards grew", table.len());
        // Read twice as it stands: the second read finds every flow in
        // place (no insert, so nothing moved in between).
        poll(&mut table, &kernel);
        assert_eq!(poll(&mut table, &kernel).looked_up, 0);
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

    /// A flow's segment counts with FINs and RSTs.
    fn closing(first: u64, last: u64, fin: u32, rst: u32) -> FlowStats {
        FlowStats {
            fin,
            rst,
            ..stats(first, last, 3)
        }
    }

    fn sorted(set: FlowSet) -> Vec<FlowKey> {
        let mut keys: Vec<_> = set.into_iter().collect();
        keys.sort_by_key(|key| (key.src_port, key.dst_port));
        keys
    }

    #[test]
    fn connections_the_kernel_evicted_close_after_their_linger() {
        let mut table = FlowTable::new();
        let (a, b) = (key(1), key(1).reversed());
        let (reset, quiet) = (key(2), key(2).reversed());
        let (half, open) = (key(3), key(3).reversed());
        poll(
            &mut table,
            &[
                (a, closing(10, 20, 1, 0)),
                (b, closing(10, 21, 1, 0)),
                (reset, closing(10, 20, 0, 1)),
                (quiet, closing(10, 20, 0, 0)),
                (half, closing(10, 20, 1, 0)),
                (open, closing(10, 20, 0, 0)),
            ],
        );
        // A full map evicted them all but the quiet side of the reset
        // connection, which goes on sending, and the open side of the half
        // closed one.
        let outcome = poll(
            &mut table,
            &[
                (quiet, closing(10, 40, 0, 0)),
                (open, closing(10, 40, 0, 0)),
            ],
        );
        assert_eq!(outcome.evicted, 4);
        // Within the linger, nothing closes.
        assert!(table.closed(&[], 21).is_empty());
        // Both FINs and the RST are old now; the reset connection's other
        // side is not, and the half-closed one waits for its second FIN.
        assert_eq!(sorted(table.closed(&[], 30)), both(a, b));
        for key in [a, b] {
            table.end(&key);
        }
        // The reset connection closes once its other side is quiet, looked
        // for again without a read naming it.
        poll(
            &mut table,
            &[
                (quiet, closing(10, 40, 0, 0)),
                (open, closing(10, 40, 0, 0)),
            ],
        );
        assert!(table.closed(&[], 35).is_empty());
        assert_eq!(
            sorted(table.closed(&[], 50)),
            sorted(FlowSet::from_iter([reset, quiet]))
        );
        // Until the poller takes them out, they are found again.
        assert_eq!(
            sorted(table.closed(&[], 50)),
            sorted(FlowSet::from_iter([reset, quiet]))
        );
        for key in [reset, quiet] {
            table.end(&key);
        }
        // The half-closed one closes when the read brings the other FIN.
        let second_fin = closing(10, 45, 1, 0);
        poll(&mut table, &[(open, second_fin)]);
        assert_eq!(
            sorted(table.closed(&[open], 50)),
            sorted(FlowSet::from_iter([half, open]))
        );
    }

    /// A table that read both flows of a connection closed by a FIN each
    /// way, their last packets at 20.
    fn closed_connection(port: u16) -> (FlowTable, FlowKey, FlowKey) {
        let mut table = FlowTable::new();
        let (a, b) = (key(port), key(port).reversed());
        poll(
            &mut table,
            &[(a, closing(10, 20, 1, 0)), (b, closing(10, 20, 1, 0))],
        );
        (table, a, b)
    }

    fn both(a: FlowKey, b: FlowKey) -> Vec<FlowKey> {
        sorted(FlowSet::from_iter([a, b]))
    }

    #[test]
    fn a_closed_connection_evicted_then_recreated_by_late_segments_still_closes() {
        let (mut table, a, b) = closed_connection(4);
        assert_eq!(poll(&mut table, &[]).evicted, 2);
        // A late ACK each way: new kernel entries, with neither FIN, which
        // the read does not offer as candidates.
        let late = closing(22, 22, 0, 0);
        poll(&mut table, &[(a, late), (b, late)]);
        assert!(table.closed(&[], 22).is_empty());
        assert_eq!(sorted(table.closed(&[], 30)), both(a, b));
    }

    #[test]
    fn a_new_connection_on_the_ports_of_an_evicted_closed_one_is_left_open() {
        let (mut table, a, b) = closed_connection(5);
        // Evicted and re-created between two reads, by a new handshake.
        let opened = |syn, syn_ack| FlowStats {
            syn,
            syn_ack,
            ..closing(22, 22, 0, 0)
        };
        let outcome = poll(&mut table, &[(a, opened(1, 0)), (b, opened(0, 1))]);
        assert_eq!(outcome.evicted, 2);
        // Quiet past the linger, it is open: the old FINs do not close it.
        assert!(table.closed(&[], 40).is_empty());
        // Its own FINs, read, do.
        let fin = |syn, syn_ack| FlowStats {
            fin: 1,
            ..opened(syn, syn_ack)
        };
        poll(&mut table, &[(a, fin(1, 0)), (b, fin(0, 1))]);
        assert_eq!(sorted(table.closed(&[a, b], 40)), both(a, b));
    }

    #[test]
    fn a_closed_connection_recreated_between_two_reads_still_closes() {
        let (mut table, a, b) = closed_connection(6);
        // Evicted and re-created by a late ACK each way between two reads:
        // never missing from a read.
        let late = closing(22, 22, 0, 0);
        let outcome = poll(&mut table, &[(a, late), (b, late)]);
        assert_eq!(outcome.evicted, 2);
        assert_eq!(sorted(table.closed(&[], 30)), both(a, b));
    }

    #[test]
    fn a_closed_connection_taken_out_but_not_ended_is_found_again() {
        let (mut table, a, b) = closed_connection(7);
        assert_eq!(sorted(table.closed(&[a, b], 30)), both(a, b));
        // Both were taken out of the map before the take of another flow
        // failed: the poll ended neither, and no read names them again.
        for key in [a, b] {
            table.retire(&key, &closing(10, 20, 1, 0));
        }
        poll(&mut table, &[]);
        assert_eq!(sorted(table.closed(&[], 30)), both(a, b));
    }
}
