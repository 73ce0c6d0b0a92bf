//! The limiter's bounded map by host of server-pushback pauses: an instant per host at which
//! its pause ends.
//!
//! What an entry holds is one instant, at which it *ends*, in nanoseconds from the limiter's
//! origin. An entry whose end has passed holds nothing, and a sweep drops it.
//!
//! The map is split in up to 64 shards, each a `RwLock` around a hash table, with one count of
//! entries for all of them, as the circuit breaker's host map is (a shard per 64 hosts of the
//! cap, one under 128): below `max_hosts` nothing is ever evicted, however unevenly the hosts
//! hash over the shards. A lookup takes its shard's lock for reading only; the write lock is
//! taken to insert a new host, to evict and to sweep. A key is hashed once per lookup (SipHash
//! with a random key, as std's `HashMap`, since remote parties choose the hosts): the shard is
//! chosen by bits of the hash that the table does not use, and the table (hashbrown's
//! `HashTable`, the table under std's `HashMap`) is given the hash rather than asked to
//! compute it again; each entry keeps its hash for when the table grows.
//!
//! At `max_hosts`, a new entry takes the place of the one in its shard that ends first (64
//! entries or more on average, so one of the first to end in the whole map). Entries that have
//! ended end before any other, so they go first; among the rest, the pause that would have
//! ended soonest, whose host is called again the least time early. A new pause that would end
//! before every pause of its shard is not stored (it is the first to end, so it is the one to
//! lose). A new host whose shard is empty while the map is full (every one of `max_hosts`
//! hosts hashed to the other shards) is not stored either, until a sweep makes room.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

const MAX_SHARDS: usize = 64;
/// The entries of the cap per shard.
const PER_SHARD: usize = 64;

/// One host's entry.
struct Entry {
    hash: u64,
    key: Box<[u8]>,
    end: AtomicU64,
}

impl Entry {
    fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }
}

type Map = HashTable<Entry>;

fn find<'m>(map: &'m Map, hash: u64, key: &[u8]) -> Option<&'m Entry> {
    map.find(hash, |e| e.hash == hash && *e.key == *key)
}

/// A bounded map from host to the instant its entry ends.
pub(crate) struct Ends {
    shards: Box<[RwLock<Map>]>,
    hasher: RandomState,
    max: usize,
    /// Entries in all shards; changed under the lock of the shard that changes.
    count: AtomicUsize,
}

impl Ends {
    /// A map of at most `max` entries (at least 1).
    pub(crate) fn new(max: usize) -> Ends {
        let max = max.max(1);
        let n = (max / PER_SHARD).clamp(1, MAX_SHARDS);
        Ends {
            shards: (0..n).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: RandomState::new(),
            max,
            count: AtomicUsize::new(0),
        }
    }

    /// The hash of `key`, and its shard.
    fn locate(&self, key: &[u8]) -> (u64, &RwLock<Map>) {
        let hash = self.hasher.hash_one(key);
        // The table takes its bucket from the low bits of the hash and a tag from the top 7:
        // the shard comes from bits in between, so that the hosts of one shard still spread
        // over its table. The shard count is at most 64: the remainder fits in a `usize`.
        let bits = (hash >> 32) & 0x01ff_ffff;
        (
            hash,
            &self.shards[(bits % self.shards.len() as u64) as usize],
        )
    }

    /// The end of `key`'s entry, if it has one.
    pub(crate) fn get(&self, key: &[u8]) -> Option<u64> {
        let (hash, shard) = self.locate(key);
        find(&read(shard), hash, key).map(Entry::end)
    }

    /// Sets `key`'s end to `end` unless it has a later one; whether it was set (a new entry
    /// that found no room is not).
    pub(crate) fn raise(&self, key: &[u8], end: u64) -> bool {
        let (hash, shard) = self.locate(key);
        let mut map = write(shard);
        if let Some(e) = find(&map, hash, key) {
            return e.end.fetch_max(end, Ordering::AcqRel) < end;
        }
        self.insert(&mut map, hash, key, end)
    }

