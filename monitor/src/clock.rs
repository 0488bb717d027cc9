//! The programs stamp packets with CLOCK_MONOTONIC (exact, or to the timer
//! tick: `monitor_common::TICK_CLOCK_MAP`); people and SIEMs want
//! wall-clock time.

use chrono::{DateTime, Utc};

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC now, in the programs' time base.
pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC)
}

/// Wall-clock time of a monotonic timestamp. Computed from the current
/// offset between the clocks, so a wall-clock step (NTP) shifts old stamps
/// with it, which is what readers of "last seen" expect.
pub fn to_utc(monotonic: u64) -> DateTime<Utc> {
    let realtime = now(libc::CLOCK_REALTIME);
    let age = monotonic_ns().saturating_sub(monotonic);
    let nanos = realtime.saturating_sub(age);
    DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// A monotonic timestamp as crossmon writes every time (API, alerts, logs):
/// RFC 3339 in UTC with milliseconds, e.g. `2026-12-03T10:15:30.123Z`.
pub fn rfc3339_ms(monotonic: u64) -> String {
    to_utc(monotonic).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
