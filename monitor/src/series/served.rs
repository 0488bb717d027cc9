//! Which ports are served: the evidence that lets a destination port be a
//! label without a scan turning every probed port into a series.
//!
//! A port is served by an address when that address answered a SYN from it
//! (a SYN-ACK), or answered a UDP datagram from it. Docker's exposed ports
//! count too, but come from the inventory, not from here.

use std::{collections::HashMap, net::IpAddr};

use monitor_common::ip_proto;

use crate::{
    flows::Exported,
    model::{key_addrs, FlowRecord},
};

/// (address, port, IP protocol) to when a flow last confirmed it
/// (monotonic ns).
pub struct ServedPorts {
    /// Seeded at random (a container chooses its addresses and ports):
    /// foldhash, as flow keys, since every changed flow's label looks here.
    served: HashMap<(IpAddr, u16, u8), u64, foldhash::fast::RandomState>,
    capacity: usize,
    /// How long an answer stands unconfirmed.
    keep_ns: u64,
    /// When the set last had no room for an answer, until it has room
    /// again.
    refused_ns: Option<u64>,
    /// The last refusal before room was made: a flow that noted a lookup
    /// in or before its second may be the other half of a refused pair,
    /// so it is due again and the pair is learnt from whichever flow
    /// still has traffic. While the set stays full, no earlier lookup is
    /// due again: it would be refused again.
    stale_ns: Option<u64>,
    /// Times a port was added or ports were forgotten: a label made before
    /// the latest may be out of date.
    changes: u64,
}

impl ServedPorts {
    /// `keep_ns`: how long what a flow showed stands once no flow confirms
    /// it.
    pub fn new(capacity: usize, keep_ns: u64) -> Self {
        Self {
            served: HashMap::default(),
            capacity,
            keep_ns,
            refused_ns: None,
            stale_ns: None,
            changes: 0,
        }
    }

    /// Whether the flow `exported` holds the state of is due to look its
    /// reverse up for [`Self::learn`] at `now_ns`. A flow that looked
    /// ([`Exported::note_served_lookup`]) looks again after a quarter of
    /// the time an answer stands: often enough that a port stays served
    /// while the exchange goes on, not at every poll for every busy flow.
    /// A flow that found no reverse waits as long: its reverse, if it
    /// comes, is a new flow, and a new flow looks at its first poll, so
    /// the later of a pair finds the earlier while it is in the table.
    /// Flows that noted a lookup in or before the second of the last
    /// refusal are due again once expiry makes room.
    pub fn lookup_due(&self, exported: &Exported, now_ns: u64) -> bool {
        exported.served_lookup_due(now_ns, self.keep_ns / 4, self.stale_ns)
    }

    /// Learns from one flow and its reverse (if counted): the side that
    /// answered serves the port it answered from. The reverse is looked up
    /// only where the flow alone does not tell (a server's flow does).
    /// False when the set had no room for what the flows show.
    pub fn learn(
        &mut self,
        flow: &FlowRecord,
        reverse: impl FnOnce() -> Option<FlowRecord>,
        now_ns: u64,
    ) -> bool {
        let Some(server) = answering_side(flow, reverse) else {
            return true;
        };
        if self.served.len() >= self.capacity && !self.served.contains_key(&server) {
            // A host answering on every port is not a service map; what is
            // known stays, the rest is labelled `ephemeral`.
            self.refused_ns = Some(now_ns);
            return false;
        }
        if self.served.insert(server, now_ns).is_none() {
            self.changes += 1;
        }
        true
    }

    pub fn contains(&self, ip: IpAddr, port: u16, protocol: u8) -> bool {
        self.served.contains_key(&(ip, port, protocol))
    }

    /// Forgets what no flow confirmed for longer than it is kept.
    pub fn expire(&mut self, now_ns: u64) {
        let cutoff_ns = now_ns.saturating_sub(self.keep_ns);
        let before = self.served.len();
        self.served.retain(|_, seen| *seen >= cutoff_ns);
        if self.served.len() < before {
            self.changes += 1;
            if self.refused_ns.is_some() {
                self.stale_ns = self.refused_ns.take();
            }
        }
    }

    /// Times the set changed so far: what was made of it before the
    /// latest may be out of date.
    pub fn changes(&self) -> u64 {
        self.changes
    }
}

