//! The poller: on its own thread, the one owner of the kernel flow map and
//! the flow table. Every `poll_interval` it reads the map into the table,
//! hands the poll to each consumer in turn, and publishes its status.

use std::{
    collections::HashSet,
    sync::{mpsc, Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use monitor_common::ip_proto;

use crate::{
    clock,
    datapath::{Counters, FlowMap, ProgramRunStats, Programs},
    docker::{Directory, Renamed, Snapshot},
    flows::{FlowTable, Poll, PollConsumer, PollOutcome, PollStatus, PollView},
    policy::PolicyInForce,
    sync::{lock, read, write, Published},
};

/// How long a new flow of a veth attached at its birth waits for the
/// engine to say whose it is, so that it is named after it from its first
/// poll (the engine answers the moment the container's start completes,
/// which can take seconds on a loaded host); past it, it is counted
/// unnamed.
const NAME_WAIT: Duration = Duration::from_secs(5);

pub struct Poller {
    pub flows: FlowMap,
    /// Entries the map holds (`--flow-capacity`).
    pub capacity: u32,
    pub table: Arc<RwLock<FlowTable>>,
    pub counters: Counters,
    /// For the programs' run statistics (the link follower attaches them).
    pub programs: Arc<Mutex<Programs>>,
    /// Whose denied flows are drained once per poll.
    pub policy: Option<Arc<Mutex<PolicyInForce>>>,
    pub docker: Published<Snapshot>,
    /// In the order they see each poll.
    pub consumers: Vec<Box<dyn PollConsumer>>,
    pub status: Published<PollStatus>,
    pub interval: Duration,
    pub idle_timeout: Duration,
    pub close_linger: Duration,
}

/// What the consumers saw of a poll that the next one's walk depends on.
struct Handed {
    now_ns: u64,
    directory: Arc<Directory>,
    /// Veths whose young flows were held.
    held: HashSet<u32>,
}

/// Since when the consumers walk only the live flows that changed (see
/// [`PollView::changed_since`]), and what the directory and the veths
/// held changed since (see [`PollView::renamed`]): since the previous
/// poll they saw, not the previous read, so that flows counted while
/// reads failed are walked too. `None`, every flow, at the first poll and
/// when the directory changed in a way no address or veth bounds.
fn changed_since(
    previous: Option<&Handed>,
    directory: &Directory,
    held: &HashSet<u32>,
) -> Option<(u64, Renamed)> {
    let handed = previous?;
    let renamed = directory
        .renamed_since(&handed.directory)?
        .with_holds_changed(&handed.held, held);
    Some((handed.now_ns, renamed))
}

impl Poller {
    /// Polls until `stop` is dropped; returns itself, so that the agent can
    /// [`Self::finish`] after a run that ended well.
    pub fn run(mut self, stop: &mpsc::Receiver<()>) -> Self {
        let mut status = PollStatus {
            flow_map_capacity: self.capacity,
            ..PollStatus::default()
        };
        let mut handed = None;
        let mut next = Instant::now();
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(wait) {
                return self;
            }
            // A late poll delays the next one rather than bunching them.
            next = Instant::now() + self.interval;
            self.poll(&mut status, &mut handed);
            self.status.store(Arc::new(status.clone()));
            release_freed_memory();
        }
    }

    /// `handed`: the latest poll the consumers saw, `None` before the
    /// first.
    fn poll(&mut self, status: &mut PollStatus, handed: &mut Option<Handed>) {
        let ago = |span: Duration| u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        let now = clock::monotonic_ns();
        let cutoffs = Cutoffs {
            idle_ns: now.saturating_sub(ago(self.idle_timeout)),
            closed_ns: now.saturating_sub(ago(self.close_linger)),
        };
        match poll_once(&mut self.flows, &self.table, now, cutoffs) {
            Ok(outcome) => {
                if outcome.evicted > 0 {
                    tracing::warn!(
                        evicted = outcome.evicted,
                        "flow map full: the kernel evicted flows; raise --flow-capacity"
                    );
                }
                status.flow_map_entries = outcome.entries;
                status.flows_evicted += outcome.evicted as u64;
                // Drained only after a good read: after a failed one they
                // wait in the kernel for the next poll with the flows.
                let denied = self
                    .policy
                    .as_ref()
                    .map(|policy| lock(policy).drain_denied())
                    .unwrap_or_default();
                let docker = self.docker.load();
                let table = read(&self.table);
                // One view for every consumer: each reads the same live and
                // ended flows, and the index of the ended ones is built once.
                let held: HashSet<u32> = docker.unnamed.iter().copied().collect();
                let young =
                    now.saturating_sub(u64::try_from(NAME_WAIT.as_nanos()).unwrap_or(u64::MAX));
                let since = changed_since(handed.as_ref(), &docker.directory, &held);
                *handed = Some(Handed {
                    now_ns: now,
                    directory: Arc::clone(&docker.directory),
                    held: held.clone(),
                });
                let mut flows = PollView::new(&table, &outcome.expired).holding(held, young);
                if let Some((since, renamed)) = since {
                    flows = flows.renamed(renamed).changed_since(since, now);
                }
                let poll = Poll {
                    flows,
                    directory: &docker.directory,
                    inventory: docker.inventory.as_deref(),
                    denied: &denied,
                    now_ns: now,
                };
                for consumer in &mut self.consumers {
                    consumer.on_poll(&poll);
                }
                status.flows = table.len();
            }
            // A failed read loses no traffic: the kernel keeps counting and
            // the next poll reads it. Evictions noticed in the part read
            // before the failure go unreported.
            Err(err) => tracing::warn!("reading the flow map: {err:#}"),
        }
        match self.counters.read() {
            Ok(kernel) => status.kernel = kernel,
            Err(err) => tracing::warn!("reading kernel counters: {err:#}"),
        }
        status.programs = program_stats(&self.programs);
    }

    /// After a run that ended well: each consumer writes out what it keeps.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        for consumer in &mut self.consumers {
            consumer.finish()?;
        }
        Ok(())
    }
}

