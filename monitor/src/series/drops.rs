//! Packets the kernel dropped (`skb:kfree_skb`), for those to or from a
//! watched container: counted by who sent them and the kernel's reason.
//! A netfilter drop between two containers Docker isolates from each
//! other is Docker's isolation at work, and counted as
//! `docker_isolation`.

use std::{collections::HashMap, net::IpAddr};

use serde::Serialize;

use monitor_common::DropKey;

use super::departures::Departures;
use crate::{
    book::SeriesBook,
    datapath::DropMap,
    docker::{end_name, Directory, EndKind},
    flows::{Poll, PollConsumer},
    model::ip_of,
};

/// The reason of a drop on a kernel without reasons (before 5.17), or
/// of a number its format does not name.
pub const UNKNOWN_REASON: &str = "unknown";
/// A netfilter drop between containers Docker isolates.
pub const DOCKER_ISOLATION: &str = "docker_isolation";
/// The kernel's name of a netfilter drop (5.17+).
const NETFILTER_DROP: &str = "NETFILTER_DROP";

/// `(source, reason)`.
pub type DropLabels = (String, String);

/// What the kernel did to packets from one address to another: the
/// latest reason it dropped them for, and how many it dropped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelDrop {
    pub reason: String,
    pub packets: u64,
}

/// Address pairs remembered with their drops; past it, the memory
/// restarts (a flood of pairs costs bounded memory).
const PAIRS: usize = 10_000;

pub struct DropCounts {
    kernel: DropMap,
    reasons: HashMap<u32, String>,
    /// What each key had counted at the last poll.
    seen: HashMap<DropKey, u64>,
    series: SeriesBook<DropLabels, u64>,
    /// Drops by (sender, receiver) address, for the flow log.
    pairs: HashMap<(IpAddr, IpAddr), KernelDrop>,
    departures: Departures,
}

impl DropCounts {
    /// `reasons`: the kernel's names of its drop reasons (empty before
    /// 5.17). `grace_ns`: how long a departed container's series stay.
    pub fn new(
        kernel: DropMap,
        reasons: HashMap<u32, String>,
        max_series: usize,
        grace_ns: u64,
    ) -> Self {
        Self {
            kernel,
            reasons,
            seen: HashMap::new(),
            series: SeriesBook::new(
                max_series,
                (crate::book::OTHER.to_owned(), crate::book::OTHER.to_owned()),
            ),
            pairs: HashMap::new(),
            departures: Departures::new(grace_ns),
        }
    }

    pub fn counts(&self) -> impl Iterator<Item = (&DropLabels, &u64)> {
        self.series.iter()
    }

    /// What the kernel dropped of what `src` sent `dst`, if anything.
    pub fn between(&self, src: IpAddr, dst: IpAddr) -> Option<KernelDrop> {
        self.pairs.get(&(src, dst)).cloned()
    }

    /// The reason a drop is counted under.
    fn reason(&self, key: &DropKey, directory: &Directory) -> String {
        let name = self.reasons.get(&key.reason).map(String::as_str);
        let src = directory.by_address(ip_of(&key.src_addr, key.ip_version));
        let dst = directory.by_address(ip_of(&key.dst_addr, key.ip_version));
        let isolated = match (&src.container, &dst.container) {
            (Some(a), Some(b)) => a.id != b.id && !directory.may_talk(a, b),
            _ => false,
        };
        // Before 5.17 the kernel names no reason: a drop between isolated
        // containers is still Docker's (nothing else drops there).
        if isolated && matches!(name, Some(NETFILTER_DROP) | None) {
            return DOCKER_ISOLATION.to_owned();
        }
        name.unwrap_or(UNKNOWN_REASON).to_owned()
    }

    pub fn update(&mut self, directory: &Directory, now_ns: u64) {
        let totals = self.kernel.totals();
        for (key, total) in &totals {
            let new = total.saturating_sub(self.seen.get(key).copied().unwrap_or(0));
            if new == 0 {
                continue;
            }
            let src = directory.by_address(ip_of(&key.src_addr, key.ip_version));
            let dst = directory.by_address(ip_of(&key.dst_addr, key.ip_version));
            // Only the watched containers' packets.
            if src.kind != EndKind::Container && dst.kind != EndKind::Container {
                continue;
            }
            let reason = self.reason(key, directory);
            if self.pairs.len() >= PAIRS {
                self.pairs.clear();
            }
            let pair = (src.ip, dst.ip);
            if let (Some(src_ip), Some(dst_ip)) = pair {
                let drop = self
                    .pairs
                    .entry((src_ip, dst_ip))
                    .or_insert_with(|| KernelDrop {
                        reason: reason.clone(),
                        packets: 0,
                    });
                drop.reason.clone_from(&reason);
                drop.packets += new;
            }
            *self
                .series
                .value(&(end_name(&src).to_owned(), reason), now_ns) += new;
        }
        self.seen = totals;
    }
}

impl PollConsumer for DropCounts {
    fn on_poll(&mut self, poll: &Poll<'_>) {
        self.update(poll.directory, poll.now_ns);
        self.departures.follow(poll.inventory, poll.now_ns);
        if let Some(gone) = self.departures.take_gone(poll.now_ns) {
            self.series
                .sweep(gone.cutoff_ns, |(source, _)| gone.any(&[source]));
        }
    }
}
