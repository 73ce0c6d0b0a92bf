//! Circuit breaker: stop sending to a host that keeps failing, then probe it.
//!
//! Why: when a host is down or overloaded, sending it more calls only adds to its load and
//! makes every caller wait for a timeout. A breaker watches the outcomes and, once the host
//! looks broken, *opens*: calls fail at once with [`ErrorKind::CircuitOpen`] (and a
//! [`retry_after`](Error::retry_after) hint) without reaching the host. After a break it lets a
//! few probe calls through (*half-open*); if they all succeed it *closes* and traffic flows
//! again, if one fails it opens for another break. Placed inside the retry stage (the standard
//! order), an open circuit also stops retries: a call turned away on its first attempt fails
//! at once, and a retry turned away fails at once or, by default, waits for the circuit within
//! its deadline and the retry budget
//! ([`Retry::no_circuit_wait`](crate::retry::Retry::no_circuit_wait) says when, and why).
//!
//! - **What counts**, as the [`Classifier`] says: `ServerError`, `Timeout` and `Network` are
//!   failures; `Success` and `ClientError` are successes (a 4xx is the caller's problem, never
//!   the host's); `Throttled` (429) is ignored, as it is the rate limiter's signal; a
//!   cancelled call (its future dropped) and a rejection by another stage are ignored too.
//!   So is a call cut short by the caller's own deadline (the total timeout, or a request's
//!   [`timeout`](crate::RequestBuilder::timeout)) before the host answered: the caller ran
//!   out of time, which says nothing of the host. The attempt timeout and the transport's own
//!   timeouts that fire before the deadline are the host's failures. So a host that hangs is
//!   seen failing through a timeout shorter than the callers' deadlines, or through
//!   [`slow_call`](CircuitBreaker::slow_call): a call the deadline cuts short below the breaker
//!   (the attempt timeout fires at the deadline when that comes first, and so does reqwest's
//!   per-request timeout) after running that long counts as a failure. With
//!   `no_attempt_timeout` nothing below the breaker fires at the deadline: the total timeout
//!   above drops the call, which counts as cancelled, and a host that hangs is never seen
//!   failing. Keep an attempt timeout when the breaker is on.
//!   Optionally a success slower than [`CircuitBreaker::slow_call`] counts as a failure.
//! - **When it opens**: on either of two rules, both on by default. The *ratio*: failures
//!   reach [`failure_ratio`](CircuitBreaker::failure_ratio) (0.5) of the calls over the last
//!   [`window`](CircuitBreaker::window) (30 s, kept in ten buckets), once the window holds at
//!   least [`min_calls`](CircuitBreaker::min_calls) (20). The *run*:
//!   [`consecutive_failures`](CircuitBreaker::consecutive_failures) (12) failures in a row. The
//!   ratio sees a host that fails often; the run sees a total outage at once, even after a
//!   long healthy spell whose successes fill the window (at 100 calls a second its 30 s hold
//!   3,000: in `examples/simulate.rs`'s outage the ratio alone took 12.1 s to open it, the run
//!   takes 0.1 s), and it sees a host with too little traffic for `min_calls`. 12 is long
//!   enough that scattered failures do not make a run (at 30 % failures, about once in 2.7
//!   million attempts): the numbers are in
//!   [`consecutive_failures`](CircuitBreaker::consecutive_failures).
//!   [`no_consecutive_failures`](CircuitBreaker::no_consecutive_failures) keeps the ratio
//!   alone, [`no_failure_ratio`](CircuitBreaker::no_failure_ratio) the run alone.
//! - **Open** for [`break_duration`](CircuitBreaker::break_duration) (5 s), optionally growing
//!   on each trip that follows a failed probe ([`break_growth`](CircuitBreaker::break_growth)).
//!   The move to half-open is lazy: the first call after the break makes it, no timer runs.
//! - **Half-open** admits exactly [`half_open_permits`](CircuitBreaker::half_open_permits) (1)
//!   probes; other calls are rejected at once, their `retry_after` the time until the probes
//!   will have timed out or may be relieved (below). All probes succeed: closed, with a fresh
//!   window. One fails: open again. A probe whose call is cancelled, or ends in a class the breaker ignores, gives its
//!   permit back, so the breaker cannot be stuck half-open.
//! - **Probe timeout**: a probe is bounded by its own
//!   [`probe_timeout`](CircuitBreaker::probe_timeout) (1 s): a probe it cuts is cancelled,
//!   fails with [`TimeoutKind::Probe`] and counts as the host's
//!   failure (open again, for a break that counts from when the probe was sent, as after any
//!   probe that timed out). Each probe in a row it cuts doubles the next one's, so a host
//!   merely slower than the timeout is let back in a few breaks later; any other outcome of a
//!   probe starts again from 1 s. A probe that has been out for the base timeout (1 s), which
//!   only a doubled one outlives, is *relieved*: the next call is admitted as a probe too, with
//!   the same timeout, and the latest probe speaks for the host (a relieved probe's success
//!   still closes the breaker; its failure or cut no longer counts). So a slow host is probed
//!   about once a second, with a few probes out at most, and the first probe after it recovers
//!   lets traffic back in.
//!
//!   Why: without it, a probe sent to a host that hangs held the breaker half-open until the
//!   attempt timeout (10 s), every other call rejected. In `examples/simulate.rs`'s slow
//!   scenario (answers past the attempt timeout from 30 s to 60 s) the standard pipeline
//!   succeeded for 67.5 % of requests against 75.0 % with no resilience, and let traffic back
//!   9.2 s after the host recovered. With it: 0.3 s. That one run depends on where the probes
//!   fall when the host recovers. With the doubled timeouts alone, over 41 runs whose slow
//!   spell ends anywhere from 55 s to 65 s, traffic came back 4.1 s after the host on average
//!   (at most 8.1 s: an 8 s probe out when the host recovered), against 9.2 s (at most 14.2 s)
//!   before. A fixed timeout would not keep such a probe out, but a probe timeout is also a
//!   latency the host must beat to be let back in: a host whose healthy answers take longer
//!   would be kept open for ever. Relief keeps the doubling and drops its price: 0.7 s on
//!   average, 1.1 s at most, over the same 41 runs. 1 s is above most APIs' answers; the
//!   probes of a host that hangs stay bounded by the attempt timeout (a probe it cuts starts
//!   the doubling again), so at 1 s apart no more than about ten are ever out.
//! - **Late results** of calls that started before a transition are dropped: they cannot
//!   re-trip the breaker or extend its break.
//! - **Keys**: one breaker per host (`host:port`) by default, or one for all hosts
//!   ([`global`](CircuitBreaker::global)). Per-host breakers are bounded by
//!   [`max_hosts`](CircuitBreaker::max_hosts) (10,000) and evicted when idle for longer than
//!   the window plus the longest break, so 100,000 hosts do not grow memory without bound.
//! - **By hand**: [`CircuitBreakerHandle`] reads a host's [`state`](CircuitBreakerHandle::state),
//!   [`isolate`](CircuitBreakerHandle::isolate)s it (open until reset) and
//!   [`reset`](CircuitBreakerHandle::reset)s it.
//!
//! Every transition is an [`Event::CircuitStateChanged`] (and a `tracing` event, at `warn` for
//! openings), every rejection an [`Event::Rejected`].
//!
//! The hot path takes no global lock: a closed breaker admits a call with one atomic load and
//! records it with a few atomic operations on its bucket counters; finding a host's breaker
//! takes a read lock on one of up to 64 shards of the map. Transitions take a per-breaker
//! mutex. Under contention the counts are approximate, never unsafe: an outcome recorded in
//! the instant the window moves to a new bucket may be cleared with it.
//!
//! [`Event::CircuitStateChanged`]: crate::Event::CircuitStateChanged
//! [`Event::Rejected`]: crate::Event::Rejected

