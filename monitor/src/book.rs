//! The series of one metric family: values by label combination, bounded by
//! a cap (with one overflow series beyond it), pruned of containers long
//! gone.

use std::hash::Hash;

use hashbrown::{Equivalent, HashSet};
use indexmap::{
    map::{raw_entry_v1::RawEntryMut, RawEntryApiV1 as _},
    IndexMap,
};

/// Label value of the overflow series, and of every label in it.
pub const OTHER: &str = "other";

/// Labels name containers, networks and ports, which containers choose:
/// the hash is seeded at random (foldhash, several times faster than std's
/// SipHash on these strings, which showed in the agent's profile at 100k
/// flows, where each poll looked up a series per changed flow). An
/// `IndexMap`: it looks up by a borrowed form of the labels
/// ([`SeriesLabels`]), and a series keeps its index ([`Slot`]) until a
/// sweep removes one.
type ByLabels<K, V> = IndexMap<K, V, foldhash::fast::RandomState>;

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
    /// Sweeps that removed a series so far: each moves series, so that a
    /// [`Slot`] taken before it no longer finds its own.
    removals: u64,
}

/// Where a series sits in its book: found again by [`SeriesBook::value_at`]
/// without its labels, which a flow's series are costly to make from (its
/// ends looked up by address, a port looked up in the served set) and to
/// hash. Good until the book next removes a series
/// ([`SeriesBook::removals`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u32);

impl Slot {
    /// The overflow series', kept apart from the others.
    const OVERFLOW: Slot = Slot(u32::MAX);

    /// A slot as [`Self::to_u32`] gave it: a flow's table entry keeps it
    /// in an atomic of 4 bytes.
    pub fn from_u32(slot: u32) -> Self {
        Self(slot)
    }

    pub fn to_u32(self) -> u32 {
        self.0
    }
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

/// The series in `series`, made at `now_ns` if there is none yet.
fn made<V: Default>(series: &mut Option<Series<V>>, now_ns: u64) -> &mut Series<V> {
    series.get_or_insert_with(|| Series::new(now_ns))
}

/// How far the memory of refused combinations goes before it restarts, so
/// that a flood of them costs bounded memory (they may then count twice).
const REFUSED_MEMORY: usize = 100_000;

impl<L: Clone + Eq + Hash, V: Default> SeriesBook<L, V> {
    /// `capacity` is clamped to `u32::MAX`: a [`Slot`] is 32 bits, and the
    /// overflow series' is the one past every index.
    pub fn new(capacity: usize, overflow: L) -> Self {
        Self {
            series: ByLabels::default(),
            overflow,
            overflow_series: None,
            capacity: capacity.min(Slot::OVERFLOW.0 as usize),
            refused: HashSet::default(),
            dropped: 0,
            removals: 0,
        }
    }

    /// The value to update for `labels` at `now_ns`: their own series, or
    /// the overflow series once `capacity` combinations exist.
    pub fn value<Q: SeriesLabels<L> + ?Sized>(&mut self, labels: &Q, now_ns: u64) -> &mut V {
        &mut self.series_of(labels, now_ns).1.value
    }

    /// Where the series [`Self::value`] updates for `labels` is, and its
    /// value: found again by [`Self::value_at`].
    pub fn slot_and_value<Q: SeriesLabels<L> + ?Sized>(
        &mut self,
        labels: &Q,
        now_ns: u64,
    ) -> (Slot, &mut V) {
        let (slot, series) = self.series_of(labels, now_ns);
        (slot, &mut series.value)
    }

    fn series_of<Q: SeriesLabels<L> + ?Sized>(
        &mut self,
        labels: &Q,
        now_ns: u64,
    ) -> (Slot, &mut Series<V>) {
        let room = self.series.len() < self.capacity;
        let (slot, series) = if labels.equivalent(&self.overflow) {
            (Slot::OVERFLOW, made(&mut self.overflow_series, now_ns))
        } else {
            // Indexes stay under `capacity`, hence under `Slot::OVERFLOW`.
            match self.series.raw_entry_mut_v1().from_key(labels) {
                RawEntryMut::Occupied(series) => (Slot(series.index() as u32), series.into_mut()),
                RawEntryMut::Vacant(series) if room => (
                    Slot(series.index() as u32),
                    series.insert(labels.to_labels(), Series::new(now_ns)).1,
                ),
                RawEntryMut::Vacant(_) => {
                    if self.refused.len() >= REFUSED_MEMORY {
                        self.refused.clear();
                    }
                    if !self.refused.contains(labels) {
                        self.refused.insert(labels.to_labels());
                        self.dropped += 1;
                    }
                    (Slot::OVERFLOW, made(&mut self.overflow_series, now_ns))
                }
            }
        };
        series.updated_ns = now_ns;
        (slot, series)
    }

    /// The value of the series at `slot`, updated at `now_ns`; `None` where
    /// the book holds no series there any more.
    pub fn value_at(&mut self, slot: Slot, now_ns: u64) -> Option<&mut V> {
        let series = if slot == Slot::OVERFLOW {
            self.overflow_series.as_mut()?
        } else {
            self.series.get_index_mut(slot.0 as usize)?.1
        };
        series.updated_ns = now_ns;
        Some(&mut series.value)
    }

    /// Sweeps that removed a series so far: a [`Slot`] taken before the
    /// latest may find another series than its own.
    pub fn removals(&self) -> u64 {
        self.removals
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
        let removed = before - self.len();
        if removed > 0 {
            self.removals += 1;
        }
        removed
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
    fn a_slot_finds_its_series_and_a_sweep_that_removes_one_is_told() {
        let mut book = book(2);
        let (a, _) = book.slot_and_value(&"a".to_owned(), 1);
        let (b, _) = book.slot_and_value(&"b".to_owned(), 1);
        let (other, _) = book.slot_and_value(&"c".to_owned(), 1);
        for slot in [a, b, other] {
            *book.value_at(slot, 2).expect("a series") += 1;
        }
        assert_eq!(
            values(&book),
            [("a".into(), 1), ("b".into(), 1), (OTHER.into(), 1)]
        );
        assert_eq!(book.sweep(5, |l| l == "c"), 0, "nothing of c to sweep");
        assert_eq!(book.removals(), 0);
        assert_eq!(book.sweep(5, |l| l == "a"), 1);
        assert_eq!(book.removals(), 1);
        // `b` moved where `a` was; where `b` was, nothing is left.
        assert_eq!(book.value_at(b, 6), None);
        *book.value_at(a, 6).expect("b, moved") += 1;
        assert_eq!(values(&book), [("b".into(), 2), (OTHER.into(), 1)]);
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
