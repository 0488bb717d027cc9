//! How an attempt to reach a destination ended, from the flow and the flow
//! of its answers: what connection metrics and scan detection count.

use monitor_common::{ip_proto, tcp_flag};

use crate::model::FlowRecord;

/// An attempt with neither answer nor refusal after this long is
/// `unanswered` (Linux retries a SYN after 1 s and 3 s).
pub const UNANSWERED_AFTER_NS: u64 = 5_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// TCP: a SYN-ACK came back.
    Established = 1,
    /// TCP: a RST came back.
    Refused,
    /// UDP, ICMP: something came back.
    Answered,
    Unanswered,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Established => "established",
            Outcome::Refused => "refused",
            Outcome::Answered => "answered",
            Outcome::Unanswered => "unanswered",
        }
    }

    /// The destination got the packets (it answered, even if to refuse).
    pub fn delivered(self) -> bool {
        self != Outcome::Unanswered
    }

    /// Every outcome.
    pub const ALL: [Self; 4] = [
        Outcome::Established,
        Outcome::Refused,
        Outcome::Answered,
        Outcome::Unanswered,
    ];

    /// A byte for an outcome, never 0, which stands for none.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The outcome of [`Self::code`]; none for 0 or any other byte.
    pub fn of_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|outcome| outcome.code() == code)
    }
}

/// Whether `flow` is its source's attempt to reach the destination, rather
/// than the answers to one: for TCP a flow that opened with a SYN, or a
/// probe that never acknowledged anything (FIN and XMAS scans: every
/// segment of a real connection but its SYN carries an ACK, and a bare RST
/// opens nothing; a NULL scan's flow, with no flag at all, is not told
/// apart); for other protocols the flow of the pair that began first.
pub fn is_attempt(flow: &FlowRecord, reverse: Option<&FlowRecord>) -> bool {
    match flow.key.protocol {
        ip_proto::TCP => {
            let flags = flow.stats.tcp_flags;
            flow.stats.syn > 0 || (flags != 0 && flags & (tcp_flag::ACK | tcp_flag::RST) == 0)
        }
        ip_proto::UDP | ip_proto::ICMP | ip_proto::ICMPV6 => {
            reverse.is_none_or(|r| r.stats.first_seen_ns > flow.stats.first_seen_ns)
        }
        _ => false,
    }
}

/// The outcome of an attempt once known: at once when answered, after
/// [`UNANSWERED_AFTER_NS`] or when the flow `ended` otherwise.
pub fn outcome(
    flow: &FlowRecord,
    reverse: Option<&FlowRecord>,
    ended: bool,
    now_ns: u64,
) -> Option<Outcome> {
    let answer = reverse.filter(|r| r.stats.packets > 0);
    let known = match (flow.key.protocol, answer) {
        (ip_proto::TCP, Some(r)) if r.stats.syn_ack > 0 => Some(Outcome::Established),
        (ip_proto::TCP, Some(r)) if r.stats.rst > 0 => Some(Outcome::Refused),
        (ip_proto::TCP, _) => None,
        (_, Some(_)) => Some(Outcome::Answered),
        (_, None) => None,
    };
    let waited = now_ns.saturating_sub(flow.stats.first_seen_ns);
    known.or((ended || waited >= UNANSWERED_AFTER_NS).then_some(Outcome::Unanswered))
}

/// A TCP client flow whose handshake completed: after the SYN, the client
/// acknowledged (a flooder that never answers the SYN-ACK does not).
pub fn handshake_completed(flow: &FlowRecord) -> bool {
    flow.stats.syn > 0 && flow.stats.tcp_flags & tcp_flag::ACK != 0
}

#[cfg(test)]
mod tests {
    use monitor_common::{FlowKey, FlowStats};

    use super::*;

    fn record(protocol: u8, first: u64, stats: FlowStats) -> FlowRecord {
        FlowRecord {
            key: FlowKey {
                protocol,
                ..FlowKey::ZERO
            },
            stats: FlowStats {
                first_seen_ns: first,
                packets: 1,
                ..stats
            },
        }
    }

