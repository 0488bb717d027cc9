//! Header parsing. The common case, an untagged IPv4 frame whose headers
//! sit in the skb's linear part, is read in place at fixed offsets. Every
//! other read copies a whole header with `bpf_skb_load_bytes`
//! (`ctx.load`), which bounds-checks against the whole skb, paged data
//! included, so a truncated frame yields an error here and never an
//! out-of-bounds access. Direct reads at variable offsets would be cheaper
//! per read, but the verifier then tracks every read's offset range and
//! the paths through VLAN tags, IPv6 extension headers and event captures
//! stop being pruned: copies keep verification small on every kernel.

use aya_ebpf::programs::TcContext;
use monitor_common::{ip_proto, FlowKey};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// QinQ is the deepest stacking seen on real bridges.
const MAX_VLAN_TAGS: usize = 2;
/// Bound of the IPv6 extension-header walk (the verifier needs a constant).
const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const NEXTHDR_MOBILITY: u8 = 135;
const NEXTHDR_HIP: u8 = 139;
const NEXTHDR_SHIM6: u8 = 140;

/// What a frame turned out to be.
pub enum Frame {
    Ip(IpPacket),
    /// ARP header at this offset.
    Arp(usize),
    /// Neither IP nor ARP.
    Other,
}

/// The header is cut short or contradicts itself.
pub struct Malformed;

pub struct IpPacket {
    pub key: FlowKey,
    /// IP total length: header + payload.
    pub ip_len: u32,
    /// Bytes of IP and transport headers, which every segment of a GSO
    /// packet carries again on the wire.
    pub headers_len: u32,
    pub tcp_flags: u8,
    /// The transport header was cut short: the packet is counted without ports.
    pub l4_truncated: bool,
    pub payload_offset: usize,
    /// Transport payload length according to the headers (0 when unknown).
    pub payload_len: u32,
}

/// The frame's first `N` bytes where the skb's linear part holds them:
/// direct packet access, at offset 0 only, so the verifier tracks one
/// fixed range and the paths after it merge as with a copy.
#[inline(always)]
fn in_place<const N: usize>(ctx: &TcContext) -> Option<&[u8; N]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + N > end {
        return None;
    }
    // SAFETY: the verifier-checked bounds above: `N` bytes from `start`
    // are packet data, readable for the program's whole run (nothing in
    // it moves the packet).
    Some(unsafe { &*(start as *const [u8; N]) })
}

#[inline(always)]
fn be16(ctx: &TcContext, offset: usize) -> Result<u16, Malformed> {
    bytes::<2>(ctx, offset).map(u16::from_be_bytes)
}

#[inline(always)]
fn bytes<const N: usize>(ctx: &TcContext, offset: usize) -> Result<[u8; N], Malformed> {
    ctx.load::<[u8; N]>(offset).map_err(|_| Malformed)
}

/// Bytes of a transport header the counting reads: TCP's ports, offset
/// and flags (UDP's header is 8 of them).
const L4_HEAD: usize = 14;
/// Ethernet, an IPv4 header without options and the transport's head.
const ETH_IPV4_L4_HEAD: usize = ETH_HLEN + 20 + L4_HEAD;

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Frame, Malformed> {
    // Most frames are untagged IPv4 TCP or UDP, their headers in the skb's
    // linear part: read there, at fixed offsets, without a helper call.
    // Otherwise one copy brings all three headers, where the walk below
    // takes three (a helper call costs more than its bytes). Shorter
    // frames take the walk.
    let copied;
    let head = match in_place::<ETH_IPV4_L4_HEAD>(ctx) {
        Some(head) => Some(head),
        None => {
            copied = bytes::<ETH_IPV4_L4_HEAD>(ctx, 0).ok();
            copied.as_ref()
        }
    };
    if let Some(head) = head {
        if u16::from_be_bytes([head[12], head[13]]) == ETH_P_IP {
            let (Ok(ip), Ok(l4)) = (
                <&[u8; 20]>::try_from(&head[ETH_HLEN..ETH_HLEN + 20]),
                <&[u8; L4_HEAD]>::try_from(&head[ETH_HLEN + 20..]),
            ) else {
                return Err(Malformed);
            };
            return ipv4_header(ctx, ETH_HLEN, ip, Some(l4)).map(Frame::Ip);
        }
    }
    let mut ethertype = be16(ctx, 12)?;
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = be16(ctx, offset + 2)?;
        offset += 4;
    }
    match ethertype {
        ETH_P_IP => ipv4(ctx, offset).map(Frame::Ip),
        ETH_P_IPV6 => ipv6(ctx, offset).map(Frame::Ip),
        ETH_P_ARP => Ok(Frame::Arp(offset)),
        _ => Ok(Frame::Other),
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, offset: usize) -> Result<IpPacket, Malformed> {
    // One helper call for the whole fixed header: each call costs more
    // than the bytes it copies.
    let h: [u8; 20] = bytes(ctx, offset)?;
    ipv4_header(ctx, offset, &h, None)
}

