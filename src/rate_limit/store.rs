//! The limiter's bounded maps by host: the per-host token buckets (as a governor state store)
//! and the server-pushback pauses, both an instant per host at which its entry ends.
//!
//! Why not governor's keyed store (a `DashMap`): it has no bound, so a host stays until a
//! sweep finds its bucket full again, which `per_minute(1).burst(1_000_000)` can put years
//! away; and it is looked up with the key type it stores, so an owned `String` built on every
//! call. This map is bounded by `max_hosts`, is looked up with a key built on the stack, and
//! allocates only to store a new host. governor's GCRA is kept: [`Buckets`] is a
//! [`StateStore`] that governor's `RateLimiter` reads and updates, the way its own stores do
//! (a compare-and-swap on the host's theoretical arrival time).
//!
//! What an entry holds is one instant, at which it *ends*, in nanoseconds from the limiter's
//! origin: for a bucket, when it is full again (its theoretical arrival time: from then on it
//! is exactly a new host's bucket); for a pause, when the pause is over. An entry whose end
//! has passed holds nothing, and a sweep drops it.
//!
//! The map is split in up to 64 shards, each a `RwLock` around a hash table, with one count of
//! entries for all of them, as the circuit breaker's host map is (a shard per 64 hosts of the
//! cap, one under 128): below `max_hosts` nothing is ever evicted, however unevenly the hosts
//! hash over the shards. A call to a known host takes its shard's lock for reading only; the
//! write lock is taken to insert a new host, to evict and to sweep. A key is hashed once per
//! call (SipHash with a random key, as std's `HashMap`, since remote parties choose the
//! hosts): the shard is chosen by bits of the hash that the table does not use, and the table
//! (hashbrown's `HashTable`, the table under std's `HashMap`) is given the hash rather than
//! asked to compute it again; each entry keeps its hash for when the table grows.
//!
//! At `max_hosts`, a new entry takes the place of the one that ends first among up to 64
//! entries of its shard (the shard holds 64 entries or more on average, so it is one of the
//! first to end in the whole map; looking at no more than 64 keeps the cost of an insert at the
//! cap bounded, whatever the cap). Entries that have
//! ended end before any other, so they go first; among the rest, the one that ends first is
//! the one whose loss matters least: the bucket nearest to full, whose host, taken for new,
//! gets the fewest calls beyond its rate (a bucket that ends `d` from now holds `d / interval`
//! tokens fewer than a new one), and the pause that would have ended soonest, whose host is
//! called again the least time early. A new pause that would end before every pause of its
//! shard is not stored (it is the first to end, so it is the one to lose). A new host's bucket
//! always is: a host not stored would be taken for new on each call, so not limited at all. A
//! new host whose shard is empty while the map is full (every one of `max_hosts` hosts hashed
//! to the other shards) is not stored either, until a sweep makes room.

use std::hash::BuildHasher;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use hashbrown::HashTable;

use super::key::HostKey;

const MAX_SHARDS: usize = 64;
/// The entries of the cap per shard.
const PER_SHARD: usize = 64;
/// How many entries of its shard a new entry at the cap looks at to find one to take the place
/// of: a bounded cost per insert, whatever the cap.
pub(crate) const SAMPLE: usize = 64;

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

/// What to do at the cap with a new entry that would end before every entry of its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtCap {
    /// Store it anyway, in place of the one that ends first (buckets).
    StoreNew,
    /// Keep the entries that end last, the new one among them (pauses).
    KeepLatest,
}

/// A bounded map from host to the instant its entry ends.
pub(crate) struct Ends {
    shards: Box<[RwLock<Map>]>,
    /// foldhash, seeded at random: hosts are chosen by remote parties.
    hasher: foldhash::quality::RandomState,
    max: usize,
    at_cap: AtCap,
    /// Entries in all shards; changed under the lock of the shard that changes.
    count: AtomicUsize,
}

