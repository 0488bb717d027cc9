//! `crossmon policy learn`: the edges containers used while the agent
//! watched, written as a policy to review and edit.
//!
//! An edge is an attempt (`flows::outcome`: a TCP flow that opened with a
//! SYN, a UDP or ICMP flow that came first) from a container to another
//! that was answered: established, or answered for UDP and ICMP. Refused
//! and unanswered attempts (a scan, a misconfiguration) are not learnt.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use monitor_common::ip_proto;

use super::select::Selector;
use crate::{
    clock,
    docker::{Container, Directory},
    flows::{
        outcome::{self, Outcome},
        FlowSet, Poll, PollConsumer, PollView,
    },
    model::{key_addrs, FlowRecord},
};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    protocol: &'static str,
    port: Option<u16>,
}

#[derive(Clone, Debug)]
struct Learnt {
    from: Selector,
    to: Selector,
    first_seen_ns: u64,
    connections: u64,
    packets: u64,
}

#[derive(Default)]
pub struct Learner {
    edges: BTreeMap<Edge, Learnt>,
    /// Flows already learnt from, or that are not attempts.
    decided: FlowSet,
    containers: BTreeSet<String>,
    networks: BTreeSet<String>,
}

impl Learner {
    /// After each poll of the flow map.
    pub fn on_poll(&mut self, flows: &PollView, directory: &Directory, now_ns: u64) {
        for (record, is_ended) in flows.records() {
            if self.decided.contains(&record.key) {
                continue;
            }
            let reverse = flows.find(&record.key.reversed());
            if let Some(done) = self.attempt(&record, reverse.as_ref(), is_ended, directory, now_ns)
            {
                if done {
                    self.decided.insert(record.key);
                }
            }
        }
        for key in flows.ended() {
            self.decided.remove(key);
        }
    }

    /// Learns from one flow; `Some(true)` once decided, `None` to look
    /// again when the view hands it over next.
    fn attempt(
        &mut self,
        record: &FlowRecord,
        reverse: Option<&FlowRecord>,
        ended: bool,
        directory: &Directory,
        now_ns: u64,
    ) -> Option<bool> {
        if !record.stats.from_container() {
            return Some(true);
        }
        let (src, src_end) = directory.veth_owner(record.stats.ifindex)?;
        let (_, dst_ip) = key_addrs(&record.key);
        let Some(dst) = directory.by_address(dst_ip).container.clone() else {
            return Some(true);
        };
        if !outcome::is_attempt(record, reverse) {
            return Some(true);
        }
        let answered = matches!(
            outcome::outcome(record, reverse, ended, now_ns)?,
            Outcome::Established | Outcome::Answered
        );
        let (protocol, port) = match record.key.protocol {
            ip_proto::TCP => ("tcp", Some(record.key.dst_port)),
            ip_proto::UDP => ("udp", Some(record.key.dst_port)),
            ip_proto::ICMP | ip_proto::ICMPV6 => ("icmp", None),
            _ => return Some(true),
        };
        if answered {
            self.learn(src, &dst, &src_end.network, protocol, port, record);
        }
        Some(true)
    }

    fn learn(
        &mut self,
        src: &Container,
        dst: &Container,
        network: &str,
        protocol: &'static str,
        port: Option<u16>,
        record: &FlowRecord,
    ) {
        let (from, to) = (Selector::identity_of(src), Selector::identity_of(dst));
        self.networks.insert(network.to_owned());
        self.containers.insert(src.name.clone());
        self.containers.insert(dst.name.clone());
        let edge = Edge {
            from: from.to_yaml(),
            to: to.to_yaml(),
            protocol,
            port,
        };
        let learnt = self.edges.entry(edge).or_insert(Learnt {
            from,
            to,
            first_seen_ns: record.stats.first_seen_ns,
            connections: 0,
            packets: 0,
        });
        learnt.first_seen_ns = learnt.first_seen_ns.min(record.stats.first_seen_ns);
        learnt.connections += 1;
        learnt.packets += record.stats.packets;
    }

