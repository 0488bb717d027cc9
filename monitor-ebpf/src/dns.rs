//! DNS: every TCP or UDP packet to or from port 53 that carries a payload
//! goes to user space whole (up to `MAX_CAPTURE` bytes), not only a flow's
//! first few. A resolver reuses its socket for many queries, and an answer
//! is longer than the payload sample's default; the agent parses the
//! messages (`monitor::dns`).

use monitor_common::{ip_proto, DNS_PORT, MAX_CAPTURE};

use crate::{maps::DNS_EVENTS, parse::IpPacket};

/// Whether the packet is a DNS message to send up whole. One comparison
/// of the ports for every other packet.
#[inline(always)]
pub fn wanted(packet: &IpPacket) -> bool {
    let key = &packet.key;
    (key.src_port == DNS_PORT || key.dst_port == DNS_PORT)
        && matches!(key.protocol, ip_proto::TCP | ip_proto::UDP)
        && packet.payload_len != 0
        && DNS_EVENTS.load() != 0
}

/// Bytes of a DNS message sent up: a classic UDP message (512) fits whole.
pub const BYTES: u32 = MAX_CAPTURE as u32;
