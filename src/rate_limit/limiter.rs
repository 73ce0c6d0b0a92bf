//! The rate limiter's policy core: governor's GCRA, global or keyed by host, with a pause per
//! key for server pushback and a sweep of idle keys. Synchronous; time comes from a governor
//! [`Clock`], so unit tests drive it with governor's `FakeRelativeClock`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::clock::nanos;

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Keyed<C> =
    RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A sweep of idle keys is considered every this many calls (per-host limiters only).
pub(crate) const SWEEP_EVERY: u64 = 1024;
/// The shortest time between two sweeps started because time passed (rather than because
/// many calls came), so that a large map is not walked more than about once a second.
const MIN_SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// Why no token was taken, and how long until trying again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Denied {
    /// How long until a token may be free, or until the key's pause ends.
    pub(crate) wait: Duration,
    /// Whether the key is paused by server pushback (rather than out of tokens).
    pub(crate) paused: bool,
}

enum Gcra<C: Clock> {
    Global(Direct<C>),
    PerHost {
        limiter: Keyed<C>,
        /// Pause ends by key, in nanoseconds since `start`. Written on pushback only; read
        /// only while some pause may be running (see `pause_max`).
        pauses: RwLock<HashMap<String, u64>>,
        calls: AtomicU64,
        sweep: Mutex<Sweep>,
        /// A time-triggered sweep waits at least this long after the previous one: the time
        /// after which an untouched key is dropped, and no less than a second.
        sweep_period: u64,
    },
}

struct Sweep {
    /// When the last sweep ran, in nanoseconds since `start`.
    at: u64,
    /// The call count at the last sweep.
    calls: u64,
    /// The keys the last sweep kept.
    kept: usize,
}

/// The limiter state shared by every service of a layer (and every clone of a client).
pub(crate) struct Limiter<C: Clock> {
    gcra: Gcra<C>,
    clock: C,
    start: C::Instant,
    /// The latest pause end set on any key, in nanoseconds since `start`: for a global limiter
    /// the pause itself; for a per-host limiter an upper bound that lets calls skip the pause
    /// map once every pause is over.
    pause_max: AtomicU64,
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter for `quota`, shared by all hosts (`per_host` false) or one per host.
    pub(crate) fn new(quota: Quota, per_host: bool, clock: C) -> Self {
        let start = clock.now();
        let gcra = if per_host {
            // A key is dropped once its theoretical arrival time is a token interval in the
            // past: at most `burst + 1` intervals after its last call.
            let idle = quota
                .replenish_interval()
                .saturating_mul(quota.burst_size().get().saturating_add(1));
            Gcra::PerHost {
                limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
                pauses: RwLock::new(HashMap::new()),
                calls: AtomicU64::new(0),
                sweep: Mutex::new(Sweep {
                    at: 0,
                    calls: 0,
                    kept: 0,
                }),
                sweep_period: nanos(idle.max(MIN_SWEEP_PERIOD)),
            }
        } else {
            Gcra::Global(RateLimiter::direct_with_clock(quota, clock.clone()))
        };
        Limiter {
            gcra,
            clock,
            start,
            pause_max: AtomicU64::new(0),
        }
    }
}

impl<C: Clock> Limiter<C> {
    fn now(&self) -> (C::Instant, u64) {
        let now = self.clock.now();
        (now, now.duration_since(self.start).into())
    }

