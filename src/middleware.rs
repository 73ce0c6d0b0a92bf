//! palisade's pipeline as a [`reqwest-middleware`](reqwest_middleware) middleware (feature
//! `middleware`).
//!
//! [`PalisadeMiddleware`] runs the same stages in the same order as a [`Client`](crate::Client)
//! (fallback cache, total timeout, bulkhead, retry with its budget, hedging, circuit breaker,
//! rate limit, attempt timeout), built from the same [`ClientBuilder`]; what it sends each
//! attempt through is the rest of the chain: the middleware attached after it, then the
//! `reqwest::Client` at the end. Every attempt, retries and hedges included, runs the
//! middleware below palisade again (a hedge and the attempt it races run the chain below at
//! the same time). Host
//! policies ([`ClientBuilder::host`]) pick each call's pipeline by its host, as a `Client`'s do.
//!
//! ```no_run
//! use std::time::Duration;
//! use palisade::retry::Retry;
//! use reqwest_tracing::TracingMiddleware;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let palisade = palisade::Client::builder()
//!     .attempt_timeout(Duration::from_secs(5))
//!     .retry(Retry::default().max_attempts(3))
//!     .build_middleware()?;
//!
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(palisade)                        // once per call: timeouts, retries, breaker, limiter
//!     .with(TracingMiddleware::default())    // once per attempt: a span for each
//!     .build();
//!
//! let resp = client.get("https://api.example.com/users/1").send().await?;
//! println!("{}", resp.status());
//! # Ok(()) }
//! ```
//!
//! # Where to place it
//!
//! reqwest-middleware runs its middleware in the order they were attached with `with`, the
//! first outermost: a middleware attached *before* palisade runs once per call and sees the
//! final outcome; one attached *after* it runs once per attempt.
//!
//! | attach | before palisade (once per call) | after palisade (once per attempt) |
//! |---|---|---|
//! | `reqwest_tracing::TracingMiddleware` | one span for the whole call, retries and backoff sleeps included | a span per attempt, each with its own status: what OpenTelemetry's HTTP conventions ask for (a retry is a new request) |
//! | authentication, request signing | the token or signature is made once and resent as is | each attempt is signed anew (a fresh timestamp or nonce, a refreshed token): put it here |
//! | an HTTP cache that answers without sending (`http-cache-reqwest`) | a hit costs no rate-limit token, no bulkhead place, no breaker call: put it here | each attempt may be answered from the cache |
//! | logging of the outcome the caller gets | here | logs each attempt |
//! | [`reqwest-retry`] | **never in the same chain**: see below | **never** |
//!
//! palisade's own `http.request` span (at `debug`) covers the call; with a tracing middleware
//! after palisade, each attempt's span is a child of it. reqwest-tracing records a failed
//! request's error text in `error.message`: after palisade, that is the text of reqwest's own
//! error, which shows the whole URL, query values included (palisade cannot scrub what runs
//! below it); before palisade, that of the error palisade hands back, whose URL is redacted.
//!
//! # One retrier in a chain
//!
//! palisade retries; keep reqwest-retry's `RetryTransientMiddleware` out of the chain (or give
//! it a policy that never retries). Two retriers multiply their attempts (3 × 3 = 9 requests for
//! one call during an outage), and the one outside palisade's retry ignores its budget, its
//! breaker and its deadline. palisade cannot see the other middleware of the chain to refuse it.
//!
//! The `reqwest::Client` at the end of the chain keeps its own retry policy: reqwest's default
//! retries only HTTP/2 refused streams, which the server never processed, but a client built
//! with a `reqwest::retry` policy of its own would multiply palisade's attempts; build it with
//! `.retry(reqwest::retry::never())`. Its timeouts (`timeout`, `connect_timeout`,
//! `read_timeout`) apply under palisade's, as transport timeouts, as with
//! [`ClientBuilder::http_client`].
//!
//! # Extensions
//!
//! Each attempt runs the chain below with its own copy of the `http::Extensions` the call
//! came with (so attempts do not see what the ones before them added, and concurrent attempts
//! could not share one); when the call ends, what the last attempt that reached the chain below
//! and returned left in its copy is merged back into the caller's (`Extensions::extend`), as if
//! it had been the only attempt.
//!
//! # Errors
//!
//! What the chain below returns is classed as palisade classes reqwest's own outcomes:
//!
//! - a response, whatever its status, as a response (a 503 is retried, a 404 is not);
//! - `reqwest_middleware::Error::Reqwest(e)` exactly as the same error from a `Client`'s
//!   reqwest: a timeout, a connect failure (retried for any method), a transport failure;
//! - `reqwest_middleware::Error::Middleware(e)`, a middleware below failing, by the reqwest and
//!   I/O errors in its source chain: one that holds a timeout or a connect failure is classed
//!   as one, one that wraps a reqwest error as that error, and one with none of them is
//!   [`ErrorKind::Request`], which is neither retried nor counted against the host by the
//!   breaker (reqwest-retry, too, holds every middleware error fatal). A
//!   [`classify_fn`](ClientBuilder::classify_fn) can say otherwise: the error's `source()`
//!   chain leads to the middleware's own error.
//!
//! The error the call ends with comes back as:
//!
//! - an error of the chain below, as it came: `Error::Reqwest` as `Error::Reqwest` (so
//!   `is_connect()`, `is_timeout()` and the rest still answer), with its URL shown by
//!   palisade's rules (no userinfo, query values `REDACTED`), and `Error::Middleware` as the
//!   very same `anyhow::Error`, which downcasts to the middleware's own error type;
//! - an error of palisade's own (a timeout of its own, an open circuit, a rate-limit or bulkhead
//!   rejection), or one whose text showed a secret of the URL and was scrubbed, as
//!   `Error::Middleware` holding a [`palisade::Error`](crate::Error): [`palisade_error`] finds
//!   it. `reqwest_middleware::Error::is_timeout()` looks at reqwest errors only, so it says
//!   `false` for palisade's own timeouts: ask the palisade error.
//!
//! A response says how many attempts it took
//! ([`ResponseExt::attempts`](crate::ResponseExt::attempts)); an error of palisade's own says
//! it with [`Error::attempts`](crate::Error::attempts); an error of the chain below, handed
//! back as it came, has no room for the count.
//!
//! # Cancellation
//!
//! An attempt that palisade gives up (its attempt timeout fires, the total timeout, the caller
//! drops the call) drops the chain below's future for it, as a `Client` drops reqwest's: the
//! request is cancelled, and a middleware below sees its future dropped. The attempts run
//! inside the call's own future, on the caller's task: nothing is spawned.
//!
//! [`reqwest-retry`]: https://docs.rs/reqwest-retry

