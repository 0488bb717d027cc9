//! The kernel-timed benches' figure: several measures of a program's mean
//! run time, of which the median is kept, so that one measure disturbed by
//! the machine does not move it.

use std::time::Duration;

/// Measures per figure.
pub const MEASURES: usize = 7;

/// Median, in ns, of `MEASURES` calls of `measure` (each a mean run time).
pub fn median_ns(mut measure: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<f64> {
    let mut times = (0..MEASURES)
        .map(|_| measure())
        .collect::<anyhow::Result<Vec<_>>>()?;
    times.sort();
    Ok(times[MEASURES / 2].as_secs_f64() * 1e9)
}
