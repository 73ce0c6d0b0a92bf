//! Events: what the pipeline did, for applications that count it without `tracing`.
//!
//! Register a hook with [`ClientBuilder::on_event`](crate::ClientBuilder::on_event) (or a layer's
//! `on_event`). The hook runs inline on the request's task, so it must be quick: count, do not
//! block.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use url::Url;

use crate::classify::FailureClass;
use crate::error::TimeoutKind;

/// Something the pipeline did.
///
/// The URLs it carries are the requests' own, for the hook to read (a path to count by, say).
/// Its `Debug` shows them by palisade's redaction rules, without userinfo and with query values
/// replaced by `REDACTED`, so that logging an event with `{:?}` leaks nothing.
#[derive(Clone)]
#[non_exhaustive]
pub enum Event<'a> {
    /// An attempt finished (every attempt, the first included). Emitted by the retry stage:
    /// a pipeline without one (`no_retry`) emits none.
    #[non_exhaustive]
    Attempt {
        /// The request's method.
        method: &'a Method,
        /// The request's URL.
        url: &'a Url,
        /// The attempt's number, from 1.
        attempt: u32,
        /// How the attempt was classed.
        class: FailureClass,
        /// The response's status, if there was a response.
        status: Option<StatusCode>,
    },
    /// The retry stage will try again after `delay`.
    #[non_exhaustive]
    Retry {
        /// The request's method.
        method: &'a Method,
        /// The request's URL.
        url: &'a Url,
        /// The number of the attempt about to be made, from 2.
        attempt: u32,
        /// How the previous attempt was classed.
        class: FailureClass,
        /// How long the stage sleeps first.
        delay: Duration,
        /// Whether `delay` came from the server's `Retry-After`.
        from_retry_after: bool,
    },
    /// The retry stage returned a failed outcome it could otherwise have retried.
    #[non_exhaustive]
    GaveUp {
        /// The request's method.
        method: &'a Method,
        /// The request's URL.
        url: &'a Url,
        /// The attempts made.
        attempts: u32,
        /// How the last attempt was classed.
        class: FailureClass,
        /// Why it did not try again.
        reason: GiveUpReason,
    },
    /// The hedging stage sent a copy of a request whose attempt had not answered yet (see
    /// [`hedge`](crate::hedge)).
    #[non_exhaustive]
    Hedge {
        /// The request's method.
        method: &'a Method,
        /// The request's URL.
        url: &'a Url,
        /// The copy's number in its race: 2 for the first hedge (1 is the attempt it hedges).
        attempt: u32,
        /// How long after that first attempt it was sent.
        after: Duration,
    },
    /// A race in which the hedging stage sent at least one hedge ended with an acceptable
    /// answer (one the classifier does not call a failure).
    #[non_exhaustive]
    HedgeWon {
        /// The request's method.
        method: &'a Method,
        /// The request's URL.
        url: &'a Url,
        /// The number of the attempt that answered: 1 for the first (the hedges did not help),
        /// 2 for the first hedge, and so on.
        attempt: u32,
        /// The attempts the race sent, the first included.
        sent: u32,
    },
    /// A circuit breaker changed state (logged at `warn` by tracing too).
    #[non_exhaustive]
    CircuitStateChanged {
        /// The breaker's key: the host (`host:port`), or `""` for a breaker shared by all hosts.
        key: &'a str,
        /// The state it left.
        from: CircuitState,
        /// The state it entered.
        to: CircuitState,
    },
    /// The rate limiter held a call until a token was free (or its host's pause was over),
    /// reported once per call when it takes its token, however many times it lost a token to
    /// another waiting call before. A call held and then refused is reported as
    /// [`Event::Rejected`] only.
    #[non_exhaustive]
    RateLimitWait {
        /// The limiter's key: the host, or `""` for a global limiter (whose one bucket is no
        /// host's), except for a call held by its host's pause: then its host.
        key: &'a str,
        /// How long the call was held, from its arrival at the stage to its token.
        wait: Duration,
    },
    /// A server's 429 (or 503 with `Retry-After`) paused the rate limiter for its host.
    #[non_exhaustive]
    ServerPushback {
        /// The host that is paused (`host:port`): a pause holds its host only, whether the
        /// limiter is per host or global.
        key: &'a str,
        /// How long the limiter holds every call to that key.
        pause: Duration,
    },
    /// A stage refused a call without sending it.
    #[non_exhaustive]
    Rejected {
        /// Which stage: `CircuitOpen`, `RateLimited` or `BulkheadFull`.
        kind: crate::ErrorKind,
        /// The stage's key: the host, or `""` for a stage shared by all hosts (but the host
        /// for a call a global rate limiter holds because its host is paused).
        key: &'a str,
        /// When trying again may succeed, where the stage knows.
        retry_after: Option<Duration>,
    },
    /// The fallback cache answered a failed request with a stored response, or with its static
    /// fallback (logged at `info` by tracing too).
    #[non_exhaustive]
    Fallback {
        /// The request's URL.
        url: &'a Url,
        /// The failure it stands in for.
        reason: crate::fallback::FallbackReason,
        /// The stored response's age; `None` for the static fallback.
        age: Option<Duration>,
    },
    /// Fleet mode (feature `redis`): the rate limiter moved between the quota shared on Redis
    /// and its local fallback (logged at `warn` by tracing too).
    #[non_exhaustive]
    FleetModeChanged {
        /// The mode it entered.
        mode: FleetMode,
        /// Why: how Redis failed (`timeout`, `unreachable`, `error reply`, `bad reply`), or
        /// `reconnected`.
        reason: &'a str,
    },
    /// palisade's attempt or total timeout fired, or a circuit breaker's probe timeout
    /// ([`TimeoutKind::Probe`]: the probe was cancelled and the breaker opened again, which is
    /// a [`CircuitStateChanged`](Event::CircuitStateChanged) of its own). The transport's own
    /// timeouts (reqwest's `timeout`, `connect_timeout`, `read_timeout`) are seen as an
    /// `Attempt` whose class is `Timeout`, not as this event.
    #[non_exhaustive]
    Timeout {
        /// Which timeout.
        kind: TimeoutKind,
        /// How long it was.
        after: Duration,
    },
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::redact::DisplayUrl;
        match self {
            Event::Attempt {
                method,
                url,
                attempt,
                class,
                status,
            } => f
                .debug_struct("Attempt")
                .field("method", method)
                .field("url", &DisplayUrl(url))
                .field("attempt", attempt)
                .field("class", class)
                .field("status", status)
                .finish(),
            Event::Retry {
                method,
                url,
                attempt,
                class,
                delay,
                from_retry_after,
            } => f
                .debug_struct("Retry")
                .field("method", method)
                .field("url", &DisplayUrl(url))
                .field("attempt", attempt)
                .field("class", class)
                .field("delay", delay)
                .field("from_retry_after", from_retry_after)
                .finish(),
            Event::GaveUp {
                method,
                url,
                attempts,
                class,
                reason,
            } => f
                .debug_struct("GaveUp")
                .field("method", method)
                .field("url", &DisplayUrl(url))
                .field("attempts", attempts)
                .field("class", class)
                .field("reason", reason)
                .finish(),
            Event::Hedge {
                method,
                url,
                attempt,
                after,
            } => f
                .debug_struct("Hedge")
                .field("method", method)
                .field("url", &DisplayUrl(url))
                .field("attempt", attempt)
                .field("after", after)
                .finish(),
            Event::HedgeWon {
                method,
                url,
                attempt,
                sent,
            } => f
                .debug_struct("HedgeWon")
                .field("method", method)
                .field("url", &DisplayUrl(url))
                .field("attempt", attempt)
                .field("sent", sent)
                .finish(),
            Event::CircuitStateChanged { key, from, to } => f
                .debug_struct("CircuitStateChanged")
                .field("key", key)
                .field("from", from)
                .field("to", to)
                .finish(),
            Event::RateLimitWait { key, wait } => f
                .debug_struct("RateLimitWait")
                .field("key", key)
                .field("wait", wait)
                .finish(),
            Event::ServerPushback { key, pause } => f
                .debug_struct("ServerPushback")
                .field("key", key)
                .field("pause", pause)
                .finish(),
            Event::Rejected {
                kind,
                key,
                retry_after,
            } => f
                .debug_struct("Rejected")
                .field("kind", kind)
                .field("key", key)
                .field("retry_after", retry_after)
                .finish(),
            Event::Fallback { url, reason, age } => f
                .debug_struct("Fallback")
                .field("url", &DisplayUrl(url))
                .field("reason", reason)
                .field("age", age)
                .finish(),
            Event::FleetModeChanged { mode, reason } => f
                .debug_struct("FleetModeChanged")
                .field("mode", mode)
                .field("reason", reason)
                .finish(),
            Event::Timeout { kind, after } => f
                .debug_struct("Timeout")
                .field("kind", kind)
                .field("after", after)
                .finish(),
        }
    }
}

