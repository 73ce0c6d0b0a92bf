//! The circuit breaker's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use reqwest::Response;
use tokio::time::{sleep_until, Instant, Sleep};
use url::Url;

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
    /// breaker can admit another. A probe with a
    /// [`probe_timeout`](super::CircuitBreaker::probe_timeout) races the call against its
    /// timer: when the timer wins, the call is dropped (cancelled) and the probe fails with
    /// [`TimeoutKind::Probe`].
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
            // A probe's own timer, boxed: a closed breaker's call (nearly every call) carries
            // no timer and only this pointer's worth of room for one.
            probe: Option<Pin<Box<ProbeTimer>>>,
            rec: Recorder,
        },
        Rejected {
            err: Option<Error>,
        },
    }
}

impl<F> CircuitBreakerFuture<F> {
    pub(crate) fn called(
        fut: F,
        permit: Permit,
        probe: Option<Pin<Box<ProbeTimer>>>,
        rec: Recorder,
    ) -> Self {
        CircuitBreakerFuture {
            state: State::Called {
                fut,
                permit: Some(permit),
                probe,
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
        let mut state = self.project().state;
        let cut = match state.as_mut().project() {
            StateProj::Called {
                fut,
                permit,
                probe,
                rec,
            } => match fut.poll(cx) {
                Poll::Ready(result) => {
                    let result = result.map_err(Into::into);
                    if let Some(mut permit) = permit.take() {
                        record(&mut permit, &result, rec);
                    }
                    return Poll::Ready(result);
                }
                Poll::Pending => {
                    let expired = probe
                        .as_mut()
                        .is_some_and(|timer| timer.as_mut().poll_expired(cx).is_ready());
                    match probe {
                        Some(timer) if expired => timed_out(timer, permit, rec),
                        _ => return Poll::Pending,
                    }
                }
            },
            StateProj::Rejected { err } => {
                return Poll::Ready(Err(err
                    .take()
                    .expect("CircuitBreakerFuture polled after completion")))
            }
        };
        // The probe's timer won the race: drop the call below (cancelling it) before answering.
        state.set(State::Rejected { err: None });
        Poll::Ready(Err(cut))
    }
}

/// Records a call's outcome with its permit and reports the transition it makes.
#[inline]
fn record(permit: &mut Permit, result: &Result<Response, Error>, rec: &Recorder) {
    // A call that waited below for the rate limiter is timed from when it left for the host.
    let left = match result {
        Ok(r) => r.extensions().get::<LeftLimiterAt>().map(|l| l.0),
        Err(e) => e.left_limiter(),
    }
    .map(|at| rec.since_epoch(at));
    let now = rec.now();
    let class = if callers_deadline(result) {
        // Not the host's failure: the caller ran out of time, as if it had dropped the call.
        // Unless the call had run past `slow_call` by then: a host that slow is failing,
        // whoever's deadline came first.
        if permit.ran_slow(now, left) {
            FailureClass::Timeout
        } else {
            FailureClass::Cancelled
        }
    } else {
        rec.classifier.classify(Outcome::of(result))
    };
    if let Some(t) = permit.record_left(class, now, left) {
        rec.report(permit.breaker().key(), t);
    }
}

/// The probe's own timeout fired before the call answered: a failure of the host (recorded
/// here, so that the permit is spent and the breaker opens again), unless the caller's deadline
/// has come too, which says nothing of the host (the permit is given back, as for a dropped
/// call). The error is a [`TimeoutKind::Probe`] timeout, with the request's URL.
fn timed_out(timer: &ProbeTimer, permit: &mut Option<Permit>, rec: &Recorder) -> Error {
    let mut err = Error::timeout(TimeoutKind::Probe);
    err.set_url_if_missing(&timer.url);
    if let Some(mut permit) = permit.take() {
        if context::deadline().is_none_or(|d| Instant::now() < d) {
            rec.probe_cut(permit.breaker().key(), timer.after);
            if let Some(t) = permit.record_cut(rec.now()) {
                rec.report(permit.breaker().key(), t);
            }
        }
        // Else dropped unrecorded: the permit goes back.
    }
    err
}

pin_project! {
    /// A half-open probe's own timer. Made by the service for a probe only; its `Sleep` is made
    /// when the call first waits, as the attempt timeout's is.
    pub(crate) struct ProbeTimer {
        #[pin]
        sleep: Option<Sleep>,
        at: Instant,
        after: Duration,
        url: Url,
    }
}

impl ProbeTimer {
    pub(crate) fn new(after: Duration, url: Url) -> Pin<Box<Self>> {
        let now = Instant::now();
        Box::pin(ProbeTimer {
            sleep: None,
            // A timeout too long to represent is one that never fires.
            at: now.checked_add(after).unwrap_or_else(|| far_future(now)),
            after,
            url,
        })
    }

    fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.sleep.is_none() {
            this.sleep.set(Some(sleep_until(*this.at)));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx),
            None => Poll::Pending,
        }
    }
}

/// About thirty years from `now`, as tokio's own far future.
fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(86_400 * 365 * 30)
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
