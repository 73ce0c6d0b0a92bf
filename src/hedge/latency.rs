//! Each host's recent latency, for a hedge delay at a quantile of it
//! ([`Hedging::at_quantile`](super::Hedging::at_quantile)).
//!
//! One histogram per host, log-linear: values below 16 µs have a bucket each, then each power
//! of two is cut into 8 buckets (each 12.5 % of its octave wide), up to 2^27 µs (134 s; longer
//! latencies share the last bucket): 200 buckets of 4 bytes, about 0.8 KB per host, whatever
//! its traffic. Recent answers count most: every
//! [`half_life`](super::Hedging::half_life) every count is halved (lazily, when the host is
//! next looked at). A quantile is read as the upper edge of the bucket that holds it, so the
//! delay is never below the true quantile of the samples and at most one bucket (12.5 %)
//! above it: hedging at the p95 sends a hedge for at most 5 % of the requests.
//!
//! Hosts are kept in a map bounded by [`max_hosts`](super::Hedging::max_hosts): a new host at
//! the cap takes the place of an idle host (one with no sample for 8 half-lives, by then
//! decayed to nothing) or else of the least recently used, among up to 64 hosts of its shard
//! (there is a shard per 64 hosts of the cap, up to 16), so making room costs a bounded time. A host not stored has no estimate, and its calls use
//! the fallback delay.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Sub-buckets per power of two, as a power of two: 8.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this (in µs) have a bucket each.
const EXACT: u64 = 2 * SUB;
/// Values of `2^MAX_BIT` µs and more share the last bucket.
const MAX_BIT: u32 = 27;
pub(crate) const BUCKETS: usize = (EXACT + (MAX_BIT - SUB_BITS - 1) as u64 * SUB) as usize;
/// A host whose latest sample is this many half-lives old has decayed to nothing.
const IDLE_HALF_LIVES: u32 = 8;
/// How many hosts of its shard a new host at the cap looks at to make room.
const SAMPLE: usize = 64;
const MAX_SHARDS: usize = 16;

/// The bucket of a latency of `us` microseconds.
fn index(us: u64) -> usize {
    let v = us.min((1 << MAX_BIT) - 1);
    if v < EXACT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = (v >> (msb - SUB_BITS)) & (SUB - 1);
    (EXACT + u64::from(msb - SUB_BITS - 1) * SUB + sub) as usize
}

/// The smallest value of bucket `i` (for `i == BUCKETS`, the end of the last one).
fn lower(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let j = i - EXACT;
    let (octave, sub) = (j / SUB, j % SUB);
    (SUB + sub) << (octave + 1)
}

/// The settings of an estimate, validated by `Hedging::validate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) quantile: f64,
    pub(crate) min_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) fallback: Duration,
    pub(crate) min_samples: u32,
    pub(crate) half_life: Duration,
    pub(crate) max_hosts: usize,
}

/// One host's histogram.
struct Histogram {
    counts: [u32; BUCKETS],
    total: u64,
    /// The half-life (time since the epoch / half-life) the counts were last halved in.
    period: u64,
    /// The latest sample's half-life.
    last_used: u64,
}

impl Histogram {
    fn new(period: u64) -> Self {
        Histogram {
            counts: [0; BUCKETS],
            total: 0,
            period,
            last_used: period,
        }
    }

    /// Halves every count once for each half-life since the last time.
    fn decay(&mut self, period: u64) {
        if period <= self.period {
            return;
        }
        let halvings = period - self.period;
        self.period = period;
        self.halve(halvings);
    }

    /// Shifts every count right by `halvings`.
    fn halve(&mut self, halvings: u64) {
        if halvings >= 32 {
            self.counts = [0; BUCKETS];
            self.total = 0;
            return;
        }
        let mut total = 0u64;
        for c in &mut self.counts {
            *c >>= halvings;
            total += u64::from(*c);
        }
        self.total = total;
    }

