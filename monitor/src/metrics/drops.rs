//! Packets of watched containers the kernel dropped, by sender and reason.

use std::sync::{Arc, Mutex};

use super::{Collector, Exposition, Kind};
use crate::{series::DropCounts, sync::lock};

/// `crossmon_drops_total`.
pub struct DropsCollector {
    pub drops: Arc<Mutex<DropCounts>>,
}

impl Collector for DropsCollector {
    fn collect(&self, out: &mut Exposition) {
        let drops = lock(&self.drops);
        let mut family = out.family(
            "crossmon_drops_total",
            "Packets to or from watched containers the kernel dropped (skb:kfree_skb), by sender and the kernel's reason (docker_isolation: a netfilter drop between containers Docker isolates).",
            Kind::Counter,
        );
        for ((source, reason), n) in drops.counts() {
            family.sample(&[("source", source), ("reason", reason)], *n);
        }
    }
}
