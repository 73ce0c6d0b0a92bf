//! Fallback cache: keeps the last good response of a cacheable request and serves it when the
//! pipeline below ends in failure.
//!
//! Why: when an API is down, an application that shows the last known data (a product page, a
//! configuration, an exchange rate a few minutes old) keeps working; one that shows an error
//! does not. This is the "cached data or default value" fallback of Polly and resilience4j,
//! with HTTP's own rules about what may be kept and for how long.
//!
//! It is not an HTTP cache: a fresh stored response never stands in for a call, and every
//! request still goes to the server while it answers. The cache is only read after a failure.
//! What it stores and serves follows RFC 9111 (HTTP caching, as a shared cache) and RFC 5861
//! (`stale-if-error`).
//!
//! # What is stored
//!
//! A response is stored when all of these hold:
//!
//! - the request is a GET or a HEAD without `Range`, and its `Cache-Control` does not say
//!   `no-store`;
//! - the status is 2xx (206 excepted) and the [`Classifier`] calls it a success;
//! - something allows storing it (RFC 9111 §3): explicit freshness (`max-age`, `s-maxage`,
//!   `Expires`), `public` (or `private` with [`store_private`](FallbackCache::store_private)),
//!   or else a status RFC 9111 §4.2.2 calls heuristically cacheable (200, 203, 204): a
//!   `202 Accepted` or a `201 Created` without freshness is not kept;
//! - its `Cache-Control` says neither `no-store` nor `no-cache` (a response that must be
//!   revalidated before any use could never be served by a fallback);
//! - it is not for one user: no `private` and no `Set-Cookie`, unless
//!   [`store_private`](FallbackCache::store_private);
//! - the request carried neither `Authorization` nor `Cookie` nor userinfo in its URL (which
//!   a request sent with `execute` keeps there), unless the response says `public` or
//!   [`store_with_credentials`](FallbackCache::store_with_credentials);
//!   palisade sees the request as it was built, not the headers reqwest adds when it sends it:
//!   a `reqwest::Client` with `default_headers` holding credentials, or a cookie store, makes
//!   requests that look anonymous here, so give the fallback cache to such a client only if
//!   every request it makes acts for the same principal;
//! - its `Vary` is not `*`;
//! - its body is at most [`max_entry_bytes`](FallbackCache::max_entry_bytes);
//! - it could be served some day: its freshness plus its stale allowance is above zero.
//!
//! A response is handed on as soon as its head arrives, whether or not it is to be stored: the
//! caller reads its body as it streams (a chunked feed or a long poll works as it does without
//! the cache). The body of a response to be stored passes through a copy: each chunk the caller
//! reads is also kept aside, and the response is stored when the body has ended, whole and
//! within `max_entry_bytes`. A body that fails, grows past `max_entry_bytes`, is dropped before
//! its end, or has not ended by the request's deadline (its own timeout, else the client's
//! total timeout, else [`max_body_time`](FallbackCache::max_body_time) after the head) stores
//! nothing; its copy is freed at its next chunk, or when the response is dropped (see
//! [Memory](#memory)). A response without a body (to a HEAD, a 204, an empty
//! one) is stored at once. **Nothing is stored while the caller has not read the body to its
//! end**: a response dropped unread leaves the store as it was. One announced by
//! `Content-Length` as too large, or not storable, is passed on untouched.
//!
//! Once its head is handed on, a response is the server's answer: a failure while the caller
//! reads its body reaches the caller as reqwest reports it, and is not answered from the
//! store. How long the caller may take to read the body is bounded by reqwest's own timeouts,
//! not by the cache.
//!
//! A response to an unsafe request (POST, PUT, PATCH, DELETE…) with a status below 400 voids
//! what was stored for its URL (RFC 9111 §4.4), and what requests to it that were in flight
//! meanwhile would store: a GET that started before the DELETE succeeded is not stored when it
//! ends after it.
//!
//! # The key
//!
//! The method, the URL (or what [`key_fn`](FallbackCache::key_fn) makes of the request), and
//! the request's values of the headers the response's `Vary` names: two users who send
//! different `Accept-Language` never get each other's entry, and a request without the header
//! never gets an entry stored for one with it.
//!
//! The URL is taken as the resource it names (RFC 9110 §4.2.3, §7.1): without its fragment or
//! userinfo, and with equivalent percent-encodings written one way (`%7e`, `%7E` and `~` are
//! one; `%2f` and `%2F` are one, but not `/`). So a POST to `/a` voids what was stored for
//! `/a#x`. A stored copy replays its response's URL without userinfo or fragment. A key from
//! [`key_fn`](FallbackCache::key_fn) is used as it is.
//!
//! # When it serves
//!
//! When the final outcome of the pipeline below is one of these, each of which can be switched
//! off:
//!
//! - a response the classifier calls a failure, 5xx by default
//!   ([`serve_on_server_error`](FallbackCache::serve_on_server_error)); a 4xx is an answer, not
//!   a failure, and is never replaced;
//! - a timeout ([`serve_on_timeout`](FallbackCache::serve_on_timeout));
//! - a network failure ([`serve_on_network_error`](FallbackCache::serve_on_network_error));
//! - an open circuit, a rate limit or a full bulkhead
//!   ([`serve_on_circuit_open`](FallbackCache::serve_on_circuit_open),
//!   [`serve_on_rate_limited`](FallbackCache::serve_on_rate_limited),
//!   [`serve_on_bulkhead_full`](FallbackCache::serve_on_bulkhead_full));
//!
//! and a stored entry is within its allowance: fresh (younger than `s-maxage`, `max-age`, or
//! `Expires` minus `Date`), or stale by at most its `stale-if-error` seconds, else by at most
//! [`max_staleness`](FallbackCache::max_staleness) (5 minutes by default). `must-revalidate`,
//! `proxy-revalidate` and `s-maxage` forbid serving it stale; a request that says
//! `Cache-Control: no-cache` is never answered from the store.
//!
//! The served response has the stored status, headers and body, and an `Age` header with its
//! current age (RFC 9111 §4.2.3: its `Age` and `Date` when it arrived, plus the time since the
//! request that produced it was sent). The stored headers are those received but the ones a
//! cache must not replay: the fields specific to the proxy that forwarded the request
//! (`Proxy-Authenticate`, `Proxy-Authentication-Info`, `Proxy-Authorization`; RFC 9111 §3.1)
//! and the hop-by-hop ones (`Connection` and every field it names, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`; RFC 9110 §7.6.1). The response
//! handed on when it arrived keeps them all.
//!
//! [`ResponseExt::fallback`](crate::ResponseExt::fallback) says it is a fallback, how old and
//! why, and [`ResponseExt::attempts`](crate::ResponseExt::attempts) how many attempts the
//! failed request made; [`Event::Fallback`] and an `info` tracing event report it.
//!
//! With nothing stored (or nothing servable), a [`static_fallback`](FallbackCache::static_fallback)
//! function may build a response: an empty list, a default configuration.
//!
//! # Memory
//!
//! Entries live in a [moka](https://docs.rs/moka) cache bounded by
//! [`max_bytes`](FallbackCache::max_bytes), weighed by body, headers, URL and key, least
//! recently used first out. An entry is dropped when its allowance is over. Its body and header
//! values are copied into buffers of their own (hyper hands them out as slices of a
//! connection's read buffer), so what the store weighs is what it holds. Besides, a fixed
//! 32 KiB array records which URLs unsafe requests voided, so that voiding a URL with nothing
//! stored takes no room from the responses stored.
//!
//! A body being copied holds one buffer of at most `max_entry_bytes`, however its server
//! chunks it, until it ends, fails, grows past the limit, or reaches its bound; and the copies
//! of all the bodies in flight hold at most [`max_bytes`](FallbackCache::max_bytes) in all
//! (a copy that would take them past it is given up, and its response not stored), as
//! [`FallbackCacheHandle::copying_bytes`] tells. The bound is checked as the body's chunks
//! come, not by a timer: a body that stalls past it keeps its copy until its next chunk, or
//! until it is dropped, and a response the caller keeps without reading it keeps its copy
//! until it is dropped or read.

