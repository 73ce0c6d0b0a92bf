//! The error types: [`Error`] for a request that produced no response, and
//! [`ConfigError`] for a configuration that cannot work.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use http::StatusCode;
use url::Url;

use crate::redact;

/// A boxed error, as tower and reqwest use for sources.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The error of a request that produced no HTTP response.
///
/// An HTTP response is `Ok(reqwest::Response)` whatever its status, as in reqwest. `Error` is for
/// what came back instead of a response: a transport failure, a timeout, an invalid request.
/// [`kind`](Error::kind) tells which. It is decided when the error is converted from a reqwest
/// or I/O error, by walking that error's whole [`source`](StdError::source) chain, so a timeout
/// or a refused connection wrapped deep inside a transport's error is still seen as one by the
/// predicates ([`is_timeout`](Error::is_timeout), [`is_connect`](Error::is_connect)).
///
/// [`attempts`](Error::attempts) tells how many attempts the pipeline made before it gave up.
/// The underlying reqwest or I/O error, where there is one, is the `source()`.
///
/// reqwest's own predicates are mirrored, so that code written against `reqwest::Error` reads
/// a palisade `Error` the same: [`is_builder`](Error::is_builder),
/// [`is_request`](Error::is_request), [`is_redirect`](Error::is_redirect),
/// [`is_status`](Error::is_status) and [`status`](Error::status), [`is_body`](Error::is_body),
/// [`is_decode`](Error::is_decode), [`is_upgrade`](Error::is_upgrade),
/// [`is_dns`](Error::is_dns), [`url`](Error::url), [`url_mut`](Error::url_mut),
/// [`with_url`](Error::with_url) and [`without_url`](Error::without_url). An error that came
/// from reqwest (a `reqwest::Error` in its source chain) answers as that reqwest error does;
/// one that did not (palisade's own timeouts and rejections, a custom transport's errors)
/// answers by its [`kind`](Error::kind), as each predicate's docs say. They are read when the
/// error is made, so they hold for a source that was scrubbed (below) too.
///
/// ```
/// // A 404 made an error by reqwest's `error_for_status`, then converted into palisade's
/// // (as `?` does in a function that returns `palisade::Error`).
/// let resp = reqwest::Response::from(http::Response::builder().status(404).body("")?);
/// let e = palisade::Error::from(resp.error_for_status().unwrap_err());
/// assert!(e.is_status() && !e.is_request());
/// assert_eq!(e.status(), Some(http::StatusCode::NOT_FOUND));
/// # Ok::<(), http::Error>(())
/// ```
///
/// No formatting of an `Error` shows a secret of its request: `Display` and `Debug` (plain or
/// alternate) show the URL without userinfo and with every query value replaced by
/// `REDACTED`, and so does every error in the `source()` chain. A reqwest error is kept as the
/// source without its URL (reqwest's [`without_url`](reqwest::Error::without_url); the URL is
/// [`url`](Error::url) here); a source whose text shows the URL's query or userinfo anyway
/// (a custom transport's message, say) is replaced by a copy of its chain with that text
/// scrubbed, which keeps every message but can no longer be downcast.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    timeout: Option<TimeoutKind>,
    connect: bool,
    source: Option<BoxError>,
    /// What the reqwest error in the source chain said of itself, if there is one.
    reqwest: Option<ReqwestMarks>,
    url: Option<Url>,
    attempts: u32,
    retry_after: Option<Duration>,
    /// When the call left a rate limiter that made it wait, for the circuit breaker's timing
    /// (as `ext::LeftLimiterAt` on a response).
    left_limiter: Option<tokio::time::Instant>,
}

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A timeout fired: palisade's attempt or total timeout, or the transport's own
    /// ([`Error::timeout_kind`] tells which).
    Timeout,
    /// The connection could not be made: refused, DNS failure, unreachable. Nothing reached the
    /// server, so the retry stage retries it for any method.
    Connect,
    /// The connection failed after it was made: reset, closed, an incomplete message, a protocol
    /// error.
    Transport,
    /// The request itself was invalid (a builder error, a bad URL, a redirect loop): retrying it
    /// cannot help.
    Request,
    /// Reading or decoding a body failed.
    Body,
    /// The circuit breaker for the host is open (or half-open with every probe taken): the
    /// call was not sent. [`Error::retry_after`] tells when it may be tried again.
    CircuitOpen,
    /// The rate limiter had no token free within its wait: the call was not sent.
    /// [`Error::retry_after`] tells when one will be.
    RateLimited,
    /// The bulkhead had no room, in flight or in its queue: the call was not sent.
    BulkheadFull,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect error",
            ErrorKind::Transport => "transport error",
            ErrorKind::Request => "invalid request",
            ErrorKind::Body => "body error",
            ErrorKind::CircuitOpen => "circuit open",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::BulkheadFull => "bulkhead full",
        })
    }
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// palisade's per-attempt timeout ([`ClientBuilder::attempt_timeout`](crate::ClientBuilder::attempt_timeout)).
    Attempt,
    /// palisade's total timeout, which covers every attempt and every backoff sleep
    /// ([`ClientBuilder::total_timeout`](crate::ClientBuilder::total_timeout)).
    Total,
    /// The transport's own timeout: reqwest's `timeout`, `connect_timeout` or `read_timeout`, or
    /// an I/O error of kind `TimedOut`.
    Transport,
    /// A half-open circuit breaker's probe ran past its own timeout
    /// ([`CircuitBreaker::probe_timeout`](crate::circuit_breaker::CircuitBreaker::probe_timeout)):
    /// the call was cancelled and the breaker opened again.
    Probe,
}

