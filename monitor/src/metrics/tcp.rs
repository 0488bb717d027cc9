//! TCP health per container pair: handshake round trips, resets,
//! retransmitted segments.

use std::sync::{Arc, Mutex};

use super::{Collector, Exposition, Kind};
use crate::{
    series::{Pair, TcpHealth},
    sync::lock,
};

/// `crossmon_tcp_*`.
pub struct TcpCollector {
    pub tcp: Arc<Mutex<TcpHealth>>,
}

impl Collector for TcpCollector {
    fn collect(&self, out: &mut Exposition) {
        let tcp = lock(&self.tcp);
        let mut family = out.family(
            "crossmon_tcp_handshake_rtt_seconds",
            "TCP handshake round trip, first SYN to first SYN-ACK as seen on the veths, by client and server.",
            Kind::Histogram,
        );
        for (
            Pair {
                source,
                destination,
            },
            histogram,
        ) in tcp.rtt()
        {
            family.histogram(
                &[("source", source), ("destination", destination)],
                &histogram.cumulative(),
                histogram.sum_seconds,
                histogram.count,
            );
        }
        let mut family = out.family(
            "crossmon_tcp_resets_total",
            "TCP segments with RST, by sender and receiver.",
            Kind::Counter,
        );
        for (
            Pair {
                source,
                destination,
            },
            n,
        ) in tcp.resets()
        {
            family.sample(&[("source", source), ("destination", destination)], *n);
        }
        let mut family = out.family(
            "crossmon_tcp_retransmits_total",
            "TCP segments the sender's kernel retransmitted (tcp:tcp_retransmit_skb), by sender and receiver.",
            Kind::Counter,
        );
        for (
            Pair {
                source,
                destination,
            },
            n,
        ) in tcp.retransmits()
        {
            family.sample(&[("source", source), ("destination", destination)], *n);
        }
    }
}
