//! Traffic counters: each poll adds what every flow counted since the
//! previous one to its series, so series only grow, and their sum is the
//! kernel's count whatever happens to flows (eviction, expiry, relabelling).

use std::sync::{
    atomic::{AtomicU32, Ordering::Relaxed},
    Arc,
};

use monitor_common::{ip_proto, FlowKey};

use super::{
    departures::Departures,
    labels::{ConnectionLabels, ConnectionLabelsRef, FlowLabels, FlowLabelsRef},
    reused::{Results, ReusedPorts},
    served::ServedPorts,
};
use crate::{
    book::SeriesBook,
    docker::{Container, Directory, DirectoryId, Inventory},
    flows::{
        outcome::{self, Outcome},
        Exported, Poll, PollConsumer, PollView,
    },
    model::FlowRecord,
};

#[derive(Clone, Copy, Debug)]
pub struct MetricsConfig {
    /// Series per traffic metric family; beyond, traffic is counted in the
    /// `other` series.
    pub max_series: usize,
    /// How long series of a departed container stay.
    pub grace_ns: u64,
}

impl MetricsConfig {
    /// `--max-series`.
    pub const DEFAULT_MAX_SERIES: u32 = 10_000;
    /// `--series-grace`.
    pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(10 * 60);
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_series: Self::DEFAULT_MAX_SERIES as usize,
            grace_ns: u64::try_from(Self::DEFAULT_GRACE.as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

pub struct TrafficSeries {
    flows: SeriesBook<FlowLabels, FlowCounts>,
    connections: SeriesBook<ConnectionLabels, u64>,
    /// The connections of flows that held more than one.
    reused: ReusedPorts,
    served: ServedPorts,
    /// Containers that left, kept for the grace period so their info
    /// series can still be joined.
    departures: Departures,
    /// A flow's labels depend on it alone (its key, the veth and direction
    /// of its first incarnation), on the directory and on the served
    /// ports: the flow notes where its series is with the epoch it was
    /// found in ([`Exported::series_slot`]), which lasts while none of
    /// these change nor the book moves its series.
    labelling: Labelling,
}

/// What a flow's labels were made from, as of [`Labelling::epoch`].
#[derive(Default)]
struct Labelling {
    /// 0 before the first poll: no flow's note is of it.
    epoch: u32,
    inputs: Option<LabelInputs>,
}

/// Epochs are numbered across every [`TrafficSeries`] of the process, so
/// that one never takes a note another made in a table they would share.
static NEXT_EPOCH: AtomicU32 = AtomicU32::new(1);

#[derive(Clone, Copy, PartialEq, Eq)]
struct LabelInputs {
    directory: DirectoryId,
    served_changes: u64,
    book_removals: u64,
}

impl Labelling {
    /// The epoch in which labels are made from `inputs`: a new one if they
    /// changed.
    fn epoch_for(&mut self, inputs: LabelInputs) -> u32 {
        if self.inputs != Some(inputs) {
            self.inputs = Some(inputs);
            // 0 is no epoch; after 2^32 epochs, 1 again: a flow unwalked
            // for that long has left the table.
            self.epoch = NEXT_EPOCH.fetch_add(1, Relaxed).max(1);
        }
        self.epoch
    }
}

/// What one flow series counted.
#[derive(Clone, Copy, Default)]
pub struct FlowCounts {
    pub packets: u64,
    pub bytes: u64,
}

/// Whether the flow has traffic its series do not hold yet, or an
/// undecided connection.
fn needs_update(record: &FlowRecord, exported: &Exported) -> bool {
    exported.has_new_traffic(&record.stats)
        || (record.key.protocol == ip_proto::TCP
            && outcome::is_attempt(record, None)
            && (exported.counted_connection().is_none() || ReusedPorts::counts(record)))
}

impl TrafficSeries {
    pub fn new(config: MetricsConfig) -> Self {
        Self {
            flows: SeriesBook::new(config.max_series, FlowLabels::overflow()),
            connections: SeriesBook::new(config.max_series, ConnectionLabels::overflow()),
            reused: ReusedPorts::default(),
            served: ServedPorts::new(config.max_series.saturating_mul(4), config.grace_ns),
            departures: Departures::new(config.grace_ns),
            labelling: Labelling::default(),
        }
    }

    /// Adds what flows counted since the last update, including the final
    /// totals of the flows that ended at this poll. What each flow has
    /// added so far is kept in its table entry ([`Exported`]).
    pub fn update(
        &mut self,
        flows: &PollView,
        directory: &Directory,
        inventory: Option<&Inventory>,
        now_ns: u64,
    ) {
        let find = |key: &FlowKey| flows.find(key);
        // Learn every answer of this round before labelling any flow, so
        // both directions of a new connection get the same port label.
        // Two walks rather than a list of the flows' records: at 100k busy
        // flows that list was megabytes at every poll. Learning changes
        // nothing `needs_update` reads, so the second pass picks the same
        // flows as this one, held flows aside.
        for (record, exported, held) in flows.exported_records_held_too() {
            if !needs_update(&record, exported) {
                continue;
            }
            // A held flow teaches too, as the later of a pair must look at
            // its first poll (see `ServedPorts::lookup_due`), but only then
            // while it is held: its traffic is not taken until its release,
            // so a walk of every flow hands it over at every poll and one
            // of what changed does not, and the two must agree. Hence it
            // is noted even where the set refused it; the refusal makes it
            // due again once there is room.
            if held && exported.served_lookup_noted() {
                continue;
            }
            let due = self.served.lookup_due(exported, now_ns);
            let mut looked = false;
            let reverse = || {
                looked = due;
                due.then(|| find(&record.key.reversed())).flatten()
            };
            let learnt = self.served.learn(&record, reverse, now_ns);
            if held || (learnt && looked) {
                exported.note_served_lookup(now_ns);
            }
        }
        // Learning is over for this poll: the served ports stay as they
        // are until the sweep, after the walk.
        let epoch = self.labelling.epoch_for(LabelInputs {
            directory: directory.id(),
            served_changes: self.served.changes(),
            book_removals: self.flows.removals(),
        });
        for (record, ended, exported) in flows.exported_records() {
            if !needs_update(&record, exported) {
                continue;
            }
            let results = self.connection_results(&record, &find, exported, ended, now_ns);
            let (packets, bytes) = exported.take_new_traffic(&record.stats);
            let traffic = packets != 0 || bytes != 0;
            if !traffic && results.is_empty() {
                continue;
            }
            let noted = exported
                .series_slot(epoch)
                .filter(|_| results.is_empty())
                .and_then(|slot| self.flows.value_at(slot, now_ns));
            let counts = match noted {
                Some(counts) => Some(counts),
                // A flow new to this epoch, or with a connection to count
                // by its labels: they are made.
                None => {
                    let ends = directory.ends(&record.key, &record.stats);
                    let mut port_text = itoa::Buffer::new();
                    let labels = FlowLabelsRef::of(&record, &ends, &self.served, &mut port_text);
                    for (result, n) in results.counts() {
                        *self
                            .connections
                            .value(&ConnectionLabelsRef::of(&labels, result.name()), now_ns) +=
                            u64::from(n);
                    }
                    traffic.then(|| {
                        let (slot, counts) = self.flows.slot_and_value(&labels, now_ns);
                        exported.note_series_slot(epoch, slot);
                        counts
                    })
                }
            };
            if let Some(counts) = counts {
                counts.packets = counts.packets.wrapping_add(packets);
                counts.bytes = counts.bytes.wrapping_add(bytes);
            }
        }
        self.departures.follow(inventory, now_ns);
        self.sweep(now_ns);
    }

    /// The connection attempts of `record` to count now. Only a TCP
    /// attempt has any, and only then is its reverse looked up: an
    /// answer's flow, or one first seen past its SYN, has none. The first
    /// connection's result is noted in `exported`.
    fn connection_results(
        &mut self,
        record: &FlowRecord,
        find: &impl Fn(&FlowKey) -> Option<FlowRecord>,
        exported: &Exported,
        ended: bool,
        now_ns: u64,
    ) -> Results {
        if record.key.protocol != ip_proto::TCP || !outcome::is_attempt(record, None) {
            return Results::default();
        }
        let first = exported.counted_connection();
        // Its connections' count only grows: once here, always here.
        if ReusedPorts::counts(record) {
            let reverse = find(&record.key.reversed());
            return self.reused.take(record, reverse, first, ended);
        }
        if first.is_some() {
            return Results::default();
        }
        let reverse = find(&record.key.reversed());
        match connection_result(record, reverse.as_ref(), ended, now_ns) {
            Some(result) => {
                exported.count_connection(result);
                Results::one(result)
            }
            None => Results::default(),
        }
    }

    /// Removes the series of containers departed longer than the grace
    /// period, and served ports no flow confirmed for as long.
    fn sweep(&mut self, now_ns: u64) {
        self.served.expire(now_ns);
        let Some(gone) = self.departures.take_gone(now_ns) else {
            return;
        };
        self.flows
            .sweep(gone.cutoff_ns, |l| gone.any(&[&l.source, &l.destination]));
        self.connections
            .sweep(gone.cutoff_ns, |l| gone.any(&[&l.source, &l.destination]));
    }

    /// Running containers, and departed ones within their grace period.
    pub fn known_containers(&self) -> impl Iterator<Item = &Arc<Container>> {
        self.departures.known_containers()
    }

    /// Series of each traffic family, for the agent's own metrics.
    pub fn series_counts(&self) -> [(&'static str, usize); 2] {
        [
            ("flow", self.flows.len()),
            ("connections", self.connections.len()),
        ]
    }

    /// `crossmon_flow_{packets,bytes}_total`: counts by labels.
    pub fn flow_series(&self) -> impl Iterator<Item = (&FlowLabels, &FlowCounts)> {
        self.flows.iter()
    }

    /// `crossmon_connections_total`: attempts by labels and result.
    pub fn connection_series(&self) -> impl Iterator<Item = (&ConnectionLabels, &u64)> {
        self.connections.iter()
    }

    /// Label combinations refused by the cap, per family.
    pub fn dropped(&self) -> [(&'static str, u64); 2] {
        [
            ("flow", self.flows.dropped()),
            ("connections", self.connections.dropped()),
        ]
    }
}

impl PollConsumer for TrafficSeries {
    fn on_poll(&mut self, poll: &Poll<'_>) {
        self.update(&poll.flows, poll.directory, poll.inventory, poll.now_ns);
    }
}

/// The result of a TCP connection attempt, once known.
fn connection_result(
    flow: &FlowRecord,
    reverse: Option<&FlowRecord>,
    ended: bool,
    now_ns: u64,
) -> Option<Outcome> {
    if flow.key.protocol != ip_proto::TCP || !outcome::is_attempt(flow, reverse) {
        return None;
    }
    outcome::outcome(flow, reverse, ended, now_ns)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use monitor_common::{Direction, FlowStats};

    use super::*;
    use crate::detect::testkit::{front, Lab};
    use crate::flows::{FlowTable, PollOutcome};
    use crate::series::labels::{pairs, FLOW_LABEL_NAMES};

    const SECOND: u64 = 1_000_000_000;

    fn key(src: u8, sport: u16, dst: u8, dport: u16) -> FlowKey {
        FlowKey::ipv4(
            [10, 0, 0, src],
            sport,
            [10, 0, 0, dst],
            dport,
            ip_proto::TCP,
        )
    }

    fn stats(packets: u64, syn: u32, syn_ack: u32, rst: u32) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 60,
            first_seen_ns: SECOND,
            last_seen_ns: SECOND,
            syn,
            syn_ack,
            rst,
            direction: Direction::FromContainer as u8,
            ..FlowStats::default()
        }
    }

    fn table(flows: &[(FlowKey, FlowStats)]) -> FlowTable {
        let mut table = FlowTable::new();
        poll(&mut table, flows);
        table
    }

    fn poll(table: &mut FlowTable, flows: &[(FlowKey, FlowStats)]) {
        let mut outcome = PollOutcome::default();
        table.begin_poll(0);
        for (key, stats) in flows {
            table.observe(key, stats, &mut outcome);
        }
        table.end_poll(&mut outcome);
    }

    fn metrics(max_series: usize) -> TrafficSeries {
        TrafficSeries::new(MetricsConfig {
            max_series,
            grace_ns: 10 * SECOND,
        })
    }

    fn matches(names: [&str; 5], values: [&str; 5], matching: &[(&str, &str)]) -> bool {
        matching
            .iter()
            .all(|(label, value)| pairs(names, values).contains(&(*label, *value)))
    }

    fn packets(traffic: &TrafficSeries, matching: &[(&str, &str)]) -> u64 {
        traffic
            .flows
            .iter()
            .filter(|(labels, _)| matches(FLOW_LABEL_NAMES, labels.values(), matching))
            .map(|(_, counts)| counts.packets)
            .sum()
    }

    fn connections(traffic: &TrafficSeries, result: &str) -> u64 {
        traffic
            .connections
            .iter()
            .filter(|(labels, _)| labels.result == result)
            .map(|(_, n)| n)
            .sum()
    }

    #[test]
    fn connections_back_on_a_kept_flows_ports_are_each_counted() {
        let mut traffic = metrics(100);
        let directory = Directory::default();
        let (client, server) = (key(1, 40000, 2, 80), key(2, 80, 1, 40000));
        let opened = |mut stats: FlowStats, connections, handshakes| {
            stats.connections = connections;
            stats.handshakes = handshakes;
            stats
        };
        let mut flows = table(&[
            (client, opened(stats(3, 1, 0, 0), 1, 1)),
            (server, stats(2, 0, 1, 0)),
        ]);
        traffic.update(&PollView::new(&flows, &[]), &directory, None, 2 * SECOND);
        assert_eq!(connections(&traffic, "established"), 1);
        // Two more connections on the same ports by the next poll, the
        // latest still waiting for its SYN-ACK.
        poll(
            &mut flows,
            &[
                (client, opened(stats(8, 3, 0, 1), 3, 2)),
                (server, stats(5, 0, 2, 0)),
            ],
        );
        traffic.update(&PollView::new(&flows, &[]), &directory, None, 3 * SECOND);
        assert_eq!(connections(&traffic, "established"), 2);
        // It never comes; the client gives up and the flows end.
        let ended: Vec<_> = [client, server]
            .iter()
            .filter_map(|key| flows.end(key))
            .collect();
        traffic.update(&PollView::new(&flows, &ended), &directory, None, 4 * SECOND);
        assert_eq!(
            ["established", "refused", "unanswered"].map(|r| connections(&traffic, r)),
            [2, 0, 1]
        );
        assert_eq!(packets(&traffic, &[]), 13);
    }

    #[test]
    fn connection_results_and_served_ports_come_from_the_answers() {
        let mut traffic = metrics(100);
        let directory = Directory::default();
        let flows = table(&[
            // Established: SYN, SYN-ACK back.
            (key(1, 40000, 2, 80), stats(3, 1, 0, 0)),
            (key(2, 80, 1, 40000), stats(2, 0, 1, 0)),
            // Refused: SYN, RST back.
            (key(1, 40001, 2, 81), stats(1, 1, 0, 0)),
            (key(2, 81, 1, 40001), stats(1, 0, 0, 1)),
            // Not answered yet.
            (key(1, 40002, 2, 82), stats(1, 1, 0, 0)),
        ]);
        traffic.update(&PollView::new(&flows, &[]), &directory, None, 2 * SECOND);
        assert_eq!(connections(&traffic, "established"), 1);
        assert_eq!(connections(&traffic, "refused"), 1);
        assert_eq!(connections(&traffic, "unanswered"), 0);
        assert_eq!(to_port(&traffic, "80"), 3);
        assert_eq!(to_port(&traffic, "ephemeral"), 2 + 1 + 1 + 1);

        // Five seconds without an answer: unanswered, once.
        for now in [7, 8] {
            traffic.update(&PollView::new(&flows, &[]), &directory, None, now * SECOND);
        }
        assert_eq!(connections(&traffic, "unanswered"), 1);
    }

    /// A UDP query from 10.0.0.1 to 10.0.0.2:53, and its reply's flow.
    fn udp_exchange() -> (FlowKey, FlowKey) {
        let udp = |key: FlowKey| FlowKey {
            protocol: ip_proto::UDP,
            ..key
        };
        (udp(key(1, 50000, 2, 53)), udp(key(2, 53, 1, 50000)))
    }

    /// `packets` of a flow first seen at `first_s` and last at `last_s`.
    fn seen(packets: u64, first_s: u64, last_s: u64) -> FlowStats {
        FlowStats {
            first_seen_ns: first_s * SECOND,
            last_seen_ns: last_s * SECOND,
            ..stats(packets, 0, 0, 0)
        }
    }

    fn to_port(traffic: &TrafficSeries, port: &str) -> u64 {
        packets(traffic, &[("destination_port", port)])
    }

    /// Whether the traffic series hold 10.0.0.2:53 as served over UDP.
    fn udp_exchange_served(traffic: &TrafficSeries) -> bool {
        traffic
            .served
            .contains([10, 0, 0, 2].into(), 53, ip_proto::UDP)
    }

    #[test]
    fn a_udp_service_is_learnt_from_its_first_reply_and_stays_while_asked() {
        let mut traffic = metrics(100);
        let directory = Directory::default();
        let (query, reply) = udp_exchange();
        let mut flows = table(&[(query, seen(1, 1, 1))]);
        traffic.update(&PollView::new(&flows, &[]), &directory, None, SECOND);
        assert_eq!(to_port(&traffic, "ephemeral"), 1, "nothing answered yet");

        // The reply comes a second later: both directions of the exchange
        // are labelled by the port it showed served, at once.
        poll(
            &mut flows,
            &[(query, seen(2, 1, 2)), (reply, seen(1, 2, 2))],
        );
        traffic.update(&PollView::new(&flows, &[]), &directory, None, 2 * SECOND);
        assert_eq!(to_port(&traffic, "53"), 1);
        assert_eq!(to_port(&traffic, "ephemeral"), 1 + 1);

        // Then only the queries go on, three times the grace period: the
        // reply on record keeps confirming the service.
        for second in 3..=32 {
            let sent = second - 1;
            poll(
                &mut flows,
                &[(query, seen(sent, 1, second)), (reply, seen(1, 2, 2))],
            );
            traffic.update(
                &PollView::new(&flows, &[]),
                &directory,
                None,
                second * SECOND,
            );
        }
        assert_eq!(to_port(&traffic, "53"), 30, "every query after the first");
    }

    #[test]
    fn a_query_learns_from_a_reply_its_container_has_not_been_named_for_yet() {
        const UNNAMED_VETH: u32 = 9;
        let mut traffic = metrics(100);
        let directory = Directory::default();
        let (query, reply) = udp_exchange();
        let at = |packets: u64, first_s: u64, ifindex: u32| FlowStats {
            first_seen_ns: first_s * SECOND,
            last_seen_ns: 2 * SECOND,
            ifindex,
            ..stats(packets, 0, 0, 0)
        };
        let mut flows = table(&[(query, at(1, 1, 0))]);
        traffic.update(&PollView::new(&flows, &[]), &directory, None, SECOND);
        // The query found no reverse, and does not look again for a
        // quarter of the grace: the reply, new, looks for the query
        // itself, though it is held and counted nowhere yet.
        poll(
            &mut flows,
            &[(query, at(2, 1, 0)), (reply, at(1, 2, UNNAMED_VETH))],
        );
        let (_, query_exported) = flows.exported_record(&query).expect("the query is live");
        assert!(!traffic.served.lookup_due(query_exported, 2 * SECOND));
        let view = PollView::new(&flows, &[])
            .holding([UNNAMED_VETH].into(), SECOND)
            .changed_since(SECOND, 2 * SECOND);
        traffic.update(&view, &directory, None, 2 * SECOND);
        assert_eq!(packets(&traffic, &[("destination_port", "53")]), 1);
        assert_eq!(packets(&traffic, &[("destination_port", "ephemeral")]), 1);
    }

    #[test]
    fn a_pair_the_full_set_refused_is_learnt_once_there_is_room() {
        // Room for four served ports (four times `max_series`), taken at
        // 1 s by four TCP answers that say nothing more.
        let mut traffic = TrafficSeries::new(MetricsConfig {
            max_series: 1,
            grace_ns: 40 * SECOND,
        });
        let directory = Directory::default();
        let answers = (81..=84).map(|port| (key(3, port, 1, 40000 + port), stats(1, 0, 1, 0)));
        let (query, reply) = udp_exchange();
        let at = |packets: u64, first_s: u64, last_s: u64| FlowStats {
            first_seen_ns: first_s * SECOND,
            last_seen_ns: last_s * SECOND,
            ..stats(packets, 0, 0, 0)
        };
        let mut flows = table(&answers.clone().collect::<Vec<_>>());
        traffic.update(&PollView::new(&flows, &[]), &directory, None, SECOND);
        // The query at 39 s finds no reverse; its single reply at 40 s
        // finds the query, and the full set refuses the pair. The answers
        // go at the end of 42 s, a grace after they were last confirmed.
        // Only the query has traffic after that; it looks again at once,
        // where its own period would have it wait until 49 s.
        for second in 39..=43 {
            let mut read: Vec<_> = answers.clone().collect();
            read.push((query, at(second - 38, 39, second)));
            if second >= 40 {
                read.push((reply, at(1, 40, 40)));
            }
            poll(&mut flows, &read);
            traffic.update(
                &PollView::new(&flows, &[]),
                &directory,
                None,
                second * SECOND,
            );
            assert_eq!(udp_exchange_served(&traffic), second == 43, "at {second} s");
        }
    }

    #[test]
    fn a_held_flow_teaches_alike_whether_every_flow_or_what_changed_is_walked() {
        const UNNAMED_VETH: u32 = 9;
        let (query, reply) = udp_exchange();
        let at = |first_s: u64, ifindex: u32| FlowStats {
            first_seen_ns: first_s * SECOND,
            last_seen_ns: first_s * SECOND,
            ifindex,
            ..stats(1, 0, 0, 0)
        };
        // One query at 1 s, one reply at 2 s on a veth not named for the
        // hold, then nothing: a walk of every flow walks the held reply at
        // every poll, a walk of what changed at 2 s and at its release.
        // Each walk with a table of its own: the series keep their state
        // of a flow in its entry.
        for hold_s in 3..=8 {
            let mut walks = [false, true].map(|changed| (changed, table(&[]), metrics(100)));
            for second in 1..=25_u64 {
                let now = second * SECOND;
                let mut read = vec![(query, at(1, 0))];
                if second >= 2 {
                    read.push((reply, at(2, UNNAMED_VETH)));
                }
                for (changed, flows, traffic) in &mut walks {
                    poll(flows, &read);
                    let view = PollView::new(flows, &[]).holding(
                        [UNNAMED_VETH].into(),
                        second.saturating_sub(hold_s) * SECOND,
                    );
                    let view = if *changed {
                        view.changed_since(now - SECOND, now)
                    } else {
                        view
                    };
                    traffic.update(&view, &Directory::default(), None, now);
                }
                let [(_, _, every), (_, _, changed)] = &walks;
                assert_eq!(
                    udp_exchange_served(every),
                    udp_exchange_served(changed),
                    "held {hold_s} s, at {second} s"
                );
                // Taught at 2 s by the held reply, confirmed at its
                // release, forgotten a grace (10 s) after.
                let released = 3 + hold_s;
                assert_eq!(
                    udp_exchange_served(every),
                    (2..=released + 10).contains(&second),
                    "held {hold_s} s, at {second} s"
                );
            }
        }
    }

    #[test]
    fn a_flow_is_labelled_ephemeral_again_once_its_served_port_is_forgotten() {
        let mut traffic = metrics(100);
        let directory = Directory::default();
        let (query, reply) = udp_exchange();
        // A query a second from 1 s, answered once at 2 s; the reply's
        // flow ends at 3 s.
        let mut flows = table(&[(query, seen(1, 1, 1))]);
        traffic.update(&PollView::new(&flows, &[]), &directory, None, SECOND);
        poll(
            &mut flows,
            &[(query, seen(2, 1, 2)), (reply, seen(1, 2, 2))],
        );
        traffic.update(&PollView::new(&flows, &[]), &directory, None, 2 * SECOND);
        for second in 3..=20 {
            poll(&mut flows, &[(query, seen(second, 1, second))]);
            let ended: Vec<_> = flows.end(&reply).into_iter().collect();
            traffic.update(
                &PollView::new(&flows, &ended),
                &directory,
                None,
                second * SECOND,
            );
        }
        // Last confirmed at 3 s, when the query found the reply ending;
        // forgotten once the 10 s grace is over, at the end of 14 s.
        assert!(!udp_exchange_served(&traffic));
        assert_eq!(to_port(&traffic, "53"), 13, "the queries of 2 to 14 s");
        assert_eq!(
            to_port(&traffic, "ephemeral"),
            1 + 1 + 6,
            "the first query, the reply, and the queries of 15 to 20 s"
        );
    }

    /// A UDP flow from `src` to `dst` (of [`Lab`]), counted at `src`'s
    /// veth, with `packets` by the end of second `last_s`.
    fn sent(src: u8, dst: u8, packets: u64, last_s: u64) -> (FlowKey, FlowStats) {
        let key = FlowKey::ipv4(front(src), 40000, front(dst), 9999, ip_proto::UDP);
        let stats = FlowStats {
            packets,
            bytes: packets * 60,
            first_seen_ns: SECOND,
            last_seen_ns: last_s * SECOND,
            ifindex: Lab::veth(front(src)),
            direction: Direction::FromContainer as u8,
            ..FlowStats::default()
        };
        (key, stats)
    }

    fn from_to(traffic: &TrafficSeries, source: &str, destination: &str) -> u64 {
        packets(traffic, &[("source", source), ("destination", destination)])
    }

    #[test]
    fn a_flow_is_labelled_anew_when_the_directory_names_its_ends_otherwise() {
        let mut traffic = metrics(100);
        let mut flows = table(&[sent(2, 3, 2, 1)]);
        let nameless = Directory::default();
        traffic.update(&PollView::new(&flows, &[]), &nameless, None, SECOND);
        assert_eq!(from_to(&traffic, "unknown", "unknown"), 2);

        // The engine names both ends: the next packets go to their series.
        let named = Lab::new(2).directory;
        for (second, total) in [(2, 5), (3, 6)] {
            poll(&mut flows, &[sent(2, 3, total, second)]);
            traffic.update(&PollView::new(&flows, &[]), &named, None, second * SECOND);
        }
        assert_eq!(from_to(&traffic, "c2", "c3"), 4);
        assert_eq!(from_to(&traffic, "unknown", "unknown"), 2);
    }

    #[test]
    fn a_flow_finds_its_own_series_after_the_series_before_it_are_swept() {
        let mut traffic = metrics(100);
        let everyone = Lab::inventory(3, |_| {});
        let lab = Lab {
            directory: Directory::new(Some(&everyone), HashSet::new()),
        };
        // c2 to c3, then c3 to c4, then c4 to c3: three series, in that
        // order, where c2 to c3 is the only one of c2.
        let mut flows = table(&[sent(2, 3, 1, 1)]);
        traffic.update(
            &PollView::new(&flows, &[]),
            &lab.directory,
            Some(&everyone),
            SECOND,
        );
        let all = |c2: u64, c3: u64, c4: u64, last_s| {
            [
                sent(2, 3, c2, last_s),
                sent(3, 4, c3, last_s),
                sent(4, 3, c4, last_s),
            ]
        };
        poll(&mut flows, &all(1, 1, 0, 2)[..2]);
        traffic.update(
            &PollView::new(&flows, &[]),
            &lab.directory,
            Some(&everyone),
            2 * SECOND,
        );
        poll(&mut flows, &all(1, 1, 1, 3));
        traffic.update(
            &PollView::new(&flows, &[]),
            &lab.directory,
            Some(&everyone),
            3 * SECOND,
        );

        // c2 leaves at 4 s; its series goes once the grace (10 s) is over,
        // at 15 s, while the others go on.
        let mut without_c2 = everyone.clone();
        without_c2.containers.retain(|_, c| c.name != "c2");
        let directory = Directory::new(Some(&without_c2), HashSet::new());
        for second in 4..=17 {
            let sent_since_3 = second - 3;
            let [_, c3, c4] = all(1, 1 + sent_since_3, 1 + 2 * sent_since_3, second);
            poll(&mut flows, &[c3, c4]);
            traffic.update(
                &PollView::new(&flows, &[]),
                &directory,
                Some(&without_c2),
                second * SECOND,
            );
        }
        assert_eq!(from_to(&traffic, "c2", "c3"), 0, "swept");
        assert_eq!(from_to(&traffic, "c3", "c4"), 1 + 14);
        assert_eq!(from_to(&traffic, "c4", "c3"), 1 + 2 * 14);
    }

    #[test]
    fn counters_add_deltas_and_final_counts_of_expired_flows() {
        let mut traffic = metrics(100);
        let directory = Directory::default();
        let udp = stats(2, 0, 0, 0);
        let flow_key = FlowKey {
            protocol: ip_proto::UDP,
            ..key(1, 40000, 2, 53)
        };
        let mut flows = table(&[(flow_key, udp)]);
        traffic.update(&PollView::new(&flows, &[]), &directory, None, SECOND);
        // Three more packets, then the table forgets the flow: they are
        // counted from what it took with it.
        let more = FlowStats {
            packets: 5,
            bytes: 300,
            ..udp
        };
        poll(&mut flows, &[(flow_key, more)]);
        let expired = flows.expire(u64::MAX);
        assert!(flows.is_empty());
        traffic.update(
            &PollView::new(&flows, &expired),
            &directory,
            None,
            2 * SECOND,
        );
        assert_eq!(packets(&traffic, &[]), 5);
        let bytes: u64 = traffic.flows.iter().map(|(_, c)| c.bytes).sum();
        assert_eq!(bytes, 300);
        // Forgotten: the same key back in the same table counts as a new
        // flow from zero.
        poll(&mut flows, &[(flow_key, udp)]);
        traffic.update(&PollView::new(&flows, &[]), &directory, None, 3 * SECOND);
        assert_eq!(packets(&traffic, &[]), 7);
    }

    #[test]
    fn a_connection_counted_while_live_is_not_counted_again_when_it_ends() {
        let mut traffic = metrics(100);
        let directory = Directory::default();
        let (client, server) = (key(1, 40000, 2, 80), key(2, 80, 1, 40000));
        // Undecided while only the SYN is seen: the attempt waits.
        let unanswered = key(1, 40001, 2, 81);
        let mut flows = table(&[
            (client, stats(3, 1, 0, 0)),
            (server, stats(2, 0, 1, 0)),
            (unanswered, stats(1, 1, 0, 0)),
        ]);
        traffic.update(&PollView::new(&flows, &[]), &directory, None, 2 * SECOND);
        assert_eq!(connections(&traffic, "established"), 1);
        assert_eq!(connections(&traffic, "unanswered"), 0);
        assert_eq!(packets(&traffic, &[]), 6);

        // All three leave the table (closed, then the rest): the
        // established connection stays counted once, the waiting attempt
        // is decided by its end, and no packet is counted twice.
        let ended: Vec<_> = [client, server, unanswered]
            .iter()
            .filter_map(|key| flows.end(key))
            .collect();
        assert!(flows.is_empty());
        traffic.update(&PollView::new(&flows, &ended), &directory, None, 3 * SECOND);
        assert_eq!(connections(&traffic, "established"), 1);
        assert_eq!(connections(&traffic, "unanswered"), 1);
        assert_eq!(packets(&traffic, &[]), 6);
    }
}