mod breaker;
mod future;
mod keyed;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;
use url::Url;

use self::breaker::{Admission, Breaker, Policy, Ratio, Snapshot, Transition, BUCKETS, SCALE};
pub use self::future::CircuitBreakerFuture;
use self::future::ProbeTimer;
use self::keyed::HostMap;
use crate::classify::Classifier;
use crate::error::{ConfigError, Error, ErrorKind, TimeoutKind};
use crate::event::{CircuitState, Event, Hook};
use crate::health::CircuitHealth;
use crate::host::with_host_key;

/// The circuit breaker's configuration.
///
/// Default: opens when at least half of the calls to a host failed over the last 30 s, once
/// there were at least 20, or when 12 failed in a row; stays open 5 s (no growth); then admits
/// 1 probe, cut at 1 s (doubled for each probe in a row it cut). One breaker per host, at most
/// 10,000 hosts. See the [module docs](self) for what counts as a failure, and why these
/// numbers.
///
/// ```
/// use std::time::Duration;
/// use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
/// use palisade::CircuitState;
///
/// let cb = CircuitBreaker::default()
///     .failure_ratio(0.25)
///     .window(Duration::from_secs(60))
///     .min_calls(50)
///     .slow_call(Duration::from_secs(2))
///     .break_duration(Duration::from_secs(10))
///     .break_growth(2.0, Duration::from_secs(120))
///     .consecutive_failures(20)
///     .probe_timeout(Duration::from_secs(5))
///     .half_open_permits(3);
/// let layer = CircuitBreakerLayer::new(cb)?;
/// let breakers = layer.handle();
/// assert_eq!(breakers.state("api.example.com:443"), CircuitState::Closed);
///
/// // Five failures in a row, and no ratio:
/// let strict = CircuitBreaker::default()
///     .consecutive_failures(5)
///     .no_failure_ratio();
/// // The ratio alone, and probes bounded by the attempt timeout only:
/// let ratio = CircuitBreaker::default()
///     .no_consecutive_failures()
///     .no_probe_timeout();
/// # let _ = (strict, ratio);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a policy does nothing until given to a client or a layer"]
pub struct CircuitBreaker {
    failure_ratio: f64,
    ratio_on: bool,
    window: Duration,
    min_calls: u32,
    consecutive: u32,
    consecutive_on: bool,
    probe_timeout: Option<Duration>,
    slow_call: Option<Duration>,
    break_duration: Duration,
    growth: Option<(f64, Duration)>,
    half_open_permits: u32,
    per_host: bool,
    max_hosts: usize,
}