mod cache_control;
mod future;
mod policy;
mod store;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use reqwest::{Request, Response};
use tower_service::Service;
use url::Url;

use self::future::Call;
pub use self::future::FallbackFuture;
use self::store::Store;
use crate::classify::{Classifier, FailureClass, Outcome};
use crate::error::{ConfigError, Error, ErrorKind};
use crate::event::{Event, Hook};

type KeyFn = dyn Fn(&Request) -> Option<String> + Send + Sync;
type StaticFn = dyn Fn(&FallbackRequest<'_>) -> Option<http::Response<reqwest::Body>> + Send + Sync;

/// The fallback cache's configuration.
///
/// ```
/// use std::time::Duration;
/// use palisade::fallback::FallbackCache;
///
/// let client = palisade::Client::builder()
///     .fallback_cache(
///         FallbackCache::default()
///             .max_bytes(64 << 20)
///             .max_staleness(Duration::from_secs(600))
///             .serve_on_rate_limited(false),
///     )
///     .build()?;
/// # let _ = client;
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Clone)]
#[must_use = "a policy does nothing until given to a client or a layer"]
pub struct FallbackCache {
    max_bytes: u64,
    max_entry_bytes: u64,
    max_staleness: Duration,
    store_private: bool,
    store_with_credentials: bool,
    serve_on: ServeOn,
    key_fn: Option<Arc<KeyFn>>,
    static_fallback: Option<Arc<StaticFn>>,
    /// How long a body is copied when the request has no deadline.
    max_body_time: Duration,
    /// The client's total timeout, which bounds copying a body to store it.
    total_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct ServeOn {
    server_error: bool,
    timeout: bool,
    network: bool,
    circuit_open: bool,
    rate_limited: bool,
    bulkhead_full: bool,
}

impl Default for FallbackCache {
    /// At most 32 MiB in all and 1 MiB per body, stale entries served for up to 5 minutes
    /// (unless the response's `stale-if-error` says otherwise), on every kind of failure;
    /// nothing `private` or sent with credentials is stored; a body without a deadline is
    /// copied for up to 30 s.
    fn default() -> Self {
        FallbackCache {
            max_bytes: 32 << 20,
            max_entry_bytes: 1 << 20,
            max_staleness: Duration::from_secs(300),
            store_private: false,
            store_with_credentials: false,
            serve_on: ServeOn {
                server_error: true,
                timeout: true,
                network: true,
                circuit_open: true,
                rate_limited: true,
                bulkhead_full: true,
            },
            key_fn: None,
            static_fallback: None,
            max_body_time: Duration::from_secs(30),
            total_timeout: None,
        }
    }
}

impl FallbackCache {
    /// The most bytes the store holds, bodies, headers and keys counted. Default 32 MiB; must
    /// be at least `max_entry_bytes`.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The largest body stored. Default 1 MiB; must be at least 1 and at most 1 GiB.
    pub fn max_entry_bytes(mut self, bytes: u64) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// How long past its freshness a stored response may be served after a failure, when the
    /// response gives no `stale-if-error` of its own. Default 5 minutes. Zero serves only
    /// responses still fresh, or stale within their `stale-if-error`.
    pub fn max_staleness(mut self, staleness: Duration) -> Self {
        self.max_staleness = staleness;
        self
    }

