//! Ring-buffer records. A reservation that fails (ring full) is counted per
//! kind, so user space can report exactly what it missed.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_skb_load_bytes,
    programs::TcContext,
};
use monitor_common::{
    ArpEvent, CaptureEvent, Direction, EventHeader, EventKind, FlowKey, NewFlowEvent, ARP_LEN,
    EVENT_OPENS_FLOW, MAX_CAPTURE,
};

use crate::{
    clock::exact_ns,
    maps::{bump, EVENTS, RING_BYTES},
};

/// Where and when a packet was seen.
#[derive(Clone, Copy)]
pub struct Seen {
    pub direction: Direction,
    pub ifindex: u32,
    /// To a tick (`clock::last_tick_ns`).
    pub now_ns: u64,
}

impl Seen {
    /// Records are stamped with the exact clock: they are rare next to
    /// packets, and a DNS answer's latency is the difference of two.
    #[inline(always)]
    fn header(&self, kind: EventKind, flags: u8, timestamp_ns: u64) -> EventHeader {
        EventHeader {
            kind: kind as u8,
            direction: self.direction as u8,
            flags,
            _pad: 0,
            ifindex: self.ifindex,
            timestamp_ns,
        }
    }
}

/// The kernel's header before each ring record, which its length is
/// rounded up with to 8 bytes (`BPF_RINGBUF_HDR_SZ`).
const RING_HEADER_BYTES: u64 = 8;

/// Waking the agent on every record costs each packet that carries one a
/// few microseconds (an irq_work, its self-interrupt, which traps to the
/// hypervisor on a VM, and a task wakeup); the agent drains the ring on a
/// short timer instead, and is woken early once a quarter of the ring is
/// waiting, so a burst never fills it unread.
///
/// Past that quarter, not by every record: until the agent drained the
/// ring that was a self-interrupt per record, most of a DNS record's cost
/// in a bench that drains between measures, about 1 % of
/// `from_container`'s time under live connection churn. A record wakes
/// the agent when it fills the ring across a thirty-second of its size:
/// at most 24 wakeups for a whole ring unread. Asked right after
/// the reservation, before the record is filled: another CPU's reservation
/// in between moves what this one reads, and two CPUs may each read the
/// other's record and neither wake the agent, for this step or, as
/// unluckily, for later ones. The 50 ms drain bounds that delay; the rule
/// never wakes the agent where waking at every record past the quarter
/// would not have.
///
/// The flags for `bpf_ringbuf_submit`, of a record of type `T` just
/// reserved.
#[inline(always)]
fn wakeup<T>() -> u64 {
    let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let size = u64::from(RING_BYTES.load());
    // `waiting` counts this record: it was reserved.
    let record = (size_of::<T>() as u64 + RING_HEADER_BYTES).next_multiple_of(8);
    let before = waiting.saturating_sub(record);
    // The ring's size is a power of two (the kernel's rule, checked by the
    // agent), and so is a step: the record crossed one where the two
    // positions differ above the step's bit.
    let step = size / 32;
    if waiting >= size / 4 && before ^ waiting >= step {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// The new-flow event of a flow whose first packet was stamped `opened_at_ns`.
#[inline(always)]
pub fn new_flow(seen: &Seen, key: &FlowKey, opened_at_ns: u64) {
    let Some(mut entry) = EVENTS.reserve::<NewFlowEvent>(0) else {
        bump(EventKind::NewFlow.lost_counter());
        return;
    };
    let wake = wakeup::<NewFlowEvent>();
    entry.write(NewFlowEvent {
        header: seen.header(EventKind::NewFlow, 0, opened_at_ns),
        key: *key,
    });
    entry.submit(wake);
}

/// Copies up to `limit` bytes starting at `offset` of a span `span_len` long.
/// `kind` is `Payload` (span = transport payload) or `PacketSample` (span =
/// the whole frame, `key` zero). `opened_at_ns`: the record is the new-flow
/// event too (`EVENT_OPENS_FLOW`) of the flow whose first packet, this one,
/// was stamped then; lost with it when the ring is full.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one capture, its parts")]
pub fn capture(
    ctx: &TcContext,
    seen: &Seen,
    kind: EventKind,
    key: &FlowKey,
    offset: usize,
    span_len: u32,
    limit: u32,
    opened_at_ns: Option<u64>,
) {
    let Some(mut entry) = EVENTS.reserve::<CaptureEvent>(0) else {
        bump(kind.lost_counter());
        if opened_at_ns.is_some() {
            bump(EventKind::NewFlow.lost_counter());
        }
        return;
    };
    let wake = wakeup::<CaptureEvent>();
    let event = entry.as_mut_ptr();
    let (flags, timestamp_ns) = match opened_at_ns {
        Some(at) => (EVENT_OPENS_FLOW, at),
        None => (0, exact_ns()),
    };
    // SAFETY: `event` points at a reserved record of the right size; fields
    // are written through raw pointers because the record is uninitialised.
    unsafe {
        (*event).header = seen.header(kind, flags, timestamp_ns);
        (*event).key = *key;
        (*event).original_len = span_len;
        let in_skb = ctx.len().saturating_sub(offset as u32);
        let wanted = forget(
            &raw mut (*event).captured_len,
            span_len.min(in_skb).min(limit),
        );
        (*event).captured_len =
            copy_bytes(ctx, offset, (*event).data.as_mut_ptr(), wanted, MAX_CAPTURE);
    }
    entry.submit(wake);
}

#[inline(always)]
pub fn arp(ctx: &TcContext, seen: &Seen, offset: usize) {
    let Some(mut entry) = EVENTS.reserve::<ArpEvent>(0) else {
        bump(EventKind::Arp.lost_counter());
        return;
    };
    let wake = wakeup::<ArpEvent>();
    let event = entry.as_mut_ptr();
    let macs: [u8; 12] = ctx.load(0).unwrap_or([0; 12]);
    let in_skb = ctx.len().saturating_sub(offset as u32);
    // SAFETY: as in `capture`.
    unsafe {
        (*event).header = seen.header(EventKind::Arp, 0, exact_ns());
        (*event).eth_dst = [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]];
        (*event).eth_src = [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]];
        (*event).captured_len = copy_bytes(ctx, offset, (*event).arp.as_mut_ptr(), in_skb, ARP_LEN);
    }
    entry.submit(wake);
}