/// The default run of failures in a row that opens the breaker: see
/// [`consecutive_failures`](CircuitBreaker::consecutive_failures) for the numbers.
const DEFAULT_CONSECUTIVE: u32 = 12;
/// The default probe timeout: see [`probe_timeout`](CircuitBreaker::probe_timeout).
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            failure_ratio: 0.5,
            ratio_on: true,
            window: Duration::from_secs(30),
            min_calls: 20,
            consecutive: DEFAULT_CONSECUTIVE,
            consecutive_on: true,
            probe_timeout: Some(DEFAULT_PROBE_TIMEOUT),
            slow_call: None,
            break_duration: Duration::from_secs(5),
            growth: None,
            half_open_permits: 1,
            per_host: true,
            max_hosts: 10_000,
        }
    }
}

impl CircuitBreaker {
    /// Opens the breaker when failures reach this share of the calls in the window (and the
    /// window holds at least [`min_calls`](Self::min_calls)). Turns the ratio rule on, if
    /// [`no_failure_ratio`](Self::no_failure_ratio) had turned it off. Default 0.5; must be
    /// above 0 and at most 1. It is kept to six decimals.
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = ratio;
        self.ratio_on = true;
        self
    }

    /// Turns the ratio rule off: only a run of
    /// [`consecutive_failures`](Self::consecutive_failures) opens the breaker, and it keeps no
    /// window (so [`CircuitHealth`] shows no calls). The ratio rule is on
    /// by default; [`failure_ratio`](Self::failure_ratio) turns it back on. Turning both rules
    /// off is a [`ConfigError`]: nothing would open the breaker but
    /// [`isolate`](CircuitBreakerHandle::isolate).
    pub fn no_failure_ratio(mut self) -> Self {
        self.ratio_on = false;
        self
    }

    /// The span of time the ratio is computed over, kept in ten buckets (so outcomes leave
    /// the window a tenth of it at a time). Default 30 s; at least 10 ms. It also sets, with
    /// the longest break, how long a host stays in memory without calls.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The fewest calls the window must hold for the ratio to open the breaker: below it,
    /// even all failures leave it closed. Default 20; at least 1.
    pub fn min_calls(mut self, n: u32) -> Self {
        self.min_calls = n;
        self
    }

    /// Opens the breaker after `n` failures in a row, whatever the ratio (a success resets the
    /// run; outcomes the breaker ignores neither count nor reset it). This rule is on by
    /// default, alongside the ratio: the ratio is slow to see a total outage after a long
    /// healthy spell (at 100 calls a second its 30 s window holds 3,000 successes, and half of
    /// the calls must fail), while a run is seen at once. Turns the run rule on, if
    /// [`no_consecutive_failures`](Self::no_consecutive_failures) had turned it off. To open
    /// on a run only, as a breaker without a ratio, add
    /// [`no_failure_ratio`](Self::no_failure_ratio). Default 12; at least 1.
    ///
    /// Why 12: a run must be long enough that scattered failures do not make one, yet short
    /// enough that a host with little traffic is still seen failing. At a failure probability
    /// `p` per attempt, a run of `n` starts at a given attempt with probability
    /// `(1 - p)·p^n`: at `p` = 0.3 (well below the ratio's 0.5) and `n` = 12, 3.7 × 10⁻⁷.
    /// `examples/simulate.rs`'s 30 % scenario sends about 15,600 attempts in 120 s (100 calls
    /// a second, 1.3 attempts each): about 0.006 runs of 12 expected, a one-in-170 chance that
    /// the run opens the breaker at all, against 26 runs of 5 (Envoy's `consecutive_5xx`), 0.7
    /// of 8 and 0.06 of 10. Run with 60 seeds, the breaker opened in 60, 29, 5 and 2 of them
    /// for runs of 5, 8, 10 and 12 (at 5 the standard pipeline's success fell to 36 %, below
    /// the 70 % of no resilience at all); the 2 at 12 are the ratio's own, on its first 20
    /// calls, run rule or not. At 10 % failures a run of 12 is a 10⁻¹² event. In a total
    /// outage 12 failures take 0.1 s at 100 calls a second; a host called once a minute, with
    /// 3 attempts per call, is seen failing at its 4th call (the ratio, which needs
    /// [`min_calls`](Self::min_calls) in its window, never sees it).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive = n;
        self.consecutive_on = true;
        self
    }

    /// Turns the run rule off: only the [`failure_ratio`](Self::failure_ratio) opens the
    /// breaker. The run rule is on by default;
    /// [`consecutive_failures`](Self::consecutive_failures) turns it back on.
    pub fn no_consecutive_failures(mut self) -> Self {
        self.consecutive_on = false;
        self
    }

    /// Bounds each half-open probe by a timeout of its own: a probe that has not answered
    /// within `timeout` (from when the breaker admitted it) is cancelled, counts as a failure
    /// of the host (the breaker opens again) and fails with
    /// [`TimeoutKind::Probe`]. Without it a probe to a host that
    /// hangs holds the breaker half-open, every other call rejected, until the attempt
    /// timeout (10 s by default) cuts it.
    ///
    /// - While a probe is out, the calls the half-open breaker rejects carry, as their
    ///   [`retry_after`](Error::retry_after), the time left until it will have timed out or
    ///   may be relieved, whichever comes first.
    /// - The break that follows a probe that timed out counts from when the probe was sent:
    ///   its wait was part of the break. So a host that hangs gets one probe per break, start
    ///   to start, as one that fails at once does, while the timeout is shorter than the
    ///   break.
    /// - A probe out for `timeout` (the base, not the doubled one it may have) is relieved:
    ///   the next call is a probe too, with the same timeout. The latest probe's failure or
    ///   cut opens the breaker again, a relieved one's counts for nothing, and any probe's
    ///   success closes it. So a slow host is probed once per `timeout`, and traffic returns
    ///   within about `timeout` of its recovery whatever the doubling has reached.
    /// - Each probe in a row that the timeout cuts doubles the next one's (1 s, 2 s, 4 s, 8 s,
    ///   … by default): a host that is merely slower than `timeout`, but healthy, is let back
    ///   in a few breaks later rather than kept open for ever (one answering in 1.5 s at its
    ///   second probe, in 3 s at its third). Any other outcome of a probe starts again from
    ///   `timeout`: a probe that fails, or hangs until the attempt timeout cuts it (the host is
    ///   not slow but gone), and closing.
    ///
    /// The time counts from admission, so a wait for a rate-limit token below the breaker
    /// counts too. The caller's own deadline coming first is not the host's failure, as for
    /// any call: the probe's permit goes back.
    ///
    /// Default 1 s, above most APIs' answers; at least 1 ms, kept to the millisecond (rounded
    /// up). The [module docs](self) give the numbers behind it.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = Some(timeout);
        self
    }

    /// Lets probes run until a timeout below the breaker (the attempt timeout) or the caller's
    /// deadline ends them. Not the default.
    pub fn no_probe_timeout(mut self) -> Self {
        self.probe_timeout = None;
        self
    }

    /// Counts a success that took at least `threshold` (from when the call left for the host
    /// to the response's head) as a failure: a host that answers slowly is failing too. A wait
    /// in the rate limiter below the breaker (for a token, or for a pushback pause) is not the
    /// host's slowness and is not counted. A 4xx is never counted, slow or not. Off by
    /// default; above zero.
    pub fn slow_call(mut self, threshold: Duration) -> Self {
        self.slow_call = Some(threshold);
        self
    }

    /// How long the breaker stays open after it trips, before it admits a probe. After a
    /// probe that timed out, the break counts from when the probe was sent (see
    /// [`probe_timeout`](Self::probe_timeout)). Default 5 s; above zero.
    pub fn break_duration(mut self, d: Duration) -> Self {
        self.break_duration = d;
        self
    }

    /// Multiplies the break by `factor` on each trip that follows a failed probe (the breaker
    /// has not closed since the last trip), up to `max`. Closing resets it to
    /// [`break_duration`](Self::break_duration). Off by default (the break does not grow);
    /// `factor` must be a finite number of at least 1 and `max` at least the break duration.
    pub fn break_growth(mut self, factor: f64, max: Duration) -> Self {
        self.growth = Some((factor, max));
        self
    }

    /// How many probe calls a half-open breaker admits; all must succeed for it to close.
    /// Default 1; at least 1.
    pub fn half_open_permits(mut self, n: u32) -> Self {
        self.half_open_permits = n;
        self
    }

    /// One breaker per host (`host:port`, with the scheme's default port): a failing host
    /// does not stop calls to others. The default.
    pub fn per_host(mut self) -> Self {
        self.per_host = true;
        self
    }

    /// One breaker for every call through the layer, whatever its host. Its key in events is
    /// `""`. Not the default.
    pub fn global(mut self) -> Self {
        self.per_host = false;
        self
    }

    /// The most hosts whose breakers are kept at once (per host only). No host is evicted
    /// below it. To make room for a new host at the cap, hosts idle for longer than the window
    /// plus the longest break go first, then the least recently used one among the new host's
    /// shard of the map (64 hosts or more on average; its state is lost, as if it had been
    /// closed). An isolated host is never evicted. Default 10,000; at least 1.
    pub fn max_hosts(mut self, n: usize) -> Self {
        self.max_hosts = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let r = self.failure_ratio;
        if !(r > 0.0 && r <= 1.0) {
            return Err(ConfigError::new(
                "circuit_breaker.failure_ratio",
                format!("must be above 0 and at most 1, got {r}"),
            ));
        }
        if self.window < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "circuit_breaker.window",
                format!("must be at least 10ms, got {:?}", self.window),
            ));
        }
        if self.min_calls == 0 {
            return Err(ConfigError::new(
                "circuit_breaker.min_calls",
                "must be at least 1",
            ));
        }
        if self.consecutive == 0 {
            return Err(ConfigError::new(
                "circuit_breaker.consecutive_failures",
                "must be at least 1",
            ));
        }
        if !self.ratio_on && !self.consecutive_on {
            return Err(ConfigError::new(
                "circuit_breaker.consecutive_failures",
                "cannot be off when the failure ratio is off too (nothing would open the breaker)",
            ));
        }
        if let Some(d) = self.probe_timeout.filter(|d| *d < Duration::from_millis(1)) {
            return Err(ConfigError::new(
                "circuit_breaker.probe_timeout",
                format!("must be at least 1ms, got {d:?}"),
            ));
        }
        if self.slow_call.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "circuit_breaker.slow_call",
                "must be above zero (every call would be slow)",
            ));
        }
        if self.break_duration.is_zero() {
            return Err(ConfigError::new(
                "circuit_breaker.break_duration",
                "must be above zero",
            ));
        }
        if let Some((factor, max)) = self.growth {
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(ConfigError::new(
                    "circuit_breaker.break_growth.factor",
                    format!("must be a finite number of at least 1, got {factor}"),
                ));
            }
            if max < self.break_duration {
                return Err(ConfigError::new(
                    "circuit_breaker.break_growth.max",
                    format!(
                        "must be at least the break duration ({:?}), got {max:?}",
                        self.break_duration
                    ),
                ));
            }
        }
        if self.half_open_permits == 0 {
            return Err(ConfigError::new(
                "circuit_breaker.half_open_permits",
                "must be at least 1 (a half-open breaker must admit a probe to ever close)",
            ));
        }
        if self.max_hosts == 0 {
            return Err(ConfigError::new(
                "circuit_breaker.max_hosts",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The core's parameters. Robust to an unvalidated configuration: out-of-range values are
    /// clamped to the nearest that works, so nothing here can panic or hang half-open.
    fn policy(&self) -> Policy {
        let ratio = self.ratio_on.then(|| Ratio {
            ratio_ppm: ((self.failure_ratio * SCALE as f64).round() as u64).clamp(1, SCALE),
            min_calls: self.min_calls.max(1),
        });
        // With both rules off (which `validate` refuses), the run rule of one.
        let consecutive = (self.consecutive_on || !self.ratio_on).then(|| self.consecutive.max(1));
        let (growth, max) = match self.growth {
            Some((f, max)) if f.is_finite() && f > 1.0 => (f, max.max(self.break_duration)),
            _ => (1.0, self.break_duration),
        };
        Policy {
            ratio,
            consecutive,
            probe_timeout: self.probe_timeout.filter(|d| !d.is_zero()),
            bucket_nanos: (breaker::nanos(self.window) / BUCKETS).max(1),
            slow_call: self.slow_call,
            break_base: self.break_duration,
            growth,
            break_max: max,
            permits: self.half_open_permits.max(1),
        }
    }
}

/// The breakers of a layer.
#[derive(Debug)]
enum Breakers {
    Global(Arc<Breaker>),
    PerHost(HostMap),
}

/// The breakers, shared by a layer, its services, its handles and the layers rebuilt from it.
#[derive(Debug)]
struct State {
    breakers: Breakers,
}

impl State {
    fn breaker_for(&self, url: &Url, now: Duration) -> Arc<Breaker> {
        match &self.breakers {
            Breakers::Global(b) => b.clone(),
            Breakers::PerHost(map) => with_host_key(url, |key| map.get(key, now)),
        }
    }
}

#[derive(Debug, Clone)]
struct Shared {
    cfg: CircuitBreaker,
    state: Arc<State>,
    rec: Recorder,
}

/// What a response future needs to record an outcome and report it. Cloned into each future:
/// with the default classifier and no hook, the clone touches no reference count.
#[derive(Clone)]
pub(crate) struct Recorder {
    classifier: Classifier,
    hook: Hook,
    epoch: Instant,
}

impl Recorder {
    fn now(&self) -> Duration {
        self.since_epoch(Instant::now())
    }

    fn since_epoch(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
    }

    fn report(&self, key: &str, t: Transition) {
        if t.to == CircuitState::Open {
            match t.open_for {
                Some(d) => tracing::warn!(
                    circuit.key = key,
                    from = ?t.from,
                    open_ms = d.as_millis() as u64,
                    "circuit breaker opened"
                ),
                None => {
                    tracing::warn!(circuit.key = key, from = ?t.from, "circuit breaker isolated")
                }
            }
        } else {
            tracing::info!(circuit.key = key, from = ?t.from, to = ?t.to, "circuit breaker state changed");
        }
        self.hook.emit_ref(&Event::CircuitStateChanged {
            key,
            from: t.from,
            to: t.to,
        });
    }

    /// A probe's own timeout cut it.
    fn probe_cut(&self, key: &str, after: Duration) {
        tracing::warn!(
            circuit.key = key,
            timeout_ms = after.as_millis() as u64,
            "circuit breaker probe timed out"
        );
        self.hook.emit_ref(&Event::Timeout {
            kind: TimeoutKind::Probe,
            after,
        });
    }

    fn reject(&self, key: &str, retry_after: Option<Duration>) {
        tracing::debug!(
            circuit.key = key,
            retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
            "circuit open: call rejected"
        );
        self.hook.emit_ref(&Event::Rejected {
            kind: ErrorKind::CircuitOpen,
            key,
            retry_after,
        });
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("classifier", &self.classifier)
            .field("hook", &self.hook)
            .finish_non_exhaustive()
    }
}

/// A [`Layer`](tower_layer::Layer) that wraps a service in [`CircuitBreakerService`]. Every service it makes (and
/// every layer made from it with [`classifier`](Self::classifier) or
/// [`on_event`](Self::on_event)) shares the same breakers.
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

impl CircuitBreakerLayer {
    /// A layer with the given policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when the failure ratio is not above 0 and at most 1
    /// (or NaN), the window is under 10 ms, `min_calls`, `consecutive_failures`,
    /// `half_open_permits` or `max_hosts` is 0, the slow-call threshold or the break is zero,
    /// the probe timeout is under 1 ms, the growth factor is below 1 (or not finite) or its cap
    /// below the break, or both rules are off (`consecutive_failures` names it).
    pub fn new(cfg: CircuitBreaker) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self::from_parts(
            cfg,
            Classifier::default(),
            Hook::default(),
        ))
    }

    /// A layer from a configuration the caller validated (the client builder).
    pub(crate) fn from_parts(cfg: CircuitBreaker, classifier: Classifier, hook: Hook) -> Self {
        let policy = Arc::new(cfg.policy());
        let breakers = if cfg.per_host {
            let idle = cfg.window.saturating_add(policy.longest_break());
            Breakers::PerHost(HostMap::new(policy, cfg.max_hosts, idle))
        } else {
            Breakers::Global(Arc::new(Breaker::new(
                policy,
                Arc::from(""),
                Duration::ZERO,
            )))
        };
        CircuitBreakerLayer {
            shared: Arc::new(Shared {
                cfg,
                state: Arc::new(State { breakers }),
                rec: Recorder {
                    classifier,
                    hook,
                    epoch: Instant::now(),
                },
            }),
        }
    }

    /// Uses `classifier` instead of the default to decide what counts as a failure.
    pub fn classifier(self, classifier: Classifier) -> Self {
        self.rebuild(|s| s.rec.classifier = classifier)
    }

    /// Calls `hook` for every state change ([`Event::CircuitStateChanged`]) and every rejected
    /// call ([`Event::Rejected`]). Take [`handle`](Self::handle)s after setting it: a handle
    /// reports its `isolate` and `reset` to the hook of the layer it came from.
    pub fn on_event<F>(self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.rebuild(|s| s.rec.hook = Hook::new(hook))
    }

    /// A handle on this layer's breakers, to read their state, isolate and reset hosts.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            inner: HandleInner::One(self.shared.clone()),
        }
    }
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("policy", &self.shared.cfg)
            .field("classifier", &self.shared.rec.classifier)
            .field("hook", &self.shared.rec.hook)
            .finish()
    }
}

