//! A map keyed by flow for the flow table, which holds every flow, split
//! in shards that grow one at a time, each entry reachable by its slot.
//!
//! A hash map grows by moving into one twice its size, both live until
//! the move ends: at 100k flows the flow table's last growth alone put
//! about 7 MB on the agent's peak RSS, above what it holds once grown.
//! Shards chosen by the key's hash fill evenly and each grows on its own,
//! so a growth holds one shard twice, a sixteenth of the map.
//!
//! An entry's [`Slot`] is its shard and its bucket there: it reaches the
//! entry without hashing the key, for the table to find the flows of a
//! read where the previous read left them (see `FlowTable::observe`). A
//! slot holds until its entry is removed or its shard is rehashed (when it
//! grows, or when an insert finds it full of removed entries' tombstones);
//! [`at_mut`] checks the key, so a slot kept past either finds nothing.
//!
//! [`at_mut`]: ShardedByFlow::at_mut

use std::hash::BuildHasher as _;

use hashbrown::HashTable;
use monitor_common::FlowKey;

const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;
const BUCKET_BITS: u32 = u32::BITS - SHARD_BITS;

/// Where an entry sits: its shard and its bucket there, in one `u32` (the
/// table keeps one per flow read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u32);

impl Slot {
    /// No entry: a removed flow's place in a remembered read.
    pub const NONE: Slot = Slot(u32::MAX);

    /// [`Self::NONE`] past the buckets a slot can name (2^28 - 1 in a
    /// shard): the entry is then found by its key.
    fn new(shard: usize, bucket: usize) -> Slot {
        match u32::try_from(bucket) {
            Ok(bucket) if bucket < Slot::NONE.0 >> SHARD_BITS => {
                Slot((shard as u32) << BUCKET_BITS | bucket)
            }
            _ => Slot::NONE,
        }
    }

    fn shard(self) -> usize {
        (self.0 >> BUCKET_BITS) as usize
    }

    fn bucket(self) -> usize {
        (self.0 & ((1 << BUCKET_BITS) - 1)) as usize
    }
}

/// One shard, with its own seed.
struct Shard<V> {
    entries: HashTable<(FlowKey, V)>,
    hasher: foldhash::fast::RandomState,
}

impl<V> Shard<V> {
    fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }
}

pub struct ShardedByFlow<V> {
    shards: [Shard<V>; SHARDS],
    /// Seeded at random like each shard's own hash, so containers cannot
    /// choose keys that crowd one shard.
    pick: foldhash::fast::RandomState,
}

impl<V> Default for ShardedByFlow<V> {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Shard {
                entries: HashTable::new(),
                hasher: foldhash::fast::RandomState::default(),
            }),
            pick: foldhash::fast::RandomState::default(),
        }
    }
}

impl<V> ShardedByFlow<V> {
    /// Room for `flows` without growing, however they fall in shards.
    #[cfg(test)]
    pub fn with_capacity(flows: usize) -> Self {
        let mut map = Self::default();
        for shard in &mut map.shards {
            shard.entries = HashTable::with_capacity(flows);
        }
        map
    }

