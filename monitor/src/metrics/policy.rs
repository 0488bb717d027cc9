//! The policy's counters in `/metrics`, read from the kernel at scrape time.

use std::sync::{Arc, Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
};

use super::state::{counter, gauge};
use crate::{policy::PolicyInForce, sync::lock};

const DROPS: &str = "crossmon_policy_drops_total";
const DROPS_HELP: &str =
    "Packets the policy dropped at the sender's veth (enforce mode), by rule, network default (default:<network>), spoofed_source or spoofed_arp.";
const VIOLATIONS: &str = "crossmon_policy_violations_total";
const VIOLATIONS_HELP: &str =
    "Packets against the policy that were passed (observe mode, or an alert action), by rule or default.";
const INFO: &str = "crossmon_policy_info";
const INFO_HELP: &str = "The policy in force: its mode and file; always 1.";
const FILE_VALID: &str = "crossmon_policy_file_valid";
const FILE_VALID_HELP: &str =
    "Whether the policy file on disk is the one in force (0: its last edit is invalid, the previous policy stays).";

pub struct PolicyCollector {
    policy: Arc<Mutex<PolicyInForce>>,
    descs: Vec<Desc>,
}

impl PolicyCollector {
    pub fn new(policy: Arc<Mutex<PolicyInForce>>) -> anyhow::Result<Self> {
        let descs = [
            (DROPS, DROPS_HELP, vec!["rule".to_owned()]),
            (VIOLATIONS, VIOLATIONS_HELP, vec!["rule".to_owned()]),
            (INFO, INFO_HELP, vec!["mode".to_owned(), "file".to_owned()]),
            (FILE_VALID, FILE_VALID_HELP, Vec::new()),
        ]
        .into_iter()
        .map(|(name, help, labels)| {
            Desc::new(name.to_owned(), help.to_owned(), labels, Default::default())
        })
        .collect::<Result<_, _>>()?;
        Ok(Self { policy, descs })
    }
}

impl Collector for PolicyCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = lock(&self.policy).snapshot();
        let by_rule = |count: fn(&crate::datapath::SlotCounts) -> u64| {
            snapshot
                .counts
                .iter()
                .map(|(name, counts)| (vec![("rule", name.clone())], count(counts) as f64))
                .collect()
        };
        vec![
            counter(DROPS, DROPS_HELP, by_rule(|c| c.dropped)),
            counter(VIOLATIONS, VIOLATIONS_HELP, by_rule(|c| c.passed)),
            gauge(
                INFO,
                INFO_HELP,
                vec![(
                    vec![
                        ("mode", snapshot.mode.to_owned()),
                        ("file", snapshot.file.clone()),
                    ],
                    1.0,
                )],
            ),
            gauge(
                FILE_VALID,
                FILE_VALID_HELP,
                vec![(Vec::new(), if snapshot.file_valid { 1.0 } else { 0.0 })],
            ),
        ]
    }
}
