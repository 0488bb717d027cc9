//! The wire between the kernel programs (`monitor-ebpf`) and the agent (`monitor`).
//!
//! Every type here is `#[repr(C)]` with fixed-width fields and explicit padding,
//! so both sides agree on the layout byte for byte; the size assertions below
//! catch a field added on one side only.
//!
//! Byte order: IP addresses and MAC addresses are kept as on the wire (network
//! byte order); ports, counters, lengths and timestamps are in host byte order.
//! IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) in 16 bytes, so one
//! key type serves both families.
#![no_std]

use core::mem::size_of;

/// Per-flow statistics of IPv6 flows: `LRU_HASH<FlowKey, FlowStats>`, one
/// value per flow that every CPU adds to atomically.
pub const FLOWS_MAP: &str = "FLOWS";
/// Per-flow statistics of IPv4 flows: `LRU_HASH<FlowKeyV4, FlowStats>`,
/// beside [`FLOWS_MAP`] with the same capacity: a 16-byte key hashes and
/// compares in less time than a 40-byte one, on every packet.
pub const FLOWS_V4_MAP: &str = "FLOWS_V4";
/// Ring buffer carrying [`EventHeader`]-prefixed records.
pub const EVENTS_MAP: &str = "EVENTS";
/// `PERCPU_ARRAY<u64>` indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// `HASH<u32, u8>`: the watched veths, whose packets were counted when they
/// entered the host. A packet leaving through a watched veth that came in
/// through one of these is not counted again, so container-to-container
/// traffic is counted once.
pub const COUNTED_IFACES_MAP: &str = "COUNTED_IFACES";
/// Veths [`COUNTED_IFACES_MAP`] holds.
pub const COUNTED_IFACES_CAPACITY: u32 = 4096;
/// `ARRAY<u32>` of [`COUNTED_SLOTS_LEN`] slots: a direct-mapped copy of
/// [`COUNTED_IFACES_MAP`] that `to_container` reads first, an array
/// lookup the verifier inlines where the hash map costs a helper call and
/// a hash. Slot [`counted_slot`]`(id)` holds `id` when that one counted
/// veth maps there, [`COUNTED_SLOT_SHARED`] when several do (the packet's
/// veth is then looked up in the hash map), 0 when none does.
pub const COUNTED_SLOTS_MAP: &str = "COUNTED_SLOTS";
/// `ARRAY<TickClock>`, one entry: how the programs turn the kernel's
/// tick count (`jiffies`) into CLOCK_MONOTONIC, for what a tick's
/// precision is enough (a flow's latest packet, the enforce lease). The
/// verifier inlines `bpf_jiffies64` into a load, where a clock read is a
/// helper call, the most a counted packet paid after its flow's lookup.
/// The agent measures the tick once, after the load and before it
/// attaches anything (the `tick_probe` program); until then, and where it
/// could not, the entry is zero and the programs read the exact clock.
pub const TICK_CLOCK_MAP: &str = "TICK_CLOCK";

/// [`TICK_CLOCK_MAP`]'s entry: CLOCK_MONOTONIC at the timer tick that
/// made `jiffies` what it is is `jiffies * tick_ns + offset_ns` (wrapping:
/// `offset_ns` is negative as often as not). The kernel advances both by
/// the same `TICK_NSEC` at each tick, so the offset holds for its uptime.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickClock {
    /// Nanoseconds a tick (the kernel's `TICK_NSEC`); 0 before the agent
    /// measured it.
    pub tick_ns: u64,
    pub offset_ns: u64,
}

impl TickClock {
    /// CLOCK_MONOTONIC, in ns, of the tick that set `jiffies`.
    #[inline(always)]
    pub fn at(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.tick_ns)
            .wrapping_add(self.offset_ns)
    }
}
/// Slots of [`COUNTED_SLOTS_MAP`]: twice the veths crossmon watches.
pub const COUNTED_SLOTS_LEN: u32 = 1 << COUNTED_SLOT_BITS;
const COUNTED_SLOT_BITS: u32 = 13;
const _: () = assert!(COUNTED_SLOTS_LEN >= 2 * COUNTED_IFACES_CAPACITY);
/// A slot that several counted veths map to.
pub const COUNTED_SLOT_SHARED: u32 = u32::MAX;

