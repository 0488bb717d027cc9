//! The series of one metric family: values by label combination, bounded by
//! a cap (with one overflow series beyond it), pruned of containers long
//! gone.

use std::hash::Hash;

use hashbrown::{hash_map::EntryRef, Equivalent, HashMap, HashSet};

/// Label value of the overflow series, and of every label in it.
pub const OTHER: &str = "other";

/// Labels name containers, networks and ports, which containers choose:
/// the hash is seeded at random (foldhash, several times faster than std's
/// SipHash on these strings, which showed in the agent's profile at 100k
/// flows, where each poll looks up a series per changed flow). hashbrown's
/// maps rather than std's: they look up by a borrowed form of the labels
/// ([`SeriesLabels`]).
type ByLabels<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What a series is looked up by: its labels, or a form of them borrowed
/// from the flow that hashes and compares alike ([`Equivalent`]), so that
/// finding a known series (nearly every lookup) copies no string; only a
/// new or refused combination is made owned.
pub trait SeriesLabels<L>: Hash + Equivalent<L> {
    fn to_labels(&self) -> L;
}

impl<L: Clone + Eq + Hash> SeriesLabels<L> for L {
    fn to_labels(&self) -> L {
        self.clone()
    }
}

/// Declares an owned key of strings (then `Copy` values) and its borrowed
/// twin, which hashes and compares as the owned key does: a map of owned
/// keys is searched by the borrowed one ([`Equivalent`]), which is made
/// owned only to insert ([`SeriesLabels`]).
macro_rules! owned_and_borrowed {
    (
        $(#[$owned_meta:meta])*
        $vis:vis struct $owned:ident;
        $(#[$borrowed_meta:meta])*
        struct $borrowed:ident {
            $($string:ident),+;
            $($copied:ident: $ty:ty),*
        }
    ) => {
        $(#[$owned_meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        $vis struct $owned {
            $(pub $string: String,)+
            $(pub $copied: $ty,)*
        }

        $(#[$borrowed_meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis struct $borrowed<'a> {
            $(pub $string: &'a str,)+
            $(pub $copied: $ty,)*
        }

        impl $owned {
            $vis fn borrowed(&self) -> $borrowed<'_> {
                $borrowed {
                    $($string: &self.$string,)+
                    $($copied: self.$copied,)*
                }
            }
        }

        /// The borrowed form's hash, so that a lookup by either finds the
        /// same entry.
        impl std::hash::Hash for $owned {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.borrowed().hash(state);
            }
        }

        impl hashbrown::Equivalent<$owned> for $borrowed<'_> {
            fn equivalent(&self, key: &$owned) -> bool {
                *self == key.borrowed()
            }
        }

        impl $crate::book::SeriesLabels<$owned> for $borrowed<'_> {
            fn to_labels(&self) -> $owned {
                $owned {
                    $($string: self.$string.to_owned(),)+
                    $($copied: self.$copied,)*
                }
            }
        }
    };
}
pub(crate) use owned_and_borrowed;

pub struct SeriesBook<L, V> {
    series: ByLabels<L, Series<V>>,
    /// The overflow series' labels: those of every combination refused
    /// beyond the cap, and of any given them outright.
    overflow: L,
    /// The overflow series, once used: apart from `series`, so that a
    /// known combination (nearly every lookup) is found by one lookup, not
    /// one to ask and one to take.
    overflow_series: Option<Series<V>>,
    capacity: usize,
    /// Combinations refused, so that each is reported once.
    refused: HashSet<L, foldhash::fast::RandomState>,
    dropped: u64,
}

struct Series<V> {
    value: V,
    updated_ns: u64,
}

impl<V: Default> Series<V> {
    fn new(now_ns: u64) -> Self {
        Self {
            value: V::default(),
            updated_ns: now_ns,
        }
    }
}

/// How far the memory of refused combinations goes before it restarts, so
/// that a flood of them costs bounded memory (they may then count twice).
const REFUSED_MEMORY: usize = 100_000;

impl<L: Clone + Eq + Hash, V: Default> SeriesBook<L, V> {
    pub fn new(capacity: usize, overflow: L) -> Self {
        Self {
            series: ByLabels::default(),
            overflow,
            overflow_series: None,
            capacity,
            refused: HashSet::default(),
            dropped: 0,
        }
    }

