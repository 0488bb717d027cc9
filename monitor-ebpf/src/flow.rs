//! Per-flow accounting in the flow maps (`FLOWS_V4` for IPv4, `FLOWS`).

use aya_ebpf::{bindings::BPF_NOEXIST, maps::LruPerCpuHashMap};
use monitor_common::{tcp_flag, Counter, Direction, FlowKey, FlowKeyV4, FlowStats};

use crate::{
    clock::exact_ns,
    events::Seen,
    maps::{bump, FLOWS, FLOWS_V4},
    parse::IpPacket,
};

/// What became of a packet.
pub enum Accounted {
    /// Counted into a flow already in the map; this CPU's slot of it.
    Counted(*mut FlowStats),
    /// The packet opened its flow: the entry was created with it counted,
    /// its first packet stamped with this time. The caller sends the
    /// new-flow event, alone or with the packet's payload sample.
    Created(u64),
    /// Already counted where it left a container (see [`account`]).
    Duplicate,
    /// The map refused the entry (counted in `FlowUpdateFailed`).
    Refused,
}

/// Counts the packet into its flow. A packet that opens a flow is counted
/// in the value the entry is created with: one map operation, not three.
/// NOEXIST makes exactly one CPU win the creation of a flow, so its
/// new-flow event is sent once even when CPUs race.
/// `first_samples` is what the new entry's `payload_samples` starts at.
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
pub fn account(seen: &Seen, packet: &IpPacket, segments: u32, first_samples: u8) -> Accounted {
    match FlowKeyV4::narrow(&packet.key) {
        Some(key) => account_in(&FLOWS_V4, &key, seen, packet, segments, first_samples),
        None => account_in(&FLOWS, &packet.key, seen, packet, segments, first_samples),
    }
}

/// Whether the flow `key` is in the flow map of its family.
#[inline(always)]
pub fn known(key: &FlowKey) -> bool {
    match FlowKeyV4::narrow(key) {
        Some(key) => FLOWS_V4.get_ptr(key).is_some(),
        None => FLOWS.get_ptr(key).is_some(),
    }
}

/// [`account`] in the map of the packet's family.
#[inline(always)]
fn account_in<K>(
    flows: &LruPerCpuHashMap<K, FlowStats>,
    key: &K,
    seen: &Seen,
    packet: &IpPacket,
    segments: u32,
    first_samples: u8,
) -> Accounted {
    if let Some(slot) = flows.get_ptr_mut(key) {
        return count_into(slot, seen, packet, segments);
    }
    // Exact: a handshake's round trip is the difference of two flows'
    // first packets, and which of two flows came first names the server.
    let now = exact_ns();
    let mut stats = FlowStats {
        packets: 0,
        bytes: 0,
        first_seen_ns: now,
        last_seen_ns: now,
        syn: 0,
        syn_ack: 0,
        rst: 0,
        fin: 0,
        tcp_flags: 0,
        payload_samples: first_samples,
        direction: seen.direction as u8,
        _pad: 0,
        ifindex: seen.ifindex,
    };
    count(&mut stats, seen, packet, segments);
    // A per-CPU entry created here holds the value in this CPU's slot and
    // zeros elsewhere.
    if flows.insert(key, stats, u64::from(BPF_NOEXIST)).is_ok() {
        return Accounted::Created(now);
    }
    // Another CPU created it first: count into this CPU's slot of it.
    match flows.get_ptr_mut(key) {
        Some(slot) => count_into(slot, seen, packet, segments),
        None => {
            bump(Counter::FlowUpdateFailed);
            Accounted::Refused
        }
    }
}

#[inline(always)]
fn count_into(slot: *mut FlowStats, seen: &Seen, packet: &IpPacket, segments: u32) -> Accounted {
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
        stats.first_seen_ns = exact_ns();
        stats.ifindex = seen.ifindex;
        stats.direction = seen.direction as u8;
    }
    count(stats, seen, packet, segments);
    Accounted::Counted(slot)
}

#[inline(always)]
fn count(stats: &mut FlowStats, seen: &Seen, packet: &IpPacket, segments: u32) {
    // The tick clock may lag the exact first packet's time by a tick.
    if seen.now_ns > stats.last_seen_ns {
        stats.last_seen_ns = seen.now_ns;
    }
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
}