/// The (address, port, protocol) that answered in this pair of flows.
fn answering_side(
    flow: &FlowRecord,
    reverse: impl FnOnce() -> Option<FlowRecord>,
) -> Option<(IpAddr, u16, u8)> {
    let key = &flow.key;
    let (src, dst) = key_addrs(key);
    match key.protocol {
        // SYN-ACKs come from the listening side.
        ip_proto::TCP if flow.stats.syn_ack > 0 => Some((src, key.src_port, key.protocol)),
        ip_proto::TCP => {
            (reverse()?.stats.syn_ack > 0).then_some((dst, key.dst_port, key.protocol))
        }
        // The flow that began first asked; the other answered.
        ip_proto::UDP => {
            let reverse = reverse()?;
            if reverse.stats.first_seen_ns > flow.stats.first_seen_ns {
                Some((dst, key.dst_port, key.protocol))
            } else {
                Some((src, key.src_port, key.protocol))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::{FlowKey, FlowStats};

    use super::*;

    fn record(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, stats: FlowStats) -> FlowRecord {
        FlowRecord {
            key: FlowKey::ipv4(src, sport, dst, dport, ip_proto::TCP),
            stats,
        }
    }

    fn stats(first: u64, syn: u32, syn_ack: u32) -> FlowStats {
        FlowStats {
            packets: 1,
            first_seen_ns: first,
            last_seen_ns: first,
            syn,
            syn_ack,
            ..FlowStats::default()
        }
    }

    const CLIENT: [u8; 4] = [10, 0, 0, 2];
    const SERVER: [u8; 4] = [10, 0, 0, 3];

    #[test]
    fn the_set_changes_when_a_port_is_added_or_forgotten_only() {
        let mut served = ServedPorts::new(10, 10);
        let answer = record(SERVER, 80, CLIENT, 40000, stats(1, 0, 1));
        assert_eq!(served.changes(), 0);
        assert!(served.learn(&answer, || None, 1));
        assert_eq!(served.changes(), 1, "a port added");
        assert!(served.learn(&answer, || None, 5));
        assert_eq!(served.changes(), 1, "confirmed, not added");
        served.expire(14);
        assert_eq!(served.changes(), 1, "nothing forgotten");
        served.expire(16);
        assert!(!served.contains(SERVER.into(), 80, ip_proto::TCP));
        assert_eq!(served.changes(), 2, "a port forgotten");
    }

    #[test]
    fn a_syn_ack_marks_the_answering_port_from_either_flow() {
        let request = record(CLIENT, 40000, SERVER, 80, stats(1, 1, 0));
        let answer = record(SERVER, 80, CLIENT, 40000, stats(2, 0, 1));
        for (flow, reverse) in [(&request, &answer), (&answer, &request)] {
            let mut served = ServedPorts::new(10, 100);
            served.learn(flow, || Some(*reverse), 5);
            assert!(served.contains(SERVER.into(), 80, ip_proto::TCP));
            assert!(!served.contains(CLIENT.into(), 40000, ip_proto::TCP));
        }
    }

    #[test]
    fn a_refused_or_unanswered_syn_serves_nothing() {
        let mut served = ServedPorts::new(10, 100);
        let request = record(CLIENT, 40000, SERVER, 81, stats(1, 1, 0));
        let rst = record(SERVER, 81, CLIENT, 40000, stats(2, 0, 0));
        served.learn(&request, || Some(rst), 5);
        served.learn(&request, || None, 5);
        assert!(!served.contains(SERVER.into(), 81, ip_proto::TCP));
    }

    #[test]
    fn the_later_udp_flow_is_the_answer() {
        let mut query = record(CLIENT, 50000, SERVER, 53, stats(1, 0, 0));
        let mut reply = record(SERVER, 53, CLIENT, 50000, stats(2, 0, 0));
        query.key.protocol = ip_proto::UDP;
        reply.key.protocol = ip_proto::UDP;
        let mut served = ServedPorts::new(10, 100);
        served.learn(&reply, || Some(query), 5);
        assert!(served.contains(SERVER.into(), 53, ip_proto::UDP));
        assert!(!served.contains(CLIENT.into(), 50000, ip_proto::UDP));
    }

    #[test]
    fn lookups_before_a_refusal_are_due_again_once_there_is_room() {
        const SEC: u64 = 1_000_000_000;
        // Looked up once a quarter of the 100 s an answer stands.
        let mut served = ServedPorts::new(1, 100 * SEC);
        let answer = |port| record(SERVER, port, CLIENT, 40000, stats(2, 0, 1));
        let (before, after) = (Exported::default(), Exported::default());
        assert!(served.learn(&answer(80), || None, 5 * SEC));
        before.note_served_lookup(100 * SEC);
        assert!(!served.learn(&answer(81), || None, 101 * SEC), "no room");
        after.note_served_lookup(102 * SEC);
        served.expire(103 * SEC);
        assert!(
            !served.lookup_due(&before, 104 * SEC),
            "the set is still full: it would be refused again"
        );
        // 80 goes at 106 s, a keep after it was confirmed.
        served.expire(106 * SEC);
        assert!(served.lookup_due(&before, 107 * SEC));
        assert!(
            !served.lookup_due(&after, 107 * SEC),
            "looked after the refusal"
        );
    }

    #[test]
    fn capacity_and_expiry_bound_the_set() {
        let mut served = ServedPorts::new(1, 100);
        for (port, seen) in [(80, 5), (81, 6)] {
            let answer = record(SERVER, port, CLIENT, 40000, stats(2, 0, 1));
            served.learn(&answer, || None, seen);
        }
        assert!(served.contains(SERVER.into(), 80, ip_proto::TCP));
        assert!(!served.contains(SERVER.into(), 81, ip_proto::TCP));
        served.expire(105);
        assert!(served.contains(SERVER.into(), 80, ip_proto::TCP));
        served.expire(106);
        assert!(!served.contains(SERVER.into(), 80, ip_proto::TCP));
    }
}
