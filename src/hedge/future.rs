//! The hedging stage's response future: a request's one attempt, or a race of its copies.
//!
//! The race is polled on the caller's task (nothing is spawned): each poll polls every racer
//! still running, then sends the hedges that are due. A racer that ends is dropped at once,
//! and all the others with it when one wins.
//!
//! The total timeout arms no timer of its own while a stage below promises to wake the task
//! before the deadline (`context::promise_wake`). A racer's promise holds only while its timer
//! is armed, so a racer dropped in a poll must not leave its promise behind: the race takes
//! each racer's promise as it polls it, and makes at the end of the poll only those of the
//! racers still running (and its own hedge timer's).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use reqwest::{Request, Response};
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

use super::Shared;
use crate::classify::{FailureClass, Outcome};
use crate::context;
use crate::error::Error;
use crate::event::Event;
use crate::ext::{Attempts, FinalAttemptSent};
use crate::host::with_host_key;
use crate::retry::Withdrawal;

type BoxRace = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

pin_project! {
    /// The response future of [`HedgeService`](super::HedgeService): the request's one attempt,
    /// or a race of its copies (boxed, so that the future of a request that is not hedged is
    /// no larger than its attempt's).
    #[must_use = "futures do nothing unless polled"]
    pub struct HedgeFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Single {
            #[pin]
            fut: F,
        },
        Race {
            race: BoxRace,
        },
    }
}

impl<F> HedgeFuture<F> {
    /// A request that is not hedged: its one attempt.
    pub(crate) fn single(fut: F) -> Self {
        HedgeFuture {
            state: State::Single { fut },
        }
    }

    /// A race.
    pub(crate) fn race<S>(race: Race<S, F>) -> Self
    where
        Race<S, F>: Future<Output = Result<Response, Error>> + Send + 'static,
    {
        HedgeFuture {
            state: State::Race {
                race: Box::pin(race),
            },
        }
    }
}

impl<F> fmt::Debug for HedgeFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let racing = matches!(self.state, State::Race { .. });
        f.debug_struct("HedgeFuture")
            .field("racing", &racing)
            .finish()
    }
}

impl<F, E> Future for HedgeFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Single { fut } => fut.poll(cx).map_err(Into::into),
            StateProj::Race { race } => race.as_mut().poll(cx),
        }
    }
}

pin_project! {
    /// The copies of one request racing for the first good answer.
    pub(crate) struct Race<S, F> {
        // The first attempt, in place (most races never send a hedge).
        #[pin]
        first: Slot<F>,
        // The timer of the next hedge, made when first needed.
        #[pin]
        timer: Timer,
        // The hedges sent, `None` once ended.
        hedges: Vec<Option<Hedged<F>>>,
        st: RaceState<S>,
    }
}

pin_project! {
    #[project = SlotProj]
    enum Slot<F> {
        Running {
            #[pin]
            fut: F,
        },
        Done,
    }
}

impl<F> Slot<F> {
    fn is_running(&self) -> bool {
        matches!(self, Slot::Running { .. })
    }
}

pin_project! {
    #[project = TimerProj]
    enum Timer {
        Unarmed,
        Armed {
            #[pin]
            sleep: Sleep,
        },
    }
}

impl Timer {
    /// Polls the timer for `at`, made or moved to it first.
    fn poll_at(mut self: Pin<&mut Self>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if let Timer::Unarmed = *self {
            self.set(Timer::Armed {
                sleep: sleep_until(at),
            });
        }
        match self.project() {
            TimerProj::Armed { mut sleep } => {
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
                sleep.poll(cx)
            }
            // Armed just above.
            TimerProj::Unarmed => Poll::Pending,
        }
    }
}

/// A hedge in flight.
struct Hedged<F> {
    fut: Pin<Box<F>>,
    sent_at: Instant,
    /// Its number in the race: 2 for the first hedge.
    number: u32,
    /// The retry it took from the budget, given back if a stage below rejects it unsent.
    withdrawal: Option<Withdrawal>,
}

/// The race's state apart from its futures.
struct RaceState<S> {
    /// A clone of the service, to send the hedges through.
    svc: S,
    /// The request, copied for each hedge (and read for events and the host's estimate).
    kept: Request,
    shared: Arc<Shared>,
    /// When the first attempt was sent.
    started: Instant,
    delay: Duration,
    deadline: Option<Instant>,
    /// When the next hedge is due; `None` once no more may be sent.
    due: Option<Instant>,
    /// Attempts sent, the first included.
    sent: u32,
    /// The latest failure, returned if no racer answers well.
    failed: Option<Result<Response, Error>>,
}