/// The slot of veth id `id` in [`COUNTED_SLOTS_MAP`]: Fibonacci hashing,
/// which gives consecutive ifindexes (a namespace's veths) distinct slots.
pub const fn counted_slot(id: u32) -> u32 {
    id.wrapping_mul(0x9E37_79B9) >> (32 - COUNTED_SLOT_BITS)
}

/// Name of the global holding the number of payload bytes captured per sample
/// (0 disables payload sampling; values above [`MAX_CAPTURE`] are clamped).
pub const GLOBAL_PAYLOAD_BYTES: &str = "PAYLOAD_BYTES";
/// Name of the global holding how many payload-carrying packets of each flow
/// are sampled.
pub const GLOBAL_PAYLOAD_PACKETS: &str = "PAYLOAD_PACKETS";
/// Name of the global holding N of the 1-in-N random packet-head samples (0 = off).
pub const GLOBAL_SAMPLE_RATE: &str = "SAMPLE_RATE";
/// Name of the global that switches new-flow events on (1) or off (0).
pub const GLOBAL_NEW_FLOW_EVENTS: &str = "NEW_FLOW_EVENTS";
/// Name of the global that switches DNS events on (1) or off (0): every
/// TCP or UDP packet to or from port 53 with a payload, its first
/// [`MAX_CAPTURE`] payload bytes.
pub const GLOBAL_DNS_EVENTS: &str = "DNS_EVENTS";
/// Name of the global that holds the event ring's size in bytes
/// (`--ring-bytes`): the programs tell when a quarter of the ring waits
/// without asking the ring its size, a helper call per record.
pub const GLOBAL_RING_BYTES: &str = "RING_BYTES";
/// Name of the global OR-ed into every ifindex the programs read (the
/// veth's and the one a packet came in through): 0 in the agent's own
/// network namespace, [`veth_id`]`(tag, 0)` in the instance loaded for
/// another one (an overlay network's sandbox), whose ifindexes may equal
/// the host's. Every map keyed by interface holds these ids.
pub const GLOBAL_NETNS_TAG: &str = "NETNS_TAG";
/// Where the namespace tag sits in a veth id: ifindexes of a sandbox
/// namespace stay below 2^24 (16M interfaces created in it).
pub const NETNS_TAG_SHIFT: u32 = 24;

/// The id of interface `ifindex` of the namespace tagged `tag` (0: the
/// agent's own), as the programs key it.
pub const fn veth_id(tag: u8, ifindex: u32) -> u32 {
    ((tag as u32) << NETNS_TAG_SHIFT) | ifindex
}

/// The namespace tag and the ifindex in that namespace of a [`veth_id`].
pub const fn veth_id_parts(id: u32) -> (u8, u32) {
    (
        (id >> NETNS_TAG_SHIFT) as u8,
        id & ((1 << NETNS_TAG_SHIFT) - 1),
    )
}

/// `LRU_PERCPU_HASH<FlowKey, u64>`: TCP segments retransmitted, by flow,
/// from the `tcp:tcp_retransmit_skb` tracepoint.
pub const RETRANSMITS_MAP: &str = "RETRANSMITS";
/// Flows [`RETRANSMITS_MAP`] holds; the least recently used go first.
pub const RETRANSMITS_CAPACITY: u32 = 16_384;
/// The tracepoint the retransmission program attaches to.
pub const TRACEPOINT_TCP_RETRANSMIT: (&str, &str) = ("tcp", "tcp_retransmit_skb");
/// Globals holding the offsets of `tcp_retransmit_skb`'s fields, by the
/// field's name in the event's format file. Only fields every kernel has
/// (`family` came in 5.16): the IPv6 ones hold IPv4 addresses IPv4-mapped.
pub const RETRANSMIT_FIELDS: [(&str, &str); 4] = [
    ("RETRANSMIT_SPORT", "sport"),
    ("RETRANSMIT_DPORT", "dport"),
    ("RETRANSMIT_SADDR_V6", "saddr_v6"),
    ("RETRANSMIT_DADDR_V6", "daddr_v6"),
];

