//! Hedging: when an attempt is slow to answer, send a copy and take the first good answer.
//!
//! Why: in a service that answers most requests in 10 ms, a few answers take far longer — a
//! garbage-collection pause, a queue behind a slow request, a cold cache, a packet lost — and
//! those few make the tail of the latency that users see. "The Tail at Scale" (Jeffrey Dean
//! and Luiz André Barroso, Communications of the ACM 56(2), 2013) calls the remedy *hedged
//! requests*: send the request, and if it has not been answered after the 95th percentile of
//! the expected latency, send a copy and use whichever answer comes first. The copy is sent
//! for at most 5 % of the requests, so the extra load is about 5 %, and the tail is cut to the
//! delay plus a normal answer's time. (In their benchmark, reading 1,000 keys from a BigTable
//! spread over 100 servers, hedging after 10 ms cut the 99.9th percentile of the whole read
//! from 1,800 ms to 74 ms for 2 % more requests.)
//!
//! Opt-in, with [`ClientBuilder::hedging`](crate::ClientBuilder::hedging) (or a
//! [`HostPolicy`](crate::HostPolicy)'s), or as a tower layer, [`HedgeLayer`]:
//!
//! ```
//! use std::time::Duration;
//! use palisade::hedge::Hedging;
//!
//! let client = palisade::Client::builder()
//!     // A copy after the host's recent p95, at least 2 ms and at most 1 s after the first;
//!     // 50 ms until the host has answered 20 requests.
//!     .hedging(
//!         Hedging::at_quantile(0.95)
//!             .min_delay(Duration::from_millis(2))
//!             .max_delay(Duration::from_secs(1))
//!             .fallback_delay(Duration::from_millis(50)),
//!     )
//!     .build()?;
//!
//! // Or a fixed delay, and up to two copies (three attempts in all, 30 ms apart).
//! let fixed = Hedging::after(Duration::from_millis(30)).max_hedged_attempts(3);
//! # let _ = (client, fixed);
//! # Ok::<(), palisade::ConfigError>(())
//! ```
//!
//! # What it does
//!
//! - **Which requests**: idempotent ones only, by the retry stage's rule (GET, HEAD, OPTIONS,
//!   TRACE, PUT, DELETE, or any request with an `Idempotency-Key` header), whose body can be
//!   copied: a request with a streaming body is never hedged. Other requests pass through.
//! - **When**: after a delay from the first attempt — fixed ([`Hedging::after`]) or a quantile
//!   of the host's recent latency ([`Hedging::at_quantile`], see below) — one more copy races
//!   the ones already sent; then another after the same delay, up to
//!   [`max_hedged_attempts`](Hedging::max_hedged_attempts) in all (default 2: one hedge). The
//!   delay counts from when the stage sends the first attempt down, so a wait for a rate-limit
//!   token below is part of it. No hedge is sent at or after the total deadline, and no race is
//!   started for a request whose deadline comes before the first hedge would.
//! - **Who wins**: the first answer the [`Classifier`] calls acceptable (`Success` or
//!   `ClientError`: an answer, not a failure); the others are dropped at once. A failure of one
//!   racer does not end the race while another is still running: its answer is dropped, and
//!   the race waits for the others. When every racer has failed, the race returns the last
//!   failure, and the retry stage above decides on it as on any attempt. A failure before any
//!   hedge was sent ends the race at once: a hedge never stands in for a retry, whose backoff
//!   and `Retry-After` the retry stage keeps.
//! - **Each racer is an attempt**: it goes through the circuit breaker (an open or half-open
//!   breaker that admits no more rejects the hedge, and the others race on), takes a
//!   rate-limit token (a [`fail_fast`](crate::rate_limit::RateLimit::fail_fast) limiter with
//!   no token left rejects the hedge; a waiting one holds it), and has its own attempt
//!   timeout.
//! - **Load**: each hedge takes a retry from the [retry budget](crate::retry::RetryBudget)
//!   before it is sent, as a retry does; with none left it is not sent, so that a slow outage,
//!   in which every request would be hedged, cannot double the load: hedges and retries
//!   together add at most what the budget allows (20 % plus 10 a second by default). A hedge
//!   that a stage below rejects without sending (breaker, rate limiter) gives its retry back.
//!   The budget is the pipeline's retry stage's, shared by every clone of the client; a
//!   pipeline without a retry stage (`no_retry`) gives the hedging stage a budget of its own,
//!   [`RetryBudget::default`](crate::retry::RetryBudget::default); a retry stage without a
//!   budget ([`Retry::no_budget`](crate::retry::Retry::no_budget)) bounds hedges no more than
//!   retries.
//! - **Cancellation**: a loser's future is dropped as soon as the winner is known, and so are
//!   all racers when the call is dropped (the caller leaving, the total timeout): dropping a
//!   racer drops what it holds below. A circuit breaker's probe permit comes back (a cancelled
//!   call is no outcome), a rate-limit token is spent (nothing to free), and the bulkhead,
//!   above, holds one place for the call whatever its hedges. The transport sees the request
//!   cancelled: reqwest closes the HTTP/1.1 connection of a request dropped in flight, or
//!   resets its HTTP/2 stream.
//!
//! # The delay at a quantile of the host's latency
//!
//! With [`Hedging::at_quantile`], the stage keeps, per host (`host:port`), a histogram of how
//! long its attempts took to answer (0.8 KB each: 200 buckets from 1 µs to 134 s, each at most
//! 12.5 % wide, every count halved every [`half_life`](Hedging::half_life), 10 s), and a
//! call's delay is the quantile of its host's histogram when the call starts (tokio's timers
//! then round it up to the millisecond), read as the upper edge of its bucket
//! (never below the quantile: hedging at p95 sends a copy for at most about 5 % of the
//! requests), clamped to [`min_delay`](Hedging::min_delay)..=[`max_delay`](Hedging::max_delay)
//! (1 ms and 10 s). Until the host has [`min_samples`](Hedging::min_samples) (20), the delay is
//! [`fallback_delay`](Hedging::fallback_delay) (1 s). Hosts are bounded by
//! [`max_hosts`](Hedging::max_hosts) (1,000), so the estimates hold at most about 0.8 MB.
//!
//! What is recorded: the latency of each acceptable answer of a hedged request, from when its
//! attempt was sent; and for each racer sent before the winner and cancelled, the time it had
//! run, a lower bound of its latency. Without the latter, the estimate would lose exactly the
//! slow answers that hedging cuts short, its quantile would fall, and each hedge would bring
//! the next one sooner. Failures and requests that are not hedged (a POST) are not recorded.
//!
//! # Where it sits in the pipeline, and why
//!
//! ```text
//! … → Bulkhead → Retry(+budget) → Hedge → CircuitBreaker → RateLimit → AttemptTimeout → transport
//! ```
//!
//! - Below the retry stage: a retry attempt is a race, and the retry stage sees one outcome
//!   per attempt, the race's, and decides on it with its backoff, `Retry-After` and budget (a
//!   retried attempt may be hedged again). Above it, a hedge would be a copy of the whole
//!   retry loop, sleeps included, and would not share the retry budget's accounting.
//! - Above the circuit breaker, the rate limiter and the attempt timeout: each racer is a full
//!   attempt, which the breaker admits (and counts), the limiter charges a token, and the
//!   attempt timeout bounds.
//! - Below the bulkhead and the total timeout: a call holds one bulkhead place however many
//!   copies it races, and the deadline bounds them all.
//!
//! The retry stage already copies a request for each retry; the hedging stage copies it the
//! same way (`reqwest::Request::try_clone`): once when the race starts, and once per hedge.
//!
//! # Attempts, events, tracing and metrics
//!
//! Every copy sent is an attempt: [`ResponseExt::attempts`](crate::ResponseExt::attempts) and
//! [`Error::attempts`](crate::Error::attempts) count hedges with retries (a call whose first
//! attempt was hedged and then retried once says 3). The retry stage's own events
//! ([`Event::Attempt`], [`Event::Retry`]) number its attempts, each race counting once.
//!
//! - [`Event::Hedge`] when a hedge is sent to the stages below (which may still reject it, as
//!   [`Event::Rejected`] says): its number in the race (2 for the first hedge) and how long
//!   after the first attempt;
//! - [`Event::HedgeWon`] when a race in which a hedge was sent ends with an acceptable answer:
//!   which attempt won (1, the first one; 2, the first hedge; …), and how many were sent;
//! - `tracing`: a `debug` event for each hedge (`hedge.attempt`, `hedge.after_ms`), for each
//!   hedged race won (`hedge.winner`, `hedge.sent`), and for each hedge the budget refuses;
//! - metrics (feature `metrics`): `palisade.hedge.sent` (counter, by `server.address`),
//!   `palisade.hedge.budget_refused` (counter, by `server.address`: hedges due that the retry
//!   budget refused, so not sent; the race sends no more, so one at most per race) and
//!   `palisade.hedge.wins` (counter, by `server.address` and `palisade.hedge.attempt`, the
//!   winner's number): wins of attempt 1 are hedges that did not help;
//! - [`Client::health`](crate::Client::health): per host, the delay a call starting now would
//!   wait before its first hedge and, at a quantile, the samples its estimate holds
//!   ([`HostHealth::hedge`](crate::health::HostHealth::hedge)).
//!
//! # Compared with others
//!
//! - **Polly** (`HedgingStrategyOptions`): 1 to 10 hedged attempts (default 1) after a fixed
//!   `Delay` (2 s by default, or a generator); a handled failure starts the next hedge at
//!   once. palisade leaves failures to the retry stage (its backoff, `Retry-After`, budget),
//!   and offers a delay from the host's own latency.
//! - **gRPC** (`hedgingPolicy` in the service config, gRFC A6): `maxAttempts` (at most 5,
//!   the first included), `hedgingDelay`, `nonFatalStatusCodes`; hedging and retries are
//!   exclusive for a method, and a *retry throttling* token bucket stops hedges and retries
//!   when failures pile up. palisade combines hedging with retries (each attempt is hedged)
//!   and bounds both by one retry budget.
//! - **tower** (`tower::hedge::Hedge`): one hedge, after the `latency_percentile` of the
//!   attempts of the last `period` (a rotating histogram), none until `min_data_points`;
//!   `Policy::clone_request` decides what may be copied; the first to finish wins, errors
//!   too. palisade hedges up to `max_hedged_attempts`, per host, waits past failures for a
//!   good answer, charges each hedge to the budget, and has a fallback delay until the
//!   estimate has its samples.
//!
//! # Cost
//!
//! Off (the default), the stage is not in the pipeline: a branch in each request's path. On,
//! a request that is not hedged passes through; a hedged one costs a copy of the request, an
//! allocation for the race, a timer for the hedge, and with a quantile delay two lookups of
//! its host's histogram (under one of 16 mutexes, briefly).

