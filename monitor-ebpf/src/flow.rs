//! Per-flow accounting in the `FLOWS` map.

use aya_ebpf::bindings::BPF_NOEXIST;
use monitor_common::{tcp_flag, Counter, FlowStats};

use crate::{
    events::{self, Seen},
    maps::{bump, FLOWS},
    parse::IpPacket,
};

/// Counts the packet into its flow and returns this CPU's slot of the flow,
/// or `None` when the map refused the entry (counted, the packet still passes).
///
/// `segments` is the skb's GSO segment count: a veth passes TSO/GSO
/// super-packets whole, and what the flow should show is the segments the
/// wire would carry, each with its own headers.
#[inline(always)]
pub fn account(seen: &Seen, packet: &IpPacket, segments: u32) -> Option<*mut FlowStats> {
    let slot = match FLOWS.get_ptr_mut(packet.key) {
        Some(slot) => slot,
        None => {
            // NOEXIST makes exactly one CPU win the creation of a flow, so
            // the new-flow event is sent once even when CPUs race.
            if FLOWS
                .insert(packet.key, FlowStats::default(), u64::from(BPF_NOEXIST))
                .is_ok()
            {
                events::new_flow(seen, &packet.key);
            }
            match FLOWS.get_ptr_mut(packet.key) {
                Some(slot) => slot,
                None => {
                    bump(Counter::FlowUpdateFailed);
                    return None;
                }
            }
        }
    };
    // SAFETY: a per-CPU slot is only written by programs on this CPU, and
    // programs do not nest on one CPU for the same hook.
    let stats = unsafe { &mut *slot };
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
    Some(slot)
}
