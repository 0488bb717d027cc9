//! Ethernet frames built byte by byte, well-formed or deliberately broken,
//! for the parser tests. Pure functions: no I/O.

pub type Mac = [u8; 6];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;

pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An 802.1Q tag with VLAN `vid` in front of `ethertype`.
pub fn vlan_tagged(dst: Mac, src: Mac, vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = (vid & 0x0fff).to_be_bytes().to_vec();
    inner.extend_from_slice(&ethertype.to_be_bytes());
    inner.extend_from_slice(payload);
    ethernet(dst, src, ETH_P_8021Q, &inner)
}

/// IPv4 header (with `options`, a multiple of 4 bytes) and payload. The
/// fragment field holds flags and offset as on the wire.
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    options: &[u8],
    fragment: u16,
    payload: &[u8],
) -> Vec<u8> {
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut packet = vec![0x40 | (header_len / 4) as u8, 0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0x12, 0x34]);
    packet.extend_from_slice(&fragment.to_be_bytes());
    packet.extend_from_slice(&[64, protocol, 0, 0]);
    packet.extend_from_slice(&src);
    packet.extend_from_slice(&dst);
    packet.extend_from_slice(options);
    let checksum = internet_checksum(&packet);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// IPv6 header with `next` as next header; `payload` may start with
/// extension headers.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[next, 64]);
    packet.extend_from_slice(&src);
    packet.extend_from_slice(&dst);
    packet.extend_from_slice(payload);
    packet
}

/// An 8-byte IPv6 extension header (hop-by-hop, routing, destination
/// options: padded with PadN) followed by `rest`.
pub fn ipv6_ext(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut header = vec![next, 0, 1, 4, 0, 0, 0, 0];
    header.extend_from_slice(rest);
    header
}

/// An IPv6 fragment header with `offset` (in 8-byte units) and more-fragments.
pub fn ipv6_fragment(next: u8, offset: u16, more: bool, rest: &[u8]) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut header = vec![next, 0];
    header.extend_from_slice(&field.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 1]);
    header.extend_from_slice(rest);
    header
}

/// UDP with checksum 0 (allowed for IPv4; receivers of IPv6 drop it, which
/// the parser does not care about).
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&src_port.to_be_bytes());
    datagram.extend_from_slice(&dst_port.to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

/// A TCP segment with a 20-byte header and the given flags.
pub fn tcp(src_port: u16, dst_port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut segment = Vec::with_capacity(20 + payload.len());
    segment.extend_from_slice(&src_port.to_be_bytes());
    segment.extend_from_slice(&dst_port.to_be_bytes());
    segment.extend_from_slice(&1u32.to_be_bytes());
    segment.extend_from_slice(&0u32.to_be_bytes());
    segment.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    segment.extend_from_slice(payload);
    segment
}

/// An Ethernet/IPv4 ARP packet (1 = request, 2 = reply).
pub fn arp(
    operation: u16,
    sender_mac: Mac,
    sender_ip: [u8; 4],
    target_mac: Mac,
    target_ip: [u8; 4],
) -> Vec<u8> {
    let mut packet = vec![0, 1, 8, 0, 6, 4];
    packet.extend_from_slice(&operation.to_be_bytes());
    packet.extend_from_slice(&sender_mac);
    packet.extend_from_slice(&sender_ip);
    packet.extend_from_slice(&target_mac);
    packet.extend_from_slice(&target_ip);
    packet
}

/// RFC 1071 checksum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 address as the flow key stores it (IPv4-mapped IPv6).
pub fn v4_mapped(ip: [u8; 4]) -> [u8; 16] {
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&ip);
    mapped
}

/// UDP over IPv6 with its checksum, which IPv6 requires (a receiver drops
/// a datagram whose checksum is 0).
pub fn udp6(src: [u8; 16], dst: [u8; 16], src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = udp(src_port, dst_port, payload);
    let mut pseudo = Vec::with_capacity(40 + datagram.len());
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
    pseudo.extend_from_slice(&datagram);
    // 0 means "no checksum"; a computed 0 is sent as its complement.
    let checksum = match internet_checksum(&pseudo) {
        0 => 0xffff,
        sum => sum,
    };
    datagram[6..8].copy_from_slice(&checksum.to_be_bytes());
    datagram
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Both ends of a path, from Ethernet addresses to ports: what the
/// edge-case frames below are addressed with. [`Ends::between`] takes them
/// from two hosts of a test net, so the frames are delivered to the
/// destination's `eth0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src_ip4: [u8; 4],
    pub dst_ip4: [u8; 4],
    pub src_ip6: [u8; 16],
    pub dst_ip6: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
}

impl Ends {
    pub fn between(from: &crate::Host, to: &crate::Host, src_port: u16, dst_port: u16) -> Ends {
        Ends {
            src_mac: from.mac(),
            dst_mac: to.mac(),
            src_ip4: from.ip4().octets(),
            dst_ip4: to.ip4().octets(),
            src_ip6: from.ip6().octets(),
            dst_ip6: to.ip6().octets(),
            src_port,
            dst_port,
        }
    }