mod future;
mod latency;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

pub use self::future::HedgeFuture;
use self::future::Race;
use self::latency::{Estimates, Settings};
use crate::classify::Classifier;
use crate::context;
use crate::error::{ConfigError, Error};
use crate::event::{Event, Hook};
use crate::health::HedgeHealth;
use crate::host::with_host_key;
use crate::retry::{BudgetHandle, RetryBudget, RetryLayer};

/// The most attempts in one race, the first included.
const MAX_HEDGED_ATTEMPTS: u32 = 10;

/// When a hedge is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Delay {
    Fixed(Duration),
    Quantile(f64),
}

/// The hedging policy's configuration (see the [module docs](self)).
///
/// Made with [`Hedging::after`] (a fixed delay) or [`Hedging::at_quantile`] (a quantile of the
/// host's recent latency). Default for both: 2 attempts in all (one hedge). The settings of
/// the latency estimate ([`min_delay`](Self::min_delay), [`max_delay`](Self::max_delay),
/// [`fallback_delay`](Self::fallback_delay), [`min_samples`](Self::min_samples),
/// [`half_life`](Self::half_life), [`max_hosts`](Self::max_hosts)) apply to
/// [`at_quantile`](Self::at_quantile) only.
///
/// ```
/// use std::time::Duration;
/// use palisade::hedge::{HedgeLayer, Hedging};
///
/// let hedging = Hedging::at_quantile(0.95)
///     .max_hedged_attempts(3)
///     .min_delay(Duration::from_millis(5))
///     .max_delay(Duration::from_millis(500))
///     .fallback_delay(Duration::from_millis(100))
///     .min_samples(50)
///     .half_life(Duration::from_secs(30))
///     .max_hosts(100);
/// let layer = HedgeLayer::new(hedging)?;
/// # let _ = layer;
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a policy does nothing until given to a client or a layer"]
pub struct Hedging {
    delay: Delay,
    max_hedged_attempts: u32,
    min_delay: Duration,
    max_delay: Duration,
    fallback_delay: Duration,
    min_samples: u32,
    half_life: Duration,
    max_hosts: usize,
}

