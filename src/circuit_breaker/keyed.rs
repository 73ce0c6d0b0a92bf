//! The breakers of a layer: one shared by all hosts, or one per host in a bounded map.
//!
//! Why not moka: its expiry runs on its own clock (`std::time::Instant`), which tokio's paused
//! time does not move, so idle eviction could not be tested exactly; and a breaker must not be
//! evicted while isolated, which moka's policies cannot express. Why not a single
//! `Mutex<HashMap>`: every call would take it.
//!
//! The map is split in up to 64 shards, each a `RwLock<HashMap<Arc<str>, Arc<Breaker>>>` with
//! its own share of `max_hosts`. A call to a known host takes its shard's lock for reading
//! only, long enough to clone the breaker's `Arc`; the write lock is taken to insert a new host
//! or to evict, which is rare. (This is what `dashmap` does; palisade does not depend on it
//! directly, and the shard count and the eviction are easier to bound here.)
//!
//! Eviction, so that 100,000 hosts do not grow memory without bound:
//! - a host idle (no call looked it up) for longer than the idle time (the window plus the
//!   longest break) is removed by a sweep that the first call after every half idle time runs
//!   over all shards; by then its window is empty and its break over, so nothing is lost but
//!   the growth of its break;
//! - a shard at its share of `max_hosts` first drops its idle hosts, then its least recently
//!   used one, to make room for a new host;
//! - an isolated host is never evicted (and is stored even beyond the cap: isolation is an
//!   explicit act, bounded by the caller). When a shard is full of isolated hosts, a call to a
//!   new host gets a breaker that is not stored.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use super::breaker::{nanos, Breaker, Policy, Transition};

const MAX_SHARDS: usize = 64;

type Map = HashMap<Arc<str>, Arc<Breaker>>;

struct Shard {
    map: RwLock<Map>,
    cap: usize,
}

/// One breaker per host, bounded and evicted when idle.
pub(crate) struct HostMap {
    policy: Arc<Policy>,
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Idle time after which a host is evicted, in nanoseconds.
    idle: u64,
    /// How stale a breaker's last-use mark may be (a fraction of the idle time).
    touch_every: u64,
    /// When the next sweep for idle hosts is due, in nanoseconds since the epoch.
    next_sweep: AtomicU64,
}

impl fmt::Debug for HostMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostMap")
            .field("shards", &self.shards.len())
            .field("idle", &Duration::from_nanos(self.idle))
            .finish_non_exhaustive()
    }
}

impl HostMap {
    /// A map of at most `max_hosts` hosts (at least 1) that evicts hosts idle for `idle`.
    pub(crate) fn new(policy: Arc<Policy>, max_hosts: usize, idle: Duration) -> Self {
        let max_hosts = max_hosts.max(1);
        let n = max_hosts.min(MAX_SHARDS);
        let (base, rem) = (max_hosts / n, max_hosts % n);
        let shards = (0..n)
            .map(|i| Shard {
                map: RwLock::new(HashMap::new()),
                cap: base + usize::from(i < rem),
            })
            .collect();
        let idle = nanos(idle).max(1);
        HostMap {
            policy,
            shards,
            hasher: RandomState::new(),
            idle,
            touch_every: (idle / 32).max(1),
            next_sweep: AtomicU64::new(idle / 2),
        }
    }

    fn shard(&self, key: &str) -> &Shard {
        let h = self.hasher.hash_one(key);
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    /// The breaker of `key`, made if there is none.
    pub(crate) fn get(&self, key: &str, now: Duration) -> Arc<Breaker> {
        let t = nanos(now);
        self.maybe_sweep(t);
        let shard = self.shard(key);
        {
            let map = shard.map.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(b) = map.get(key) {
                b.touch(t, self.touch_every);
                return b.clone();
            }
        }
        let mut map = write(shard);
        if let Some(b) = map.get(key) {
            b.touch(t, self.touch_every);
            return b.clone();
        }
        let b = Arc::new(Breaker::new(self.policy.clone(), Arc::from(key), now));
        if map.len() >= shard.cap {
            self.make_room(&mut map, shard.cap, t);
        }
        if map.len() < shard.cap {
            map.insert(b.key_arc(), b.clone());
        }
        b
    }

    /// The breaker of `key`, if there is one.
    pub(crate) fn peek(&self, key: &str) -> Option<Arc<Breaker>> {
        let map = self
            .shard(key)
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(key).cloned()
    }

    /// Isolates `key`, storing its breaker even beyond the cap (it is never evicted).
    pub(crate) fn isolate(&self, key: &str, now: Duration) -> Option<Transition> {
        let shard = self.shard(key);
        let mut map = write(shard);
        if map.len() >= shard.cap && !map.contains_key(key) {
            self.make_room(&mut map, shard.cap, nanos(now));
        }
        let b = match map.entry(Arc::from(key)) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => {
                let b = Arc::new(Breaker::new(self.policy.clone(), e.key().clone(), now));
                e.insert(b).clone()
            }
        };
        // Under the shard's lock, so that a sweep cannot evict it between the two steps.
        b.isolate()
    }

    /// The number of hosts held.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.map.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn is_idle(&self, b: &Breaker, t: u64) -> bool {
        !b.is_isolated() && t.saturating_sub(b.last_used()) > self.idle
    }

    /// Drops idle hosts, then the least recently used one if the shard is still full.
    fn make_room(&self, map: &mut Map, cap: usize, t: u64) {
        map.retain(|_, b| !self.is_idle(b, t));
        if map.len() >= cap {
            let lru = map
                .iter()
                .filter(|(_, b)| !b.is_isolated())
                .min_by_key(|(_, b)| b.last_used())
                .map(|(k, _)| k.clone());
            if let Some(k) = lru {
                map.remove(&k);
            }
        }
    }

    /// Runs a sweep for idle hosts over every shard, at most once per half idle time.
    fn maybe_sweep(&self, t: u64) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if t < due {
            return;
        }
        let next = t.saturating_add((self.idle / 2).max(1));
        if self
            .next_sweep
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another call runs it
        }
        for shard in self.shards.iter() {
            write(shard).retain(|_, b| !self.is_idle(b, t));
        }
    }
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, Map> {
    // The map holds `Arc`s only: a panic elsewhere cannot leave it torn.
    shard.map.write().unwrap_or_else(PoisonError::into_inner)
}