    /// How long the cache keeps copying the body of a response it means to store, from the
    /// moment its head arrived, when the request has no deadline: no timeout of its own
    /// (`RequestBuilder::timeout`) and no total timeout in the client, as for a
    /// [`FallbackCacheLayer`] used in a stack of your own. A body that has not ended by then is
    /// still handed on as it streams, but nothing is stored and its copy is freed (at the
    /// body's next chunk, or when it is dropped). Where the
    /// request has a deadline, the deadline bounds the copy instead. Default 30 s; must be
    /// above zero.
    ///
    /// This bounds only what the cache holds: how long the caller may take to read the body
    /// is up to reqwest's own timeouts (`timeout`, `read_timeout`, a request's `timeout`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade::fallback::FallbackCache;
    /// use palisade::layer::{FallbackCacheLayer, TotalTimeoutLayer};
    ///
    /// // The fallback cache sits outside the total timeout and cannot see its deadline.
    /// let svc = tower::ServiceBuilder::new()
    ///     .layer(FallbackCacheLayer::new(
    ///         FallbackCache::default().max_body_time(Duration::from_secs(10)),
    ///     )?)
    ///     .layer(TotalTimeoutLayer::new(Duration::from_secs(10))?)
    ///     .service(reqwest::Client::new());
    /// # let _ = svc;
    /// # Ok::<(), palisade::ConfigError>(())
    /// ```
    pub fn max_body_time(mut self, time: Duration) -> Self {
        self.max_body_time = time;
        self
    }

