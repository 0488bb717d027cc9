//! One poll's flows as every consumer reads them (metrics, detectors, the
//! flow log, policy learning): the live ones and those that ended at this
//! poll, each findable by key, so a flow's reverse is found wherever it is,
//! and walked only where a consumer could make something new of them.

use std::collections::HashSet;

use monitor_common::{ip_proto, FlowKey};

use super::{
    outcome::UNANSWERED_AFTER_NS, table::LiveFlow, ByFlow, EndedFlow, Exported, FlowTable,
};
use crate::{docker::Renamed, model::FlowRecord};

/// How much earlier than its packet the programs may stamp a flow's last
/// packet: their tick clock runs up to a tick behind (10 ms at the slowest
/// timer rate kernels are built with), with room to spare.
const STAMPED_EARLY_NS: u64 = 100_000_000;

/// Which live flows the consumers walk. What a consumer makes of a flow
/// depends on the flow, its reverse, how the directory names its ends
/// and time: time only through an attempt's deadline, counted from its
/// first packet ([`UNANSWERED_AFTER_NS`]), and through a held flow's
/// release (see [`PollView::holding`]).
#[derive(Clone, Copy, Debug)]
enum Walk {
    Every,
    /// Since the previous poll the consumers saw, at `since_ns`.
    Changed {
        since_ns: u64,
        now_ns: u64,
    },
}

pub struct PollView<'a> {
    table: &'a FlowTable,
    expired: &'a [EndedFlow],
    /// `expired` by key: references, as when every flow expires at once
    /// this index is as long as the table.
    ended: ByFlow<&'a EndedFlow>,
    /// Veths whose young live flows wait for a later poll, and since when
    /// a flow is young (see [`Self::holding`]).
    held: HashSet<u32>,
    young_since_ns: u64,
    /// What the directory names otherwise since the previous poll (see
    /// [`Self::renamed`]).
    renamed: Renamed,
    walk: Walk,
    /// The live flows a [`Walk::Changed`] picks, held or not: picked in
    /// one pass over the table rather than in each consumer's walk, 16
    /// bytes a flow picked.
    walked: Vec<LiveFlow<'a>>,
    /// Live flows whose reverse showed news since the previous poll (its
    /// first packet, a SYN, SYN-ACK, RST or TCP flag) or ended at this
    /// one: walked for it even if nothing else changed.
    reverses: Vec<(FlowRecord, &'a Exported)>,
}

impl<'a> PollView<'a> {
    /// `expired`: the flows the table forgot at this poll, with their final
    /// totals.
    pub fn new(table: &'a FlowTable, expired: &'a [EndedFlow]) -> Self {
        Self {
            table,
            expired,
            ended: expired
                .iter()
                .map(|ended| (ended.record.key, ended))
                .collect(),
            held: HashSet::new(),
            young_since_ns: u64::MAX,
            renamed: Renamed::default(),
            walk: Walk::Every,
            walked: Vec::new(),
            reverses: Vec::new(),
        }
    }

    /// Leaves out of [`Self::records`] the live flows that nothing new
    /// happened to since the previous poll the consumers saw, at
    /// `since_ns`: walked are those with a packet since, those whose
    /// reverse showed news since or ended now, those whose attempt's
    /// deadline passed since, those released from a hold since, and those
    /// [`Self::renamed`] touches. Without it (the default) every flow is
    /// walked, as it must be when something besides a flow's packets
    /// changed what consumers make of it in a way no [`Renamed`] bounds.
    /// After [`Self::holding`] and [`Self::renamed`]: the flows are picked
    /// here.
    pub fn changed_since(mut self, since_ns: u64, now_ns: u64) -> Self {
        let walk = Walk::Changed { since_ns, now_ns };
        let table = self.table;
        let mut news = Vec::new();
        for flow in table.live_flows() {
            let (first_ns, last_ns) = flow.first_and_last_ns();
            let renamed =
                !self.renamed.is_empty() && self.renamed.touches(flow.key(), flow.ifindex());
            if renamed || self.walks_at(walk, first_ns, last_ns) {
                self.walked.push(flow);
            }
            // Stamped with the read's clock: exactly since the previous
            // poll. A renamed flow's reverse is not walked for it:
            // consumers read a reverse's counts, never its names.
            if flow.news_ns() > since_ns {
                news.push(flow.key());
            }
        }
        self.walk = walk;
        let ended = self.expired.iter().map(|ended| &ended.record.key);
        // Most reverses changed too: those are walked on their own.
        self.reverses = news
            .into_iter()
            .chain(ended)
            .filter_map(|key| table.exported_record(&key.reversed()))
            .filter(|(record, _)| !had_packet_since(record.stats.last_seen_ns, since_ns))
            .collect();
        self
    }

