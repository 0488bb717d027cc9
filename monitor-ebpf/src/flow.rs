//! Per-flow accounting in the flow maps (`FLOWS_V4` for IPv4, `FLOWS`).

use core::{
    arch::asm,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{bindings::BPF_NOEXIST, maps::LruHashMap};
use monitor_common::{tcp_flag, Direction, FlowKey, FlowKeyV4, FlowStats};

use crate::{
    clock::exact_ns,
    events::Seen,
    maps::{FLOWS, FLOWS_V4},
    parse::IpPacket,
};

/// What became of a packet.
pub enum Accounted {
    /// Counted into a flow already in the map: its entry, shared by every
    /// CPU.
    Counted(*mut FlowStats),
    /// The packet opened its flow: the entry was created with it counted,
    /// its first packet stamped with this time. The caller sends the
    /// new-flow event, alone or with the packet's payload sample.
    Created(u64),
    /// Already counted where it left a container (see [`account`]).
    Duplicate,
    /// The map refused the entry (`observe` counts it in `FlowUpdateFailed`).
    Refused,
}

/// Counts the packet into its flow. A packet that opens a flow is counted
/// in the value the entry is created with: one map operation, not three.
/// NOEXIST makes exactly one CPU win the creation of a flow, so its
/// new-flow event is sent once even when CPUs race.
/// `first_samples` is what the new entry's `payload_samples` starts at.
///
/// One entry per flow, shared by the CPUs: its counters are added to
/// atomically (XADD, on every supported kernel), so the counts are exact
/// when CPUs count one flow at once, and a new entry costs its own 64
/// bytes, where a per-CPU map zeroed a slot for every possible CPU on each
/// insert and held `capacity * 64` bytes per CPU.
///
/// A packet leaving the host towards a container whose flow was counted
/// *from* a container is that same packet, bridged or routed from a
/// watched veth. It is not counted again. The lookup is the one counting
/// needs anyway.
///
/// `segments` is the skb's GSO segment count: a veth passes TSO/GSO
/// super-packets whole, and what the flow should show is the segments the
/// wire would carry, each with its own headers.
#[inline(always)]
pub fn account(seen: &Seen, packet: &IpPacket, segments: u32, first_samples: u8) -> Accounted {
    match ipv4_key(&packet.key) {
        Some(key) => account_in(&FLOWS_V4, &key, seen, packet, segments, first_samples),
        None => account_in(&FLOWS, &packet.key, seen, packet, segments, first_samples),
    }
}

/// Whether the flow `key` is in the flow map of its family.
#[inline(always)]
pub fn known(key: &FlowKey) -> bool {
    match ipv4_key(key) {
        Some(key) => FLOWS_V4.get_ptr(key).is_some(),
        None => FLOWS.get_ptr(key).is_some(),
    }
}

/// The key of `key`'s flow in `FLOWS_V4`, when it is an IPv4 one. The
/// keys that reach the flow maps come from `parse`, which gives version 4
/// to a key from an IPv4 header only, its addresses mapped, so the version
/// tells it. `FlowKeyV4::narrow`, which the agent keeps for keys from
/// elsewhere, checks the mapped prefix byte by byte: 88 to 95
/// instructions of every counted packet.
#[inline(always)]
fn ipv4_key(key: &FlowKey) -> Option<FlowKeyV4> {
    (key.ip_version == 4).then(|| FlowKeyV4::of_mapped(key))
}

/// [`account`] in the map of the packet's family.
#[inline(always)]
fn account_in<K>(
    flows: &LruHashMap<K, FlowStats>,
    key: &K,
    seen: &Seen,
    packet: &IpPacket,
    segments: u32,
    first_samples: u8,
) -> Accounted {
    if let Some(entry) = flows.get_ptr_mut(key) {
        return count_into(entry, seen, packet, segments);
    }
    // Exact: a handshake's round trip is the difference of two flows'
    // first packets, and which of two flows came first names the server.
    let now = exact_ns();
    let flags = packet.tcp_flags;
    let counted = CountedFlags::of(flags);
    let extra_segments = u64::from(segments.max(1) - 1);
    let stats = FlowStats {
        packets: 1 + extra_segments,
        bytes: wire_bytes(packet, extra_segments),
        first_seen_ns: now,
        // The tick clock may lag the exact first packet's time by a tick.
        last_seen_ns: if seen.now_ns > now { seen.now_ns } else { now },
        syn: u32::from(counted.syn),
        syn_ack: u32::from(counted.syn_ack),
        rst: u32::from(counted.rst),
        fin: u32::from(counted.fin),
        tcp_flags: flags,
        payload_samples: first_samples,
        direction: seen.direction as u8,
        _pad: 0,
        ifindex: seen.ifindex,
        connections: u32::from(counted.syn),
        handshakes: 0,
    };
    if flows.insert(key, stats, u64::from(BPF_NOEXIST)).is_ok() {
        return Accounted::Created(now);
    }
    // Another CPU created it first: count into the entry it made.
    match flows.get_ptr_mut(key) {
        Some(entry) => count_into(entry, seen, packet, segments),
        None => Accounted::Refused,
    }
}

/// IP bytes of a packet and of the `extra_segments` more a GSO
/// super-packet stands for, each with its own headers.
#[inline(always)]
fn wire_bytes(packet: &IpPacket, extra_segments: u64) -> u64 {
    u64::from(packet.ip_len)
        .wrapping_add(extra_segments.wrapping_mul(u64::from(packet.headers_len)))
}

#[inline(always)]
fn count_into(entry: *mut FlowStats, seen: &Seen, packet: &IpPacket, segments: u32) -> Accounted {
    // SAFETY: `entry` is a live element of a flow map, valid for the
    // program's run. Other CPUs may write it at the same time, so it is
    // read and written through the pointer only, never borrowed, and what
    // is not added atomically is read and stored once each (volatile, as
    // the kernel's READ_ONCE and WRITE_ONCE), never merged or repeated.
    unsafe {
        // Written at the creation only.
        if seen.direction == Direction::ToContainer
            && (*entry).direction == Direction::FromContainer as u8
        {
            return Accounted::Duplicate;
        }
        // Stores where a race costs at most a tick of `last_seen` or one
        // flag of a packet racing another (the counters of SYN, SYN-ACK,
        // RST and FIN, which closing and alerts read, are exact; those of
        // connections and handshakes are added exactly, but which packet
        // adds is told by the flags, so a late packet of the connection
        // before can open one too many): the verifier of 5.10 has no
        // atomic OR or exchange. A store only when
        // something changes keeps the line clean on steady flows.
        let last_seen = &raw mut (*entry).last_seen_ns;
        if seen.now_ns > read_volatile(last_seen) {
            write_volatile(last_seen, seen.now_ns);
        }
        let extra_segments = u64::from(segments.max(1) - 1);
        add_u64(&raw mut (*entry).packets, 1 + extra_segments);
        add_u64(&raw mut (*entry).bytes, wire_bytes(packet, extra_segments));
        let flags = packet.tcp_flags;
        if flags != 0 {
            let tcp_flags = &raw mut (*entry).tcp_flags;
            let before = read_volatile(tcp_flags);
            let counted = CountedFlags::of(flags);
            let connections = &raw mut (*entry).connections;
            if counted.syn && (before & tcp_flag::PAST_SYN != 0 || read_volatile(connections) == 0)
            {
                // The client's next connection on these ports: a SYN
                // retransmitted comes before anything else of its own.
                write_volatile(tcp_flags, flags);
                increment_u32(connections);
            } else {
                if before & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN
                    && flags & tcp_flag::ACK != 0
                {
                    increment_u32(&raw mut (*entry).handshakes);
                }
                if before | flags != before {
                    write_volatile(tcp_flags, before | flags);
                }
            }
            if counted.syn {
                increment_u32(&raw mut (*entry).syn);
            }
            if counted.syn_ack {
                increment_u32(&raw mut (*entry).syn_ack);
            }
            if counted.rst {
                increment_u32(&raw mut (*entry).rst);
            }
            if counted.fin {
                increment_u32(&raw mut (*entry).fin);
            }
        }
    }
    Accounted::Counted(entry)
}

/// Which of a flow's flag counters a packet adds one to.
struct CountedFlags {
    /// SYN without ACK.
    syn: bool,
    syn_ack: bool,
    rst: bool,
    fin: bool,
}

impl CountedFlags {
    #[inline(always)]
    fn of(flags: u8) -> Self {
        let syn = flags & tcp_flag::SYN != 0;
        let ack = flags & tcp_flag::ACK != 0;
        Self {
            syn: syn && !ack,
            syn_ack: syn && ack,
            rst: flags & tcp_flag::RST != 0,
            fin: flags & tcp_flag::FIN != 0,
        }
    }
}

/// Adds to a counter other CPUs may add to at the same time: XADD, which
/// every supported kernel's verifier accepts on a map value (the fetching
/// atomics need 5.12). Written out because the BPF target has no
/// compare-and-swap, so `core` offers no atomic add on it.
///
/// # Safety
/// `counter` points to an aligned u64 of a map value.
#[inline(always)]
unsafe fn add_u64(counter: *mut u64, n: u64) {
    // SAFETY: the caller's.
    unsafe {
        asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) counter, in(reg) n, options(nostack));
    }
}

/// [`add_u64`] of one, for the 32-bit flag counters.
///
/// # Safety
/// `counter` points to an aligned u32 of a map value.
#[inline(always)]
unsafe fn increment_u32(counter: *mut u32) {
    // SAFETY: the caller's; the instruction adds the register's low half.
    unsafe {
        asm!("lock *(u32 *)({0} + 0) += {1}", in(reg) counter, in(reg) 1u64, options(nostack));
    }
}
