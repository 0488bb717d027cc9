//! One poll's flows as every consumer reads them (metrics, detectors, the
//! flow log, policy learning): the live ones and those that ended at this
//! poll, each findable by key, so a flow's reverse is found wherever it is.

use monitor_common::FlowKey;

use super::{ByFlow, FlowTable};
use crate::model::FlowRecord;

pub struct PollView<'a> {
    table: &'a FlowTable,
    expired: &'a [FlowRecord],
    ended: ByFlow<FlowRecord>,
}

impl<'a> PollView<'a> {
    /// `expired`: the flows the table forgot at this poll, with their final
    /// totals.
    pub fn new(table: &'a FlowTable, expired: &'a [FlowRecord]) -> Self {
        Self {
            table,
            expired,
            ended: expired.iter().map(|r| (r.key, *r)).collect(),
        }
    }

    /// A flow by key, live or just ended.
    pub fn find(&self, key: &FlowKey) -> Option<FlowRecord> {
        self.table.get(key).or_else(|| self.ended.get(key).copied())
    }

    /// Whether a flow is live (in the table, not ended).
    pub fn is_live(&self, key: &FlowKey) -> bool {
        self.table.get(key).is_some()
    }

    /// Every flow, with whether it ended at this poll.
    pub fn records(&self) -> impl Iterator<Item = (FlowRecord, bool)> + '_ {
        self.table
            .records()
            .map(|record| (record, false))
            .chain(self.expired.iter().map(|record| (*record, true)))
    }

    /// The keys of the flows that ended at this poll.
    pub fn ended(&self) -> impl Iterator<Item = &FlowKey> + '_ {
        self.ended.keys()
    }
}