/// `LRU_PERCPU_HASH<DropKey, u64>`: packets the kernel freed as dropped
/// (`skb:kfree_skb`), by addresses and reason.
pub const DROPS_MAP: &str = "DROPS";
pub const DROPS_CAPACITY: u32 = 16_384;
/// The tracepoint the drop program attaches to.
pub const TRACEPOINT_KFREE_SKB: (&str, &str) = ("skb", "kfree_skb");
/// Globals of the drop program: offsets of `kfree_skb`'s fields in its
/// record (by field name), and of `struct sk_buff`'s fields (from BTF).
pub const DROP_FIELDS: [(&str, &str); 3] = [
    ("DROP_SKBADDR", "skbaddr"),
    ("DROP_PROTOCOL", "protocol"),
    ("DROP_REASON", "reason"),
];
pub const GLOBAL_SKB_HEAD: &str = "SKB_HEAD";
pub const GLOBAL_SKB_NETWORK_HEADER: &str = "SKB_NETWORK_HEADER";
/// A [`DROP_FIELDS`] offset for a field the kernel's record lacks
/// (`reason` before 5.17).
pub const NO_FIELD: u32 = u32::MAX;

/// What a dropped packet was: its addresses (IPv4-mapped for IPv4) and
/// the kernel's drop reason (0 where the kernel gives none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// An `enum skb_drop_reason` value, named by the event's format.
    pub reason: u32,
    /// 4 or 6.
    pub ip_version: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<DropKey>() == 40);

impl DropKey {
    pub const ZERO: DropKey = DropKey {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        reason: 0,
        ip_version: 0,
        _pad: [0; 3],
    };
}

/// Largest number of bytes one capture event can carry.
pub const MAX_CAPTURE: usize = 512;
/// Default ring buffer size (bytes, a power of two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 22;
/// Default flow map capacity.
pub const DEFAULT_FLOW_CAPACITY: u32 = 65_536;
/// Default of [`GLOBAL_PAYLOAD_BYTES`]: the programs' initial value and the
/// agent's `--payload-bytes`, one number for both.
pub const DEFAULT_PAYLOAD_BYTES: u32 = 128;
/// Default of [`GLOBAL_PAYLOAD_PACKETS`] (`--payload-packets`).
pub const DEFAULT_PAYLOAD_PACKETS: u32 = 2;
/// Default of [`GLOBAL_SAMPLE_RATE`] (`--sample-rate`): off.
pub const DEFAULT_SAMPLE_RATE: u32 = 0;
/// Default of [`GLOBAL_NEW_FLOW_EVENTS`] (`--new-flow-events`): on.
pub const DEFAULT_NEW_FLOW_EVENTS: u32 = 1;
/// Default of [`GLOBAL_DNS_EVENTS`] (`--dns`): on.
pub const DEFAULT_DNS_EVENTS: u32 = 1;
/// The DNS port, whose packets are all sampled (not only a flow's first).
pub const DNS_PORT: u16 = 53;

/// IP protocol numbers the programs parse beyond the IP header.
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
    /// What a client sends only once its connection went past the SYN: a
    /// SYN after any of them opens another connection
    /// (`FlowStats::connections`).
    pub const PAST_SYN: u8 = ACK | FIN | RST;
}

/// Identity of a unidirectional flow: packets travelling A->B and B->A are
/// two flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address, network byte order, IPv4-mapped for IPv4.
    pub src_addr: [u8; 16],
    /// Destination address, network byte order, IPv4-mapped for IPv4.
    pub dst_addr: [u8; 16],
    /// Source port (TCP/UDP), 0 for other protocols and non-first fragments.
    pub src_port: u16,
    /// Destination port (TCP/UDP), 0 for other protocols and non-first fragments.
    pub dst_port: u16,
    /// IP protocol number (for IPv6: the upper-layer protocol after the
    /// extension headers).
    pub protocol: u8,
    /// 4 or 6.
    pub ip_version: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

