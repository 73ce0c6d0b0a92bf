//! The breakers of a layer: one shared by all hosts, or one per host in a bounded map.
//!
//! Why not moka: its expiry runs on its own clock (`std::time::Instant`), which tokio's paused
//! time does not move, so idle eviction could not be tested exactly; and a breaker must not be
//! evicted while isolated, which moka's policies cannot express. Why not a single
//! `Mutex<HashMap>`: every call would take it.
//!
//! The map is split in up to 64 shards, each a `RwLock<HashMap<Arc<str>, Arc<Breaker>>>`, with
//! one count of hosts for all of them: below `max_hosts` no host is ever evicted, however
//! unevenly the hosts hash over the shards (a busy host's breaker, an open one above all, must
//! not be lost to a neighbour). There is a shard per 64 hosts of the cap (one under 128), up
//! to 64. A call to a known host takes its shard's lock for reading
//! only, long enough to clone the breaker's `Arc`; the write lock is taken to insert a new host
//! or to evict, which is rare. (This is what `dashmap` does; palisade does not depend on it
//! directly, and the shard count and the eviction are easier to bound here.)
//!
//! Eviction, so that 100,000 hosts do not grow memory without bound:
//! - a host idle (no call looked it up) for longer than the idle time (the window plus the
//!   longest break) is removed by a sweep that the first call after every half idle time runs
//!   over all shards; by then its window is empty and its break over, so nothing is lost but
//!   the growth of its break;
//! - at `max_hosts`, a new host looks at up to 64 hosts of its shard and drops the idle ones
//!   among them, or else the least recently used of them, to make room (the shards hold 64
//!   hosts or more on average, so the host evicted is among the least recently used of the
//!   map, and the cost of making room stays bounded whatever the cap; a new host whose shard
//!   has none to give is not stored until a sweep or a later call makes room);
//! - an isolated host is never evicted (and is stored even beyond the cap: isolation is an
//!   explicit act, bounded by the caller). A call to a new host that finds no room gets a
//!   breaker that is not stored.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use super::breaker::{nanos, Breaker, Policy, Transition};

const MAX_SHARDS: usize = 64;
/// The hosts of the cap per shard.
const HOSTS_PER_SHARD: usize = 64;
/// How many hosts of its shard a new host at the cap looks at to make room: a bounded cost per
/// insert, whatever the cap.
const SAMPLE: usize = 64;

/// foldhash, seeded at random per map: hosts are chosen by remote parties, so the hash must
/// not be predictable, but SipHash (std's) cost a fifth of the breaker's time per call.
type Hasher = foldhash::quality::RandomState;

type Map = HashMap<Arc<str>, Arc<Breaker>, Hasher>;

struct Shard {
    map: RwLock<Map>,
}

/// One breaker per host, bounded and evicted when idle.
pub(crate) struct HostMap {
    policy: Arc<Policy>,
    shards: Box<[Shard]>,
    hasher: Hasher,
    max_hosts: usize,
    /// Hosts stored in all shards; changed under the lock of the shard that changes.
    count: AtomicUsize,
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
        let n = (max_hosts / HOSTS_PER_SHARD).clamp(1, MAX_SHARDS);
        let shards = (0..n)
            .map(|_| Shard {
                map: RwLock::new(HashMap::with_hasher(Hasher::default())),
            })
            .collect();
        let idle = nanos(idle).max(1);
        HostMap {
            policy,
            shards,
            hasher: Hasher::default(),
            max_hosts,
            count: AtomicUsize::new(0),
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
        if self.reserve() || (self.make_room(&mut map, t) && self.reserve()) {
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
        if !map.contains_key(key) && !self.reserve() {
            // Stored beyond the cap if no room is made.
            self.make_room(&mut map, nanos(now));
            self.count.fetch_add(1, Ordering::Relaxed);
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

    /// Calls `f` with every breaker held, one shard at a time: under the shard's read lock
    /// only their `Arc`s are copied out (into one buffer, reused from shard to shard), and
    /// `f` runs once the lock is released, so a slow `f` holds up no call. Changes nothing:
    /// no sweep, no eviction, no touch of the last-use marks.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Breaker)) {
        let mut held: Vec<Arc<Breaker>> = Vec::new();
        for shard in self.shards.iter() {
            {
                let map = shard.map.read().unwrap_or_else(PoisonError::into_inner);
                held.extend(map.values().cloned());
            }
            for b in held.drain(..) {
                f(&b);
            }
        }
    }

    /// The number of hosts held.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Counts one more host if the map is below its cap.
    fn reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < self.max_hosts).then_some(c + 1)
            })
            .is_ok()
    }

    /// Removes the hosts of `map` for which `drop` is true, and uncounts them.
    fn remove_where(&self, map: &mut Map, mut drop: impl FnMut(&Breaker) -> bool) -> usize {
        let before = map.len();
        map.retain(|_, b| !drop(b));
        let removed = before - map.len();
        self.count.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    fn is_idle(&self, b: &Breaker, t: u64) -> bool {
        !b.is_isolated() && t.saturating_sub(b.last_used()) > self.idle
    }

    /// Drops the idle hosts among up to [`SAMPLE`] hosts of the shard, or else the least
    /// recently used of them; whether any went.
    ///
    /// Only a sample: a walk of the whole shard (15,625 hosts at `max_hosts(1_000_000)`)
    /// under its write lock, for every new host at the cap, would let a stream of new hosts
    /// slow every call to the shard. The sweep still walks everything, once per half idle time.
    fn make_room(&self, map: &mut Map, t: u64) -> bool {
        let mut idle: Vec<Arc<str>> = Vec::new();
        let mut lru: Option<(&Arc<str>, u64)> = None;
        for (k, b) in map.iter().filter(|(_, b)| !b.is_isolated()).take(SAMPLE) {
            if self.is_idle(b, t) {
                idle.push(k.clone());
            } else if lru.is_none_or(|(_, used)| b.last_used() < used) {
                lru = Some((k, b.last_used()));
            }
        }
        if idle.is_empty() {
            idle.extend(lru.map(|(k, _)| k.clone()));
        }
        for k in &idle {
            map.remove(k);
        }
        self.count.fetch_sub(idle.len(), Ordering::Relaxed);
        !idle.is_empty()
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
            self.remove_where(&mut write(shard), |b| self.is_idle(b, t));
        }
    }
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, Map> {
    // The map holds `Arc`s only: a panic elsewhere cannot leave it torn.
    shard.map.write().unwrap_or_else(PoisonError::into_inner)
}
