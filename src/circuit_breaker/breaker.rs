//! The breaker's state machine: one [`Breaker`] per key, sync and without I/O.
//!
//! Every method takes `now`, the time since the layer's epoch, so tests drive it exactly.
//!
//! The hot path of a closed breaker is lock-free: admitting a call is one atomic load of the
//! packed generation and state; recording its outcome is a load of the same word (to drop
//! results of calls admitted before a transition), with the ratio rule one `fetch_add` on the
//! current bucket (the failure and call counts are packed in one `u64`) and a load of each of
//! the ten buckets to evaluate it, and with the run rule a load of the run (a success after a
//! success writes nothing) or a `fetch_add` on it (a failure). Transitions (trip, half-open, close, isolate, reset) and
//! everything in the half-open state take the breaker's own mutex: they are rare, and
//! half-open admits only a few calls anyway.
//!
//! Each transition bumps the generation, and each [`Permit`] carries the generation it was
//! issued in. A result whose generation is not the current one is dropped: a call that started
//! before a trip cannot re-trip the breaker or extend its break, and a probe admitted in an
//! earlier half-open period cannot count in a later one.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::classify::FailureClass;
use crate::event::CircuitState;

/// The number of buckets the ratio window is kept in.
pub(crate) const BUCKETS: u64 = 10;
/// Fixed-point scale of the failure ratio (parts per million), so the rule is exact integer
/// arithmetic: `failures · SCALE ≥ calls · ratio_ppm`.
pub(crate) const SCALE: u64 = 1_000_000;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const STATE_BITS: u32 = 2;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

/// `open_until` of an isolated breaker: never reached, and no retry-after hint.
const ISOLATED: u64 = u64::MAX;

/// One failure in a packed bucket (the high half counts failures, the low half calls).
const FAILURE: u64 = 1 << 32;
const CALLS_MASK: u64 = FAILURE - 1;
pub(crate) use crate::time::nanos;

fn state_of(gen_state: u64) -> CircuitState {
    match gen_state & STATE_MASK {
        CLOSED => CircuitState::Closed,
        OPEN => CircuitState::Open,
        _ => CircuitState::HalfOpen,
    }
}

fn pack(gen: u64, state: u64) -> u64 {
    (gen << STATE_BITS) | state
}

/// The ratio rule: failures / calls over the window reach `ratio_ppm / SCALE`, with at least
/// `min_calls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ratio {
    pub(crate) ratio_ppm: u64,
    pub(crate) min_calls: u32,
}

/// The breaker's immutable parameters, shared by every key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    /// The ratio rule; `None`: off. Either rule trips a closed breaker.
    pub(crate) ratio: Option<Ratio>,
    /// The run rule: this many failures in a row (at least 1); `None`: off.
    pub(crate) consecutive: Option<u32>,
    /// A probe's own timeout, doubled for each probe in a row it cut; `None`: off.
    pub(crate) probe_timeout: Option<Duration>,
    /// Length of one of the `BUCKETS` buckets of the window; at least 1.
    pub(crate) bucket_nanos: u64,
    pub(crate) slow_call: Option<Duration>,
    pub(crate) break_base: Duration,
    /// At least 1 and finite.
    pub(crate) growth: f64,
    /// At least `break_base`.
    pub(crate) break_max: Duration,
    /// At least 1.
    pub(crate) permits: u32,
}

/// What an outcome means to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure,
    /// Neither: it does not count, and a probe gives its permit back.
    Ignore,
}

impl Policy {
    /// ServerError, Timeout and Network are failures; Success (unless slow) and ClientError are
    /// successes; Throttled, Cancelled and Rejected are ignored. A 4xx is never a failure, even
    /// when slow. `elapsed` (the call's time) is asked for a success with `slow_call` only.
    pub(crate) fn verdict(
        &self,
        class: FailureClass,
        elapsed: impl FnOnce() -> Duration,
    ) -> Verdict {
        match class {
            FailureClass::ServerError | FailureClass::Timeout | FailureClass::Network => {
                Verdict::Failure
            }
            FailureClass::Success => match self.slow_call {
                Some(t) if elapsed() >= t => Verdict::Failure,
                _ => Verdict::Success,
            },
            FailureClass::ClientError => Verdict::Success,
            FailureClass::Throttled | FailureClass::Cancelled | FailureClass::Rejected => {
                Verdict::Ignore
            }
        }
    }