impl Hedging {
    fn with(delay: Delay) -> Self {
        Hedging {
            delay,
            max_hedged_attempts: 2,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_secs(10),
            fallback_delay: Duration::from_secs(1),
            min_samples: 20,
            half_life: Duration::from_secs(10),
            max_hosts: 1_000,
        }
    }

    /// A hedge `delay` after the first attempt, and each further one `delay` after the
    /// previous. Zero sends every copy at once.
    pub fn after(delay: Duration) -> Self {
        Hedging::with(Delay::Fixed(delay))
    }

    /// A hedge after the quantile `q` of the host's recent latency (0.95: its p95), read when
    /// the call starts; each further one the same delay after the previous. `q` must be above
    /// 0 and below 1.
    pub fn at_quantile(q: f64) -> Self {
        Hedging::with(Delay::Quantile(q))
    }

    /// Attempts in all in one race, the first included. Default 2 (one hedge); from 1 (never
    /// hedges) to 10.
    pub fn max_hedged_attempts(mut self, n: u32) -> Self {
        self.max_hedged_attempts = n;
        self
    }

    /// The shortest delay a quantile gives. Default 1 ms (tokio's timers are no finer).
    pub fn min_delay(mut self, d: Duration) -> Self {
        self.min_delay = d;
        self
    }

