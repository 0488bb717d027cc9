//! Packet captures: how many, what they wrote, what they lost.

use std::sync::{atomic::Ordering, Arc};

use super::{Collector, Exposition, Kind};
use crate::capture::Captures;

/// `crossmon_captures_total` and the other `crossmon_capture*` families.
pub struct CaptureCollector {
    pub captures: Arc<Captures>,
}

impl Collector for CaptureCollector {
    fn collect(&self, out: &mut Exposition) {
        let totals = &self.captures.totals;
        let read = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        out.family(
            "crossmon_captures_total",
            "Packet captures started (on demand and on alert).",
            Kind::Counter,
        )
        .sample(&[], read(&totals.started));
        out.family(
            "crossmon_captures_running",
            "Packet captures running now.",
            Kind::Gauge,
        )
        .sample(&[], self.captures.running() as u64);
        out.family(
            "crossmon_capture_packets_total",
            "Packets written to captures.",
            Kind::Counter,
        )
        .sample(&[], read(&totals.packets));
        out.family(
            "crossmon_capture_bytes_total",
            "Bytes of packets written to captures, as captured (after snaplen).",
            Kind::Counter,
        )
        .sample(&[], read(&totals.bytes));
        let mut lost = out.family(
            "crossmon_capture_lost_total",
            "Captured packets lost: ring, the kernel's capture ring was full; queue, a capture's reader fell behind.",
            Kind::Counter,
        );
        lost.sample(&[("where", "ring")], read(&totals.lost_in_ring));
        lost.sample(&[("where", "queue")], read(&totals.lost_in_queue));
    }
}