    /// Stores a new entry in `map` (the shard of `key`, write-locked, where `key` is not),
    /// making room at the cap as the [module docs](self) say; whether it was stored.
    fn insert(&self, map: &mut Map, hash: u64, key: &[u8], end: u64) -> bool {
        let room = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < self.max).then_some(c + 1)
            })
            .is_ok();
        if !room {
            // Walks the shard, as the breaker's map does at its cap.
            let first = map
                .iter()
                .min_by_key(|e| e.end())
                .map(|e| (std::ptr::from_ref(e), e.hash, e.end()));
            match first {
                Some((_, _, first_end)) if end <= first_end => {
                    return false;
                }
                // One goes, one comes: the count stays at the cap.
                Some((first, first_hash, _)) => {
                    if let Ok(e) = map.find_entry(first_hash, |e| std::ptr::eq(e, first)) {
                        e.remove();
                    }
                }
                None => return false,
            }
        }
        map.insert_unique(
            hash,
            Entry {
                hash,
                key: key.into(),
                end: AtomicU64::new(end),
            },
            |e| e.hash,
        );
        true
    }

    /// Drops the entries that end at or before `now`; returns how many were held and how many
    /// are kept.
    pub(crate) fn sweep(&self, now: u64) -> (usize, usize) {
        let (mut before, mut kept) = (0, 0);
        if self.len() == 0 {
            // Nothing to walk (an entry stored meanwhile is for the next sweep).
            return (before, kept);
        }
        for shard in self.shards.iter() {
            let mut map = write(shard);
            let n = map.len();
            map.retain(|e| e.end() > now);
            let left = map.len();
            if left < n / 2 {
                map.shrink_to_fit(|e| e.hash);
            }
            self.count.fetch_sub(n - left, Ordering::Relaxed);
            before += n;
            kept += left;
        }
        (before, kept)
    }

    /// The entries held.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

// A poisoned lock only means a panic elsewhere while it was held; the map of atomics is still
// sound.
fn read(l: &RwLock<Map>) -> RwLockReadGuard<'_, Map> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(l: &RwLock<Map>) -> RwLockWriteGuard<'_, Map> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_evicted_below_the_cap() {
        // Many shards (10,000 / 64 = 156, held to 64), filled to the cap exactly.
        let ends = Ends::new(10_000);
        for i in 0..10_000u64 {
            assert!(ends.raise(format!("h{i}:80").as_bytes(), 1 + i));
        }
        assert_eq!(ends.len(), 10_000);
        for i in 0..10_000u64 {
            assert_eq!(ends.get(format!("h{i}:80").as_bytes()), Some(1 + i), "h{i}");
        }
    }

    #[test]
    fn at_the_cap_pauses_that_end_last_are_kept() {
        let ends = Ends::new(2);
        assert!(ends.raise(b"a", 50));
        assert!(ends.raise(b"b", 10));
        // Ends before both: not stored.
        assert!(!ends.raise(b"c", 10));
        assert_eq!(ends.get(b"c"), None);
        // Ends after b: takes its place.
        assert!(ends.raise(b"d", 20));
        assert_eq!(ends.get(b"b"), None);
        // A known key is raised, never lowered.
        assert!(!ends.raise(b"a", 40));
        assert!(ends.raise(b"a", 60));
        assert_eq!(ends.get(b"a"), Some(60));
        assert_eq!(ends.len(), 2);
    }

    /// The entries in the shards, checked against the count that enforces the cap.
    fn held(ends: &Ends) -> usize {
        let n = ends.shards.iter().map(|s| read(s).len()).sum();
        assert_eq!(n, ends.len());
        n
    }

    #[test]
    fn the_cap_holds_under_concurrent_inserts() {
        {
            let ends = std::sync::Arc::new(Ends::new(1_000));
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let ends = ends.clone();
                    std::thread::spawn(move || {
                        for i in 0..20_000u64 {
                            ends.raise(format!("t{t}-h{i}").as_bytes(), 1 + i);
                            assert!(ends.len() <= 1_000);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(held(&ends), 1_000);
        }
    }

    #[test]
    fn a_sweep_drops_what_ended() {
        let ends = Ends::new(100);
        for i in 0..100u64 {
            ends.raise(format!("h{i}").as_bytes(), i);
        }
        assert_eq!(ends.sweep(49), (100, 50));
        assert_eq!(held(&ends), 50);
        assert_eq!(ends.get(b"h49"), None);
        assert_eq!(ends.get(b"h50"), Some(50));
        // Room again below the cap: nothing is evicted.
        for i in 100..150u64 {
            ends.raise(format!("h{i}").as_bytes(), i);
        }
        assert_eq!(held(&ends), 100);
        assert_eq!(ends.get(b"h50"), Some(50));
    }
}