    fn record(&mut self, latency: Duration, period: u64) {
        self.decay(period);
        self.last_used = period;
        let i = index(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        if self.counts[i] == u32::MAX {
            // A bucket full within one half-life (4 billion samples): halve them all early.
            self.halve(1);
        }
        self.counts[i] += 1;
        self.total += 1;
    }

    /// The quantile `q` of the samples, as the upper edge of its bucket; `None` below
    /// `min_samples`. A walk over the buckets up to the quantile's (a few hundred
    /// nanoseconds at most), on every call: the estimate is the latest.
    fn quantile(&self, q: f64, min_samples: u32) -> Option<Duration> {
        self.read(0, q, min_samples).0
    }

    /// The quantile `q` (as [`quantile`](Self::quantile) reads it) and the number of samples,
    /// of the counts as they would be after `halvings` more halvings, without changing them:
    /// each count shifted right once per halving, as [`halve`](Self::halve) does.
    fn read(&self, halvings: u64, q: f64, min_samples: u32) -> (Option<Duration>, u64) {
        let count = |c: u32| match u32::try_from(halvings) {
            Ok(h) if h < 32 => u64::from(c >> h),
            _ => 0,
        };
        let total = if halvings == 0 {
            self.total
        } else {
            self.counts.iter().map(|&c| count(c)).sum()
        };
        if total < u64::from(min_samples.max(1)) {
            return (None, total);
        }
        // The rank of the quantile, from 1: the smallest sample with at least `q` of them at
        // or below it.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        let mut at = BUCKETS - 1;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += count(c);
            if seen >= rank {
                at = i;
                break;
            }
        }
        (Some(Duration::from_micros(lower(at + 1))), total)
    }

    /// What [`Estimates::delay`] would read at `period`, and the samples it rests on, without
    /// decaying the counts (they decay lazily, when a call finds them).
    fn peek(&self, period: u64, s: &Settings) -> (Option<Duration>, u64) {
        let (quantile, samples) = self.read(
            period.saturating_sub(self.period),
            s.quantile,
            s.min_samples,
        );
        (quantile.map(|d| d.clamp(s.min_delay, s.max_delay)), samples)
    }
}

/// foldhash, seeded at random: hosts are chosen by remote parties.
type Hasher = foldhash::quality::RandomState;
type Map = HashMap<Box<str>, Histogram, Hasher>;

/// The estimates of one hedging stage, one histogram per host.
pub(crate) struct Estimates {
    settings: Settings,
    shards: Box<[Mutex<Map>]>,
    hasher: Hasher,
    count: AtomicUsize,
    epoch: Instant,
}

impl std::fmt::Debug for Estimates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Estimates")
            .field("hosts", &self.len())
            .field("max_hosts", &self.settings.max_hosts)
            .finish_non_exhaustive()
    }
}

