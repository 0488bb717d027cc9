//! The flow policy, judged where a container's packets enter the host.
//!
//! Bounded work per packet whatever the policy's size: the agent compiles
//! it into per-veth entries, so a packet costs at most three rule lookups
//! and one flow lookup, never a walk over rules. Without a policy
//! (`PolicyMode::Off`) the cost is one array lookup.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use monitor_common::{
    ip_proto, lease_units, DeniedStats, FlowKey, PolicyAction, PolicyIface, PolicyIfaceKey,
    PolicyMode, PolicyRuleKey, PolicyRuleValue, PolicyState, POLICY_PEER_PROTOCOL, POLICY_SLOTS,
    POLICY_SLOT_SPOOFED_ARP, POLICY_SLOT_SPOOFED_SOURCE,
};

use crate::{
    events::Seen,
    maps::{POLICY_COUNTS, POLICY_DENIED, POLICY_IFACES, POLICY_RULES, POLICY_STATE},
    parse::{Frame, IpPacket, Malformed},
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// The policy's verdict on a packet a container sent.
#[inline(always)]
pub fn judge(ctx: &TcContext, seen: &Seen, frame: &Result<Frame, Malformed>) -> Verdict {
    let mode = POLICY_STATE.get(PolicyState::Mode as u32).copied();
    let enforce = match mode {
        Some(m) if m == PolicyMode::Enforce as u32 => lease_held(seen.now_ns),
        Some(m) if m == PolicyMode::Observe as u32 => false,
        _ => return Verdict::Pass,
    };
    let generation = POLICY_STATE
        .get(PolicyState::Generation as u32)
        .copied()
        .unwrap_or(0) as u8;
    let key = PolicyIfaceKey {
        ifindex: seen.ifindex,
        generation,
        _pad: [0; 3],
    };
    // SAFETY: plain data, read before the map could change it again.
    let Some(iface) = (unsafe { POLICY_IFACES.get(key) }) else {
        // A veth the policy does not name yet: the agent compiles a
        // container's entry before it attaches to its veth.
        return Verdict::Pass;
    };
    match frame {
        Ok(Frame::Ip(packet)) => ip(seen, iface, packet, generation, enforce),
        Ok(Frame::Arp(offset)) => arp(ctx, iface, *offset, enforce),
        _ => Verdict::Pass,
    }
}

/// Whether the agent's enforce lease still runs: a dead agent's programs
/// (clsact filters stay after it) go back to observing within a lease.
#[inline(always)]
fn lease_held(now_ns: u64) -> bool {
    POLICY_STATE
        .get(PolicyState::EnforceUntil as u32)
        .is_some_and(|until| lease_units(now_ns) <= *until)
}

#[inline(always)]
fn ip(
    seen: &Seen,
    iface: &PolicyIface,
    packet: &IpPacket,
    generation: u8,
    enforce: bool,
) -> Verdict {
    let key = &packet.key;
    if !owns_source(iface, key) {
        return broke(
            seen,
            key,
            POLICY_SLOT_SPOOFED_SOURCE,
            PolicyAction::Deny as u8,
            enforce,
        );
    }
    let has_ports = matches!(key.protocol, ip_proto::TCP | ip_proto::UDP);
    let mut rule = PolicyRuleKey {
        ifindex: seen.ifindex,
        generation,
        protocol: key.protocol,
        dst_port: if has_ports { key.dst_port } else { 0 },
        dst_addr: key.dst_addr,
    };
    // The most precise entry first: this port, any port, then the
    // destination's network default.
    let mut found = lookup(&rule);
    if found.is_none() && rule.dst_port != 0 {
        rule.dst_port = 0;
        found = lookup(&rule);
    }
    if found.is_none() {
        rule.protocol = POLICY_PEER_PROTOCOL;
        rule.dst_port = 0;
        found = lookup(&rule);
    }
    // Not a container of this veth's network (the gateway, the host,
    // the outside): not the policy's to judge.
    let Some(value) = found else {
        return Verdict::Pass;
    };
    if value.action == PolicyAction::Allow as u8 || is_reply(key) {
        return Verdict::Pass;
    }
    broke(seen, key, value.slot, value.action, enforce)
}

#[inline(always)]
fn lookup(key: &PolicyRuleKey) -> Option<PolicyRuleValue> {
    // SAFETY: plain data, copied out at once.
    unsafe { POLICY_RULES.get(key).copied() }
}

/// A packet of the answers to a flow the other side opened: that flow is
/// in the flow map, which in enforce mode only holds what passed (a
/// dropped packet is not counted).
#[inline(always)]
fn is_reply(key: &FlowKey) -> bool {
    crate::flow::known(&key.reversed())
}

/// Whether the source is one the container may send from: its own, an
/// IPv6 link-local one (the kernel's, not Docker's) or the unspecified
/// address (DHCP, duplicate address detection).
#[inline(always)]
fn owns_source(iface: &PolicyIface, key: &FlowKey) -> bool {
    let src = &key.src_addr;
    if key.ip_version == 4 {
        let unspecified = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
        return same(src, &iface.ipv4) || same(src, &unspecified);
    }
    let link_local = src[0] == 0xfe && src[1] & 0xc0 == 0x80;
    let own = !same(&iface.ipv6, &[0; 16]) && same(src, &iface.ipv6);
    own || link_local || same(src, &[0; 16])
}

/// Two 64-bit compares: a byte-array `==` may become a `bcmp` call, which
/// BPF does not have.
#[inline(always)]
pub fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let halves = |x: &[u8; 16]| {
        let [a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7] = *x;
        (
            u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            u64::from_ne_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        )
    };
    halves(a) == halves(b)
}

