//! The set of label combinations one metric family exports: bounded by a
//! cap, with an overflow series, and pruned of containers long gone.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
};

/// Label value of the overflow series, and of every label in it.
pub const OTHER: &str = "other";

pub struct SeriesBook<L> {
    series: HashMap<L, u64>,
    capacity: usize,
    /// Combinations refused, so that each is reported once.
    refused: HashSet<L>,
}

/// Where [`SeriesBook::admit`] put a combination.
pub struct Admitted<L> {
    pub labels: L,
    /// First refusal of this combination: count it as dropped.
    pub newly_refused: bool,
}

/// How far the memory of refused combinations goes before it restarts, so
/// that a flood of them costs bounded memory (they may then count twice).
const REFUSED_MEMORY: usize = 100_000;

impl<L: Clone + Eq + Hash> SeriesBook<L> {
    pub fn new(capacity: usize) -> Self {
        Self {
            series: HashMap::new(),
            capacity,
            refused: HashSet::new(),
        }
    }

    /// The series to add to for `labels` at `now_ns`: `labels` themselves,
    /// or `overflow` once `capacity` combinations exist.
    pub fn admit(&mut self, labels: L, overflow: &L, now_ns: u64) -> Admitted<L> {
        if let Some(seen) = self.series.get_mut(&labels) {
            *seen = now_ns;
            return Admitted {
                labels,
                newly_refused: false,
            };
        }
        if self.series.len() < self.capacity {
            self.series.insert(labels.clone(), now_ns);
            return Admitted {
                labels,
                newly_refused: false,
            };
        }
        if self.refused.len() >= REFUSED_MEMORY {
            self.refused.clear();
        }
        Admitted {
            newly_refused: self.refused.insert(labels),
            labels: overflow.clone(),
        }
    }

    /// Removes and returns the series `gone` says belong to departed
    /// containers and that nothing updated since `cutoff_ns`.
    pub fn sweep(&mut self, cutoff_ns: u64, gone: impl Fn(&L) -> bool) -> Vec<L> {
        let mut removed = Vec::new();
        self.series.retain(|labels, seen| {
            if *seen >= cutoff_ns || !gone(labels) {
                return true;
            }
            removed.push(labels.clone());
            false
        });
        self.refused.retain(|labels| !gone(labels));
        removed
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_beyond_the_cap_fold_into_the_overflow_once_counted() {
        let mut book = SeriesBook::new(2);
        let other = OTHER.to_owned();
        let mut admit = |labels: &str, now| {
            let admitted = book.admit(labels.to_owned(), &other, now);
            (admitted.labels, admitted.newly_refused)
        };
        assert_eq!(admit("a", 1), ("a".to_owned(), false));
        assert_eq!(admit("b", 1), ("b".to_owned(), false));
        assert_eq!(admit("c", 1), (OTHER.to_owned(), true));
        assert_eq!(admit("c", 2), (OTHER.to_owned(), false));
        // Known combinations keep their series.
        assert_eq!(admit("a", 3), ("a".to_owned(), false));
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn only_stale_series_of_departed_ends_are_swept() {
        let mut book = SeriesBook::new(10);
        let other = OTHER.to_owned();
        for (labels, now) in [("gone-old", 1), ("gone-recent", 9), ("alive-old", 1)] {
            book.admit(labels.to_owned(), &other, now);
        }
        let removed = book.sweep(5, |l| l.starts_with("gone"));
        assert_eq!(removed, vec!["gone-old".to_owned()]);
        assert_eq!(book.len(), 2);
    }
}
