//! Frames for fuzzing the kernel parser: seeds of every kind it tells apart,
//! each knowing where its length, offset and count fields are, and the
//! mutations made of them. Pure functions of a seeded generator, so that a
//! seed replays a run.

use fastrand::Rng;

use crate::frames::{self, Mac, BROADCAST, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6};
use monitor_common::DNS_PORT;

pub const ETH_P_8021AD: u16 = 0x88a8;
/// The parser's bounds (`monitor-ebpf/src/parse.rs`); the seeds go past them.
pub const MAX_VLAN_TAGS: usize = 2;
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// A full-size Ethernet frame, the longest the garbage gets.
pub const MAX_FRAME: usize = 1514;

const DST: Mac = [0x02, 0, 0, 0, 0, 0x0b];
const SRC: Mac = [0x02, 0, 0, 0, 0, 0x0a];
const IP_A: [u8; 4] = [10, 9, 0, 2];
const IP_B: [u8; 4] = [10, 9, 0, 3];
const IP6_A: [u8; 16] = [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const IP6_B: [u8; 16] = [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_NONE: u8 = 59;
/// An IP protocol the parser has no ports for.
const IPPROTO_GRE: u8 = 47;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_MOBILITY: u8 = 135;
const NEXTHDR_HIP: u8 = 139;
const NEXTHDR_SHIM6: u8 = 140;
/// Every extension header the parser walks.
const IPV6_EXTENSIONS: [u8; 8] = [
    frames::IPPROTO_HOPOPTS,
    NEXTHDR_ROUTING,
    frames::IPPROTO_FRAGMENT,
    NEXTHDR_AUTH,
    frames::IPPROTO_DSTOPTS,
    NEXTHDR_MOBILITY,
    NEXTHDR_HIP,
    NEXTHDR_SHIM6,
];
/// Values a protocol or next-header byte is set to besides every
/// extension header: transports, ESP, "no next header" and GRE.
const PROTOCOLS: [u8; 7] = [
    frames::IPPROTO_TCP,
    frames::IPPROTO_UDP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_ESP,
    IPPROTO_NONE,
    IPPROTO_GRE,
];
/// Ethertypes an ethertype field is set to: the ones the parser follows,
/// and some it does not.
const ETHERTYPES: [u16; 9] = [
    ETH_P_IP,
    ETH_P_IPV6,
    ETH_P_ARP,
    ETH_P_8021Q,
    ETH_P_8021AD,
    0x88cc, // LLDP
    0x8847, // MPLS
    0x8864, // PPPoE session
    0x05dc, // an 802.3 length, not an ethertype
];

/// What a seed is: the families of frames the parser handles differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// 0 to `MAX_VLAN_TAGS + 2` 802.1Q/802.1ad tags over IPv4, IPv6, ARP, LLDP.
    VlanStack,
    /// IPv4 with 0 to 40 bytes of options, whole or fragmented (first,
    /// middle, last, DF), over TCP (with options), UDP, ICMP, GRE.
    Ipv4,
    /// IPv6 with 0 to `MAX_IPV6_EXT_HEADERS + 2` extension headers of mixed
    /// types, ending in TCP, UDP, ICMPv6, ESP or "no next header".
    Ipv6Chain,
    /// ARP requests, replies, gratuitous ARP, and wrong hardware or
    /// protocol types, lengths and operations.
    Arp,
    /// Ethertypes the parser does not follow.
    OtherEthertype,
}

/// A well-formed (or deliberately odd) frame and where its fields are.
#[derive(Clone, Debug)]
pub struct Seed {
    pub family: Family,
    pub frame: Vec<u8>,
    fields: Vec<Field>,
}

/// A length, offset, count, version or type field of a seed.
#[derive(Clone, Copy, Debug)]
struct Field {
    at: usize,
    width: Width,
}

#[derive(Clone, Copy, Debug)]
enum Width {
    HighNibble,
    LowNibble,
    Byte,
    Be16,
}

/// Bytes with the fields they hold, offsets relative to their start.
#[derive(Clone, Debug, Default)]
struct Layer {
    bytes: Vec<u8>,
    fields: Vec<Field>,
}

impl Layer {
    fn new(bytes: Vec<u8>, fields: &[(usize, Width)]) -> Self {
        let fields = fields
            .iter()
            .map(|&(at, width)| Field { at, width })
            .collect();
        Self { bytes, fields }
    }

    /// `bytes` are a header followed by `inner`'s bytes (as the builders in
    /// [`frames`] lay them out); `fields` are the header's.
    fn around(bytes: Vec<u8>, fields: &[(usize, Width)], inner: &Layer) -> Self {
        let header_len = bytes.len() - inner.bytes.len();
        let mut layer = Self::new(bytes, fields);
        layer.fields.extend(inner.fields.iter().map(|field| Field {
            at: field.at + header_len,
            ..*field
        }));
        layer
    }
}

/// Every seed, in a fixed order for a given generator state.
pub fn seeds(rng: &mut Rng) -> Vec<Seed> {
    let mut seeds = Vec::new();
    seeds.extend(vlan_stacks(rng));
    seeds.extend(ipv4_variants(rng));
    seeds.extend(ipv6_chains(rng));
    seeds.extend(arp_variants());
    seeds.extend(other_ethertypes(rng));
    seeds
}

fn seed(family: Family, tags: &[u16], ethertype: u16, packet: &Layer) -> Seed {
    let mut header = DST.to_vec();
    header.extend_from_slice(&SRC);
    let mut fields = Vec::new();
    for (vid, tpid) in (1u16..).zip(tags) {
        fields.push((header.len(), Width::Be16));
        header.extend_from_slice(&tpid.to_be_bytes());
        header.extend_from_slice(&vid.to_be_bytes());
    }
    fields.push((header.len(), Width::Be16));
    header.extend_from_slice(&ethertype.to_be_bytes());
    header.extend_from_slice(&packet.bytes);
    let layer = Layer::around(header, &fields, packet);
    Seed {
        family,
        frame: layer.bytes,
        fields: layer.fields,
    }
}

fn vlan_stacks(rng: &mut Rng) -> Vec<Seed> {
    let inner = [
        (ETH_P_IP, ipv4_packet(rng, frames::IPPROTO_UDP, &[], 0)),
        (ETH_P_IP, ipv4_packet(rng, frames::IPPROTO_TCP, &[], 0)),
        (ETH_P_IPV6, ipv6_packet(rng, &[], frames::IPPROTO_UDP)),
        (
            ETH_P_ARP,
            arp_packet(frames::arp(1, SRC, IP_A, [0; 6], IP_B)),
        ),
        (0x88cc, Layer::new(random_bytes(rng, 32..=32), &[])),
    ];
    let mut seeds = Vec::new();
    for depth in 0..=MAX_VLAN_TAGS + 2 {
        // Every order of 802.1Q and 802.1ad tags at this depth.
        for pattern in 0..1u32 << depth {
            let tags: Vec<u16> = (0..depth)
                .map(|i| {
                    if pattern >> i & 1 == 0 {
                        ETH_P_8021Q
                    } else {
                        ETH_P_8021AD
                    }
                })
                .collect();
            for (ethertype, packet) in &inner {
                seeds.push(seed(Family::VlanStack, &tags, *ethertype, packet));
            }
        }
    }
    seeds
}

fn ipv4_variants(rng: &mut Rng) -> Vec<Seed> {
    // Flags and offset as on the wire: whole, first (MF), middle (MF and an
    // offset), last (an offset), don't-fragment.
    const FRAGMENTS: [u16; 5] = [0, 0x2000, 0x2000 | 185, 370, 0x4000];
    let protocols = [
        frames::IPPROTO_TCP,
        frames::IPPROTO_UDP,
        IPPROTO_ICMP,
        IPPROTO_GRE,
    ];
    let mut seeds = Vec::new();
    for options_len in (0..=40).step_by(4) {
        for fragment in FRAGMENTS {
            for protocol in protocols {
                let options = ipv4_options(rng, options_len);
                let packet = ipv4_packet(rng, protocol, &options, fragment);
                seeds.push(seed(Family::Ipv4, &[], ETH_P_IP, &packet));
            }
        }
    }
    seeds
}

/// `len` bytes of options: NOPs, a Router Alert, a Record Route whose
/// pointer and length may lie, or random bytes, ended by an End of List.
fn ipv4_options(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut options = Vec::with_capacity(len);
    while options.len() < len {
        let room = len - options.len();
        match rng.u8(..4) {
            0 => options.push(1),
            1 if room >= 4 => options.extend_from_slice(&[0x94, 4, 0, 0]),
            2 if room >= 3 => {
                let size = rng.usize(3..=room);
                options.extend_from_slice(&[7, size as u8, 4]);
                options.extend(std::iter::repeat_n(0, size - 3));
            }
            _ => options.push(rng.u8(..)),
        }
    }
    if let Some(last) = options.last_mut() {
        *last = 0;
    }
    options
}

fn ipv4_packet(rng: &mut Rng, protocol: u8, options: &[u8], fragment: u16) -> Layer {
    let transport = transport(rng, protocol);
    let packet = frames::ipv4(IP_A, IP_B, protocol, options, fragment, &transport.bytes);
    Layer::around(
        packet,
        &[
            (0, Width::HighNibble), // version
            (0, Width::LowNibble),  // header length
            (2, Width::Be16),       // total length
            (6, Width::Be16),       // flags and fragment offset
            (9, Width::Byte),       // protocol
        ],
        &transport,
    )
}

/// A transport header (TCP with 0 to 40 bytes of options) and a payload.
fn transport(rng: &mut Rng, protocol: u8) -> Layer {
    let payload = random_bytes(rng, ..=64);
    let (mut src_port, mut dst_port) = (rng.u16(1..), rng.u16(1..));
    // One in four talks DNS, whose every packet the programs send up.
    match rng.u8(..8) {
        0 => src_port = DNS_PORT,
        1 => dst_port = DNS_PORT,
        _ => {}
    }
    match protocol {
        frames::IPPROTO_TCP => {
            let mut segment = frames::tcp(src_port, dst_port, rng.u8(..), &payload);
            let options_len = 4 * rng.usize(..=10);
            segment.splice(20..20, std::iter::repeat_n(1, options_len));
            segment[12] = (((20 + options_len) / 4) as u8) << 4;
            Layer::new(segment, &[(12, Width::HighNibble), (13, Width::Byte)])
        }
        frames::IPPROTO_UDP => Layer::new(
            frames::udp(src_port, dst_port, &payload),
            &[(4, Width::Be16)],
        ),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let mut message = vec![8, 0, 0, 0, 0, 1, 0, 1];
            message.extend_from_slice(&payload);
            Layer::new(message, &[(0, Width::Byte)])
        }
        _ => Layer::new(payload, &[]),
    }
}