use std::error::Error as StdError;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::Next;
use tokio::sync::{mpsc, oneshot};
use tower::util::BoxCloneSyncService;
use tower_service::Service;
use tracing::Instrument;
use url::Url;

use crate::builder::{ClientBuilder, Http};
use crate::circuit_breaker::CircuitBreakerHandle;
use crate::client::{request_span, Core};
use crate::error::{ConfigError, Error, ErrorKind};
use crate::fallback::FallbackCacheHandle;
use crate::redact;
use crate::transport::Transport;

/// palisade's pipeline as a `reqwest_middleware::Middleware`: see the [module docs](self) for
/// where to place it in a chain and what it does with errors.
///
/// Built by [`ClientBuilder::build_middleware`] (or [`PalisadeMiddleware::new`] for the
/// standard pipeline). Cheap to clone, and clones share the pipeline's state (breakers,
/// limiters, budget, fallback store), as a [`Client`](crate::Client)'s clones do: keep a clone
/// to read [`health`](Self::health) after handing one to the chain.
#[derive(Clone)]
pub struct PalisadeMiddleware {
    core: Arc<Core>,
}

impl ClientBuilder {
    /// Validates the configuration and builds the pipeline as a `reqwest-middleware`
    /// middleware (feature `middleware`), whose attempts go through the rest of the chain.
    ///
    /// ```
    /// use palisade::retry::Retry;
    ///
    /// let middleware = palisade::Client::builder()
    ///     .retry(Retry::default().max_attempts(4))
    ///     .build_middleware()?;
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(middleware)
    ///     .build();
    /// # let _ = client;
    /// # Ok::<(), palisade::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] as [`build`](Self::build) gives one for the stages, and one naming
    /// `http_client` or `transport` when either was set: the chain's own `reqwest::Client`
    /// sends the attempts, so neither would be used.
    pub fn build_middleware(self) -> Result<PalisadeMiddleware, ConfigError> {
        let ((), core) = self.build_core(|http, custom| {
            if custom.is_some() {
                return Err(ConfigError::new(
                    "transport",
                    "is not used by a middleware: the rest of the chain sends the attempts",
                ));
            }
            if !matches!(http, Http::Default) {
                return Err(ConfigError::new(
                    "http_client",
                    "is not used by a middleware: the chain's own reqwest::Client sends the attempts",
                ));
            }
            let chain = Transport::Custom(BoxCloneSyncService::new(Chain));
            Ok(((), chain, "next middleware"))
        })?;
        Ok(PalisadeMiddleware {
            core: Arc::new(core),
        })
    }
}