    /// Stores responses marked `Cache-Control: private` and responses that set a cookie, which
    /// are meant for one user. Switch it on only for a client that serves one user. Default
    /// off.
    pub fn store_private(mut self, yes: bool) -> Self {
        self.store_private = yes;
        self
    }

    /// Stores responses to requests that carry `Authorization` or `Cookie` even when the
    /// response does not say `public`. The key does not hold the credentials (unless the
    /// response's `Vary` names them), so switch it on only for a client whose requests all act
    /// for the same principal. Default off.
    ///
    /// Credentials the `reqwest::Client` adds itself (its `default_headers`, a cookie store)
    /// are added below palisade, after this check: the cache cannot see them, and stores those
    /// responses as if this were on.
    pub fn store_with_credentials(mut self, yes: bool) -> Self {
        self.store_with_credentials = yes;
        self
    }

    /// Serves after a response the classifier calls a failure (5xx by default). Default on.
    pub fn serve_on_server_error(mut self, yes: bool) -> Self {
        self.serve_on.server_error = yes;
        self
    }

    /// Serves after a timeout (attempt, total or transport). Default on.
    pub fn serve_on_timeout(mut self, yes: bool) -> Self {
        self.serve_on.timeout = yes;
        self
    }

    /// Serves after a network failure: refused, DNS, reset, a message cut short before its
    /// head. Default on.
    pub fn serve_on_network_error(mut self, yes: bool) -> Self {
        self.serve_on.network = yes;
        self
    }

    /// Serves when the circuit breaker rejected the request. Default on.
    pub fn serve_on_circuit_open(mut self, yes: bool) -> Self {
        self.serve_on.circuit_open = yes;
        self
    }

    /// Serves when the rate limiter rejected the request. Default on.
    pub fn serve_on_rate_limited(mut self, yes: bool) -> Self {
        self.serve_on.rate_limited = yes;
        self
    }

    /// Serves when the bulkhead rejected the request. Default on.
    pub fn serve_on_bulkhead_full(mut self, yes: bool) -> Self {
        self.serve_on.bulkhead_full = yes;
        self
    }

