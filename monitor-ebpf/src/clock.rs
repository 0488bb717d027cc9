//! The programs' two clocks: the exact one, for what orders or subtracts
//! times, and the tick, for what a timer tick's precision is enough.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::Array,
    programs::TcContext,
};
use monitor_common::TickClock;

/// `monitor_common::TICK_CLOCK_MAP`, written by the agent.
#[map]
pub static TICK_CLOCK: Array<TickClock> = Array::with_max_entries(1, 0);

/// CLOCK_MONOTONIC now: a handshake's round trip is the difference of
/// two flows' first packets, a DNS answer's latency that of two events.
#[inline(always)]
pub fn exact_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// CLOCK_MONOTONIC at the last timer tick, for a flow's latest packet and
/// the enforce lease: `jiffies`, which the verifier inlines into a load,
/// where any clock helper is a call and a return (each through a
/// speculation thunk on many CPUs), read through the agent's measure of
/// the tick. The exact clock until the agent measured it.
#[inline(always)]
pub fn last_tick_ns() -> u64 {
    match TICK_CLOCK.get(0) {
        // SAFETY: helper without preconditions.
        Some(clock) if clock.tick_ns != 0 => clock.at(unsafe { bpf_jiffies64() }),
        _ => exact_ns(),
    }
}

/// Run by the agent through `BPF_PROG_TEST_RUN`, never attached: the two
/// clocks side by side, written over the frame's first 16 bytes, for the
/// agent to measure the tick (`crossmon::datapath::tick_clock`).
#[classifier]
pub fn tick_probe(ctx: TcContext) -> i32 {
    // SAFETY: helper without preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    // A frame too short keeps its bytes: the agent sees zeros and gives up.
    let _ = ctx.store(0, &[jiffies, exact_ns()], 0);
    TC_ACT_UNSPEC
}