/// What sending a hedge came to.
enum Sending<F> {
    Sent(Hedged<F>),
    /// The service is not ready: it wakes the task when it is.
    Wait,
    /// No more hedges in this race.
    Stop,
}

impl<S, F> Race<S, F> {
    pub(super) fn new(
        first: F,
        svc: S,
        kept: Request,
        shared: Arc<Shared>,
        started: Instant,
        delay: Duration,
        deadline: Option<Instant>,
    ) -> Self {
        Race {
            first: Slot::Running { fut: first },
            timer: Timer::Unarmed,
            hedges: Vec::new(),
            st: RaceState {
                svc,
                kept,
                shared,
                started,
                delay,
                deadline,
                due: started.checked_add(delay),
                sent: 1,
                failed: None,
            },
        }
    }
}

/// The earlier of two promises.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<S, F> Future for Race<S, F>
where
    S: Service<Request, Response = Response, Future = F>,
    S::Error: Into<Error>,
    F: Future<Output = Result<Response, S::Error>>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The promises made before this poll stand; a racer's, only if it is still running
        // when the poll ends.
        let outer = context::take_wake_by();
        let mut wake_by = outer;
        macro_rules! over_if {
            ($ended:expr) => {
                if let Some(result) = $ended {
                    if let Some(at) = outer {
                        context::promise_wake(at);
                    }
                    return Poll::Ready(result);
                }
            };
        }

        if let SlotProj::Running { fut } = this.first.as_mut().project() {
            let polled = fut.poll(cx);
            let promise = context::take_wake_by();
            match polled {
                Poll::Pending => wake_by = earliest(wake_by, promise),
                Poll::Ready(r) => {
                    this.first.set(Slot::Done);
                    let started = this.st.started;
                    over_if!(ended(
                        this.first.as_mut(),
                        this.hedges,
                        this.st,
                        (1, started, None),
                        r.map_err(Into::into),
                    ));
                }
            }
        }
        for i in 0..this.hedges.len() {
            let polled = match &mut this.hedges[i] {
                Some(h) => h.fut.as_mut().poll(cx),
                None => continue,
            };
            let promise = context::take_wake_by();
            match polled {
                Poll::Pending => wake_by = earliest(wake_by, promise),
                Poll::Ready(r) => {
                    let Some(h) = this.hedges[i].take() else {
                        continue;
                    };
                    over_if!(ended(
                        this.first.as_mut(),
                        this.hedges,
                        this.st,
                        (h.number, h.sent_at, h.withdrawal),
                        r.map_err(Into::into),
                    ));
                }
            }
        }

        // The hedges that are due.
        while let Some(due) = this.st.due {
            if Instant::now() < due && this.timer.as_mut().poll_at(due, cx).is_pending() {
                // This timer is armed: it wakes the task by `due`.
                wake_by = earliest(wake_by, Some(due));
                break;
            }
            match this.st.send(cx) {
                Sending::Wait | Sending::Stop => break,
                Sending::Sent(mut h) => {
                    let polled = h.fut.as_mut().poll(cx);
                    let promise = context::take_wake_by();
                    match polled {
                        Poll::Pending => {
                            wake_by = earliest(wake_by, promise);
                            this.hedges.push(Some(h));
                        }
                        Poll::Ready(r) => over_if!(ended(
                            this.first.as_mut(),
                            this.hedges,
                            this.st,
                            (h.number, h.sent_at, h.withdrawal),
                            r.map_err(Into::into),
                        )),
                    }
                }
            }
        }
        if let Some(at) = wake_by {
            context::promise_wake(at);
        }
        Poll::Pending
    }
}

/// A racer ended (the racer is already out of `first` or `hedges`): `Some` with the race's
/// outcome if that ends the race, with the other racers dropped.
fn ended<S, F>(
    mut first: Pin<&mut Slot<F>>,
    hedges: &mut Vec<Option<Hedged<F>>>,
    st: &mut RaceState<S>,
    (number, sent_at, withdrawal): (u32, Instant, Option<Withdrawal>),
    result: Result<Response, Error>,
) -> Option<Result<Response, Error>> {
    let class = st.shared.classifier.classify(Outcome::of(&result));
    if !class.is_failure() {
        if let Some(estimates) = &st.shared.estimates {
            let now = Instant::now();
            with_host_key(st.kept.url(), |key| {
                estimates.record(key, now.saturating_duration_since(sent_at));
                // The racers sent before the winner ran longer than it: the time they ran is a
                // lower bound of their latency, and they are the slow answers the estimate
                // must not lose (see the module docs).
                if first.is_running() {
                    estimates.record(key, now.saturating_duration_since(st.started));
                }
                for h in hedges.iter().flatten().filter(|h| h.sent_at < sent_at) {
                    estimates.record(key, now.saturating_duration_since(h.sent_at));
                }
            });
        }
        // The losers are cancelled now, not when the caller drops this future.
        first.set(Slot::Done);
        hedges.clear();
        return Some(st.won(number, sent_at, result));
    }
    if class == FailureClass::Rejected {
        // Rejected below without being sent: the hedge cost the host nothing.
        if let (Some(w), Some(b)) = (withdrawal, &st.shared.budget) {
            b.refund(w);
        }
    }
    st.failed = Some(result);
    if first.is_running() || hedges.iter().any(Option::is_some) {
        return None;
    }
    // Every racer failed: the retry stage decides on the last failure.
    st.due = None;
    tracing::debug!(hedge.sent = st.sent, class = %class, "every hedged attempt failed");
    st.failed.take().map(|r| st.mark(r))
}