impl PalisadeMiddleware {
    /// The standard pipeline (as [`Client::new`](crate::Client::new)'s): total timeout 30 s,
    /// attempt timeout 10 s, retry (3 attempts, exponential backoff with full jitter,
    /// `Retry-After`, retry budget), a circuit breaker per host.
    pub fn new() -> Self {
        match ClientBuilder::new().build_middleware() {
            Ok(m) => m,
            // The standard configuration is valid, and a middleware builds no reqwest::Client.
            Err(e) => unreachable!("palisade's standard pipeline: {e}"),
        }
    }

    /// The circuit breakers, to read a host's state or to isolate or reset it by hand; `None`
    /// without a breaker (`no_circuit_breaker`).
    pub fn circuit_breaker(&self) -> Option<&CircuitBreakerHandle> {
        self.core.breakers.as_ref()
    }

    /// The fallback cache's store; `None` without a fallback cache (the default).
    pub fn fallback_cache(&self) -> Option<&FallbackCacheHandle> {
        self.core.fallback.as_ref()
    }

    /// A snapshot of the pipeline's state, as [`Client::health`](crate::Client::health) gives.
    pub fn health(&self) -> crate::Health {
        self.core.health.snapshot()
    }
}

impl Default for PalisadeMiddleware {
    /// The same as [`PalisadeMiddleware::new`].
    fn default() -> Self {
        PalisadeMiddleware::new()
    }
}

impl fmt::Debug for PalisadeMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("palisade::PalisadeMiddleware")
            .field("pipeline", &self.core.summary)
            .finish()
    }
}

/// The palisade error in a `reqwest_middleware::Error`: `Some` when the pipeline itself ended
/// the call (a timeout of its own, an open circuit, a rejection; see the [module
/// docs](self#errors)), `None` for an error of the chain below, handed back as it came.
///
/// ```
/// # fn check(err: &reqwest_middleware::Error) {
/// if let Some(e) = palisade::middleware::palisade_error(err) {
///     if e.is_circuit_open() {
///         println!("not sent; try again in {:?}", e.retry_after());
///     }
/// }
/// # }
/// ```
pub fn palisade_error(err: &reqwest_middleware::Error) -> Option<&Error> {
    match err {
        reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<Error>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for PalisadeMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        // The pipeline's transport (`Chain`, which must be `'static`) cannot hold `next`, which
        // borrows the chain: it hands each attempt here, through this call's channel, which
        // it finds in `CALL` (set around the pipeline's call and each poll of its future), and
        // this future runs the attempt through `next` alongside the pipeline.
        let span = request_span(&req);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let call = CALL.sync_scope(tx.clone(), || self.core.execute(req, span.clone()));
        let mut call = std::pin::pin!(CALL.scope(tx, call));
        let mut attempts: Vec<Pin<Box<dyn Future<Output = Option<Extensions>> + Send + '_>>> =
            Vec::new();
        let mut last = None;
        let result = poll_fn(|cx| loop {
            if let Poll::Ready(result) = call.as_mut().poll(cx) {
                // An attempt still here was given up by the pipeline: dropped with the rest.
                return Poll::Ready(result);
            }
            while let Poll::Ready(Some(attempt)) = rx.poll_recv(cx) {
                let run = serve(attempt, next.clone(), extensions.clone());
                attempts.push(Box::pin(run.instrument(span.clone())));
            }
            let mut answered = false;
            attempts.retain_mut(|a| match a.as_mut().poll(cx) {
                Poll::Ready(ext) => {
                    if ext.is_some() {
                        last = ext;
                    }
                    answered = true;
                    false
                }
                Poll::Pending => true,
            });
            // An answer wakes the pipeline: poll it again now rather than on the next wake-up.
            if !answered {
                return Poll::Pending;
            }
        })
        .await;
        if let Some(ext) = last {
            extensions.extend(ext);
        }
        result.map_err(into_chain_error)
    }
}