impl FlowKey {
    /// Every byte zero, padding included: maps hash raw bytes, so keys are
    /// built from this and never left partly uninitialised.
    pub const ZERO: FlowKey = FlowKey {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        protocol: 0,
        ip_version: 0,
        _pad: [0; 2],
    };

    /// An IPv4 flow, its addresses stored IPv4-mapped as the programs do.
    pub const fn ipv4(
        src: [u8; 4],
        src_port: u16,
        dst: [u8; 4],
        dst_port: u16,
        protocol: u8,
    ) -> FlowKey {
        const fn mapped(a: [u8; 4]) -> [u8; 16] {
            [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ]
        }
        FlowKey {
            src_addr: mapped(src),
            dst_addr: mapped(dst),
            src_port,
            dst_port,
            protocol,
            ip_version: 4,
            _pad: [0; 2],
        }
    }

    /// The flow of the answers: addresses and ports swapped.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ..*self
        }
    }
}

/// [`FlowKey`] of an IPv4 flow as [`FLOWS_V4_MAP`] keys it: the same
/// fields, addresses in 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKeyV4 {
    /// Network byte order.
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// Padding in scalars: an array of three zero bytes becomes a call to
    /// a byte-at-a-time `memset` in the programs.
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(size_of::<FlowKeyV4>() == 16);

impl FlowKeyV4 {
    pub const ZERO: FlowKeyV4 = FlowKeyV4 {
        src_addr: [0; 4],
        dst_addr: [0; 4],
        src_port: 0,
        dst_port: 0,
        protocol: 0,
        _pad: 0,
        _pad2: 0,
    };

    /// The key of `key`'s flow in [`FLOWS_V4_MAP`], when it is an IPv4 one
    /// (IPv4-mapped addresses, version 4).
    #[inline(always)]
    pub fn narrow(key: &FlowKey) -> Option<FlowKeyV4> {
        let mapped = |a: &[u8; 16]| a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        (key.ip_version == 4 && mapped(&key.src_addr) && mapped(&key.dst_addr))
            .then(|| Self::of_mapped(key))
    }

    /// [`narrow`](Self::narrow) of a key whose addresses the caller knows
    /// to be IPv4-mapped: the last four bytes of each, unchecked.
    #[inline(always)]
    pub fn of_mapped(key: &FlowKey) -> FlowKeyV4 {
        let ([.., s0, s1, s2, s3], [.., d0, d1, d2, d3]) = (key.src_addr, key.dst_addr);
        FlowKeyV4 {
            src_addr: [s0, s1, s2, s3],
            dst_addr: [d0, d1, d2, d3],
            src_port: key.src_port,
            dst_port: key.dst_port,
            protocol: key.protocol,
            _pad: 0,
            _pad2: 0,
        }
    }

    /// The flow's [`FlowKey`], as the rest of crossmon names flows.
    pub const fn widen(&self) -> FlowKey {
        FlowKey::ipv4(
            self.src_addr,
            self.src_port,
            self.dst_addr,
            self.dst_port,
            self.protocol,
        )
    }
}

/// Where a packet was counted, relative to the container behind the veth.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the container (TC ingress of the host-side veth).
    FromContainer = 0,
    /// Delivered to the container (TC egress of the host-side veth).
    ToContainer = 1,
}

impl Direction {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::FromContainer),
            1 => Some(Self::ToContainer),
            _ => None,
        }
    }

    /// `from_container` or `to_container`, as the API and logs name it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::FromContainer => "from_container",
            Self::ToContainer => "to_container",
        }
    }
}

