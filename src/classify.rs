//! Failure classification: what came back, as one [`FailureClass`] every stage acts on.
//!
//! No stage reads status codes by itself: each asks the [`Classifier`] it was given, so one
//! override (for an API that answers 200 with an error body, or 404 for "not yet") changes what
//! the whole pipeline does.
//!
//! | class | what | retried by default | breaker failure |
//! |---|---|---|---|
//! | `Success` | 1xx–3xx | – | no |
//! | `ClientError` | 4xx other than 408 and 429; an invalid request | no | no |
//! | `Throttled` | 429, and 503 that carries `Retry-After` | yes | no |
//! | `ServerError` | 5xx | 500, 502, 503, 504 | yes |
//! | `Timeout` | attempt timeout, 408, transport timeout | yes | yes |
//! | `Network` | connect, DNS, reset, incomplete message | yes | yes |
//! | `Cancelled` | the caller dropped the future | no | no |
//! | `Rejected` | an open circuit, a rate limit, a full bulkhead | no | no |

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use reqwest::Response;

use crate::error::{Error, ErrorKind};

/// What an outcome means to the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// 1xx–3xx: the call worked.
    Success,
    /// 4xx other than 408 and 429, or a request that could not be sent as it was: an answer,
    /// not a failure of the server. Never retried.
    ClientError,
    /// The server asks the client to slow down: 429, or 503 with `Retry-After`.
    Throttled,
    /// 5xx (other than a 503 with `Retry-After`).
    ServerError,
    /// An attempt timed out: palisade's attempt timeout, the transport's, or a 408.
    Timeout,
    /// The connection failed: refused, DNS, reset, closed, an incomplete message.
    Network,
    /// The caller dropped the future before it finished.
    Cancelled,
    /// A stage of the pipeline refused the call without sending it: an open circuit, a rate
    /// limit, a full bulkhead. Not retried (the rejection says when to come back), and not a
    /// failure of the host for the circuit breaker.
    Rejected,
}

impl FailureClass {
    /// Whether this class is a failure (anything but `Success` and `ClientError`).
    pub fn is_failure(self) -> bool {
        !matches!(self, FailureClass::Success | FailureClass::ClientError)
    }

    /// The default classification of a status code and its headers, as the table in the
    /// [module docs](self) gives.
    pub fn from_status(status: StatusCode, headers: &HeaderMap) -> FailureClass {
        match status.as_u16() {
            100..=399 => FailureClass::Success,
            408 => FailureClass::Timeout,
            429 => FailureClass::Throttled,
            503 if headers.contains_key(http::header::RETRY_AFTER) => FailureClass::Throttled,
            400..=499 => FailureClass::ClientError,
            500..=599 => FailureClass::ServerError,
            // Not an HTTP status at all: an answer nobody can act on, not a failure to retry.
            _ => FailureClass::ClientError,
        }
    }

    /// The default classification of an [`Error`], by its kind (which was found by walking the
    /// source chain).
    pub fn from_error(err: &Error) -> FailureClass {
        match err.kind() {
            ErrorKind::Timeout => FailureClass::Timeout,
            ErrorKind::Connect | ErrorKind::Transport | ErrorKind::Body => FailureClass::Network,
            ErrorKind::Request => FailureClass::ClientError,
            ErrorKind::CircuitOpen | ErrorKind::RateLimited | ErrorKind::BulkheadFull => {
                FailureClass::Rejected
            }
        }
    }
}

impl FailureClass {
    /// The class's name, as `Display` writes it (and metrics label it).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureClass::Success => "success",
            FailureClass::ClientError => "client_error",
            FailureClass::Throttled => "throttled",
            FailureClass::ServerError => "server_error",
            FailureClass::Timeout => "timeout",
            FailureClass::Network => "network",
            FailureClass::Cancelled => "cancelled",
            FailureClass::Rejected => "rejected",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one attempt produced, as the classifier sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// An HTTP response, whatever its status.
    Response(&'a Response),
    /// No response: a transport failure, a timeout, a rejection.
    Error(&'a Error),
}

impl<'a> Outcome<'a> {
    /// The outcome of a `Result` as the stages hold it.
    pub fn of(result: &'a Result<Response, Error>) -> Self {
        match result {
            Ok(r) => Outcome::Response(r),
            Err(e) => Outcome::Error(e),
        }
    }

    /// The response's status, if there is a response.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Outcome::Response(r) => Some(r.status()),
            Outcome::Error(_) => None,
        }
    }