    /// Takes a token for `key` (ignored by a global limiter), or says how long until one may
    /// be free. A key paused by server pushback takes no token until the pause is over.
    // `&String`: governor's keyed `check_key` takes `&K`, and the key is a `String`.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn acquire(&self, key: &String) -> Result<(), Denied> {
        let (now, now_n) = self.now();
        let pause_max = self.pause_max.load(Ordering::Acquire);
        match &self.gcra {
            Gcra::Global(limiter) => {
                if pause_max > now_n {
                    return Err(paused(pause_max - now_n));
                }
                limiter.check().map_err(|nu| Denied {
                    wait: nu.wait_time_from(now),
                    paused: false,
                })
            }
            Gcra::PerHost {
                limiter, pauses, ..
            } => {
                self.tick(now_n);
                if pause_max > now_n {
                    let until = read(pauses).get(key.as_str()).copied().unwrap_or(0);
                    if until > now_n {
                        return Err(paused(until - now_n));
                    }
                }
                limiter.check_key(key).map_err(|nu| Denied {
                    wait: nu.wait_time_from(now),
                    paused: false,
                })
            }
        }
    }

    /// Pauses `key` (every key, for a global limiter) for `pause` from now. A pause never
    /// ends earlier than one already set: returns the new pause when it extends the current
    /// one, `None` when the current one lasts as long or longer.
    pub(crate) fn push_back(&self, key: &str, pause: Duration) -> Option<Duration> {
        if pause.is_zero() {
            return None;
        }
        let (_, now_n) = self.now();
        let until = now_n.saturating_add(nanos(pause));
        match &self.gcra {
            Gcra::Global(_) => {
                let prev = self.pause_max.fetch_max(until, Ordering::AcqRel);
                (until > prev).then_some(pause)
            }
            Gcra::PerHost { pauses, .. } => {
                let mut pauses = write(pauses);
                let cur = pauses.entry(key.to_owned()).or_insert(0);
                if until <= *cur {
                    return None;
                }
                *cur = until;
                // Under the lock, so that a sweep cannot clear the map while this pause
                // is published.
                self.pause_max.fetch_max(until, Ordering::AcqRel);
                Some(pause)
            }
        }
    }

    /// How long `key` stays paused by server pushback, if it is.
    #[cfg(test)]
    pub(crate) fn paused_for(&self, key: &str) -> Option<Duration> {
        let (_, now_n) = self.now();
        let until = match &self.gcra {
            Gcra::Global(_) => self.pause_max.load(Ordering::Acquire),
            Gcra::PerHost { pauses, .. } => read(pauses).get(key).copied().unwrap_or(0),
        };
        (until > now_n).then(|| Duration::from_nanos(until - now_n))
    }

    /// The keys a per-host limiter holds state for (token buckets; pauses are counted apart);
    /// 0 for a global limiter.
    pub(crate) fn len(&self) -> usize {
        match &self.gcra {
            Gcra::Global(_) => 0,
            Gcra::PerHost { limiter, .. } => limiter.len(),
        }
    }

    /// The pauses a per-host limiter holds, running or over but not yet swept.
    #[cfg(test)]
    pub(crate) fn pauses_len(&self) -> usize {
        match &self.gcra {
            Gcra::Global(_) => 0,
            Gcra::PerHost { pauses, .. } => read(pauses).len(),
        }
    }

    /// Counts a call, and every `SWEEP_EVERY` calls sweeps idle keys when enough calls came
    /// (as many as the last sweep kept keys) or enough time passed since the last sweep.
    fn tick(&self, now_n: u64) {
        let Gcra::PerHost {
            calls,
            sweep,
            sweep_period,
            ..
        } = &self.gcra
        else {
            return;
        };
        let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n % SWEEP_EVERY != 0 {
            return;
        }
        // One sweeper at a time; a call that finds a sweep running goes on.
        let Ok(mut last) = sweep.try_lock() else {
            return;
        };
        let due = n.saturating_sub(last.calls) >= last.kept as u64
            || now_n.saturating_sub(last.at) >= *sweep_period;
        if due {
            self.sweep_locked(&mut last, n, now_n);
        }
    }

    /// Drops idle keys and pauses that are over, now.
    #[cfg(test)]
    pub(crate) fn sweep(&self) {
        if let Gcra::PerHost { calls, sweep, .. } = &self.gcra {
            let (_, now_n) = self.now();
            let mut last = sweep.lock().unwrap_or_else(|e| e.into_inner());
            self.sweep_locked(&mut last, calls.load(Ordering::Relaxed), now_n);
        }
    }

    fn sweep_locked(&self, last: &mut Sweep, calls: u64, now_n: u64) {
        let Gcra::PerHost {
            limiter, pauses, ..
        } = &self.gcra
        else {
            return;
        };
        let before = limiter.len();
        // Drops the keys whose bucket is full again: such a key behaves as a new one would.
        limiter.retain_recent();
        let kept = limiter.len();
        if kept < before / 2 {
            limiter.shrink_to_fit();
        }
        {
            let mut pauses = write(pauses);
            if self.pause_max.load(Ordering::Acquire) <= now_n {
                pauses.clear();
                pauses.shrink_to_fit();
            } else {
                pauses.retain(|_, until| *until > now_n);
            }
        }
        tracing::trace!(before, kept, "rate limiter swept idle hosts");
        *last = Sweep {
            at: now_n,
            calls,
            kept,
        };
    }
}

fn paused(n: u64) -> Denied {
    Denied {
        wait: Duration::from_nanos(n),
        paused: true,
    }
}