impl Error {
    fn new(kind: ErrorKind) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                timeout: None,
                connect: false,
                source: None,
                reqwest: None,
                url: None,
                attempts: 1,
                retry_after: None,
                left_limiter: None,
            }),
        }
    }

    /// A rejection by a stage that did not send the call (an open circuit, a rate limit, a
    /// full bulkhead), with a hint of when trying again may succeed.
    pub(crate) fn rejected(kind: ErrorKind, retry_after: Option<Duration>) -> Self {
        let mut e = Error::new(kind);
        e.inner.retry_after = retry_after;
        e
    }

    /// A timeout of the given kind.
    pub(crate) fn timeout(kind: TimeoutKind) -> Self {
        let mut e = Error::new(ErrorKind::Timeout);
        e.inner.timeout = Some(kind);
        e
    }

    /// An error of the given kind with a source, for transports other than reqwest (an in-memory
    /// transport in tests, a custom connector). The kind is taken as given; convert from an
    /// `io::Error` instead to have it classed by its `ErrorKind`.
    ///
    /// ```
    /// use palisade::{Error, ErrorKind};
    /// let e = Error::from_source(ErrorKind::Transport, "connection reset by peer");
    /// assert_eq!(e.kind(), ErrorKind::Transport);
    /// ```
    pub fn from_source(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Error::transport(
            kind,
            kind == ErrorKind::Timeout,
            kind == ErrorKind::Connect,
            source.into(),
        )
    }

    /// An error the transport gave: a transport timeout when `timeout`, connect-time when
    /// `connect` (nothing reached the server).
    ///
    /// A reqwest error that is the source, or that an I/O error source wraps, gives its URL
    /// here and keeps none (its `Display` would show it whole): the URL is [`Error::url`],
    /// shown by the rules of `redact`, and [`Error::without_url`] removes it from every place.
    fn transport(kind: ErrorKind, timeout: bool, connect: bool, source: BoxError) -> Self {
        let (source, url) = detach_url(source);
        let mut e = Error::new(kind);
        if timeout {
            e.inner.timeout = Some(TimeoutKind::Transport);
        }
        e.inner.connect = connect;
        e.inner.reqwest = ReqwestMarks::of(source.as_ref());
        e.inner.source = Some(source);
        if url.is_some() {
            e.inner.url = url;
            e.scrub_source();
        }
        e
    }

    /// An error a middleware below palisade's in a `reqwest-middleware` chain gave (feature
    /// `middleware`), classed by the reqwest and I/O errors in its source chain as the
    /// transport's own would be: a timeout, a connect failure, or what the first reqwest error
    /// says; [`ErrorKind::Request`] (not retried, no failure of the host) when it holds neither
    /// a timeout, nor a connect failure, nor a reqwest error.
    #[cfg(feature = "middleware")]
    pub(crate) fn from_middleware(source: BoxError) -> Self {
        let (timeout, connect) = scan_chain(source.as_ref());
        let mut reqwest = None;
        let mut cur: Option<&(dyn StdError + 'static)> = Some(source.as_ref());
        while let Some(e) = cur {
            if let Some(r) = e.downcast_ref::<reqwest::Error>() {
                reqwest = Some(r);
                break;
            }
            cur = e.source();
        }
        let kind = if timeout {
            ErrorKind::Timeout
        } else if connect {
            ErrorKind::Connect
        } else {
            match reqwest {
                Some(r) if r.is_builder() || r.is_redirect() => ErrorKind::Request,
                Some(r) if r.is_body() || r.is_decode() => ErrorKind::Body,
                Some(_) => ErrorKind::Transport,
                None => ErrorKind::Request,
            }
        };
        Error::transport(kind, timeout, connect, source)
    }

    /// Takes the source out, for the `reqwest-middleware` adapter to hand back the error it
    /// came from.
    #[cfg(feature = "middleware")]
    pub(crate) fn take_source(&mut self) -> Option<BoxError> {
        self.inner.source.take()
    }

    /// Puts back a source [`take_source`](Self::take_source) took.
    #[cfg(feature = "middleware")]
    pub(crate) fn put_source(&mut self, source: BoxError) {
        self.inner.source = Some(source);
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether a timeout fired: palisade's own or the transport's (an I/O `TimedOut` anywhere
    /// in the source chain of a converted error counts).
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == ErrorKind::Timeout
    }

    /// Which timeout fired, if this is a timeout.
    pub fn timeout_kind(&self) -> Option<TimeoutKind> {
        self.inner.timeout
    }

    /// Whether the connection could not be made (refused, DNS, host or network unreachable,
    /// connect timeout, as reqwest's connector reports them): the request never reached the
    /// server, so it may be resent whatever its method. Only what proves that no byte of the
    /// request left counts; see [`From<io::Error>`](#impl-From%3CError%3E-for-Error) for the
    /// I/O errors that do not.
    pub fn is_connect(&self) -> bool {
        self.inner.connect
    }

    /// Whether the call was refused because the host's circuit is open.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.kind == ErrorKind::CircuitOpen
    }

    /// Whether the call was refused by the rate limiter.
    pub fn is_rate_limited(&self) -> bool {
        self.inner.kind == ErrorKind::RateLimited
    }

    /// Whether the call was refused by a full bulkhead.
    pub fn is_bulkhead_full(&self) -> bool {
        self.inner.kind == ErrorKind::BulkheadFull
    }

    /// When trying again may succeed, for a rejection that knows (an open circuit, a rate
    /// limit); `None` otherwise.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// How many attempts the pipeline made before it returned this error: 1 without retries,
    /// 0 when the total deadline had passed before the first could start. Hedges sent count
    /// as attempts (see [`ResponseExt::attempts`](crate::ResponseExt::attempts)).
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// The URL of the request, where known: the URL the pipeline was called with, or the one
    /// the reqwest error gave (after redirects, the URL that failed).
    ///
    /// `Display` and `Debug` show it without userinfo and with its query values replaced by
    /// `REDACTED`; this returns it whole.
    pub fn url(&self) -> Option<&Url> {
        self.inner.url.as_ref()
    }

    /// The URL of the request, to change, where known (as reqwest's `url_mut`). `Display` and
    /// `Debug` show the changed URL, by the same redaction rules.
    pub fn url_mut(&mut self) -> Option<&mut Url> {
        self.inner.url.as_mut()
    }

    /// This error with `url` as its URL, in place of any it had (as reqwest's `with_url`).
    /// A source whose text shows a secret of `url` is scrubbed of it, as when the pipeline
    /// gives an error its URL.
    pub fn with_url(mut self, url: Url) -> Self {
        self.inner.url = Some(url);
        self.scrub_source();
        self
    }

    /// This error without its URL (as reqwest's `without_url`): neither [`url`](Error::url)
    /// nor `Display` nor `Debug` has it any more, nor does the reqwest error in the source,
    /// which gave its URL to this error when it was made.
    ///
    /// The text of a source of another kind (a custom transport's message that quotes the
    /// URL) is kept as it was: scrubbed of the URL's userinfo and query values when the error
    /// learned its URL, but not of its host and path. An error handed back through a
    /// [`Client`](crate::Client) learns the URL of its request again.
    pub fn without_url(mut self) -> Self {
        self.inner.url = None;
        self
    }

    /// Whether this is a builder error: the reqwest error says
    /// [`is_builder`](reqwest::Error::is_builder) (an invalid header, method or URL given to a
    /// [`RequestBuilder`](crate::RequestBuilder)). Its [`kind`](Error::kind) is
    /// [`Request`](ErrorKind::Request).
    pub fn is_builder(&self) -> bool {
        self.inner.reqwest.is_some_and(|r| r.builder)
    }

    /// Whether sending the request, or waiting for its response, failed.
    ///
    /// From reqwest, reqwest's [`is_request`](reqwest::Error::is_request): a connect or
    /// transport failure, or reqwest's own total timeout. Otherwise, an error of kind
    /// [`Connect`](ErrorKind::Connect), [`Transport`](ErrorKind::Transport) or
    /// [`Timeout`](ErrorKind::Timeout): palisade's attempt and total timeouts are `true`, as
    /// reqwest's timeout is, and so are a custom transport's failures. A call that a stage
    /// refused without sending it (an open circuit, a rate limit, a full bulkhead) is `false`.
    pub fn is_request(&self) -> bool {
        match self.inner.reqwest {
            Some(r) => r.request,
            None => matches!(
                self.inner.kind,
                ErrorKind::Connect | ErrorKind::Transport | ErrorKind::Timeout
            ),
        }
    }

    /// Whether following a redirect failed: the reqwest error says
    /// [`is_redirect`](reqwest::Error::is_redirect) (a loop, too many redirects, a policy's
    /// error). Its [`kind`](Error::kind) is [`Request`](ErrorKind::Request).
    pub fn is_redirect(&self) -> bool {
        self.inner.reqwest.is_some_and(|r| r.redirect)
    }

    /// Whether this error stands for an HTTP status: the reqwest error says
    /// [`is_status`](reqwest::Error::is_status), which only reqwest's
    /// `Response::error_for_status` makes. palisade itself returns a response of any status as
    /// `Ok`, so this is `true` only for such an error converted into palisade's (by `?` in a
    /// function that returns `palisade::Error`, say); see [`status`](Error::status).
    pub fn is_status(&self) -> bool {
        self.inner.reqwest.is_some_and(|r| r.status.is_some())
    }

    /// The status of the response this error stands for, as reqwest's
    /// [`status`](reqwest::Error::status): `Some` only when the error came from reqwest's
    /// `Response::error_for_status` (see [`is_status`](Error::is_status)), `None` for
    /// everything palisade returns itself, since any HTTP response, a 503 after the retries
    /// are spent included, is `Ok`. Such an error's [`kind`](Error::kind) is
    /// [`Transport`](ErrorKind::Transport).
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.reqwest.and_then(|r| r.status)
    }

    /// Whether a request or response body failed.
    ///
    /// From reqwest, reqwest's [`is_body`](reqwest::Error::is_body): the error of a
    /// `reqwest::Body` itself, as polling one as an `http_body::Body` gives (its read timeout
    /// among them). Otherwise an error of kind [`Body`](ErrorKind::Body) (a custom
    /// transport's). Reading a response's body is reqwest's business, not palisade's, and
    /// `Response`'s own methods (`bytes`, `text`, `chunk`, `bytes_stream`) report its failures
    /// as [`is_decode`](Error::is_decode) errors, a body timeout included.
    pub fn is_body(&self) -> bool {
        match self.inner.reqwest {
            Some(r) => r.body,
            None => self.inner.kind == ErrorKind::Body,
        }
    }

    /// Whether decoding a response's body failed: the reqwest error says
    /// [`is_decode`](reqwest::Error::is_decode) (JSON that does not parse, a body that failed
    /// or timed out while `Response`'s methods read it). Its [`kind`](Error::kind) is [`Body`](ErrorKind::Body).
    pub fn is_decode(&self) -> bool {
        self.inner.reqwest.is_some_and(|r| r.decode)
    }

    /// Whether upgrading the connection failed: the reqwest error says
    /// [`is_upgrade`](reqwest::Error::is_upgrade) (`Response::upgrade`).
    pub fn is_upgrade(&self) -> bool {
        self.inner.reqwest.is_some_and(|r| r.upgrade)
    }

    /// Whether resolving the host's name failed: the reqwest error says
    /// [`is_dns`](reqwest::Error::is_dns). Such an error is a connect error too
    /// ([`is_connect`](Error::is_connect)).
    pub fn is_dns(&self) -> bool {
        self.inner.reqwest.is_some_and(|r| r.dns)
    }

    pub(crate) fn set_left_limiter(&mut self, at: tokio::time::Instant) {
        self.inner.left_limiter = Some(at);
    }

    pub(crate) fn left_limiter(&self) -> Option<tokio::time::Instant> {
        self.inner.left_limiter
    }

    pub(crate) fn set_attempts(&mut self, attempts: u32) {
        self.inner.attempts = attempts;
    }

    /// Makes this error the given timeout, keeping its source and URL (a transport timeout
    /// that fired at the total deadline is the total timeout).
    pub(crate) fn set_timeout_kind(&mut self, kind: TimeoutKind) {
        self.inner.kind = ErrorKind::Timeout;
        self.inner.timeout = Some(kind);
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.set_attempts(attempts);
        self
    }

    pub(crate) fn set_url_if_missing(&mut self, url: &Url) {
        if self.inner.url.is_none() {
            self.inner.url = Some(url.clone());
            self.scrub_source();
        }
    }

    /// Replaces the source by a scrubbed copy of its chain when its text shows a secret of the
    /// URL (see the type's docs). Runs once, when the error first learns its URL: errors are
    /// the slow path, and most sources (reqwest's without their URL) need nothing.
    fn scrub_source(&mut self) {
        let inner = &mut *self.inner;
        if let (Some(src), Some(url)) = (&inner.source, &inner.url) {
            let src: &(dyn StdError + 'static) = src.as_ref();
            let secrets = redact::Secrets::of(url);
            if redact::Scrubbed::needed(src, &secrets) {
                inner.source = Some(Box::new(redact::Scrubbed::chain(src, &secrets)));
            }
        }
    }
}

