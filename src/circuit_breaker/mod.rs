//! Circuit breaker: stop sending to a host that keeps failing, then probe it.
//!
//! Why: when a host is down or overloaded, sending it more calls only adds to its load and
//! makes every caller wait for a timeout. A breaker watches the outcomes and, once the host
//! looks broken, *opens*: calls fail at once with [`ErrorKind::CircuitOpen`] (and a
//! [`retry_after`](Error::retry_after) hint) without reaching the host. After a break it lets a
//! few probe calls through (*half-open*); if they all succeed it *closes* and traffic flows
//! again, if one fails it opens for another break. Placed inside the retry stage (the standard
//! order), an open circuit also stops retries: a rejection is never retried.
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
//! - **When it opens**: by default when failures reach [`failure_ratio`](CircuitBreaker::failure_ratio)
//!   (0.5) of the calls over the last [`window`](CircuitBreaker::window) (30 s, kept in ten
//!   buckets), once the window holds at least [`min_calls`](CircuitBreaker::min_calls) (20).
//!   Or, with [`consecutive_failures`](CircuitBreaker::consecutive_failures), after N failures
//!   in a row.
//! - **Open** for [`break_duration`](CircuitBreaker::break_duration) (5 s), optionally growing
//!   on each trip that follows a failed probe ([`break_growth`](CircuitBreaker::break_growth)).
//!   The move to half-open is lazy: the first call after the break makes it, no timer runs.
//! - **Half-open** admits exactly [`half_open_permits`](CircuitBreaker::half_open_permits) (1)
//!   probes; other calls are rejected at once. All probes succeed: closed, with a fresh
//!   window. One fails: open again. A probe whose call is cancelled, or ends in a class the
//!   breaker ignores, gives its permit back, so the breaker cannot be stuck half-open.
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

use self::breaker::{Admission, Breaker, Policy, Rule, Snapshot, Transition, BUCKETS, SCALE};
pub use self::future::CircuitBreakerFuture;
use self::keyed::HostMap;
use crate::classify::Classifier;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::event::{CircuitState, Event, Hook};
use crate::health::CircuitHealth;
use crate::host::with_host_key;

/// What trips a closed breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Ratio,
    Consecutive,
}

/// The circuit breaker's configuration.
///
/// Default: opens when at least half of the calls to a host failed over the last 30 s, once
/// there were at least 20; stays open 5 s (no growth); then admits 1 probe. One breaker per
/// host, at most 10,000 hosts. See the [module docs](self) for what counts as a failure.
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
///     .half_open_permits(3);
/// let layer = CircuitBreakerLayer::new(cb)?;
/// let breakers = layer.handle();
/// assert_eq!(breakers.state("api.example.com:443"), CircuitState::Closed);
///
/// // Five failures in a row instead of a ratio:
/// let strict = CircuitBreaker::default().consecutive_failures(5);
/// # let _ = strict;
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a policy does nothing until given to a client or a layer"]
pub struct CircuitBreaker {
    mode: Mode,
    failure_ratio: f64,
    window: Duration,
    min_calls: u32,
    consecutive: u32,
    slow_call: Option<Duration>,
    break_duration: Duration,
    growth: Option<(f64, Duration)>,
    half_open_permits: u32,
    per_host: bool,
    max_hosts: usize,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            mode: Mode::Ratio,
            failure_ratio: 0.5,
            window: Duration::from_secs(30),
            min_calls: 20,
            consecutive: 5,
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
    /// window holds at least [`min_calls`](Self::min_calls)). Switches to the ratio mode (the
    /// default mode). Default 0.5; must be above 0 and at most 1. It is kept to six decimals.
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = ratio;
        self.mode = Mode::Ratio;
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

    /// Opens the breaker after `n` failures in a row instead of a ratio (a success resets the
    /// run; ignored outcomes neither count nor reset). Switches to the consecutive mode; call
    /// [`failure_ratio`](Self::failure_ratio) to switch back. Not set by default; at least 1.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive = n;
        self.mode = Mode::Consecutive;
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

    /// How long the breaker stays open after it trips, before it admits a probe. Default 5 s;
    /// above zero.
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
        let rule = match self.mode {
            Mode::Ratio => Rule::Ratio {
                ratio_ppm: ((self.failure_ratio * SCALE as f64).round() as u64).clamp(1, SCALE),
                min_calls: self.min_calls.max(1),
            },
            Mode::Consecutive => Rule::Consecutive(self.consecutive.max(1)),
        };
        let (growth, max) = match self.growth {
            Some((f, max)) if f.is_finite() && f > 1.0 => (f, max.max(self.break_duration)),
            _ => (1.0, self.break_duration),
        };
        Policy {
            rule,
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
    /// or the growth factor is below 1 (or not finite) or its cap below the break.
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
                CircuitBreakerFuture::called(self.inner.call(req), permit, rec.clone())
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
