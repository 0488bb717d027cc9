//! DNS per container: queries, responses by code, queries unanswered,
//! messages that did not parse. Names are never labels.

use std::sync::Arc;

use super::{Collector, Exposition, Kind};
use crate::dns::DnsLog;

/// `crossmon_dns_*`.
pub struct DnsCollector {
    pub dns: Arc<DnsLog>,
}

impl Collector for DnsCollector {
    fn collect(&self, out: &mut Exposition) {
        let counts = self.dns.counts();
        let mut family = out.family(
            "crossmon_dns_queries_total",
            "DNS queries seen on the veths, by the container that asked.",
            Kind::Counter,
        );
        for (container, n) in &counts.queries {
            family.sample(&[("container", container)], *n);
        }
        let mut family = out.family(
            "crossmon_dns_responses_total",
            "DNS responses seen on the veths, by the container that asked and response code.",
            Kind::Counter,
        );
        for ((container, rcode), n) in &counts.responses {
            family.sample(&[("container", container), ("rcode", rcode)], *n);
        }
        let mut family = out.family(
            "crossmon_dns_unanswered_total",
            "DNS queries with no response seen within 5 seconds, by the container that asked.",
            Kind::Counter,
        );
        for (container, n) in &counts.unanswered {
            family.sample(&[("container", container)], *n);
        }
        out.family(
            "crossmon_dns_malformed_total",
            "Messages to or from port 53 that did not parse as DNS.",
            Kind::Counter,
        )
        .sample(&[], counts.malformed);
    }
}