/// Statistics of one flow, in its one map entry that every CPU adds to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    /// Sum of IP total lengths (header + payload), as NetFlow counts octets.
    pub bytes: u64,
    /// CLOCK_MONOTONIC of the flow's first packet.
    pub first_seen_ns: u64,
    /// CLOCK_MONOTONIC of the flow's latest packet, to a timer tick
    /// (see [`TICK_CLOCK_MAP`]).
    pub last_seen_ns: u64,
    /// SYN without ACK.
    pub syn: u32,
    pub syn_ack: u32,
    pub rst: u32,
    pub fin: u32,
    /// OR of the TCP flags of every packet since the flow's latest
    /// connection opened (see [`Self::connections`]), of every packet
    /// where it opened none.
    pub tcp_flags: u8,
    /// Payload samples already sent to user space.
    pub payload_samples: u8,
    /// A [`Direction`] value.
    pub direction: u8,
    pub _pad: u8,
    /// Interface (host-side veth) where the flow was counted.
    pub ifindex: u32,
    /// TCP connections the flow opened as their client: a SYN without ACK
    /// opens one where the flow had none, or where its latest one went
    /// past its SYN (an ACK, FIN or RST from this side), and starts
    /// [`Self::tcp_flags`] over. A client back on the ports of a
    /// connection whose flow is still kept counts into that flow; this
    /// tells its connections apart, which [`Self::syn`] cannot (a SYN
    /// retransmitted counts there too).
    pub connections: u32,
    /// Of [`Self::connections`], those whose handshake the client
    /// completed: its first ACK after the SYN that opened each.
    pub handshakes: u32,
}
const _: () = assert!(size_of::<FlowStats>() == 64);

impl FlowStats {
    /// Where the flow was counted. A byte that is no [`Direction`] (never
    /// written by the programs) reads as sent by the container, the side
    /// the agent names flows from.
    pub fn direction(&self) -> Direction {
        Direction::from_u8(self.direction).unwrap_or(Direction::FromContainer)
    }

    /// Whether a watched container sent the flow (counted at its veth's
    /// TC ingress), as opposed to received it.
    pub fn from_container(&self) -> bool {
        Direction::from_u8(self.direction) == Some(Direction::FromContainer)
    }
}

/// Indexes of the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// IP packets (skbs) the programs counted into a flow; a GSO packet is
    /// one here and its segment count in the flow.
    Packets = 0,
    /// Frames that are neither IPv4, IPv6 nor ARP.
    NonIp = 1,
    /// Frames whose headers are truncated or inconsistent (passed on unchanged).
    Malformed = 2,
    /// Flow map updates that failed (the packet still passed).
    FlowUpdateFailed = 3,
    /// Events of each [`EventKind`] lost to a full ring buffer.
    LostNewFlow = 4,
    LostPayload = 5,
    LostArp = 6,
    LostPacketSample = 7,
    LostDns = 8,
}

impl Counter {
    pub const COUNT: u32 = 9;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::Packets,
        Self::NonIp,
        Self::Malformed,
        Self::FlowUpdateFailed,
        Self::LostNewFlow,
        Self::LostPayload,
        Self::LostArp,
        Self::LostPacketSample,
        Self::LostDns,
    ];
}

/// Kind of a ring-buffer record; the first byte of every record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`NewFlowEvent`]: the first packet of a flow created its map entry.
    NewFlow = 1,
    /// [`CaptureEvent`]: the first payload bytes of a TCP or UDP flow.
    Payload = 2,
    /// [`ArpEvent`]: an ARP packet sent by a container.
    Arp = 3,
    /// [`CaptureEvent`] with a zero key: a 1-in-N random packet head.
    PacketSample = 4,
    /// [`CaptureEvent`]: the payload of a TCP or UDP packet to or from
    /// port 53, every one of them.
    Dns = 5,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::NewFlow),
            2 => Some(Self::Payload),
            3 => Some(Self::Arp),
            4 => Some(Self::PacketSample),
            5 => Some(Self::Dns),
            _ => None,
        }
    }

    /// The counter that records events of this kind lost to a full ring buffer.
    pub const fn lost_counter(self) -> Counter {
        match self {
            Self::NewFlow => Counter::LostNewFlow,
            Self::Payload => Counter::LostPayload,
            Self::Arp => Counter::LostArp,
            Self::PacketSample => Counter::LostPacketSample,
            Self::Dns => Counter::LostDns,
        }
    }
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u8,
    /// A [`Direction`] value.
    pub direction: u8,
    /// [`EVENT_OPENS_FLOW`], or 0.
    pub flags: u8,
    pub _pad: u8,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// CLOCK_MONOTONIC.
    pub timestamp_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 16);