    /// Keys entries by what `f` returns instead of the URL: to ignore a cache-busting query
    /// parameter, say. The method and the `Vary` headers are still part of the key. `None`
    /// keeps the request out of the store (it is neither stored nor answered from it). `f`
    /// also gets unsafe requests, whose key names the entries they void.
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Request) -> Option<String> + Send + Sync + 'static,
    {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// Builds a response for a failed request that has nothing stored to serve: a default
    /// value, an empty list. Called under the same conditions as the store is read (the
    /// failure's kind switched on), for any method; `None` leaves the failure as it was.
    ///
    /// ```
    /// use palisade::fallback::FallbackCache;
    ///
    /// let cfg = FallbackCache::default().static_fallback(|req| {
    ///     (req.url().path() == "/v1/recommendations")
    ///         .then(|| http::Response::new(reqwest::Body::from("[]")))
    /// });
    /// # let _ = cfg;
    /// ```
    pub fn static_fallback<F>(mut self, f: F) -> Self
    where
        F: Fn(&FallbackRequest<'_>) -> Option<http::Response<reqwest::Body>>
            + Send
            + Sync
            + 'static,
    {
        self.static_fallback = Some(Arc::new(f));
        self
    }

    /// Bounds copying a body to store it by this total timeout (the client builder passes its
    /// own); a request's own timeout comes first.
    pub(crate) fn with_total_timeout(mut self, t: Option<Duration>) -> Self {
        self.total_timeout = t;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_entry_bytes == 0 {
            return Err(ConfigError::new(
                "fallback_cache.max_entry_bytes",
                "must be at least 1",
            ));
        }
        if self.max_entry_bytes > 1 << 30 {
            return Err(ConfigError::new(
                "fallback_cache.max_entry_bytes",
                format!("must be at most 1 GiB, got {}", self.max_entry_bytes),
            ));
        }
        if self.max_body_time.is_zero() {
            return Err(ConfigError::new(
                "fallback_cache.max_body_time",
                "must be above zero",
            ));
        }
        if self.max_bytes < self.max_entry_bytes {
            return Err(ConfigError::new(
                "fallback_cache.max_bytes",
                format!(
                    "must be at least max_entry_bytes ({}), got {}",
                    self.max_entry_bytes, self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for FallbackCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackCache")
            .field("max_bytes", &self.max_bytes)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("max_staleness", &self.max_staleness)
            .field("max_body_time", &self.max_body_time)
            .field("store_private", &self.store_private)
            .field("store_with_credentials", &self.store_with_credentials)
            .field("serve_on", &self.serve_on)
            .field("key_fn", &self.key_fn.is_some())
            .field("static_fallback", &self.static_fallback.is_some())
            .finish()
    }
}

/// Why a response was served by the fallback cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The server answered with a response the classifier calls a failure (a 5xx by
    /// default); its status.
    ServerError(StatusCode),
    /// A timeout: the attempt's, the total's or the transport's.
    Timeout,
    /// A network failure: refused, DNS, reset, a message cut short before its head.
    Network,
    /// The circuit breaker rejected the call.
    CircuitOpen,
    /// The rate limiter rejected the call.
    RateLimited,
    /// The bulkhead rejected the call.
    BulkheadFull,
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackReason::ServerError(s) => write!(f, "server error ({})", s.as_u16()),
            FallbackReason::Timeout => f.write_str("timeout"),
            FallbackReason::Network => f.write_str("network"),
            FallbackReason::CircuitOpen => f.write_str("circuit open"),
            FallbackReason::RateLimited => f.write_str("rate limited"),
            FallbackReason::BulkheadFull => f.write_str("bulkhead full"),
        }
    }
}

/// What [`ResponseExt::fallback`](crate::ResponseExt::fallback) tells of a response the
/// fallback cache served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackInfo {
    age: Option<Duration>,
    reason: FallbackReason,
}

impl FallbackInfo {
    /// The stored response's age when served (its `Age` header is this, in whole seconds);
    /// `None` for a response from the [static fallback](FallbackCache::static_fallback).
    pub fn age(&self) -> Option<Duration> {
        self.age
    }

    /// The failure it stands in for.
    pub fn reason(&self) -> FallbackReason {
        self.reason
    }

    /// Whether the [static fallback](FallbackCache::static_fallback) built it.
    pub fn is_static(&self) -> bool {
        self.age.is_none()
    }
}

/// The failed request a [static fallback](FallbackCache::static_fallback) is asked to answer.
///
/// Its `Debug` shows the URL without userinfo, fragment or query values, and the header names
/// without their values.
pub struct FallbackRequest<'a> {
    method: &'a Method,
    url: &'a Url,
    headers: &'a HeaderMap,
    reason: FallbackReason,
}

impl fmt::Debug for FallbackRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackRequest")
            .field("method", self.method)
            .field("url", &crate::redact::DisplayUrl(self.url))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("reason", &self.reason)
            .finish()
    }
}

