//! Maps and load-time settings shared by the programs.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    Global,
};
use monitor_common::{
    counted_slot, CaptureFilter, Counter, DeniedStats, DropKey, FlowKey, FlowKeyV4, FlowStats,
    PolicyIface, PolicyIfaceKey, PolicyRuleKey, PolicyRuleValue, COUNTED_IFACES_CAPACITY,
    COUNTED_SLOTS_LEN, COUNTED_SLOT_SHARED, DEFAULT_CAPTURE_RING_BYTES, DEFAULT_DNS_EVENTS,
    DEFAULT_FLOW_CAPACITY, DEFAULT_NEW_FLOW_EVENTS, DEFAULT_PAYLOAD_BYTES, DEFAULT_PAYLOAD_PACKETS,
    DEFAULT_RING_BYTES, DEFAULT_SAMPLE_RATE, DROPS_CAPACITY, MAX_CAPTURED_IFACES, NO_FIELD,
    POLICY_SLOTS, POLICY_STATE_LEN, RETRANSMITS_CAPACITY,
};

/// One value per flow, shared by the CPUs (see `flow::account`). The
/// agent resizes it at load. IPv6 flows; IPv4 ones are in `FLOWS_V4`.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowStats> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// IPv4 flows, by a key of 16 bytes (`monitor_common::FLOWS_V4_MAP`).
#[map]
pub static FLOWS_V4: LruHashMap<FlowKeyV4, FlowStats> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Interfaces where packets entering the host are counted; see
/// `monitor_common::COUNTED_IFACES_MAP`.
#[map]
pub static COUNTED_IFACES: HashMap<u32, u8> = HashMap::with_max_entries(COUNTED_IFACES_CAPACITY, 0);

/// Its direct-mapped copy, read first: `monitor_common::COUNTED_SLOTS_MAP`.
#[map]
pub static COUNTED_SLOTS: Array<u32> = Array::with_max_entries(COUNTED_SLOTS_LEN, 0);

/// The policy's mode and generation, set by the agent at run time; see
/// `monitor_common::POLICY_STATE_MAP` and the other policy maps.
#[map]
pub static POLICY_STATE: Array<u32> = Array::with_max_entries(POLICY_STATE_LEN, 0);

/// Two generations of every policed veth (the one in force and the next).
/// Not preallocated: without a policy they cost no memory.
#[map]
pub static POLICY_IFACES: HashMap<PolicyIfaceKey, PolicyIface> =
    HashMap::with_max_entries(2 * 4096, BPF_F_NO_PREALLOC);

#[map]
pub static POLICY_RULES: HashMap<PolicyRuleKey, PolicyRuleValue> =
    HashMap::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);

#[map]
pub static POLICY_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * POLICY_SLOTS, 0);

#[map]
pub static POLICY_DENIED: LruPerCpuHashMap<FlowKey, DeniedStats> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Capture: see `monitor_common::CAPTURE_ACTIVE_MAP` and the maps below it.
#[map]
pub static CAPTURE_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static CAPTURE_FILTERS: HashMap<u32, CaptureFilter> =
    HashMap::with_max_entries(MAX_CAPTURED_IFACES, 0);

#[map]
pub static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(DEFAULT_CAPTURE_RING_BYTES, 0);

#[map]
pub static CAPTURE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Segments retransmitted, by flow (`tracepoints.rs`).
#[map]
pub static RETRANSMITS: LruPerCpuHashMap<FlowKey, u64> =
    LruPerCpuHashMap::with_max_entries(RETRANSMITS_CAPACITY, 0);

/// Packets dropped, by addresses and reason (`tracepoints.rs`).
#[map]
pub static DROPS: LruPerCpuHashMap<DropKey, u64> =
    LruPerCpuHashMap::with_max_entries(DROPS_CAPACITY, 0);

// Offsets in `skb:kfree_skb`'s record and in `struct sk_buff`, found by
// the agent (the event's format file, the kernel's BTF) before the load.
#[no_mangle]
pub static DROP_SKBADDR: Global<u32> = Global::new(0);
#[no_mangle]
pub static DROP_PROTOCOL: Global<u32> = Global::new(0);
#[no_mangle]
pub static DROP_REASON: Global<u32> = Global::new(NO_FIELD);
#[no_mangle]
pub static SKB_HEAD: Global<u32> = Global::new(0);
#[no_mangle]
pub static SKB_NETWORK_HEADER: Global<u32> = Global::new(0);

// Offsets of `tcp:tcp_retransmit_skb`'s fields in its record, read by the
// agent from the event's format file before it loads the program.
#[no_mangle]
pub static RETRANSMIT_SPORT: Global<u32> = Global::new(0);
#[no_mangle]
pub static RETRANSMIT_DPORT: Global<u32> = Global::new(0);
#[no_mangle]
pub static RETRANSMIT_SADDR_V6: Global<u32> = Global::new(0);
#[no_mangle]
pub static RETRANSMIT_DADDR_V6: Global<u32> = Global::new(0);

// Set by the agent at load time; the verifier sees them as constants.
#[no_mangle]
pub static PAYLOAD_BYTES: Global<u32> = Global::new(DEFAULT_PAYLOAD_BYTES);
#[no_mangle]
pub static PAYLOAD_PACKETS: Global<u32> = Global::new(DEFAULT_PAYLOAD_PACKETS);
#[no_mangle]
pub static SAMPLE_RATE: Global<u32> = Global::new(DEFAULT_SAMPLE_RATE);
#[no_mangle]
pub static NEW_FLOW_EVENTS: Global<u32> = Global::new(DEFAULT_NEW_FLOW_EVENTS);
#[no_mangle]
pub static DNS_EVENTS: Global<u32> = Global::new(DEFAULT_DNS_EVENTS);
#[no_mangle]
pub static RING_BYTES: Global<u32> = Global::new(DEFAULT_RING_BYTES);
/// `monitor_common::GLOBAL_NETNS_TAG`: the namespace this instance of the
/// programs is attached in, folded into every ifindex it reads.
#[no_mangle]
pub static NETNS_TAG: Global<u32> = Global::new(0);

/// An interface of this instance's namespace as the maps key it.
#[inline(always)]
pub fn veth_id(ifindex: u32) -> u32 {
    ifindex | NETNS_TAG.load()
}

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}

/// Whether a packet that came into the host through interface `id` was
/// counted there (a watched veth's `from_container`).
#[inline(always)]
pub fn counted_at_ingress(id: u32) -> bool {
    let Some(&cached) = COUNTED_SLOTS.get(counted_slot(id)) else {
        return false;
    };
    if cached == COUNTED_SLOT_SHARED {
        // SAFETY: the value is a plain byte; nothing is read through the reference.
        return unsafe { COUNTED_IFACES.get(id).is_some() };
    }
    // An empty slot holds 0, the id of no interface (a packet the host
    // itself sent has ingress ifindex 0).
    cached == id && id != 0
}