    fn ethernet(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        ethernet(self.dst_mac, self.src_mac, ethertype, payload)
    }

    fn ipv4_packet(&self, protocol: u8, options: &[u8], fragment: u16, payload: &[u8]) -> Vec<u8> {
        ipv4(
            self.src_ip4,
            self.dst_ip4,
            protocol,
            options,
            fragment,
            payload,
        )
    }

    fn ipv4_udp_packet(&self, payload: &[u8]) -> Vec<u8> {
        let datagram = udp(self.src_port, self.dst_port, payload);
        self.ipv4_packet(IPPROTO_UDP, &[], 0, &datagram)
    }

    /// A well-formed IPv4/UDP frame (UDP checksum 0, valid for IPv4): the
    /// reference the broken ones below are variations of.
    pub fn ipv4_udp(&self, payload: &[u8]) -> Vec<u8> {
        self.ethernet(ETH_P_IP, &self.ipv4_udp_packet(payload))
    }

    /// IPv4/UDP whose IHL says 3 (12 bytes), less than the 20-byte minimum;
    /// the header checksum is valid for the altered header.
    pub fn ipv4_bad_ihl(&self, payload: &[u8]) -> Vec<u8> {
        let mut packet = self.ipv4_udp_packet(payload);
        packet[0] = 0x43;
        packet[10..12].fill(0);
        let checksum = internet_checksum(&packet[..20]);
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
        self.ethernet(ETH_P_IP, &packet)
    }

    /// IPv4/UDP with a 4-byte option (Router Alert), so IHL is 6 and the
    /// UDP header starts at byte 24 of the packet. Delivered normally.
    pub fn ipv4_options_udp(&self, payload: &[u8]) -> Vec<u8> {
        let datagram = udp(self.src_port, self.dst_port, payload);
        let packet = self.ipv4_packet(IPPROTO_UDP, &[0x94, 4, 0, 0], 0, &datagram);
        self.ethernet(ETH_P_IP, &packet)
    }

    /// A non-first IPv4 fragment (offset 1480 bytes, last fragment) of a
    /// UDP datagram: `payload` is the middle of the datagram, no UDP header
    /// (so no ports) in it.
    pub fn ipv4_later_fragment(&self, payload: &[u8]) -> Vec<u8> {
        let packet = self.ipv4_packet(IPPROTO_UDP, &[], 1480 / 8, payload);
        self.ethernet(ETH_P_IP, &packet)
    }

    /// IPv4 says TCP, but only 8 bytes of the 20-byte TCP header follow
    /// (ports and sequence number; the IP total length agrees).
    pub fn ipv4_tcp_cut_short(&self) -> Vec<u8> {
        let segment = tcp(self.src_port, self.dst_port, 0x02, &[]);
        let packet = self.ipv4_packet(IPPROTO_TCP, &[], 0, &segment[..8]);
        self.ethernet(ETH_P_IP, &packet)
    }

    /// An Ethernet frame that ends after 12 bytes of its IPv4 header.
    pub fn ipv4_cut_in_header(&self) -> Vec<u8> {
        self.ethernet(ETH_P_IP, &self.ipv4_udp_packet(b"cut")[..12])
    }

    /// Only the 14-byte Ethernet header, ethertype IPv4. (The sending veth
    /// does not pad it to the 60-byte minimum.)
    pub fn runt_ipv4(&self) -> Vec<u8> {
        self.ethernet(ETH_P_IP, &[])
    }

    /// [`Ends::ipv4_udp`] behind an 802.1Q tag for VLAN `vid`.
    pub fn vlan_ipv4_udp(&self, vid: u16, payload: &[u8]) -> Vec<u8> {
        vlan_tagged(
            self.dst_mac,
            self.src_mac,
            vid,
            ETH_P_IP,
            &self.ipv4_udp_packet(payload),
        )
    }

    /// A well-formed IPv6/UDP frame with a valid UDP checksum.
    pub fn ipv6_udp(&self, payload: &[u8]) -> Vec<u8> {
        let datagram = self.udp6(payload);
        let packet = ipv6(self.src_ip6, self.dst_ip6, IPPROTO_UDP, &datagram);
        self.ethernet(ETH_P_IPV6, &packet)
    }

    /// IPv6 with hop-by-hop options, then destination options, then a
    /// fragment header (offset 0, last fragment: the whole datagram), then
    /// UDP with a valid checksum: the transport header starts 24 bytes
    /// after the fixed header. Delivered to a UDP socket.
    pub fn ipv6_extension_chain_udp(&self, payload: &[u8]) -> Vec<u8> {
        let datagram = self.udp6(payload);
        let chain = ipv6_ext(
            IPPROTO_DSTOPTS,
            &ipv6_ext(
                IPPROTO_FRAGMENT,
                &ipv6_fragment(IPPROTO_UDP, 0, false, &datagram),
            ),
        );
        let packet = ipv6(self.src_ip6, self.dst_ip6, IPPROTO_HOPOPTS, &chain);
        self.ethernet(ETH_P_IPV6, &packet)
    }