crate::shared_layer!(CircuitBreakerLayer => CircuitBreakerService);

/// A cloneable handle on a layer's breakers: read a host's state, isolate it, reset it.
///
/// A host is named by its key, `host:port` with the scheme's default port
/// (`"api.example.com:443"`, as in events), by a URL (`"https://api.example.com/"`), whose key
/// is taken, or by a bare host (`"api.example.com"`), which names its breakers on the default
/// ports of `https` and `http` (`:443` and `:80`): [`state`](Self::state) gives the more
/// open of the two, [`isolate`](Self::isolate) and [`reset`](Self::reset) act on both. Names
/// are normalised as requests' hosts are (case, IDNA, a trailing dot, IPv6's form: see
/// [`hosts`](crate::hosts)), so `"API.Example.com."` names the breaker that calls to
/// `https://api.example.com/` use. Text that is not a host names no breaker.
///
/// With a [global](CircuitBreaker::global) breaker, the host is ignored: every method acts on
/// the one breaker. The handle of a [`Client`](crate::Client) with
/// [host policies](crate::ClientBuilder::host) finds each host's breaker in its policy's
/// pipeline (a host whose policy has no breaker names none).
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    inner: HandleInner,
}

#[derive(Clone)]
enum HandleInner {
    /// One layer's breakers.
    One(Arc<Shared>),
    /// A client's with host policies: the client's own (if any), and each policy's pipeline's.
    Routed(Arc<Routed>),
}

