//! TCP health per container pair: the handshake's round trip (SYN to
//! SYN-ACK as seen on the veths, the way NetObserv measures it), resets,
//! and retransmitted segments (from `tcp:tcp_retransmit_skb`, where the
//! kernel has it), in series labelled by the pair's names and bounded by
//! `--max-series` like the traffic series.

use std::{collections::HashMap, sync::Arc};

use monitor_common::{ip_proto, FlowKey};

use super::departures::Departures;
use crate::{
    book::{owned_and_borrowed, SeriesBook},
    datapath::RetransmitMap,
    docker::{end_name, Directory},
    flows::{outcome::UNANSWERED_AFTER_NS, ByFlow, Exported, Poll, PollConsumer, PollView},
    model::FlowRecord,
    sync::{published, Published},
};

/// Segments the kernel retransmitted on each flow, as of the last poll;
/// unknown where its tracepoint is not attached.
#[derive(Default)]
pub struct Retransmits(Option<HashMap<FlowKey, u64>>);

impl Retransmits {
    /// What the sender of `key` retransmitted.
    pub fn of_flow(&self, key: &FlowKey) -> Option<u64> {
        let totals = self.0.as_ref()?;
        Some(totals.get(key).copied().unwrap_or(0))
    }

    /// What both ends of the connection of `key` retransmitted.
    pub fn of_connection(&self, key: &FlowKey) -> Option<u64> {
        Some(self.of_flow(key)? + self.of_flow(&key.reversed())?)
    }

    /// Every flow the kernel retransmitted on, with its total.
    pub fn flows(&self) -> impl Iterator<Item = (&FlowKey, u64)> + '_ {
        self.0.iter().flatten().map(|(key, total)| (key, *total))
    }
}

/// The totals by flow, or `None` where the tracepoint is not attached.
impl From<Option<HashMap<FlowKey, u64>>> for Retransmits {
    fn from(totals: Option<HashMap<FlowKey, u64>>) -> Self {
        Retransmits(totals)
    }
}

/// Upper bounds of `crossmon_tcp_handshake_rtt_seconds`: from a bridge
/// between two containers (tens of microseconds) to a slow remote peer.
pub const RTT_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

owned_and_borrowed! {
    /// The client and the server for the round trip, the sender and the
    /// receiver for resets and retransmissions, by [`end_name`].
    pub struct Pair;
    /// [`Pair`] borrowed from the ends' names: every connection's round
    /// trip finds its pair's series without copying them.
    struct PairRef {
        source, destination;
    }
}

#[derive(Clone, Default)]
pub struct RttHistogram {
    /// Per bucket of [`RTT_BUCKETS`], not cumulative.
    pub buckets: [u64; RTT_BUCKETS.len()],
    pub sum_seconds: f64,
    pub count: u64,
}

impl RttHistogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(bucket) = RTT_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket] += 1;
        }
        self.sum_seconds += seconds;
        self.count += 1;
    }

    /// Cumulative counts by upper bound, as the exposition writes them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        RTT_BUCKETS
            .iter()
            .zip(self.buckets)
            .map(|(bound, n)| {
                total += n;
                (*bound, total)
            })
            .collect()
    }
}

pub struct TcpHealth {
    rtt: SeriesBook<Pair, RttHistogram>,
    resets: SeriesBook<Pair, u64>,
    retransmits: SeriesBook<Pair, u64>,
    /// What `retransmits` holds of each flow the kernel retransmitted on
    /// (the handshake and resets are in the flows' table entries): a map
    /// of its own, as few flows have any.
    retransmits_counted: ByFlow<u64>,
    /// The kernel's retransmissions by flow, where its tracepoint is
    /// attached.
    kernel: Option<RetransmitMap>,
    /// The kernel's retransmissions of the last poll, for the API and the
    /// flow log.
    by_flow: Published<Retransmits>,
    departures: Departures,
}

/// The handshake's round trip of a client flow, in nanoseconds: from its
/// first SYN to the first SYN-ACK of its answer flow, both as first seen
/// on a veth. A client whose SYN went unanswered a while has it counted
/// from the first SYN (retransmissions included, as a user waits).
pub fn handshake_rtt_ns(flow: &FlowRecord, reverse: Option<&FlowRecord>) -> Option<u64> {
    let reverse = reverse?;
    if !opens_handshake(flow) || reverse.stats.syn_ack == 0 {
        return None;
    }
    reverse
        .stats
        .first_seen_ns
        .checked_sub(flow.stats.first_seen_ns)
}

/// Whether `flow` is a TCP client's (it sent a SYN): only such a flow has
/// a handshake to time, so only its reverse is worth a lookup.
fn opens_handshake(flow: &FlowRecord) -> bool {
    flow.key.protocol == ip_proto::TCP && flow.stats.syn != 0
}