    #[test]
    fn every_outcome_has_a_code_of_its_own_and_zero_is_none() {
        for outcome in Outcome::ALL {
            assert_ne!(outcome.code(), 0);
            assert_eq!(Outcome::of_code(outcome.code()), Some(outcome));
        }
        assert_eq!(Outcome::of_code(0), None);
        assert_eq!(Outcome::of_code(5), None);
    }

    #[test]
    fn tcp_outcomes_come_from_the_answer() {
        let syn = record(
            ip_proto::TCP,
            1,
            FlowStats {
                syn: 1,
                ..FlowStats::default()
            },
        );
        let syn_ack = record(
            ip_proto::TCP,
            2,
            FlowStats {
                syn_ack: 1,
                ..FlowStats::default()
            },
        );
        let rst = record(
            ip_proto::TCP,
            2,
            FlowStats {
                rst: 1,
                ..FlowStats::default()
            },
        );
        assert!(is_attempt(&syn, Some(&syn_ack)) && !is_attempt(&syn_ack, Some(&syn)));
        assert_eq!(
            outcome(&syn, Some(&syn_ack), false, 3),
            Some(Outcome::Established)
        );
        assert_eq!(outcome(&syn, Some(&rst), false, 3), Some(Outcome::Refused));
        assert_eq!(outcome(&syn, None, false, 3), None);
        assert_eq!(outcome(&syn, None, true, 3), Some(Outcome::Unanswered));
        assert_eq!(
            outcome(&syn, None, false, 1 + UNANSWERED_AFTER_NS),
            Some(Outcome::Unanswered)
        );
    }

    #[test]
    fn probes_without_syn_or_ack_are_attempts_and_their_rst_answers_refuse() {
        let probe = |flags: u8| {
            record(
                ip_proto::TCP,
                1,
                FlowStats {
                    tcp_flags: flags,
                    ..FlowStats::default()
                },
            )
        };
        let rst_ack = probe(tcp_flag::RST | tcp_flag::ACK);
        let rst = FlowRecord {
            stats: FlowStats {
                rst: 1,
                ..rst_ack.stats
            },
            ..rst_ack
        };
        let xmas = tcp_flag::FIN | tcp_flag::PSH | tcp_flag::URG;
        for flags in [tcp_flag::FIN, xmas] {
            assert!(is_attempt(&probe(flags), None), "flags {flags:#x}");
            assert_eq!(
                outcome(&probe(flags), Some(&rst), false, 3),
                Some(Outcome::Refused)
            );
        }
        // Mid-stream segments, the answers, a bare reset: none opens.
        for flags in [
            tcp_flag::ACK,
            tcp_flag::FIN | tcp_flag::ACK,
            tcp_flag::RST,
            0,
        ] {
            assert!(!is_attempt(&probe(flags), None), "flags {flags:#x}");
        }
        assert!(!is_attempt(&rst_ack, None));
    }

    #[test]
    fn other_protocols_are_answered_by_any_reply_and_began_by_the_earlier_flow() {
        let query = record(ip_proto::UDP, 1, FlowStats::default());
        let reply = record(ip_proto::UDP, 2, FlowStats::default());
        assert!(is_attempt(&query, Some(&reply)) && !is_attempt(&reply, Some(&query)));
        assert!(is_attempt(&query, None));
        assert_eq!(
            outcome(&query, Some(&reply), false, 3),
            Some(Outcome::Answered)
        );
    }

    #[test]
    fn only_an_acknowledging_client_completed_its_handshake() {
        let flood = record(
            ip_proto::TCP,
            1,
            FlowStats {
                syn: 1,
                tcp_flags: tcp_flag::SYN,
                ..FlowStats::default()
            },
        );
        let client = record(
            ip_proto::TCP,
            1,
            FlowStats {
                syn: 1,
                tcp_flags: tcp_flag::SYN | tcp_flag::ACK,
                ..FlowStats::default()
            },
        );
        assert!(!handshake_completed(&flood) && handshake_completed(&client));
    }
}
