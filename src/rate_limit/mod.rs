//! Rate limit: at most so many calls per second (or minute), for all hosts or per host, and
//! a pause when a server says to slow down.
//!
//! The limiter is [governor]'s GCRA (generic cell rate algorithm), a token bucket without a
//! refill timer: a [`RateLimit::per_second`]`(n)` limiter frees one token every `1/n` s and
//! holds at most [`burst`](RateLimit::burst) of them. Every call through the stage takes a
//! token before it is sent; the stage sits below the retry stage, so each attempt takes one,
//! retries included. Keep it that way: a client that spends its rate on first attempts only
//! would let retries overrun a quota the server counts per request.
//!
//! # When no token is free
//!
//! The call waits until the earliest moment a token can be free, bounded by
//! [`max_wait`](RateLimit::max_wait) (1 s by default) and by the request's total deadline.
//! When the wait would go past either, the call fails at once with an [`Error`] whose
//! [`kind`](Error::kind) is [`ErrorKind::RateLimited`] and whose
//! [`retry_after`](Error::retry_after) says how long until a token is free: waiting for a
//! token that comes after the deadline would only turn a fast, explicit rejection into a
//! timeout. [`fail_fast`](RateLimit::fail_fast) never waits.
//!
//! Waiting calls are not queued: each sleeps until the earliest moment a token can be free,
//! then tries again, as governor's own waiting does. When several wait for the same token,
//! one takes it and the others wait for the next, each within its own `max_wait`, which
//! counts from the call's arrival. A call that is rejected, or dropped while it waits, never
//! takes a token and never reaches the inner service.
//!
//! # Server pushback
//!
//! A response the [`Classifier`] calls [`Throttled`](FailureClass::Throttled) (by default a
//! 429, or a 503 with `Retry-After`) that carries a valid `Retry-After` pauses its host
//! (`host:port` of the request) until then, capped by
//! [`max_pushback`](RateLimit::max_pushback) (60 s by default). That host only, whether the
//! limiter is per host or global: a global limiter still has one bucket for all hosts, but a
//! 429 from a webhook target or a user-supplied URL must not stop the calls to every other
//! host. The pause holds every call to that host, not only the one that saw the response:
//! calls that arrive during it wait for its end within the same bounds as for a token, or fail
//! at once with the rest of the pause as their `retry_after`. A later response does not cut a
//! pause short, whatever its status; a later, longer `Retry-After` extends it, a shorter one
//! leaves it as it is. A host's bucket fills while it is paused, so up to `burst` calls may go
//! at the pause's end (for a global limiter, whatever the other hosts left in it). Each pause
//! that starts or grows is reported as [`Event::ServerPushback`], with the host as its key,
//! and a `tracing` event at `info`; a call held by a pause is reported with its host as the
//! key, by a global limiter too.
//!
//! Pauses are kept by host apart from the buckets, for both kinds of limiter, and at most
//! [`max_hosts`](RateLimit::max_hosts) of them (the hosts and the `Retry-After` values are
//! chosen by remote parties). When the map is full, a new pause takes the place of the one
//! that ends first: pauses already over first (they hold nothing), then the one nearest to
//! its end, whose host is thereby called again the least time early of all; a new pause that
//! would end before every pause held is not kept. A flood of 429s from many hosts can thus
//! cut short the pauses nearest to their end, but cannot lengthen a pause, hold a host that
//! did not push back, or grow memory past the cap. When no pause is running, calls do not
//! look at the pause map (one atomic load tells them), and the first call after the last
//! pause ends drops them all.
//!
//! # Per host, and memory
//!
//! [`per_host`](RateLimit::per_host) keeps one bucket per `host:port`, at most
//! [`max_hosts`](RateLimit::max_hosts) of them (10,000 by default), in a store of palisade's
//! own around governor's GCRA state (governor's keyed store has no bound, and is looked up
//! with an owned key, a `String` built for every call; this one is looked up with a key built
//! on the stack, and allocates for a new host only). Nothing is evicted below the cap. Two
//! rules keep it small:
//!
//! - A bucket that is full again (at most `burst` token intervals after its host's last call
//!   that took a token) behaves exactly as a new host's: a sweep drops it. The sweep is
//!   considered every 1,024 calls and runs when at least as many calls came since the last
//!   sweep as that sweep kept hosts, or when a second (or `burst` intervals, if longer) has
//!   passed since it; so sweeping, which walks every host, costs a constant amount per call,
//!   amortized, plus at most one walk a second. It drops pauses that are over too. Without
//!   calls, nothing is swept (and nothing is added).
//! - At the cap, a new host's bucket takes the place of the one that ends first (is full
//!   again soonest) among the hosts of its shard of the store (the store is split in up to 64
//!   shards, a shard per 64 hosts of the cap, so 64 hosts or more on average): full buckets
//!   first, since they hold nothing, then the one nearest to full, since forgetting it lets
//!   through the fewest calls beyond the rate. Unlike least recently used, it keeps a host
//!   that spent a large burst long ago and still has long to wait, rather than hand it the
//!   whole burst again. An evicted host's state
//!   is lost: its next call finds it new, with its whole burst again. A new host is always
//!   stored (one that was not would be new on every call, so not limited at all), except
//!   when its shard is empty while the store is full, which needs every one of `max_hosts`
//!   hosts to hash to the other shards.
//!
//! [`RateLimitLayer::tracked_hosts`] says how many buckets are held. Pauses are held apart,
//! as [above](self#server-pushback), under the same cap: a limiter holds at most
//! `max_hosts` buckets and `max_hosts` pauses. Each is held under its host's key, at most
//! 259 bytes: a longer `host:port` (no DNS name is that long, but a URL may hold one, and a
//! proxy answer for it) is cut to its first 200 bytes, `#` and a hash of the whole, in the
//! limiter's maps and in its events and logs alike.
//!
//! # Fleet mode
//!
//! With the `redis` feature, [`RateLimit::redis`] shares the quota and the server pushback
//! among every instance of an application configured alike (same Redis, same
//! [`prefix`](Redis::prefix)): `RateLimit::per_second(100).redis(..)` on 8 instances lets
//! 100 calls a second through for all of them together, not 800.
//!
//! - **The bucket** is on Redis: each check is one atomic Lua script (`EVALSHA`) that runs the
//!   same GCRA as the local limiter on Redis's own clock (`TIME`, so instances whose clocks
//!   differ agree), under `<prefix>:bucket:<host:port>` (per host) or `<prefix>:bucket`
//!   (global), which expires once the bucket is full again. It needs no module (unlike
//!   redis-cell's `CL.THROTTLE`): any Redis 5 or later, or Valkey. `burst`, `max_wait`, the
//!   deadline bound, `fail_fast` and the `retry_after` hint behave as without Redis; a call
//!   that waits asks Redis again when it wakes. One round trip per attempt by default;
//!   [`Redis::lease`] takes several tokens per round trip, with a bound on the overshoot.
//! - **Pushback** is shared: a throttled response with `Retry-After` pauses its host on this
//!   instance at once and, in the background, on Redis (`<prefix>:pause:<host:port>`, expiring
//!   at the pause's end, capped by `max_pushback`, never shortened), which every instance's
//!   next check reads; an instance that learns of a pause this way keeps it locally too, and
//!   asks Redis no more until it ends.
//! - **Redis fails too.** Every Redis call, connecting included, is bounded by
//!   [`Redis::timeout`] (50 ms by default) and by the request's deadline. When a call times
//!   out, the connection breaks, or Redis answers with an error or a reply that is not the
//!   script's, the limiter switches to its **local fallback**: a GCRA of
//!   [`Redis::local_share`] of the quota (the whole quota by default; `1.0 / n` for `n`
//!   instances keeps the fleet within it), never unlimited unless
//!   [`Redis::unlimited_fallback`] says so, and it never waits for Redis again while there:
//!   a background task tries a `PING` every [`Redis::reconnect_every`] (250 ms) and returns to
//!   the shared bucket as soon as one answers. So no call waits for Redis longer than one
//!   Redis timeout, and the shared quota is back within `reconnect_every` (plus a timeout) of
//!   Redis's return. Each switch is an [`Event::FleetModeChanged`], a `warn` log and, with
//!   `metrics`, `palisade.rate_limit.fleet.shared` and `palisade.rate_limit.fleet.fallbacks`.
//!   A deadline that leaves no time for Redis makes that one call use the fallback, without
//!   switching.
//! - **Secrets**: the Redis URL's user and password are never logged, shown in `Debug`, or
//!   quoted in an error or event.
//!
//! While the fallback runs, pauses set by other instances are not seen, and this instance's
//! pushbacks are kept locally only. [`Client::health`](crate::Client::health) shows the
//! local limiter (the fallback's bucket, and this instance's pauses), not the shared bucket.
//! Redis Cluster is not supported (the check reads two keys, which may be in two slots).
//!
//! # Time
//!
//! The limiter reads tokio's clock (governor's `Clock` is implemented on
//! [`tokio::time::Instant`]) and waits with [`tokio::time::sleep`], so tests with paused time
//! (`#[tokio::test(start_paused = true)]`) drive it exactly, as they do every other stage.
//!
//! [governor]: https://docs.rs/governor