struct Routed {
    client: Option<Arc<Shared>>,
    table: crate::hosts::Table<Option<Arc<Shared>>>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            HandleInner::One(shared) => f
                .debug_struct("CircuitBreakerHandle")
                .field("policy", &shared.cfg)
                .finish_non_exhaustive(),
            HandleInner::Routed(r) => f
                .debug_struct("CircuitBreakerHandle")
                .field("policy", &r.client.as_ref().map(|s| &s.cfg))
                .field("hosts", &r.table)
                .finish_non_exhaustive(),
        }
    }
}

/// How open a state is, to give the more open of two.
fn openness(s: CircuitState) -> u8 {
    match s {
        CircuitState::Closed => 0,
        CircuitState::HalfOpen => 1,
        CircuitState::Open => 2,
    }
}

impl CircuitBreakerHandle {
    /// A client's handle: its own breakers, and with host policies, each policy's pipeline's
    /// (`None` where a policy has no breaker). `None` if no pipeline has a breaker.
    pub(crate) fn routed(
        client: Option<CircuitBreakerHandle>,
        policies: Vec<(crate::hosts::Pattern, Option<CircuitBreakerHandle>)>,
    ) -> Option<CircuitBreakerHandle> {
        if policies.is_empty() {
            return client;
        }
        if client.is_none() && policies.iter().all(|(_, h)| h.is_none()) {
            return None;
        }
        let one = |h: CircuitBreakerHandle| match h.inner {
            HandleInner::One(s) => Some(s),
            HandleInner::Routed(r) => r.client.clone(),
        };
        let table = crate::hosts::Table::new(
            policies
                .into_iter()
                .map(|(p, h)| (p, h.and_then(one)))
                .collect(),
        );
        Some(CircuitBreakerHandle {
            inner: HandleInner::Routed(Arc::new(Routed {
                client: client.and_then(one),
                table,
            })),
        })
    }

