//! One poll's flows as every consumer reads them (metrics, detectors, the
//! flow log, policy learning): the live ones and those that ended at this
//! poll, each findable by key, so a flow's reverse is found wherever it is,
//! and walked only where a consumer could make something new of them.

use std::collections::HashSet;

use monitor_common::FlowKey;

use super::{outcome::UNANSWERED_AFTER_NS, ByFlow, EndedFlow, Exported, FlowTable};
use crate::model::FlowRecord;

/// How long after its last packet a live flow is still walked, when
/// nothing else changed (see [`PollView::active_since`]). What a consumer
/// makes of a flow depends on the flow, its reverse, the directory and
/// time: time only through an attempt's deadline, counted from its first
/// packet ([`UNANSWERED_AFTER_NS`]), and the reverse only until then (an
/// answer after it finds the attempt counted unanswered, and TCP health
/// times only handshakes answered before it). So a flow quiet for longer
/// than the deadline has nothing left to show; the extra second covers
/// the programs' tick clock, which stamps up to a tick early. The flow
/// log, whose interval lines wait longer, walks every flow.
pub const REVISIT_NS: u64 = UNANSWERED_AFTER_NS + 1_000_000_000;

pub struct PollView<'a> {
    table: &'a FlowTable,
    expired: &'a [EndedFlow],
    /// The records of `expired` by key: references, as when every flow
    /// expires at once this index is as long as the table.
    ended: ByFlow<&'a FlowRecord>,
    /// Veths whose young live flows wait for a later poll, and since when
    /// a flow is young (see [`Self::holding`]).
    held: HashSet<u32>,
    young_since_ns: u64,
    /// Live flows with no packet since are left out of the walks.
    active_since_ns: u64,
}

impl<'a> PollView<'a> {
    /// `expired`: the flows the table forgot at this poll, with their final
    /// totals.
    pub fn new(table: &'a FlowTable, expired: &'a [EndedFlow]) -> Self {
        Self {
            table,
            expired,
            ended: expired
                .iter()
                .map(|ended| (ended.record.key, &ended.record))
                .collect(),
            held: HashSet::new(),
            young_since_ns: u64::MAX,
            active_since_ns: 0,
        }
    }

    /// Leaves out of [`Self::records`] the live flows with no packet since
    /// `ns`. The poller passes [`REVISIT_NS`] before the previous poll the
    /// consumers saw, so each flow is walked at every poll that read a
    /// packet of it, and until its attempt's deadline passed. At 0 (the
    /// default) every flow is walked, as it must be when something besides
    /// a flow's packets changed what consumers make of it: the directory
    /// (a veth's owner).
    pub fn active_since(mut self, ns: u64) -> Self {
        self.active_since_ns = ns;
        self
    }

    /// Leaves out the live flows counted at `veths` (a container's veth
    /// the engine has not named yet) first seen at or after `since_ns`: a
    /// later poll hands them over whole, named. Older flows and flows that
    /// ended are never held: the name may never come, and an ended flow
    /// would not come back.
    pub fn holding(mut self, veths: HashSet<u32>, since_ns: u64) -> Self {
        self.held = veths;
        self.young_since_ns = since_ns;
        self
    }

    /// A flow by key, live or just ended.
    pub fn find(&self, key: &FlowKey) -> Option<FlowRecord> {
        self.table
            .get(key)
            .or_else(|| self.ended.get(key).map(|record| **record))
    }

    /// Whether a flow is live (in the table, not ended).
    pub fn is_live(&self, key: &FlowKey) -> bool {
        self.table.get(key).is_some()
    }

    /// Whether a flow ended at this poll.
    pub fn has_ended(&self, key: &FlowKey) -> bool {
        self.ended.contains_key(key)
    }

    /// The flows to look at in this poll, with whether each ended at it:
    /// the live ones active since [`Self::active_since`], and those that
    /// ended. A consumer must make nothing new of a live flow left out.
    pub fn records(&self) -> impl Iterator<Item = (FlowRecord, bool)> + '_ {
        self.exported_records()
            .map(|(record, ended, _)| (record, ended))
    }

    /// Every flow, with whether it ended at this poll: for a consumer
    /// whose decisions wait on time beyond [`REVISIT_NS`] (the flow log's
    /// interval lines).
    pub fn every_record(&self) -> impl Iterator<Item = (FlowRecord, bool)> + '_ {
        self.walk(0).map(|(record, ended, _)| (record, ended))
    }

    /// [`Self::records`], with what the traffic series counted of each.
    pub(crate) fn exported_records(
        &self,
    ) -> impl Iterator<Item = (FlowRecord, bool, &Exported)> + '_ {
        self.walk(self.active_since_ns)
    }

    fn walk(
        &self,
        active_since_ns: u64,
    ) -> impl Iterator<Item = (FlowRecord, bool, &Exported)> + '_ {
        self.table
            .exported_records(active_since_ns)
            .filter(|(record, _)| {
                record.stats.first_seen_ns < self.young_since_ns
                    || !self.held.contains(&record.stats.ifindex)
            })
            .map(|(record, exported)| (record, false, exported))
            .chain(
                self.expired
                    .iter()
                    .map(|ended| (ended.record, true, &ended.exported)),
            )
    }

    /// The keys of the flows that ended at this poll.
    pub fn ended(&self) -> impl Iterator<Item = &FlowKey> + '_ {
        self.ended.keys()
    }
}