    /// Has [`Self::changed_since`] walk the flows whose ends `renamed`
    /// names otherwise than the previous poll's directory did, or that
    /// were counted at a veth it names otherwise (its owner, or whether it
    /// is held): a container that starts or stops has its own flows
    /// walked, not every flow.
    pub fn renamed(mut self, renamed: Renamed) -> Self {
        debug_assert!(
            matches!(self.walk, Walk::Every),
            "what was renamed is set before the walk is picked"
        );
        self.renamed = renamed;
        self
    }

    /// Leaves out the live flows counted at `veths` (a container's veth
    /// the engine has not named yet) first seen at or after `since_ns`: a
    /// later poll hands them over whole, named. Older flows and flows that
    /// ended are never held: the name may never come, and an ended flow
    /// would not come back. Before [`Self::changed_since`], whose walk
    /// depends on it.
    pub fn holding(mut self, veths: HashSet<u32>, since_ns: u64) -> Self {
        debug_assert!(
            matches!(self.walk, Walk::Every),
            "held veths are set before the walk is picked"
        );
        self.held = veths;
        self.young_since_ns = since_ns;
        self
    }

    /// A flow by key, live or just ended.
    pub fn find(&self, key: &FlowKey) -> Option<FlowRecord> {
        self.table
            .get(key)
            .or_else(|| self.ended.get(key).map(|ended| ended.record))
    }

    /// A flow by key, live or just ended, with what the series counted of
    /// it; none for a held one (see [`Self::holding`]), of which nothing
    /// new is made yet.
    pub(crate) fn find_exported(&self, key: &FlowKey) -> Option<(FlowRecord, &Exported)> {
        match self.table.exported_record(key) {
            Some((record, _)) if self.is_held(&record) => None,
            Some(live) => Some(live),
            None => self
                .ended
                .get(key)
                .map(|ended| (ended.record, &ended.exported)),
        }
    }

    /// Whether a flow is live (in the table, not ended).
    pub fn is_live(&self, key: &FlowKey) -> bool {
        self.table.get(key).is_some()
    }

    /// Whether a flow ended at this poll.
    pub fn has_ended(&self, key: &FlowKey) -> bool {
        self.ended.contains_key(key)
    }