    fn udp6(&self, payload: &[u8]) -> Vec<u8> {
        udp6(
            self.src_ip6,
            self.dst_ip6,
            self.src_port,
            self.dst_port,
            payload,
        )
    }
}

pub const BROADCAST: Mac = [0xff; 6];

/// A broadcast ARP request "who has `target_ip`? tell `sender_ip`" from
/// `eth_src`. The sender fields are free: a spoofing test claims another
/// host's address with them.
pub fn arp_request(
    eth_src: Mac,
    sender_mac: Mac,
    sender_ip: [u8; 4],
    target_ip: [u8; 4],
) -> Vec<u8> {
    let packet = arp(1, sender_mac, sender_ip, [0; 6], target_ip);
    ethernet(BROADCAST, eth_src, ETH_P_ARP, &packet)
}

/// An ARP reply "`sender_ip` is at `sender_mac`" to `target_mac` (the
/// Ethernet destination too), from `eth_src`. Unsolicited, it is the
/// classic ARP spoofing frame.
pub fn arp_reply(
    eth_src: Mac,
    sender_mac: Mac,
    sender_ip: [u8; 4],
    target_mac: Mac,
    target_ip: [u8; 4],
) -> Vec<u8> {
    let packet = arp(2, sender_mac, sender_ip, target_mac, target_ip);
    ethernet(target_mac, eth_src, ETH_P_ARP, &packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends() -> Ends {
        Ends {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip4: [10, 213, 7, 2],
            dst_ip4: [10, 213, 7, 3],
            src_ip6: [0xfd, 0, 2, 0x13, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            dst_ip6: [0xfd, 0, 2, 0x13, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
            src_port: 1000,
            dst_port: 2000,
        }
    }

    /// A header with a valid checksum sums to 0 (complemented: 0).
    fn checksum_ok(header: &[u8]) -> bool {
        internet_checksum(header) == 0
    }

    #[test]
    fn ipv4_frames_have_valid_header_checksums_and_lengths() {
        let ends = ends();
        let frame = ends.ipv4_udp(b"hello");
        assert_eq!(frame.len(), 14 + 20 + 8 + 5);
        assert!(checksum_ok(&frame[14..34]));
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 33);

        let options = ends.ipv4_options_udp(b"x");
        assert_eq!(options[14], 0x46);
        assert!(checksum_ok(&options[14..38]));
        assert_eq!(&options[38..40], &1000u16.to_be_bytes());

        let bad = ends.ipv4_bad_ihl(b"x");
        assert_eq!(bad[14], 0x43);
        assert!(checksum_ok(&bad[14..34]));

        let fragment = ends.ipv4_later_fragment(&[7; 16]);
        assert_eq!(u16::from_be_bytes([fragment[20], fragment[21]]), 185);
        assert!(checksum_ok(&fragment[14..34]));

        let short = ends.ipv4_tcp_cut_short();
        assert_eq!((short.len(), short[23]), (14 + 20 + 8, IPPROTO_TCP));
        assert_eq!(ends.ipv4_cut_in_header().len(), 14 + 12);
        assert_eq!(ends.runt_ipv4().len(), 14);

        let tagged = ends.vlan_ipv4_udp(7, b"v");
        assert_eq!(&tagged[12..18], &[0x81, 0x00, 0x00, 0x07, 0x08, 0x00]);
        assert_eq!(&tagged[18..], &ends.ipv4_udp(b"v")[14..]);
    }

    #[test]
    fn ipv6_chain_walks_to_a_udp_header_with_a_valid_checksum() {
        let ends = ends();
        let frame = ends.ipv6_extension_chain_udp(b"chain");
        let packet = &frame[14..];
        assert_eq!(packet[6], IPPROTO_HOPOPTS);
        assert_eq!(
            u16::from_be_bytes([packet[4], packet[5]]) as usize,
            packet.len() - 40
        );
        let (hbh, dst, frag) = (&packet[40..48], &packet[48..56], &packet[56..64]);
        assert_eq!(
            (hbh[0], dst[0], frag[0]),
            (IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_UDP)
        );
        let datagram = &packet[64..];
        assert_eq!(datagram.len(), 8 + 5);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ends.src_ip6);
        pseudo.extend_from_slice(&ends.dst_ip6);
        pseudo.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
        pseudo.extend_from_slice(datagram);
        assert!(checksum_ok(&pseudo));
    }

    #[test]
    fn arp_frames_carry_the_given_sender() {
        let (attacker, victim) = ([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 2]);
        let request = arp_request(attacker, attacker, [10, 0, 0, 1], [10, 0, 0, 2]);
        assert_eq!(
            (&request[..6], &request[12..14]),
            (&BROADCAST[..], &[8, 6][..])
        );
        assert_eq!(request.len(), 14 + 28);
        assert_eq!(&request[22..28], &attacker);
        let reply = arp_reply(attacker, attacker, [10, 0, 0, 1], victim, [10, 0, 0, 2]);
        assert_eq!(&reply[..6], &victim);
        assert_eq!(u16::from_be_bytes([reply[20], reply[21]]), 2);
        assert_eq!(&reply[28..32], &[10, 0, 0, 1]);
    }
}
