//! Per-flow accounting in the `FLOWS` map.

use aya_ebpf::bindings::BPF_NOEXIST;
use monitor_common::{tcp_flag, Counter, Direction, FlowStats};

use crate::{
    events::{self, Seen},
    maps::{bump, FLOWS, NEW_FLOW_EVENTS},
    parse::IpPacket,
};

/// What became of a packet.
pub enum Accounted {
    /// Counted; this CPU's slot of the flow.
    Counted(*mut FlowStats),
    /// Already counted where it left a container (see [`account`]).
    Duplicate,
    /// The map refused the entry (counted in `FlowUpdateFailed`).
    Refused,
}

/// Counts the packet into its flow.
///
/// A packet leaving the host towards a container whose flow this CPU
/// already counted *from* a container is that same packet, bridged or
/// routed from a watched veth: forwarding runs in one softirq, on one CPU,
/// from the ingress hook to the egress hook. It is not counted again. The
/// lookup is the one counting needs anyway.
///
/// `segments` is the skb's GSO segment count: a veth passes TSO/GSO
/// super-packets whole, and what the flow should show is the segments the
/// wire would carry, each with its own headers.
#[inline(always)]
pub fn account(seen: &Seen, packet: &IpPacket, segments: u32) -> Accounted {
    let slot = match FLOWS.get_ptr_mut(packet.key) {
        Some(slot) => slot,
        None => {
            // NOEXIST makes exactly one CPU win the creation of a flow, so
            // the new-flow event is sent once even when CPUs race.
            if FLOWS
                .insert(packet.key, FlowStats::default(), u64::from(BPF_NOEXIST))
                .is_ok()
                && NEW_FLOW_EVENTS.load() != 0
            {
                events::new_flow(seen, &packet.key);
            }
            match FLOWS.get_ptr_mut(packet.key) {
                Some(slot) => slot,
                None => {
                    bump(Counter::FlowUpdateFailed);
                    return Accounted::Refused;
                }
            }
        }
    };
    // SAFETY: a per-CPU slot is only written by programs on this CPU, and
    // programs do not nest on one CPU for the same hook.
    let stats = unsafe { &mut *slot };
    if seen.direction == Direction::ToContainer
        && stats.first_seen_ns != 0
        && stats.direction == Direction::FromContainer as u8
    {
        return Accounted::Duplicate;
    }
    if stats.first_seen_ns == 0 {
        stats.first_seen_ns = seen.now_ns;
        stats.ifindex = seen.ifindex;
        stats.direction = seen.direction as u8;
    }
    stats.last_seen_ns = seen.now_ns;
    let extra_segments = u64::from(segments.max(1) - 1);
    stats.packets = stats.packets.wrapping_add(1 + extra_segments);
    stats.bytes = stats
        .bytes
        .wrapping_add(u64::from(packet.ip_len))
        .wrapping_add(extra_segments.wrapping_mul(u64::from(packet.headers_len)));
    let flags = packet.tcp_flags;
    if flags != 0 {
        stats.tcp_flags |= flags;
        let syn = flags & tcp_flag::SYN != 0;
        let ack = flags & tcp_flag::ACK != 0;
        if syn && ack {
            stats.syn_ack = stats.syn_ack.wrapping_add(1);
        } else if syn {
            stats.syn = stats.syn.wrapping_add(1);
        }
        if flags & tcp_flag::RST != 0 {
            stats.rst = stats.rst.wrapping_add(1);
        }
        if flags & tcp_flag::FIN != 0 {
            stats.fin = stats.fin.wrapping_add(1);
        }
    }
    Accounted::Counted(slot)
}