/// Stores `value` in `slot` of a ring record and reads it back as the
/// verifier sees ring memory: a number it knows nothing of. The copy's
/// length must be tracked precisely, and precision spreads back to every
/// value it came from: left to reach the header lengths, it keeps each
/// parse path (IPv4 with options, each IPv6 extension chain, VLAN tags) apart
/// to the end of the program. 5.10's verifier then passes its limit of a
/// million instructions with sampling on; through ring memory the paths
/// merge before the copy.
///
/// # Safety
/// `slot` points into a reserved ring record.
#[inline(always)]
pub unsafe fn forget(slot: *mut u32, value: u32) -> u32 {
    // SAFETY: the caller's; volatile so that LLVM does not reuse `value`.
    unsafe {
        core::ptr::write_volatile(slot, value);
        core::ptr::read_volatile(slot)
    }
}

/// Copies `min(wanted, max)` bytes from the packet to `dst`, which holds
/// `max`; returns how many were copied (0 on failure).
///
/// The helper's length must be proven `1 <= len <= max`. Verifiers before
/// 6.8 learn nothing from `len != 0`, so the check is one unsigned
/// comparison of `len - 1` against `max`, after which `len - 1 + 1` has
/// both bounds on every kernel. `black_box` keeps LLVM from folding the
/// subtraction and the addition back into a `len` it checked differently.
#[inline(always)]
pub unsafe fn copy_bytes(
    ctx: &TcContext,
    offset: usize,
    dst: *mut u8,
    wanted: u32,
    max: usize,
) -> u32 {
    let below = core::hint::black_box(wanted.min(max as u32).wrapping_sub(1));
    if below >= max as u32 {
        return 0;
    }
    let len = below + 1;
    // SAFETY: `dst` holds `max` bytes and `len <= max`.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), offset as u32, dst.cast(), len) };
    if ret == 0 {
        len
    } else {
        0
    }
}
