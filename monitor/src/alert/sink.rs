//! Where alerts go: de-duplicated within a cooldown, written as JSON lines,
//! kept for the API, counted for Prometheus.

use std::{
    collections::{HashMap, VecDeque},
    io::Write as _,
    path::Path,
};

use anyhow::Context as _;

use super::{Alert, Severity};
use crate::{
    docker::{end_name, Snapshot},
    rotating::RotatingFile,
    sync::Published,
};

/// Alerts the API keeps, newest first.
const RECENT: usize = 1000;

/// An alert log file rotates at this size, keeping this many old files.
const LOG_MAX_BYTES: u64 = 100 * 1024 * 1024;
const LOG_KEEP: u32 = 5;

pub enum AlertLog {
    Stdout,
    File(RotatingFile),
}

impl AlertLog {
    /// `-` is standard output; anything else a file appended to (and
    /// rotated at 100 MiB, five old files kept).
    pub fn open(path: &Path) -> anyhow::Result<AlertLog> {
        if path.as_os_str() == "-" {
            return Ok(AlertLog::Stdout);
        }
        let file = RotatingFile::open(path, LOG_MAX_BYTES, LOG_KEEP).context("the alert log")?;
        Ok(AlertLog::File(file))
    }

    fn write(&mut self, line: &str) {
        let written = match self {
            AlertLog::Stdout => writeln!(std::io::stdout().lock(), "{line}").map_err(Into::into),
            AlertLog::File(file) => file.write_line(line),
        };
        if let Err(err) = written {
            // The alert stays in the API and the counters.
            tracing::warn!("writing an alert to the alert log: {err:#}");
        }
    }
}

