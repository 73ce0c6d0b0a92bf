//! The rate limiter's policy core: governor's GCRA, global or keyed by host in a bounded store,
//! with a pause per host for server pushback in another, and a sweep of what has ended.
//! Synchronous; time comes from a governor [`Clock`], so unit tests drive it with governor's
//! `FakeRelativeClock`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::NotKeyed;
use governor::{Quota, RateLimiter};

use super::clock::nanos;
use super::key::HostKey;
use super::store::{AtCap, Buckets, Cell, Ends};

type Direct<C> = RateLimiter<NotKeyed, Cell, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Keyed<C> = RateLimiter<HostKey, Buckets, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A sweep of ended entries is considered every this many calls (per-host limiters only).
pub(crate) const SWEEP_EVERY: u64 = 1024;
/// The shortest time between two sweeps started because time passed (rather than because
/// many calls came), so that a large map is not walked more than about once a second.
const MIN_SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// Why no token was taken, and how long until trying again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Denied {
    /// How long until a token may be free, or until the host's pause ends.
    pub(crate) wait: Duration,
    /// Whether the host is paused by server pushback (rather than out of tokens).
    pub(crate) paused: bool,
}

enum Gcra<C: Clock> {
    Global {
        limiter: Direct<C>,
        /// The theoretical arrival time governor's `limiter` keeps, shared with it to read it.
        tat: Arc<AtomicU64>,
    },
    PerHost {
        limiter: Keyed<C>,
        /// The buckets governor's `limiter` keeps, shared with it to count and sweep them.
        buckets: Arc<Ends>,
        calls: AtomicU64,
        sweep: Mutex<Sweep>,
        /// A time-triggered sweep waits at least this long after the previous one: the time
        /// after which an untouched bucket is full again, and no less than a second.
        sweep_period: u64,
    },
}

struct Sweep {
    /// When the last sweep ran, in nanoseconds since `start`.
    at: u64,
    /// The call count at the last sweep.
    calls: u64,
    /// The buckets the last sweep kept.
    kept: usize,
}

/// The limiter state shared by every service of a layer (and every clone of a client).
pub(crate) struct Limiter<C: Clock> {
    gcra: Gcra<C>,
    /// Pause ends by host, in nanoseconds since `start`, for both kinds of limiter: a pause
    /// holds its host only. Written on pushback only; read only while some pause may be
    /// running (see `pause_max`).
    pauses: Ends,
    clock: C,
    /// The origin of `pauses`' instants and of the sweeps' "now". Taken after governor's
    /// limiter took its own, so that it is never earlier: a bucket that ends (a theoretical
    /// arrival time, counted from governor's origin) at or before "now" counted from this one
    /// is full again.
    start: C::Instant,
    /// The latest pause end set on any host, in nanoseconds since `start`, or 0 once they are
    /// all over and cleared: calls skip the pause map unless it is in the future. Raised
    /// before a pause is stored, so that it is never below a stored pause's end.
    pause_max: AtomicU64,
    /// governor's token interval, in nanoseconds (at least 1, as governor holds it).
    interval: u64,
    /// The bucket's size.
    burst: u32,
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter for `quota`, shared by all hosts (`per_host` false) or one per host, that
    /// keeps at most `max_hosts` buckets and at most `max_hosts` pauses.
    pub(crate) fn new(quota: Quota, per_host: bool, max_hosts: usize, clock: C) -> Self {
        let gcra = if per_host {
            // A bucket is full again at most `burst` intervals after its last call.
            let idle = quota
                .replenish_interval()
                .saturating_mul(quota.burst_size().get());
            let buckets = Arc::new(Ends::new(max_hosts, AtCap::StoreNew));
            Gcra::PerHost {
                limiter: RateLimiter::new(quota, Buckets(buckets.clone()), clock.clone()),
                buckets,
                calls: AtomicU64::new(0),
                sweep: Mutex::new(Sweep {
                    at: 0,
                    calls: 0,
                    kept: 0,
                }),
                sweep_period: nanos(idle.max(MIN_SWEEP_PERIOD)),
            }
        } else {
            let tat = Arc::new(AtomicU64::new(0));
            Gcra::Global {
                limiter: RateLimiter::new(quota, Cell(tat.clone()), clock.clone()),
                tat,
            }
        };
        let start = clock.now();
        Limiter {
            gcra,
            pauses: Ends::new(max_hosts, AtCap::KeepLatest),
            clock,
            start,
            pause_max: AtomicU64::new(0),
            interval: nanos(quota.replenish_interval()).max(1),
            burst: quota.burst_size().get(),
        }
    }
}

