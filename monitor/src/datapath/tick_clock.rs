//! Measuring the kernel's timer tick for the programs' tick clock
//! (`monitor_common::TICK_CLOCK_MAP`).
//!
//! User space cannot read `jiffies`, so `tick_probe` reads it beside
//! CLOCK_MONOTONIC, run through `BPF_PROG_TEST_RUN`. Run back to back,
//! its samples show when `jiffies` moves on: the first sample of a new
//! value is microseconds after its tick, when the sample before it was
//! taken microseconds before (a prober held up between the two, say a
//! VM's CPU descheduled, passes that tick over for the next). Three such
//! tick starts, a tenth of a second apart, give the tick's length over
//! their whole span and where ticks fall on CLOCK_MONOTONIC; each start
//! must then be where that clock puts it, or the measure is taken again.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::Array,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    Ebpf,
};
use monitor_common::{TickClock, TICK_CLOCK_MAP};

use super::PROGRAM_TICK_PROBE;

/// The probe writes `jiffies` then CLOCK_MONOTONIC, read one after the
/// other, as two native-endian u64 at the start of the frame it is run on.
const TICK_PROBE_FRAME: usize = 64;

/// Tick starts timed, `SPACING` apart.
const EDGES: usize = 3;
/// Over 0.2 s, a start sampled late by as much as a tick moves the
/// measured length by 2 % at most (at 100 Hz 5 %), where the rates
/// kernels are built with lie 17 % apart or more.
const SPACING: Duration = Duration::from_millis(100);
/// The timer rates, in Hz, a kernel can be built with (`kernel/Kconfig.hz`,
/// what x86 and arm64 offer).
const RATES: [u64; 4] = [100, 250, 300, 1000];
/// How far the measured length may be from the nearest rate's tick.
const TOLERANCE: f64 = 0.06;
/// The widest the two samples around a tick may lie apart for the second
/// to count as its start: a quarter of the shortest tick (1000 Hz), no
/// more than the lateness `measure` allows a start at any rate.
const BRACKET_NS: u64 = 250_000;
/// Ten ticks at the slowest rate: `jiffies` moves on within it, and a
/// start is bracketed closely enough, on a running CPU.
const GIVE_UP_AFTER: Duration = Duration::from_millis(100);
/// How long to go on while ticks do come, each across a gap wider than
/// the bracket: a CPU shared with busy work or emulated (qemu without
/// KVM, loaded) samples slowly, and fast enough only now and then. A
/// measure given up leaves the programs on the exact clock for good, so
/// a busy host's agent is worth a second more at its start; CI's VM
/// tier gave up after 100 ms with 13 ticks passed over.
const GIVE_UP_HELD_UP_AFTER: Duration = Duration::from_secs(1);
/// Measures taken before the programs are left on the exact clock: a
/// start sampled late (the prober preempted) spoils one.
const ATTEMPTS: usize = 3;

/// One run of the probe: `jiffies` and CLOCK_MONOTONIC (ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub jiffies: u64,
    pub ns: u64,
}

/// Measures the tick and writes it into the programs' clock map; the
/// programs keep the exact clock when this fails.
pub fn set(ebpf: &mut Ebpf) -> anyhow::Result<TickClock> {
    let probe = super::load::load_classifier(ebpf, PROGRAM_TICK_PROBE)?;
    let mut measured = Err(anyhow!("no measure taken"));
    for _ in 0..ATTEMPTS {
        measured = tick_starts(|| sample(probe), std::thread::sleep).and_then(|e| measure(&e));
        if measured.is_ok() {
            break;
        }
    }
    let unloaded = probe.unload().context("unloading the tick probe");
    let clock = measured.with_context(|| format!("measuring the timer tick ({ATTEMPTS} tries)"))?;
    unloaded?;
    let mut map: Array<_, TickClock> = Array::try_from(
        ebpf.map_mut(TICK_CLOCK_MAP)
            .with_context(|| format!("map {TICK_CLOCK_MAP} missing from the object"))?,
    )?;
    map.set(0, clock, 0)
        .context("writing the measured tick into the programs' clock")?;
    Ok(clock)
}

fn sample(probe: &mut SchedClassifier) -> anyhow::Result<Sample> {
    let frame = [0u8; TICK_PROBE_FRAME];
    let mut out = [0u8; TICK_PROBE_FRAME];
    probe
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN of the tick probe")?;
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&out[at..at + 8]);
        u64::from_ne_bytes(bytes)
    };
    Ok(Sample {
        jiffies: word(0),
        ns: word(8),
    })
}