/// Hands the pages a poll freed back to the system. Each poll builds and
/// drops per-flow buffers; glibc keeps freed heap for reuse, so without
/// this the agent's RSS held every poll's high-water mark (108 MiB instead
/// of 72 at 100k flows in `cargo xtask bench`), for no measurable CPU.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The programs' run statistics if the kernel keeps them
/// (`kernel.bpf_stats_enabled`, off by default for its small cost).
fn program_stats(programs: &Mutex<Programs>) -> Option<Vec<ProgramRunStats>> {
    let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|text| text.trim() == "1");
    if !enabled {
        return None;
    }
    lock(programs)
        .run_stats()
        .inspect_err(|err| tracing::debug!("program statistics: {err:#}"))
        .ok()
}

/// Before when (CLOCK_MONOTONIC) a flow's last packet must be for a poll
/// to end it.
#[derive(Clone, Copy, Debug)]
pub struct Cutoffs {
    /// Any flow: `--idle-timeout` ago.
    pub idle_ns: u64,
    /// A closed TCP connection (an RST either way, or a FIN both ways),
    /// judged by the later of its two flows' last packets:
    /// `--close-linger` ago.
    pub closed_ns: u64,
}

impl Cutoffs {
    /// Idle flows only, at `idle_ns`: closed connections wait as long.
    pub fn idle(idle_ns: u64) -> Self {
        Cutoffs {
            idle_ns,
            closed_ns: idle_ns,
        }
    }
}

/// One read of the kernel map into `table`, at `now_ns`; exported for
/// tests. The table
/// is locked per batch of the read, never across a syscall, so the API
/// stays responsive with a full map. A read that fails half-way leaves the
/// table with newer counts for part of the flows, which is all it is.
///
/// Idle flows and closed connections are taken out of the map with their
/// last counts (lookup and delete at once) and out of the table, ended at
/// this poll with their final totals.
pub fn poll_once(
    flows: &mut FlowMap,
    table: &RwLock<FlowTable>,
    now_ns: u64,
    cutoffs: Cutoffs,
) -> anyhow::Result<PollOutcome> {
    let mut outcome = PollOutcome::default();
    let mut read = 0_usize;
    let mut idle = Vec::new();
    let mut closing = Vec::new();
    write(table).begin_poll(now_ns);
    flows.for_each_batch(|batch| {
        let mut table = write(table);
        // An entry created but not yet stamped by its first packet reads
        // all zero: it is brand new, neither a flow to show nor an idle one.
        for (key, stats) in batch.iter().filter(|(_, s)| s.first_seen_ns != 0) {
            read += 1;
            table.observe(key, stats, &mut outcome);
            if stats.last_seen_ns < cutoffs.idle_ns {
                idle.push(*key);
            } else if key.protocol == ip_proto::TCP
                && (stats.rst != 0 || stats.fin != 0)
                && stats.last_seen_ns < cutoffs.closed_ns
            {
                closing.push(*key);
            }
        }
    })?;
    let closed = {
        let mut table = write(table);
        table.end_poll(&mut outcome);
        table.closed(&closing, cutoffs.closed_ns)
    };
    let mut retired = Vec::new();
    let mut failed = None;
    for key in idle.iter().chain(&closed) {
        match flows.take(key) {
            Ok(Some(last)) => retired.push((*key, last)),
            Ok(None) => {}
            // What was taken so far is out of the kernel map: it must
            // reach the table before the error is reported.
            Err(err) => {
                failed = Some(err);
                break;
            }
        }
    }
    let mut table = write(table);
    for (key, last) in &retired {
        table.retire(key, last);
    }
    // Before any flow leaves the table: each one that does must reach the
    // consumers as ended, which only a good poll hands them (the
    // detectors free its state then).
    if let Some(err) = failed {
        return Err(err);
    }
    // A flow of a closed connection can be back in the map since the read
    // (a late segment) and be taken out with the others: the entries left
    // are then an estimate, never below zero.
    outcome.entries = read.saturating_sub(retired.len());
    outcome.expired = table.expire(cutoffs.idle_ns);
    outcome
        .expired
        .extend(closed.iter().filter_map(|key| table.end(key)));
    Ok(outcome)
}

#[cfg(test)]
mod quiet_flows;
