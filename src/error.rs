//! The error types: [`Error`] for a request that produced no response, and
//! [`ConfigError`] for a configuration that cannot work.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

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
}

impl Error {
    fn new(kind: ErrorKind) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                timeout: None,
                connect: false,
                source: None,
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
    fn transport(kind: ErrorKind, timeout: bool, connect: bool, source: BoxError) -> Self {
        let mut e = Error::new(kind);
        if timeout {
            e.inner.timeout = Some(TimeoutKind::Transport);
        }
        e.inner.connect = connect;
        e.inner.source = Some(source);
        e
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
    /// 0 when the total deadline had passed before the first could start.
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// The URL of the request, where known.
    pub fn url(&self) -> Option<&Url> {
        self.inner.url.as_ref()
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
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        let io = e.downcast_ref::<io::Error>();
        if let Some(io) = io {
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
        // `io::Error::source` skips the error it wraps; `get_ref` returns it.
        cur = match io {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
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
        e.inner.url = url;
        e.scrub_source();
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
            None => fmt::Display::fmt(&self.inner.kind, f)?,
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
