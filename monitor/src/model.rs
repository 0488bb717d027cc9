//! The vocabulary every part shares: a flow with its totals, the names
//! crossmon gives protocols and TCP flags, a key's addresses. Plain data
//! and pure functions, below every other module.

use std::net::IpAddr;

use monitor_common::{ip_proto, tcp_flag, FlowKey, FlowStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    /// Cumulative since the flow was first seen.
    pub stats: FlowStats,
}

pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        ip_proto::TCP => "tcp",
        ip_proto::UDP => "udp",
        ip_proto::ICMP => "icmp",
        ip_proto::ICMPV6 => "icmpv6",
        _ => "other",
    }
}

/// Names of the set TCP flags, most significant concern first.
pub fn tcp_flag_names(flags: u8) -> Vec<&'static str> {
    [
        (tcp_flag::SYN, "SYN"),
        (tcp_flag::ACK, "ACK"),
        (tcp_flag::FIN, "FIN"),
        (tcp_flag::RST, "RST"),
        (tcp_flag::PSH, "PSH"),
        (tcp_flag::URG, "URG"),
        (tcp_flag::ECE, "ECE"),
        (tcp_flag::CWR, "CWR"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// The source and destination of a key as addresses.
pub fn key_addrs(key: &FlowKey) -> (IpAddr, IpAddr) {
    (
        ip_of(&key.src_addr, key.ip_version),
        ip_of(&key.dst_addr, key.ip_version),
    )
}

/// An address as the programs store it: IPv4-mapped for IP version 4.
pub fn ip_of(raw: &[u8; 16], ip_version: u8) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*raw);
    match (ip_version, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// A MAC address as people write it: `02:42:ac:11:00:02`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Sums counts of one flow: the entries the flow had in the map one after
/// the other (each retired and recreated). An empty count (all zero) must
/// not drag `first_seen` to 0.
pub fn merge_counts(entries: &[FlowStats]) -> FlowStats {
    let mut total = FlowStats::default();
    for entry in entries.iter().filter(|s| s.first_seen_ns != 0) {
        if total.first_seen_ns == 0 || entry.first_seen_ns < total.first_seen_ns {
            total.first_seen_ns = entry.first_seen_ns;
            total.ifindex = entry.ifindex;
            total.direction = entry.direction;
        }
        // Kernel counters wrap; so does their sum, instead of panicking.
        combine_counts(&mut total, entry, u64::wrapping_add, u32::wrapping_add);
        total.payload_samples = total.payload_samples.saturating_add(entry.payload_samples);
    }
    total
}

/// Combines two counts of one flow field by field: packets and bytes with
/// `wide`, the SYN, SYN-ACK, RST, FIN, connection and handshake counts
/// with `narrow`; the latest packet is the later one and the TCP flags
/// are ORed.
pub fn combine_counts(
    into: &mut FlowStats,
    other: &FlowStats,
    wide: fn(u64, u64) -> u64,
    narrow: fn(u32, u32) -> u32,
) {
    into.last_seen_ns = into.last_seen_ns.max(other.last_seen_ns);
    into.packets = wide(into.packets, other.packets);
    into.bytes = wide(into.bytes, other.bytes);
    into.syn = narrow(into.syn, other.syn);
    into.syn_ack = narrow(into.syn_ack, other.syn_ack);
    into.rst = narrow(into.rst, other.rst);
    into.fin = narrow(into.fin, other.fin);
    into.connections = narrow(into.connections, other.connections);
    into.handshakes = narrow(into.handshakes, other.handshakes);
    into.tcp_flags |= other.tcp_flags;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: u64, last: u64, packets: u64, flags: u8) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 100,
            first_seen_ns: first,
            last_seen_ns: last,
            syn: 1,
            tcp_flags: flags,
            ifindex: first as u32,
            ..FlowStats::default()
        }
    }

    #[test]
    fn sums_counts_and_spans_times_across_entries() {
        let merged = merge_counts(&[
            entry(20, 30, 2, 0x02),
            FlowStats::default(),
            entry(10, 25, 3, 0x10),
        ]);
        assert_eq!(merged.packets, 5);
        assert_eq!(merged.bytes, 500);
        assert_eq!(merged.first_seen_ns, 10);
        assert_eq!(merged.last_seen_ns, 30);
        assert_eq!(merged.syn, 2);
        assert_eq!(merged.tcp_flags, 0x12);
        // Interface and direction of the earliest entry: where the flow began.
        assert_eq!(merged.ifindex, 10);
    }

    #[test]
    fn all_empty_counts_merge_to_empty() {
        assert_eq!(
            merge_counts(&[FlowStats::default(); 4]),
            FlowStats::default()
        );
    }
}