impl Ends {
    /// A map of at most `max` entries (at least 1).
    pub(crate) fn new(max: usize, at_cap: AtCap) -> Ends {
        let max = max.max(1);
        let n = (max / PER_SHARD).clamp(1, MAX_SHARDS);
        Ends {
            shards: (0..n).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: foldhash::quality::RandomState::default(),
            max,
            at_cap,
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
            // Among the first `SAMPLE` entries of the shard only: a walk of the whole shard
            // (15,625 entries at `max_hosts(1_000_000)`) under its write lock, for every new
            // host at the cap, would let a stream of new hosts slow every call to the shard.
            let first = map
                .iter()
                .take(SAMPLE)
                .min_by_key(|e| e.end())
                .map(|e| (std::ptr::from_ref(e), e.hash, e.end()));
            match first {
                Some((_, _, first_end)) if self.at_cap == AtCap::KeepLatest && end <= first_end => {
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

    /// Calls `f` with the key and the end of every entry that ends after `now` (the others
    /// hold nothing), one shard at a time: under the shard's read lock they are only copied
    /// out, into two buffers reused from shard to shard, and `f` runs once the lock is
    /// released. Changes nothing: an entry that has ended is left for a sweep.
    pub(crate) fn for_each_live(&self, now: u64, mut f: impl FnMut(&[u8], u64)) {
        if self.len() == 0 {
            return;
        }
        let mut keys: Vec<u8> = Vec::new();
        // Where each key ends in `keys`, and the entry's end.
        let mut ends: Vec<(usize, u64)> = Vec::new();
        for shard in self.shards.iter() {
            keys.clear();
            ends.clear();
            for e in read(shard).iter() {
                let end = e.end();
                if end > now {
                    keys.extend_from_slice(&e.key);
                    ends.push((keys.len(), end));
                }
            }
            let mut start = 0;
            for &(stop, end) in &ends {
                f(&keys[start..stop], end);
                start = stop;
            }
        }
    }

    /// The entries held.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// The per-host token buckets, as the state store of governor's keyed `RateLimiter`: an
/// entry's end is its theoretical arrival time, which governor measures and replaces.
pub(crate) struct Buckets(pub(crate) Arc<Ends>);

impl StateStore for Buckets {
    type Key = HostKey;

    fn measure_and_replace<T, F, E>(&self, key: &HostKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let ends = &self.0;
        let key = key.as_bytes();
        let (hash, shard) = ends.locate(key);
        // The common case: a known host, under the read lock.
        if let Some(e) = find(&read(shard), hash, key) {
            return measure_and_replace(&e.end, f);
        }
        let mut map = write(shard);
        if let Some(e) = find(&map, hash, key) {
            return measure_and_replace(&e.end, f);
        }
        // A new host: governor decides on a new bucket; store what it leaves (a new bucket
        // always has a token, so this is a call that takes one).
        let (out, tat) = f(None)?;
        ends.insert(&mut map, hash, key, tat.as_u64());
        Ok(out)
    }
}

/// The one bucket of a global limiter, as governor's direct state store: its theoretical
/// arrival time, which governor measures and replaces as its own `InMemoryState` does, in an
/// atomic the limiter can read too (governor's store has no getter).
pub(crate) struct Cell(pub(crate) Arc<AtomicU64>);

impl StateStore for Cell {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        measure_and_replace(&self.0, f)
    }
}

/// governor's own update of a state (`InMemoryState::measure_and_replace_one`): decide on the
/// current value, and write the new one only if nobody changed it meanwhile. Zero is no state.
fn measure_and_replace<T, F, E>(tat: &AtomicU64, f: F) -> Result<T, E>
where
    F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
{
    let state = |n: u64| NonZeroU64::new(n).map(|n| Nanos::from(n.get()));
    let mut prev = tat.load(Ordering::Acquire);
    loop {
        let (out, next) = f(state(prev))?;
        match tat.compare_exchange_weak(prev, next.as_u64(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(out),
            Err(now) => prev = now,
        }
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
        let ends = Ends::new(10_000, AtCap::StoreNew);
        for i in 0..10_000u64 {
            assert!(ends.raise(format!("h{i}:80").as_bytes(), 1 + i));
        }
        assert_eq!(ends.len(), 10_000);
        for i in 0..10_000u64 {
            assert_eq!(ends.get(format!("h{i}:80").as_bytes()), Some(1 + i), "h{i}");
        }
    }

    #[test]
    fn at_the_cap_the_first_to_end_goes() {
        let ends = Ends::new(3, AtCap::StoreNew);
        ends.raise(b"a", 50);
        ends.raise(b"b", 10);
        ends.raise(b"c", 30);
        // A new bucket always goes in, even one that ends before every other.
        assert!(ends.raise(b"d", 5));
        assert_eq!(ends.get(b"b"), None);
        assert!(ends.raise(b"e", 40));
        assert_eq!(ends.get(b"d"), None);
        assert_eq!(ends.len(), 3);
        assert_eq!(
            ["a", "c", "e"].map(|k| ends.get(k.as_bytes())),
            [Some(50), Some(30), Some(40)]
        );
    }

    #[test]
    fn at_the_cap_pauses_that_end_last_are_kept() {
        let ends = Ends::new(2, AtCap::KeepLatest);
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
        for at_cap in [AtCap::StoreNew, AtCap::KeepLatest] {
            let ends = Arc::new(Ends::new(1_000, at_cap));
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
        let ends = Ends::new(100, AtCap::StoreNew);
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