    /// The breakers `host` names: each with its key (`""` for a global breaker), once each.
    fn targets(&self, host: &str) -> Vec<(Arc<Shared>, String)> {
        let mut out: Vec<(Arc<Shared>, String)> = Vec::with_capacity(2);
        let mut add = |shared: &Arc<Shared>, key: &str| {
            let key = match shared.state.breakers {
                Breakers::Global(_) => "",
                Breakers::PerHost(_) => key,
            };
            if !out
                .iter()
                .any(|(s, k)| Arc::ptr_eq(s, shared) && k.as_str() == key)
            {
                out.push((shared.clone(), key.to_owned()));
            }
        };
        match &self.inner {
            HandleInner::One(shared) => {
                if let Breakers::Global(_) = shared.state.breakers {
                    add(shared, "");
                } else {
                    for key in crate::hosts::keys_named(host) {
                        add(shared, &key);
                    }
                }
            }
            HandleInner::Routed(r) => {
                for key in crate::hosts::keys_named(host) {
                    let shared = match r.table.for_key(&key) {
                        Some((_, policy)) => policy.as_ref(),
                        None => r.client.as_ref(),
                    };
                    if let Some(shared) = shared {
                        add(shared, &key);
                    }
                }
            }
        }
        out
    }

    /// The state of `host`'s breaker; `Closed` for a host without one (never called, or
    /// evicted). The move from open to half-open is made by the next call: a breaker whose
    /// break is over reads `Open` until then.
    pub fn state(&self, host: &str) -> CircuitState {
        let mut state = CircuitState::Closed;
        for (shared, key) in self.targets(host) {
            let s = match &shared.state.breakers {
                Breakers::Global(b) => b.state(),
                Breakers::PerHost(map) => {
                    map.peek(&key).map_or(CircuitState::Closed, |b| b.state())
                }
            };
            if openness(s) > openness(state) {
                state = s;
            }
        }
        state
    }