    /// The longest delay a quantile gives. Default 10 s (the default attempt timeout); at
    /// least `min_delay`.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// The delay for a host whose estimate holds fewer than [`min_samples`](Self::min_samples)
    /// answers (a host not yet called, or not for a long time). Default 1 s; used as it is,
    /// not clamped.
    pub fn fallback_delay(mut self, d: Duration) -> Self {
        self.fallback_delay = d;
        self
    }

    /// How many answers a host's estimate must hold (decayed: see
    /// [`half_life`](Self::half_life)) before its quantile is used. Default 20; at least 1.
    pub fn min_samples(mut self, n: u32) -> Self {
        self.min_samples = n;
        self
    }

    /// How fast the estimate forgets: every `half_life`, each answer recorded counts half as
    /// much. Default 10 s; at least 10 ms.
    pub fn half_life(mut self, d: Duration) -> Self {
        self.half_life = d;
        self
    }

    /// How many hosts have an estimate (about 0.8 KB each); a new host past the cap takes the
    /// place of an idle or the least recently used one. Default 1,000; at least 1.
    pub fn max_hosts(mut self, n: usize) -> Self {
        self.max_hosts = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_HEDGED_ATTEMPTS).contains(&self.max_hedged_attempts) {
            return Err(ConfigError::new(
                "hedging.max_hedged_attempts",
                format!(
                    "must be from 1 to {MAX_HEDGED_ATTEMPTS} (attempts in all, the first included), got {}",
                    self.max_hedged_attempts
                ),
            ));
        }
        if let Delay::Quantile(q) = self.delay {
            if !(q.is_finite() && q > 0.0 && q < 1.0) {
                return Err(ConfigError::new(
                    "hedging.quantile",
                    format!("must be above 0 and below 1, got {q}"),
                ));
            }
        }
        if self.max_delay < self.min_delay {
            return Err(ConfigError::new(
                "hedging.max_delay",
                format!(
                    "must be at least min_delay ({:?}), got {:?}",
                    self.min_delay, self.max_delay
                ),
            ));
        }
        if self.min_samples == 0 {
            return Err(ConfigError::new(
                "hedging.min_samples",
                "must be at least 1",
            ));
        }
        if self.half_life < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "hedging.half_life",
                format!("must be at least 10ms, got {:?}", self.half_life),
            ));
        }
        if self.max_hosts == 0 {
            return Err(ConfigError::new("hedging.max_hosts", "must be at least 1"));
        }
        Ok(())
    }

    /// A short description, for the client's `Debug`.
    pub(crate) fn summary(&self) -> String {
        let n = self.max_hedged_attempts;
        match self.delay {
            Delay::Fixed(d) => format!("hedging(after {d:?}, max_hedged_attempts={n})"),
            // 0.999 is p99.9, not p99.89999999999999.
            Delay::Quantile(q) => format!(
                "hedging(p{}, max_hedged_attempts={n})",
                (q * 1e4).round() / 1e2
            ),
        }
    }
}

