//! The bulkhead's shared state: one slot (a semaphore and a queue count) for the whole layer, or
//! one per host in a bounded map whose idle entries are removed.
//!
//! A per-host slot lives in the map while some caller holds a [`Lease`] on it (in flight or
//! queued) and is removed when the last lease drops, so the map holds only the hosts with
//! calls under way. Leases are taken under the map's shard lock, and a slot is removed under
//! it only when it has no lease, so a caller never holds a slot that is no longer in the map
//! and a host never has two slots (which would let through twice its limit).

use std::collections::hash_map::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shards of the per-host map, so that calls to different hosts seldom share a lock.
const SHARDS: usize = 32;

/// The calls in flight and waiting in a bulkhead, or in one host's part of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Load {
    /// Calls holding a permit: sent to the stage below and not yet answered.
    pub in_flight: usize,
    /// Calls waiting in the queue for a permit.
    pub queued: usize,
}

impl std::ops::AddAssign for Load {
    fn add_assign(&mut self, rhs: Load) {
        self.in_flight += rhs.in_flight;
        self.queued += rhs.queued;
    }
}

/// The permits and the queue of one key.
pub(crate) struct Slot {
    sem: Arc<Semaphore>,
    max_concurrent: usize,
    queued: AtomicUsize,
    /// Leases on this slot (per-host only): it is removed from the map when they drop to 0.
    leases: AtomicUsize,
}

impl Slot {
    fn new(max_concurrent: usize) -> Slot {
        Slot {
            sem: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            queued: AtomicUsize::new(0),
            leases: AtomicUsize::new(0),
        }
    }

    fn load(&self) -> Load {
        Load {
            in_flight: self
                .max_concurrent
                .saturating_sub(self.sem.available_permits()),
            queued: self.queued.load(Ordering::Acquire),
        }
    }
}

enum Slots {
    Global(Arc<Slot>),
    PerHost(HostMap),
}

/// One shard of the per-host map.
/// foldhash, seeded at random: hosts are chosen by remote parties.
type Hasher = foldhash::quality::RandomState;

type Shard = HashMap<Box<str>, Arc<Slot>, Hasher>;

struct HostMap {
    shards: Box<[Mutex<Shard>]>,
    hasher: Hasher,
    keys: AtomicUsize,
    max_keys: usize,
}

impl HostMap {
    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        // `SHARDS` is small, so the cast back cannot truncate.
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // Nothing panics under these locks; a poisoned one is still consistent.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The state every service of one layer shares.
pub(crate) struct State {
    max_concurrent: usize,
    max_queue: usize,
    slots: Slots,
}

impl State {
    pub(crate) fn new(
        max_concurrent: usize,
        max_queue: usize,
        per_host: bool,
        max_keys: usize,
    ) -> State {
        // `Semaphore::new` panics above `MAX_PERMITS`; `Bulkhead::validate` rejects such values,
        // and this keeps a configuration that skipped it from panicking.
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        let slots = if per_host {
            Slots::PerHost(HostMap {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: Hasher::default(),
                keys: AtomicUsize::new(0),
                max_keys,
            })
        } else {
            Slots::Global(Arc::new(Slot::new(max_concurrent)))
        };
        State {
            max_concurrent,
            max_queue,
            slots,
        }
    }

    /// A lease on the slot of `key` (ignored by a global bulkhead), or the key back when it is
    /// new and the map already holds `max_keys` keys with calls under way.
    pub(crate) fn lease(self: &Arc<Self>, key: String) -> Result<Lease, String> {
        let slot = match &self.slots {
            Slots::Global(slot) => slot.clone(),
            Slots::PerHost(map) => {
                let mut shard = map.shard(&key);
                if let Some(slot) = shard.get(key.as_str()) {
                    slot.leases.fetch_add(1, Ordering::AcqRel);
                    slot.clone()
                } else {
                    let room = map
                        .keys
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |k| {
                            (k < map.max_keys).then_some(k + 1)
                        });
                    if room.is_err() {
                        drop(shard);
                        return Err(key);
                    }
                    let slot = Arc::new(Slot::new(self.max_concurrent));
                    slot.leases.store(1, Ordering::Release);
                    shard.insert(key.clone().into_boxed_str(), slot.clone());
                    slot
                }
            }
        };
        Ok(Lease {
            state: self.clone(),
            slot,
            key,
        })
    }

    /// The load of the slot of `key`, or of the whole bulkhead when it is global.
    pub(crate) fn load_of(&self, key: &str) -> Load {
        match &self.slots {
            Slots::Global(slot) => slot.load(),
            Slots::PerHost(map) => map
                .shard(key)
                .get(key)
                .map(|s| s.load())
                .unwrap_or_default(),
        }
    }

    /// The load summed over every key.
    pub(crate) fn load(&self) -> Load {
        match &self.slots {
            Slots::Global(slot) => slot.load(),
            Slots::PerHost(map) => {
                let mut total = Load::default();
                for shard in map.shards.iter() {
                    let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                    for slot in shard.values() {
                        total += slot.load();
                    }
                }
                total
            }
        }
    }