fn ipv6_chains(rng: &mut Rng) -> Vec<Seed> {
    const CHAINS_PER_LENGTH: usize = 6;
    let finals = [
        frames::IPPROTO_TCP,
        frames::IPPROTO_UDP,
        IPPROTO_ICMPV6,
        IPPROTO_ESP,
        IPPROTO_NONE,
    ];
    let mut seeds = Vec::new();
    for length in 0..=MAX_IPV6_EXT_HEADERS + 2 {
        for _ in 0..CHAINS_PER_LENGTH {
            let chain: Vec<u8> = (0..length)
                .map(|_| IPV6_EXTENSIONS[rng.usize(..IPV6_EXTENSIONS.len())])
                .collect();
            for last in finals {
                let packet = ipv6_packet(rng, &chain, last);
                seeds.push(seed(Family::Ipv6Chain, &[], ETH_P_IPV6, &packet));
            }
        }
    }
    seeds
}

/// IPv6 with the extension headers `chain`, then `last`.
fn ipv6_packet(rng: &mut Rng, chain: &[u8], last: u8) -> Layer {
    let mut inner = match last {
        IPPROTO_NONE => Layer::default(),
        protocol => transport(rng, protocol),
    };
    for (i, &kind) in chain.iter().enumerate().rev() {
        let next = chain.get(i + 1).copied().unwrap_or(last);
        let header = extension_header(rng, kind, next, &inner.bytes);
        inner = Layer::around(header, &extension_fields(kind), &inner);
    }
    let first = chain.first().copied().unwrap_or(last);
    let packet = frames::ipv6(IP6_A, IP6_B, first, &inner.bytes);
    Layer::around(
        packet,
        &[
            (0, Width::HighNibble), // version
            (4, Width::Be16),       // payload length
            (6, Width::Byte),       // next header
        ],
        &inner,
    )
}