    /// Opens `host`'s breaker until [`reset`](Self::reset): every call to it is rejected,
    /// with no `retry_after` hint. An isolated host is kept in memory whatever
    /// [`max_hosts`](CircuitBreaker::max_hosts) says.
    pub fn isolate(&self, host: &str) {
        for (shared, key) in self.targets(host) {
            let t = match &shared.state.breakers {
                Breakers::Global(b) => b.isolate(),
                Breakers::PerHost(map) => map.isolate(&key, shared.rec.now()),
            };
            if let Some(t) = t {
                shared.rec.report(&key, t);
            }
        }
    }

    /// Closes `host`'s breaker, whatever its state, with a fresh window and the break back
    /// to [`break_duration`](CircuitBreaker::break_duration). Outcomes of calls made before
    /// are dropped.
    pub fn reset(&self, host: &str) {
        for (shared, key) in self.targets(host) {
            let b = match &shared.state.breakers {
                Breakers::Global(b) => Some(b.clone()),
                Breakers::PerHost(map) => map.peek(&key),
            };
            if let Some(t) = b.and_then(|b| b.reset()) {
                shared.rec.report(&key, t);
            }
        }
    }

    /// How many breakers are held in memory: the hosts seen and not evicted (1 for a global
    /// breaker), in all the client's pipelines for a client with host policies. Idle hosts
    /// are evicted by the calls that follow, not by a timer.
    pub fn tracked_hosts(&self) -> usize {
        let count = |shared: &Arc<Shared>| match &shared.state.breakers {
            Breakers::Global(_) => 1,
            Breakers::PerHost(map) => map.len(),
        };
        match &self.inner {
            HandleInner::One(shared) => count(shared),
            HandleInner::Routed(r) => {
                let mut seen: Vec<&Arc<Shared>> = Vec::new();
                let all = r
                    .client
                    .iter()
                    .chain(r.table.entries.iter().filter_map(|(_, s)| s.as_ref()));
                for s in all {
                    if !seen.iter().any(|t| Arc::ptr_eq(t, s)) {
                        seen.push(s);
                    }
                }
                seen.into_iter().map(count).sum()
            }
        }
    }

