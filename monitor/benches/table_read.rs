//! What taking a read of the kernel flow map into the flow table costs
//! (`FlowTable::observe` for every entry), at 100k flows. Two tables side
//! by side, polled in turn: one read in the same order at every poll, as
//! the kernel hands out its entries (by hash bucket), so each flow is found
//! where the previous read left it; the other read in a new order at every
//! poll, so each flow is looked up by its key, as every flow was before the
//! table remembered its reads. Between polls a buffer larger than the
//! table is written, as the agent's kernel read and consumers push the
//! table out of the caches between two reads. Run by
//! `cargo bench -p monitor --bench table_read`.

use std::{hint::black_box, time::Instant};

use monitor::flows::{FlowTable, PollOutcome};
use monitor_common::{ip_proto, FlowKey, FlowStats};

const FLOWS: u32 = 100_000;
const WARM_POLLS: usize = 3;
const TIMED_POLLS: usize = 7;
/// More than the caches, less than the agent's own memory.
const EVICT_BYTES: usize = 64 << 20;

/// One table, and how its polls went.
struct Reader {
    table: FlowTable,
    millis: Vec<f64>,
    looked_up: Vec<usize>,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            table: FlowTable::new(),
            millis: Vec::new(),
            looked_up: Vec::new(),
        }
    }

    /// One poll over `keys` in their order: a datagram more on each flow.
    fn poll(&mut self, keys: &[FlowKey], poll: u64) {
        let mut outcome = PollOutcome::default();
        let started = Instant::now();
        self.table.begin_poll(0);
        for key in keys {
            let stats = FlowStats {
                packets: poll + 1,
                bytes: 64 * (poll + 1),
                first_seen_ns: 1,
                last_seen_ns: (poll + 1) * 1_000_000_000,
                ..FlowStats::default()
            };
            self.table.observe(key, &stats, &mut outcome);
        }
        self.table.end_poll(&mut outcome);
        self.millis.push(started.elapsed().as_secs_f64() * 1e3);
        self.looked_up.push(outcome.looked_up);
    }

    /// Median time and the most lookups of the timed polls.
    fn timed(&self) -> (f64, usize) {
        let mut millis = self.millis[WARM_POLLS..].to_vec();
        millis.sort_by(f64::total_cmp);
        let looked_up = self.looked_up[WARM_POLLS..].iter().max().copied();
        (millis[millis.len() / 2], looked_up.unwrap_or(0))
    }
}

fn main() {
    let mut kernel_order: Vec<FlowKey> = (0..FLOWS)
        .map(|flow| {
            let [_, a, b, c] = flow.to_be_bytes();
            FlowKey::ipv4([10, a, b, c], 40_000, [10, 200, 0, 1], 5_000, ip_proto::UDP)
        })
        .collect();
    // Seeded: each run reads the same orders.
    let mut shuffler = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    shuffler.shuffle(&mut kernel_order);
    let mut new_order = kernel_order.clone();
    let (mut in_order, mut looked_up) = (Reader::new(), Reader::new());
    let mut evict = vec![0u8; EVICT_BYTES];
    for poll in 0..(WARM_POLLS + TIMED_POLLS) as u64 {
        shuffler.shuffle(&mut new_order);
        // In turn, each first every other poll.
        let mut turns = [(&mut in_order, &kernel_order), (&mut looked_up, &new_order)];
        if poll % 2 == 1 {
            turns.reverse();
        }
        for (reader, keys) in turns {
            evict
                .iter_mut()
                .step_by(64)
                .for_each(|byte| *byte = byte.wrapping_add(1));
            black_box(&evict);
            reader.poll(keys, poll);
        }
    }
    let (ordered_ms, ordered_lookups) = in_order.timed();
    let (shuffled_ms, shuffled_lookups) = looked_up.timed();
    println!(
        "| flows | read in the previous read's order (median of {TIMED_POLLS}) | read in a new \
         order each poll | ratio | flows looked up by key, in order / new order |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {FLOWS} | {ordered_ms:.2} ms | {shuffled_ms:.2} ms | {:.2} | {ordered_lookups} / \
         {shuffled_lookups} |",
        ordered_ms / shuffled_ms
    );
}