/// Runs one attempt through the rest of the chain with its own copy of the extensions, and
/// answers the pipeline's transport; drops the attempt as soon as the pipeline stops waiting
/// for it (an attempt timeout). Gives the copy back when it answered.
async fn serve(attempt: Attempt, next: Next<'_>, mut ext: Extensions) -> Option<Extensions> {
    let Attempt { req, mut reply } = attempt;
    let result = {
        let mut run = next.run(req, &mut ext);
        poll_fn(|cx| {
            if let Poll::Ready(result) = run.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            reply.poll_closed(cx).map(|()| None)
        })
        .await
    };
    reply.send(result?).ok()?;
    Some(ext)
}

/// One attempt, from the pipeline's transport to the call's future.
struct Attempt {
    req: Request,
    reply: oneshot::Sender<reqwest_middleware::Result<Response>>,
}

tokio::task_local! {
    /// Where the call being processed takes its attempts.
    static CALL: mpsc::UnboundedSender<Attempt>;
}

/// The bottom of a middleware's pipeline: sends each attempt to the call's future (see
/// [`PalisadeMiddleware`]'s `handle`), which runs it through the rest of the chain.
#[derive(Clone, Copy, Debug)]
struct Chain;

impl Service<Request> for Chain {
    type Response = Response;
    type Error = Error;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Answer {
        let url = req.url().clone();
        let (reply, answer) = oneshot::channel();
        let sent = CALL
            .try_with(|call| call.send(Attempt { req, reply }).is_ok())
            .unwrap_or(false);
        Answer {
            answer: sent.then_some(answer),
            url,
        }
    }
}

/// The future of an attempt sent to the chain: the chain's answer, as the pipeline's.
struct Answer {
    answer: Option<oneshot::Receiver<reqwest_middleware::Result<Response>>>,
    url: Url,
}

impl Future for Answer {
    type Output = Result<Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let answered = match &mut this.answer {
            Some(rx) => ready!(Pin::new(rx).poll(cx)).ok(),
            None => None,
        };
        Poll::Ready(match answered {
            Some(Ok(resp)) => Ok(resp),
            Some(Err(err)) => {
                let mut err = from_chain(err);
                // Scrubbed now, before a classifier or a hook sees it.
                err.set_url_if_missing(&this.url);
                Err(err)
            }
            // Only a transport called outside a middleware's call, or a call gone: neither
            // happens, as `Chain` is private and a call drops its attempts with itself.
            None => Err(Error::from_source(
                ErrorKind::Request,
                "palisade's middleware transport was called outside a call",
            )),
        })
    }
}

/// An error of the chain below, as the pipeline's transport error: a reqwest error exactly as
/// a `Client`'s reqwest gives it.
fn from_chain(err: reqwest_middleware::Error) -> Error {
    match err {
        reqwest_middleware::Error::Reqwest(e) => Error::from(e),
        err @ reqwest_middleware::Error::Middleware(_) => {
            Error::from_middleware(Box::new(Below(err)))
        }
    }
}

/// The error the call ends with, as the chain's: see the [module docs](self#errors).
fn into_chain_error(mut err: Error) -> reqwest_middleware::Error {
    if let Some(source) = err.take_source() {
        let source = match source.downcast::<reqwest::Error>() {
            Ok(e) => {
                // palisade keeps reqwest's error without its URL: give it back, redacted.
                let shown = err.url().and_then(|u| Url::parse(&redact::url(u)).ok());
                let e = match shown {
                    Some(url) => e.with_url(url),
                    None => *e,
                };
                return reqwest_middleware::Error::Reqwest(e);
            }
            Err(source) => source,
        };
        let source = match source.downcast::<Below>() {
            Ok(below) => return below.0,
            Err(source) => source,
        };
        err.put_source(source);
    }
    reqwest_middleware::Error::middleware(err)
}

/// A `reqwest_middleware::Error::Middleware` of the chain below, kept whole as the pipeline
/// error's source, so that it can be handed back as it came. Its `source()` is the
/// middleware's own error, which the classifier and `scan_chain` walk from.
struct Below(reqwest_middleware::Error);

impl fmt::Display for Below {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a middleware below palisade failed")
    }
}

impl fmt::Debug for Below {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl StdError for Below {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.0 {
            reqwest_middleware::Error::Middleware(e) => Some(&**e),
            reqwest_middleware::Error::Reqwest(e) => Some(e),
        }
    }
}