/// What a reqwest error says of itself, read when a palisade [`Error`] is made from it (a
/// source scrubbed of a secret can no longer be downcast to ask).
#[derive(Debug, Clone, Copy)]
struct ReqwestMarks {
    builder: bool,
    request: bool,
    redirect: bool,
    body: bool,
    decode: bool,
    upgrade: bool,
    dns: bool,
    status: Option<StatusCode>,
}

impl ReqwestMarks {
    /// The marks of the first reqwest error in `err`'s source chain, `err` included.
    fn of(err: &(dyn StdError + 'static)) -> Option<ReqwestMarks> {
        let r = chain(err).find_map(|e| e.downcast_ref::<reqwest::Error>())?;
        Some(ReqwestMarks {
            builder: r.is_builder(),
            request: r.is_request(),
            redirect: r.is_redirect(),
            body: r.is_body(),
            decode: r.is_decode(),
            upgrade: r.is_upgrade(),
            dns: r.is_dns(),
            status: r.status(),
        })
    }
}

/// An error and the errors below it. `io::Error::source` skips the error it wraps (it
/// returns that error's source); `get_ref` returns it, so it is taken instead.
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e: &&'a (dyn StdError + 'static)| match e
        .downcast_ref::<io::Error>()
    {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
        None => e.source(),
    })
}

