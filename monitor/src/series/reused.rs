//! Connections a client opens one after another on the same ports while
//! crossmon still keeps the flow of the one before (a closed connection's
//! flow stays `--close-linger`): one flow in the kernel map and in the
//! table, several attempts for `crossmon_connections_total`.
//!
//! The programs count a flow's connections and the handshakes its client
//! completed (`FlowStats::connections`, `handshakes`). A flow's first
//! connection is counted as any attempt is, by its reverse's answer. Once
//! a flow holds more, the rest are counted here: established as its
//! client completes their handshakes; the others once over (a later one
//! opened, or the flow ended): refused where the server sent an RST since
//! the previous count, unanswered otherwise. Which connection is which is
//! not known, only how many: a counter needs no more.

use std::collections::HashMap;

use monitor_common::FlowKey;

use crate::{flows::outcome::Outcome, model::FlowRecord};

/// The flows that held more than one connection, with what was counted
/// of them; no other flow costs anything here.
#[derive(Default)]
pub struct ReusedPorts {
    flows: HashMap<FlowKey, Counted, foldhash::fast::RandomState>,
}

/// What was counted of a flow's connections, and of the evidence for
/// their results.
#[derive(Clone, Copy, Default)]
struct Counted {
    /// Connections counted, its first among them once the series did.
    decided: u32,
    /// The flow's handshakes those established ones took.
    handshakes: u32,
    /// The reverse flow's RSTs as of the previous count, and its first
    /// packet's time, which tells a new table entry of it from the old.
    rsts: u32,
    reverse_first_ns: u64,
}

/// Connections to count at a poll, by result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Results {
    pub established: u32,
    pub refused: u32,
    pub unanswered: u32,
}

impl Results {
    /// One TCP connection of `result`.
    pub fn one(result: Outcome) -> Self {
        debug_assert_ne!(result, Outcome::Answered, "a TCP connection's result");
        let mut results = Self::default();
        match result {
            Outcome::Established => results.established = 1,
            Outcome::Refused => results.refused = 1,
            Outcome::Answered | Outcome::Unanswered => results.unanswered = 1,
        }
        results
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Each result counted at least once, with how many.
    pub fn counts(&self) -> impl Iterator<Item = (Outcome, u32)> {
        [
            (Outcome::Established, self.established),
            (Outcome::Refused, self.refused),
            (Outcome::Unanswered, self.unanswered),
        ]
        .into_iter()
        .filter(|(_, n)| *n != 0)
    }
}

impl ReusedPorts {
    /// Whether `flow`'s connections are counted here: it opened more than
    /// one (a total that never goes down).
    pub fn counts(flow: &FlowRecord) -> bool {
        flow.stats.connections > 1
    }

