//! A map keyed by flow for the flow table, which holds every flow, split
//! in shards that grow one at a time.
//!
//! A hash map grows by moving into one twice its size, both live until
//! the move ends: at 100k flows the flow table's last growth alone put
//! about 7 MB on the agent's peak RSS, above what it holds once grown.
//! Shards chosen by the key's hash fill evenly and each grows on its own,
//! so a growth holds one shard twice, a sixteenth of the map.

use std::{collections::hash_map::Entry, hash::BuildHasher as _};

use monitor_common::FlowKey;

use super::ByFlow;

const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;

pub struct ShardedByFlow<V> {
    shards: [ByFlow<V>; SHARDS],
    /// Seeded at random like each shard's own hash, so containers cannot
    /// choose keys that crowd one shard.
    pick: foldhash::fast::RandomState,
}

impl<V> Default for ShardedByFlow<V> {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| ByFlow::default()),
            pick: foldhash::fast::RandomState::default(),
        }
    }
}

impl<V> ShardedByFlow<V> {
    fn shard(&self, key: &FlowKey) -> usize {
        // The top bits: the multiply that ends foldhash mixes them best.
        (self.pick.hash_one(key) >> (u64::BITS - SHARD_BITS)) as usize
    }

    pub fn get(&self, key: &FlowKey) -> Option<&V> {
        self.shards[self.shard(key)].get(key)
    }

    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut V> {
        let shard = self.shard(key);
        self.shards[shard].get_mut(key)
    }

    pub fn entry(&mut self, key: FlowKey) -> Entry<'_, FlowKey, V> {
        let shard = self.shard(&key);
        self.shards[shard].entry(key)
    }

    pub fn remove(&mut self, key: &FlowKey) -> Option<V> {
        let shard = self.shard(key);
        self.shards[shard].remove(key)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&FlowKey, &mut V) -> bool) {
        for shard in &mut self.shards {
            shard.retain(&mut keep);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(ByFlow::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(ByFlow::is_empty)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &V)> + '_ {
        self.shards.iter().flat_map(ByFlow::iter)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.shards.iter_mut().flat_map(ByFlow::values_mut)
    }
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
            *map.entry(key(port)).or_insert(0) += u32::from(port);
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map.get(&key(7)), Some(&7));
        *map.get_mut(&key(7)).unwrap() += 1;
        assert_eq!(map.remove(&key(7)), Some(8));
        assert_eq!(map.get(&key(7)), None);
        map.retain(|_, value| *value % 2 == 0);
        assert_eq!(map.len(), 500);
        assert_eq!(map.iter().count(), 500);
        map.values_mut().for_each(|value| *value = 1);
        assert_eq!(map.iter().map(|(_, value)| value).sum::<u32>(), 500);
        assert!(!map.is_empty());
    }

    #[test]
    fn fills_its_shards_evenly() {
        let mut map = ShardedByFlow::default();
        for port in 0..16_000 {
            map.entry(key(port)).or_insert(());
        }
        // 1000 a shard on average; a shard twice as full as another would
        // grow alone and hold an eighth of the map twice.
        for shard in &map.shards {
            assert!((800..1200).contains(&shard.len()), "{}", shard.len());
        }
    }
}
