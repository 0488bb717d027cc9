//! Measuring the kernel's timer tick for the programs' tick clock
//! (`monitor_common::TICK_CLOCK_MAP`).
//!
//! User space cannot read `jiffies`, so `tick_probe` reads it beside
//! CLOCK_MONOTONIC, run through `BPF_PROG_TEST_RUN`. Run back to back,
//! its samples show when `jiffies` moves on: those first samples, a few
//! microseconds after their tick, give the tick's length and where ticks
//! fall on CLOCK_MONOTONIC.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
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

/// Tick starts timed: the tick's length is the median of their gaps.
const EDGES: usize = 4;
/// The timer rates, in Hz, a kernel can be built with (`kernel/Kconfig.hz`,
/// what x86 and arm64 offer). A sample taken tens of microseconds late
/// moves a gap by a percent: the rate is the one nearest.
const RATES: [u64; 4] = [100, 250, 300, 1000];
/// How far the measured tick may be from the chosen rate's.
const TOLERANCE: f64 = 0.1;
/// Longer than four ticks at the slowest rate kernels are built with
/// (100 Hz), with room for a busy machine.
const GIVE_UP_AFTER: Duration = Duration::from_millis(500);

/// One run of the probe: `jiffies` and CLOCK_MONOTONIC (ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub jiffies: u64,
    pub ns: u64,
}

