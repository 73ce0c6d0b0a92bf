//! [`Client`] and its reqwest-like request API.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use pin_project_lite::pin_project;
use reqwest::{Body, IntoUrl, Request, Response};
use tower::util::{Either, Oneshot};
use tower::ServiceExt;
use tower_service::Service as _;
use tracing::instrument::Instrumented;
use tracing::Instrument;
use url::Url;

use crate::builder::ClientBuilder;
use crate::bulkhead::BulkheadService;
use crate::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerService};
use crate::context;
use crate::error::Error;
use crate::fallback::{FallbackCacheHandle, FallbackCacheService};
use crate::hedge::HedgeService;
use crate::rate_limit::RateLimitService;
use crate::redact;
use crate::retry::RetryService;
use crate::timeout::{AttemptTimeout, TotalTimeout};
use crate::transport::{Boxed, Transport};

// The standard order, innermost first; a stage switched off is the `Right` of its `Either`.
pub(crate) type AttemptStage = Either<AttemptTimeout<Transport>, Transport>;
// With metrics, each attempt is timed between the limiter and the attempt timeout.
#[cfg(feature = "metrics")]
pub(crate) type MeasuredStage = crate::metrics::Measured<AttemptStage>;
#[cfg(not(feature = "metrics"))]
pub(crate) type MeasuredStage = AttemptStage;
pub(crate) type LimitStage = Either<RateLimitService<MeasuredStage>, MeasuredStage>;
pub(crate) type BreakerStage = Either<CircuitBreakerService<LimitStage>, LimitStage>;
// Hedging is opt-in: off, the stage passes every call through (a branch); on, a request that
// is not hedged passes through too, and a race is boxed.
pub(crate) type HedgeStage = HedgeService<BreakerStage>;
// Without a retry stage, the stage below is boxed as the retry stage's loop is: the two sides
// of an `Either` make a future as large as the larger, and the future of the stages below
// (some 600 bytes) would make every request's future, retry on or off, that much larger.
pub(crate) type RetryStage = Either<RetryService<HedgeStage>, Boxed<HedgeStage>>;
pub(crate) type BulkheadStage = Either<BulkheadService<RetryStage>, RetryStage>;
pub(crate) type TimedStage = TotalTimeout<BulkheadStage>;
pub(crate) type Pipeline = Either<FallbackCacheService<TimedStage>, TimedStage>;

/// An HTTP client whose requests go through palisade's pipeline: total timeout, retry with
/// backoff, `Retry-After` and a budget, attempt timeout.
///
/// Cheap to clone: the state lives behind an `Arc`, and clones share it (the retry budget
/// above all). Build one with [`Client::builder`], or [`Client::new`] for the defaults, and
/// keep it for the life of the application, as you would a `reqwest::Client`.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = palisade::Client::new();
/// let resp = client.get("https://api.example.com/users/1").send().await?;
/// println!("{}", resp.status());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientRef>,
}

pub(crate) struct ClientRef {
    pub(crate) http: reqwest::Client,
    pub(crate) core: Core,
}

/// The pipeline and the handles on its stages' state: all of a [`Client`] but the
/// `reqwest::Client` it builds requests with (a `reqwest-middleware` adapter has none).
pub(crate) struct Core {
    pub(crate) pipeline: Pipeline,
    /// The host policies' pipelines, if there are any: `None` costs the hot path one branch.
    pub(crate) hosts: Option<Box<crate::hosts::Table<Pipeline>>>,
    pub(crate) breakers: Option<CircuitBreakerHandle>,
    pub(crate) fallback: Option<FallbackCacheHandle>,
    pub(crate) health: crate::health::Sources,
    pub(crate) summary: String,
    /// Where each call's duration goes (feature `metrics`, when switched on).
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<std::sync::Arc<crate::metrics::Sink>>,
}

impl Client {
    /// A client with the standard pipeline: total timeout 30 s, attempt timeout 10 s, retry (3
    /// attempts, exponential backoff with full jitter, `Retry-After`, retry budget).
    ///
    /// # Panics
    ///
    /// If the underlying `reqwest::Client` cannot be built (its TLS backend fails to
    /// initialise), as `reqwest::Client::new` does. Use [`Client::builder`] to get the error
    /// instead.
    pub fn new() -> Client {
        match Client::builder().build() {
            Ok(c) => c,
            Err(e) => panic!("palisade::Client::new(): {e}"),
        }
    }