impl<S> RaceState<S> {
    /// The race's answer, from attempt `number`.
    fn won(
        &self,
        number: u32,
        sent_at: Instant,
        result: Result<Response, Error>,
    ) -> Result<Response, Error> {
        if self.sent > 1 {
            tracing::debug!(
                hedge.winner = number,
                hedge.sent = self.sent,
                "hedged request answered"
            );
            self.shared.hook.emit_ref(&Event::HedgeWon {
                method: self.kept.method(),
                url: self.kept.url(),
                attempt: number,
                sent: self.sent,
            });
        }
        let mut result = self.mark(result);
        if number > 1 {
            if let Ok(r) = &mut result {
                // The answer was asked for when the hedge was sent (the fallback cache counts its
                // age from then).
                r.extensions_mut().insert(FinalAttemptSent(sent_at));
            }
        }
        result
    }

    /// Counts the hedges among the call's attempts, on a race that sent any: the retry stage
    /// above counts them too, and a pipeline without one has only this count.
    fn mark(&self, result: Result<Response, Error>) -> Result<Response, Error> {
        if self.sent < 2 {
            return result;
        }
        let attempts = match context::attempts() {
            0 => self.sent,
            n => n,
        };
        match result {
            Ok(mut r) => {
                r.extensions_mut().insert(Attempts(attempts));
                Ok(r)
            }
            Err(mut e) => {
                e.set_attempts(attempts);
                Err(e)
            }
        }
    }

    /// Sends the hedge that is due, if the deadline, the service and the budget let it.
    fn send<F>(&mut self, cx: &mut Context<'_>) -> Sending<F>
    where
        S: Service<Request, Response = Response, Future = F>,
    {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            self.due = None;
            return Sending::Stop;
        }
        match self.svc.poll_ready(cx) {
            Poll::Pending => return Sending::Wait,
            // The racers already sent go on; no more hedges.
            Poll::Ready(Err(_)) => {
                self.due = None;
                return Sending::Stop;
            }
            Poll::Ready(Ok(())) => {}
        }
        let withdrawal = match &self.shared.budget {
            None => None,
            Some(b) => match b.try_withdraw() {
                Some(w) => Some(w),
                None => {
                    tracing::debug!(
                        hedge.attempt = self.sent + 1,
                        "the retry budget has no retry left: not hedging"
                    );
                    #[cfg(feature = "metrics")]
                    if let Some(m) = self.shared.hook.metrics() {
                        m.hedge_budget_refused(self.kept.url());
                    }
                    self.due = None;
                    return Sending::Stop;
                }
            },
        };
        // The body was copied once already, so it can be again.
        let Some(mut copy) = self.kept.try_clone() else {
            if let (Some(w), Some(b)) = (withdrawal, &self.shared.budget) {
                b.refund(w);
            }
            self.due = None;
            return Sending::Stop;
        };
        context::bound_transport_timeout(&mut copy, self.deadline);
        self.sent += 1;
        let number = self.sent;
        context::record_hedge();
        let after = now.saturating_duration_since(self.started);
        tracing::debug!(
            hedge.attempt = number,
            hedge.after_ms = after.as_millis() as u64,
            "hedging"
        );
        self.shared.hook.emit_ref(&Event::Hedge {
            method: self.kept.method(),
            url: self.kept.url(),
            attempt: number,
            after,
        });
        let fut = self.svc.call(copy);
        self.due = if number < self.shared.cfg.max_hedged_attempts {
            now.checked_add(self.delay)
        } else {
            None
        };
        Sending::Sent(Hedged {
            fut: Box::pin(fut),
            sent_at: now,
            number,
            withdrawal,
        })
    }
}
