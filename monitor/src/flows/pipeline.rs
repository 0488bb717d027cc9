//! The contract between the poller and what it feeds: each poll's view of
//! the flows, handed to every consumer in turn (traffic series, detectors,
//! policy alerts and learning, the flow log), and what the poller
//! publishes of itself once per poll.

use std::sync::{Arc, Mutex};

use monitor_common::{DeniedStats, FlowKey};

use super::PollView;
use crate::{
    datapath::{KernelCounters, ProgramRunStats},
    docker::{Directory, Inventory},
    sync::lock,
};

/// One poll, as every consumer sees it.
pub struct Poll<'a> {
    /// The live flows and those that ended at this poll; walked, only
    /// those that changed (see [`PollView::records`]).
    pub flows: PollView<'a>,
    /// Who the addresses and veths are at this poll.
    pub directory: &'a Directory,
    /// The containers, once the engine answered (`None` without Docker).
    pub inventory: Option<&'a Inventory>,
    /// Flows the policy judged since the previous poll (none without a
    /// policy).
    pub denied: &'a [(FlowKey, DeniedStats)],
    /// CLOCK_MONOTONIC of the poll, in the programs' time base.
    pub now_ns: u64,
}

/// A stage fed by the poller, on the poller's thread, after each poll.
pub trait PollConsumer: Send {
    fn on_poll(&mut self, poll: &Poll<'_>);

    /// The agent stops after a run that ended well (a signal, or
    /// `policy learn`'s duration): write out what is kept (a learnt policy).
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A consumer that something else also reads (the traffic series and the
/// detectors, read by `/metrics` at scrape time): locked for each poll.
impl<T: PollConsumer> PollConsumer for Arc<Mutex<T>> {
    fn on_poll(&mut self, poll: &Poll<'_>) {
        lock(self).on_poll(poll);
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        lock(self).finish()
    }
}

/// What the poller knows after a poll, published whole once per poll for
/// the API and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct PollStatus {
    /// Flows in the table (active, or idle within `--idle-timeout`).
    pub flows: usize,
    /// Kernel map entries at the latest read, and its capacity.
    pub flow_map_entries: usize,
    pub flow_map_capacity: u32,
    /// Kernel entries evicted by a full map since the start.
    pub flows_evicted: u64,
    pub kernel: KernelCounters,
    /// `None` unless `kernel.bpf_stats_enabled` is on.
    pub programs: Option<Vec<ProgramRunStats>>,
}