/// An extension header of `kind` and random legal size, then `rest`.
fn extension_header(rng: &mut Rng, kind: u8, next: u8, rest: &[u8]) -> Vec<u8> {
    let mut header = match kind {
        frames::IPPROTO_FRAGMENT => {
            // Mostly first fragments, whose transport header follows.
            let offset = if rng.u8(..4) == 0 {
                rng.u16(1..8192)
            } else {
                0
            };
            frames::ipv6_fragment(next, offset, rng.bool(), &[])
        }
        NEXTHDR_AUTH => {
            // Length in 4-byte units, minus 2.
            let len = rng.u8(1..=3);
            let mut header = vec![next, len];
            let body = (usize::from(len) + 2) * 4 - 2;
            header.extend(random_bytes(rng, body..=body));
            header
        }
        _ => {
            // Length in 8-byte units, minus 1; padded with one PadN option.
            let len = rng.u8(..=2);
            let size = (usize::from(len) + 1) * 8;
            let mut header = vec![next, len, 1, (size - 4) as u8];
            header.resize(size, 0);
            header
        }
    };
    header.extend_from_slice(rest);
    header
}

fn extension_fields(kind: u8) -> Vec<(usize, Width)> {
    let mut fields = vec![(0, Width::Byte), (1, Width::Byte)];
    if kind == frames::IPPROTO_FRAGMENT {
        fields.push((2, Width::Be16));
    }
    fields
}