/// An IPv4 packet whose fixed header `h` is at `offset`; `after` holds the
/// bytes that follow it, when the caller copied them too.
#[inline(always)]
fn ipv4_header(
    ctx: &TcContext,
    offset: usize,
    h: &[u8; 20],
    after: Option<&[u8; L4_HEAD]>,
) -> Result<IpPacket, Malformed> {
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || header_len < 20 {
        return Err(Malformed);
    }
    let total_len = u16::from_be_bytes([h[2], h[3]]);
    let fragment = u16::from_be_bytes([h[6], h[7]]);
    let l4_len = usize::from(total_len)
        .checked_sub(header_len)
        .ok_or(Malformed)?;

    let mut key = blank_key(h[9], 4);
    key.src_addr = ipv4_mapped([h[12], h[13], h[14], h[15]]);
    key.dst_addr = ipv4_mapped([h[16], h[17], h[18], h[19]]);
    let mut packet = IpPacket::new(key, u32::from(total_len), header_len as u32);
    // Only the first fragment carries the transport header.
    if fragment & 0x1fff == 0 {
        let more_fragments = fragment & 0x2000 != 0;
        // Without options, the transport header is what followed.
        let l4_head = after.filter(|_| header_len == 20);
        transport(
            ctx,
            &mut packet,
            offset + header_len,
            l4_len,
            more_fragments,
            l4_head,
        );
    }
    Ok(packet)
}

#[inline(always)]
fn ipv6(ctx: &TcContext, offset: usize) -> Result<IpPacket, Malformed> {
    let h: [u8; IPV6_HLEN] = bytes(ctx, offset)?;
    if h[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let payload_len = u16::from_be_bytes([h[4], h[5]]);
    let mut next = h[6];

    let mut l4 = offset + IPV6_HLEN;
    let mut first_fragment = true;
    let mut more_fragments = false;
    let mut chain_ok = true;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let is_extension = matches!(
            next,
            NEXTHDR_HOP
                | NEXTHDR_ROUTING
                | NEXTHDR_DEST
                | NEXTHDR_MOBILITY
                | NEXTHDR_HIP
                | NEXTHDR_SHIM6
                | NEXTHDR_AUTH
                | NEXTHDR_FRAGMENT
        );
        if !is_extension {
            break;
        }
        // Every extension header is at least 8 bytes; its first four hold
        // the next header, the length and (for a fragment) the offset.
        let Ok([following, len, frag_hi, frag_lo]) = bytes::<4>(ctx, l4) else {
            chain_ok = false;
            break;
        };
        let ext_len = match next {
            NEXTHDR_AUTH => (usize::from(len) + 2) * 4,
            NEXTHDR_FRAGMENT => {
                let frag = u16::from_be_bytes([frag_hi, frag_lo]);
                first_fragment = frag & 0xfff8 == 0;
                more_fragments = frag & 1 != 0;
                8
            }
            _ => (usize::from(len) + 1) * 8,
        };
        next = following;
        l4 += ext_len;
        // What follows a later fragment's header is data, not headers,
        // whatever `next` says.
        if !first_fragment {
            break;
        }
    }

    let mut key = blank_key(next, 6);
    key.src_addr.copy_from_slice(&h[8..24]);
    key.dst_addr.copy_from_slice(&h[24..40]);
    let headers_len = (l4 - offset) as u32;
    let mut packet = IpPacket::new(key, u32::from(payload_len) + IPV6_HLEN as u32, headers_len);
    let l4_len = (usize::from(payload_len) + offset + IPV6_HLEN).checked_sub(l4);
    match l4_len {
        Some(l4_len) if chain_ok && first_fragment => {
            transport(ctx, &mut packet, l4, l4_len, more_fragments, None)
        }
        Some(_) if chain_ok => {}
        _ => packet.l4_truncated = true,
    }
    Ok(packet)
}

