//! Alerts: what happened, between whom, and the evidence; and the sink
//! they all go to, from the detectors and the policy alike. The JSON form
//! is the alert log's schema (documented in docs/alerts.md) and a contract.

mod sink;

use std::borrow::Cow;

pub use sink::{AlertLog, AlertSink};

use serde::Serialize;
use serde_json::Value;

use crate::docker::FlowEnd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// RFC 3339, UTC.
    pub time: String,
    /// `ip_spoof`, `arp_spoof`, ...
    pub kind: &'static str,
    pub severity: Severity,
    pub source: FlowEnd,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<FlowEnd>,
    /// One sentence for a human.
    pub summary: String,
    /// Facts behind the alert: counts, addresses, ports, window.
    pub evidence: Value,
    /// The packet capture started by the alert (`--capture-on-alert`): a
    /// file name in that directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// The node whose agent raised it: its Docker host's name (on a swarm,
    /// the node's host name), so that alerts gathered from many agents
    /// keep apart. Set by the sink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Evidence gathered when an alert is raised (a packet capture): its name
/// goes into the alert before it is logged.
pub trait AlertEvidence: Send {
    fn collect(&mut self, alert: &Alert) -> Option<String>;
}

impl Alert {
    /// The name an alert is counted and de-duplicated under for an end:
    /// borrowed from it, as the detectors look their state up by it per
    /// flow and poll, but for an address.
    pub fn end_name(end: &FlowEnd) -> Cow<'_, str> {
        match (&end.name, end.ip) {
            (Some(name), _) => Cow::Borrowed(name),
            (None, Some(ip)) => Cow::Owned(ip.to_string()),
            (None, None) => Cow::Borrowed("unknown"),
        }
    }
}
