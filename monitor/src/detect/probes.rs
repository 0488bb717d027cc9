//! Distinct targets (ports, addresses) one source tried within a sliding
//! window, each weighted by how the attempt ended: the evidence of a scan.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

use crate::flows::outcome::Outcome;

/// What a source tried within the window.
#[derive(Debug)]
pub struct Tried<T> {
    pub score: f64,
    /// Attempts by outcome name.
    pub outcomes: BTreeMap<&'static str, u32>,
    /// The lowest targets tried, for the evidence.
    pub sample: Vec<T>,
    pub distinct: usize,
}

const SAMPLE: usize = 20;

pub struct Probes<K, T> {
    window_ns: u64,
    by_source: HashMap<K, HashMap<T, (f64, Outcome, u64)>>,
}

impl<K: Eq + Hash, T: Eq + Hash + Ord + Copy> Probes<K, T> {
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            by_source: HashMap::new(),
        }
    }

    /// Records one attempt and returns what `source` tried in the window.
    /// A target tried again keeps its heaviest weight.
    pub fn record(
        &mut self,
        source: K,
        target: T,
        weight: f64,
        outcome: Outcome,
        now_ns: u64,
    ) -> Tried<T> {
        let cutoff = now_ns.saturating_sub(self.window_ns);
        let targets = self.by_source.entry(source).or_default();
        targets.retain(|_, (_, _, at)| *at >= cutoff);
        let entry = targets.entry(target).or_insert((weight, outcome, now_ns));
        if weight >= entry.0 {
            *entry = (weight, outcome, now_ns);
        }
        entry.2 = now_ns;
        let mut tried = Tried {
            score: 0.0,
            outcomes: BTreeMap::new(),
            sample: Vec::new(),
            distinct: targets.len(),
        };
        for (weight, outcome, _) in targets.values() {
            tried.score += weight;
            *tried.outcomes.entry(outcome.name()).or_default() += 1;
        }
        let mut sample: Vec<T> = targets.keys().copied().collect();
        sample.sort_unstable();
        sample.truncate(SAMPLE);
        tried.sample = sample;
        tried
    }

    /// Forgets sources with nothing tried within the window.
    pub fn expire(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(self.window_ns);
        self.by_source.retain(|_, targets| {
            targets.retain(|_, (_, _, at)| *at >= cutoff);
            !targets.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_targets_weigh_by_outcome_within_the_window() {
        let mut probes = Probes::new(10);
        probes.record("a", 1u16, 1.0, Outcome::Refused, 0);
        probes.record("a", 2, 0.25, Outcome::Established, 1);
        // The same port again counts once, at its heaviest.
        probes.record("a", 1, 0.25, Outcome::Established, 2);
        let tried = probes.record("a", 3, 1.0, Outcome::Unanswered, 3);
        assert_eq!(tried.distinct, 3);
        assert_eq!(tried.score, 2.25);
        assert_eq!(tried.sample, [1, 2, 3]);
        // Ports 1 and 2 were last tried at 2 and 1: out of a window ending at 13.
        let tried = probes.record("a", 4, 1.0, Outcome::Refused, 13);
        assert_eq!((tried.distinct, tried.score), (2, 2.0));
        probes.expire(100);
        assert!(probes.by_source.is_empty());
    }
}
