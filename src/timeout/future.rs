//! The timeout stages' response futures.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use reqwest::Response;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::context::RequestContext;
use crate::error::{Error, TimeoutKind};
use crate::event::{Event, Hook};

pin_project! {
    /// The response future of [`AttemptTimeout`](super::AttemptTimeout).
    #[must_use = "futures do nothing unless polled"]
    pub struct AttemptTimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        kind: TimeoutKind,
        after: Duration,
        hook: Hook,
    }
}

impl<F> AttemptTimeoutFuture<F> {
    pub(crate) fn new(
        inner: F,
        at: Instant,
        kind: TimeoutKind,
        after: Duration,
        hook: Hook,
    ) -> Self {
        AttemptTimeoutFuture {
            inner,
            sleep: sleep_until(at),
            kind,
            after,
            hook,
        }
    }
}

impl<F> fmt::Debug for AttemptTimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptTimeoutFuture")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for AttemptTimeoutFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r.map_err(Into::into));
        }
        ready!(this.sleep.poll(cx));
        if *this.kind == TimeoutKind::Attempt {
            tracing::debug!(
                timeout_ms = this.after.as_millis() as u64,
                "attempt timed out"
            );
            this.hook.emit(|| Event::Timeout {
                kind: TimeoutKind::Attempt,
                after: *this.after,
            });
        }
        Poll::Ready(Err(Error::timeout(*this.kind)))
    }
}

pin_project! {
    /// The response future of [`TotalTimeout`](super::TotalTimeout).
    #[must_use = "futures do nothing unless polled"]
    pub struct TotalTimeoutFuture<F> {
        #[pin]
        inner: TaskLocalFuture<RequestContext, F>,
        #[pin]
        sleep: Sleep,
        deadline: Instant,
        after: Duration,
        hook: Hook,
    }
}

impl<F> TotalTimeoutFuture<F> {
    pub(crate) fn new(
        inner: TaskLocalFuture<RequestContext, F>,
        deadline: Instant,
        after: Duration,
        hook: Hook,
    ) -> Self {
        TotalTimeoutFuture {
            inner,
            sleep: sleep_until(deadline),
            deadline,
            after,
            hook,
        }
    }
}

impl<F> fmt::Debug for TotalTimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotalTimeoutFuture")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for TotalTimeoutFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(r) = this.inner.as_mut().poll(cx) {
            return Poll::Ready(match r.map_err(Into::into) {
                Ok(resp) => Ok(resp),
                // A timeout below that fired at the deadline (the attempt timeout capped by it,
                // or the transport's own timeout, which was set to what was left) is the total
                // timeout.
                Err(e) if e.is_timeout() && Instant::now() >= *this.deadline => {
                    let attempts = e.attempts();
                    Err(total_timeout(this.after, this.hook, attempts))
                }
                Err(e) => Err(e),
            });
        }
        ready!(this.sleep.poll(cx));
        let attempts = this
            .inner
            .take_value()
            .map_or(1, |c| c.attempts.get().max(1));
        Poll::Ready(Err(total_timeout(this.after, this.hook, attempts)))
    }
}

fn total_timeout(after: &Duration, hook: &Hook, attempts: u32) -> Error {
    tracing::debug!(
        timeout_ms = after.as_millis() as u64,
        attempts,
        "total timeout elapsed"
    );
    hook.emit(|| Event::Timeout {
        kind: TimeoutKind::Total,
        after: *after,
    });
    Error::timeout(TimeoutKind::Total).with_attempts(attempts)
}