    /// A [`ClientBuilder`] that starts from the standard pipeline.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    pub(crate) fn from_ref(inner: ClientRef) -> Client {
        Client {
            inner: Arc::new(inner),
        }
    }

    /// Starts a GET request.
    pub fn get<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// Starts a POST request. POST is not idempotent: it is retried only after a connect
    /// failure, or when it carries an `Idempotency-Key` (see
    /// [`RequestBuilder::idempotency_key`]).
    pub fn post<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    /// Starts a PUT request.
    pub fn put<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.request(Method::PUT, url)
    }

    /// Starts a PATCH request. PATCH is not idempotent (see [`Client::post`]).
    pub fn patch<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.request(Method::PATCH, url)
    }

    /// Starts a DELETE request.
    pub fn delete<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.request(Method::DELETE, url)
    }

    /// Starts a HEAD request.
    pub fn head<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.request(Method::HEAD, url)
    }

    /// Starts a request with any method.
    pub fn request<U: IntoUrl>(&self, method: Method, url: U) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            inner: self.inner.http.request(method, url),
            from_parts: false,
        }
    }

    /// Sends a request through the pipeline.
    ///
    /// The future is `'static`: it holds a clone of the client, not a borrow. The request
    /// starts now, as with reqwest's `execute`: its total timeout counts from this call, not
    /// from the first poll of the future.
    pub fn execute(&self, req: Request) -> Pending {
        let span = request_span(&req);
        self.inner.core.execute(req, span)
    }

    /// The circuit breakers, to read a host's state or to isolate or reset it by hand; `None`
    /// when the client has no breaker (`no_circuit_breaker`).
    pub fn circuit_breaker(&self) -> Option<&CircuitBreakerHandle> {
        self.inner.core.breakers.as_ref()
    }

    /// The fallback cache's store, to read its size or empty it; `None` when the client has
    /// no fallback cache (the default).
    pub fn fallback_cache(&self) -> Option<&FallbackCacheHandle> {
        self.inner.core.fallback.as_ref()
    }

    /// A snapshot of the pipeline's state, for a health endpoint: per host, the circuit
    /// breaker's state and recent failure ratio, the rate limiter's free tokens and
    /// server-pushback pause, the bulkhead's load, the hedging delay (and, at a quantile, the
    /// samples its estimate rests on); the retry budget's balance and the fallback store's
    /// size. A stage switched off gives `None` for its part. With the `serde` feature the
    /// snapshot implements `serde::Serialize` (durations in seconds).
    ///
    /// Reading is bounded (the per-host maps are bounded by each stage's `max_hosts`), holds
    /// one shard's lock at a time, briefly, and changes nothing: no host is evicted, no
    /// breaker moves from open to half-open. See [`health`](crate::health) for what is
    /// listed and what reading costs.
    ///
    /// ```
    /// use palisade::rate_limit::RateLimit;
    ///
    /// let client = palisade::Client::builder()
    ///     .rate_limit(RateLimit::per_second(50).burst(10))
    ///     .build()?;
    /// let health = client.health();
    /// assert!(health.hosts.is_empty(), "no request sent yet");
    /// assert_eq!(health.rate_limit.as_ref().map(|l| l.tokens), Some(10));
    /// assert_eq!(health.budget.as_ref().map(|b| b.retries_available), Some(100));
    /// println!("{health:#?}");
    /// # Ok::<(), palisade::ConfigError>(())
    /// ```
    pub fn health(&self) -> crate::Health {
        self.inner.core.health.snapshot()
    }

    /// The `reqwest::Client` under the pipeline (for building requests with reqwest's own
    /// builder, say).
    pub fn http_client(&self) -> &reqwest::Client {
        &self.inner.http
    }
}