/// A [`Layer`](tower_layer::Layer) that wraps a service in [`HedgeService`]. The services it
/// makes share the latency estimates and the budget.
///
/// Made on its own, the layer has a [retry budget](crate::retry::RetryBudget) of its own (the
/// default one) that every call deposits into and every hedge withdraws from; in a
/// [`Client`](crate::Client), the hedging stage spends the retry stage's budget instead (see
/// the [module docs](self)).
///
/// ```
/// use std::time::Duration;
/// use palisade::hedge::{HedgeLayer, Hedging};
/// use palisade::layer::{AttemptTimeoutLayer, TotalTimeoutLayer};
///
/// let svc = tower::ServiceBuilder::new()
///     .layer(TotalTimeoutLayer::new(Duration::from_secs(30))?)
///     .layer(HedgeLayer::new(Hedging::after(Duration::from_millis(50)))?)
///     .layer(AttemptTimeoutLayer::new(Duration::from_secs(10))?)
///     .service(reqwest::Client::new());
/// # let _ = svc;
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct HedgeLayer {
    shared: Arc<Shared>,
}

// Clone keeps the estimates' and the budget's `Arc`s.
#[derive(Clone)]
struct Shared {
    cfg: Hedging,
    estimates: Option<Arc<Estimates>>,
    /// What hedges spend: the retry stage's budget, or `own`; `None` with a retry stage that
    /// has none.
    budget: Option<BudgetHandle>,
    /// The budget is `own`: every call deposits into it (a retry stage deposits into its own).
    deposits: bool,
    own: BudgetHandle,
    classifier: Classifier,
    hook: Hook,
}

impl Shared {
    /// The delay before the first hedge of a request to `url`'s host.
    fn delay_for(&self, req: &Request) -> Duration {
        match (self.cfg.delay, &self.estimates) {
            (Delay::Fixed(d), _) => d,
            (Delay::Quantile(_), Some(e)) => with_host_key(req.url(), |k| e.delay(k)),
            (Delay::Quantile(_), None) => self.cfg.fallback_delay,
        }
    }
}