    /// The break after `prev` (the previous trip's, when the breaker has not closed since).
    pub(crate) fn next_break(&self, prev: Option<Duration>) -> Duration {
        let Some(prev) = prev else {
            return self.break_base;
        };
        let prev = prev.min(self.break_max);
        if self.growth <= 1.0 {
            return prev;
        }
        // Saturates at the cap: an overflow (or a product past `Duration::MAX`) is the cap.
        Duration::try_from_secs_f64(prev.as_secs_f64() * self.growth)
            .map_or(self.break_max, |d| d.max(prev).min(self.break_max))
    }

    /// The timeout of a probe admitted after `cut` probes in a row were cut by theirs:
    /// the base doubled `cut` times, saturating.
    pub(crate) fn probe_timeout_after(&self, cut: u32) -> Option<Duration> {
        self.probe_timeout
            .map(|base| base.saturating_mul(1u32 << cut.min(31)))
    }

    /// The longest break a trip can give.
    pub(crate) fn longest_break(&self) -> Duration {
        if self.growth > 1.0 {
            self.break_max.max(self.break_base)
        } else {
            self.break_base
        }
    }
}

/// What a breaker holds at one instant ([`Breaker::snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) state: CircuitState,
    /// Calls and failures over the window (0 without the ratio rule).
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    /// Failures in a row (`None` without the run rule).
    pub(crate) consecutive: Option<u32>,
    /// Open and not isolated: how long until the break is over (zero once it is, until the
    /// next call moves the breaker to half-open).
    pub(crate) half_open_in: Option<Duration>,
    pub(crate) isolated: bool,
}

/// A state change, for the stage to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
    /// How long it stays open, for a transition to `Open` (`None` when isolated).
    pub(crate) open_for: Option<Duration>,
}

/// What the breaker decided for a call.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Send it, and record its outcome with the permit (a probe's says its own timeout).
    Admitted(Permit),
    /// Do not send it; the hint says when trying again may succeed (`None` when isolated).
    /// The breaker comes back for the stage's report.
    Rejected(Option<Duration>, Arc<Breaker>),
}

enum Decision {
    Admit {
        gen: u64,
        probe: bool,
        /// A probe's own timeout in milliseconds; 0: none.
        timeout_ms: u32,
    },
    Reject(Option<Duration>),
}

/// The rarely changed part of the state, under the breaker's mutex.
#[derive(Debug, Default)]
struct Trans {
    /// Probes admitted in this half-open period and not finished.
    in_flight: u32,
    /// Probes of this half-open period that succeeded.
    succeeded: u32,
    /// The last trip's break, while the breaker has not closed since (for growth).
    last_break: Option<Duration>,
    /// Probes in a row cut by their own timeout (each doubles the next probe's timeout); any
    /// other outcome of a probe, and closing, sets it back to 0.
    probes_cut: u32,
    /// The latest instant (nanoseconds since the epoch) by which the probes of this half-open
    /// period will have timed out; 0 when they have no timeout.
    probes_due: u64,
    /// When the latest probe of this half-open period was admitted (nanoseconds since the
    /// epoch): the base probe timeout after it, another may relieve the probes still out.
    latest_probe: u64,
    /// Probes admitted before this instant were relieved by a later one: their failures no
    /// longer count (the later probe's outcome does); their successes still do. 0: none.
    fresh_since: u64,
}

impl Trans {
    /// Forgets the probes of a half-open period that ended.
    fn clear_probes(&mut self) {
        self.in_flight = 0;
        self.succeeded = 0;
        self.probes_due = 0;
        self.latest_probe = 0;
        self.fresh_since = 0;
    }

    /// Whether a probe admitted at `start` was relieved by a later one.
    fn relieved(&self, start: u64) -> bool {
        start < self.fresh_since
    }
}

