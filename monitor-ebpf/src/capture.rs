//! Packet capture of chosen veths, for the agent's pcapng evidence. Off, it
//! costs a packet one array lookup (`CAPTURE_ACTIVE`); on, one hash lookup
//! by ifindex, and a copy of the frame for those that match.
//!
//! Capture is per veth and independent of counting: `to_container` captures
//! the packets it does not count because the sender's veth did.

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use monitor_common::{CaptureFilter, CaptureRecord, CAPTURE_MATCH_PEER, MAX_SNAPLEN};

use crate::{
    events::Seen,
    maps::{CAPTURE_ACTIVE, CAPTURE_FILTERS, CAPTURE_LOST, CAPTURE_RING},
    parse::{Frame, Malformed},
    policy::same,
};

/// Whether any veth is being captured.
#[inline(always)]
pub fn active() -> bool {
    CAPTURE_ACTIVE.get(0).is_some_and(|n| *n != 0)
}

/// Captures the frame when its veth is captured and it matches the filter.
/// Call only when [`active`].
#[inline(always)]
pub fn packet(ctx: &TcContext, seen: &Seen, frame: &Result<Frame, Malformed>) {
    // SAFETY: a plain-old-data value, copied out at once; the agent
    // replaces entries whole.
    let Some(filter) = (unsafe { CAPTURE_FILTERS.get(seen.ifindex) }).copied() else {
        return;
    };
    if !matches(&filter, frame) {
        return;
    }
    let Some(mut entry) = CAPTURE_RING.reserve::<CaptureRecord>(0) else {
        if let Some(lost) = CAPTURE_LOST.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot is only touched by programs on this CPU.
            unsafe { *lost = (*lost).wrapping_add(1) };
        }
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved record of the right size; fields
    // are written through raw pointers because the record is uninitialised.
    unsafe {
        (*record).capture_id = filter.capture_id;
        (*record).ifindex = seen.ifindex;
        (*record).original_len = ctx.len();
        (*record).timestamp_ns = seen.now_ns;
        (*record).direction = seen.direction as u8;
        (*record)._pad = [0; 7];
        // Through ring memory, as `events::forget` explains: the length
        // stays one value the verifier knows nothing of on every path.
        let wanted = forget(
            &raw mut (*record).captured_len,
            ctx.len().min(filter.snaplen),
        );
        (*record).captured_len = copy_frame(ctx, (*record).data.as_mut_ptr(), wanted);
    }
    // Woken by the agent's timer, never per packet (see `events::wakeup`).
    entry.submit(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
}

#[inline(always)]
fn matches(filter: &CaptureFilter, frame: &Result<Frame, Malformed>) -> bool {
    let any = filter.flags & CAPTURE_MATCH_PEER == 0 && filter.port == 0 && filter.protocol == 0;
    let Ok(Frame::Ip(packet)) = frame else {
        return any;
    };
    let key = &packet.key;
    if filter.flags & CAPTURE_MATCH_PEER != 0
        && !same(&key.src_addr, &filter.peer)
        && !same(&key.dst_addr, &filter.peer)
    {
        return false;
    }
    if filter.protocol != 0 && key.protocol != filter.protocol {
        return false;
    }
    filter.port == 0 || key.src_port == filter.port || key.dst_port == filter.port
}

/// # Safety
/// `slot` points into a reserved ring record.
#[inline(always)]
unsafe fn forget(slot: *mut u32, value: u32) -> u32 {
    // SAFETY: the caller's; volatile so that LLVM does not reuse `value`.
    unsafe {
        core::ptr::write_volatile(slot, value);
        core::ptr::read_volatile(slot)
    }
}

/// Copies the frame's first `min(wanted, MAX_SNAPLEN)` bytes to `dst`;
/// returns how many (0 on failure). The length check is the one unsigned
/// compare every verifier understands, as in `events::copy_bytes`.
///
/// # Safety
/// `dst` holds [`MAX_SNAPLEN`] bytes.
#[inline(always)]
unsafe fn copy_frame(ctx: &TcContext, dst: *mut u8, wanted: u32) -> u32 {
    let below = core::hint::black_box(wanted.min(MAX_SNAPLEN as u32).wrapping_sub(1));
    if below >= MAX_SNAPLEN as u32 {
        return 0;
    }
    let len = below + 1;
    // SAFETY: `dst` holds MAX_SNAPLEN bytes and `len <= MAX_SNAPLEN`.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, dst.cast(), len) };
    if ret == 0 {
        len
    } else {
        0
    }
}
