//! One poll's flows as every consumer reads them (metrics, detectors, the
//! flow log, policy learning): the live ones and those that ended at this
//! poll, each findable by key, so a flow's reverse is found wherever it is.

use std::collections::HashSet;

use monitor_common::FlowKey;

use super::{ByFlow, EndedFlow, Exported, FlowTable};
use crate::model::FlowRecord;

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
        }
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

    /// Every flow, with whether it ended at this poll.
    pub fn records(&self) -> impl Iterator<Item = (FlowRecord, bool)> + '_ {
        self.exported_records()
            .map(|(record, ended, _)| (record, ended))
    }

    /// Every flow, with whether it ended at this poll and what the traffic
    /// series counted of it.
    pub(crate) fn exported_records(
        &self,
    ) -> impl Iterator<Item = (FlowRecord, bool, &Exported)> + '_ {
        self.table
            .exported_records()
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
