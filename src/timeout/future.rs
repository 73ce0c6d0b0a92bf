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

use crate::context::{self, RequestContext};
use crate::error::{Error, TimeoutKind};
use crate::event::{Event, Hook};

pin_project! {
    /// The response future of [`AttemptTimeout`](super::AttemptTimeout).
    #[must_use = "futures do nothing unless polled"]
    pub struct AttemptTimeoutFuture<F> {
        #[pin]
        inner: F,
        // The timer is made when the attempt first waits: an answer that is there at once
        // (an in-memory transport, a fallback) costs no timer, and making the future needs no
        // runtime.
        #[pin]
        arm: Arm,
        at: Instant,
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
            arm: Arm::Unarmed,
            at,
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
        if this.arm.poll_at(*this.at, cx).is_pending() {
            // This timer wakes the task by `at` at the latest: the total timeout need not arm
            // its own meanwhile.
            context::promise_wake(*this.at);
            return Poll::Pending;
        }
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
        inner: TaskLocalFuture<RequestContext, Deadline<F>>,
        deadline: Option<Instant>,
        after: Duration,
        hook: Hook,
    }
}

impl<F> TotalTimeoutFuture<F> {
    pub(crate) fn new(
        inner: TaskLocalFuture<RequestContext, Deadline<F>>,
        deadline: Option<Instant>,
        after: Duration,
        hook: Hook,
    ) -> Self {
        TotalTimeoutFuture {
            inner,
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
        let this = self.project();
        let r = ready!(this.inner.poll(cx));
        let Some(deadline) = *this.deadline else {
            return Poll::Ready(r);
        };
        Poll::Ready(match r {
            Ok(resp) => Ok(resp),
            // A timeout that fired at the deadline (this stage's own, the attempt timeout capped
            // by it, the transport's, or the retry stage's check) is the total timeout. It keeps
            // its source, URL and attempt count.
            Err(mut e) if e.is_timeout() && Instant::now() >= deadline => {
                e.set_timeout_kind(TimeoutKind::Total);
                report(this.after, this.hook, e.attempts());
                Err(e)
            }
            Err(e) => Err(e),
        })
    }
}

pin_project! {
    /// A timer made when first needed: a `Sleep` costs a lookup of the runtime's handle to make,
    /// and a registration with the timer wheel (under its lock) when first polled.
    #[project = ArmProj]
    enum Arm {
        Unarmed,
        Armed {
            #[pin]
            sleep: Sleep,
        },
    }
}

impl Arm {
    fn is_armed(&self) -> bool {
        matches!(self, Arm::Armed { .. })
    }

    /// Polls the timer for `at`, made now if it was not yet (the first `at` given stays).
    fn poll_at(mut self: Pin<&mut Self>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_armed() {
            self.set(Arm::Armed {
                sleep: sleep_until(at),
            });
        }
        match self.project() {
            ArmProj::Armed { sleep } => sleep.poll(cx),
            // Armed just above.
            ArmProj::Unarmed => Poll::Pending,
        }
    }
}

pin_project! {
    /// The total timeout's own watch over the deadline, polled inside the request's context
    /// (so that it reads what the stages below promise).
    ///
    /// Its timer is armed only when it must be: when the stages below go pending without a
    /// promise to wake the task before the deadline ([`context::promise_wake`]). While an attempt
    /// is in flight, the attempt timeout's timer (capped by the deadline) is such a promise,
    /// and so are a backoff sleep and a wait for a rate-limit token: so a request that succeeds
    /// registers one timer with tokio (its attempt's), not two. The timer wheel takes a lock
    /// for every registration and every cancellation, which all the runtime's workers share.
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        #[pin]
        arm: Arm,
        deadline: Option<Instant>,
    }
}

impl<F> Deadline<F> {
    pub(crate) fn new(inner: F, deadline: Option<Instant>) -> Self {
        Deadline {
            inner,
            arm: Arm::Unarmed,
            deadline,
        }
    }
}

impl<F> fmt::Debug for Deadline<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadline")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for Deadline<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(deadline) = *this.deadline else {
            return this.inner.poll(cx).map_err(Into::into);
        };
        // A promise counts for the poll it was made in only.
        let _ = context::take_wake_by();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r.map_err(Into::into));
        }
        if !this.arm.is_armed() && context::take_wake_by().is_some_and(|by| by <= deadline) {
            // A stage below will be woken before the deadline, and this poll runs again.
            return Poll::Pending;
        }
        ready!(this.arm.poll_at(deadline, cx));
        Poll::Ready(Err(
            Error::timeout(TimeoutKind::Total).with_attempts(context::attempts())
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
