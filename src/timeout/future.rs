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
        // Polled only when there is a deadline.
        #[pin]
        sleep: Sleep,
        deadline: Option<Instant>,
        after: Duration,
        hook: Hook,
    }
}

impl<F> TotalTimeoutFuture<F> {
    pub(crate) fn new(
        inner: TaskLocalFuture<RequestContext, F>,
        deadline: Option<Instant>,
        after: Duration,
        hook: Hook,
    ) -> Self {
        // A `Sleep` registers with the timer on its first poll only, so an unarmed one is free.
        let at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        TotalTimeoutFuture {
            inner,
            sleep: sleep_until(at),
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
        let Some(deadline) = *this.deadline else {
            return this.inner.poll(cx).map_err(Into::into);
        };
        if let Poll::Ready(r) = this.inner.as_mut().poll(cx) {
            return Poll::Ready(match r.map_err(Into::into) {
                Ok(resp) => Ok(resp),
                // A timeout below that fired at the deadline (the attempt timeout capped by it,
                // the transport's own, or the retry stage's check) is the total timeout. It
                // keeps its source, URL and attempt count.
                Err(mut e) if e.is_timeout() && Instant::now() >= deadline => {
                    e.set_timeout_kind(TimeoutKind::Total);
                    report(this.after, this.hook, e.attempts());
                    Err(e)
                }
                Err(e) => Err(e),
            });
        }
        ready!(this.sleep.poll(cx));
        let attempts = this.inner.take_value().map_or(0, |c| c.attempts.get());
        report(this.after, this.hook, attempts);
        Poll::Ready(Err(
            Error::timeout(TimeoutKind::Total).with_attempts(attempts)
        ))
    }
}

fn report(after: &Duration, hook: &Hook, attempts: u32) {
    tracing::debug!(
        timeout_ms = after.as_millis() as u64,
        attempts,
        "total timeout elapsed"
    );
    hook.emit(|| Event::Timeout {
        kind: TimeoutKind::Total,
        after: *after,
    });
}