pub struct AlertSink {
    log: Option<AlertLog>,
    cooldown_ns: u64,
    /// (kind, source, destination) to when it last alerted (monotonic).
    last: HashMap<(&'static str, String, String), u64>,
    pruned_ns: u64,
    recent: VecDeque<Alert>,
    /// (kind, severity, source) to alerts raised.
    counts: HashMap<(&'static str, Severity, String), u64>,
    evidence: Option<Box<dyn super::AlertEvidence>>,
    /// Where the node's name is read for each alert.
    docker: Option<Published<Snapshot>>,
}

impl AlertSink {
    pub fn new(log: Option<AlertLog>, cooldown_ns: u64) -> Self {
        Self {
            log,
            cooldown_ns,
            last: HashMap::new(),
            pruned_ns: 0,
            recent: VecDeque::new(),
            counts: HashMap::new(),
            evidence: None,
            docker: None,
        }
    }

    /// Names the node in every alert raised from now on, from the Docker
    /// host `docker` describes at that moment.
    pub fn set_node_source(&mut self, docker: Published<Snapshot>) {
        self.docker = Some(docker);
    }

    /// Gathers `evidence` for every alert raised from now on.
    pub fn set_evidence(&mut self, evidence: Box<dyn super::AlertEvidence>) {
        self.evidence = Some(evidence);
    }

    /// Raises `alert` unless the same kind and pair alerted within the
    /// cooldown; returns whether it was raised.
    pub fn raise(&mut self, mut alert: Alert, now_ns: u64) -> bool {
        let source = Alert::end_name(&alert.source).into_owned();
        let destination = alert
            .destination
            .as_ref()
            .map(|end| Alert::end_name(end).into_owned())
            .unwrap_or_default();
        let key = (alert.kind, source.clone(), destination);
        if let Some(last) = self.last.get(&key) {
            if now_ns.saturating_sub(*last) < self.cooldown_ns {
                return false;
            }
        }
        self.last.insert(key, now_ns);
        // Pairs quiet for a cooldown would alert again anyway: forget them,
        // at most once per tenth of a cooldown so that a flood of distinct
        // alerts does not rescan the map on each.
        let cooldown = self.cooldown_ns;
        if self.last.len() > 10_000 && now_ns.saturating_sub(self.pruned_ns) >= cooldown / 10 {
            self.last
                .retain(|_, last| now_ns.saturating_sub(*last) < cooldown);
            self.pruned_ns = now_ns;
        }
        // The metric's `source` follows the traffic metrics' naming: no
        // addresses, opted-out containers as `aggregate`.
        *self
            .counts
            .entry((
                alert.kind,
                alert.severity,
                end_name(&alert.source).to_owned(),
            ))
            .or_default() += 1;
        if let Some(docker) = &self.docker {
            alert.node = docker.load().node().map(str::to_owned);
        }
        if let Some(evidence) = &mut self.evidence {
            alert.capture = evidence.collect(&alert);
        }
        if let Some(log) = &mut self.log {
            match serde_json::to_string(&alert) {
                Ok(line) => log.write(&line),
                Err(err) => tracing::warn!("encoding an alert: {err}"),
            }
        }
        tracing::warn!(
            kind = alert.kind,
            severity = alert.severity.name(),
            "{}",
            alert.summary
        );
        if self.recent.len() == RECENT {
            self.recent.pop_back();
        }
        self.recent.push_front(alert);
        true
    }

    /// Newest first.
    pub fn recent(&self) -> impl Iterator<Item = &Alert> {
        self.recent.iter()
    }

    pub fn counts(&self) -> impl Iterator<Item = (&(&'static str, Severity, String), &u64)> {
        self.counts.iter()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::docker::Directory;

    const SECOND: u64 = 1_000_000_000;

    fn alert(kind: &'static str, source: &str, destination: &str) -> Alert {
        let end = |ip: &str| Directory::default().by_address(ip.parse().expect("ip"));
        Alert {
            capture: None,
            node: None,
            time: "2026-11-29T00:00:00.000Z".into(),
            kind,
            severity: Severity::Critical,
            source: end(source),
            destination: Some(end(destination)),
            summary: "test".into(),
            evidence: json!({}),
        }
    }

    #[test]
    fn alerts_name_the_node_the_engine_names_once_it_answered() {
        let docker = crate::sync::published(Snapshot::default());
        let mut sink = AlertSink::new(None, 60 * SECOND);
        sink.set_node_source(docker.clone());
        assert!(sink.raise(alert("ip_spoof", "10.0.0.2", "10.0.0.3"), SECOND));
        let mut inventory = crate::docker::Inventory::default();
        inventory.engine.name = "node-a".into();
        docker.store(std::sync::Arc::new(Snapshot::new(
            Some(std::sync::Arc::new(inventory)),
            std::collections::BTreeMap::new(),
        )));
        assert!(sink.raise(alert("ip_spoof", "10.0.0.2", "10.0.0.4"), SECOND));
        let nodes: Vec<_> = sink.recent().map(|a| a.node.clone()).collect();
        assert_eq!(nodes, [Some("node-a".to_owned()), None]);
        let line = serde_json::to_value(sink.recent().next().expect("an alert")).expect("json");
        assert_eq!(line["node"], "node-a");
    }

    #[test]
    fn the_same_kind_and_pair_is_quiet_for_the_cooldown() {
        let mut sink = AlertSink::new(None, 60 * SECOND);
        assert!(sink.raise(alert("ip_spoof", "10.0.0.2", "10.0.0.3"), SECOND));
        assert!(!sink.raise(alert("ip_spoof", "10.0.0.2", "10.0.0.3"), 30 * SECOND));
        // Another pair or another kind is news.
        assert!(sink.raise(alert("ip_spoof", "10.0.0.2", "10.0.0.4"), 30 * SECOND));
        assert!(sink.raise(alert("arp_spoof", "10.0.0.2", "10.0.0.3"), 30 * SECOND));
        assert!(sink.raise(alert("ip_spoof", "10.0.0.2", "10.0.0.3"), 62 * SECOND));
        let kinds: Vec<_> = sink.recent().map(|a| a.kind).collect();
        assert_eq!(kinds, ["ip_spoof", "arp_spoof", "ip_spoof", "ip_spoof"]);
        let counted: u64 = sink.counts().map(|(_, n)| n).sum();
        assert_eq!(counted, 4);
    }

    #[test]
    fn alerts_are_appended_to_the_log_as_json_lines() {
        let path =
            std::env::temp_dir().join(format!("crossmon-alerts-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut sink = AlertSink::new(Some(AlertLog::open(&path).expect("log")), SECOND);
        sink.raise(alert("ip_spoof", "10.0.0.2", "10.0.0.3"), SECOND);
        sink.raise(alert("arp_spoof", "10.0.0.2", "10.0.0.3"), SECOND);
        let text = std::fs::read_to_string(&path).expect("log written");
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["kind"], "arp_spoof");
        assert_eq!(lines[0]["source"]["ip"], "10.0.0.2");
    }
}