mod clock;
#[cfg(feature = "redis")]
mod fleet;
mod future;
mod key;
mod limiter;
mod store;

#[cfg(feature = "redis")]
pub use self::fleet::Redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use self::clock::{nanos, TokioClock};
pub use self::future::RateLimitFuture;
use self::key::HostKey;
use self::limiter::{quota, Denied, Limiter};
use crate::classify::{Classifier, FailureClass, Outcome};
use crate::context;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::event::{Event, Hook};
use crate::health::LimiterHealth;
use crate::retry_after::retry_after;

/// The longest time a burst may take to refill (token interval × burst): past it, governor's
/// arithmetic, in nanoseconds in a `u64`, would come close to overflowing.
const MAX_REFILL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The longest pause server pushback can impose, whatever `max_pushback` says, so that the
/// limiter's arithmetic (nanoseconds in a `u64`, some 584 years) never overflows.
const MAX_PUSHBACK: Duration = MAX_REFILL;

/// The rate limiter's configuration.
///
/// Start from a rate, [`RateLimit::per_second`] or [`RateLimit::per_minute`]; the defaults for
/// the rest are a burst of one period's worth of tokens (the rate itself), one limiter shared
/// by all hosts, waits of up to 1 s for a token, server pushback honoured up to 60 s, and
/// state for at most 10,000 hosts.
///
/// ```
/// use std::time::Duration;
/// use palisade::rate_limit::{RateLimit, RateLimitLayer};
///
/// // 50 calls per second to each host, bursts of up to 10, waiting at most 250 ms for a token,
/// // for at most 1,000 hosts at once.
/// let limit = RateLimit::per_second(50)
///     .burst(10)
///     .per_host()
///     .max_hosts(1_000)
///     .max_wait(Duration::from_millis(250))
///     .max_pushback(Duration::from_secs(30));
/// let layer = RateLimitLayer::new(limit)?;
/// # let _ = layer;
///
/// // A rate of zero is refused, naming the field.
/// let err = RateLimitLayer::new(RateLimit::per_minute(0)).unwrap_err();
/// assert_eq!(err.field(), "rate_limit.rate");
/// # let err = RateLimitLayer::new(RateLimit::per_second(1).max_hosts(0)).unwrap_err();
/// # assert_eq!(err.field(), "rate_limit.max_hosts");
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a policy does nothing until given to a client or a layer"]
pub struct RateLimit {
    rate: u32,
    per_minute: bool,
    burst: Option<u32>,
    per_host: bool,
    max_wait: Duration,
    max_pushback: Duration,
    max_hosts: usize,
    #[cfg(feature = "redis")]
    redis: Option<Redis>,
}