impl Core {
    /// Sends a request through the pipeline (the host policy's, if one matches), in `span`
    /// ([`request_span`]): the body of [`Client::execute`].
    pub(crate) fn execute(&self, req: Request, span: tracing::Span) -> Pending {
        #[cfg(not(feature = "metrics"))]
        let timer = ();
        #[cfg(feature = "metrics")]
        let timer = self
            .metrics
            .as_ref()
            .map(|sink| Box::new(crate::metrics::Timer::call(sink, &req)));
        let url = req.url().clone();
        let mut svc = match &self.hosts {
            None => self.pipeline.clone(),
            Some(hosts) => hosts
                .for_url(&url)
                .map_or(&self.pipeline, |(_, p)| p)
                .clone(),
        };
        // The stages are ready at once, and so is reqwest: call the pipeline now (as reqwest's
        // own `execute` starts its request, and its timeout, at once), so that the future holds
        // neither the service nor the request. Only a custom transport that is not ready at
        // once gets a `Oneshot` (boxed) to drive it to readiness.
        let mut noop = Context::from_waker(std::task::Waker::noop());
        let state = match svc.poll_ready(&mut noop) {
            Poll::Ready(Ok(())) => {
                let fut = span
                    .in_scope(|| context::calling(|| svc.call(req)))
                    .instrument(span);
                State::Running { fut, url }
            }
            Poll::Ready(Err(err)) => State::Failed { err: Some(err) },
            Poll::Pending => State::NotReady {
                fut: Box::pin(svc.oneshot(req).instrument(span)),
                url,
            },
        };
        Pending { state, timer }
    }
}

/// A `Client` is a tower service too, as `reqwest::Client` is: always ready, and
/// `call` is [`Client::execute`].
impl tower_service::Service<Request> for Client {
    type Response = Response;
    type Error = Error;
    type Future = Pending;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Pending {
        self.execute(req)
    }
}

impl Default for Client {
    /// The same as [`Client::new`].
    fn default() -> Self {
        Client::new()
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("palisade::Client")
            .field("pipeline", &self.inner.core.summary)
            .finish()
    }
}

/// The span of one request, with the OpenTelemetry HTTP client attribute names. Header values
/// are never recorded, and `url.full` follows the redaction rules (`crate::redact`).
pub(crate) fn request_span(req: &Request) -> tracing::Span {
    let span = tracing::debug_span!(
        "http.request",
        http.request.method = %req.method(),
        server.address = req.url().host_str().unwrap_or(""),
        url.full = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("url.full", redact::url(req.url()).as_str());
    }
    span
}

pin_project! {
    /// The future of a request sent through a [`Client`]: resolves to the response, or to the
    /// [`Error`] of a request that produced none.
    #[must_use = "futures do nothing unless polled"]
    pub struct Pending {
        #[pin]
        state: State,
        timer: CallTimer,
    }
}

/// The call's duration, with metrics on: boxed, as 40 bytes more in every `Pending` cost a
/// pipeline without metrics more (in copies of the future) than the box costs one with them.
/// Nothing without the feature.
#[cfg(feature = "metrics")]
type CallTimer = Option<Box<crate::metrics::Timer>>;
#[cfg(not(feature = "metrics"))]
type CallTimer = ();

/// The future of the pipeline called with a request.
type PipelineFuture = <Pipeline as tower_service::Service<Request>>::Future;

pin_project! {
    #[project = StateProj]
    enum State {
        Running {
            #[pin]
            fut: Instrumented<PipelineFuture>,
            url: Url,
        },
        // A transport that was not ready at once: the `Oneshot` drives it, then calls it.
        NotReady {
            fut: Pin<Box<Instrumented<Oneshot<Pipeline, Request>>>>,
            url: Url,
        },
        Failed {
            err: Option<Error>,
        },
    }
}

impl Pending {
    fn failed(err: Error) -> Pending {
        Pending {
            state: State::Failed { err: Some(err) },
            timer: CallTimer::default(),
        }
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("palisade::Pending")
    }
}

impl Future for Pending {
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(match this.state.project() {
            StateProj::Running { fut, url } => fut.poll(cx).map_err(|mut e| {
                e.set_url_if_missing(url);
                e
            }),
            StateProj::NotReady { fut, url } => fut.as_mut().poll(cx).map_err(|mut e| {
                e.set_url_if_missing(url);
                e
            }),
            StateProj::Failed { err } => Poll::Ready(Err(err.take().unwrap_or_else(|| {
                Error::from_source(crate::ErrorKind::Request, "polled after completion")
            }))),
        });
        #[cfg(feature = "metrics")]
        if let Some(timer) = this.timer.take() {
            timer.finish(&result);
        }
        Poll::Ready(result)
    }
}