/// [`EventHeader::flags`] bit of a payload or DNS record whose packet
/// opened its flow: the record is the flow's new-flow event too (one ring
/// record where there would be two). Set only when new-flow events are on;
/// a flow whose first packet carries nothing to sample gets a
/// [`NewFlowEvent`].
pub const EVENT_OPENS_FLOW: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewFlowEvent {
    pub header: EventHeader,
    pub key: FlowKey,
}
const _: () = assert!(size_of::<NewFlowEvent>() == 56);

/// Bytes copied from a packet: payload samples and random packet heads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureEvent {
    pub header: EventHeader,
    /// The packet's flow; all zero for random packet-head samples.
    pub key: FlowKey,
    /// Length of what the capture is taken from: the L4 payload for payload
    /// samples, the whole frame for packet-head samples.
    pub original_len: u32,
    /// Valid bytes at the start of `data`.
    pub captured_len: u32,
    pub data: [u8; MAX_CAPTURE],
}
const _: () = assert!(size_of::<CaptureEvent>() == 64 + MAX_CAPTURE);

/// Length of an Ethernet/IPv4 ARP packet, the part copied into [`ArpEvent`].
pub const ARP_LEN: usize = 28;

/// An ARP packet a container sent, copied raw so user space decodes (and
/// validates) it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpEvent {
    pub header: EventHeader,
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// Valid bytes at the start of `arp` (shorter when the frame is truncated).
    pub captured_len: u32,
    pub arp: [u8; ARP_LEN],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<ArpEvent>() == 64);

/// `ARRAY<u32>` of [`POLICY_STATE_LEN`] entries indexed by [`PolicyState`]:
/// the policy mode and the generation of the policy maps in force.
pub const POLICY_STATE_MAP: &str = "POLICY_STATE";
/// `HASH<PolicyIfaceKey, PolicyIface>`: each policed veth's own addresses.
pub const POLICY_IFACES_MAP: &str = "POLICY_IFACES";
/// `HASH<PolicyRuleKey, PolicyRuleValue>`: what a veth may send to each
/// container address of its network.
pub const POLICY_RULES_MAP: &str = "POLICY_RULES";
/// `PERCPU_ARRAY<u64>` of `2 * POLICY_SLOTS`: packets that broke the policy,
/// by slot; slot `s` counts those passed (observe, `alert`), `POLICY_SLOTS +
/// s` those dropped.
pub const POLICY_COUNTS_MAP: &str = "POLICY_COUNTS";
/// `LRU_PERCPU_HASH<FlowKey, DeniedStats>`: flows that broke the policy, for
/// the agent's alerts (drained at each poll).
pub const POLICY_DENIED_MAP: &str = "POLICY_DENIED";

/// Distinct names a policy's counters can carry in one run (rules,
/// network defaults, the two spoofing slots).
pub const POLICY_SLOTS: u32 = 1024;
/// Slot of packets sent from an address that is not the sender's own.
pub const POLICY_SLOT_SPOOFED_SOURCE: u32 = 0;
/// Slot of ARP packets claiming an address or MAC not the sender's own.
pub const POLICY_SLOT_SPOOFED_ARP: u32 = 1;
/// The `protocol` of a [`PolicyRuleKey`] that says only "this address is a
/// container on the veth's network" and carries the network's default.
/// 255 is IANA's reserved protocol number: never a real packet's.
pub const POLICY_PEER_PROTOCOL: u8 = 255;