impl<C: Clock> Limiter<C> {
    /// Now, in nanoseconds since `start`.
    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).into()
    }

    /// Takes a token for `key` (from the one bucket of a global limiter), or says how long
    /// until one may be free. A host paused by server pushback takes no token until its pause
    /// is over.
    ///
    /// Without a pause, the clock is read once, by governor (and again if no token is free).
    pub(crate) fn acquire(&self, key: &HostKey) -> Result<(), Denied> {
        if let Gcra::PerHost { .. } = &self.gcra {
            self.tick();
        }
        let pause_max = self.pause_max.load(Ordering::Acquire);
        if pause_max != 0 {
            let now_n = self.now();
            if pause_max > now_n {
                let until = self.pauses.get(key.as_bytes()).unwrap_or(0);
                if until > now_n {
                    return Err(paused(until - now_n));
                }
            } else {
                self.clear_pauses(pause_max, now_n);
            }
        }
        let checked = match &self.gcra {
            Gcra::Global { limiter, .. } => limiter.check(),
            Gcra::PerHost { limiter, .. } => limiter.check_key(key),
        };
        checked.map_err(|nu| Denied {
            wait: nu.wait_time_from(self.clock.now()),
            paused: false,
        })
    }

    /// How long `key` stays paused by server pushback, if it is: the check of [`acquire`]
    /// without the token (fleet mode asks Redis for the token).
    ///
    /// [`acquire`]: Self::acquire
    #[cfg(feature = "redis")]
    pub(crate) fn pause_left(&self, key: &HostKey) -> Option<Duration> {
        let pause_max = self.pause_max.load(Ordering::Acquire);
        if pause_max == 0 {
            return None;
        }
        let now_n = self.now();
        if pause_max <= now_n {
            self.clear_pauses(pause_max, now_n);
            return None;
        }
        let until = self.pauses.get(key.as_bytes()).unwrap_or(0);
        (until > now_n).then(|| Duration::from_nanos(until - now_n))
    }

    /// Pauses `key` for `pause` from now. A pause never ends earlier than one already set:
    /// returns the new pause when it extends the current one, `None` when the current one
    /// lasts as long or longer (or when the map is full of pauses that end later).
    pub(crate) fn push_back(&self, key: &HostKey, pause: Duration) -> Option<Duration> {
        if pause.is_zero() {
            return None;
        }
        let now_n = self.now();
        let until = now_n.saturating_add(nanos(pause));
        // First, so that a call that finds no pause in the map past `pause_max` is right.
        self.pause_max.fetch_max(until, Ordering::AcqRel);
        self.pauses.raise(key.as_bytes(), until).then_some(pause)
    }

    /// Every pause is over (`pause_max` at or before `now_n`, and not 0): drops them all,
    /// once. A pause stored meanwhile raised `pause_max` first, so the swap fails and it is
    /// kept for a later call to clear; a pause stored after the swap ends after `now_n` and
    /// the sweep keeps it.
    #[cold]
    fn clear_pauses(&self, pause_max: u64, now_n: u64) {
        if self
            .pause_max
            .compare_exchange(pause_max, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.pauses.sweep(now_n);
        }
    }

    /// How long `key` stays paused by server pushback, if it is.
    #[cfg(test)]
    pub(crate) fn paused_for(&self, key: &str) -> Option<Duration> {
        let now_n = self.now();
        let until = self.pauses.get(key.as_bytes()).unwrap_or(0);
        (until > now_n).then(|| Duration::from_nanos(until - now_n))
    }

    /// The bucket's size.
    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    /// Whether there is a bucket per host (rather than one for all).
    pub(crate) fn is_per_host(&self) -> bool {
        matches!(self.gcra, Gcra::PerHost { .. })
    }

    /// The tokens free now in the one bucket of a global limiter; `None` per host. Reads the
    /// state only.
    pub(crate) fn global_tokens(&self) -> Option<u32> {
        match &self.gcra {
            Gcra::Global { tat, .. } => Some(self.tokens(tat.load(Ordering::Acquire), self.now())),
            Gcra::PerHost { .. } => None,
        }
    }

    /// Calls `f` with the key and the free tokens of every bucket a per-host limiter holds that
    /// is not full again (a full one holds nothing: its host is a new host); nothing for a
    /// global limiter. Reads the state only: no sweep, and no lock held while `f` runs.
    pub(crate) fn for_each_bucket(&self, mut f: impl FnMut(&str, u32)) {
        let Gcra::PerHost { buckets, .. } = &self.gcra else {
            return;
        };
        let now_n = self.now();
        buckets.for_each_live(now_n, |key, tat| {
            if let Ok(key) = std::str::from_utf8(key) {
                f(key, self.tokens(tat, now_n));
            }
        });
    }

    /// Calls `f` with the key and the time left of every pause running now. Reads the state
    /// only: pauses that are over are left for the next call to drop, and no lock is held
    /// while `f` runs.
    pub(crate) fn for_each_pause(&self, mut f: impl FnMut(&str, Duration)) {
        let now_n = self.now();
        // No pause runs unless the latest one ends after now (see `pause_max`).
        if self.pause_max.load(Ordering::Acquire) <= now_n {
            return;
        }
        self.pauses.for_each_live(now_n, |key, until| {
            if let Ok(key) = std::str::from_utf8(key) {
                f(key, Duration::from_nanos(until - now_n));
            }
        });
    }

    /// The tokens free at `now_n` (nanoseconds since `start`) in a bucket whose theoretical
    /// arrival time is `tat` (nanoseconds since governor's origin; 0 for a new bucket), as
    /// governor's GCRA would count them: `n` calls conform when `now ≥ tat + (n − 1)·t − τ`,
    /// with `τ = (burst − 1)·t`, so `n = ⌊(now + τ − tat) / t⌋ + 1`, at most `burst`.
    ///
    /// `start` was taken just after governor's origin, so `now_n` may be a few nanoseconds
    /// behind governor's now (never ahead): a token that comes free in that instant is not
    /// counted yet. In paused time the two are the same instant.
    fn tokens(&self, tat: u64, now_n: u64) -> u32 {
        let t = self.interval;
        let tau = t.saturating_mul(u64::from(self.burst.saturating_sub(1)));
        match now_n.saturating_add(tau).checked_sub(tat) {
            Some(slack) => u32::try_from(slack / t)
                .unwrap_or(u32::MAX)
                .saturating_add(1)
                .min(self.burst),
            None => 0,
        }
    }

    /// The hosts a per-host limiter holds a bucket for (pauses are counted apart); 0 for a
    /// global limiter.
    pub(crate) fn len(&self) -> usize {
        match &self.gcra {
            Gcra::Global { .. } => 0,
            Gcra::PerHost { buckets, .. } => buckets.len(),
        }
    }

    /// The pauses held, running or over but not yet dropped.
    #[cfg(test)]
    pub(crate) fn pauses_len(&self) -> usize {
        self.pauses.len()
    }

    /// Counts a call, and every `SWEEP_EVERY` calls sweeps ended entries when enough calls came
    /// (as many as the last sweep kept buckets) or enough time passed since the last sweep.
    fn tick(&self) {
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
        let now_n = self.now();
        let due = n.saturating_sub(last.calls) >= last.kept as u64
            || now_n.saturating_sub(last.at) >= *sweep_period;
        if due {
            self.sweep_locked(&mut last, n, now_n);
        }
    }

    /// Drops full buckets and pauses that are over, now.
    #[cfg(test)]
    pub(crate) fn sweep(&self) {
        if let Gcra::PerHost { calls, sweep, .. } = &self.gcra {
            let now_n = self.now();
            let mut last = sweep.lock().unwrap_or_else(|e| e.into_inner());
            self.sweep_locked(&mut last, calls.load(Ordering::Relaxed), now_n);
        }
    }

    fn sweep_locked(&self, last: &mut Sweep, calls: u64, now_n: u64) {
        let Gcra::PerHost { buckets, .. } = &self.gcra else {
            return;
        };
        // A bucket whose theoretical arrival time has come is full again: its host would
        // behave as a new host does. (`now_n` is never later than governor's "now": see
        // `start`.)
        let (before, kept) = buckets.sweep(now_n);
        self.pauses.sweep(now_n);
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
        capped(rate, burst, per_host, 10_000)
    }

    fn capped(
        rate: u32,
        burst: u32,
        per_host: bool,
        max_hosts: usize,
    ) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            Limiter::new(
                quota(rate, false, burst),
                per_host,
                max_hosts,
                clock.clone(),
            ),
            clock,
        )
    }

    fn key(s: &str) -> HostKey {
        HostKey::new(s)
    }

    fn buckets<C: Clock>(l: &Limiter<C>) -> Vec<(String, u32)> {
        let mut v = Vec::new();
        l.for_each_bucket(|k, n| v.push((k.to_owned(), n)));
        v.sort();
        v
    }

    fn pauses<C: Clock>(l: &Limiter<C>) -> Vec<(String, Duration)> {
        let mut v = Vec::new();
        l.for_each_pause(|k, d| v.push((k.to_owned(), d)));
        v.sort();
        v
    }

    #[test]
    fn the_global_bucket_is_read_without_taking_a_token() {
        let (l, clock) = limiter(10, 3, false);
        let k = key("");
        assert_eq!((l.global_tokens(), l.burst()), (Some(3), 3));
        assert!(!l.is_per_host());
        l.acquire(&k).unwrap();
        l.acquire(&k).unwrap();
        // Read as often as you like: still one token, and a call takes it.
        for _ in 0..10 {
            assert_eq!(l.global_tokens(), Some(1));
        }
        clock.advance(ms(99));
        assert_eq!(l.global_tokens(), Some(1));
        clock.advance(ms(1));
        assert_eq!(l.global_tokens(), Some(2));
        for _ in 0..2 {
            l.acquire(&k).unwrap();
        }
        assert_eq!(l.global_tokens(), Some(0));
        assert!(l.acquire(&k).is_err());
        // Long idle: full, never more.
        clock.advance(Duration::from_secs(3_600));
        assert_eq!(l.global_tokens(), Some(3));
        assert!(
            buckets(&l).is_empty(),
            "a global limiter has no bucket per host"
        );
    }

    #[test]
    fn per_host_buckets_are_read_without_a_sweep() {
        let (l, clock) = limiter(10, 3, true);
        assert!(l.is_per_host());
        assert_eq!(l.global_tokens(), None);
        l.acquire(&key("a:80")).unwrap();
        for _ in 0..3 {
            l.acquire(&key("b:80")).unwrap();
        }
        assert_eq!(buckets(&l), [("a:80".into(), 2), ("b:80".into(), 0)]);
        clock.advance(ms(100));
        // `a` is full again: it holds nothing and is not listed, but stays until a sweep.
        assert_eq!(buckets(&l), [("b:80".into(), 1)]);
        assert_eq!(l.len(), 2);
        assert!(l.acquire(&key("b:80")).is_ok());
        assert!(l.acquire(&key("b:80")).is_err(), "reading took no token");
    }

    #[test]
    fn pauses_are_read_with_the_time_left_and_left_for_the_next_call_to_drop() {
        for per_host in [false, true] {
            let (l, clock) = limiter(10, 3, per_host);
            assert!(pauses(&l).is_empty());
            l.push_back(&key("a:80"), ms(2_000));
            l.push_back(&key("b:80"), ms(500));
            clock.advance(ms(300));
            assert_eq!(
                pauses(&l),
                [("a:80".into(), ms(1_700)), ("b:80".into(), ms(200))]
            );
            clock.advance(ms(200));
            assert_eq!(pauses(&l), [("a:80".into(), ms(1_500))]);
            clock.advance(ms(1_500));
            assert!(pauses(&l).is_empty());
            assert_eq!(l.pauses_len(), 2, "reading drops nothing");
            assert!(l.acquire(&key("a:80")).is_ok());
            assert_eq!(l.pauses_len(), 0);
        }
    }

    #[test]
    fn token_arithmetic_saturates() {
        let (l, _) = limiter(1, 1, false);
        assert_eq!(l.tokens(u64::MAX, 0), 0);
        assert_eq!(l.tokens(0, u64::MAX), 1);
        let (l, _) = capped(1, u32::MAX, false, 1);
        assert_eq!(l.tokens(0, u64::MAX), u32::MAX);
        // Past the arithmetic's range (584 years), counted low rather than overflowing.
        assert_eq!(l.tokens(u64::MAX, u64::MAX), 1);
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
    fn the_per_host_store_keeps_governors_arithmetic() {
        let (l, clock) = limiter(10, 3, true);
        let k = key("a:80");
        for _ in 0..3 {
            assert_eq!(l.acquire(&k), Ok(()));
        }
        assert_eq!(l.acquire(&k).unwrap_err().wait, ms(100));
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
        let l = Limiter::new(quota(6, true, 1), false, 10, clock.clone());
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
        assert_eq!(l.push_back(&a, ms(2_000)), Some(ms(2_000)));
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
        assert_eq!(l.push_back(&a, ms(1_000)), None);
        assert_eq!(l.paused_for("a:80"), Some(ms(1_500)));
        // Longer: extends.
        assert_eq!(l.push_back(&a, ms(3_000)), Some(ms(3_000)));
        assert_eq!(l.acquire(&a).unwrap_err().wait, ms(3_000));
        clock.advance(ms(3_000));
        assert_eq!(l.paused_for("a:80"), None);
        assert_eq!(l.acquire(&a), Ok(()));
        assert_eq!(l.push_back(&a, Duration::ZERO), None);
    }

    #[test]
    fn a_paused_key_keeps_its_tokens() {
        let (l, clock) = limiter(10, 2, false);
        let k = key("a:80");
        l.push_back(&k, ms(1_000));
        for _ in 0..5 {
            assert!(l.acquire(&k).unwrap_err().paused);
        }
        clock.advance(ms(1_000));
        assert_eq!(l.acquire(&k), Ok(()));
        assert_eq!(l.acquire(&k), Ok(()));
        assert!(!l.acquire(&k).unwrap_err().paused);
    }

    // Issue 9, defect 8: one host's 429 paused every host of a global limiter.
    #[test]
    fn global_pushback_holds_its_host_only() {
        let (l, _) = limiter(10, 2, false);
        let (a, b) = (key("a:80"), key("b:80"));
        assert_eq!(l.push_back(&a, ms(300)), Some(ms(300)));
        assert_eq!(l.acquire(&a).unwrap_err().wait, ms(300));
        assert_eq!(l.acquire(&b), Ok(()), "another host is not paused");
        assert_eq!(l.push_back(&a, ms(100)), None);
        // The bucket is still one for all hosts.
        assert_eq!(l.acquire(&key("c:80")), Ok(()));
        assert!(!l.acquire(&b).unwrap_err().paused);
    }

    #[test]
    fn huge_pauses_saturate() {
        for per_host in [false, true] {
            let (l, _) = limiter(10, 2, per_host);
            assert!(l.push_back(&key("a:80"), Duration::MAX).is_some());
            assert!(l.acquire(&key("a:80")).unwrap_err().paused);
            assert_eq!(l.acquire(&key("b:80")), Ok(()));
        }
    }

    // Issue 9, defect 8: the pause map is keyed by a host a remote party chooses, so it is
    // bounded too.
    #[test]
    fn the_pause_map_is_bounded_and_keeps_the_pauses_that_end_last() {
        for per_host in [false, true] {
            let (l, clock) = capped(1000, 10, per_host, 64);
            // 64 hosts paused for 1..=64 s: the map is full (one shard, which a new pause at the cap
            // looks at whole: it looks at 64 entries).
            for i in 1..=64 {
                let pause = Duration::from_secs(i);
                assert_eq!(l.push_back(&key(&format!("h{i}:80")), pause), Some(pause));
            }
            assert_eq!(l.pauses_len(), 64);
            // A pause shorter than every one held is the one to lose.
            assert_eq!(l.push_back(&key("short:80"), ms(500)), None);
            assert!(l.acquire(&key("short:80")).is_ok());
            // A longer one takes the place of the one that ends first.
            assert!(l
                .push_back(&key("long:80"), Duration::from_secs(500))
                .is_some());
            assert_eq!(l.paused_for("h1:80"), None);
            assert!(l.paused_for("h2:80").is_some());
            assert!(l.acquire(&key("long:80")).unwrap_err().paused);
            // 10,000 more hosts: still 64 pauses.
            for i in 0..10_000 {
                l.push_back(&key(&format!("x{i}:80")), Duration::from_secs(1_000));
            }
            assert_eq!(l.pauses_len(), 64);
            // Once every pause is over, the next call drops them.
            clock.advance(Duration::from_secs(1_001));
            assert!(l.acquire(&key("long:80")).is_ok());
            assert_eq!(l.pauses_len(), 0, "per_host: {per_host}");
        }
    }

    #[test]
    fn pauses_that_are_over_make_room_first() {
        let (l, clock) = capped(1000, 10, false, 2);
        l.push_back(&key("a:80"), ms(100));
        l.push_back(&key("b:80"), ms(10_000));
        clock.advance(ms(200));
        // `a`'s pause is over: a new, shorter one than `b`'s goes in its place.
        assert!(l.push_back(&key("c:80"), ms(1_000)).is_some());
        assert_eq!(l.paused_for("b:80"), Some(ms(9_800)));
        assert_eq!(l.paused_for("c:80"), Some(ms(1_000)));
        assert_eq!(l.pauses_len(), 2);
    }

    // Issue 9, defect 9: the per-host limiter's memory was unbounded.
    #[test]
    fn the_per_host_store_holds_at_most_max_hosts() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::new(quota(1, true, 1_000_000), true, 1_000, clock.clone());
        for i in 0..100_000 {
            assert_eq!(l.acquire(&key(&format!("h{i}:80"))), Ok(()));
            assert!(l.len() <= 1_000);
        }
        assert_eq!(l.len(), 1_000);
    }

    #[test]
    fn below_the_cap_no_bucket_is_lost_and_at_it_the_fullest_goes() {
        let (l, clock) = capped(10, 5, true, 3);
        let (a, b, c) = (key("a:80"), key("b:80"), key("c:80"));
        // `a` spends its whole burst; `b` and `c` one token each, `c` later.
        for _ in 0..5 {
            l.acquire(&a).unwrap();
        }
        l.acquire(&b).unwrap();
        clock.advance(ms(50));
        l.acquire(&c).unwrap();
        assert!(l.acquire(&a).is_err(), "a's state is kept below the cap");
        assert_eq!(l.len(), 3);
        // A fourth host: `b`, nearest to full (its bucket ends first), makes room.
        l.acquire(&key("d:80")).unwrap();
        assert_eq!(l.len(), 3);
        assert!(l.acquire(&a).is_err(), "a, the busiest, is kept");
        for _ in 0..4 {
            l.acquire(&c).unwrap();
        }
        assert!(l.acquire(&c).is_err(), "c is kept: it had 4 tokens left");
        // `b` was forgotten: it has its whole burst again.
        for _ in 0..5 {
            l.acquire(&b).unwrap();
        }
    }

    #[test]
    fn concurrent_calls_to_one_host_take_exactly_its_burst() {
        let (l, _) = capped(1, 100, true, 10);
        let l = Arc::new(l);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..1_000)
                        .filter(|_| l.acquire(&key("a:80")).is_ok())
                        .count()
                })
            })
            .collect();
        let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(ok, 100);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn idle_keys_are_swept() {
        let (l, clock) = limiter(10, 2, true);
        for i in 0..5_000 {
            let _ = l.acquire(&key(&format!("h{i}:80")));
        }
        // Every key is still in use (its bucket is not full again).
        assert_eq!(l.len(), 5_000);
        l.push_back(&key("h1:80"), ms(10_000));
        // One interval after the one call of each: every bucket is full again.
        clock.advance(ms(100));
        l.sweep();
        assert_eq!(l.len(), 0);
        assert_eq!(l.pauses_len(), 1, "a running pause is kept");
        clock.advance(ms(10_000));
        l.sweep();
        assert_eq!(l.pauses_len(), 0);
    }

    #[test]
    fn a_bucket_is_kept_until_it_is_full_again() {
        let (l, clock) = limiter(10, 3, true);
        let k = key("a:80");
        for _ in 0..3 {
            l.acquire(&k).unwrap();
        }
        // Three intervals to refill: a nanosecond short of them, it is kept.
        clock.advance(ms(300) - Duration::from_nanos(1));
        l.sweep();
        assert_eq!(l.len(), 1);
        clock.advance(Duration::from_nanos(1));
        l.sweep();
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn sweeps_run_as_calls_come_once_enough_calls_or_time_passed() {
        let (l, clock) = limiter(10, 1, true);
        let n = 4 * SWEEP_EVERY as usize;
        for i in 0..n {
            let _ = l.acquire(&key(&format!("h{i}:80")));
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