impl FallbackRequest<'_> {
    /// The request's method.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The request's URL.
    pub fn url(&self) -> &Url {
        self.url
    }

    /// The request's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }

    /// Why the request failed.
    pub fn reason(&self) -> FallbackReason {
        self.reason
    }
}

/// A [`Layer`](tower_layer::Layer) that wraps a service in [`FallbackCacheService`]. Every service it makes, and
/// every clone, shares one store.
///
/// Put it outermost: it must see the final outcome, after every retry, and a total timeout
/// inside it bounds the calls it falls back from. It cannot see that timeout's deadline: the
/// copy of a body it stores is bounded by a request's own timeout, else by
/// [`max_body_time`](FallbackCache::max_body_time).
#[derive(Clone)]
pub struct FallbackCacheLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
pub(crate) struct Shared {
    cfg: FallbackCache,
    store: Store,
    classifier: Classifier,
    hook: Hook,
}

impl FallbackCacheLayer {
    /// A layer with the given configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when `max_entry_bytes` is 0 or above 1 GiB,
    /// `max_bytes` is below `max_entry_bytes`, or `max_body_time` is zero.
    pub fn new(cfg: FallbackCache) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self::from_parts(
            cfg,
            Classifier::default(),
            Hook::default(),
        ))
    }

    /// A layer from a configuration the caller validated (the client builder).
    pub(crate) fn from_parts(cfg: FallbackCache, classifier: Classifier, hook: Hook) -> Self {
        let store = Store::new(cfg.max_bytes);
        FallbackCacheLayer {
            shared: Arc::new(Shared {
                cfg,
                store,
                classifier,
                hook,
            }),
        }
    }

    /// Uses `classifier` instead of the default to decide what is a success (stored) and what
    /// a failure (answered from the store).
    pub fn classifier(self, classifier: Classifier) -> Self {
        self.rebuild(|s| s.classifier = classifier)
    }

    /// Calls `hook` for every response served from the store or the static fallback
    /// ([`Event::Fallback`]).
    pub fn on_event<F>(self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.rebuild(|s| s.hook = Hook::new(hook))
    }

    /// A handle on the store: its size, and a way to empty it.
    pub fn handle(&self) -> FallbackCacheHandle {
        FallbackCacheHandle {
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for FallbackCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackCacheLayer")
            .field("config", &self.shared.cfg)
            .field("classifier", &self.shared.classifier)
            .field("hook", &self.shared.hook)
            .finish()
    }
}

crate::shared_layer!(FallbackCacheLayer => FallbackCacheService);

/// A cloneable handle on a fallback cache's store.
#[derive(Clone)]
pub struct FallbackCacheHandle {
    shared: Arc<Shared>,
}

impl FallbackCacheHandle {
    /// The bytes held, as entries are weighed (bodies, headers, URLs, keys and a fixed
    /// overhead each). moka applies evictions in batches: call [`sync`](Self::sync) first for
    /// the figure after every insert so far.
    pub fn stored_bytes(&self) -> u64 {
        self.shared.store.weighted_size()
    }

    /// How many slots are held: one per stored response, plus one per URL whose responses
    /// vary by request headers or were voided by an unsafe request. See
    /// [`sync`](Self::sync).
    pub fn entry_count(&self) -> u64 {
        self.shared.store.entry_count()
    }

    /// How many bytes the copies of bodies being read (to be stored once they end) hold now,
    /// in all: at most [`max_bytes`](FallbackCache::max_bytes), besides the store's own.
    pub fn copying_bytes(&self) -> u64 {
        self.shared.store.copying()
    }

    /// The most bytes the store holds ([`FallbackCache::max_bytes`]).
    pub(crate) fn max_bytes(&self) -> u64 {
        self.shared.cfg.max_bytes
    }