    /// The value to update for `labels` at `now_ns`: their own series, or
    /// the overflow series once `capacity` combinations exist.
    pub fn value<Q: SeriesLabels<L> + ?Sized>(&mut self, labels: &Q, now_ns: u64) -> &mut V {
        let room = self.series.len() < self.capacity;
        let series = if labels.equivalent(&self.overflow) {
            self.overflow_series
                .get_or_insert_with(|| Series::new(now_ns))
        } else {
            match self.series.entry_ref(labels) {
                EntryRef::Occupied(series) => series.into_mut(),
                EntryRef::Vacant(series) if room => {
                    series.insert_with_key(labels.to_labels(), Series::new(now_ns))
                }
                EntryRef::Vacant(_) => {
                    if self.refused.len() >= REFUSED_MEMORY {
                        self.refused.clear();
                    }
                    if !self.refused.contains(labels) {
                        self.refused.insert(labels.to_labels());
                        self.dropped += 1;
                    }
                    self.overflow_series
                        .get_or_insert_with(|| Series::new(now_ns))
                }
            }
        };
        series.updated_ns = now_ns;
        &mut series.value
    }

    /// Removes the series `gone` says belong to departed containers and
    /// that nothing updated since `cutoff_ns`; returns how many.
    pub fn sweep(&mut self, cutoff_ns: u64, gone: impl Fn(&L) -> bool) -> usize {
        let before = self.len();
        let kept = |labels: &L, series: &Series<V>| series.updated_ns >= cutoff_ns || !gone(labels);
        self.series.retain(|labels, series| kept(labels, series));
        if let Some(overflow) = &self.overflow_series {
            if !kept(&self.overflow, overflow) {
                self.overflow_series = None;
            }
        }
        self.refused.retain(|labels| !gone(labels));
        before - self.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&L, &V)> {
        let overflow = self
            .overflow_series
            .as_ref()
            .map(|series| (&self.overflow, &series.value));
        self.series
            .iter()
            .map(|(labels, series)| (labels, &series.value))
            .chain(overflow)
    }

    /// Combinations refused by the cap so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.series.len() + usize::from(self.overflow_series.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(capacity: usize) -> SeriesBook<String, u64> {
        SeriesBook::new(capacity, OTHER.to_owned())
    }

    fn values(book: &SeriesBook<String, u64>) -> Vec<(String, u64)> {
        let mut all: Vec<_> = book.iter().map(|(l, v)| (l.clone(), *v)).collect();
        all.sort();
        all
    }

    #[test]
    fn combinations_beyond_the_cap_fold_into_the_overflow_once_counted() {
        let mut book = book(2);
        for (labels, now) in [("a", 1), ("b", 1), ("c", 1), ("c", 2), ("d", 2), ("a", 3)] {
            *book.value(&labels.to_owned(), now) += 1;
        }
        assert_eq!(
            values(&book),
            [("a".into(), 2), ("b".into(), 1), (OTHER.into(), 3)]
        );
        // `c` twice and `d` once: two combinations refused.
        assert_eq!(book.dropped(), 2);
    }

    #[test]
    fn the_overflow_labels_name_one_series_within_the_cap_or_beyond() {
        let mut book = book(1);
        *book.value(&OTHER.to_owned(), 1) += 1;
        *book.value(&"a".to_owned(), 1) += 1;
        *book.value(&"b".to_owned(), 1) += 1;
        *book.value(&OTHER.to_owned(), 2) += 1;
        assert_eq!(values(&book), [("a".into(), 1), (OTHER.into(), 3)]);
        assert_eq!((book.len(), book.dropped()), (2, 1));
        assert_eq!(book.sweep(5, |l| l == OTHER), 1, "stale, and gone");
        assert_eq!(values(&book), [("a".into(), 1)]);
    }

    #[test]
    fn only_stale_series_of_departed_ends_are_swept() {
        let mut book = book(10);
        for (labels, now) in [("gone-old", 1), ("gone-recent", 9), ("alive-old", 1)] {
            *book.value(&labels.to_owned(), now) += 1;
        }
        assert_eq!(book.sweep(5, |l| l.starts_with("gone")), 1);
        assert_eq!(
            values(&book),
            [("alive-old".into(), 1), ("gone-recent".into(), 1)]
        );
    }
}