/// `EDGES` tick starts, with a `pause` of `SPACING` before each after the
/// first.
fn tick_starts(
    mut sample: impl FnMut() -> anyhow::Result<Sample>,
    mut pause: impl FnMut(Duration),
) -> anyhow::Result<Vec<Sample>> {
    let mut edges = Vec::with_capacity(EDGES);
    for _ in 0..EDGES {
        if !edges.is_empty() {
            pause(SPACING);
        }
        edges.push(next_tick_start(&mut sample)?);
    }
    Ok(edges)
}

/// Samples until `jiffies` moves on between two samples `BRACKET_NS` or
/// less apart: that first sample of its new value. The tick came after
/// the earlier sample read `jiffies`, nanoseconds before its clock, so the
/// start is about that close to it.
fn next_tick_start(sample: &mut impl FnMut() -> anyhow::Result<Sample>) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let mut before = sample()?;
    // Ticks that came across a wider gap between two samples.
    let mut held_up = 0;
    loop {
        let now = sample()?;
        if now.ns == 0 {
            bail!("the tick probe wrote no clock");
        }
        if now.jiffies != before.jiffies {
            if now.ns.saturating_sub(before.ns) <= BRACKET_NS {
                return Ok(now);
            }
            held_up += 1;
        }
        let elapsed = started.elapsed();
        if held_up == 0 && elapsed > GIVE_UP_AFTER {
            bail!("jiffies did not move in {GIVE_UP_AFTER:?} of probing");
        }
        if elapsed > GIVE_UP_HELD_UP_AFTER {
            bail!(
                "no tick came between samples at most {} µs apart in {GIVE_UP_HELD_UP_AFTER:?} \
                 of probing ({held_up} came across wider gaps: the prober was held up)",
                BRACKET_NS / 1000
            );
        }
        before = now;
    }
}