impl HedgeLayer {
    /// A layer with the given policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when `max_hedged_attempts` is not from 1 to 10, the
    /// quantile not above 0 and below 1, `max_delay` below `min_delay`, `min_samples` or
    /// `max_hosts` zero, or `half_life` below 10 ms.
    pub fn new(cfg: Hedging) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self::from_parts(
            cfg,
            Classifier::default(),
            Hook::default(),
        ))
    }

    pub(crate) fn from_parts(cfg: Hedging, classifier: Classifier, hook: Hook) -> Self {
        let estimates = match cfg.delay {
            Delay::Quantile(quantile) => Some(Arc::new(Estimates::new(Settings {
                quantile,
                min_delay: cfg.min_delay,
                max_delay: cfg.max_delay,
                fallback: cfg.fallback_delay,
                min_samples: cfg.min_samples,
                half_life: cfg.half_life,
                max_hosts: cfg.max_hosts,
            }))),
            Delay::Fixed(_) => None,
        };
        let own = BudgetHandle::new(&RetryBudget::default());
        HedgeLayer {
            shared: Arc::new(Shared {
                cfg,
                estimates,
                budget: Some(own.clone()),
                deposits: true,
                own,
                classifier,
                hook,
            }),
        }
    }

    /// The same layer, spending the budget of the retry stage above it (`Some`), or its own
    /// (`None`: no retry stage). The estimates stay shared.
    pub(crate) fn under(self, retry: Option<&RetryLayer>) -> Self {
        self.rebuild(|s| match retry {
            Some(r) => {
                s.budget = r.budget_handle();
                s.deposits = false;
            }
            None => {
                s.budget = Some(s.own.clone());
                s.deposits = true;
            }
        })
    }

    /// Uses `classifier` instead of the default to tell a good answer from a failure, for
    /// the services made since.
    pub fn classifier(self, classifier: Classifier) -> Self {
        self.rebuild(|s| s.classifier = classifier)
    }

    /// Calls `hook` for every hedge sent and every hedged race won.
    pub fn on_event<F>(self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.rebuild(|s| s.hook = Hook::new(hook))
    }

    /// A short description, for the client's `Debug`.
    pub(crate) fn summary(&self) -> String {
        self.shared.cfg.summary()
    }

    /// The hosts that have a latency estimate (0 with a fixed delay).
    pub fn tracked_hosts(&self) -> usize {
        self.shared.estimates.as_ref().map_or(0, |e| e.len())
    }

    /// What [`Client::health`](crate::Client::health) reads of this stage.
    pub(crate) fn view(&self) -> HedgeView {
        HedgeView {
            delay: self.shared.cfg.delay,
            estimates: self.shared.estimates.clone(),
        }
    }

    /// Whether both layers hedge on the same state (estimates and budget).
    #[cfg(test)]
    pub(crate) fn shares_state_with(&self, other: &HedgeLayer) -> bool {
        let same_estimates = match (&self.shared.estimates, &other.shared.estimates) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let same_budget = match (&self.shared.budget, &other.shared.budget) {
            (Some(a), Some(b)) => a.same_as(b),
            (None, None) => true,
            _ => false,
        };
        same_estimates && same_budget
    }
}

/// A hedging stage's delay and latency estimates, for
/// [`Client::health`](crate::Client::health).
#[derive(Clone)]
pub(crate) struct HedgeView {
    delay: Delay,
    estimates: Option<Arc<Estimates>>,
}

impl HedgeView {
    /// Calls `f` with each host that has a latency estimate (none with a fixed delay), and
    /// what it says now; changes nothing.
    pub(crate) fn hosts(&self, mut f: impl FnMut(&str, HedgeHealth)) {
        let (Delay::Quantile(q), Some(e)) = (self.delay, &self.estimates) else {
            return;
        };
        e.for_each_host(|host, delay, samples| {
            f(
                host,
                HedgeHealth {
                    delay,
                    quantile: Some(q),
                    samples: Some(samples),
                },
            );
        });
    }

    /// A host's part with no estimate held: the fixed delay, or a quantile with no sample.
    pub(crate) fn unseen(&self) -> HedgeHealth {
        match self.delay {
            Delay::Fixed(d) => HedgeHealth {
                delay: Some(d),
                quantile: None,
                samples: None,
            },
            Delay::Quantile(q) => HedgeHealth {
                delay: None,
                quantile: Some(q),
                samples: Some(0),
            },
        }
    }
}

impl fmt::Debug for HedgeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("policy", &self.shared.cfg)
            .field("classifier", &self.shared.classifier)
            .field("hook", &self.shared.hook)
            .finish()
    }
}

impl HedgeLayer {
    fn rebuild(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared::clone(&self.shared);
        f(&mut shared);
        HedgeLayer {
            shared: Arc::new(shared),
        }
    }
}

impl<S> tower_layer::Layer<S> for HedgeLayer {
    type Service = HedgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            shared: Some(self.shared.clone()),
        }
    }
}

/// Hedges slow attempts as the [module docs](self) describe. Made by [`HedgeLayer`].
#[derive(Clone)]
pub struct HedgeService<S> {
    inner: S,
    /// `None`: the place of a hedging stage switched off, in a client's pipeline. (An
    /// `Either` of the stage and the stage below would make every request's future 16 bytes
    /// larger, which the retry stage's boxed loop has no room for: see its
    /// `the_boxed_loop_stays_small`.)
    shared: Option<Arc<Shared>>,
}

impl<S> HedgeService<S> {
    /// A stage that hedges nothing: every call passes through.
    pub(crate) fn off(inner: S) -> Self {
        HedgeService {
            inner,
            shared: None,
        }
    }
}

crate::inner_accessors!(HedgeService);

