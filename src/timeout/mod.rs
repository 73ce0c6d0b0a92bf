//! Timeouts: one per attempt, one for the whole request.
//!
//! - [`TotalTimeout`] bounds everything below it — every attempt and every backoff sleep of the
//!   retry stage — by one deadline, until the response's head arrives. It shares the deadline
//!   with the stages below, so the retry stage never starts an attempt after it. A request that
//!   carries a timeout of its own (reqwest's `Request::timeout`, set with
//!   `RequestBuilder::timeout`) uses it instead of the layer's; since reqwest applies that
//!   timeout to reading the body as well, each retry's copy carries what is left of it, and
//!   the body of the response cannot outlive the deadline either. The stage never sets a
//!   transport timeout on a request that has none: reqwest would let it replace the client's.
//! - [`AttemptTimeout`] bounds one attempt, from sending the request to receiving the response's
//!   head. When the total deadline comes first, it fires then and reports the total timeout.
//!
//! Both fail with an [`Error`] for which [`is_timeout`](Error::is_timeout) is true and
//! [`timeout_kind`](Error::timeout_kind) tells which fired; [`attempts`](Error::attempts) says
//! how many attempts had started.

mod future;

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::{Request, Response};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use self::future::Deadline;
pub use self::future::{AttemptTimeoutFuture, TotalTimeoutFuture};
use crate::context::{self, RequestContext, CONTEXT};
use crate::error::{ConfigError, Error, TimeoutKind};
use crate::event::{Event, Hook};

fn check(field: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(field, "must be above zero"))
    } else {
        Ok(d)
    }
}

/// A far-off instant for durations too large to add to `now`.
fn far_future(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

/// A [`Layer`] that bounds each attempt. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct AttemptTimeoutLayer {
    timeout: Duration,
    hook: Hook,
}

impl AttemptTimeoutLayer {
    /// A layer whose attempts time out after `timeout`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `attempt_timeout` when `timeout` is zero.
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        Ok(AttemptTimeoutLayer {
            timeout: check("attempt_timeout", timeout)?,
            hook: Hook::default(),
        })
    }

    pub(crate) fn with_hook(mut self, hook: Hook) -> Self {
        self.hook = hook;
        self
    }

    /// Calls `hook` with [`Event::Timeout`] whenever an attempt times out.
    pub fn on_event<F>(self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.with_hook(Hook::new(hook))
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;

    fn layer(&self, inner: S) -> AttemptTimeout<S> {
        AttemptTimeout {
            inner,
            timeout: self.timeout,
            hook: self.hook.clone(),
        }
    }
}

/// Bounds each attempt. Made by [`AttemptTimeoutLayer`].
#[derive(Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
    hook: Hook,
}

crate::inner_accessors!(AttemptTimeout);

impl<S: fmt::Debug> fmt::Debug for AttemptTimeout<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptTimeout")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<S> Service<Request> for AttemptTimeout<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = AttemptTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let now = Instant::now();
        let mut at = far_future(now, self.timeout);
        // A deadline that comes first caps the attempt, and it is the total timeout that fires.
        let mut kind = TimeoutKind::Attempt;
        if let Some(deadline) = context::deadline() {
            if deadline <= at {
                at = deadline;
                kind = TimeoutKind::Total;
            }
        }
        AttemptTimeoutFuture::new(
            self.inner.call(req),
            at,
            kind,
            self.timeout,
            self.hook.clone(),
        )
    }
}

/// A [`Layer`] that bounds the whole request. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TotalTimeoutLayer {
    /// `None`: only requests that carry a timeout of their own get a deadline.
    timeout: Option<Duration>,
    hook: Hook,
}

impl TotalTimeoutLayer {
    /// A layer whose requests time out after `timeout` in all.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `total_timeout` when `timeout` is zero.
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        Ok(TotalTimeoutLayer {
            timeout: Some(check("total_timeout", timeout)?),
            hook: Hook::default(),
        })
    }

    /// A layer that gives a deadline only to requests that carry a timeout of their own
    /// (`RequestBuilder::timeout`): what the client uses with `no_total_timeout`.
    pub(crate) fn per_request_only() -> Self {
        TotalTimeoutLayer {
            timeout: None,
            hook: Hook::default(),
        }
    }

    pub(crate) fn with_hook(mut self, hook: Hook) -> Self {
        self.hook = hook;
        self
    }

    /// Calls `hook` with [`Event::Timeout`] whenever a request times out in all.
    pub fn on_event<F>(self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.with_hook(Hook::new(hook))
    }
}

impl<S> Layer<S> for TotalTimeoutLayer {
    type Service = TotalTimeout<S>;

    fn layer(&self, inner: S) -> TotalTimeout<S> {
        TotalTimeout {
            inner,
            timeout: self.timeout,
            hook: self.hook.clone(),
        }
    }
}

/// Bounds the whole request by one deadline. Made by [`TotalTimeoutLayer`].
#[derive(Clone)]
pub struct TotalTimeout<S> {
    inner: S,
    timeout: Option<Duration>,
    hook: Hook,
}

crate::inner_accessors!(TotalTimeout);

impl<S: fmt::Debug> fmt::Debug for TotalTimeout<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotalTimeout")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<S> Service<Request> for TotalTimeout<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = TotalTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // A request's own timeout replaces the layer's, as in reqwest. Zero means the deadline
        // has passed already: no attempt starts.
        let timeout = req.timeout().copied().or(self.timeout);
        let now = Instant::now();
        // A request's own timeout is the deadline's: the retry stage narrows each copy's to
        // what is left of it.
        let deadline = timeout.map(|t| far_future(now, t));
        let inner = &mut self.inner;
        let fut = CONTEXT.sync_scope(RequestContext::new(deadline), || inner.call(req));
        TotalTimeoutFuture::new(
            CONTEXT.scope(RequestContext::new(deadline), Deadline::new(fut, deadline)),
            deadline,
            timeout.unwrap_or_default(),
            self.hook.clone(),
        )
    }
}
