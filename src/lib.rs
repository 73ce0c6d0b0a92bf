//! palisade: a resilience client for HTTP.
//!
//! palisade wraps a [`reqwest::Client`] and puts every request through a pipeline of stages:
//! a fallback cache, a total timeout, a bulkhead, retry (exponential backoff with jitter,
//! `Retry-After`, a retry budget), hedging, a circuit breaker per host, a rate limiter and an
//! attempt timeout. Each stage asks one [`Classifier`] what an outcome means — success,
//! client error (4xx), throttled (429), server error (5xx), timeout, network failure — and
//! acts on that class.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use palisade::{retry::Retry, ResponseExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = palisade::Client::builder()
//!     .total_timeout(Duration::from_secs(30))
//!     .attempt_timeout(Duration::from_secs(10))
//!     .retry(Retry::default().max_attempts(3))
//!     .build()?;
//!
//! let resp = client.get("https://api.example.com/users/1").send().await?;
//! println!("{} after {} attempt(s)", resp.status(), resp.attempts());
//! # Ok(()) }
//! ```
//!
//! An HTTP response is `Ok(reqwest::Response)` whatever its status, as in reqwest; when the
//! retries are spent, the last response is returned. `Err(palisade::Error)` is for failures
//! that produced no response: transport errors and timeouts.
//!
//! # The pipeline
//!
//! Outermost first (a request flows down, a response up):
//!
//! ```text
//! FallbackCache → TotalTimeout → Bulkhead → Retry(+budget) → Hedge → CircuitBreaker → RateLimit → AttemptTimeout → reqwest
//! ```
//!
//! The [`fallback`] cache (opt-in, [`ClientBuilder::fallback_cache`]) sees the final outcome,
//! a total timeout included, and answers a failure with the last good response it was allowed
//! to store.
//! The total timeout bounds every attempt and every backoff sleep, and no attempt starts after
//! it; the retry stage does not wait for a `Retry-After` that points past it. Retries happen
//! outside the breaker, so an open circuit stops them (a retry it turns away may wait for it
//! within the deadline: [`retry::Retry::no_circuit_wait`]); every attempt takes a rate-limit token,
//! and a rejected call takes none; a request holds one bulkhead place across its attempts.
//! [`hedge`] (opt-in, [`ClientBuilder::hedging`]) sends a copy of a slow idempotent attempt
//! after a delay (fixed, or a quantile of the host's recent latency) and takes the first good
//! answer: each copy is an attempt through the breaker, the limiter and the attempt timeout,
//! and each hedge spends the retry budget. The
//! [`circuit_breaker`] is on by default (one per host); the [`rate_limit`] and the
//! [`bulkhead`] are opt-in ([`ClientBuilder::rate_limit`], [`ClientBuilder::bulkhead`]). Each stage is also a public tower [`Layer`](tower_layer::Layer) in
//! [`layer`], over any `tower::Service<reqwest::Request, Response = reqwest::Response>`, for
//! those who build their own stacks.
//!
//! | class | what | retried by default |
//! |---|---|---|
//! | Success | 1xx–3xx | – |
//! | ClientError | 4xx other than 408 and 429 | no |
//! | Throttled | 429, and 503 with `Retry-After` | yes |
//! | ServerError | 5xx | 500, 502, 503, 504 |
//! | Timeout | attempt timeout, 408, transport timeout | yes |
//! | Network | connect, DNS, reset, incomplete message | yes |
//! | Cancelled | the caller dropped the future | no |
//!
//! Only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or requests that carry an
//! `Idempotency-Key` are retried, except after a connect failure, which is retried for any
//! method since nothing reached the server. A request whose body is a stream cannot be cloned
//! and is sent once.
//!
//! # palisade and reqwest's own retries and timeouts
//!
//! reqwest 0.13 has a retry of its own. The `reqwest::Client` palisade builds (by default, or
//! from [`ClientBuilder::http_client_builder`]) has it switched off with
//! `reqwest::retry::never()`, so an attempt is one request on the wire. A client you pass to
//! [`ClientBuilder::http_client`] keeps its policy: reqwest's default retries only HTTP/2
//! refused streams, which the server never processed, but a policy of your own would multiply
//! palisade's attempts; build such a client with `.retry(reqwest::retry::never())`.
//!
//! reqwest's timeouts (`timeout`, `connect_timeout`, `read_timeout` on its client builder)
//! still apply under palisade's and fire as [`TimeoutKind::Transport`]; the retry stage treats
//! them as attempt timeouts. palisade's timeouts end when the response's head arrives: reading
//! the body afterwards is bounded by reqwest's `timeout` or `read_timeout`, which palisade
//! never changes, or by a per-request [`RequestBuilder::timeout`], which is palisade's total
//! timeout for that request and, as in reqwest, covers the body too.
//!
//! # Events and tracing
//!
//! Every request runs in a `tracing` span `http.request` (with `http.request.method`,
//! `server.address` and `url.full`); each attempt, retry and timeout is a debug event with
//! `http.request.resend_count` and the class. Nothing palisade prints shows a secret: URLs lose
//! their userinfo and have every query value replaced by `REDACTED` (a bare query token is
//! replaced whole), in `url.full`, in [`Error`]'s `Display` and `Debug` and every error of its
//! `source()` chain, and in the `Debug` of events and request builders. Header values are never
//! logged. [`ClientBuilder::on_event`] takes a hook for the same [`Event`]s, to count them
//! without tracing.
//!
//! # Health
//!
//! [`Client::health`] takes a snapshot of the pipeline for a health endpoint: per host, the
//! breaker's state and recent failure ratio, the limiter's free tokens and pushback pause, the
//! bulkhead's load, the hedging delay; the retry budget's balance and the fallback store's
//! size. Reading it is bounded and changes nothing. See [`health`].
//!
//! # Features
//!
//! reqwest's features are forwarded under their own names: `default-tls`, `rustls`,
//! `rustls-no-provider`, `native-tls`, `native-tls-no-alpn`, `http2`, `charset`,
//! `system-proxy` (`default-tls`, `http2`, `charset` and `system-proxy` are on by default, as
//! in reqwest), `gzip`, `brotli`, `zstd`, `deflate`, `cookies`, `stream`, `socks` and
//! `hickory-dns`. `json`, `query`, `form` and `multipart` forward to reqwest and enable
//! `RequestBuilder::json`, `RequestBuilder::query`, `RequestBuilder::form` and
//! `RequestBuilder::multipart`. `blocking`, `http3` (unstable in reqwest) and
//! `native-tls-vendored` are not forwarded: depend on reqwest with them and Cargo switches
//! them on for palisade's reqwest too. `serde` implements `serde::Serialize` for the snapshot
//! of [`Client::health`] (see [`health`]) and adds `config`, the builder as data;
//! `config-toml`, `config-yaml` and `config-json` read it from files (see `config`).
//! `middleware` gives the pipeline as a `reqwest-middleware` middleware (see `middleware`).
//!
//! # MSRV
//!
//! Rust 1.88.

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// `get_ref`, `get_mut` and `into_inner` for a stage's service, as tower's services have.
macro_rules! inner_accessors {
    ($service:ident) => {
        impl<S> $service<S> {
            /// The inner service.
            pub fn get_ref(&self) -> &S {
                &self.inner
            }

            /// The inner service, mutably.
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.inner
            }

            /// Unwraps the inner service.
            pub fn into_inner(self) -> S {
                self.inner
            }
        }
    };
}
pub(crate) use inner_accessors;