/// Entries of the `POLICY_STATE` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyState {
    /// A [`PolicyMode`] value.
    Mode = 0,
    /// The generation (0 or 1) whose entries the programs read.
    Generation = 1,
    /// Enforce mode's lease: until this time, in [`lease_units`] of
    /// CLOCK_MONOTONIC, `deny` drops; after it the programs only observe.
    /// The agent renews it at every poll, so enforcement ends with the
    /// agent even where its programs outlive it (clsact filters).
    EnforceUntil = 2,
}
pub const POLICY_STATE_LEN: u32 = 3;

/// A monotonic time in the units of [`PolicyState::EnforceUntil`]: 2^30 ns
/// (about 1.07 s), so a `u32` lasts 146 years of uptime and the programs
/// convert with one shift.
#[inline(always)]
pub const fn lease_units(monotonic_ns: u64) -> u32 {
    (monotonic_ns >> 30) as u32
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyMode {
    /// No policy: one array lookup per packet, nothing else.
    Off = 0,
    /// Violations counted and alerted, nothing dropped.
    Observe = 1,
    /// `deny` drops at the sender's veth.
    Enforce = 2,
}

/// What a policy says about a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyAction {
    Allow = 0,
    /// Passed, counted and alerted.
    Alert = 1,
    /// Dropped in enforce mode; as `Alert` in observe mode.
    Deny = 2,
}

/// Key of a veth's entry in one generation of the policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyIfaceKey {
    pub ifindex: u32,
    pub generation: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<PolicyIfaceKey>() == 8);

/// The addresses Docker gave the container behind a veth: what it may send
/// from (IPv6 link-local and unspecified sources are always its own).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyIface {
    /// IPv4-mapped; all zero when it has none.
    pub ipv4: [u8; 16],
    /// All zero when it has none.
    pub ipv6: [u8; 16],
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<PolicyIface>() == 40);

/// `protocol` [`POLICY_PEER_PROTOCOL`] with port 0 marks a container
/// address; `dst_port` 0 with a real protocol is any port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRuleKey {
    /// The sender's host-side veth.
    pub ifindex: u32,
    pub generation: u8,
    pub protocol: u8,
    pub dst_port: u16,
    /// Network byte order, IPv4-mapped for IPv4.
    pub dst_addr: [u8; 16],
}
const _: () = assert!(size_of::<PolicyRuleKey>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyRuleValue {
    /// Counter slot of the rule or default.
    pub slot: u32,
    /// A [`PolicyAction`] value.
    pub action: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<PolicyRuleValue>() == 8);

/// A flow that broke the policy, as counted by one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeniedStats {
    pub packets: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The sender's host-side veth.
    pub ifindex: u32,
    /// Counter slot of the rule, default or spoofing check that judged it.
    pub slot: u32,
    /// Packets of these dropped (the rest were passed and counted).
    pub dropped: u64,
}
const _: () = assert!(size_of::<DeniedStats>() == 40);

/// `ARRAY<u32>` of one entry: how many veths are being captured. Zero
/// (no capture) costs each packet this one lookup and nothing else.
pub const CAPTURE_ACTIVE_MAP: &str = "CAPTURE_ACTIVE";
/// `HASH<u32, CaptureFilter>`: the veths (by ifindex) being captured and
/// what of their packets.
pub const CAPTURE_FILTERS_MAP: &str = "CAPTURE_FILTERS";
/// Ring buffer of [`CaptureRecord`]s, apart from [`EVENTS_MAP`] so a capture
/// burst never starves the detectors' events.
pub const CAPTURE_RING_MAP: &str = "CAPTURE_RING";
/// `PERCPU_ARRAY<u64>` of one entry: capture records lost to a full ring.
pub const CAPTURE_LOST_MAP: &str = "CAPTURE_LOST";
/// Most bytes of one packet a capture keeps: a full Ethernet frame at the
/// usual MTU with VLAN tags. Longer packets (GSO) are truncated; the record
/// says their original length.
pub const MAX_SNAPLEN: usize = 1600;
/// Default size of the capture ring (bytes).
pub const DEFAULT_CAPTURE_RING_BYTES: u32 = 1 << 22;
/// Most veths captured at once (the filter map's capacity).
pub const MAX_CAPTURED_IFACES: u32 = 256;