/// Where a fleet-mode rate limiter takes its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum FleetMode {
    /// From the bucket shared on Redis.
    Shared,
    /// From its local share of the quota, while Redis fails.
    Local,
}

/// The state of a circuit breaker. With the `serde` feature it serializes as `"closed"`,
/// `"open"` or `"half_open"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum CircuitState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are rejected until the break duration has passed.
    Open,
    /// A few probe calls are let through; their outcomes decide whether it closes or opens
    /// again.
    HalfOpen,
}

/// Why the retry stage did not try a retryable failure again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// Every attempt allowed was made.
    MaxAttempts,
    /// The retry budget had no retry left: retries already add as much load as allowed.
    BudgetExhausted,
    /// The method is not idempotent and the request carries no `Idempotency-Key`.
    NotIdempotent,
    /// The request's body is a stream that cannot be sent twice.
    BodyNotCloneable,
    /// The server's `Retry-After` asks for a longer wait than `max_retry_after` allows.
    RetryAfterTooLong,
    /// The server's `Retry-After` points past the total deadline.
    RetryAfterPastDeadline,
}

type HookFn = dyn Fn(&Event<'_>) + Send + Sync;

/// A shared event hook, and the metrics that events feed; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Hook {
    user: Option<Arc<HookFn>>,
    #[cfg(feature = "metrics")]
    metrics: Option<Arc<crate::metrics::Sink>>,
}

impl Hook {
    pub(crate) fn new<F>(f: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        Hook {
            user: Some(Arc::new(f)),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// This hook, with the metrics fed by its events too.
    #[cfg(feature = "metrics")]
    pub(crate) fn with_metrics(mut self, sink: Option<Arc<crate::metrics::Sink>>) -> Self {
        self.metrics = sink;
        self
    }

    /// The metrics this hook feeds.
    #[cfg(feature = "metrics")]
    pub(crate) fn metrics(&self) -> Option<&Arc<crate::metrics::Sink>> {
        self.metrics.as_ref()
    }

    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        #[cfg(feature = "metrics")]
        if self.metrics.is_some() {
            return true;
        }
        self.user.is_some()
    }

    #[inline]
    pub(crate) fn emit(&self, event: impl FnOnce() -> Event<'static>) {
        if self.is_set() {
            self.emit_ref(&event());
        }
    }

    #[inline]
    pub(crate) fn emit_ref(&self, event: &Event<'_>) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.event(event);
        }
        if let Some(f) = &self.user {
            f(event);
        }
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.user.is_some() {
            "Hook(set)"
        } else {
            "Hook(none)"
        })
    }
}
