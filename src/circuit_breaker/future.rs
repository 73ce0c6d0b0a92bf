//! The circuit breaker's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use reqwest::Response;

use super::breaker::Permit;
use super::Recorder;
use crate::classify::{FailureClass, Outcome};
use crate::context;
use crate::error::{Error, TimeoutKind};
use crate::ext::LeftLimiterAt;

pin_project! {
    /// The response future of [`CircuitBreakerService`](super::CircuitBreakerService).
    ///
    /// It holds the call's permit: dropping it before it completes counts as a cancelled
    /// call, which is not a failure, and gives a probe's permit back so that a half-open
    /// breaker can admit another.
    #[must_use = "futures do nothing unless polled"]
    pub struct CircuitBreakerFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            fut: F,
            permit: Option<Permit>,
            rec: Recorder,
        },
        Rejected {
            err: Option<Error>,
        },
    }
}

impl<F> CircuitBreakerFuture<F> {
    pub(crate) fn called(fut: F, permit: Permit, rec: Recorder) -> Self {
        CircuitBreakerFuture {
            state: State::Called {
                fut,
                permit: Some(permit),
                rec,
            },
        }
    }

    pub(crate) fn rejected(err: Error) -> Self {
        CircuitBreakerFuture {
            state: State::Rejected { err: Some(err) },
        }
    }
}

impl<F> fmt::Debug for CircuitBreakerFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CircuitBreakerFuture");
        match &self.state {
            State::Called { permit, .. } => d.field("permit", permit),
            State::Rejected { err } => d.field("rejected", err),
        };
        d.finish_non_exhaustive()
    }
}

impl<F, E> Future for CircuitBreakerFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, permit, rec } => {
                let result = ready!(fut.poll(cx)).map_err(Into::into);
                if let Some(mut permit) = permit.take() {
                    // A call that waited below for the rate limiter is timed from when it left
                    // for the host.
                    let left = match &result {
                        Ok(r) => r.extensions().get::<LeftLimiterAt>().map(|l| l.0),
                        Err(e) => e.left_limiter(),
                    }
                    .map(|at| rec.since_epoch(at));
                    let now = rec.now();
                    let class = if callers_deadline(&result) {
                        // Not the host's failure: the caller ran out of time, as if it had
                        // dropped the call. Unless the call had run past `slow_call` by then:
                        // a host that slow is failing, whoever's deadline came first.
                        if permit.ran_slow(now, left) {
                            FailureClass::Timeout
                        } else {
                            FailureClass::Cancelled
                        }
                    } else {
                        rec.classifier.classify(Outcome::of(&result))
                    };
                    if let Some(t) = permit.record_left(class, now, left) {
                        rec.report(permit.breaker().key(), t);
                    }
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { err } => Poll::Ready(Err(err
                .take()
                .expect("CircuitBreakerFuture polled after completion"))),
        }
    }
}

/// Whether a call ended because the caller's deadline came (its total or per-request timeout),
/// not because the host failed: a timeout labelled as the total one (the attempt timeout capped
/// by the deadline), or any timeout, the transport's included, that fired at or after the
/// deadline (reqwest's per-request timeout, which the stages narrow to the deadline). The
/// attempt timeout and the transport's own timeouts that fire before the deadline are the
/// host's failures.
fn callers_deadline(result: &Result<Response, Error>) -> bool {
    match result {
        Err(e) if e.is_timeout() => {
            e.timeout_kind() == Some(TimeoutKind::Total)
                || context::deadline().is_some_and(|d| tokio::time::Instant::now() >= d)
        }
        _ => false,
    }
}