impl Estimates {
    pub(crate) fn new(settings: Settings) -> Self {
        // A shard per 64 hosts of the cap (up to 16), so that a new host at the cap finds
        // hosts in its shard to make room among.
        let n = (settings.max_hosts / SAMPLE).clamp(1, MAX_SHARDS);
        Estimates {
            settings,
            shards: (0..n).map(|_| Mutex::new(Map::default())).collect(),
            hasher: Hasher::default(),
            count: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    fn period(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        let half = self.settings.half_life.as_nanos().max(1);
        u64::try_from(elapsed.as_nanos() / half).unwrap_or(u64::MAX)
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Map> {
        let i = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        // A panic cannot leave a histogram torn in a way that matters: counts only.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The hedge delay for `key`: its quantile, clamped, or the fallback delay while it has
    /// fewer samples than `min_samples`.
    pub(crate) fn delay(&self, key: &str) -> Duration {
        let s = &self.settings;
        let period = self.period();
        let mut map = self.shard(key);
        let quantile = map.get_mut(key).and_then(|h| {
            h.decay(period);
            h.quantile(s.quantile, s.min_samples)
        });
        match quantile {
            Some(d) => d.clamp(s.min_delay, s.max_delay),
            None => s.fallback,
        }
    }

    /// Records one answer's latency for `key`.
    pub(crate) fn record(&self, key: &str, latency: Duration) {
        let period = self.period();
        let mut map = self.shard(key);
        if let Some(h) = map.get_mut(key) {
            h.record(latency, period);
            return;
        }
        let room = self.reserve() || (self.make_room(&mut map, period) && self.reserve());
        if !room {
            return;
        }
        let mut h = Histogram::new(period);
        h.record(latency, period);
        map.insert(key.into(), h);
    }

    /// Calls `f` with each host held, the delay a call to it starting now would wait for its
    /// first hedge (its quantile, clamped; `None` below `min_samples`, when the call waits the
    /// fallback delay), and the samples that rests on, decayed to now. Changes nothing: the
    /// counts are decayed on the fly, not in place. Each shard is locked in turn, long enough
    /// to read its hosts into buffers sized beforehand (nothing is allocated under a lock;
    /// a shard that outgrew them is read again).
    pub(crate) fn for_each_host(&self, mut f: impl FnMut(&str, Option<Duration>, u64)) {
        let period = self.period();
        let mut keys = String::new();
        // Where each key ends in `keys`, its delay and its samples.
        let mut read: Vec<(usize, Option<Duration>, u64)> = Vec::new();
        for shard in self.shards.iter() {
            loop {
                keys.clear();
                read.clear();
                let (n, bytes) = {
                    let map = shard.lock().unwrap_or_else(PoisonError::into_inner);
                    let (n, bytes) = map.keys().fold((0, 0), |(n, b), k| (n + 1, b + k.len()));
                    if n <= read.capacity() && bytes <= keys.capacity() {
                        for (k, h) in map.iter() {
                            keys.push_str(k);
                            let (delay, samples) = h.peek(period, &self.settings);
                            read.push((keys.len(), delay, samples));
                        }
                        break;
                    }
                    (n, bytes)
                };
                // Room for some growth, so that a busy shard is seldom read a third time.
                read.reserve(n.saturating_mul(2));
                keys.reserve(bytes.saturating_mul(2));
            }
            let mut start = 0;
            for &(stop, delay, samples) in &read {
                f(&keys[start..stop], delay, samples);
                start = stop;
            }
        }
    }

    /// The hosts held.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < self.settings.max_hosts).then_some(c + 1)
            })
            .is_ok()
    }

    /// Drops the idle hosts among up to [`SAMPLE`] hosts of the shard, or else the least
    /// recently used of them; whether any went.
    fn make_room(&self, map: &mut Map, period: u64) -> bool {
        let mut gone: Vec<Box<str>> = Vec::new();
        let mut lru: Option<(&Box<str>, u64)> = None;
        for (k, h) in map.iter().take(SAMPLE) {
            if period.saturating_sub(h.last_used) >= u64::from(IDLE_HALF_LIVES) {
                gone.push(k.clone());
            } else if lru.is_none_or(|(_, used)| h.last_used < used) {
                lru = Some((k, h.last_used));
            }
        }
        if gone.is_empty() {
            gone.extend(lru.map(|(k, _)| k.clone()));
        }
        for k in &gone {
            map.remove(k);
        }
        self.count.fetch_sub(gone.len(), Ordering::Relaxed);
        !gone.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            quantile: 0.95,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_secs(10),
            fallback: Duration::from_millis(500),
            min_samples: 20,
            half_life: Duration::from_secs(10),
            max_hosts: 100,
        }
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        assert_eq!(BUCKETS, 200);
        assert_eq!(lower(BUCKETS), 1 << MAX_BIT);
        for i in 0..BUCKETS {
            assert!(lower(i) < lower(i + 1), "bucket {i}");
            assert_eq!(index(lower(i)), i, "the first value of bucket {i}");
            assert_eq!(index(lower(i + 1) - 1), i, "the last value of bucket {i}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        // Above the exact range a bucket is at most 12.5 % of its lower edge wide.
        for i in EXACT as usize..BUCKETS {
            let (lo, hi) = (lower(i), lower(i + 1));
            assert!((hi - lo) * 8 <= lo, "bucket {i}: {lo}..{hi}");
        }
    }

    #[test]
    fn the_quantile_is_the_upper_edge_of_its_bucket_never_below() {
        let mut h = Histogram::new(0);
        // 1..=1000 ms, one each.
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms), 0);
        }
        let p95 = h.quantile(0.95, 1).unwrap();
        assert!(p95 >= Duration::from_millis(950), "{p95:?}");
        assert!(p95 <= Duration::from_millis(950 * 9 / 8), "{p95:?}");
        let p50 = h.quantile(0.5, 1).unwrap();
        assert!(p50 >= Duration::from_millis(500) && p50 <= Duration::from_millis(563));
        assert_eq!(h.quantile(0.5, 1_001), None, "below min_samples");
    }

    #[test]
    fn counts_halve_every_half_life_and_vanish() {
        let mut h = Histogram::new(0);
        for _ in 0..64 {
            h.record(Duration::from_millis(10), 0);
        }
        h.decay(1);
        assert_eq!(h.total, 32);
        h.decay(3);
        assert_eq!(h.total, 8);
        h.decay(100);
        assert_eq!(h.total, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_follows_the_host_and_falls_back_without_samples() {
        let e = Estimates::new(settings());
        assert_eq!(e.delay("a:80"), Duration::from_millis(500), "no samples");
        for _ in 0..19 {
            e.record("a:80", Duration::from_millis(100));
        }
        assert_eq!(
            e.delay("a:80"),
            Duration::from_millis(500),
            "19 < min_samples"
        );
        e.record("a:80", Duration::from_millis(100));
        let d = e.delay("a:80");
        assert!(d >= Duration::from_millis(100) && d <= Duration::from_micros(112_500));
        assert_eq!(e.delay("b:80"), Duration::from_millis(500), "another host");
        // Clamped.
        for _ in 0..100 {
            e.record("fast:80", Duration::from_micros(10));
            e.record("slow:80", Duration::from_secs(60));
        }
        assert_eq!(e.delay("fast:80"), Duration::from_millis(1));
        assert_eq!(e.delay("slow:80"), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_moves_to_the_recent_latency() {
        let e = Estimates::new(settings());
        for _ in 0..1_000 {
            e.record("a:80", Duration::from_millis(10));
        }
        assert!(e.delay("a:80") < Duration::from_millis(12));
        // The host slows down: within a few half-lives its p95 is the new latency.
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(10)).await;
            for _ in 0..100 {
                e.record("a:80", Duration::from_millis(200));
            }
        }
        assert!(e.delay("a:80") >= Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn reading_every_host_decays_on_the_fly_and_changes_nothing() {
        let e = Estimates::new(settings());
        for _ in 0..40 {
            e.record("a:80", Duration::from_millis(100));
        }
        for _ in 0..5 {
            e.record("b:80", Duration::from_millis(100));
        }
        let read = |e: &Estimates| {
            let mut all = Vec::new();
            e.for_each_host(|k, d, n| all.push((k.to_owned(), d, n)));
            all.sort();
            all
        };
        let p = Duration::from_micros(lower(index(100_000) + 1));
        assert_eq!(
            read(&e),
            [
                ("a:80".to_owned(), Some(p), 40),
                ("b:80".to_owned(), None, 5)
            ]
        );
        assert_eq!(e.delay("a:80"), p, "what a call reads");
        // Two half-lives on: a quarter of the samples, 10, below min_samples.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(read(&e)[0], ("a:80".to_owned(), None, 10));
        let held = |e: &Estimates| {
            let map = e.shard("a:80");
            let h = &map["a:80"];
            (h.total, h.period)
        };
        assert_eq!(held(&e), (40, 0), "the counts held are not decayed");
        assert_eq!(e.delay("a:80"), Duration::from_millis(500), "the fallback");
        assert_eq!(held(&e), (10, 2));
        tokio::time::advance(Duration::from_secs(400)).await;
        assert_eq!(read(&e)[0], ("a:80".to_owned(), None, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_are_bounded() {
        let e = Estimates::new(Settings {
            max_hosts: 10,
            ..settings()
        });
        for i in 0..1_000 {
            e.record(&format!("h{i}:80"), Duration::from_millis(5));
        }
        assert!(e.len() <= 10, "{}", e.len());
        let held: usize = e.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(held, e.len());
        // The latest hosts are kept.
        for _ in 0..30 {
            e.record("h999:80", Duration::from_millis(5));
        }
        assert!(e.delay("h999:80") < Duration::from_millis(6));
    }
}
