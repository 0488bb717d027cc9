//! What attaching cost and what it came too late for: the time from a
//! veth's notification to the programs on it, and the packets that crossed
//! it before.

use crate::sync::lock;

/// What attaching cost and what it came too late for, since the start, for
/// `/metrics`.
#[derive(Default)]
pub struct AttachStats {
    inner: std::sync::Mutex<AttachCounts>,
}

#[derive(Clone, Default)]
pub struct AttachCounts {
    /// Attaches per latency bucket of [`ATTACH_LATENCY_BUCKETS`] (not
    /// cumulative), with their sum and count; only attaches whose
    /// enslaving notification was seen (not those found by a listing, as
    /// at start).
    pub latency_buckets: [u64; ATTACH_LATENCY_BUCKETS.len()],
    pub latency_over: u64,
    pub latency_sum: f64,
    pub latency_count: u64,
    /// Packets the veths' own counters showed right after attaching.
    pub unattached_packets: u64,
}

/// Upper bounds, in seconds, of the attach latency histogram.
pub const ATTACH_LATENCY_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
];

impl AttachStats {
    pub fn attached(&self, latency: Option<std::time::Duration>, packets_before: u64) {
        let mut counts = lock(&self.inner);
        counts.unattached_packets = counts.unattached_packets.saturating_add(packets_before);
        let Some(latency) = latency else {
            return;
        };
        let seconds = latency.as_secs_f64();
        match ATTACH_LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
        {
            Some(bucket) => counts.latency_buckets[bucket] += 1,
            None => counts.latency_over += 1,
        }
        counts.latency_sum += seconds;
        counts.latency_count += 1;
    }

    pub fn counts(&self) -> AttachCounts {
        lock(&self.inner).clone()
    }
}
