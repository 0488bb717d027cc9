//! Packet capture of chosen veths, for the agent's pcapng evidence. Off, it
//! costs a packet one array lookup (`CAPTURE_ACTIVE`); on, one hash lookup
//! by ifindex, and a copy of the frame for those that match.
//!
//! Capture is per veth and independent of counting: `to_container` captures
//! the packets it does not count because the sender's veth did.

use aya_ebpf::programs::TcContext;
use monitor_common::{CaptureFilter, CaptureRecord, CAPTURE_MATCH_PEER, MAX_SNAPLEN};

use crate::{
    clock::exact_ns,
    events::{copy_bytes, forget, Seen},
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
        // Exact, unlike `seen.now_ns`: the pcapng shows packets'
        // spacing.
        (*record).timestamp_ns = exact_ns();
        (*record).direction = seen.direction as u8;
        (*record)._pad = [0; 7];
        // Through ring memory, as `events::forget` explains: the length
        // stays one value the verifier knows nothing of on every path.
        let wanted = forget(
            &raw mut (*record).captured_len,
            ctx.len().min(filter.snaplen),
        );
        (*record).captured_len =
            copy_bytes(ctx, 0, (*record).data.as_mut_ptr(), wanted, MAX_SNAPLEN);
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
