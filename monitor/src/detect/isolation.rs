//! `isolation_violation`: traffic Docker's configuration says cannot
//! happen, delivered anyway. Two containers that share no network, or
//! share only networks with inter-container communication disabled, are
//! isolated; an attempt between them that was answered (even refused)
//! reached the other side, so isolation is broken or bypassed.

use serde_json::json;

use super::{Alert, Attempt, Detector, Findings, Severity};
use crate::{docker::Directory, model::protocol_name};

pub fn isolation_violation(attempt: &Attempt, directory: &Directory) -> Option<Alert> {
    if !attempt.outcome.delivered() {
        return None;
    }
    let (from, to) = (
        attempt.source.container.as_ref()?,
        attempt.destination.container.as_ref()?,
    );
    if from.id == to.id || directory.may_talk(from, to) {
        return None;
    }
    let networks = |c: &crate::docker::Container| {
        c.endpoints
            .iter()
            .map(|e| e.network.clone())
            .collect::<Vec<_>>()
    };
    Some(Alert {
        capture: None,
        time: attempt.time(),
        kind: "isolation_violation",
        severity: Severity::Critical,
        summary: format!(
            "{} reached {} although Docker isolates them (the attempt was {})",
            from.name,
            to.name,
            attempt.outcome.name()
        ),
        evidence: json!({
            "source_networks": networks(from),
            "destination_networks": networks(to),
            "outcome": attempt.outcome.name(),
            "protocol": protocol_name(attempt.record.key.protocol),
            "destination_port": attempt.record.key.dst_port,
            "packets": attempt.record.stats.packets,
        }),
        source: attempt.source.clone(),
        destination: Some(attempt.destination.clone()),
    })
}

/// `isolation_violation` as a detector.
pub struct Isolation;

impl Detector for Isolation {
    fn attempt(&mut self, attempt: &Attempt, directory: &Directory, found: &mut Findings) {
        found.alerts.extend(isolation_violation(attempt, directory));
    }
}