    /// The flows to look at in this poll, with whether each ended at it:
    /// the live ones [`Self::changed_since`] picks, and those that ended.
    /// A consumer must make nothing new of a live flow left out.
    pub fn records(&self) -> impl Iterator<Item = (FlowRecord, bool)> + '_ {
        self.exported_records()
            .map(|(record, ended, _)| (record, ended))
    }

    /// Every flow, with whether it ended at this poll: for a consumer
    /// whose decisions wait on time beyond an attempt's deadline (the
    /// flow log's interval lines).
    pub fn every_record(&self) -> impl Iterator<Item = (FlowRecord, bool)> + '_ {
        self.live(Walk::Every, None, false)
            .chain(self.ended_records())
            .map(|(record, ended, _)| (record, ended))
    }

    /// [`Self::records`], with what the series counted of each.
    pub(crate) fn exported_records(
        &self,
    ) -> impl Iterator<Item = (FlowRecord, bool, &Exported)> + '_ {
        self.exported_records_of(None, false)
    }

    /// [`Self::exported_records`] of TCP alone, in the same order: the
    /// others' records are not made.
    pub(crate) fn exported_tcp_records(
        &self,
    ) -> impl Iterator<Item = (FlowRecord, bool, &Exported)> + '_ {
        self.exported_records_of(Some(ip_proto::TCP), false)
    }

    /// [`Self::exported_records`] and the held flows the walk picks, each
    /// with whether it is held: for what a consumer learns from addresses
    /// and counts alone, which a held flow's missing names do not change
    /// (the served ports).
    pub(crate) fn exported_records_held_too(
        &self,
    ) -> impl Iterator<Item = (FlowRecord, &Exported, bool)> + '_ {
        self.exported_records_of(None, true)
            .map(|(record, ended, exported)| (record, exported, !ended && self.is_held(&record)))
    }

    /// The flows of `protocol`, or of every one; held ones if `held_too`.
    fn exported_records_of(
        &self,
        protocol: Option<u8>,
        held_too: bool,
    ) -> impl Iterator<Item = (FlowRecord, bool, &Exported)> + '_ {
        // Those the walk picks on their own (their deadline, their
        // release) come with the table's.
        let reverses = self
            .reverses
            .iter()
            .filter(move |(record, _)| {
                is_of(protocol, &record.key)
                    && !self.walks(self.walk, record)
                    && (held_too || !self.is_held(record))
            })
            .map(|(record, exported)| (*record, false, *exported));
        let ended = self
            .ended_records()
            .filter(move |(record, _, _)| is_of(protocol, &record.key));
        self.live(self.walk, protocol, held_too)
            .chain(reverses)
            .chain(ended)
    }

    /// The live flows `walk` picks of `protocol` (or all), but those held
    /// unless `held_too`.
    fn live(
        &self,
        walk: Walk,
        protocol: Option<u8>,
        held_too: bool,
    ) -> impl Iterator<Item = (FlowRecord, bool, &Exported)> + '_ {
        let (all, walked) = match walk {
            Walk::Every => (Some(self.table.live_flows()), None),
            Walk::Changed { .. } => (None, Some(self.walked.iter().copied())),
        };
        all.into_iter()
            .flatten()
            .chain(walked.into_iter().flatten())
            .filter(move |flow| is_of(protocol, flow.key()))
            .map(LiveFlow::exported_record)
            .filter(move |(record, _)| held_too || !self.is_held(record))
            .map(|(record, exported)| (record, false, exported))
    }

    fn ended_records(&self) -> impl Iterator<Item = (FlowRecord, bool, &Exported)> + '_ {
        self.expired
            .iter()
            .map(|ended| (ended.record, true, &ended.exported))
    }

    fn walks(&self, walk: Walk, record: &FlowRecord) -> bool {
        let stats = &record.stats;
        self.walks_at(walk, stats.first_seen_ns, stats.last_seen_ns)
            || self.renamed.touches(&record.key, stats.ifindex)
    }

    /// Whether `walk` picks a live flow by its first and last packets.
    fn walks_at(&self, walk: Walk, first_ns: u64, last_ns: u64) -> bool {
        let Walk::Changed { since_ns, now_ns } = walk else {
            return true;
        };
        // Consumers judge `now - first >= deadline`: false at the
        // previous poll, true now.
        let passed = |deadline_ns: u64| {
            let due_ns = first_ns.saturating_add(deadline_ns);
            since_ns < due_ns && due_ns <= now_ns
        };
        // A flow held at the previous poll was young then (first seen at
        // or after `now - hold` back then), and is not now.
        let hold_ns = now_ns.saturating_sub(self.young_since_ns);
        had_packet_since(last_ns, since_ns)
            || passed(UNANSWERED_AFTER_NS)
            || (!self.held.is_empty() && passed(hold_ns.saturating_add(1)))
    }

    /// Whether a live flow is held (see [`Self::holding`]).
    fn is_held(&self, record: &FlowRecord) -> bool {
        record.stats.first_seen_ns >= self.young_since_ns
            && self.held.contains(&record.stats.ifindex)
    }

    /// The keys of the flows that ended at this poll.
    pub fn ended(&self) -> impl Iterator<Item = &FlowKey> + '_ {
        self.ended.keys()
    }
}

/// Whether a walk of `protocol` (`None`: of every one) hands `key` over.
fn is_of(protocol: Option<u8>, key: &FlowKey) -> bool {
    protocol.is_none_or(|protocol| key.protocol == protocol)
}

/// Whether a flow's last packet, as stamped, may be one the previous poll,
/// at `since_ns`, did not read.
fn had_packet_since(last_ns: u64, since_ns: u64) -> bool {
    last_ns.saturating_add(STAMPED_EARLY_NS) >= since_ns
}

#[cfg(test)]
mod tests {
    use monitor_common::{ip_proto, FlowStats};

    use super::*;
    use crate::flows::PollOutcome;

    const SEC: u64 = 1_000_000_000;
    /// Long after the clock's start, so that no window saturates.
    const T: u64 = 1_000 * SEC;
    const VETH: u32 = 7;

    fn key(port: u16) -> FlowKey {
        FlowKey::ipv4([10, 0, 0, 1], port, [10, 0, 0, 2], 53, ip_proto::UDP)
    }

    /// A table read at `read_ns` holding one flow per `(port, first, last)`.
    fn table(flows: &[(u16, u64, u64)], read_ns: u64) -> FlowTable {
        let mut table = FlowTable::new();
        let mut outcome = PollOutcome::default();
        table.begin_poll(read_ns);
        for &(port, first, last) in flows {
            let stats = FlowStats {
                packets: 1,
                bytes: 60,
                first_seen_ns: first,
                last_seen_ns: last,
                ifindex: VETH,
                ..FlowStats::default()
            };
            table.observe(&key(port), &stats, &mut outcome);
        }
        table.end_poll(&mut outcome);
        table
    }

