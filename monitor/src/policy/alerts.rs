//! `policy_violation`: a container sent what the policy does not allow,
//! with the rule or network default that judged it.

use monitor_common::{DeniedStats, FlowKey};
use serde_json::json;

use std::sync::{Arc, Mutex};

use super::PolicyInForce;
use crate::{
    alert::{Alert, AlertSink, Severity},
    clock,
    docker::Directory,
    flows::{Poll, PollConsumer},
    model::{key_addrs, protocol_name},
    sync::lock,
};

/// Raises a `policy_violation` for each flow the policy judged since the
/// previous poll. Spoofed sources are `ip_spoof`'s (a detector).
pub struct ViolationAlerts {
    pub policy: Arc<Mutex<PolicyInForce>>,
    pub sink: Arc<Mutex<AlertSink>>,
}

impl PollConsumer for ViolationAlerts {
    fn on_poll(&mut self, poll: &Poll<'_>) {
        let judged: Vec<_> = poll
            .denied
            .iter()
            .filter(|(_, stats)| stats.slot != monitor_common::POLICY_SLOT_SPOOFED_SOURCE)
            .collect();
        if judged.is_empty() {
            return;
        }
        let (names, mode) = {
            let policy = lock(&self.policy);
            let names: Vec<String> = judged
                .iter()
                .map(|(_, stats)| policy.slot_name(stats.slot))
                .collect();
            (names, policy.config.mode_name())
        };
        let mut sink = lock(&self.sink);
        for ((key, stats), rule) in judged.into_iter().zip(names) {
            if let Some(alert) = violation(key, stats, &rule, mode, poll.directory) {
                sink.raise(alert, poll.now_ns);
            }
        }
    }
}

/// The alert for a flow that broke the policy under counter `rule`;
/// `None` while its sender is not known yet.
pub fn violation(
    key: &FlowKey,
    stats: &DeniedStats,
    rule: &str,
    mode: &str,
    directory: &Directory,
) -> Option<Alert> {
    let source = directory.by_veth_end(stats.ifindex)?;
    let (_, dst_ip) = key_addrs(key);
    let destination = directory.by_address(dst_ip);
    let name = Alert::end_name;
    let protocol = protocol_name(key.protocol);
    let verdict = if stats.dropped > 0 {
        "dropped"
    } else {
        "passed"
    };
    let time = clock::rfc3339_ms(stats.first_seen_ns);
    Some(Alert {
        capture: None,
        node: None,
        summary: format!(
            "{} sent {protocol} to {} port {} against the policy ({rule}): {verdict}",
            name(&source),
            name(&destination),
            key.dst_port,
        ),
        evidence: json!({
            "rule": rule,
            "mode": mode,
            "verdict": verdict,
            "protocol": protocol,
            "destination_ip": dst_ip.to_string(),
            "destination_port": key.dst_port,
            "packets": stats.packets,
            "dropped": stats.dropped,
            "first_seen": time,
        }),
        time,
        kind: "policy_violation",
        severity: Severity::Warning,
        source,
        destination: Some(destination),
    })
}