impl TcpHealth {
    /// `max_series` bounds each family: a histogram's pair costs a series
    /// per bucket and three more.
    /// `grace_ns`: how long a departed container's series stay.
    pub fn new(max_series: usize, grace_ns: u64, kernel: Option<RetransmitMap>) -> Self {
        let other = || Pair {
            source: crate::book::OTHER.to_owned(),
            destination: crate::book::OTHER.to_owned(),
        };
        Self {
            rtt: SeriesBook::new(max_series / (RTT_BUCKETS.len() + 3), other()),
            resets: SeriesBook::new(max_series, other()),
            retransmits: SeriesBook::new(max_series, other()),
            retransmits_counted: ByFlow::default(),
            kernel,
            by_flow: published(Retransmits::default()),
            departures: Departures::new(grace_ns),
        }
    }

    /// The retransmissions by flow, swapped after each poll.
    pub fn by_flow(&self) -> Published<Retransmits> {
        self.by_flow.clone()
    }

    /// Adds what TCP flows showed since the last poll: the flows the poll
    /// hands over, and any other the kernel retransmitted on since. What
    /// the series hold of each flow's handshake and resets is kept in its
    /// table entry ([`Exported`]).
    pub fn update(
        &mut self,
        flows: &PollView,
        directory: &Directory,
        retransmits: &Retransmits,
        now_ns: u64,
    ) {
        for (record, _, exported) in flows.exported_tcp_records() {
            self.flow(&record, exported, flows, directory, retransmits, now_ns);
        }
        // A retransmission lost before the veth (a path dropped inside the
        // container) grows the kernel's count while the flow counts
        // nothing, so the poll may not hand the flow over. A held flow
        // waits for its release, when it is walked and counted under its
        // container's name.
        for (key, total) in retransmits.flows() {
            let counted = self.retransmits_counted.get(key).copied().unwrap_or(0);
            if counted >= total {
                continue;
            }
            if let Some((record, exported)) = flows.find_exported(key) {
                self.flow(&record, exported, flows, directory, retransmits, now_ns);
            }
        }
        self.retransmits_counted
            .retain(|key, _| !flows.has_ended(key));
    }

    /// The segments the kernel retransmitted on `key` since the last take,
    /// of its `total`.
    fn take_new_retransmits(&mut self, key: &FlowKey, total: u64) -> u64 {
        if total == 0 {
            return 0;
        }
        let counted = self.retransmits_counted.entry(*key).or_default();
        if total <= *counted {
            return 0;
        }
        let new = total - *counted;
        *counted = total;
        new
    }

    /// What one flow showed since it was last looked at.
    fn flow(
        &mut self,
        record: &FlowRecord,
        exported: &Exported,
        flows: &PollView,
        directory: &Directory,
        retransmits: &Retransmits,
        now_ns: u64,
    ) {
        if record.key.protocol != ip_proto::TCP {
            return;
        }
        let resets = exported.take_new_resets(record.stats.rst);
        let retransmitted =
            self.take_new_retransmits(&record.key, retransmits.of_flow(&record.key).unwrap_or(0));
        let rtt = if exported.handshake_done() || !opens_handshake(record) {
            None
        } else {
            handshake_rtt_ns(record, flows.find(&record.key.reversed()).as_ref())
        };
        // A handshake is timed while its attempt is open: a SYN-ACK after
        // the deadline finds the connection counted unanswered, and is no
        // round trip. The poller's walk relies on it (`PollView::changed_since`).
        let timed = rtt.is_some()
            || now_ns.saturating_sub(record.stats.first_seen_ns) >= UNANSWERED_AFTER_NS;
        if timed {
            exported.finish_handshake();
        }
        if resets == 0 && retransmitted == 0 && rtt.is_none() {
            return;
        }
        let (src, dst) = directory.ends(&record.key, &record.stats);
        let pair = PairRef {
            source: end_name(&src),
            destination: end_name(&dst),
        };
        if resets != 0 {
            *self.resets.value(&pair, now_ns) += u64::from(resets);
        }
        if retransmitted != 0 {
            *self.retransmits.value(&pair, now_ns) += retransmitted;
        }
        if let Some(ns) = rtt {
            self.rtt.value(&pair, now_ns).observe(ns as f64 / 1e9);
        }
    }

    pub fn rtt(&self) -> impl Iterator<Item = (&Pair, &RttHistogram)> {
        self.rtt.iter()
    }

    pub fn resets(&self) -> impl Iterator<Item = (&Pair, &u64)> {
        self.resets.iter()
    }

    pub fn retransmits(&self) -> impl Iterator<Item = (&Pair, &u64)> {
        self.retransmits.iter()
    }
}