fn arp_packet(bytes: Vec<u8>) -> Layer {
    Layer::new(
        bytes,
        &[
            (0, Width::Be16), // hardware type
            (2, Width::Be16), // protocol type
            (4, Width::Byte), // hardware address length
            (5, Width::Byte), // protocol address length
            (6, Width::Be16), // operation
        ],
    )
}

fn arp_variants() -> Vec<Seed> {
    let request = frames::arp(1, SRC, IP_A, [0; 6], IP_B);
    let mut packets = vec![
        request.clone(),
        frames::arp(2, SRC, IP_A, DST, IP_B),
        // Gratuitous: a request and a reply for the sender's own address.
        frames::arp(1, SRC, IP_A, [0; 6], IP_A),
        frames::arp(2, SRC, IP_A, BROADCAST, IP_A),
    ];
    let odd_values: [(usize, &[u8]); 9] = [
        (0, &[0, 6]),       // IEEE 802 hardware
        (0, &[0xff, 0xff]), // no such hardware
        (2, &[0x86, 0xdd]), // IPv6 protocol addresses
        (2, &[0, 0]),
        (4, &[0]), // hardware address length
        (4, &[255]),
        (5, &[16]),   // protocol address length
        (6, &[0, 3]), // RARP request
        (6, &[0xff, 0xff]),
    ];
    for (at, value) in odd_values {
        let mut packet = request.clone();
        packet[at..at + value.len()].copy_from_slice(value);
        packets.push(packet);
    }
    // Padded to the 60-byte Ethernet minimum, as a real NIC sends it.
    let mut padded = request;
    padded.resize(46, 0);
    packets.push(padded);
    packets
        .into_iter()
        .map(|packet| seed(Family::Arp, &[], ETH_P_ARP, &arp_packet(packet)))
        .collect()
}

fn other_ethertypes(rng: &mut Rng) -> Vec<Seed> {
    let mut seeds = Vec::new();
    for ethertype in [0x88cc, 0x88b5, 0x8847, 0x8864, 0x0000, 0x05dc, 0xffff] {
        for len in [0, 1, 2, 46, 100] {
            let body = Layer::new(random_bytes(rng, len..=len), &[]);
            seeds.push(seed(Family::OtherEthertype, &[], ethertype, &body));
        }
    }
    seeds
}

impl Seed {
    /// The seed cut after each of its bytes but the last: `0..len` bytes.
    pub fn truncations(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.frame.len()).map(|len| &self.frame[..len])
    }

    /// The seed with one field set to another telling value, for every
    /// field and value: the boundaries of the field and of the frame.
    pub fn field_mutations(&self, rng: &mut Rng) -> Vec<Vec<u8>> {
        let mut mutants = Vec::new();
        for field in &self.fields {
            let current = field.read(&self.frame);
            for value in field.telling_values(current, self.frame.len(), rng) {
                let mut frame = self.frame.clone();
                field.write(&mut frame, value);
                mutants.push(frame);
            }
        }
        mutants
    }

    /// One field set to one random telling value.
    fn mutate_field(&self, frame: &mut [u8], rng: &mut Rng) {
        if self.fields.is_empty() {
            return;
        }
        let field = self.fields[rng.usize(..self.fields.len())];
        if field.at >= frame.len() {
            return;
        }
        let values = field.telling_values(field.read(frame), frame.len(), rng);
        if !values.is_empty() {
            field.write(frame, values[rng.usize(..values.len())]);
        }
    }
}