/// Measures the tick and writes it into the programs' clock map; the
/// programs keep the exact clock when this fails.
pub fn set(ebpf: &mut Ebpf) -> anyhow::Result<TickClock> {
    let probe: &mut SchedClassifier = ebpf
        .program_mut(PROGRAM_TICK_PROBE)
        .with_context(|| format!("program {PROGRAM_TICK_PROBE} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {PROGRAM_TICK_PROBE} is not a TC classifier"))?;
    probe
        .load()
        .map_err(|err| super::preflight::explain_program_error(PROGRAM_TICK_PROBE, err))?;
    let edges = tick_starts(|| sample(probe))?;
    let clock = measure(&edges)?;
    probe.unload().context("unloading the tick probe")?;
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

/// Runs the probe until it has seen `jiffies` move on `EDGES` times:
/// the first sample of each new value.
fn tick_starts(mut sample: impl FnMut() -> anyhow::Result<Sample>) -> anyhow::Result<Vec<Sample>> {
    let started = Instant::now();
    let mut previous = sample()?;
    let mut edges = Vec::with_capacity(EDGES);
    while edges.len() < EDGES {
        if started.elapsed() > GIVE_UP_AFTER {
            bail!(
                "jiffies moved on {} times in {GIVE_UP_AFTER:?} of probing, not {EDGES}",
                edges.len()
            );
        }
        let now = sample()?;
        if now.ns == 0 {
            bail!("the tick probe wrote no clock");
        }
        if now.jiffies != previous.jiffies {
            edges.push(now);
        }
        previous = now;
    }
    Ok(edges)
}

/// The tick from the first samples of successive `jiffies` values: its
/// length, the kernel's `TICK_NSEC` for the rate nearest the median gap
/// per tick (so that one sample delayed by the scheduler moves nothing),
/// and its place on CLOCK_MONOTONIC, from the sample taken soonest after
/// its tick.
pub fn measure(edges: &[Sample]) -> anyhow::Result<TickClock> {
    let mut gaps: Vec<f64> = edges
        .windows(2)
        .filter_map(|pair| {
            let ticks = pair[1].jiffies.checked_sub(pair[0].jiffies)?;
            let ns = pair[1].ns.checked_sub(pair[0].ns)?;
            (ticks != 0).then(|| ns as f64 / ticks as f64)
        })
        .collect();
    if gaps.is_empty() {
        bail!("no two ticks to measure the tick by");
    }
    gaps.sort_by(f64::total_cmp);
    let gap = gaps[gaps.len() / 2];
    // The kernel's TICK_NSEC: NSEC_PER_SEC / HZ, rounded.
    let tick_ns = RATES
        .iter()
        .map(|hz| (1_000_000_000 + hz / 2) / hz)
        .min_by(|a, b| (*a as f64 - gap).abs().total_cmp(&(*b as f64 - gap).abs()))
        .filter(|&tick| (tick as f64 - gap).abs() <= TOLERANCE * tick as f64)
        .with_context(|| {
            format!("a tick of {gap:.0} ns is no timer rate a kernel is built with")
        })?;
    let offset_ns = edges
        .iter()
        .map(|edge| edge.ns.wrapping_sub(edge.jiffies.wrapping_mul(tick_ns)))
        .min_by_key(|&offset| offset as i64)
        .unwrap_or_default();
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
    fn ticks_sampled_late_by_microseconds_give_the_kernels_tick() {
        let edges = [
            edge(1000, 3_000),
            edge(1001, 1_000),
            edge(1002, 7_000),
            edge(1003, 2_000),
        ];
        let clock = measure(&edges).unwrap();
        assert_eq!(clock.tick_ns, TICK);
        // The soonest sample places the ticks: 1 µs late.
        let tick_1001 = 1001 * TICK + PHASE;
        assert_eq!(clock.at(BOOT_JIFFIES + 1001), tick_1001 + 1_000);
        assert_eq!(clock.at(BOOT_JIFFIES + 5000), 5000 * TICK + PHASE + 1_000);
    }

    #[test]
    fn one_tick_seen_a_scheduler_slice_late_moves_nothing() {
        // The probe was off the CPU for three ticks and saw the third
        // 1 ms late; the median gap per tick is still the tick.
        let edges = [
            edge(10, 2_000),
            edge(11, 2_000),
            edge(14, 1_000_000),
            edge(15, 2_000),
            edge(16, 2_000),
        ];
        let clock = measure(&edges).unwrap();
        assert_eq!(clock.tick_ns, TICK);
        assert_eq!(clock.at(BOOT_JIFFIES + 11), 11 * TICK + PHASE + 2_000);
    }

    #[test]
    fn gaps_a_percent_off_give_the_rate_nearest() {
        // Seen on a VM at 250 Hz: gaps of 3.98 ms, not the 251 Hz they
        // round to.
        let edges: Vec<Sample> = (0..4)
            .map(|n| Sample {
                jiffies: 100 + n,
                ns: n * 3_984_064,
            })
            .collect();
        assert_eq!(measure(&edges).unwrap().tick_ns, TICK);
        let between = [
            Sample { jiffies: 5, ns: 0 },
            Sample {
                jiffies: 6,
                ns: 2_000_000,
            },
        ];
        assert!(measure(&between).is_err(), "500 Hz is no kernel's rate");
    }

    #[test]
    fn rates_that_do_not_divide_a_second_take_the_kernels_rounding() {
        // 300 Hz: TICK_NSEC is 3333333, not 3333333.33.
        let edges: Vec<Sample> = (0..4)
            .map(|n| Sample {
                jiffies: 7 + n,
                ns: 1_000_000 + n * 3_333_333 + 500,
            })
            .collect();
        assert_eq!(measure(&edges).unwrap().tick_ns, 3_333_333);
    }

    #[test]
    fn samples_that_are_no_tick_are_refused() {
        assert!(measure(&[edge(1, 0)]).is_err());
        let stalled = [Sample { jiffies: 5, ns: 10 }, Sample { jiffies: 5, ns: 20 }];
        assert!(measure(&stalled).is_err());
        let far = [
            Sample { jiffies: 5, ns: 0 },
            Sample {
                jiffies: 6,
                ns: 1_000_000_000_000,
            },
        ];
        assert!(measure(&far).is_err());
    }

    #[test]
    fn probing_stops_at_the_fourth_tick_start() {
        // A tick every third sample.
        let mut n = 0u64;
        let edges = tick_starts(|| {
            n += 1;
            Ok(Sample {
                jiffies: n / 3,
                ns: n * 1_000,
            })
        })
        .unwrap();
        let jiffies: Vec<u64> = edges.iter().map(|edge| edge.jiffies).collect();
        assert_eq!(jiffies, [1, 2, 3, 4]);
        assert_eq!(edges[0].ns, 3_000);
    }
}
