//! crossmon's TC classifiers, attached to both directions of the host-side
//! veth of every container on a Linux bridge.
//!
//! They observe: every path returns `TC_ACT_UNSPEC` (TCX_NEXT), which
//! passes the packet unchanged *and* lets later programs on the same hook run
//! (`TC_ACT_OK` and `TC_ACT_PIPE` would end a TCX chain). The one exception
//! is a flow policy in enforce mode: a packet it denies is dropped
//! (`TC_ACT_SHOT`) where the container sent it.
#![no_std]
#![no_main]
// The flow counters' atomic add (flow.rs), which `core` does not offer on
// a target without compare-and-swap.
#![feature(asm_experimental_arch)]

mod capture;
mod clock;
mod dns;
mod events;
mod flow;
mod maps;
mod parse;
mod policy;
mod tracepoints;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_get_prandom_u32,
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use monitor_common::{ip_proto, Counter, Direction, EventKind, FlowKey, FlowStats};

use crate::{
    events::Seen,
    flow::Accounted,
    maps::{
        bump, counted_at_ingress, veth_id, NEW_FLOW_EVENTS, PAYLOAD_BYTES, PAYLOAD_PACKETS,
        SAMPLE_RATE,
    },
    parse::{Frame, Malformed},
    policy::Verdict,
};

/// Bytes of a random packet-head sample: Ethernet, IP and transport
/// headers with room for options, whatever the payload setting.
const PACKET_HEAD_BYTES: u32 = 128;

/// Packets a container sends (TC ingress of its host-side veth).
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    let seen = seen(&ctx, Direction::FromContainer);
    let frame = parse::parse(&ctx);
    // Before the policy: a capture shows what the container sent, dropped
    // or not.
    if capture::active() {
        capture::packet(&ctx, &seen, &frame);
    }
    if policy::judge(&ctx, &seen, &frame) == Verdict::Drop {
        // Not counted as a flow: the flow map holds only what passed,
        // which is what tells a reply from an attempt. A dropped ARP
        // packet still reaches the spoofing detector.
        if let Ok(Frame::Arp(offset)) = frame {
            events::arp(&ctx, &seen, offset);
        }
        return TC_ACT_SHOT;
    }
    observe(&ctx, &seen, frame);
    TC_ACT_UNSPEC
}