impl Field {
    fn read(&self, frame: &[u8]) -> u16 {
        let byte = u16::from(frame[self.at]);
        match self.width {
            Width::HighNibble => byte >> 4,
            Width::LowNibble => byte & 0x0f,
            Width::Byte => byte,
            Width::Be16 => byte << 8 | u16::from(*frame.get(self.at + 1).unwrap_or(&0)),
        }
    }

    fn write(&self, frame: &mut [u8], value: u16) {
        let byte = &mut frame[self.at];
        match self.width {
            Width::HighNibble => *byte = (*byte & 0x0f) | (value as u8) << 4,
            Width::LowNibble => *byte = (*byte & 0xf0) | (value as u8 & 0x0f),
            Width::Byte => *byte = value as u8,
            Width::Be16 => {
                let [high, low] = value.to_be_bytes();
                *byte = high;
                if let Some(next) = frame.get_mut(self.at + 1) {
                    *next = low;
                }
            }
        }
    }

    /// Values other than `current` that take the parser down another path:
    /// every nibble; small counts, protocols and next headers for a byte;
    /// header sizes, the frame's own length and the extremes for a 16-bit
    /// length, off by one either way, and the ethertypes.
    fn telling_values(&self, current: u16, frame_len: usize, rng: &mut Rng) -> Vec<u16> {
        let mut values: Vec<u16> = match self.width {
            Width::HighNibble | Width::LowNibble => (0..16).collect(),
            Width::Byte => {
                let mut values: Vec<u16> = (0..=8).collect();
                values.extend(
                    PROTOCOLS
                        .iter()
                        .chain(&IPV6_EXTENSIONS)
                        .map(|&p| u16::from(p)),
                );
                values.extend([0x7f, 0x80, 0xfe, 0xff, rng.u16(..256)]);
                values.extend([current.wrapping_sub(1), current + 1].map(|v| v & 0xff));
                values
            }
            Width::Be16 => {
                let len = frame_len as u16;
                let mut values = vec![0, 1, 7, 8, 19, 20, 21, 39, 40, 41];
                values.extend([
                    len.wrapping_sub(1),
                    len,
                    len.wrapping_add(1),
                    0x7fff,
                    0x8000,
                    0xfffe,
                    0xffff,
                ]);
                values.extend(ETHERTYPES);
                values.extend([
                    current.wrapping_sub(1),
                    current.wrapping_add(1),
                    current.wrapping_mul(2),
                    current / 2,
                    rng.u16(..),
                ]);
                values
            }
        };
        values.sort_unstable();
        values.dedup();
        values.retain(|&value| value != current);
        values
    }
}

/// `frame` with 1 to 4 bits flipped, mostly in the first 96 bytes, where
/// the headers are.
pub fn bit_flips(frame: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut frame = frame.to_vec();
    if frame.is_empty() {
        return frame;
    }
    for _ in 0..rng.usize(1..=4) {
        let at = if rng.u8(..5) == 0 {
            rng.usize(..frame.len())
        } else {
            rng.usize(..frame.len().min(96))
        };
        frame[at] ^= 1 << rng.u8(..8);
    }
    frame
}

/// One of: the head of `a` joined to the tail of `b`; random bytes
/// inserted into `a`, deleted from it, or written over part of it.
pub fn splice(a: &[u8], b: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut frame = a.to_vec();
    let at = rng.usize(..=frame.len());
    match rng.u8(..4) {
        0 => {
            frame.truncate(at);
            frame.extend_from_slice(&b[rng.usize(..=b.len())..]);
        }
        1 => {
            let inserted = random_bytes(rng, 1..=8);
            frame.splice(at..at, inserted);
        }
        2 => {
            let end = (at + rng.usize(1..=8)).min(frame.len());
            frame.drain(at..end);
        }
        _ => {
            let end = (at + rng.usize(1..=16)).min(frame.len());
            rng.fill(&mut frame[at..end]);
        }
    }
    frame.truncate(MAX_FRAME);
    frame
}

/// Random bytes of a random length up to a full frame; half of them with
/// a followed ethertype, and then often an IPv4 or IPv6 version nibble.
pub fn garbage(rng: &mut Rng) -> Vec<u8> {
    let mut frame = random_bytes(rng, ..=MAX_FRAME);
    if frame.len() > 14 && rng.bool() {
        let ethertype = [ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_8021Q][rng.usize(..4)];
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        if rng.bool() {
            frame[14] = [0x45, 0x4f, 0x60][rng.usize(..3)];
        }
    }
    frame
}