/// A request being built, as with `reqwest::RequestBuilder`; [`send`](RequestBuilder::send)
/// puts it through the pipeline.
///
/// It has every method of reqwest's (but the WebAssembly-only ones), with the same signatures
/// but for palisade's [`Client`] and [`Error`] in place of reqwest's, so code written against
/// reqwest's request API compiles against palisade's with the client's type changed.
///
/// A request whose body is a stream cannot be cloned, so it is sent once and never retried.
#[must_use = "a RequestBuilder does nothing until sent"]
pub struct RequestBuilder {
    client: Client,
    inner: reqwest::RequestBuilder,
    /// Made by [`from_parts`](RequestBuilder::from_parts): the request may carry extensions
    /// of its own, which the retry stage's copy of a request this builder made from scratch
    /// leaves out (see `context::take_built`), so `send` hands it on as `execute` does.
    from_parts: bool,
}

impl RequestBuilder {
    fn map(self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        RequestBuilder {
            client: self.client,
            inner: f(self.inner),
            from_parts: self.from_parts,
        }
    }

    /// A builder that starts from a request, to send through `client`'s pipeline (as
    /// reqwest's `RequestBuilder::from_parts`): its method, URL, headers, body, version,
    /// timeout and extensions are kept, and the builder's methods add to them.
    ///
    /// Sent, it goes through the pipeline as [`Client::execute`] sends a request: each retry
    /// is a copy made by `reqwest::Request::try_clone`, which keeps its extensions. Unlike
    /// [`Client::request`], userinfo in the request's URL is not turned into basic
    /// authentication (reqwest's `from_parts` does not either).
    ///
    /// ```
    /// let client = palisade::Client::new();
    /// let req = reqwest::Request::new(http::Method::GET, "http://api.test/v1".parse()?);
    /// let req = palisade::RequestBuilder::from_parts(client, req)
    ///     .header("x-trace", "1")
    ///     .build()?;
    /// assert_eq!(req.headers()["x-trace"], "1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_parts(client: Client, request: Request) -> RequestBuilder {
        let inner = reqwest::RequestBuilder::from_parts(client.inner.http.clone(), request);
        RequestBuilder {
            client,
            inner,
            from_parts: true,
        }
    }

    /// Adds a header.
    pub fn header<K, V>(self, key: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.map(|b| b.header(key, value))
    }

    /// Adds headers.
    pub fn headers(self, headers: HeaderMap) -> Self {
        self.map(|b| b.headers(headers))
    }

    /// Sets an `Idempotency-Key` header, which makes a non-idempotent request (POST, PATCH)
    /// retryable: the server promises to apply it once whatever the number of copies.
    pub fn idempotency_key<V>(self, key: V) -> Self
    where
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.header(crate::retry::IDEMPOTENCY_KEY, key)
    }

    /// Sets HTTP basic authentication.
    pub fn basic_auth<U: fmt::Display, P: fmt::Display>(
        self,
        username: U,
        password: Option<P>,
    ) -> Self {
        self.map(|b| b.basic_auth(username, password))
    }

    /// Sets bearer authentication.
    pub fn bearer_auth<T: fmt::Display>(self, token: T) -> Self {
        self.map(|b| b.bearer_auth(token))
    }

    /// Sets the body. A body from bytes or a string can be sent again; a streaming body
    /// (`Body::wrap_stream`) cannot, so the request is sent once.
    pub fn body<T: Into<Body>>(self, body: T) -> Self {
        self.map(|b| b.body(body))
    }

    /// Sets this request's total timeout, in place of the client's
    /// ([`ClientBuilder::total_timeout`]): it covers every attempt and every backoff sleep and,
    /// as reqwest's per-request timeout does, reading the body (each retry's copy carries what
    /// is left of it). Like reqwest's, it replaces the `reqwest::Client`'s own `timeout`.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|b| b.timeout(timeout))
    }

    /// Sets the HTTP version.
    pub fn version(self, version: Version) -> Self {
        self.map(|b| b.version(version))
    }

    /// Appends query parameters (requires the `query` feature).
    #[cfg(feature = "query")]
    pub fn query<T: serde::Serialize + ?Sized>(self, query: &T) -> Self {
        self.map(|b| b.query(query))
    }

    /// Sets a form body (requires the `form` feature).
    #[cfg(feature = "form")]
    pub fn form<T: serde::Serialize + ?Sized>(self, form: &T) -> Self {
        self.map(|b| b.form(form))
    }

    /// Sets a JSON body (requires the `json` feature).
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(self, json: &T) -> Self {
        self.map(|b| b.json(json))
    }

    /// Sets a `multipart/form-data` body (requires the `multipart` feature), with its
    /// `Content-Type` and, when the length of every part is known, its `Content-Length`.
    ///
    /// A form's body is a stream, so the request cannot be copied: it is sent once, never
    /// retried (not even after a connect failure), and [`try_clone`](RequestBuilder::try_clone)
    /// gives `None`.
    #[cfg(feature = "multipart")]
    pub fn multipart(self, form: reqwest::multipart::Form) -> Self {
        self.map(|b| b.multipart(form))
    }

    /// Builds the `reqwest::Request` without sending it, to look at or change before
    /// [`Client::execute`].
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`Request`](crate::ErrorKind::Request) when a part of the request
    /// was invalid (a bad URL or header): [`is_builder`](Error::is_builder) is `true`.
    pub fn build(self) -> Result<Request, Error> {
        self.inner.build().map_err(Error::from)
    }

    /// Builds the `reqwest::Request`, as [`build`](RequestBuilder::build) does, and gives back
    /// the [`Client`] too, to [`execute`](Client::execute) it with (as reqwest's
    /// `build_split`).
    pub fn build_split(self) -> (Client, Result<Request, Error>) {
        (self.client, self.inner.build().map_err(Error::from))
    }

    /// Sends the request through the pipeline.
    pub fn send(self) -> Pending {
        match self.inner.build() {
            // A request from `from_parts` may carry extensions: no fast copy for it.
            Ok(req) if self.from_parts => self.client.execute(req),
            Ok(req) => crate::context::built(|| self.client.execute(req)),
            Err(e) => Pending::failed(Error::from(e)),
        }
    }

    /// A copy of the builder, unless its body is a stream (or a builder error was met, as
    /// with reqwest's).
    pub fn try_clone(&self) -> Option<Self> {
        Some(RequestBuilder {
            client: self.client.clone(),
            inner: self.inner.try_clone()?,
            from_parts: self.from_parts,
        })
    }
}