/// Packets delivered to a container (TC egress of its host-side veth).
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel handed to the program.
    let came_in_through = veth_id(unsafe { (*ctx.skb.skb).ingress_ifindex });
    // Bridged straight from another watched veth: counted when it left that
    // container. The cheap check comes first; routed traffic is recognised
    // by its flow (see `flow::account`). A capture of this veth wants the
    // packet all the same.
    let counted = counted_at_ingress(came_in_through);
    let capturing = capture::active();
    if !counted || capturing {
        let frame = parse::parse(&ctx);
        // As in `from_container`, where the policy reads it: the frame's
        // address escapes, so it stays whole in memory. Passed on in
        // registers, LLVM reads the flow key's fields before it checks the
        // variant, from stack no parse path of an ARP or non-IP frame
        // wrote, which verifiers before 6.3 refuse ("invalid read from
        // stack").
        core::hint::black_box(&frame);
        let seen = seen(&ctx, Direction::ToContainer);
        if capturing {
            capture::packet(&ctx, &seen, &frame);
        }
        if !counted {
            observe(&ctx, &seen, frame);
        }
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn seen(ctx: &TcContext, direction: Direction) -> Seen {
    Seen {
        direction,
        // SAFETY: `skb` is the context pointer the kernel handed to the program.
        ifindex: veth_id(unsafe { (*ctx.skb.skb).ifindex }),
        now_ns: clock::last_tick_ns(),
    }
}

#[inline(always)]
fn observe(ctx: &TcContext, seen: &Seen, frame: Result<Frame, Malformed>) {
    let rate = SAMPLE_RATE.load();
    // SAFETY: helper without preconditions.
    if rate != 0 && unsafe { bpf_get_prandom_u32() } % rate == 0 {
        events::capture(
            ctx,
            seen,
            EventKind::PacketSample,
            &FlowKey::ZERO,
            0,
            ctx.len(),
            PACKET_HEAD_BYTES,
            None,
        );
    }

    match frame {
        Ok(Frame::Ip(packet)) => {
            // SAFETY: as above.
            let (gso_segs, gso_size) =
                unsafe { ((*ctx.skb.skb).gso_segs, (*ctx.skb.skb).gso_size) };
            // Packets from untrusted sources (virtio, packet sockets) carry
            // a GSO size but no segment count yet.
            let segments = if gso_segs == 0 && gso_size != 0 {
                packet.payload_len.div_ceil(gso_size)
            } else {
                gso_segs
            };
            let is_tcp_or_udp = matches!(packet.key.protocol, ip_proto::TCP | ip_proto::UDP);
            let limit = PAYLOAD_BYTES.load();
            let wants_sample = limit != 0 && packet.payload_len != 0 && is_tcp_or_udp;
            let first_samples = u8::from(wants_sample && PAYLOAD_PACKETS.load() != 0);
            let dns = dns::wanted(&packet);
            // When the packet opened its flow and its event is wanted: the
            // time its first packet was stamped with, which the event reuses.
            let mut opened_at_ns = None;
            let sample = match flow::account(seen, &packet, segments, first_samples) {
                Accounted::Counted(entry) => wants_sample && !sampled_enough(entry),
                Accounted::Created(at_ns) => {
                    if NEW_FLOW_EVENTS.load() != 0 {
                        opened_at_ns = Some(at_ns);
                    }
                    first_samples != 0
                }
                Accounted::Duplicate => return,
                Accounted::Refused => {
                    // Here, not where the insert failed: there LLVM merged
                    // the counter's block into the counted path's and
                    // copied the entry pointer this path never set, a read
                    // every verifier refuses (`R1 !read_ok`).
                    bump(Counter::FlowUpdateFailed);
                    debug!(ctx, "flow map refused an entry on ifindex {}", seen.ifindex);
                    return;
                }
            };
            bump(Counter::Packets);
            if packet.l4_truncated {
                bump(Counter::Malformed);
            }
            // One capture for all: a DNS packet's sample is its DNS event
            // (the agent hands it to the payload's readers too), the
            // packet that opened the flow announces it in the same record,
            // and the programs keep a single copy path for the verifier.
            if sample || dns {
                let (kind, limit) = if dns {
                    (EventKind::Dns, dns::BYTES)
                } else {
                    (EventKind::Payload, limit)
                };
                events::capture(
                    ctx,
                    seen,
                    kind,
                    &packet.key,
                    packet.payload_offset,
                    packet.payload_len,
                    limit,
                    opened_at_ns,
                );
            } else if let Some(at_ns) = opened_at_ns {
                events::new_flow(seen, &packet.key, at_ns);
            }
        }
        Ok(Frame::Arp(offset)) => {
            if seen.direction == Direction::FromContainer {
                events::arp(ctx, seen, offset);
            }
        }
        Ok(Frame::Other) => bump(Counter::NonIp),
        Err(Malformed) => {
            bump(Counter::Malformed);
            debug!(ctx, "malformed frame on ifindex {}", seen.ifindex);
        }
    }
}

/// Whether the flow's share of payload samples was already sent; counts
/// one more otherwise. Not atomic (BPF has no atomics on a byte): CPUs
/// sampling one flow in the same instant may each send one.
#[inline(always)]
fn sampled_enough(entry: *mut FlowStats) -> bool {
    // SAFETY: the flow's live entry; through the pointer only and once
    // each way, as in `flow::account`, since other CPUs may write it.
    unsafe {
        let samples = &raw mut (*entry).payload_samples;
        let taken = core::ptr::read_volatile(samples);
        if u32::from(taken) >= PAYLOAD_PACKETS.load() {
            return true;
        }
        core::ptr::write_volatile(samples, taken.saturating_add(1));
    }
    false
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that
    // could get here.
    loop {}
}