/// Takes the URL out of a reqwest error that is `source`, or that an I/O error `source`
/// wraps, and returns the source without it: see [`Error::transport`].
fn detach_url(source: BoxError) -> (BoxError, Option<Url>) {
    let has_url = |e: &(dyn StdError + Send + Sync + 'static)| {
        e.downcast_ref::<reqwest::Error>()
            .is_some_and(|r| r.url().is_some())
    };
    if has_url(source.as_ref()) {
        return match source.downcast::<reqwest::Error>() {
            Ok(r) => {
                let url = r.url().cloned();
                (Box::new(r.without_url()), url)
            }
            Err(source) => (source, None),
        };
    }
    let wraps = source
        .downcast_ref::<io::Error>()
        .and_then(io::Error::get_ref)
        .is_some_and(has_url);
    if !wraps {
        return (source, None);
    }
    let io = match source.downcast::<io::Error>() {
        Ok(io) => *io,
        Err(source) => return (source, None),
    };
    let kind = io.kind();
    match io
        .into_inner()
        .map(|inner| inner.downcast::<reqwest::Error>())
    {
        Some(Ok(r)) => {
            let url = r.url().cloned();
            (Box::new(io::Error::new(kind, r.without_url())), url)
        }
        Some(Err(inner)) => (Box::new(io::Error::new(kind, inner)), None),
        None => (Box::new(io::Error::from(kind)), None),
    }
}

