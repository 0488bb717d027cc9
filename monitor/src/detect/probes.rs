//! Distinct targets (ports, addresses) one source tried within a sliding
//! window, each weighted by how the attempt ended: the evidence of a scan.
//!
//! Recording is O(1); the window slides once per poll; the full summary
//! (outcomes, a sample of targets) is built only when asked for, so a
//! scan of every port costs no more than its attempts.

use std::{collections::BTreeMap, hash::Hash};

use hashbrown::Equivalent;

use super::ByKey;

use crate::flows::outcome::Outcome;

/// What a source tried within the window.
#[derive(Debug)]
pub struct Tried<T> {
    pub score: f64,
    /// Distinct targets by the outcome of their heaviest attempt.
    pub outcomes: BTreeMap<&'static str, u32>,
    /// The lowest targets tried, for the evidence.
    pub sample: Vec<T>,
    pub distinct: usize,
}

const SAMPLE: usize = 20;

struct Window<T> {
    targets: ByKey<T, (f64, Outcome, u64)>,
    score: f64,
}

pub struct Probes<K, T> {
    window_ns: u64,
    by_source: ByKey<K, Window<T>>,
}

impl<K: Eq + Hash, T: Eq + Hash + Ord + Copy> Probes<K, T> {
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            by_source: ByKey::default(),
        }
    }

    /// Records one attempt and returns the source's score in the window.
    /// A target tried again keeps its heaviest weight. The source is
    /// copied only the first time it is seen within the window.
    pub fn record<Q>(
        &mut self,
        source: &Q,
        target: T,
        weight: f64,
        outcome: Outcome,
        now_ns: u64,
    ) -> f64
    where
        Q: Hash + Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        let window = self.by_source.entry_ref(source).or_insert_with(|| Window {
            targets: ByKey::default(),
            score: 0.0,
        });
        match window.targets.get_mut(&target) {
            Some(entry) => {
                if weight > entry.0 {
                    window.score += weight - entry.0;
                    *entry = (weight, outcome, now_ns);
                }
                entry.2 = now_ns;
            }
            None => {
                window.targets.insert(target, (weight, outcome, now_ns));
                window.score += weight;
            }
        }
        window.score
    }

    /// What `source` tried within the window, in full.
    pub fn summary<Q>(&self, source: &Q) -> Option<Tried<T>>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let window = self.by_source.get(source)?;
        let mut outcomes = BTreeMap::new();
        for (_, outcome, _) in window.targets.values() {
            *outcomes.entry(outcome.name()).or_default() += 1;
        }
        let mut sample: Vec<T> = window.targets.keys().copied().collect();
        sample.sort_unstable();
        sample.truncate(SAMPLE);
        Some(Tried {
            score: window.score,
            outcomes,
            sample,
            distinct: window.targets.len(),
        })
    }

    /// Whether `source` tried anything within the window.
    pub fn contains<Q>(&self, source: &Q) -> bool
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.by_source.contains_key(source)
    }

    /// Slides the window: forgets targets last tried before it, and
    /// sources with none left.
    pub fn expire(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(self.window_ns);
        self.by_source.retain(|_, window| {
            window.targets.retain(|_, (_, _, at)| *at >= cutoff);
            window.score = window.targets.values().map(|(w, _, _)| w).sum();
            !window.targets.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_targets_weigh_by_outcome_within_the_window() {
        let mut probes = Probes::new(10);
        probes.record(&"a", 1u16, 1.0, Outcome::Refused, 0);
        probes.record(&"a", 2, 0.25, Outcome::Established, 1);
        // The same port again counts once, at its heaviest.
        probes.record(&"a", 1, 0.25, Outcome::Established, 2);
        assert_eq!(probes.record(&"a", 3, 1.0, Outcome::Unanswered, 3), 2.25);
        let tried = probes.summary(&"a").expect("tried");
        assert_eq!((tried.distinct, tried.sample), (3, vec![1, 2, 3]));
        assert_eq!(tried.outcomes["refused"], 1);
        // Ports 1 and 2 were last tried at 2 and 1: out of a window ending
        // at 13.
        probes.expire(13);
        assert_eq!(probes.record(&"a", 4, 1.0, Outcome::Refused, 13), 2.0);
        probes.expire(100);
        assert!(probes.summary(&"a").is_none());
    }
}