/// Fills ports, TCP flags and the payload span. A cut-short transport header
/// leaves the ports at 0 and marks the packet, which is still counted.
/// `more_fragments`: the first fragment of a larger datagram, whose UDP
/// length covers fragments still to come. `copied`: the header's first
/// bytes, when the caller has them already.
#[inline(always)]
fn transport(
    ctx: &TcContext,
    packet: &mut IpPacket,
    offset: usize,
    l4_len: usize,
    more_fragments: bool,
    copied: Option<&[u8; L4_HEAD]>,
) {
    match packet.key.protocol {
        ip_proto::TCP => match l4_head::<L4_HEAD>(ctx, offset, copied) {
            Ok(h) => {
                let header_len = usize::from(h[12] >> 4) * 4;
                packet.key.src_port = u16::from_be_bytes([h[0], h[1]]);
                packet.key.dst_port = u16::from_be_bytes([h[2], h[3]]);
                packet.tcp_flags = h[13];
                if header_len < 20 || header_len > l4_len {
                    packet.l4_truncated = true;
                    return;
                }
                packet.payload_offset = offset + header_len;
                packet.payload_len = (l4_len - header_len) as u32;
                packet.headers_len += header_len as u32;
            }
            Err(Malformed) => packet.l4_truncated = true,
        },
        ip_proto::UDP => match l4_head::<8>(ctx, offset, copied) {
            Ok(h) => {
                packet.key.src_port = u16::from_be_bytes([h[0], h[1]]);
                packet.key.dst_port = u16::from_be_bytes([h[2], h[3]]);
                let udp_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
                // This packet's part of the datagram.
                let here = if more_fragments { l4_len } else { udp_len };
                if udp_len < 8 || here < 8 || here > l4_len {
                    packet.l4_truncated = true;
                    return;
                }
                packet.payload_offset = offset + 8;
                packet.payload_len = (here - 8) as u32;
                packet.headers_len += 8;
            }
            Err(Malformed) => packet.l4_truncated = true,
        },
        _ => {}
    }
}

/// The transport header's first `N` bytes: from `copied` when the caller
/// has them, else copied from the packet now.
#[inline(always)]
fn l4_head<const N: usize>(
    ctx: &TcContext,
    offset: usize,
    copied: Option<&[u8; L4_HEAD]>,
) -> Result<[u8; N], Malformed> {
    match copied.and_then(|head| head.first_chunk::<N>()) {
        Some(head) => Ok(*head),
        None => bytes::<N>(ctx, offset),
    }
}

impl IpPacket {
    #[inline(always)]
    fn new(key: FlowKey, ip_len: u32, headers_len: u32) -> Self {
        Self {
            key,
            ip_len,
            headers_len,
            tcp_flags: 0,
            l4_truncated: false,
            payload_offset: 0,
            payload_len: 0,
        }
    }
}

#[inline(always)]
fn blank_key(protocol: u8, ip_version: u8) -> FlowKey {
    FlowKey {
        protocol,
        ip_version,
        ..FlowKey::ZERO
    }
}

/// `::ffff:a.b.c.d`. Built as one number: written as an array, its ten
/// zero bytes became a call to a byte-at-a-time `memset`, twice per packet.
#[inline(always)]
fn ipv4_mapped(a: [u8; 4]) -> [u8; 16] {
    (0xffff_0000_0000 | u128::from(u32::from_be_bytes(a))).to_be_bytes()
}