    /// Applies the evictions and expirations moka has pending.
    pub fn sync(&self) {
        self.shared.store.run_pending_tasks();
    }

    /// Drops every stored response.
    pub fn clear(&self) {
        self.shared.store.clear();
    }
}

impl fmt::Debug for FallbackCacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackCacheHandle")
            .field("stored_bytes", &self.stored_bytes())
            .field("entry_count", &self.entry_count())
            .finish()
    }
}

/// Serves a stored response when the service below fails, as the [module docs](self)
/// describe. Made by [`FallbackCacheLayer`].
#[derive(Clone)]
pub struct FallbackCacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

crate::inner_accessors!(FallbackCacheService);

impl<S: fmt::Debug> fmt::Debug for FallbackCacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackCacheService")
            .field("inner", &self.inner)
            .field("config", &self.shared.cfg)
            .finish()
    }
}

impl<S> Service<Request> for FallbackCacheService<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = FallbackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let call = Call::new(self.shared.clone(), &req);
        FallbackFuture::new(self.inner.call(req), call)
    }
}

impl Shared {
    /// Why the outcome may be answered from the store, if it may.
    fn reason(&self, result: &Result<Response, Error>) -> Option<FallbackReason> {
        let class = self.classifier.classify(Outcome::of(result));
        if !class.is_failure() || class == FailureClass::Cancelled {
            return None;
        }
        let on = &self.cfg.serve_on;
        let (reason, switched_on) = match result {
            // A 4xx is an answer, whatever the classifier makes of it.
            Ok(r) if r.status().is_client_error() => return None,
            Ok(r) => (FallbackReason::ServerError(r.status()), on.server_error),
            Err(e) => match e.kind() {
                ErrorKind::Timeout => (FallbackReason::Timeout, on.timeout),
                ErrorKind::Connect | ErrorKind::Transport | ErrorKind::Body => {
                    (FallbackReason::Network, on.network)
                }
                ErrorKind::CircuitOpen => (FallbackReason::CircuitOpen, on.circuit_open),
                ErrorKind::RateLimited => (FallbackReason::RateLimited, on.rate_limited),
                ErrorKind::BulkheadFull => (FallbackReason::BulkheadFull, on.bulkhead_full),
                ErrorKind::Request => return None,
            },
        };
        switched_on.then_some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 9, more of its kind: the request a static fallback gets printed its header values
    // (credentials), query values and userinfo in its derived `Debug`.
    #[test]
    fn a_fallback_request_prints_no_secret() {
        let url = Url::parse("https://user:pa55@api.test/a?token=t0ken&page=2#frag").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer s3cret".parse().unwrap());
        let req = FallbackRequest {
            method: &Method::GET,
            url: &url,
            headers: &headers,
            reason: FallbackReason::Timeout,
        };
        let printed = format!("{req:?}");
        for secret in ["pa55", "user", "t0ken", "s3cret", "frag"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("authorization") && printed.contains("token"),
            "{printed}"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = FallbackCacheLayer::new(FallbackCache::default().max_entry_bytes(0)).unwrap_err();
        assert_eq!(e.field(), "fallback_cache.max_entry_bytes");
        let e = FallbackCacheLayer::new(FallbackCache::default().max_entry_bytes((1 << 30) + 1))
            .unwrap_err();
        assert_eq!(e.field(), "fallback_cache.max_entry_bytes");
        let e = FallbackCacheLayer::new(FallbackCache::default().max_body_time(Duration::ZERO))
            .unwrap_err();
        assert_eq!(e.field(), "fallback_cache.max_body_time");
        let e = FallbackCacheLayer::new(FallbackCache::default().max_bytes(1000)).unwrap_err();
        assert_eq!(e.field(), "fallback_cache.max_bytes");
        assert!(e.rule().contains("max_entry_bytes"), "{e}");
        FallbackCacheLayer::new(FallbackCache::default().max_bytes(1 << 20)).unwrap();
    }
}