/// The tick from tick starts: its length, the kernel's `TICK_NSEC` of the
/// rate nearest their span per tick, and its place on CLOCK_MONOTONIC,
/// from the start sampled soonest after its tick (every sample is late,
/// none early: the probe reads `jiffies` first). Refused unless every
/// start lies within a quarter tick after where the clock puts it: a
/// wrong rate drifts by whole ticks over the span, and a start sampled
/// late was no start.
pub fn measure(edges: &[Sample]) -> anyhow::Result<TickClock> {
    let (Some(first), Some(last)) = (edges.first(), edges.last()) else {
        bail!("no tick start to measure by");
    };
    let ticks = last.jiffies.saturating_sub(first.jiffies);
    let span = last.ns.saturating_sub(first.ns);
    if ticks == 0 {
        bail!("no two ticks to measure the tick by");
    }
    let gap = span as f64 / ticks as f64;
    // The kernel's TICK_NSEC: NSEC_PER_SEC / HZ, rounded.
    let tick_ns = RATES
        .iter()
        .map(|hz| (1_000_000_000 + hz / 2) / hz)
        .min_by(|a, b| (*a as f64 - gap).abs().total_cmp(&(*b as f64 - gap).abs()))
        .filter(|&tick| (tick as f64 - gap).abs() <= TOLERANCE * tick as f64)
        .with_context(|| {
            format!("a tick of {gap:.0} ns is no timer rate a kernel is built with")
        })?;
    // Where the clock would put the ticks by each start: the earliest is
    // the least late.
    let offset_of = |edge: &Sample| edge.ns.wrapping_sub(edge.jiffies.wrapping_mul(tick_ns));
    let offset_ns = edges
        .iter()
        .map(offset_of)
        .min_by_key(|&offset| offset as i64)
        .unwrap_or_default();
    for edge in edges {
        let late_ns = offset_of(edge).wrapping_sub(offset_ns);
        if late_ns >= tick_ns / 4 {
            bail!(
                "a tick start sampled {} µs after where a tick of {tick_ns} ns puts it ({edge:?})",
                late_ns / 1000
            );
        }
    }
    Ok(TickClock { tick_ns, offset_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `jiffies` as a 250 Hz kernel keeps it from boot (INITIAL_JIFFIES).
    const BOOT_JIFFIES: u64 = (-300i64 * 250) as u32 as u64;
    const TICK: u64 = 4_000_000;
    /// Where ticks fall: 1.5 ms past a whole multiple of the tick.
    const PHASE: u64 = 1_500_000;

    /// The first sample of tick `n`, taken `late` ns after it.
    fn edge(n: u64, late: u64) -> Sample {
        Sample {
            jiffies: BOOT_JIFFIES + n,
            ns: n * TICK + PHASE + late,
        }
    }

    #[test]
    fn starts_sampled_microseconds_late_give_the_kernels_tick() {
        let edges = [edge(1000, 3_000), edge(1025, 1_000), edge(1050, 7_000)];
        let clock = measure(&edges).unwrap();
        assert_eq!(clock.tick_ns, TICK);
        // The soonest sample places the ticks: 1 µs late.
        assert_eq!(clock.at(BOOT_JIFFIES + 1025), 1025 * TICK + PHASE + 1_000);
        assert_eq!(clock.at(BOOT_JIFFIES + 9000), 9000 * TICK + PHASE + 1_000);
    }

    #[test]
    fn a_start_sampled_a_quarter_tick_late_spoils_the_measure() {
        // The prober was preempted as the last tick came: that sample is
        // no start, and the tick it would give is refused, not used.
        let edges = [edge(1000, 2_000), edge(1025, 2_000), edge(1050, 1_100_000)];
        let err = measure(&edges).unwrap_err().to_string();
        assert!(err.contains("1098 µs after"), "{err}");
        let edges = [edge(1000, 2_000), edge(1025, 2_000), edge(1050, 900_000)];
        assert_eq!(measure(&edges).unwrap().tick_ns, TICK);
    }

    #[test]
    fn a_rate_near_another_does_not_pass_for_it() {
        // 300 Hz starts, 0.2 s apart: 3333333 ns a tick (TICK_NSEC, not
        // 3333333.33), never 250 Hz's 4 ms.
        let edges: Vec<Sample> = [0, 30, 60]
            .into_iter()
            .map(|n| Sample {
                jiffies: 7 + n,
                ns: 1_000_000 + n * 3_333_333 + 500,
            })
            .collect();
        assert_eq!(measure(&edges).unwrap().tick_ns, 3_333_333);
        // Ticks of 2 ms are no rate a kernel is built with.
        let between: Vec<Sample> = [0, 50]
            .into_iter()
            .map(|n| Sample {
                jiffies: 9 + n,
                ns: n * 2_000_000,
            })
            .collect();
        assert!(measure(&between).is_err());
    }

    #[test]
    fn samples_that_are_no_ticks_are_refused() {
        assert!(measure(&[]).is_err());
        assert!(measure(&[edge(1, 0)]).is_err());
        let stalled = [Sample { jiffies: 5, ns: 10 }, Sample { jiffies: 5, ns: 20 }];
        assert!(measure(&stalled).is_err());
    }

    #[test]
    fn probing_takes_three_starts_a_pause_apart() {
        // A tick every third sample; the pauses are counted, not slept.
        let mut n = 0u64;
        let mut pauses = Vec::new();
        let edges = tick_starts(
            || {
                n += 1;
                Ok(Sample {
                    jiffies: n / 3,
                    ns: n * 1_000,
                })
            },
            |pause| pauses.push(pause),
        )
        .unwrap();
        let jiffies: Vec<u64> = edges.iter().map(|edge| edge.jiffies).collect();
        // Each start is the first sample of a value after the one its
        // search began on.
        assert_eq!(jiffies, [1, 2, 3]);
        assert_eq!(edges[0].ns, 3_000);
        assert_eq!(pauses, [SPACING, SPACING]);
    }

    #[test]
    fn a_tick_the_prober_was_held_up_over_is_passed_over() {
        // Samples 10 µs apart, but the prober was held up 3 ms as tick 1
        // came: its first sample is no start, the next tick's is.
        let times = [0, 10_000, 3_010_000, 3_020_000, 4_000_000, 4_010_000];
        let jiffies = [0, 0, 1, 1, 1, 2];
        let mut samples = times
            .into_iter()
            .zip(jiffies)
            .map(|(ns, jiffies)| Sample { jiffies, ns });
        let start = next_tick_start(&mut || samples.next().context("probed past the samples"));
        assert_eq!(
            start.unwrap(),
            Sample {
                jiffies: 2,
                ns: 4_010_000
            }
        );
    }

    #[test]
    fn a_probe_that_writes_no_clock_is_refused() {
        let err = tick_starts(|| Ok(Sample { jiffies: 1, ns: 0 }), |_| {}).unwrap_err();
        assert!(err.to_string().contains("wrote no clock"), "{err}");
    }
}
