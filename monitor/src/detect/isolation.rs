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
        node: None,
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

#[cfg(test)]
mod tests {
    use monitor_common::ip_proto::{TCP, UDP};

    use super::*;
    use crate::{
        detect::testkit::{ends, front, try_attempt, Lab, ISOLATED, SEC},
        flows::outcome::Outcome,
    };

    #[test]
    fn isolated_containers_that_reach_each_other_are_alerted_whatever_the_answer() {
        let lab = Lab::new(3);
        for outcome in [Outcome::Established, Outcome::Refused, Outcome::Answered] {
            let attempt = lab.attempt(front(2), ISOLATED, 80, TCP, outcome, SEC);
            let alerts = try_attempt(&mut Isolation, &lab, &attempt);
            assert_eq!(alerts.len(), 1, "{outcome:?}");
            assert_eq!(alerts[0].kind, "isolation_violation");
            assert_eq!(ends(&alerts[0]), ("c2".into(), Some("iso".into())));
            assert_eq!(alerts[0].evidence["destination_networks"][0], "back");
        }
    }

    #[test]
    fn a_remote_end_of_another_overlay_reached_is_alerted_one_of_a_shared_overlay_is_not() {
        let remote = |name: &str, network: &str| crate::docker::swarm::RemoteEnd {
            name: name.into(),
            service: Some("web".into()),
            stack: Some("shop".into()),
            node: Some("n1".into()),
            network: network.into(),
            network_id: network.into(),
        };
        let lab = Lab::with_remote(
            2,
            [
                ([10, 0, 9, 5].into(), remote("web.1.x", "other")),
                ([10, 0, 0, 9].into(), remote("web.2.y", "front")),
            ],
        );
        let isolated = lab.attempt(front(2), [10, 0, 9, 5], 80, TCP, Outcome::Refused, SEC);
        let alerts = try_attempt(&mut Isolation, &lab, &isolated);
        assert_eq!(alerts.len(), 1);
        assert_eq!(ends(&alerts[0]), ("c2".into(), Some("web.1.x".into())));
        let destination = alerts[0].destination.as_ref().unwrap();
        assert_eq!(destination.node.as_deref(), Some("n1"));
        assert_eq!(alerts[0].evidence["destination_networks"][0], "other");
        let shared = lab.attempt(front(2), [10, 0, 0, 9], 80, TCP, Outcome::Refused, SEC);
        assert!(try_attempt(&mut Isolation, &lab, &shared).is_empty());
    }

    #[test]
    fn an_attempt_that_did_not_get_through_is_isolation_working() {
        let lab = Lab::new(3);
        let attempt = lab.attempt(front(2), ISOLATED, 80, UDP, Outcome::Unanswered, SEC);
        assert!(try_attempt(&mut Isolation, &lab, &attempt).is_empty());
    }

    #[test]
    fn neighbours_on_a_shared_network_the_host_and_oneself_are_not_isolated() {
        let lab = Lab::new(3);
        let neighbour = lab.attempt(front(2), front(3), 80, TCP, Outcome::Established, SEC);
        let gateway = lab.attempt(front(2), [10, 0, 0, 1], 80, TCP, Outcome::Established, SEC);
        let own = lab.attempt(front(2), front(2), 80, TCP, Outcome::Established, SEC);
        for attempt in [neighbour, gateway, own] {
            assert!(try_attempt(&mut Isolation, &lab, &attempt).is_empty());
        }
    }
}
