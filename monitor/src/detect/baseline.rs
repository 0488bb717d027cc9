//! `new_connection`: after a learning period, a service connecting to a
//! service and port it never connected to before. Edges are keyed by
//! compose service (else container name), never by address, and kept in
//! the state directory, so the baseline survives agent restarts and
//! containers re-created with new addresses.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use indexmap::IndexSet;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{config::NewConnection, Alert, Attempt, Detector, Findings, PollEnd, Severity};
use crate::{
    book::{owned_and_borrowed, SeriesLabels as _},
    docker::{write_service_name, Directory},
    model::protocol_name,
};

owned_and_borrowed! {
    /// An edge between services; saved as the list
    /// `[source, destination, port, protocol]` it always was.
    #[derive(Deserialize, Serialize)]
    #[serde(from = "EdgeRow", into = "EdgeRow")]
    struct Edge;
    /// [`Edge`] borrowed from an attempt's names, which every attempt is
    /// looked up by: no name is copied until an edge is new.
    struct EdgeRef {
        source, destination, port, protocol;
    }
}

/// source, destination, port ("" where the protocol has none), protocol.
type EdgeRow = (String, String, String, String);

impl From<EdgeRow> for Edge {
    fn from((source, destination, port, protocol): EdgeRow) -> Self {
        Self {
            source,
            destination,
            port,
            protocol,
        }
    }
}

impl From<Edge> for EdgeRow {
    fn from(edge: Edge) -> Self {
        (edge.source, edge.destination, edge.port, edge.protocol)
    }
}

#[derive(Default, Deserialize, Serialize)]
struct Stored {
    /// Unix seconds when learning began.
    created: u64,
    /// In the order they were learnt (a file of an earlier version, sorted,
    /// loads in its order). Service names are the containers' to choose:
    /// seeded at random.
    edges: IndexSet<Edge, foldhash::fast::RandomState>,
}

pub struct Baseline {
    path: PathBuf,
    learning: Duration,
    stored: Stored,
    dirty: bool,
    /// The names of the attempt at hand's ends, kept to be written again.
    source: String,
    destination: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Baseline {
    /// Loads `state_dir/baseline.json`, or starts learning now.
    pub fn open(state_dir: &Path, config: &NewConnection) -> anyhow::Result<Baseline> {
        let learning = config.learning_period;
        let path = state_dir.join("baseline.json");
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a crossmon baseline", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Stored {
                created: unix_now(),
                edges: IndexSet::default(),
            },
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Baseline {
            path,
            learning,
            dirty: true,
            stored,
            source: String::new(),
            destination: String::new(),
        })
    }

    fn learning(&self) -> bool {
        unix_now().saturating_sub(self.stored.created) < self.learning.as_secs()
    }

    /// An attempt that reached its destination: learnt, and an alert if
    /// new after the learning period.
    pub fn observe(&mut self, attempt: &Attempt) -> Option<Alert> {
        if !attempt.outcome.delivered() || attempt.source.container.is_none() {
            return None;
        }
        let mut digits = itoa::Buffer::new();
        let port = if attempt.has_ports() {
            digits.format(attempt.record.key.dst_port)
        } else {
            ""
        };
        let protocol = protocol_name(attempt.record.key.protocol);
        write_service_name(&attempt.source, &mut self.source);
        write_service_name(&attempt.destination, &mut self.destination);
        let (from, to) = (self.source.as_str(), self.destination.as_str());
        let edge = EdgeRef {
            source: from,
            destination: to,
            port,
            protocol,
        };
        if self.stored.edges.contains(&edge) {
            return None;
        }
        let learning = self.learning();
        self.stored.edges.insert(edge.to_labels());
        self.dirty = true;
        if learning {
            return None;
        }
        Some(Alert {
            capture: None,
            node: None,
            time: attempt.time(),
            kind: "new_connection",
            severity: Severity::Warning,
            summary: format!("{from} connected to {to} on {protocol} {port} for the first time"),
            evidence: json!({
                "source_service": from,
                "destination_service": to,
                "destination_port": attempt.record.key.dst_port,
                "protocol": protocol,
                "outcome": attempt.outcome.name(),
                "baseline_edges": self.stored.edges.len(),
            }),
            source: attempt.source.clone(),
            destination: Some(attempt.destination.clone()),
        })
    }

    /// Writes the baseline if it changed (atomically: a crash leaves the
    /// old or the new file, never half of one).
    pub fn save(&mut self) -> anyhow::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let temporary = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&self.stored).context("encoding the baseline")?;
        std::fs::write(&temporary, text)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        self.dirty = false;
        Ok(())
    }
}

impl Detector for Baseline {
    fn attempt(&mut self, attempt: &Attempt, _: &Directory, found: &mut Findings) {
        found.alerts.extend(self.observe(attempt));
    }