impl RateLimit {
    fn new(rate: u32, per_minute: bool) -> Self {
        RateLimit {
            rate,
            per_minute,
            burst: None,
            per_host: false,
            max_wait: Duration::from_secs(1),
            max_pushback: Duration::from_secs(60),
            max_hosts: 10_000,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// `n` calls per second: one token every `1/n` s. `n` must be at least 1.
    pub fn per_second(n: u32) -> Self {
        RateLimit::new(n, false)
    }

    /// `n` calls per minute: one token every `60/n` s. `n` must be at least 1.
    pub fn per_minute(n: u32) -> Self {
        RateLimit::new(n, true)
    }

    /// The most tokens the bucket holds: how many calls may go at once after a quiet spell.
    /// Default: the rate (one second's or one minute's worth). Must be at least 1, and the
    /// bucket must refill (token interval × burst) within 100 years.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// One limiter for all hosts together. The default.
    pub fn global(mut self) -> Self {
        self.per_host = false;
        self
    }

    /// One limiter per host (`host:port`), each with the full rate; at most
    /// [`max_hosts`](Self::max_hosts) of them are kept, and idle ones are dropped (see the
    /// [module docs](self#per-host-and-memory)). Default: [`global`](Self::global).
    pub fn per_host(mut self) -> Self {
        self.per_host = true;
        self
    }

    /// The most hosts the limiter keeps state for, counted apart for token buckets (per host
    /// only) and for server-pushback pauses (global or per host): at most `n` of each. No
    /// host's state is evicted below it. At the cap, a new host's bucket takes the place of
    /// the one that is full again soonest among a share of the hosts (64 or more on average):
    /// full ones first, then the one nearest to full, whose host's next call finds it new, with
    /// its whole burst. A new pause takes the place of the one that ends first, pauses already
    /// over first; a new pause that would end before all of them is not kept. See the
    /// [module docs](self#per-host-and-memory). Default 10,000; must be at least 1.
    pub fn max_hosts(mut self, n: usize) -> Self {
        self.max_hosts = n;
        self
    }

    /// The longest a call waits in the stage, for tokens and for pauses together, counted from
    /// its arrival. A call that would wait longer fails at once with
    /// [`ErrorKind::RateLimited`]. Default 1 s; zero is [`fail_fast`](Self::fail_fast).
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.max_wait = max;
        self
    }

    /// Never waits: a call that finds no token free (or its host paused) fails at once with
    /// [`ErrorKind::RateLimited`] and a `retry_after` hint. The same as `max_wait(Duration::ZERO)`.
    pub fn fail_fast(self) -> Self {
        self.max_wait(Duration::ZERO)
    }

    /// The longest pause a server's `Retry-After` (on a throttled response) imposes on its
    /// host's limiter; a longer `Retry-After` pauses for this long. Default 60 s; zero ignores
    /// server pushback. Whatever the setting, no pause lasts more than 100 years.
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.max_pushback = max;
        self
    }