impl PollConsumer for TcpHealth {
    fn on_poll(&mut self, poll: &Poll<'_>) {
        let retransmits = Retransmits::from(self.kernel.as_ref().map(RetransmitMap::totals));
        self.update(&poll.flows, poll.directory, &retransmits, poll.now_ns);
        self.by_flow.store(Arc::new(retransmits));
        self.departures.follow(poll.inventory, poll.now_ns);
        if let Some(gone) = self.departures.take_gone(poll.now_ns) {
            let pair_gone = |pair: &Pair| gone.any(&[&pair.source, &pair.destination]);
            self.rtt.sweep(gone.cutoff_ns, pair_gone);
            self.resets.sweep(gone.cutoff_ns, pair_gone);
            self.retransmits.sweep(gone.cutoff_ns, pair_gone);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::flows::{FlowTable, PollOutcome};
    use monitor_common::FlowStats;

    fn flow(key: FlowKey, first_seen_ns: u64, syn: u32, syn_ack: u32) -> FlowRecord {
        FlowRecord {
            key,
            stats: FlowStats {
                first_seen_ns,
                syn,
                syn_ack,
                packets: 1,
                ..FlowStats::default()
            },
        }
    }

    #[test]
    fn retransmits_are_unknown_without_the_tracepoint_and_add_both_ends_of_a_connection() {
        let key = FlowKey::ipv4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80, ip_proto::TCP);
        assert_eq!(Retransmits::default().of_flow(&key), None);
        assert_eq!(Retransmits::default().of_connection(&key), None);
        let known = Retransmits(Some(HashMap::from([(key, 2), (key.reversed(), 3)])));
        assert_eq!(known.of_flow(&key), Some(2));
        assert_eq!(known.of_connection(&key), Some(5));
        let other = FlowKey::ipv4([10, 0, 0, 1], 40001, [10, 0, 0, 2], 80, ip_proto::TCP);
        assert_eq!(known.of_flow(&other), Some(0));
    }

    #[test]
    fn retransmissions_outside_the_walk_are_caught_up_once_and_never_while_held() {
        const SEC: u64 = 1_000_000_000;
        const VETH: u32 = 7;
        let t = 1_000 * SEC;
        let key = FlowKey::ipv4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80, ip_proto::TCP);
        let mut table = FlowTable::new();
        let mut outcome = PollOutcome::default();
        table.begin_poll(t);
        let stats = FlowStats {
            ifindex: VETH,
            last_seen_ns: t,
            ..flow(key, t, 1, 0).stats
        };
        table.observe(&key, &stats, &mut outcome);
        table.end_poll(&mut outcome);
        let directory = Directory::default();
        let mut health = TcpHealth::new(1_000, 600 * SEC, None);
        let mut poll = |view: PollView, kernel_total: u64, now_ns: u64| {
            let kernel = Retransmits(Some(HashMap::from([(key, kernel_total)])));
            health.update(&view, &directory, &kernel, now_ns);
            health.retransmits().map(|(_, n)| *n).sum::<u64>()
        };
        // First seen at t: young, so held at its unnamed veth.
        let held = PollView::new(&table, &[]).holding(HashSet::from([VETH]), t);
        assert_eq!(poll(held, 1, t), 0, "held: counted at its release");
        assert_eq!(poll(PollView::new(&table, &[]), 1, t + SEC), 1, "released");
        let quiet = |since_ns, now_ns| PollView::new(&table, &[]).changed_since(since_ns, now_ns);
        assert_eq!(
            poll(quiet(t + SEC, t + 2 * SEC), 3, t + 2 * SEC),
            3,
            "caught up though the walk passed it over"
        );
        assert_eq!(poll(quiet(t + 2 * SEC, t + 3 * SEC), 3, t + 3 * SEC), 3);
    }

    #[test]
    fn the_round_trip_is_from_syn_to_syn_ack() {
        let key = FlowKey::ipv4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80, ip_proto::TCP);
        let client = flow(key, 1_000, 1, 0);
        let server = flow(key.reversed(), 51_000, 0, 1);
        assert_eq!(handshake_rtt_ns(&client, Some(&server)), Some(50_000));
        assert_eq!(
            handshake_rtt_ns(&server, Some(&client)),
            None,
            "the server's side is no client"
        );
        assert_eq!(handshake_rtt_ns(&client, None), None);
        let mut histogram = RttHistogram::default();
        histogram.observe(0.0003);
        histogram.observe(2.0);
        assert_eq!(histogram.count, 2);
        assert_eq!(histogram.cumulative()[2], (0.0005, 1));
        assert_eq!(
            histogram.cumulative()[12],
            (1.0, 1),
            "beyond the last bound: only +Inf"
        );
    }
}
