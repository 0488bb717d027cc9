//! Flow aggregation in user space: cumulative totals that survive the
//! kernel map evicting or expiring entries, one view of each poll, and the
//! contract of the stages the poller feeds.

mod exported;
pub mod outcome;
mod pipeline;
mod poll_view;
mod sharded;
mod table;

pub use exported::Exported;
pub use pipeline::{Poll, PollConsumer, PollStatus};
pub use poll_view::PollView;
pub use table::{EndedFlow, FlowTable, PollOutcome, TableReader};

use std::collections::{HashMap, HashSet};

use monitor_common::FlowKey;

/// A map keyed by flow. Keys are whatever containers write in their
/// headers, so the hash is seeded at random; foldhash hashes a 40-byte key
/// several times faster than std's SipHash, which took a sixth of the
/// agent's time at 100k flows.
pub type ByFlow<V> = HashMap<FlowKey, V, foldhash::fast::RandomState>;
pub type FlowSet = HashSet<FlowKey, foldhash::fast::RandomState>;