    /// Fleet mode (feature `redis`): the quota and server pushback shared on Redis by every
    /// instance with the same settings, with a local fallback while Redis fails. See the
    /// [module docs](self#fleet-mode) and [`Redis`].
    #[cfg(feature = "redis")]
    pub fn redis(mut self, redis: Redis) -> Self {
        self.redis = Some(redis);
        self
    }

    fn burst_or_default(&self) -> u32 {
        self.burst.unwrap_or(self.rate)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.rate == 0 {
            return Err(ConfigError::new("rate_limit.rate", "must be at least 1"));
        }
        if self.max_hosts == 0 {
            return Err(ConfigError::new(
                "rate_limit.max_hosts",
                "must be at least 1",
            ));
        }
        let burst = self.burst_or_default();
        if burst == 0 {
            return Err(ConfigError::new("rate_limit.burst", "must be at least 1"));
        }
        let interval = quota(self.rate, self.per_minute, 1).replenish_interval();
        let refill = nanos(interval).checked_mul(u64::from(burst));
        if refill.is_none_or(|n| n > nanos(MAX_REFILL)) {
            return Err(ConfigError::new(
                "rate_limit.burst",
                format!(
                    "must refill within 100 years (one token every {interval:?}, burst {burst})"
                ),
            ));
        }
        #[cfg(feature = "redis")]
        if let Some(r) = &self.redis {
            r.validate(burst)?;
        }
        Ok(())
    }
}

/// What the stage's services share: the configuration, the limiter's state, the classifier
/// and the event hook.
#[derive(Clone)]
pub(crate) struct Shared {
    cfg: RateLimit,
    /// The limiter; in fleet mode, the local fallback's (a share of the quota) and this
    /// instance's own pauses.
    limiter: Arc<Limiter<TokioClock>>,
    classifier: Classifier,
    hook: Hook,
    #[cfg(feature = "redis")]
    fleet: Option<Arc<fleet::Fleet>>,
}

/// A token asked of Redis (fleet mode): `None` when the local fallback must answer.
pub(crate) type RemoteCheck = Pin<Box<dyn Future<Output = Option<Verdict>> + Send>>;

