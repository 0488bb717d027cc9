//! Tracepoints: `tcp:tcp_retransmit_skb`, the segments a sender's kernel
//! retransmits, counted by flow; `skb:kfree_skb`, the packets the kernel
//! drops, counted by addresses and reason. Both fire in whatever
//! namespace the packet is, so a container's are seen with its own
//! addresses.
//!
//! The records' layouts are read by the agent from the events' `format`
//! files at load time, and `struct sk_buff`'s from the kernel's BTF, and
//! handed over in globals (offsets): nothing here assumes one kernel's
//! layout. Every read goes through `bpf_probe_read_kernel`, which fails
//! cleanly.

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext};
use monitor_common::{ip_proto, DropKey, FlowKey, NO_FIELD};

use crate::maps::{
    DROPS, DROP_PROTOCOL, DROP_REASON, DROP_SKBADDR, RETRANSMITS, RETRANSMIT_DADDR_V6,
    RETRANSMIT_DPORT, RETRANSMIT_SADDR_V6, RETRANSMIT_SPORT, SKB_HEAD, SKB_NETWORK_HEADER,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The first 12 bytes of an IPv4-mapped IPv6 address.
const V4_MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

#[tracepoint]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    let _ = count(&ctx);
    0
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: `read_at` copies with bpf_probe_read_kernel, which checks
    // the address and fails instead of faulting.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

#[inline(always)]
fn count(ctx: &TracePointContext) -> Option<()> {
    let mut key = FlowKey::ZERO;
    key.protocol = ip_proto::TCP;
    // The tracepoint stores ports in host order, as the flow key does, and
    // IPv4 addresses IPv4-mapped in its IPv6 fields, as the key does.
    key.src_port = read(ctx, RETRANSMIT_SPORT.load())?;
    key.dst_port = read(ctx, RETRANSMIT_DPORT.load())?;
    key.src_addr = read(ctx, RETRANSMIT_SADDR_V6.load())?;
    key.dst_addr = read(ctx, RETRANSMIT_DADDR_V6.load())?;
    let mapped = key.src_addr[..12] == V4_MAPPED;
    key.ip_version = if mapped { 4 } else { 6 };
    match RETRANSMITS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot; tracepoint programs do not nest on one
        // CPU for one event.
        Some(slot) => unsafe { *slot = (*slot).wrapping_add(1) },
        None => {
            let _ = RETRANSMITS.insert(key, 1, 0);
        }
    }
    Some(())
}

#[tracepoint]
pub fn skb_drop(ctx: TracePointContext) -> u32 {
    let _ = count_drop(&ctx);
    0
}

/// Reads a `T` at kernel address `address`.
#[inline(always)]
fn kernel<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead
    // of faulting.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}

#[inline(always)]
fn count_drop(ctx: &TracePointContext) -> Option<()> {
    // The record stores the protocol in host order.
    let protocol: u16 = read(ctx, DROP_PROTOCOL.load())?;
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return Some(());
    }
    let skb: u64 = read(ctx, DROP_SKBADDR.load())?;
    let head: u64 = kernel(skb.wrapping_add(u64::from(SKB_HEAD.load())))?;
    let network: u16 = kernel(skb.wrapping_add(u64::from(SKB_NETWORK_HEADER.load())))?;
    // `(u16)~0`: no network header was set.
    if network == u16::MAX {
        return Some(());
    }
    let ip = head.wrapping_add(u64::from(network));
    let mut key = DropKey::ZERO;
    if protocol == ETH_P_IP {
        let header: [u8; 20] = kernel(ip)?;
        let v4 = FlowKey::ipv4(
            [header[12], header[13], header[14], header[15]],
            0,
            [header[16], header[17], header[18], header[19]],
            0,
            0,
        );
        key.src_addr = v4.src_addr;
        key.dst_addr = v4.dst_addr;
        key.ip_version = 4;
    } else {
        let header: [u8; 40] = kernel(ip)?;
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&header[8..24]);
        dst.copy_from_slice(&header[24..40]);
        key.src_addr = src;
        key.dst_addr = dst;
        key.ip_version = 6;
    }
    let reason_at = DROP_REASON.load();
    if reason_at != NO_FIELD {
        key.reason = read(ctx, reason_at)?;
    }
    match DROPS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot, as for retransmissions.
        Some(slot) => unsafe { *slot = (*slot).wrapping_add(1) },
        None => {
            let _ = DROPS.insert(key, 1, 0);
        }
    }
    Some(())
}
