//! The policy's counters, read from the kernel at scrape time.

use std::sync::{Arc, Mutex};

use super::{Collector, Exposition, Kind};
use crate::{datapath::SlotCounts, policy::PolicyInForce, sync::lock};

/// `crossmon_policy_{drops,violations}_total`, `crossmon_policy_info`,
/// `crossmon_policy_file_valid`.
pub struct PolicyCollector {
    pub policy: Arc<Mutex<PolicyInForce>>,
}

impl Collector for PolicyCollector {
    fn collect(&self, out: &mut Exposition) {
        let snapshot = lock(&self.policy).snapshot();
        type Count = fn(&SlotCounts) -> u64;
        let by_rule: [(&str, &str, Count); 2] = [
            (
                "crossmon_policy_drops_total",
                "Packets the policy dropped at the sender's veth (enforce mode), by rule, network default (default:<network>), spoofed_source or spoofed_arp.",
                |c| c.dropped,
            ),
            (
                "crossmon_policy_violations_total",
                "Packets against the policy that were passed (observe mode, or an alert action), by rule or default.",
                |c| c.passed,
            ),
        ];
        for (name, help, count) in by_rule {
            let mut family = out.family(name, help, Kind::Counter);
            for (rule, counts) in &snapshot.counts {
                family.sample(&[("rule", rule)], count(counts));
            }
        }
        out.family(
            "crossmon_policy_info",
            "The policy in force: its mode and file; always 1.",
            Kind::Gauge,
        )
        .sample(&[("mode", snapshot.mode), ("file", &snapshot.file)], 1u64);
        out.family(
            "crossmon_policy_file_valid",
            "Whether the policy file on disk is the one in force (0: its last edit is invalid, the previous policy stays).",
            Kind::Gauge,
        )
        .sample(&[], u64::from(snapshot.file_valid));
    }
}