/// A seed put through 1 to 4 of: a field mutation, bit flips, a splice
/// with another seed, a truncation.
pub fn mixed(seeds: &[Seed], rng: &mut Rng) -> Vec<u8> {
    let seed = &seeds[rng.usize(..seeds.len())];
    let mut frame = seed.frame.clone();
    for _ in 0..rng.usize(1..=4) {
        match rng.u8(..4) {
            0 => seed.mutate_field(&mut frame, rng),
            1 => frame = bit_flips(&frame, rng),
            2 => frame = splice(&frame, &seeds[rng.usize(..seeds.len())].frame, rng),
            _ => frame.truncate(rng.usize(..=frame.len())),
        }
    }
    frame
}

fn random_bytes(rng: &mut Rng, len: impl std::ops::RangeBounds<usize>) -> Vec<u8> {
    let mut bytes = vec![0; rng.usize(len)];
    rng.fill(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_cover_every_family_and_depth_and_are_reproducible() {
        let seeds = seeds(&mut Rng::with_seed(7));
        let again = super::seeds(&mut Rng::with_seed(7));
        assert!(seeds.iter().zip(&again).all(|(a, b)| a.frame == b.frame));
        for family in [
            Family::VlanStack,
            Family::Ipv4,
            Family::Ipv6Chain,
            Family::Arp,
            Family::OtherEthertype,
        ] {
            assert!(seeds.iter().any(|s| s.family == family), "{family:?}");
        }
        // The deepest VLAN stack and IPv6 chain go two past the parser's bounds.
        let tags = |frame: &[u8]| {
            (0..)
                .take_while(|i| {
                    matches!(
                        u16::from_be_bytes([frame[12 + 4 * i], frame[13 + 4 * i]]),
                        ETH_P_8021Q | ETH_P_8021AD
                    )
                })
                .count()
        };
        let deepest = seeds.iter().map(|s| tags(&s.frame)).max();
        assert_eq!(deepest, Some(MAX_VLAN_TAGS + 2));
    }

    #[test]
    fn fields_point_at_what_they_name() {
        let mut rng = Rng::with_seed(1);
        let packet = ipv4_packet(&mut rng, frames::IPPROTO_UDP, &[1, 1, 1, 0], 0x2000);
        let seed = seed(Family::Ipv4, &[ETH_P_8021Q], ETH_P_IP, &packet);
        let read: Vec<u16> = seed.fields.iter().map(|f| f.read(&seed.frame)).collect();
        let ip_len = seed.frame.len() - 18;
        let udp_len = ip_len - 24;
        // TPID, ethertype, version, IHL, total length, fragment, protocol, UDP length.
        assert_eq!(
            read,
            [
                ETH_P_8021Q,
                ETH_P_IP,
                4,
                6,
                ip_len as u16,
                0x2000,
                u16::from(frames::IPPROTO_UDP),
                udp_len as u16
            ]
        );

        let packet = ipv6_packet(
            &mut rng,
            &[frames::IPPROTO_HOPOPTS, NEXTHDR_AUTH],
            IPPROTO_NONE,
        );
        let chain = super::seed(Family::Ipv6Chain, &[], ETH_P_IPV6, &packet);
        let read: Vec<u16> = chain.fields.iter().map(|f| f.read(&chain.frame)).collect();
        assert_eq!(
            read[..4],
            [ETH_P_IPV6, 6, (chain.frame.len() - 54) as u16, 0]
        );
        // Hop-by-hop says AH follows; AH says nothing does.
        assert_eq!(read[4], u16::from(NEXTHDR_AUTH));
        let hop_len = (usize::from(read[5]) + 1) * 8;
        assert_eq!(chain.frame[54 + hop_len], IPPROTO_NONE);
    }

    #[test]
    fn mutations_change_the_frame_and_stay_in_bounds() {
        let mut rng = Rng::with_seed(3);
        let seeds = seeds(&mut rng);
        for seed in seeds.iter().step_by(17) {
            for mutant in seed.field_mutations(&mut rng) {
                assert_eq!(mutant.len(), seed.frame.len());
                assert_ne!(mutant, seed.frame);
            }
            assert_eq!(seed.truncations().count(), seed.frame.len());
        }
        for _ in 0..1000 {
            assert!(mixed(&seeds, &mut rng).len() <= MAX_FRAME);
            assert!(garbage(&mut rng).len() <= MAX_FRAME);
        }
    }
}