    fn shard(&self, key: &FlowKey) -> usize {
        // foldhash's top bits alone, for some seeds, put a quarter more
        // keys than the mean in one shard (one run of the test below in
        // 300): folded and multiplied, every bit of the hash picks it.
        let hash = self.pick.hash_one(key);
        let mixed = (hash ^ (hash >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> (u64::BITS - SHARD_BITS)) as usize
    }

    /// 32 bits of a hash of the key.
    pub fn fingerprint(&self, key: &FlowKey) -> u32 {
        self.pick.hash_one(key) as u32
    }

    pub fn get(&self, key: &FlowKey) -> Option<&V> {
        let shard = &self.shards[self.shard(key)];
        let (_, value) = shard.entries.find(shard.hash(key), |(k, _)| k == key)?;
        Some(value)
    }

    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut V> {
        let shard = &mut self.shards[self.shard(key)];
        let hash = shard.hash(key);
        let (_, value) = shard.entries.find_mut(hash, |(k, _)| k == key)?;
        Some(value)
    }

    /// The entry at `slot` if it is `key`'s: a slot kept from earlier may
    /// hold another flow since, or none.
    pub fn at_mut(&mut self, slot: Slot, key: &FlowKey) -> Option<&mut V> {
        let shard = self.shards.get_mut(slot.shard())?;
        let (found, value) = shard.entries.get_bucket_mut(slot.bucket())?;
        (found == key).then_some(value)
    }

    /// Asks the CPU to bring the entry at `slot` into its caches, to be
    /// read soon: a read of entries scattered over the table is otherwise
    /// one cache miss after another. Finding the bucket reads its control
    /// byte, a small array mostly in the caches.
    pub fn prefetch(&self, slot: Slot) {
        if let Some(entry) = self
            .shards
            .get(slot.shard())
            .and_then(|shard| shard.entries.get_bucket(slot.bucket()))
        {
            prefetch(entry);
        }
    }

    /// `key`'s entry and its slot, inserted from `make` when absent (then
    /// `true`).
    pub fn get_or_insert_with(
        &mut self,
        key: FlowKey,
        make: impl FnOnce() -> V,
    ) -> (Slot, &mut V, bool) {
        let index = self.shard(&key);
        let shard = &mut self.shards[index];
        let hasher = &shard.hasher;
        let hash = hasher.hash_one(key);
        // Found without `entry`, which makes room for an insert first: a
        // full shard would grow (or rehash) on a mere lookup, moving the
        // entries whose slots the read has already taken.
        let (entry, inserted) = match shard.entries.find_entry(hash, |(k, _)| *k == key) {
            Ok(entry) => (entry, false),
            Err(absent) => {
                let entry = absent
                    .into_table()
                    .insert_unique(hash, (key, make()), |(k, _)| hasher.hash_one(k));
                (entry, true)
            }
        };
        let slot = Slot::new(index, entry.bucket_index());
        (slot, &mut entry.into_mut().1, inserted)
    }

    /// Removes `key`'s entry: its slot and value.
    pub fn remove(&mut self, key: &FlowKey) -> Option<(Slot, V)> {
        let index = self.shard(key);
        let shard = &mut self.shards[index];
        let entry = shard
            .entries
            .find_entry(shard.hash(key), |(k, _)| k == key)
            .ok()?;
        let slot = Slot::new(index, entry.bucket_index());
        let ((_, value), _) = entry.remove();
        Some((slot, value))
    }

    /// Removes the entries `select` picks: each with its key and slot.
    pub fn extract(&mut self, mut select: impl FnMut(&V) -> bool) -> Vec<(FlowKey, Slot, V)> {
        let mut extracted = Vec::new();
        for (index, shard) in self.shards.iter_mut().enumerate() {
            let buckets: Vec<usize> = shard
                .entries
                .iter_buckets()
                .filter(|bucket| {
                    shard
                        .entries
                        .get_bucket(*bucket)
                        .is_some_and(|(_, value)| select(value))
                })
                .collect();
            for bucket in buckets {
                // Removing an entry moves no other, so each bucket still
                // holds what was picked; checked again all the same.
                if let Ok(entry) = shard.entries.get_bucket_entry(bucket) {
                    if select(&entry.get().1) {
                        let ((key, value), _) = entry.remove();
                        extracted.push((key, Slot::new(index, bucket), value));
                    }
                }
            }
        }
        extracted
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| shard.entries.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &V)> + '_ {
        self.shards
            .iter()
            .flat_map(|shard| shard.entries.iter().map(|(key, value)| (key, value)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&FlowKey, &mut V)> + '_ {
        self.shards
            .iter_mut()
            .flat_map(|shard| shard.entries.iter_mut().map(|(key, value)| (&*key, value)))
    }
}

/// The cache lines of `value`; a hint, a no-op where there is none.
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const LINE: usize = 64;
        let start = std::ptr::from_ref(value).cast::<i8>();
        // From the start of the line `value` begins in, to its last byte.
        let into_line = start as usize % LINE;
        let start = start.wrapping_sub(into_line);
        for offset in (0..into_line + size_of::<T>()).step_by(LINE) {
            // SAFETY: SSE, which the instruction needs, is in every x86_64
            // CPU; a prefetch reads nothing and faults on no address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey::ipv4([10, 0, 0, 1], port, [10, 0, 0, 2], 80, 6)
    }