/// [`CaptureFilter::flags`] bit: only packets to or from `peer`.
pub const CAPTURE_MATCH_PEER: u8 = 1;

/// What to capture on one veth. A packet is captured when it matches every
/// criterion set; a frame that is not IP matches only a filter with none.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureFilter {
    /// Copied into each record, so the agent hands it to its capture.
    pub capture_id: u32,
    /// Bytes kept of each packet, 1..=[`MAX_SNAPLEN`].
    pub snaplen: u32,
    /// Network byte order, IPv4-mapped for IPv4; read with [`CAPTURE_MATCH_PEER`].
    pub peer: [u8; 16],
    /// Source or destination port (host byte order); 0 = any.
    pub port: u16,
    /// IP protocol number; 0 = any.
    pub protocol: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<CaptureFilter>() == 28);

/// One captured packet, in the capture ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureRecord {
    /// The [`CaptureFilter::capture_id`] that selected it.
    pub capture_id: u32,
    /// The veth it was seen on.
    pub ifindex: u32,
    /// Length of the frame (skb length).
    pub original_len: u32,
    /// Valid bytes at the start of `data`.
    pub captured_len: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// A [`Direction`] value.
    pub direction: u8,
    pub _pad: [u8; 7],
    pub data: [u8; MAX_SNAPLEN],
}
const _: () = assert!(size_of::<CaptureRecord>() == 32 + MAX_SNAPLEN);

#[cfg(feature = "user")]
mod user {
    use super::*;

    /// `aya::Pod` for each wire type.
    macro_rules! pod {
        ($($wire:ty),* $(,)?) => {$(
            // SAFETY: every wire type is repr(C), made only of integers and
            // byte arrays, with every padding byte an explicit field, so
            // any bit pattern is valid.
            unsafe impl aya::Pod for $wire {}
        )*};
    }
    pod!(
        FlowKey,
        FlowKeyV4,
        FlowStats,
        EventHeader,
        NewFlowEvent,
        CaptureEvent,
        ArpEvent,
        PolicyIfaceKey,
        PolicyIface,
        PolicyRuleKey,
        PolicyRuleValue,
        DeniedStats,
        CaptureFilter,
        CaptureRecord,
        DropKey,
        TickClock,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_key_narrows_and_widens_back() {
        let key = FlowKey::ipv4([10, 0, 0, 2], 40000, [10, 0, 0, 3], 443, ip_proto::TCP);
        let narrow = FlowKeyV4::narrow(&key).expect("an IPv4 key");
        assert_eq!(narrow.src_addr, [10, 0, 0, 2]);
        assert_eq!(narrow.dst_addr, [10, 0, 0, 3]);
        assert_eq!(narrow, FlowKeyV4::of_mapped(&key));
        assert_eq!(narrow.widen(), key);
    }

    #[test]
    fn keys_without_mapped_ipv4_addresses_do_not_narrow() {
        let mut ipv6 = FlowKey::ipv4([10, 0, 0, 2], 1, [10, 0, 0, 3], 2, ip_proto::UDP);
        ipv6.ip_version = 6;
        assert_eq!(FlowKeyV4::narrow(&ipv6), None);
        // Version 4 over addresses that are not mapped: a key from elsewhere
        // that `narrow` refuses where `of_mapped` would truncate it.
        let mut unmapped = FlowKey::ipv4([10, 0, 0, 2], 1, [10, 0, 0, 3], 2, ip_proto::UDP);
        unmapped.src_addr[0] = 0x20;
        assert_eq!(FlowKeyV4::narrow(&unmapped), None);
        let mut unmapped_dst = FlowKey::ipv4([10, 0, 0, 2], 1, [10, 0, 0, 3], 2, ip_proto::UDP);
        unmapped_dst.dst_addr[10] = 0;
        assert_eq!(FlowKeyV4::narrow(&unmapped_dst), None);
    }
}