/// Shows the method and the URL by palisade's redaction rules (no userinfo, no query values),
/// never a header value: reqwest's own `Debug` of a builder shows the whole URL.
impl fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("palisade::RequestBuilder");
        // reqwest gives no view of a builder's request but building a copy of it.
        match self.inner.try_clone().map(reqwest::RequestBuilder::build) {
            Some(Ok(req)) => {
                d.field("method", req.method())
                    .field("url", &redact::DisplayUrl(req.url()));
            }
            Some(Err(_)) => {
                d.field("error", &"invalid request");
            }
            None => {}
        }
        d.finish_non_exhaustive()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    type Fut<S> = <S as tower_service::Service<Request>>::Future;

    /// Every request's future is moved (into the caller's future, into a task) and its size is
    /// copied each time; a stage switched off, or a rare state, must not make it larger for
    /// every request. It was 1,008 bytes before the no-retry path and the rate limiter's wait
    /// were boxed and the `Oneshot` went.
    #[test]
    fn request_futures_stay_small() {
        // With the `metrics` feature, an attempt's timer sits between the rate limiter and the
        // attempt timeout, and the call's in `Pending` (each a box), metrics on or not.
        let (timer, call_timer) = if cfg!(feature = "metrics") {
            (8, 8)
        } else {
            (0, 0)
        };
        let sizes = [
            (
                "attempt stage",
                std::mem::size_of::<Fut<AttemptStage>>(),
                256,
            ),
            (
                "limit stage",
                std::mem::size_of::<Fut<LimitStage>>(),
                320 + timer,
            ),
            ("retry stage", std::mem::size_of::<Fut<RetryStage>>(), 32),
            ("pipeline", std::mem::size_of::<Fut<Pipeline>>(), 384),
            ("Pending", std::mem::size_of::<Pending>(), 512 + call_timer),
        ];
        for (what, size, most) in sizes {
            assert!(size <= most, "{what}: {size} bytes, more than {most}");
        }
    }
}