    #[test]
    fn behaves_as_one_map_across_its_shards() {
        let mut map = ShardedByFlow::default();
        for port in 0..1000 {
            *map.get_or_insert_with(key(port), || 0).1 += u32::from(port);
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map.get(&key(7)), Some(&7));
        *map.get_mut(&key(7)).unwrap() += 1;
        assert_eq!(map.remove(&key(7)).map(|(_, value)| value), Some(8));
        assert_eq!(map.get(&key(7)), None);
        let odd = map.extract(|value| value % 2 == 1);
        assert_eq!(odd.len(), 499);
        assert!(odd
            .iter()
            .all(|(key, _, value)| u32::from(key.src_port) == *value));
        assert_eq!(map.len(), 500);
        assert!(map.iter().all(|(_, value)| value % 2 == 0));
        map.iter_mut().for_each(|(_, value)| *value = 1);
        assert_eq!(map.iter().map(|(_, value)| value).sum::<u32>(), 500);
        assert!(!map.is_empty());
    }

    #[test]
    fn a_slot_reaches_its_entry_until_removed() {
        let mut map = ShardedByFlow::with_capacity(100);
        let slots: Vec<Slot> = (0..100)
            .map(|port| map.get_or_insert_with(key(port), || port).0)
            .collect();
        for (port, slot) in (0..100).zip(&slots) {
            assert_eq!(map.get_or_insert_with(key(port), || 0).0, *slot);
            assert_eq!(map.at_mut(*slot, &key(port)).copied(), Some(port));
            assert_eq!(map.at_mut(*slot, &key(port + 1)), None);
        }
        assert_eq!(map.remove(&key(3)).map(|(slot, _)| slot), Some(slots[3]));
        assert_eq!(map.at_mut(slots[3], &key(3)), None);
        assert_eq!(map.at_mut(Slot::NONE, &key(4)), None);
        // Removal moves no other entry.
        for port in 4..100 {
            assert!(map.at_mut(slots[port as usize], &key(port)).is_some());
        }
    }

    #[test]
    fn finding_an_entry_in_a_full_shard_moves_none() {
        let mut map = ShardedByFlow::default();
        let mut slots = Vec::new();
        for port in 0.. {
            let (slot, _, _) = map.get_or_insert_with(key(port), || ());
            slots.push(slot);
            let shard = &map.shards[slot.shard()].entries;
            if shard.len() == shard.capacity() {
                break;
            }
        }
        // The shard has no room left: a lookup must not make some.
        for (port, slot) in (0..).zip(&slots) {
            assert_eq!(map.get_or_insert_with(key(port), || ()).0, *slot);
        }
        for (port, slot) in (0..).zip(&slots) {
            assert!(map.at_mut(*slot, &key(port)).is_some());
        }
    }

    #[test]
    fn fills_its_shards_evenly() {
        let mut map = ShardedByFlow::default();
        for port in 0..16_000 {
            map.get_or_insert_with(key(port), || ());
        }
        // 1000 a shard on average; a shard twice as full as another would
        // grow alone and hold an eighth of the map twice.
        for shard in &map.shards {
            let len = shard.entries.len();
            assert!((800..1200).contains(&len), "{len}");
        }
    }
}