impl<S: fmt::Debug> fmt::Debug for HedgeService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeService")
            .field("inner", &self.inner)
            .field("policy", &self.shared.as_ref().map(|s| &s.cfg))
            .finish()
    }
}

impl<S> Service<Request> for HedgeService<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
{
    type Response = Response;
    type Error = Error;
    type Future = HedgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(shared) = &self.shared else {
            return HedgeFuture::single(self.inner.call(req));
        };
        if shared.deposits {
            if let Some(b) = &shared.budget {
                b.deposit();
            }
        }
        if shared.cfg.max_hedged_attempts < 2 || !crate::retry::is_idempotent(&req) {
            return HedgeFuture::single(self.inner.call(req));
        }
        let started = Instant::now();
        let delay = shared.delay_for(&req);
        let deadline = context::deadline();
        // A hedge that could only be sent at or after the deadline is none: no race.
        if deadline.is_some_and(|d| started.checked_add(delay).is_none_or(|at| at >= d)) {
            return HedgeFuture::single(self.inner.call(req));
        }
        // A request whose body is a stream cannot be copied: it is sent once.
        let Some(kept) = req.try_clone() else {
            return HedgeFuture::single(self.inner.call(req));
        };
        // The service driven to readiness sends the first attempt; a clone sends the hedges.
        let svc = self.inner.clone();
        let first = self.inner.call(req);
        HedgeFuture::race(Race::new(
            first,
            svc,
            kept,
            shared.clone(),
            started,
            delay,
            deadline,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_field() {
        let field = |h: Hedging| h.validate().unwrap_err().field().to_owned();
        let d = Duration::from_millis(10);
        assert_eq!(
            field(Hedging::after(d).max_hedged_attempts(0)),
            "hedging.max_hedged_attempts"
        );
        assert_eq!(
            field(Hedging::after(d).max_hedged_attempts(11)),
            "hedging.max_hedged_attempts"
        );
        for q in [0.0, 1.0, -0.5, f64::NAN, f64::INFINITY] {
            assert_eq!(field(Hedging::at_quantile(q)), "hedging.quantile", "{q}");
        }
        assert_eq!(
            field(Hedging::at_quantile(0.9).min_delay(d * 2).max_delay(d)),
            "hedging.max_delay"
        );
        assert_eq!(
            field(Hedging::at_quantile(0.9).min_samples(0)),
            "hedging.min_samples"
        );
        assert_eq!(
            field(Hedging::at_quantile(0.9).half_life(Duration::from_millis(9))),
            "hedging.half_life"
        );
        assert_eq!(
            field(Hedging::at_quantile(0.9).max_hosts(0)),
            "hedging.max_hosts"
        );
        assert_eq!(
            Hedging::at_quantile(0.999).summary(),
            "hedging(p99.9, max_hedged_attempts=2)"
        );
        assert_eq!(
            Hedging::at_quantile(0.95).summary(),
            "hedging(p95, max_hedged_attempts=2)"
        );
        assert!(Hedging::after(Duration::ZERO).validate().is_ok());
        assert!(Hedging::after(d).max_hedged_attempts(1).validate().is_ok());
        assert!(Hedging::at_quantile(0.999)
            .max_hedged_attempts(10)
            .validate()
            .is_ok());
    }

    #[tokio::test]
    async fn a_layer_under_a_retry_stage_spends_its_budget_and_keeps_its_estimates() {
        let retry = RetryLayer::new(crate::retry::Retry::default()).unwrap();
        let hedge = HedgeLayer::new(Hedging::at_quantile(0.95)).unwrap();
        let under = hedge.clone().under(Some(&retry));
        assert!(!under.shared.deposits);
        let (a, b) = (under.shared.budget.as_ref(), retry.budget_handle());
        assert!(a.unwrap().same_as(b.as_ref().unwrap()));
        let back = under.clone().under(None);
        assert!(back.shared.deposits);
        assert!(
            back.shares_state_with(&hedge),
            "its own budget, the same estimates"
        );
        let no_budget = RetryLayer::new(crate::retry::Retry::default().no_budget()).unwrap();
        assert!(hedge.under(Some(&no_budget)).shared.budget.is_none());
    }
}
