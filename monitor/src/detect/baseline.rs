//! `new_connection`: after a learning period, a service connecting to a
//! service and port it never connected to before. Edges are keyed by
//! compose service (else container name), never by address, and kept in
//! the state directory, so the baseline survives agent restarts and
//! containers re-created with new addresses.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{config::NewConnection, Alert, Attempt, Detector, Findings, PollEnd, Severity};
use crate::{
    docker::{service_name, Directory},
    model::protocol_name,
};

/// source, destination, port ("" where the protocol has none), protocol.
type Edge = (String, String, String, String);

#[derive(Default, Deserialize, Serialize)]
struct Stored {
    /// Unix seconds when learning began.
    created: u64,
    edges: BTreeSet<Edge>,
}

pub struct Baseline {
    path: PathBuf,
    learning: Duration,
    stored: Stored,
    dirty: bool,
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
                edges: BTreeSet::new(),
            },
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Baseline {
            path,
            learning,
            dirty: true,
            stored,
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
        let port = if attempt.has_ports() {
            attempt.record.key.dst_port.to_string()
        } else {
            String::new()
        };
        let protocol = protocol_name(attempt.record.key.protocol);
        let edge = (
            service_name(&attempt.source),
            service_name(&attempt.destination),
            port.clone(),
            protocol.to_owned(),
        );
        if self.stored.edges.contains(&edge) {
            return None;
        }
        let learning = self.learning();
        self.stored.edges.insert(edge.clone());
        self.dirty = true;
        if learning {
            return None;
        }
        let (from, to, ..) = edge;
        Some(Alert {
            capture: None,
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