    /// The policy file: a header saying how to use it, a deny default and
    /// one commented rule per edge, grouped by source.
    pub fn to_yaml(&self, duration: Duration) -> String {
        let mut out = String::new();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let _ = write!(
            out,
            "# crossmon policy, version 1: learnt by `crossmon policy learn` over {} ending {now},\n\
             # from {} containers on {} networks.\n\
             #\n\
             # One rule per edge seen: a container that opened a connection (TCP) or\n\
             # sent first (UDP, ICMP) to another, and got an answer. Review them:\n\
             # whatever did not happen while learning falls to the defaults.\n\
             #\n\
             # defaults, per Docker network: deny on the networks where traffic was\n\
             # learnt, alert on any other (\"*\"). Each can be\n\
             #   deny   dropped with `crossmon run --policy FILE --enforce`, counted, alerted\n\
             #   alert  passed, counted and alerted\n\
             #   allow  passed\n\
             # Run `crossmon run --policy FILE` first (observe: nothing dropped,\n\
             # violations alerted), `crossmon policy check FILE` to see the verdicts,\n\
             # then add --enforce.\n",
            humantime::format_duration(duration),
            self.containers.len(),
            self.networks.len(),
        );
        out.push_str("version: 1\ndefaults:\n  \"*\": alert\n");
        for network in &self.networks {
            let _ = writeln!(out, "  {}: deny", super::select::quoted(network));
        }
        if self.edges.is_empty() {
            out.push_str("rules: []\n");
            return out;
        }
        out.push_str("rules:\n");
        let mut names = HashSet::new();
        let mut previous_from = None;
        for (edge, learnt) in &self.edges {
            if previous_from != Some(&edge.from) {
                let _ = writeln!(out, "\n  # from {}", edge.from);
                previous_from = Some(&edge.from);
            }
            let name = unique_name(&mut names, learnt, edge);
            let first_seen = clock::to_utc(learnt.first_seen_ns)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let _ = writeln!(
                out,
                "  # {} connections, {} packets, first seen {first_seen}",
                learnt.connections, learnt.packets
            );
            let _ = writeln!(out, "  - name: {name}");
            let _ = writeln!(out, "    from: {}", edge.from);
            let _ = writeln!(out, "    to: {}", edge.to);
            let _ = writeln!(out, "    protocol: {}", edge.protocol);
            if let Some(port) = edge.port {
                let _ = writeln!(out, "    ports: [{port}]");
            }
        }
        out
    }

    /// Writes the file whole or not at all.
    pub fn write(&self, path: &Path, duration: Duration) -> anyhow::Result<()> {
        let text = self.to_yaml(duration);
        super::Policy::parse(&text).context("the learnt policy does not read back")?;
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
    }
}

/// `web-to-api-tcp-80`: short, readable, unique within the file.
fn unique_name(taken: &mut HashSet<String>, learnt: &Learnt, edge: &Edge) -> String {
    let short = |s: &Selector| {
        let text = s
            .service
            .as_deref()
            .or(s.container.as_deref())
            .unwrap_or("any");
        let text = text.rsplit('/').next().unwrap_or(text);
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    let mut base = format!(
        "{}-to-{}-{}",
        short(&learnt.from),
        short(&learnt.to),
        edge.protocol
    );
    if let Some(port) = edge.port {
        let _ = write!(base, "-{port}");
    }
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// `crossmon policy learn`: the learner fed by the poller, and where its
/// policy goes when the run ends well.
pub struct Learning {
    pub learner: Learner,
    pub output: PathBuf,
    pub duration: Duration,
}

impl PollConsumer for Learning {
    fn on_poll(&mut self, poll: &Poll<'_>) {
        self.learner
            .on_poll(&poll.flows, poll.directory, poll.now_ns);
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.learner.write(&self.output, self.duration)?;
        tracing::info!("policy written to {}", self.output.display());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{evaluate::evaluate, select::tests::container, Action};
    use monitor_common::FlowKey;

    #[test]
    fn learnt_edges_read_back_as_a_policy_allowing_exactly_them() {
        let web = container("shop-web-1", Some("shop"), Some("web"));
        let api = container("shop-api-1", Some("shop"), Some("api"));
        let db = container("db", None, None);
        let mut learner = Learner::default();
        let record = FlowRecord {
            key: FlowKey::ZERO,
            stats: monitor_common::FlowStats {
                packets: 5,
                first_seen_ns: 1,
                ..Default::default()
            },
        };
        learner.learn(&web, &api, "n", "tcp", Some(80), &record);
        learner.learn(&web, &api, "n", "tcp", Some(80), &record);
        learner.learn(&api, &db, "n", "tcp", Some(5432), &record);
        learner.learn(&api, &db, "n", "icmp", None, &record);
        let text = learner.to_yaml(Duration::from_secs(8));
        let policy = crate::policy::Policy::parse(&text).expect("reads back");
        let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["api-to-db-icmp", "api-to-db-tcp-5432", "web-to-api-tcp-80"]
        );
        assert!(text.contains("# 2 connections, 10 packets"), "{text}");
        let verdict =
            |src, dst, protocol, port| evaluate(&policy, src, dst, "n", protocol, port).action;
        assert_eq!(verdict(&web, &api, ip_proto::TCP, 80), Action::Allow);
        assert_eq!(verdict(&api, &db, ip_proto::TCP, 5432), Action::Allow);
        assert_eq!(verdict(&api, &db, ip_proto::ICMP, 0), Action::Allow);
        assert_eq!(verdict(&web, &db, ip_proto::TCP, 5432), Action::Deny);
        assert_eq!(verdict(&api, &web, ip_proto::TCP, 80), Action::Deny);
        assert_eq!(verdict(&web, &api, ip_proto::TCP, 81), Action::Deny);
        assert_eq!(policy.default_for("elsewhere"), Action::Alert);
    }
}