/// What the shared bucket said (fleet mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Verdict {
    /// A token was taken.
    Taken,
    /// No token, or the host is paused fleet-wide.
    Denied(Denied),
}

/// What a call's try for a token came to.
pub(crate) enum Try {
    Taken,
    Denied(Denied),
    /// Asking Redis, until the instant given at the latest.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Remote(RemoteCheck, Instant),
}

impl Shared {
    /// Tries for a token for `key`: from this limiter, or in fleet mode from Redis (unless a
    /// pause this instance knows holds the host, or Redis is failing).
    pub(crate) fn try_take(&self, key: &HostKey) -> Try {
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.fleet {
            if let Some(wait) = self.limiter.pause_left(key) {
                return Try::Denied(Denied { wait, paused: true });
            }
            if fleet.is_shared() {
                let deadline = context::deadline();
                match fleet.check(key, deadline) {
                    fleet::CheckOr::Remote(check, until) => return Try::Remote(check, until),
                    fleet::CheckOr::Taken => return Try::Taken,
                    fleet::CheckOr::Local => {}
                }
            }
            return self.take_locally(key);
        }
        match self.limiter.acquire(key) {
            Ok(()) => Try::Taken,
            Err(d) => Try::Denied(d),
        }
    }

    /// What Redis said (`None`: it could not say, so the local fallback answers).
    pub(crate) fn after_remote(&self, key: &HostKey, verdict: Option<Verdict>) -> Try {
        match verdict {
            Some(Verdict::Taken) => Try::Taken,
            Some(Verdict::Denied(d)) => {
                // Another instance's pause: hold this host here too, without asking again.
                if d.paused {
                    let _ = self.limiter.push_back(key, d.wait);
                }
                Try::Denied(d)
            }
            None => self.take_locally(key),
        }
    }

    /// Fleet mode's local fallback: a share of the quota, or no limit if so configured.
    #[cfg(feature = "redis")]
    fn take_locally(&self, key: &HostKey) -> Try {
        let unlimited = self
            .fleet
            .as_ref()
            .is_some_and(|f| f.cfg().is_unlimited_fallback());
        if unlimited {
            return match self.limiter.pause_left(key) {
                Some(wait) => Try::Denied(Denied { wait, paused: true }),
                None => Try::Taken,
            };
        }
        match self.limiter.acquire(key) {
            Ok(()) => Try::Taken,
            Err(d) => Try::Denied(d),
        }
    }

    #[cfg(not(feature = "redis"))]
    fn take_locally(&self, key: &HostKey) -> Try {
        match self.limiter.acquire(key) {
            Ok(()) => Try::Taken,
            Err(d) => Try::Denied(d),
        }
    }

    /// The key of the state that holds a call: its host's pause, or its host's bucket, or the
    /// one bucket of a global limiter.
    fn key<'k>(&self, host: &'k HostKey, paused: bool) -> &'k str {
        if paused || self.cfg.per_host {
            host.as_str()
        } else {
            ""
        }
    }

    /// Decides what a call that found no token does: sleep until the returned instant, or
    /// fail at once when that would take it past `max_wait` (counted from `arrived`) or the
    /// deadline. A call may be denied several times (it loses the token it woke for to
    /// another): it is reported once, by [`held`](Self::held), when it takes its token.
    fn decide(
        &self,
        denied: Denied,
        host: &HostKey,
        arrived: Instant,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Instant, Error> {
        let key = self.key(host, denied.paused);
        let wait = denied.wait;
        let left = self
            .cfg
            .max_wait
            .saturating_sub(now.saturating_duration_since(arrived));
        let until = now.checked_add(wait);
        let too_late = match (until, deadline) {
            (None, _) => true,
            // Waiting until the deadline is as bad as past it: the total timeout fires then.
            (Some(until), Some(deadline)) => until >= deadline,
            (Some(_), None) => false,
        };
        match until {
            Some(until) if wait <= left && !too_late => {
                tracing::debug!(
                    key,
                    wait_ms = wait.as_millis() as u64,
                    paused = denied.paused,
                    "rate limited: waiting"
                );
                Ok(until)
            }
            _ => {
                tracing::debug!(
                    key,
                    retry_after_ms = wait.as_millis() as u64,
                    paused = denied.paused,
                    "rate limited: rejected"
                );
                self.hook.emit_ref(&Event::Rejected {
                    kind: ErrorKind::RateLimited,
                    key,
                    retry_after: Some(wait),
                });
                Err(Error::rejected(ErrorKind::RateLimited, Some(wait)))
            }
        }
    }

    /// Reports a call that took its token after being held for `waited` (by its host's pause,
    /// if `paused`, at any of its waits).
    fn held(&self, host: &HostKey, paused: bool, waited: Duration) {
        let key = self.key(host, paused);
        self.hook
            .emit_ref(&Event::RateLimitWait { key, wait: waited });
    }

    /// Pauses the host when the response is a throttle with a `Retry-After`.
    fn observe(&self, host: &HostKey, resp: &Response) {
        if self.cfg.max_pushback.is_zero()
            || !resp.headers().contains_key(http::header::RETRY_AFTER)
            || self.classifier.classify(Outcome::Response(resp)) != FailureClass::Throttled
        {
            return;
        }
        let Some(asked) = retry_after(resp.headers()) else {
            return;
        };
        let pause = asked.min(self.cfg.max_pushback).min(MAX_PUSHBACK);
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.fleet {
            fleet.push_back(host, pause);
        }
        if let Some(pause) = self.limiter.push_back(host, pause) {
            let key = host.as_str();
            tracing::info!(
                key,
                status = resp.status().as_u16(),
                pause_ms = pause.as_millis() as u64,
                "server pushback: pausing the rate limiter"
            );
            self.hook.emit_ref(&Event::ServerPushback { key, pause });
        }
    }
}