    /// The response's headers, if there is a response.
    pub fn headers(&self) -> Option<&'a HeaderMap> {
        match self {
            Outcome::Response(r) => Some(r.headers()),
            Outcome::Error(_) => None,
        }
    }

    /// The error, if there is no response.
    pub fn error(&self) -> Option<&'a Error> {
        match self {
            Outcome::Response(_) => None,
            Outcome::Error(e) => Some(e),
        }
    }
}

type ClassifyFn = dyn Fn(Outcome<'_>) -> FailureClass + Send + Sync;

/// Maps an [`Outcome`] to a [`FailureClass`]; every stage asks it.
///
/// The default follows the table in the [module docs](self). Override it with a closure, and
/// fall back to [`Classifier::default_class`] for what the closure does not decide:
///
/// ```
/// use palisade::classify::{Classifier, FailureClass, Outcome};
///
/// // This API answers 404 while a resource is being created: retry it like a 503.
/// let classifier = Classifier::from_fn(|outcome| match outcome.status() {
///     Some(s) if s == 404 => FailureClass::ServerError,
///     _ => Classifier::default_class(outcome),
/// });
/// # let _ = classifier;
/// ```
#[derive(Clone, Default)]
pub struct Classifier {
    custom: Option<Arc<ClassifyFn>>,
}

impl Classifier {
    /// A classifier that calls `f` for every outcome.
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(Outcome<'_>) -> FailureClass + Send + Sync + 'static,
    {
        Classifier {
            custom: Some(Arc::new(f)),
        }
    }

    /// Classifies an outcome.
    pub fn classify(&self, outcome: Outcome<'_>) -> FailureClass {
        match &self.custom {
            Some(f) => f(outcome),
            None => Classifier::default_class(outcome),
        }
    }

    /// The default classification, as the table in the [module docs](self) gives.
    pub fn default_class(outcome: Outcome<'_>) -> FailureClass {
        match outcome {
            Outcome::Response(r) => FailureClass::from_status(r.status(), r.headers()),
            Outcome::Error(e) => FailureClass::from_error(e),
        }
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.custom.is_some() {
            "Classifier(custom)"
        } else {
            "Classifier(default)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutKind;

    fn class(status: u16, retry_after: bool) -> FailureClass {
        let mut h = HeaderMap::new();
        if retry_after {
            h.insert(http::header::RETRY_AFTER, "1".parse().unwrap());
        }
        FailureClass::from_status(StatusCode::from_u16(status).unwrap(), &h)
    }

    #[test]
    fn status_table() {
        for s in [100, 200, 204, 301, 304, 399] {
            assert_eq!(class(s, false), FailureClass::Success, "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422, 499] {
            assert_eq!(class(s, false), FailureClass::ClientError, "{s}");
            assert_eq!(class(s, true), FailureClass::ClientError, "{s}");
        }
        assert_eq!(class(408, false), FailureClass::Timeout);
        assert_eq!(class(429, false), FailureClass::Throttled);
        assert_eq!(class(429, true), FailureClass::Throttled);
        assert_eq!(class(503, true), FailureClass::Throttled);
        for s in [500, 501, 502, 503, 504, 599] {
            assert_eq!(class(s, false), FailureClass::ServerError, "{s}");
        }
        for s in [600, 999] {
            assert_eq!(class(s, false), FailureClass::ClientError, "{s}");
        }
        assert_eq!(class(500, true), FailureClass::ServerError);
    }

    #[test]
    fn error_table() {
        let t = Error::timeout(TimeoutKind::Attempt);
        assert_eq!(FailureClass::from_error(&t), FailureClass::Timeout);
        let c = Error::from(std::io::Error::from(std::io::ErrorKind::AddrNotAvailable));
        assert_eq!(FailureClass::from_error(&c), FailureClass::Network);
        let c = Error::from_source(ErrorKind::Connect, "refused");
        assert_eq!(FailureClass::from_error(&c), FailureClass::Network);
        let r = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(FailureClass::from_error(&r), FailureClass::Network);
        let q = Error::from_source(ErrorKind::Request, "bad");
        assert_eq!(FailureClass::from_error(&q), FailureClass::ClientError);
        for kind in [
            ErrorKind::CircuitOpen,
            ErrorKind::RateLimited,
            ErrorKind::BulkheadFull,
        ] {
            let r = Error::rejected(kind, None);
            assert_eq!(FailureClass::from_error(&r), FailureClass::Rejected);
        }
    }

    #[test]
    fn failures() {
        assert!(!FailureClass::Success.is_failure());
        assert!(!FailureClass::ClientError.is_failure());
        assert!(FailureClass::ServerError.is_failure());
        assert!(FailureClass::Throttled.is_failure());
    }
}