    /// What to count now of the connections of `flow`, a TCP attempt
    /// [`Self::counts`] takes: `reverse` gives its reverse flow, `first`
    /// the result its first connection was counted with, if it was;
    /// `ended`, whether it ended at this poll (it is then forgotten here).
    pub fn take(
        &mut self,
        flow: &FlowRecord,
        reverse: Option<FlowRecord>,
        first: Option<Outcome>,
        ended: bool,
    ) -> Results {
        let counted = self.flows.entry(flow.key).or_insert_with(|| Counted {
            decided: u32::from(first.is_some()),
            // The first connection's own, where the client completed it.
            handshakes: u32::from(first == Some(Outcome::Established)).min(flow.stats.handshakes),
            ..Counted::default()
        });
        // RSTs of the reverse since the previous count: an entry of it new
        // to the table counts from 0.
        let rsts = match reverse {
            Some(reverse) => {
                if reverse.stats.first_seen_ns != counted.reverse_first_ns {
                    counted.reverse_first_ns = reverse.stats.first_seen_ns;
                    counted.rsts = 0;
                }
                let new = reverse.stats.rst.saturating_sub(counted.rsts);
                counted.rsts = reverse.stats.rst;
                new
            }
            None => 0,
        };
        let waiting = flow.stats.connections.saturating_sub(counted.decided);
        let established = flow
            .stats
            .handshakes
            .saturating_sub(counted.handshakes)
            .min(waiting);
        // Every connection but the latest is over, its client having
        // opened another; the latest may still be answered until the
        // flow ends.
        let over = (waiting - established).saturating_sub(u32::from(!ended));
        let refused = over.min(rsts);
        counted.handshakes += established;
        counted.decided += established + over;
        if ended {
            self.flows.remove(&flow.key);
        }
        Results {
            established,
            refused,
            unanswered: over - refused,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.flows.len()
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::{ip_proto, FlowStats};

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn key() -> FlowKey {
        FlowKey::ipv4([10, 0, 0, 2], 40000, [10, 0, 0, 3], 80, ip_proto::TCP)
    }

    fn flow(connections: u32, handshakes: u32) -> FlowRecord {
        FlowRecord {
            key: key(),
            stats: FlowStats {
                packets: 1,
                first_seen_ns: SECOND,
                last_seen_ns: SECOND,
                syn: connections,
                connections,
                handshakes,
                ..FlowStats::default()
            },
        }
    }

    fn reverse(syn_ack: u32, rst: u32) -> Option<FlowRecord> {
        Some(FlowRecord {
            key: key().reversed(),
            stats: FlowStats {
                packets: 1,
                first_seen_ns: SECOND,
                last_seen_ns: SECOND,
                syn_ack,
                rst,
                ..FlowStats::default()
            },
        })
    }

    fn results(established: u32, refused: u32, unanswered: u32) -> Results {
        Results {
            established,
            refused,
            unanswered,
        }
    }

    const FIRST: Option<Outcome> = Some(Outcome::Established);

    #[test]
    fn a_flow_of_one_connection_is_not_counted_here() {
        assert!(!ReusedPorts::counts(&flow(1, 1)));
        assert!(ReusedPorts::counts(&flow(2, 1)));
    }

    #[test]
    fn connections_back_on_the_same_ports_count_once_each_after_the_first() {
        let mut reused = ReusedPorts::default();
        // Three connections, the first counted established by the series,
        // all three completed: two more established.
        assert_eq!(
            reused.take(&flow(3, 3), reverse(3, 0), FIRST, false),
            results(2, 0, 0)
        );
        // Nothing new: nothing counted again.
        assert_eq!(
            reused.take(&flow(3, 3), reverse(3, 0), FIRST, false),
            results(0, 0, 0)
        );
        // A fourth, not completed yet: it waits.
        assert_eq!(
            reused.take(&flow(4, 3), reverse(3, 0), FIRST, false),
            results(0, 0, 0)
        );
        // Its handshake completes, the reverse gone from the table.
        assert_eq!(
            reused.take(&flow(4, 4), None, FIRST, false),
            results(1, 0, 0)
        );
        assert_eq!(reused.len(), 1);
        // The flow ends: forgotten.
        assert_eq!(
            reused.take(&flow(4, 4), None, FIRST, true),
            results(0, 0, 0)
        );
        assert_eq!(reused.len(), 0);
    }

    #[test]
    fn a_retransmitted_syn_ack_does_not_make_a_waiting_connection_established() {
        let mut reused = ReusedPorts::default();
        assert_eq!(
            reused.take(&flow(2, 1), reverse(2, 0), FIRST, false),
            results(0, 0, 0)
        );
        // Never completed: unanswered, once the flow ends.
        assert_eq!(
            reused.take(&flow(2, 1), reverse(2, 0), FIRST, true),
            results(0, 0, 1)
        );
    }

    #[test]
    fn rsts_that_closed_earlier_connections_refuse_no_later_one() {
        let mut reused = ReusedPorts::default();
        // Three connections the server closed by RST, all completed.
        assert_eq!(
            reused.take(&flow(3, 3), reverse(3, 3), FIRST, false),
            results(2, 0, 0)
        );
        // A fourth, never answered: unanswered when the flow ends.
        assert_eq!(
            reused.take(&flow(4, 3), reverse(3, 3), FIRST, false),
            results(0, 0, 0)
        );
        assert_eq!(
            reused.take(&flow(4, 3), reverse(3, 3), FIRST, true),
            results(0, 0, 1)
        );
    }

    #[test]
    fn a_connection_the_server_resets_unanswered_is_refused() {
        let mut reused = ReusedPorts::default();
        assert_eq!(
            reused.take(&flow(2, 1), reverse(1, 0), FIRST, false),
            results(0, 0, 0)
        );
        assert_eq!(
            reused.take(&flow(2, 1), reverse(1, 1), FIRST, true),
            results(0, 1, 0)
        );
    }

    #[test]
    fn of_two_connections_never_completed_the_earlier_is_over_at_once() {
        let mut reused = ReusedPorts::default();
        // The second was aborted after the server's SYN-ACK (a SYN
        // scanner's RST), the third not completed yet: one of the two is
        // over, which one is not known.
        assert_eq!(
            reused.take(&flow(3, 1), reverse(3, 0), FIRST, false),
            results(0, 0, 1)
        );
        // The third completes.
        assert_eq!(
            reused.take(&flow(3, 2), reverse(3, 0), FIRST, true),
            results(1, 0, 0)
        );
    }

    #[test]
    fn a_reverse_new_to_the_table_counts_its_rsts_from_zero() {
        let mut reused = ReusedPorts::default();
        assert_eq!(
            reused.take(&flow(2, 1), reverse(1, 5), FIRST, false),
            results(0, 0, 0)
        );
        let mut again = reverse(0, 1).expect("a reverse");
        again.stats.first_seen_ns = 3 * SECOND;
        assert_eq!(
            reused.take(&flow(2, 1), Some(again), FIRST, true),
            results(0, 1, 0)
        );
    }

    #[test]
    fn a_first_connection_not_counted_yet_is_counted_here() {
        let mut reused = ReusedPorts::default();
        assert_eq!(
            reused.take(&flow(2, 2), reverse(2, 0), None, false),
            results(2, 0, 0)
        );
    }
}