/// A [`Layer`](tower_layer::Layer) that wraps a service in [`RateLimitService`]. Every service it makes shares
/// one limiter (per host or global), as every clone of a [`Client`](crate::Client) does.
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// A layer with the given limit.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `rate_limit.rate` when the rate is zero, for `rate_limit.burst`
    /// when the burst is zero or takes 100 years or more to refill, and for
    /// `rate_limit.max_hosts` when it is zero.
    pub fn new(cfg: RateLimit) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self::from_parts(
            cfg,
            Classifier::default(),
            Hook::default(),
        ))
    }

    /// A layer from a configuration the caller has validated (an invalid one works with its
    /// zeros read as 1, rather than panicking).
    pub(crate) fn from_parts(cfg: RateLimit, classifier: Classifier, hook: Hook) -> Self {
        let q = quota(cfg.rate, cfg.per_minute, cfg.burst_or_default());
        #[cfg(feature = "redis")]
        let (q, fleet) = match &cfg.redis {
            Some(r) => {
                let (rate, burst) = r.local_quota(cfg.rate, cfg.burst_or_default());
                let fleet = fleet::Fleet::new(
                    r.clone(),
                    q.replenish_interval(),
                    q.burst_size().get(),
                    cfg.per_host,
                    cfg.max_hosts,
                    hook.clone(),
                );
                (quota(rate, cfg.per_minute, burst), fleet.map(Arc::new))
            }
            None => (q, None),
        };
        let limiter = Arc::new(Limiter::new(q, cfg.per_host, cfg.max_hosts, TokioClock));
        RateLimitLayer {
            shared: Arc::new(Shared {
                cfg,
                limiter,
                classifier,
                hook,
                #[cfg(feature = "redis")]
                fleet,
            }),
        }
    }

    /// Uses `classifier` instead of the default to tell which responses are throttles (whose
    /// `Retry-After` pauses the limiter). It applies to the services made since.
    pub fn classifier(self, classifier: Classifier) -> Self {
        self.rebuild(|s| s.classifier = classifier)
    }

    /// Calls `hook` for every call held ([`Event::RateLimitWait`]), rejection ([`Event::Rejected`])
    /// and pause ([`Event::ServerPushback`]) of the services made since.
    pub fn on_event<F>(self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.rebuild(|s| s.hook = Hook::new(hook))
    }

    /// How many hosts a per-host limiter holds a bucket for: at most
    /// [`max_hosts`](RateLimit::max_hosts), idle ones dropped as the
    /// [module docs](self#per-host-and-memory) say. Always 0 for a global limiter (its one
    /// bucket is no host's). Pauses are not counted.
    pub fn tracked_hosts(&self) -> usize {
        self.shared.limiter.len()
    }

    // The limiter's state is kept: services made before and after share it.

    /// A read-only view of the limiter's state, for [`Client::health`](crate::Client::health).
    pub(crate) fn view(&self) -> LimiterView {
        LimiterView {
            limiter: self.shared.limiter.clone(),
            #[cfg(feature = "redis")]
            fleet: self.shared.fleet.clone(),
        }
    }
}