// A poisoned lock only means a panic elsewhere while it was held; the map is still sound.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// governor's quota for `rate` tokens per `period` (one second or one minute) with room for
/// `burst`. Zeros become 1: the configuration is validated before it gets here.
pub(crate) fn quota(rate: u32, per_minute: bool, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let q = if per_minute {
        Quota::per_minute(rate)
    } else {
        Quota::per_second(rate)
    };
    q.allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limiter(
        rate: u32,
        burst: u32,
        per_host: bool,
    ) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            Limiter::new(quota(rate, false, burst), per_host, clock.clone()),
            clock,
        )
    }

    fn key(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn burst_then_one_token_per_interval() {
        let (l, clock) = limiter(10, 3, false);
        let k = key("");
        for _ in 0..3 {
            assert_eq!(l.acquire(&k), Ok(()));
        }
        let denied = l.acquire(&k).unwrap_err();
        assert_eq!(
            denied,
            Denied {
                wait: ms(100),
                paused: false
            }
        );
        clock.advance(ms(60));
        assert_eq!(l.acquire(&k).unwrap_err().wait, ms(40));
        clock.advance(ms(40));
        assert_eq!(l.acquire(&k), Ok(()));
        assert_eq!(l.acquire(&k).unwrap_err().wait, ms(100));
    }

    #[test]
    fn a_denied_call_takes_no_token() {
        let (l, clock) = limiter(10, 1, false);
        let k = key("");
        assert_eq!(l.acquire(&k), Ok(()));
        for _ in 0..100 {
            assert!(l.acquire(&k).is_err());
        }
        clock.advance(ms(100));
        assert_eq!(l.acquire(&k), Ok(()));
    }

    #[test]
    fn per_minute_quota() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::new(quota(6, true, 1), false, clock.clone());
        let k = key("");
        assert_eq!(l.acquire(&k), Ok(()));
        assert_eq!(l.acquire(&k).unwrap_err().wait, Duration::from_secs(10));
    }

    #[test]
    fn hosts_are_independent() {
        let (l, _) = limiter(1, 1, true);
        assert_eq!(l.acquire(&key("a:80")), Ok(()));
        assert!(l.acquire(&key("a:80")).is_err());
        assert_eq!(l.acquire(&key("b:80")), Ok(()));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn pushback_pauses_one_host_and_only_extends() {
        let (l, clock) = limiter(1000, 100, true);
        let (a, b) = (key("a:80"), key("b:80"));
        assert_eq!(l.push_back("a:80", ms(2_000)), Some(ms(2_000)));
        assert_eq!(
            l.acquire(&a),
            Err(Denied {
                wait: ms(2_000),
                paused: true
            })
        );
        assert_eq!(l.acquire(&b), Ok(()));
        clock.advance(ms(500));
        // Shorter: ignored.
        assert_eq!(l.push_back("a:80", ms(1_000)), None);
        assert_eq!(l.paused_for("a:80"), Some(ms(1_500)));
        // Longer: extends.
        assert_eq!(l.push_back("a:80", ms(3_000)), Some(ms(3_000)));
        assert_eq!(l.acquire(&a).unwrap_err().wait, ms(3_000));
        clock.advance(ms(3_000));
        assert_eq!(l.paused_for("a:80"), None);
        assert_eq!(l.acquire(&a), Ok(()));
        assert_eq!(l.push_back("a:80", Duration::ZERO), None);
    }

    #[test]
    fn a_paused_key_keeps_its_tokens() {
        let (l, clock) = limiter(10, 2, false);
        let k = key("");
        l.push_back("", ms(1_000));
        for _ in 0..5 {
            assert!(l.acquire(&k).unwrap_err().paused);
        }
        clock.advance(ms(1_000));
        assert_eq!(l.acquire(&k), Ok(()));
        assert_eq!(l.acquire(&k), Ok(()));
        assert!(!l.acquire(&k).unwrap_err().paused);
    }

    #[test]
    fn global_pushback_holds_every_key() {
        let (l, _) = limiter(10, 2, false);
        assert_eq!(l.push_back("whatever", ms(300)), Some(ms(300)));
        assert_eq!(l.acquire(&key("")).unwrap_err().wait, ms(300));
        assert_eq!(l.push_back("", ms(100)), None);
    }

    #[test]
    fn huge_pauses_saturate() {
        let (l, _) = limiter(10, 2, true);
        assert!(l.push_back("a:80", Duration::MAX).is_some());
        assert!(l.acquire(&key("a:80")).unwrap_err().paused);
    }

    #[test]
    fn idle_keys_are_swept() {
        let (l, clock) = limiter(10, 2, true);
        for i in 0..5_000 {
            let _ = l.acquire(&format!("h{i}:80"));
        }
        // Every key is still in use (its bucket is not full again).
        assert_eq!(l.len(), 5_000);
        l.push_back("h1:80", ms(10_000));
        // (burst + 1) intervals and one more nanosecond: every bucket is full again.
        clock.advance(ms(301));
        l.sweep();
        assert_eq!(l.len(), 0);
        assert_eq!(l.pauses_len(), 1, "a running pause is kept");
        clock.advance(ms(10_000));
        l.sweep();
        assert_eq!(l.pauses_len(), 0);
    }

    #[test]
    fn sweeps_run_as_calls_come_once_enough_calls_or_time_passed() {
        let (l, clock) = limiter(10, 1, true);
        let n = 4 * SWEEP_EVERY as usize;
        for i in 0..n {
            let _ = l.acquire(&format!("h{i}:80"));
        }
        assert_eq!(l.len(), n);
        // The keys are idle, but too few calls came and too little time passed for a sweep.
        clock.advance(ms(500));
        let k = key("one:80");
        for _ in 0..SWEEP_EVERY {
            let _ = l.acquire(&k);
        }
        assert_eq!(l.len(), n + 1);
        // A second since the last sweep: the next check sweeps.
        clock.advance(ms(500));
        for _ in 0..SWEEP_EVERY {
            let _ = l.acquire(&k);
        }
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn recent_keys_survive_a_sweep() {
        let (l, clock) = limiter(10, 1, true);
        l.acquire(&key("old:80")).unwrap();
        clock.advance(ms(500));
        l.acquire(&key("new:80")).unwrap();
        clock.advance(ms(50));
        l.sweep();
        assert_eq!(l.len(), 1);
        assert!(l.acquire(&key("new:80")).is_err(), "its state was kept");
    }
}