/// An ARP packet must speak for the container's own MAC (Ethernet source
/// and sender hardware address) and IPv4 address (or 0.0.0.0, a probe).
#[inline(always)]
fn arp(ctx: &TcContext, iface: &PolicyIface, offset: usize, enforce: bool) -> Verdict {
    let Ok(eth_src) = ctx.load::<[u8; 6]>(6) else {
        return Verdict::Pass;
    };
    // hlen, plen, operation, sender MAC, sender IPv4.
    let Ok(h) = ctx.load::<[u8; 14]>(offset + 4) else {
        // Cut short: the kernel's ARP ignores it too.
        return Verdict::Pass;
    };
    if h[0] != 6 || h[1] != 4 {
        return Verdict::Pass;
    }
    let sender_mac = [h[4], h[5], h[6], h[7], h[8], h[9]];
    let sender_ip = [h[10], h[11], h[12], h[13]];
    let own_ip = [
        iface.ipv4[12],
        iface.ipv4[13],
        iface.ipv4[14],
        iface.ipv4[15],
    ];
    let mac_ok = same_mac(&eth_src, &iface.mac) && same_mac(&sender_mac, &iface.mac);
    let ip_ok = u32::from_ne_bytes(sender_ip) == u32::from_ne_bytes(own_ip)
        || u32::from_ne_bytes(sender_ip) == 0;
    if mac_ok && ip_ok {
        return Verdict::Pass;
    }
    count(POLICY_SLOT_SPOOFED_ARP, enforce);
    if enforce {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

#[inline(always)]
fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let wide = |m: &[u8; 6]| u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]);
    wide(a) == wide(b)
}

/// A packet that broke the policy: counted in its slot and its flow;
/// dropped when the action is `deny` and the policy enforced.
#[inline(always)]
fn broke(seen: &Seen, key: &FlowKey, slot: u32, action: u8, enforce: bool) -> Verdict {
    let drop = enforce && action == PolicyAction::Deny as u8;
    count(slot, drop);
    record(seen, key, slot, drop);
    if drop {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

#[inline(always)]
fn count(slot: u32, dropped: bool) {
    let index = if dropped { POLICY_SLOTS + slot } else { slot };
    if let Some(counter) = POLICY_COUNTS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU.
        unsafe { *counter = (*counter).wrapping_add(1) };
    }
}

/// Keeps the flow for the agent's alerts, as `flow::account` keeps flows.
#[inline(always)]
fn record(seen: &Seen, key: &FlowKey, slot: u32, dropped: bool) {
    let entry = match POLICY_DENIED.get_ptr_mut(key) {
        Some(entry) => entry,
        None => {
            let _ = POLICY_DENIED.insert(key, DeniedStats::default(), u64::from(BPF_NOEXIST));
            match POLICY_DENIED.get_ptr_mut(key) {
                Some(entry) => entry,
                None => return,
            }
        }
    };
    // SAFETY: this CPU's slot of a per-CPU entry: only programs on this
    // CPU write it, and they do not nest for one hook.
    let stats = unsafe { &mut *entry };
    if stats.first_seen_ns == 0 {
        stats.first_seen_ns = seen.now_ns;
        stats.ifindex = seen.ifindex;
    }
    stats.slot = slot;
    stats.last_seen_ns = seen.now_ns;
    stats.packets = stats.packets.wrapping_add(1);
    if dropped {
        stats.dropped = stats.dropped.wrapping_add(1);
    }
}