/// Walks an error's source chain and reports whether any link is a timeout, and whether the
/// error is certainly a connect failure: one that happened before any byte of the request left.
///
/// A connect failure lets the retry stage resend a POST, so only what proves that nothing was
/// sent counts: reqwest's `is_connect` (its connector failed, so no request was written) and an
/// I/O `AddrNotAvailable` (no local address could be bound). `ConnectionRefused`,
/// `HostUnreachable` and `NetworkUnreachable` do not count on their own: the kernel reports
/// them on an established TCP connection too, when a retransmission times out after an ICMP
/// error (a firewall's `REJECT`, a route gone), and by then the request may have been written
/// and processed. When in doubt, it is not a connect failure.
fn scan_chain(err: &(dyn StdError + 'static)) -> (bool, bool) {
    let (mut timeout, mut connect) = (false, false);
    for e in chain(err) {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::TimedOut => timeout = true,
                io::ErrorKind::AddrNotAvailable => connect = true,
                _ => {}
            }
        }
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            timeout |= r.is_timeout();
            connect |= r.is_connect();
        }
    }
    (timeout, connect)
}

impl From<reqwest::Error> for Error {
    fn from(err: reqwest::Error) -> Self {
        let (timeout, connect) = scan_chain(&err);
        let kind = if timeout {
            ErrorKind::Timeout
        } else if connect {
            ErrorKind::Connect
        } else if err.is_builder() || err.is_redirect() {
            ErrorKind::Request
        } else if err.is_body() || err.is_decode() {
            ErrorKind::Body
        } else {
            ErrorKind::Transport
        };
        // The URL is kept here, shown by the rules of `redact`; reqwest's error would show it
        // whole in its `Display` and `Debug`.
        let url = err.url().cloned();
        let mut e = Error::transport(kind, timeout, connect, Box::new(err.without_url()));
        if url.is_some() {
            e.inner.url = url;
            e.scrub_source();
        }
        e
    }
}