    fn end_of_poll(&mut self, _: &PollEnd<'_>, _: &mut Findings) {
        if let Err(err) = self.save() {
            tracing::warn!("saving the new-connection baseline: {err:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::ip_proto::{TCP, UDP};

    use super::*;
    use crate::{
        detect::testkit::{ends, front, scratch_dir, Lab, SEC},
        flows::outcome::Outcome,
    };

    const DAY: u64 = 24 * 3600;

    fn open(dir: &Path) -> Baseline {
        Baseline::open(dir, &NewConnection::default()).expect("opens")
    }

    fn connect(
        baseline: &mut Baseline,
        lab: &Lab,
        (src, dst): (u8, u8),
        port: u16,
    ) -> Option<Alert> {
        baseline.observe(&lab.attempt(front(src), front(dst), port, TCP, Outcome::Established, SEC))
    }

    #[test]
    fn edges_are_learnt_silently_for_a_day_then_a_new_one_alerts_once() {
        let dir = scratch_dir("baseline-learning");
        let lab = Lab::new(4);
        let mut baseline = open(&dir);
        assert!(
            connect(&mut baseline, &lab, (2, 3), 5432).is_none(),
            "learning"
        );
        // A second short of a day: still learning.
        baseline.stored.created = unix_now() - DAY + 1;
        assert!(connect(&mut baseline, &lab, (2, 4), 5432).is_none());
        // A day old: learnt edges stay quiet, a new one alerts, once.
        baseline.stored.created = unix_now() - DAY;
        assert!(connect(&mut baseline, &lab, (2, 3), 5432).is_none());
        assert!(connect(&mut baseline, &lab, (2, 4), 5432).is_none());
        let alert = connect(&mut baseline, &lab, (3, 4), 5432).expect("a new edge");
        assert_eq!(alert.kind, "new_connection");
        assert_eq!(ends(&alert), ("c3".into(), Some("c4".into())));
        assert_eq!(alert.evidence["baseline_edges"], 3);
        assert!(
            connect(&mut baseline, &lab, (3, 4), 5432).is_none(),
            "learnt by its alert"
        );
        // Another port or protocol is another edge.
        assert!(connect(&mut baseline, &lab, (3, 4), 5433).is_some());
        let udp = lab.attempt(front(3), front(4), 5432, UDP, Outcome::Answered, SEC);
        assert!(baseline.observe(&udp).is_some());
    }

    #[test]
    fn only_delivered_attempts_of_containers_are_edges() {
        let dir = scratch_dir("baseline-delivered");
        let lab = Lab::new(4);
        let mut baseline = open(&dir);
        baseline.stored.created = unix_now() - DAY;
        let unanswered = lab.attempt(front(2), front(3), 80, TCP, Outcome::Unanswered, SEC);
        assert!(baseline.observe(&unanswered).is_none());
        // From the gateway (no container): not a service's edge.
        let mut from_host = lab.attempt(front(2), front(3), 80, TCP, Outcome::Established, SEC);
        from_host.source = lab.end(crate::detect::testkit::GATEWAY);
        assert!(baseline.observe(&from_host).is_none());
        assert!(baseline.stored.edges.is_empty());
        // Refused reached the other side: it is an edge.
        let refused = lab.attempt(front(2), front(3), 80, TCP, Outcome::Refused, SEC);
        assert!(baseline.observe(&refused).is_some());
    }

    #[test]
    fn the_baseline_survives_a_restart_with_its_learning_clock() {
        let dir = scratch_dir("baseline-restart");
        let lab = Lab::new(4);
        let mut baseline = open(&dir);
        connect(&mut baseline, &lab, (2, 3), 80);
        baseline.stored.created -= DAY;
        baseline.save().expect("saves");
        let mut reopened = open(&dir);
        assert_eq!(reopened.stored.edges.len(), 1);
        assert!(connect(&mut reopened, &lab, (2, 3), 80).is_none());
        assert!(
            connect(&mut reopened, &lab, (2, 4), 80).is_some(),
            "learning is over"
        );
    }

    /// Edges are found by their parts without copying them: those of a
    /// file an earlier version wrote (a sorted set, compose services
    /// named `project/service`) stay quiet, and only the new one alerts.
    #[test]
    fn an_earlier_versions_file_keeps_its_edges() {
        let dir = scratch_dir("baseline-earlier");
        std::fs::write(
            dir.join("baseline.json"),
            br#"{"created": 1, "edges": [
                ["shop/api", "shop/db", "5432", "tcp"],
                ["shop/web", "shop/api", "8080", "tcp"]
            ]}"#,
        )
        .expect("write");
        let lab = Lab::with(4, |container| {
            container.compose_project = Some("shop".into());
            container.compose_service = Some(
                match container.name.as_str() {
                    "c2" => "web",
                    "c3" => "api",
                    _ => "db",
                }
                .into(),
            );
        });
        let mut baseline = open(&dir);
        assert!(connect(&mut baseline, &lab, (2, 3), 8080).is_none());
        assert!(connect(&mut baseline, &lab, (3, 4), 5432).is_none());
        let alert = connect(&mut baseline, &lab, (2, 4), 5432).expect("a new edge");
        assert_eq!(alert.evidence["source_service"], "shop/web");
        assert_eq!(alert.evidence["destination_service"], "shop/db");
        assert_eq!(alert.evidence["baseline_edges"], 3);
        baseline.save().expect("saves");
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("baseline.json")).expect("read"))
                .expect("json");
        assert_eq!(
            saved["edges"],
            json!([
                ["shop/api", "shop/db", "5432", "tcp"],
                ["shop/web", "shop/api", "8080", "tcp"],
                ["shop/web", "shop/db", "5432", "tcp"]
            ])
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_not_a_fresh_start() {
        let dir = scratch_dir("baseline-damaged");
        std::fs::write(dir.join("baseline.json"), b"{\"created\": 1, \"edges\": [[")
            .expect("write");
        let err = Baseline::open(&dir, &NewConnection::default())
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains("baseline.json: not a crossmon baseline"));
    }
}