/// A read-only view of a limiter's buckets and pauses, for
/// [`Client::health`](crate::Client::health). Reading changes nothing (see
/// [`crate::health`]).
#[derive(Clone)]
pub(crate) struct LimiterView {
    limiter: Arc<Limiter<TokioClock>>,
    #[cfg(feature = "redis")]
    fleet: Option<Arc<fleet::Fleet>>,
}

impl LimiterView {
    /// Where a fleet-mode limiter takes its tokens now; `None` without fleet mode.
    pub(crate) fn fleet_mode(&self) -> Option<crate::FleetMode> {
        #[cfg(feature = "redis")]
        if let Some(f) = &self.fleet {
            return Some(if f.is_shared() {
                crate::FleetMode::Shared
            } else {
                crate::FleetMode::Local
            });
        }
        None
    }

    fn bucket(&self, tokens: u32) -> LimiterHealth {
        LimiterHealth {
            tokens,
            burst: self.limiter.burst(),
        }
    }

    /// The one bucket of a global limiter; `None` per host.
    pub(crate) fn global(&self) -> Option<LimiterHealth> {
        self.limiter.global_tokens().map(|n| self.bucket(n))
    }

    /// A new host's bucket (full) for a per-host limiter; `None` for a global one.
    pub(crate) fn full_bucket(&self) -> Option<LimiterHealth> {
        self.limiter
            .is_per_host()
            .then(|| self.bucket(self.limiter.burst()))
    }

    /// Calls `f` with each host whose bucket is not full again (per host only).
    pub(crate) fn buckets(&self, mut f: impl FnMut(&str, LimiterHealth)) {
        self.limiter
            .for_each_bucket(|host, n| f(host, self.bucket(n)));
    }

    /// Calls `f` with each host paused by server pushback, and the time its pause has left.
    pub(crate) fn pauses(&self, f: impl FnMut(&str, Duration)) {
        self.limiter.for_each_pause(f);
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limit", &self.shared.cfg)
            .field("classifier", &self.shared.classifier)
            .field("hook", &self.shared.hook)
            .finish()
    }
}

crate::shared_layer!(RateLimitLayer => RateLimitService);

/// Limits the rate of calls as the [module docs](self) describe. Made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    shared: Arc<Shared>,
}

crate::inner_accessors!(RateLimitService);

impl<S: fmt::Debug> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("limit", &self.shared.cfg)
            .finish()
    }
}

impl<S> Service<Request> for RateLimitService<S>
where
    S: Service<Request, Response = Response> + Clone,
    S::Error: Into<Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = RateLimitFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> RateLimitFuture<S> {
        let shared = self.shared.clone();
        // The host, on the stack unless it is long: for its bucket, its pause, and its
        // response's pushback. A global limiter that ignores pushback needs none.
        let key = if shared.cfg.per_host || !shared.cfg.max_pushback.is_zero() {
            HostKey::of(req.url())
        } else {
            HostKey::default()
        };
        let denied = match shared.try_take(&key) {
            // The common case: a token was free. Call the service driven to readiness.
            Try::Taken => return RateLimitFuture::calling(self.inner.call(req), shared, key),
            Try::Denied(denied) => denied,
            Try::Remote(check, until) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let wait = future::Wait::asking(inner, req, check, until, context::deadline());
                return RateLimitFuture::waiting(wait, shared, key);
            }
        };
        let now = Instant::now();
        let deadline = context::deadline();
        match shared.decide(denied, &key, now, now, deadline) {
            Ok(until) => {
                // Take the service that was driven to readiness for the call to come; leave a
                // clone in its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let wait = future::Wait::sleeping(inner, req, until, now, deadline, denied.paused);
                RateLimitFuture::waiting(wait, shared, key)
            }
            Err(mut e) => {
                e.set_url_if_missing(req.url());
                RateLimitFuture::rejected(e, shared, key)
            }
        }
    }
}