    /// The one layer's state this handle reads for health (a layer's handle is always one).
    fn shared(&self) -> Option<&Arc<Shared>> {
        match &self.inner {
            HandleInner::One(s) => Some(s),
            HandleInner::Routed(r) => r.client.as_ref(),
        }
    }

    /// Whether there is a breaker per host (rather than one for all).
    pub(crate) fn is_per_host(&self) -> bool {
        self.shared()
            .is_some_and(|s| matches!(s.state.breakers, Breakers::PerHost(_)))
    }

    /// Whether the breakers count runs of failures (the run rule is on).
    pub(crate) fn counts_runs(&self) -> bool {
        self.shared()
            .is_some_and(|s| s.cfg.consecutive_on || !s.cfg.ratio_on)
    }

    /// The state of the one breaker shared by all hosts; `None` per host. Read only.
    pub(crate) fn health_global(&self) -> Option<CircuitHealth> {
        let shared = self.shared()?;
        match &shared.state.breakers {
            Breakers::Global(b) => Some(health(b.snapshot(shared.rec.now()))),
            Breakers::PerHost(_) => None,
        }
    }

    /// Calls `f` with the key and the state of every breaker a per-host map holds; nothing
    /// for a global breaker. Read only: no sweep, no eviction, no move to half-open, no touch
    /// of the last-use marks, and no lock held while `f` runs.
    pub(crate) fn health_hosts(&self, mut f: impl FnMut(&str, CircuitHealth)) {
        let Some(shared) = self.shared() else {
            return;
        };
        if let Breakers::PerHost(map) = &shared.state.breakers {
            let now = shared.rec.now();
            map.for_each(|b| f(b.key(), health(b.snapshot(now))));
        }
    }
}

fn health(s: Snapshot) -> CircuitHealth {
    let failure_ratio = if s.calls == 0 {
        0.0
    } else {
        (s.failures as f64 / s.calls as f64).min(1.0)
    };
    CircuitHealth {
        state: s.state,
        failure_ratio,
        calls: s.calls,
        failures: s.failures,
        consecutive_failures: s.consecutive,
        half_open_in: s.half_open_in,
        isolated: s.isolated,
    }
}

/// Stops calls to failing hosts as the [module docs](self) describe. Made by
/// [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    shared: Arc<Shared>,
}

crate::inner_accessors!(CircuitBreakerService);

impl<S: fmt::Debug> fmt::Debug for CircuitBreakerService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("policy", &self.shared.cfg)
            .finish()
    }
}

impl<S> Service<Request> for CircuitBreakerService<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = CircuitBreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let rec = &self.shared.rec;
        let now = rec.now();
        let breaker = self.shared.state.breaker_for(req.url(), now);
        let (admission, transition) = breaker.acquire(now);
        match admission {
            Admission::Admitted(permit) => {
                if let Some(t) = transition {
                    rec.report(permit.breaker().key(), t);
                }
                if permit.is_probe() {
                    crate::context::record_probe();
                }
                let probe = permit
                    .probe_timeout()
                    .map(|after| ProbeTimer::new(after, req.url().clone()));
                CircuitBreakerFuture::called(self.inner.call(req), permit, probe, rec.clone())
            }
            Admission::Rejected(retry_after, breaker) => {
                if let Some(t) = transition {
                    rec.report(breaker.key(), t);
                }
                rec.reject(breaker.key(), retry_after);
                let mut err = Error::rejected(ErrorKind::CircuitOpen, retry_after);
                err.set_url_if_missing(req.url());
                CircuitBreakerFuture::rejected(err)
            }
        }
    }
}

#[cfg(test)]
mod tests;