impl From<io::Error> for Error {
    /// Classes an I/O error by its kind (and the kinds of the errors it wraps): `TimedOut` is a
    /// transport timeout; `AddrNotAvailable` a connect error; anything else a transport error.
    ///
    /// `ConnectionRefused`, `HostUnreachable` and `NetworkUnreachable` are transport errors,
    /// not connect errors: the kernel reports them after a request was written too, so they do
    /// not prove that nothing reached the server, and a POST that failed with one is not
    /// resent. A transport that knows it failed before sending anything (its connect call
    /// failed) says so with [`Error::from_source`]`(ErrorKind::Connect, err)`.
    fn from(err: io::Error) -> Self {
        let (timeout, connect) = scan_chain(&err);
        let kind = if timeout {
            ErrorKind::Timeout
        } else if connect {
            ErrorKind::Connect
        } else {
            ErrorKind::Transport
        };
        Error::transport(kind, timeout, connect, Box::new(err))
    }
}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("palisade::Error");
        d.field("kind", &self.inner.kind);
        if let Some(t) = &self.inner.timeout {
            d.field("timeout", t);
        }
        if let Some(url) = &self.inner.url {
            d.field("url", &redact::DisplayUrl(url));
        }
        d.field("attempts", &self.inner.attempts);
        if let Some(h) = &self.inner.retry_after {
            d.field("retry_after", h);
        }
        if let Some(s) = &self.inner.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.timeout {
            Some(TimeoutKind::Attempt) => f.write_str("attempt timed out")?,
            Some(TimeoutKind::Total) => f.write_str("total timeout elapsed")?,
            Some(TimeoutKind::Transport) => f.write_str("transport timed out")?,
            Some(TimeoutKind::Probe) => f.write_str("circuit breaker probe timed out")?,
            None => match self.status() {
                // reqwest's words for an `error_for_status` error, not "transport error".
                Some(s) if s.is_client_error() => write!(f, "HTTP status client error ({s})")?,
                Some(s) => write!(f, "HTTP status server error ({s})")?,
                None => fmt::Display::fmt(&self.inner.kind, f)?,
            },
        }
        if self.inner.attempts > 1 {
            write!(f, " after {} attempts", self.inner.attempts)?;
        }
        if let Some(url) = &self.inner.url {
            write!(f, " for url ({})", redact::DisplayUrl(url))?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// A configuration that cannot work, found by a builder's `build()` or a layer's `new()`.
///
/// It names the field (as `stage.field`, for example `retry.max_attempts`) and the rule the
/// value broke. Builders keep bad input and report it here; they never panic on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{field}` {rule}")]
pub struct ConfigError {
    field: Cow<'static, str>,
    rule: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<Cow<'static, str>>, rule: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The same error for a field of `prefix`: `retry.max_attempts` within
    /// `hosts."api.example.com"` is `hosts."api.example.com".retry.max_attempts`.
    pub(crate) fn within(self, prefix: &str) -> Self {
        ConfigError {
            field: Cow::Owned(format!("{prefix}.{}", self.field)),
            rule: self.rule,
        }
    }

    /// The field at fault, as `stage.field` (for example `retry.max_attempts`), within the
    /// policy of a host when it is there (`hosts."api.example.com".retry.max_attempts`), or
    /// the path in a configuration file.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rule the value broke, in words.
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_are_send_sync_static() {
        assert_send_sync_static::<Error>();
        assert_send_sync_static::<ConfigError>();
    }

    #[test]
    fn io_errors_are_classed_by_kind() {
        let e = Error::from(io::Error::from(io::ErrorKind::AddrNotAvailable));
        assert_eq!(e.kind(), ErrorKind::Connect);
        assert!(e.is_connect());
        let e = Error::from(io::Error::from(io::ErrorKind::TimedOut));
        assert!(e.is_timeout());
        assert_eq!(e.timeout_kind(), Some(TimeoutKind::Transport));
        let e = Error::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(e.kind(), ErrorKind::Transport);
        assert!(!e.is_connect() && !e.is_timeout());
    }

    // Regression: `HostUnreachable`/`NetworkUnreachable` anywhere in the chain made a connect
    // failure, which lets a POST be resent, though the kernel reports them (and
    // `ConnectionRefused`) after a request was written too.
    #[test]
    fn errors_that_may_follow_a_write_are_not_connect_failures() {
        for kind in [
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
            io::ErrorKind::ConnectionRefused,
        ] {
            for e in [
                Error::from(io::Error::from(kind)),
                Error::from(io::Error::other(io::Error::from(kind))),
            ] {
                assert!(!e.is_connect(), "{kind:?}");
                assert_eq!(e.kind(), ErrorKind::Transport, "{kind:?}");
            }
        }
        // A transport that knows nothing was sent says so.
        let e = Error::from_source(
            ErrorKind::Connect,
            io::Error::from(io::ErrorKind::HostUnreachable),
        );
        assert!(e.is_connect());
    }

    #[test]
    fn nested_io_timeout_is_found_through_the_chain() {
        let inner = io::Error::from(io::ErrorKind::TimedOut);
        let outer = io::Error::other(inner);
        assert!(Error::from(outer).is_timeout());
    }

    #[test]
    fn a_connect_timeout_keeps_both_marks() {
        // A connect attempt that timed out: a timeout, and nothing reached the server, which
        // lets a POST be retried. The same as reqwest's own errors are read.
        let inner = io::Error::from(io::ErrorKind::AddrNotAvailable);
        let outer = io::Error::new(io::ErrorKind::TimedOut, inner);
        let e = Error::from(outer);
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.is_timeout() && e.is_connect());
    }

    #[test]
    fn rejections_carry_their_kind_and_hint() {
        let e = Error::rejected(ErrorKind::CircuitOpen, Some(Duration::from_secs(5)));
        assert!(e.is_circuit_open() && !e.is_rate_limited() && !e.is_bulkhead_full());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        assert_eq!(e.to_string(), "circuit open");
        let e = Error::rejected(ErrorKind::RateLimited, None);
        assert!(e.is_rate_limited());
        assert!(Error::rejected(ErrorKind::BulkheadFull, None).is_bulkhead_full());
    }

    /// A body whose first frame fails, as a connection cut mid-body does.
    struct FailingBody;

    impl http_body::Body for FailingBody {
        type Data = bytes::Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, io::Error>>> {
            std::task::Poll::Ready(Some(Err(io::Error::other("cut short"))))
        }
    }

    fn response(status: u16) -> reqwest::Response {
        let mut resp = http::Response::new(reqwest::Body::from("x"));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        reqwest::Response::from(resp)
    }

    /// The reqwest predicates, in one line, for the assertions below.
    fn marks(e: &Error) -> [bool; 9] {
        [
            e.is_builder(),
            e.is_request(),
            e.is_redirect(),
            e.is_status(),
            e.is_body(),
            e.is_decode(),
            e.is_upgrade(),
            e.is_dns(),
            e.is_connect(),
        ]
    }

    fn reqwest_marks(e: &reqwest::Error) -> [bool; 9] {
        [
            e.is_builder(),
            e.is_request(),
            e.is_redirect(),
            e.is_status(),
            e.is_body(),
            e.is_decode(),
            e.is_upgrade(),
            e.is_dns(),
            e.is_connect(),
        ]
    }

    /// Converts a real reqwest error and checks that palisade's says what reqwest's says.
    fn same(r: reqwest::Error) -> Error {
        let want = (reqwest_marks(&r), r.status(), r.is_timeout());
        let e = Error::from(r);
        assert_eq!((marks(&e), e.status(), e.is_timeout()), want, "{e:?}");
        e
    }

    #[test]
    fn a_builder_error_is_a_builder_error() {
        let r = reqwest::Client::new()
            .get("http://a.test/")
            .header("bad name", "v")
            .build()
            .unwrap_err();
        let e = same(r);
        assert!(e.is_builder() && !e.is_request() && e.status().is_none());
        assert_eq!(e.kind(), ErrorKind::Request);
    }

    #[test]
    fn a_status_error_has_its_status_and_says_so() {
        let e = same(response(404).error_for_status().unwrap_err());
        assert!(e.is_status() && !e.is_request() && !e.is_builder());
        assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
        assert!(e
            .to_string()
            .starts_with("HTTP status client error (404 Not Found)"));
        let e = same(response(503).error_for_status().unwrap_err());
        assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert!(e.to_string().starts_with("HTTP status server error (503"));
    }

    #[tokio::test]
    async fn body_and_decode_errors_are_told_apart() {
        use http_body_util::BodyExt as _;
        // Polling a body that fails: reqwest's body error.
        let r = reqwest::Body::wrap(FailingBody)
            .collect()
            .await
            .unwrap_err();
        assert!(r.is_body());
        let e = same(r);
        assert!(e.is_body() && !e.is_decode() && !e.is_request());
        assert_eq!(e.kind(), ErrorKind::Body);
        // Reading a failing body whole: reqwest calls it a decode error.
        let resp = reqwest::Response::from(http::Response::new(reqwest::Body::wrap(FailingBody)));
        let e = same(resp.bytes().await.unwrap_err());
        assert!(e.is_decode() && !e.is_body());
        assert_eq!(e.kind(), ErrorKind::Body);
    }

    #[cfg(feature = "json")]
    #[tokio::test]
    async fn a_json_that_does_not_parse_is_a_decode_error() {
        let r = response(200)
            .json::<std::collections::HashMap<String, u8>>()
            .await
            .unwrap_err();
        let e = same(r);
        assert!(e.is_decode() && !e.is_body() && !e.is_status());
    }

    #[tokio::test]
    async fn an_upgrade_that_fails_is_an_upgrade_error() {
        let e = same(response(200).upgrade().await.unwrap_err());
        assert!(e.is_upgrade() && !e.is_request());
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_request_and_connect_error() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/p?token=s3cret"))
            .send()
            .await
            .unwrap_err();
        let e = same(r);
        assert!(e.is_request() && e.is_connect() && !e.is_dns() && !e.is_builder());
        assert_eq!(e.kind(), ErrorKind::Connect);
    }

    #[tokio::test]
    async fn a_failed_resolution_is_a_dns_error() {
        struct NoSuchHost;
        impl reqwest::dns::Resolve for NoSuchHost {
            fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
                Box::pin(async { Err(io::Error::other("no such host").into()) })
            }
        }
        let r = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(NoSuchHost)
            .build()
            .unwrap()
            .get("http://nowhere.test/")
            .send()
            .await
            .unwrap_err();
        let e = same(r);
        assert!(e.is_dns() && e.is_connect() && e.is_request());
    }

    #[test]
    fn palisade_own_errors_answer_by_their_kind() {
        for e in [
            Error::timeout(TimeoutKind::Attempt),
            Error::timeout(TimeoutKind::Total),
            Error::from(io::Error::from(io::ErrorKind::TimedOut)),
            Error::from(io::Error::from(io::ErrorKind::ConnectionReset)),
            Error::from_source(ErrorKind::Connect, "refused"),
        ] {
            assert_eq!(
                marks(&e)[..8],
                [false, true, false, false, false, false, false, false]
            );
        }
        let e = Error::from_source(ErrorKind::Body, "cut");
        assert!(e.is_body() && !e.is_request() && !e.is_decode());
        for kind in [
            ErrorKind::CircuitOpen,
            ErrorKind::RateLimited,
            ErrorKind::BulkheadFull,
        ] {
            let e = Error::rejected(kind, None);
            assert_eq!(marks(&e), [false; 9], "{kind:?}: nothing was sent");
            assert_eq!(e.status(), None);
        }
        let e = Error::from_source(ErrorKind::Request, "no match");
        assert_eq!(marks(&e), [false; 9]);
    }

    /// A reqwest error reached through another error (a custom transport's `from_source`, an
    /// I/O error that wraps one) is read as well.
    #[test]
    fn a_reqwest_error_below_another_is_read_too() {
        let r = || response(429).error_for_status().unwrap_err();
        let e = Error::from_source(ErrorKind::Transport, r());
        assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(!e.is_request(), "reqwest's word, not the kind's");
        let e = Error::from(io::Error::other(r()));
        assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    }

    const SECRET_URL: &str = "http://user:pw@h.test/private/path?token=s3cret";

    fn shows(e: &Error) -> String {
        let mut all = format!("{e} {e:?} {e:#?}");
        let mut cur = e.source();
        while let Some(s) = cur {
            all.push_str(&format!(" {s} {s:?}"));
            cur = s.source();
        }
        all
    }

    #[test]
    fn without_url_takes_the_url_from_every_place() {
        let url = Url::parse(SECRET_URL).unwrap();
        let with = |e: reqwest::Error| e.with_url(url.clone());
        for e in [
            Error::from(with(response(404).error_for_status().unwrap_err())),
            Error::from_source(
                ErrorKind::Transport,
                with(response(404).error_for_status().unwrap_err()),
            ),
            Error::from(io::Error::new(
                io::ErrorKind::ConnectionReset,
                with(response(404).error_for_status().unwrap_err()),
            )),
        ] {
            assert_eq!(e.url(), Some(&url), "the reqwest error gave its URL");
            let text = shows(&e);
            assert!(
                text.contains("h.test/private/path?token=REDACTED"),
                "{text}"
            );
            assert!(!text.contains("s3cret") && !text.contains("pw@"), "{text}");
            assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
            let e = e.without_url();
            assert_eq!(e.url(), None);
            let text = shows(&e);
            assert!(
                !text.contains("h.test") && !text.contains("no.url"),
                "{text}"
            );
            assert_eq!(e.status(), Some(StatusCode::NOT_FOUND), "the rest is kept");
        }
    }

    #[test]
    fn url_mut_and_with_url_change_the_url_shown_redacted() {
        let mut e = Error::from(response(404).error_for_status().unwrap_err());
        e.url_mut().unwrap().set_path("/changed");
        assert!(e
            .to_string()
            .ends_with("for url (http://no.url.provided.local/changed)"));
        let e = e.with_url(Url::parse(SECRET_URL).unwrap());
        assert_eq!(e.url().map(Url::as_str), Some(SECRET_URL));
        assert!(!shows(&e).contains("s3cret"));
        let mut e = Error::timeout(TimeoutKind::Total);
        assert!(e.url_mut().is_none());
    }

    #[test]
    fn display_names_kind_attempts_and_url() {
        let mut e = Error::timeout(TimeoutKind::Total).with_attempts(3);
        e.set_url_if_missing(&Url::parse("http://example.com/a").unwrap());
        assert_eq!(
            e.to_string(),
            "total timeout elapsed after 3 attempts for url (http://example.com/a)"
        );
    }
}