/// One breaker: the state of one key.
pub(crate) struct Breaker {
    policy: Arc<Policy>,
    key: Arc<str>,
    /// Generation and state, packed: `gen << 2 | state`.
    gen_state: AtomicU64,
    /// While open: when the break ends, in nanoseconds since the epoch (`ISOLATED`: never).
    open_until: AtomicU64,
    /// When a call last looked this breaker up, in nanoseconds (for idle eviction).
    last_used: AtomicU64,
    /// The ratio rule: `BUCKETS` packed (failures, calls) counters; empty without it.
    buckets: Box<[AtomicU64]>,
    /// The index (time / bucket length) of the newest bucket.
    head: AtomicU64,
    /// The run rule: failures in a row.
    run: AtomicU32,
    trans: Mutex<Trans>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("key", &self.key)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub(crate) fn new(policy: Arc<Policy>, key: Arc<str>, now: Duration) -> Self {
        let t = nanos(now);
        let buckets = match policy.ratio {
            Some(_) => (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            None => Box::default(),
        };
        Breaker {
            head: AtomicU64::new(t / policy.bucket_nanos.max(1)),
            policy,
            key,
            gen_state: AtomicU64::new(pack(0, CLOSED)),
            open_until: AtomicU64::new(0),
            last_used: AtomicU64::new(t),
            buckets,
            run: AtomicU32::new(0),
            trans: Mutex::new(Trans::default()),
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn key_arc(&self) -> Arc<str> {
        self.key.clone()
    }

    pub(crate) fn state(&self) -> CircuitState {
        state_of(self.gen_state.load(Ordering::Acquire))
    }

    pub(crate) fn is_isolated(&self) -> bool {
        self.gen_state.load(Ordering::Acquire) & STATE_MASK == OPEN
            && self.open_until.load(Ordering::Acquire) == ISOLATED
    }

    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Marks the breaker used at `t` (nanoseconds); writes only when `t` is `every` past the
    /// last mark, so a busy breaker's hot path does not write this word on each call.
    pub(crate) fn touch(&self, t: u64, every: u64) {
        if t > self.last_used.load(Ordering::Relaxed).saturating_add(every) {
            self.last_used.store(t, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Trans> {
        // The state under the lock is counters only: a panic elsewhere cannot leave it torn.
        self.trans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides whether a call may go. Lock-free when closed, or open with the break not over.
    /// Takes the `Arc` the caller holds, so the permit costs no extra reference count.
    pub(crate) fn acquire(self: Arc<Self>, now: Duration) -> (Admission, Option<Transition>) {
        let gs = self.gen_state.load(Ordering::Acquire);
        match gs & STATE_MASK {
            CLOSED => {
                return (
                    Admission::Admitted(Permit::new(self, gs >> STATE_BITS, false, 0, now)),
                    None,
                )
            }
            OPEN => {
                let until = self.open_until.load(Ordering::Acquire);
                let t = nanos(now);
                if t < until {
                    return (Admission::Rejected(hint(until, t), self), None);
                }
            }
            _ => {}
        }
        self.acquire_slow(now)
    }

    fn acquire_slow(self: Arc<Self>, now: Duration) -> (Admission, Option<Transition>) {
        let (decision, transition) = self.decide(now);
        let admission = match decision {
            Decision::Admit {
                gen,
                probe,
                timeout_ms,
            } => Admission::Admitted(Permit::new(self, gen, probe, timeout_ms, now)),
            Decision::Reject(hint) => Admission::Rejected(hint, self),
        };
        (admission, transition)
    }

    /// The decision for a call when the breaker is not plainly closed or open. Under the lock.
    fn decide(&self, now: Duration) -> (Decision, Option<Transition>) {
        let mut tr = self.lock();
        let gs = self.gen_state.load(Ordering::Acquire);
        let mut gen = gs >> STATE_BITS;
        let mut transition = None;
        match gs & STATE_MASK {
            CLOSED => {
                let admit = Decision::Admit {
                    gen,
                    probe: false,
                    timeout_ms: 0,
                };
                return (admit, None);
            }
            OPEN => {
                let until = self.open_until.load(Ordering::Acquire);
                let t = nanos(now);
                if t < until {
                    return (Decision::Reject(hint(until, t)), None);
                }
                // The break is over: this call makes the move to half-open (lazily, no timer).
                tr.clear_probes();
                gen += 1;
                self.gen_state
                    .store(pack(gen, HALF_OPEN), Ordering::Release);
                transition = Some(Transition {
                    from: CircuitState::Open,
                    to: CircuitState::HalfOpen,
                    open_for: None,
                });
            }
            _ => {}
        }
        // Half-open: admit while fewer than `permits` probes are in flight or have succeeded,
        // or once the latest probe has been out for the base probe timeout (a relief).
        let t = nanos(now);
        let relief = self.relief_at(&tr);
        let relieves = relief.is_some_and(|at| t >= at);
        if tr.in_flight + tr.succeeded < self.policy.permits || relieves {
            if relieves {
                tr.fresh_since = t;
            }
            tr.in_flight += 1;
            tr.latest_probe = t;
            let timeout_ms = self
                .policy
                .probe_timeout_after(tr.probes_cut)
                .map_or(0, millis_ceil);
            if timeout_ms != 0 {
                let due = t.saturating_add(u64::from(timeout_ms) * 1_000_000);
                tr.probes_due = tr.probes_due.max(due);
            }
            let admit = Decision::Admit {
                gen,
                probe: true,
                timeout_ms,
            };
            return (admit, transition);
        }
        // The probes out will have answered or timed out by `probes_due`, and another may be
        // sent at `relief`: whichever comes first.
        let due = (tr.probes_due > t).then_some(tr.probes_due);
        let hint = match (due, relief) {
            (Some(d), Some(r)) => Some(d.min(r)),
            (d, r) => d.or(r),
        };
        match hint {
            Some(at) => (
                Decision::Reject(Some(Duration::from_nanos(at - t))),
                transition,
            ),
            // Probes without a timeout of their own: if they fail, the breaker opens for (at
            // least) the last break.
            None => {
                let hint = tr.last_break.unwrap_or(self.policy.break_base);
                (Decision::Reject(Some(hint)), transition)
            }
        }
    }

    /// When another probe may relieve the ones out: once the latest has been out for the base
    /// probe timeout (which it outlives only once cuts have doubled the timeout), so a host
    /// that is slow is probed once per base timeout, each probe given the doubled timeout.
    /// Only with probe timeouts (without them, the probes out are awaited), and only while a
    /// probe is out (else the permits admit the next).
    fn relief_at(&self, tr: &Trans) -> Option<u64> {
        let base = self.policy.probe_timeout?;
        if tr.in_flight == 0 {
            return None;
        }
        Some(tr.latest_probe.saturating_add(nanos(base)))
    }

    fn bucket_at(&self, t: u64) -> usize {
        let idx = t / self.policy.bucket_nanos.max(1);
        let mut cur = self.head.load(Ordering::Acquire);
        while idx > cur {
            match self
                .head
                .compare_exchange_weak(cur, idx, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // We moved the window: clear the buckets that fell out of it.
                    let stale = (idx - cur).min(BUCKETS);
                    for g in (idx - stale + 1)..=idx {
                        self.buckets[(g % BUCKETS) as usize].store(0, Ordering::Release);
                    }
                    break;
                }
                Err(actual) => cur = actual,
            }
        }
        (idx.max(cur) % BUCKETS) as usize
    }

    /// (calls, failures) over the window, as of the last `bucket_at`.
    fn window_counts(&self) -> (u64, u64) {
        self.buckets.iter().fold((0, 0), |(c, f), b| {
            let v = b.load(Ordering::Acquire);
            (c + (v & CALLS_MASK), f + (v >> 32))
        })
    }

    /// Records the outcome of a call admitted while closed: either rule may trip it.
    fn record_closed(&self, gen: u64, verdict: Verdict, now: Duration) -> Option<Transition> {
        if verdict == Verdict::Ignore || self.gen_state.load(Ordering::Acquire) != pack(gen, CLOSED)
        {
            return None;
        }
        let failed = verdict == Verdict::Failure;
        let mut trips = false;
        if let Some(n) = self.policy.consecutive {
            if failed {
                trips = self.run.fetch_add(1, Ordering::AcqRel).saturating_add(1) >= n;
            } else if self.run.load(Ordering::Relaxed) != 0 {
                self.run.store(0, Ordering::Relaxed);
            }
        }
        if let Some(Ratio {
            ratio_ppm,
            min_calls,
        }) = self.policy.ratio
        {
            let i = self.bucket_at(nanos(now));
            self.buckets[i].fetch_add(if failed { FAILURE | 1 } else { 1 }, Ordering::AcqRel);
            if !trips {
                let (calls, failures) = self.window_counts();
                trips = calls >= u64::from(min_calls)
                    && failures.saturating_mul(SCALE) >= calls.saturating_mul(ratio_ppm);
            }
        }
        if trips {
            self.trip(gen, now)
        } else {
            None
        }
    }

    /// Opens a closed breaker of generation `gen` (unless another thread moved it already).
    fn trip(&self, gen: u64, now: Duration) -> Option<Transition> {
        let mut tr = self.lock();
        if self.gen_state.load(Ordering::Acquire) != pack(gen, CLOSED) {
            return None;
        }
        Some(self.open(&mut tr, gen, CircuitState::Closed, now))
    }

    /// Moves to open for the next break (growing it after a previous trip). Under the lock.
    fn open(&self, tr: &mut Trans, gen: u64, from: CircuitState, now: Duration) -> Transition {
        self.open_since(tr, gen, from, now, now)
    }

    /// [`open`](Self::open) for a break that counts from `since` (at most `now`): it ends at
    /// `since` plus the break, or at `now` if that is past (the next call probes again).
    fn open_since(
        &self,
        tr: &mut Trans,
        gen: u64,
        from: CircuitState,
        now: Duration,
        since: Duration,
    ) -> Transition {
        let brk = self.policy.next_break(tr.last_break);
        tr.last_break = Some(brk);
        tr.clear_probes();
        // What is left of the break that began at `since`.
        let left = brk.saturating_sub(now.saturating_sub(since));
        // A break too long to represent ends at `ISOLATED - 1`: far off, but still a break.
        let until = nanos(now).saturating_add(nanos(left)).min(ISOLATED - 1);
        self.open_until.store(until, Ordering::Release);
        self.gen_state.store(pack(gen + 1, OPEN), Ordering::Release);
        Transition {
            from,
            to: CircuitState::Open,
            open_for: Some(left),
        }
    }

    /// Moves to closed with a fresh window. Under the lock.
    fn close(&self, tr: &mut Trans, gen: u64, from: CircuitState) -> Option<Transition> {
        *tr = Trans::default();
        for b in self.buckets.iter() {
            b.store(0, Ordering::Release);
        }
        self.run.store(0, Ordering::Release);
        self.gen_state
            .store(pack(gen + 1, CLOSED), Ordering::Release);
        (from != CircuitState::Closed).then_some(Transition {
            from,
            to: CircuitState::Closed,
            open_for: None,
        })
    }

    /// Records the outcome of a probe admitted at `start` (nanoseconds since the epoch);
    /// `timed_out`: it failed as a timeout (its break counts from when it was sent).
    fn record_probe(
        &self,
        gen: u64,
        verdict: Verdict,
        now: Duration,
        start: u64,
        timed_out: bool,
    ) -> Option<Transition> {
        let mut tr = self.lock();
        if self.gen_state.load(Ordering::Acquire) != pack(gen, HALF_OPEN) {
            return None;
        }
        tr.in_flight = tr.in_flight.saturating_sub(1);
        match verdict {
            Verdict::Ignore => None,
            // A later probe relieved this one: its outcome stands for the host now.
            Verdict::Failure if tr.relieved(start) => None,
            Verdict::Failure => {
                // Not cut by its own timeout: the host failed, or hung past the timeouts below
                // too (it is not merely slow), so the next probe's timeout starts again from
                // the base. A probe that timed out spent its time in the break: the break
                // counts from when it was sent.
                tr.probes_cut = 0;
                let since = if timed_out {
                    Duration::from_nanos(start)
                } else {
                    now
                };
                Some(self.open_since(&mut tr, gen, CircuitState::HalfOpen, now, since))
            }
            // A success counts even from a relieved probe: the host answered within the
            // probe's timeout (a host slower than a break is let in this way).
            Verdict::Success => {
                tr.probes_cut = 0;
                tr.succeeded += 1;
                if tr.succeeded >= self.policy.permits {
                    self.close(&mut tr, gen, CircuitState::HalfOpen)
                } else {
                    None
                }
            }
        }
    }

    /// Records a probe admitted at `start` that its own timeout cut: a failure, which also
    /// doubles the next probe's timeout. Its break counts from when it was sent: the probe's
    /// timeout is part of it, so probes of a host that hangs leave one break apart, start to
    /// start, as those of a host that fails at once do (until the doubled timeout outlives the
    /// base and reliefs go once per base timeout). A relieved probe's cut counts for nothing:
    /// the probe that relieved it has the same timeout and is still out.
    fn record_probe_cut(&self, gen: u64, now: Duration, start: u64) -> Option<Transition> {
        let mut tr = self.lock();
        if self.gen_state.load(Ordering::Acquire) != pack(gen, HALF_OPEN) {
            return None;
        }
        if tr.relieved(start) {
            tr.in_flight = tr.in_flight.saturating_sub(1);
            return None;
        }
        tr.probes_cut = tr.probes_cut.saturating_add(1);
        let sent = Duration::from_nanos(start);
        Some(self.open_since(&mut tr, gen, CircuitState::HalfOpen, now, sent))
    }

    /// Gives back the permit of a probe that ended without a verdict (its future was dropped).
    fn release(&self, gen: u64) {
        let mut tr = self.lock();
        if self.gen_state.load(Ordering::Acquire) == pack(gen, HALF_OPEN) {
            tr.in_flight = tr.in_flight.saturating_sub(1);
        }
    }

    /// Holds the breaker open until [`reset`](Self::reset).
    pub(crate) fn isolate(&self) -> Option<Transition> {
        let mut tr = self.lock();
        let gs = self.gen_state.load(Ordering::Acquire);
        tr.clear_probes();
        self.open_until.store(ISOLATED, Ordering::Release);
        self.gen_state
            .store(pack((gs >> STATE_BITS) + 1, OPEN), Ordering::Release);
        let from = state_of(gs);
        (from != CircuitState::Open).then_some(Transition {
            from,
            to: CircuitState::Open,
            open_for: None,
        })
    }

    /// Closes the breaker with a fresh window and no break growth, whatever its state.
    pub(crate) fn reset(&self) -> Option<Transition> {
        let mut tr = self.lock();
        let gs = self.gen_state.load(Ordering::Acquire);
        self.open_until.store(0, Ordering::Release);
        self.close(&mut tr, gs >> STATE_BITS, state_of(gs))
    }

    /// What the breaker holds at `now`, read without changing it: no lock, no move of the
    /// window (buckets that fell out of it by `now` are left out, not cleared), no lazy move
    /// to half-open, no touch of the last-use mark. The words are read one by one, so a
    /// snapshot taken during a transition may mix the two sides of it.
    pub(crate) fn snapshot(&self, now: Duration) -> Snapshot {
        let gs = self.gen_state.load(Ordering::Acquire);
        let state = state_of(gs);
        let t = nanos(now);
        let (calls, failures) = match self.policy.ratio {
            Some(_) => self.window_counts_at(t),
            None => (0, 0),
        };
        let consecutive = self
            .policy
            .consecutive
            .map(|_| self.run.load(Ordering::Acquire));
        let (mut half_open_in, mut isolated) = (None, false);
        if gs & STATE_MASK == OPEN {
            let until = self.open_until.load(Ordering::Acquire);
            isolated = until == ISOLATED;
            half_open_in = (!isolated).then(|| Duration::from_nanos(until.saturating_sub(t)));
        }
        Snapshot {
            state,
            calls,
            failures,
            consecutive,
            half_open_in,
            isolated,
        }
    }

    /// (calls, failures) over the window that ends at `t`, read only: the buckets hold the
    /// indexes `head - BUCKETS + 1 ..= head` (the move of `head` cleared the others), and of
    /// those the window at `t` keeps the ones above `t`'s index less `BUCKETS`.
    fn window_counts_at(&self, t: u64) -> (u64, u64) {
        let idx = t / self.policy.bucket_nanos.max(1);
        let head = self.head.load(Ordering::Acquire);
        let first = head
            .saturating_sub(BUCKETS - 1)
            .max(idx.saturating_sub(BUCKETS - 1));
        (first..=head).fold((0, 0), |(c, f), g| {
            // No bucket without the ratio rule: nothing counted.
            let v = self
                .buckets
                .get((g % BUCKETS) as usize)
                .map_or(0, |b| b.load(Ordering::Acquire));
            (c + (v & CALLS_MASK), f + (v >> 32))
        })
    }

    #[cfg(test)]
    pub(crate) fn probes(&self) -> (u32, u32) {
        let tr = self.lock();
        (tr.in_flight, tr.succeeded)
    }

    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.gen_state.load(Ordering::Acquire) >> STATE_BITS
    }

    #[cfg(test)]
    pub(crate) fn last_break(&self) -> Option<Duration> {
        self.lock().last_break
    }

    #[cfg(test)]
    pub(crate) fn probes_cut(&self) -> u32 {
        self.lock().probes_cut
    }
}

/// A duration in whole milliseconds, rounded up, from 1 to `u32::MAX` (49 days: a probe
/// timeout that long never fires in practice).
pub(crate) fn millis_ceil(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX).max(1)
}

fn hint(until: u64, t: u64) -> Option<Duration> {
    (until != ISOLATED).then(|| Duration::from_nanos(until - t))
}

/// The right to send one call, and to record its outcome. A probe's permit is given back when
/// dropped unrecorded (its call was cancelled), so half-open can admit another.
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    gen: u64,
    probe: bool,
    /// When it was admitted, in nanoseconds since the epoch, and a probe's own timeout in
    /// milliseconds (0: none): not `Duration`s, as a permit sits in every call's future, and
    /// these leave room there for a probe's timer.
    start: u64,
    timeout_ms: u32,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.breaker.key)
            .field("gen", &self.gen)
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl Permit {
    fn new(breaker: Arc<Breaker>, gen: u64, probe: bool, timeout_ms: u32, start: Duration) -> Self {
        Permit {
            breaker,
            gen,
            probe,
            timeout_ms,
            start: nanos(start),
            done: false,
        }
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// When it was admitted, since the epoch.
    fn started(&self) -> Duration {
        Duration::from_nanos(self.start)
    }

    /// A probe's own timeout, if it has one (whole milliseconds, rounded up).
    pub(crate) fn probe_timeout(&self) -> Option<Duration> {
        (self.timeout_ms != 0).then(|| Duration::from_millis(u64::from(self.timeout_ms)))
    }

    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    #[cfg(test)]
    pub(crate) fn gen(&self) -> u64 {
        self.gen
    }

    /// Whether a later probe relieved this one (see [`Trans::fresh_since`]).
    #[cfg(test)]
    pub(crate) fn is_relieved(&self) -> bool {
        self.probe && self.breaker.lock().relieved(self.start)
    }

    /// Whether the call has run for as long as the policy's `slow_call` threshold (if any) by
    /// `now`, timed as [`record_left`](Self::record_left) times it: a call the caller's deadline
    /// cut short after that long was slow for the host.
    pub(crate) fn ran_slow(&self, now: Duration, left: Option<Duration>) -> bool {
        let sent = left.map_or(self.started(), |l| l.max(self.started()));
        self.breaker
            .policy
            .slow_call
            .is_some_and(|t| now.saturating_sub(sent) >= t)
    }

    /// [`record_left`](Self::record_left) for a call that left for the host when admitted.
    #[cfg(test)]
    pub(crate) fn record(&mut self, class: FailureClass, now: Duration) -> Option<Transition> {
        self.record_left(class, now, None)
    }

    /// Records the call's class; the time it took is `now` less the time it was admitted, or
    /// less `left`, when it left for the host later than that (it waited below the breaker).
    /// Only the first record of a permit counts.
    pub(crate) fn record_left(
        &mut self,
        class: FailureClass,
        now: Duration,
        left: Option<Duration>,
    ) -> Option<Transition> {
        if std::mem::replace(&mut self.done, true) {
            return None;
        }
        let b = &self.breaker;
        let verdict = b.policy.verdict(class, || {
            let start = self.started();
            now.saturating_sub(left.map_or(start, |l| l.max(start)))
        });
        if self.probe {
            let timed_out = class == FailureClass::Timeout;
            b.record_probe(self.gen, verdict, now, self.start, timed_out)
        } else {
            b.record_closed(self.gen, verdict, now)
        }
    }
}

impl Permit {
    /// Records that the probe's own timeout cut it: a failure of the host, which opens the
    /// breaker again and doubles the next probe's timeout. For a probe only (a closed call's
    /// permit records nothing). Only the first record of a permit counts.
    pub(crate) fn record_cut(&mut self, now: Duration) -> Option<Transition> {
        if std::mem::replace(&mut self.done, true) || !self.probe {
            return None;
        }
        self.breaker.record_probe_cut(self.gen, now, self.start)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.done {
            self.breaker.release(self.gen);
        }
    }
}