/// The `Layer` of a stage whose layer and service share one `Arc<Shared>`: the service wraps
/// the inner service and a clone of the layer's state. Also the layer's `rebuild`, for the
/// setters that change one part of a layer already made (a classifier, a hook): the clone of
/// `Shared` keeps its `Arc`s, so the stage's state (budget, breakers, limiter, store) stays
/// shared with the services made before.
macro_rules! shared_layer {
    ($layer:ident => $service:ident) => {
        impl $layer {
            fn rebuild(self, f: impl FnOnce(&mut Shared)) -> Self {
                let mut shared = Shared::clone(&self.shared);
                f(&mut shared);
                $layer {
                    shared: std::sync::Arc::new(shared),
                }
            }
        }

        impl<S> tower_layer::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> Self::Service {
                $service {
                    inner,
                    shared: self.shared.clone(),
                }
            }
        }
    };
}
pub(crate) use shared_layer;

mod builder;
pub mod bulkhead;
pub mod circuit_breaker;
pub mod classify;
mod client;
#[cfg(feature = "serde")]
pub mod config;
mod context;
mod error;
mod event;
mod ext;
pub mod fallback;
pub mod health;
pub mod hedge;
mod host;
pub mod hosts;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "middleware")]
pub mod middleware;
pub mod rate_limit;
mod redact;
pub mod retry;
mod retry_after;
#[cfg(feature = "testing")]
pub mod testing;
mod time;
pub mod timeout;
mod transport;

pub use crate::builder::ClientBuilder;
pub use crate::classify::{Classifier, FailureClass, Outcome};
pub use crate::client::{Client, Pending, RequestBuilder};
pub use crate::error::{ConfigError, Error, ErrorKind, TimeoutKind};
pub use crate::event::{CircuitState, Event, FleetMode, GiveUpReason};
pub use crate::ext::ResponseExt;
pub use crate::health::Health;
pub use crate::hosts::HostPolicy;

/// The stages as tower layers, for those who build their own stacks.
///
/// Each is a [`Layer`](tower_layer::Layer) over any
/// `tower::Service<reqwest::Request, Response = reqwest::Response>` whose error converts into
/// [`Error`]; `reqwest::Client` is such a service. Stack them in the order of the
/// [pipeline](crate#the-pipeline): a retry stage outside the total timeout would restart the
/// deadline on each attempt.
///
/// ```
/// use std::time::Duration;
/// use palisade::layer::{AttemptTimeoutLayer, RetryLayer, TotalTimeoutLayer};
/// use palisade::retry::Retry;
///
/// let svc = tower::ServiceBuilder::new()
///     .layer(TotalTimeoutLayer::new(Duration::from_secs(30))?)
///     .layer(RetryLayer::new(Retry::default())?)
///     .layer(AttemptTimeoutLayer::new(Duration::from_secs(10))?)
///     .service(reqwest::Client::new());
/// # let _ = svc;
/// # Ok::<(), palisade::ConfigError>(())
/// ```
pub mod layer {
    pub use crate::bulkhead::BulkheadLayer;
    pub use crate::circuit_breaker::CircuitBreakerLayer;
    pub use crate::fallback::FallbackCacheLayer;
    pub use crate::hedge::HedgeLayer;
    pub use crate::rate_limit::RateLimitLayer;
    pub use crate::retry::RetryLayer;
    pub use crate::timeout::{AttemptTimeoutLayer, TotalTimeoutLayer};
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