    /// The load of the one slot of a global bulkhead; `None` per host.
    pub(crate) fn global_load(&self) -> Option<Load> {
        match &self.slots {
            Slots::Global(slot) => Some(slot.load()),
            Slots::PerHost(_) => None,
        }
    }

    /// Calls `f` with the key and the load of every host a per-host bulkhead holds (those with
    /// calls in flight or queued); nothing for a global one. Each shard's lock, which calls
    /// take too, is held only to copy its keys and loads into buffers made large enough
    /// beforehand (if the shard grew meanwhile, the buffers grow with the lock released, and
    /// the shard is read again), so nothing is allocated under it; `f` runs with no lock held.
    /// Changes nothing: no lease is taken or given back.
    pub(crate) fn for_each_host(&self, mut f: impl FnMut(&str, Load)) {
        let Slots::PerHost(map) = &self.slots else {
            return;
        };
        let mut keys = String::new();
        // Where each key ends in `keys`, and its load.
        let mut loads: Vec<(usize, Load)> = Vec::new();
        for shard in map.shards.iter() {
            loop {
                keys.clear();
                loads.clear();
                let (n, bytes) = {
                    let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                    let (n, bytes) = shard.keys().fold((0, 0), |(n, b), k| (n + 1, b + k.len()));
                    if n <= loads.capacity() && bytes <= keys.capacity() {
                        for (k, slot) in shard.iter() {
                            keys.push_str(k);
                            loads.push((keys.len(), slot.load()));
                        }
                        break;
                    }
                    (n, bytes)
                };
                // Room for some growth, so that a busy shard is seldom read a third time.
                loads.reserve(n.saturating_mul(2));
                keys.reserve(bytes.saturating_mul(2));
            }
            let mut start = 0;
            for &(stop, load) in &loads {
                f(&keys[start..stop], load);
                start = stop;
            }
        }
    }

    /// The keys the per-host map holds (1 for a global bulkhead).
    /// Counted in the map itself, not from the counter that enforces the cap, so that it
    /// shows what memory is held.
    pub(crate) fn keys(&self) -> usize {
        match &self.slots {
            Slots::Global(_) => 1,
            Slots::PerHost(map) => map
                .shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
                .sum(),
        }
    }

    pub(crate) fn is_per_host(&self) -> bool {
        matches!(self.slots, Slots::PerHost(_))
    }
}

/// A caller's hold on a slot, from the moment it arrives until it leaves the stage: while one
/// lives, the slot stays in the map.
pub(crate) struct Lease {
    state: Arc<State>,
    slot: Arc<Slot>,
    key: String,
}