    fn walked(view: &PollView) -> Vec<u16> {
        let mut ports: Vec<u16> = view.records().map(|(r, _)| r.key.src_port).collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn a_quiet_flow_is_walked_at_the_poll_its_attempt_deadline_passes() {
        // Each first seen at T, read then; the deadline falls at T + 5 s.
        let table = table(&[(1, T, T)], T);
        let deadline = T + UNANSWERED_AFTER_NS;
        let at =
            |since_ns, now_ns| walked(&PollView::new(&table, &[]).changed_since(since_ns, now_ns));
        assert_eq!(at(deadline - SEC, deadline), [1], "due at this poll");
        assert_eq!(
            at(deadline, deadline + SEC),
            [] as [u16; 0],
            "due at the previous one"
        );
        assert_eq!(
            at(deadline - 2 * SEC, deadline - SEC),
            [] as [u16; 0],
            "not due yet"
        );
    }

    #[test]
    fn a_packet_stamped_up_to_a_tick_before_the_previous_poll_is_walked() {
        let since = T + 10 * SEC;
        // Stamped 10 ms before the previous poll, 150 ms before it.
        let table = table(
            &[(1, T, since - 10_000_000), (2, T, since - 150_000_000)],
            T,
        );
        let view = PollView::new(&table, &[]).changed_since(since, since + SEC);
        assert_eq!(walked(&view), [1]);
    }

    #[test]
    fn a_held_flow_is_walked_at_the_poll_that_releases_it() {
        // Shorter than the attempt's deadline, which would walk it too.
        let hold = 3 * SEC;
        // First seen at T + 2 s: held while younger than the hold.
        let first = T + 2 * SEC;
        let table = table(&[(1, first, first)], first);
        let poll = |since_ns: u64, now_ns: u64, held: &[u32]| {
            let view = PollView::new(&table, &[])
                .holding(held.iter().copied().collect(), now_ns - hold)
                .changed_since(since_ns, now_ns);
            walked(&view)
        };
        let release = first + hold;
        assert_eq!(
            poll(release - SEC, release - SEC / 2, &[VETH]),
            [] as [u16; 0],
            "held"
        );
        assert_eq!(
            poll(release - SEC / 2, release + SEC / 2, &[VETH]),
            [1],
            "released"
        );
        assert_eq!(
            poll(release + SEC / 2, release + SEC, &[VETH]),
            [] as [u16; 0],
            "handed over"
        );
        // Nothing held, nothing to release.
        assert_eq!(
            poll(release - SEC / 2, release + SEC / 2, &[]),
            [] as [u16; 0]
        );
    }

    #[test]
    fn the_tcp_walk_is_the_whole_walk_of_tcp_and_the_held_walk_adds_the_held_flows() {
        const HELD: u32 = VETH + 1;
        let flow = |port: u16| FlowKey {
            protocol: if port.is_multiple_of(2) {
                ip_proto::TCP
            } else {
                ip_proto::UDP
            },
            ..key(port)
        };
        // Ports 1 to 14, TCP on even ones: 1 to 6 busy, 3 and 4 then end;
        // 7 to 10 quiet, the reverses of 9 and 10 new (so they are walked
        // for them); 11 to 14 young on a veth held: 11 busy, 12 and 13
        // quiet, the reverse of 13 new, 14 busy and then ends (an ended
        // flow is never held: it would not come back).
        let busy = |first_seen_ns, ifindex| FlowStats {
            packets: 1,
            first_seen_ns,
            last_seen_ns: T,
            ifindex,
            ..FlowStats::default()
        };
        let quiet = FlowStats {
            last_seen_ns: T - 10 * SEC,
            ..busy(T - 20 * SEC, VETH)
        };
        let mut flows: Vec<(FlowKey, FlowStats)> = (1..=10)
            .map(|port| {
                (
                    flow(port),
                    if port <= 6 {
                        busy(T - 20 * SEC, VETH)
                    } else {
                        quiet
                    },
                )
            })
            .collect();
        flows.extend([9, 10].map(|port| (flow(port).reversed(), busy(T - SEC, VETH))));
        let young_quiet = FlowStats {
            last_seen_ns: T - 3 * SEC,
            ..busy(T - 3 * SEC, HELD)
        };
        flows.extend([
            (flow(11), busy(T, HELD)),
            (flow(12), young_quiet),
            (flow(13), young_quiet),
            (flow(13).reversed(), busy(T - SEC, VETH)),
            (flow(14), busy(T, HELD)),
        ]);
        let mut table = FlowTable::new();
        let mut outcome = PollOutcome::default();
        table.begin_poll(T);
        for (key, stats) in &flows {
            table.observe(key, stats, &mut outcome);
        }
        table.end_poll(&mut outcome);
        let ended: Vec<_> = [3, 4, 14]
            .iter()
            .filter_map(|port| table.end(&flow(*port)))
            .collect();
        let walked = |records: &mut dyn Iterator<Item = (FlowRecord, bool, &Exported)>| {
            let mut walked: Vec<(u16, u16, bool)> = records
                .map(|(r, ended, _)| (r.key.src_port, r.key.dst_port, ended))
                .collect();
            walked.sort_unstable();
            walked
        };
        let view = || PollView::new(&table, &ended).holding([HELD].into(), T - 5 * SEC);
        let every = view();
        let changed = view().changed_since(T - SEC, T);
        let (live, over) = (false, true);
        let every_flow = vec![
            (1, 53, live),
            (2, 53, live),
            (3, 53, over),
            (4, 53, over),
            (5, 53, live),
            (6, 53, live),
            (7, 53, live),
            (8, 53, live),
            (9, 53, live),
            (10, 53, live),
            (14, 53, over),
            (53, 9, live),
            (53, 10, live),
            (53, 13, live),
        ];
        // 7 and 8 are quiet, and their reverses not new.
        let changed_flows = every_flow
            .iter()
            .filter(|(src, _, _)| !matches!(src, 7 | 8))
            .copied()
            .collect();
        let tcp = |walked: &Vec<(u16, u16, bool)>| -> Vec<(u16, u16, bool)> {
            let port = |(src, dst, _): &(u16, u16, bool)| if *src == 53 { *dst } else { *src };
            walked
                .iter()
                .filter(|flow| port(flow).is_multiple_of(2))
                .copied()
                .collect()
        };
        // The held flows with them, as held, where the walk picks them: 12
        // is quiet, and its reverse not new.
        let held = |all: &Vec<(u16, u16, bool)>, ports: &[u16]| -> Vec<(u16, u16, bool)> {
            let mut walked: Vec<_> = all
                .iter()
                .map(|(src, dst, _)| (*src, *dst, false))
                .collect();
            walked.extend(ports.iter().map(|port| (*port, 53, true)));
            walked.sort_unstable();
            walked
        };
        let every_held = held(&every_flow, &[11, 12, 13]);
        let changed_held = held(&changed_flows, &[11, 13]);
        for (view, all, held_too) in [
            (&every, every_flow, every_held),
            (&changed, changed_flows, changed_held),
        ] {
            assert_eq!(walked(&mut view.exported_records()), all);
            assert_eq!(walked(&mut view.exported_tcp_records()), tcp(&all));
            // Each with whether it is held, where `walked` has whether it
            // ended.
            let mut held_walk = view
                .exported_records_held_too()
                .map(|(record, exported, held)| (record, held, exported));
            assert_eq!(walked(&mut held_walk), held_too);
        }
    }

    #[test]
    fn a_quiet_flow_is_walked_when_its_reverse_shows_news() {
        let since = T + 10 * SEC;
        let sent = |first_seen_ns, last_seen_ns, ifindex| FlowStats {
            packets: 1,
            bytes: 60,
            first_seen_ns,
            last_seen_ns,
            ifindex,
            ..FlowStats::default()
        };
        let mut table = table(&[(1, T, T)], T);
        // The answer's first packet, read after the previous poll though
        // stamped before it: a copy can take in the counts of a packet
        // before its time.
        let mut outcome = PollOutcome::default();
        table.begin_poll(since + SEC);
        table.observe(&key(1), &sent(T, T, VETH), &mut outcome);
        let stale = since - SEC;
        table.observe(&key(1).reversed(), &sent(T, stale, VETH + 1), &mut outcome);
        table.end_poll(&mut outcome);
        let view = PollView::new(&table, &[]).changed_since(since, since + SEC);
        let keys: Vec<FlowKey> = view.records().map(|(r, _)| r.key).collect();
        assert_eq!(keys, [key(1)]);
        // At the next poll nothing is new.
        let later = PollView::new(&table, &[]).changed_since(since + SEC, since + 2 * SEC);
        assert_eq!(later.records().count(), 0);
    }
}