impl Lease {
    /// The key: the host, or `""` for a global bulkhead.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// A permit at once, if one is free (and nobody waits for it: the semaphore is fair).
    pub(crate) fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.slot.sem.clone().try_acquire_owned().ok()
    }

    /// A place in the queue, if it is not full.
    pub(crate) fn enqueue(&self) -> Option<QueuePlace> {
        let max = self.state.max_queue;
        self.slot
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < max).then_some(q + 1)
            })
            .ok()?;
        Some(QueuePlace {
            slot: self.slot.clone(),
        })
    }

    /// The semaphore to wait on.
    pub(crate) fn semaphore(&self) -> Arc<Semaphore> {
        self.slot.sem.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Slots::PerHost(map) = &self.state.slots else {
            return;
        };
        if self.slot.leases.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last lease: remove the slot, unless a caller took a new lease on it meanwhile
        // (leases are taken under this lock), or it was removed and replaced already.
        let mut shard = map.shard(&self.key);
        if self.slot.leases.load(Ordering::Acquire) == 0
            && shard
                .get(self.key.as_str())
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            shard.remove(self.key.as_str());
            map.keys.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A place in a slot's queue; dropping it leaves the queue.
pub(crate) struct QueuePlace {
    slot: Arc<Slot>,
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.slot.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a call holds while it is in flight: the permit, then the lease (fields drop in order,
/// so the permit is back before the slot can be removed).
pub(crate) struct Permit {
    _permit: OwnedSemaphorePermit,
    _lease: Lease,
    /// `palisade.bulkhead.in_flight` of the lease's key, with metrics on: up by one while
    /// this permit is held.
    #[cfg(feature = "metrics")]
    in_flight: Option<metrics::Gauge>,
}

impl Permit {
    pub(crate) fn new(
        permit: OwnedSemaphorePermit,
        lease: Lease,
        hook: &crate::event::Hook,
    ) -> Permit {
        #[cfg(feature = "metrics")]
        let in_flight = hook.metrics().map(|m| {
            let g = m.bulkhead_in_flight(lease.key());
            g.increment(1.0);
            g
        });
        #[cfg(not(feature = "metrics"))]
        let _ = hook;
        Permit {
            _permit: permit,
            _lease: lease,
            #[cfg(feature = "metrics")]
            in_flight,
        }
    }
}

#[cfg(feature = "metrics")]
impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(g) = &self.in_flight {
            g.decrement(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        s.to_owned()
    }

    /// The map's size, checked against the counter that enforces the cap.
    fn keys(state: &State) -> usize {
        let Slots::PerHost(map) = &state.slots else {
            unreachable!()
        };
        assert_eq!(map.keys.load(Ordering::Acquire), state.keys());
        state.keys()
    }

    #[test]
    fn idle_keys_are_removed_and_busy_ones_kept() {
        let state = Arc::new(State::new(1, 0, true, 8));
        let a = state.lease(key("a:80")).unwrap();
        let a2 = state.lease(key("a:80")).unwrap();
        let b = state.lease(key("b:80")).unwrap();
        assert_eq!(keys(&state), 2);
        drop(a);
        assert_eq!(keys(&state), 2, "a still has a lease");
        drop(a2);
        assert_eq!(keys(&state), 1);
        drop(b);
        assert_eq!(keys(&state), 0);
    }

    #[test]
    fn the_key_cap_refuses_new_keys_only() {
        let state = Arc::new(State::new(1, 0, true, 2));
        let a = state.lease(key("a:80")).unwrap();
        let _b = state.lease(key("b:80")).unwrap();
        assert!(state.lease(key("c:80")).is_err());
        assert!(state.lease(key("a:80")).is_ok(), "a known key is served");
        drop(a);
        let _c = state.lease(key("c:80")).expect("a freed key makes room");
        assert_eq!(keys(&state), 2);
    }

    #[test]
    fn a_host_has_one_slot_while_it_has_leases() {
        let state = Arc::new(State::new(1, 0, true, 8));
        let a = state.lease(key("a:80")).unwrap();
        let permit = a.try_acquire().unwrap();
        let a2 = state.lease(key("a:80")).unwrap();
        assert!(a2.try_acquire().is_none(), "the same semaphore");
        drop(permit);
        assert!(a2.try_acquire().is_some());
    }

    #[test]
    fn the_queue_is_bounded_and_places_are_given_back() {
        let state = Arc::new(State::new(1, 2, false, 8));
        let l = state.lease(String::new()).unwrap();
        let p1 = l.enqueue().unwrap();
        let _p2 = l.enqueue().unwrap();
        assert!(l.enqueue().is_none());
        assert_eq!(state.load().queued, 2);
        drop(p1);
        assert!(l.enqueue().is_some());
    }

    #[test]
    fn load_counts_permits_out() {
        let state = Arc::new(State::new(3, 0, false, 8));
        let l = state.lease(String::new()).unwrap();
        let _p = l.try_acquire().unwrap();
        assert_eq!(state.load().in_flight, 1);
        assert_eq!(state.load_of("anything").in_flight, 1);
    }

    fn hosts(state: &State) -> Vec<(String, Load)> {
        let mut v = Vec::new();
        state.for_each_host(|k, l| v.push((k.to_owned(), l)));
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn each_host_is_read_with_its_load_and_kept() {
        let state = Arc::new(State::new(1, 2, true, 100));
        assert_eq!(state.global_load(), None);
        assert!(hosts(&state).is_empty());
        let a = state.lease(key("a:80")).unwrap();
        let _a1 = a.try_acquire().unwrap();
        let a2 = state.lease(key("a:80")).unwrap();
        let _q = a2.enqueue().unwrap();
        // Enough hosts that each shard's buffers must grow.
        let many: Vec<_> = (0..99)
            .map(|i| state.lease(format!("h{i:02}:80")).unwrap())
            .collect();
        let seen = hosts(&state);
        assert_eq!(seen.len(), 100);
        assert_eq!(
            seen[0],
            (
                "a:80".to_owned(),
                Load {
                    in_flight: 1,
                    queued: 1
                }
            )
        );
        assert!(seen[1..].iter().all(|(_, l)| *l == Load::default()));
        assert_eq!(seen[1].0, "h00:80");
        // Reading took no lease and gave none back.
        assert_eq!(keys(&state), 100);
        drop(many);
        assert_eq!(hosts(&state).len(), 1);
        drop((a, a2));
    }

    #[test]
    fn a_global_slot_is_read_as_a_whole() {
        let state = Arc::new(State::new(2, 1, false, 8));
        let l = state.lease(String::new()).unwrap();
        let _p = l.try_acquire().unwrap();
        let _q = l.enqueue().unwrap();
        assert_eq!(
            state.global_load(),
            Some(Load {
                in_flight: 1,
                queued: 1
            })
        );
        assert!(hosts(&state).is_empty());
    }

    #[test]
    fn oversized_limits_do_not_panic() {
        let state = State::new(usize::MAX, usize::MAX, false, usize::MAX);
        assert_eq!(state.load(), Load::default());
    }
}
