//! The rate-limit stage's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use reqwest::{Request, Response};
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

use super::key::HostKey;
use super::{RemoteCheck, Shared, Try};
use crate::error::Error;
use crate::ext::LeftLimiterAt;

pin_project! {
    /// The response future of [`RateLimitService`](super::RateLimitService): waits for a token
    /// where it must, then calls the inner service and watches its response for server
    /// pushback.
    #[must_use = "futures do nothing unless polled"]
    pub struct RateLimitFuture<S>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<S>,
        shared: Arc<Shared>,
        key: HostKey,
    }
}

/// What a call waiting for a token holds: a sleep until one may be free, or (fleet mode) a
/// question to Redis; the inner service driven to readiness, and the request.
pub(crate) struct Wait<S> {
    /// Made when first needed (a `Sleep` needs the runtime, which a call made outside one, to
    /// run in one later, does not have yet).
    sleep: Option<Pin<Box<Sleep>>>,
    until: Instant,
    remote: Option<RemoteCheck>,
    inner: Option<S>,
    req: Option<Request>,
    // When the call came, from which `max_wait` counts.
    arrived: Instant,
    deadline: Option<Instant>,
    /// Whether it was denied a token at least once (it is reported as held when it takes one).
    held: bool,
    /// Whether its host's pause held it at any of its waits (the key it is reported under).
    paused: bool,
}

impl<S> Wait<S> {
    /// A call that sleeps until `until` before it tries for a token again.
    pub(crate) fn sleeping(
        inner: S,
        req: Request,
        until: Instant,
        arrived: Instant,
        deadline: Option<Instant>,
        paused: bool,
    ) -> Self {
        Wait {
            sleep: None,
            until,
            remote: None,
            inner: Some(inner),
            req: Some(req),
            arrived,
            deadline,
            held: true,
            paused,
        }
    }

    /// A call asking Redis for its token (fleet mode), which answers by `until`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn asking(
        inner: S,
        req: Request,
        check: RemoteCheck,
        until: Instant,
        deadline: Option<Instant>,
    ) -> Self {
        Wait {
            sleep: None,
            until,
            remote: Some(check),
            inner: Some(inner),
            req: Some(req),
            arrived: Instant::now(),
            deadline,
            held: false,
            paused: false,
        }
    }

    /// Polls the sleep until `self.until`.
    fn poll_sleep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let until = self.until;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(sleep_until(until)));
        if sleep.deadline() != until {
            sleep.as_mut().reset(until);
        }
        sleep.as_mut().poll(cx)
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S>
    where
        S: Service<Request>,
    {
        // No token yet: sleeping until one may be free (or the key's pause is over). Boxed:
        // the rare state, and by far the largest (a timer, the service and the request), which
        // would otherwise make the future of every call, and of every stage above, that large.
        Waiting {
            wait: Box<Wait<S>>,
        },
        // A token was taken and the inner service called; `left` is when, if the call had to
        // wait for it.
        Calling {
            #[pin]
            fut: S::Future,
            left: Option<Instant>,
        },
        // Rejected without a token (`Some`), or finished (`None`).
        Done {
            err: Option<Error>,
        },
    }
}

impl<S: Service<Request>> RateLimitFuture<S> {
    /// A call that took its token at once and was sent.
    pub(crate) fn calling(fut: S::Future, shared: Arc<Shared>, key: HostKey) -> Self {
        RateLimitFuture {
            state: State::Calling { fut, left: None },
            shared,
            key,
        }
    }

    /// A call that waits (for a token, a pause's end, or Redis's answer).
    pub(crate) fn waiting(wait: Wait<S>, shared: Arc<Shared>, key: HostKey) -> Self {
        RateLimitFuture {
            state: State::Waiting {
                wait: Box::new(wait),
            },
            shared,
            key,
        }
    }

    /// A call refused without a token.
    pub(crate) fn rejected(err: Error, shared: Arc<Shared>, key: HostKey) -> Self {
        RateLimitFuture {
            state: State::Done { err: Some(err) },
            shared,
            key,
        }
    }
}

impl<S: Service<Request>> fmt::Debug for RateLimitFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Calling { .. } => "calling",
            State::Done { .. } => "done",
        };
        f.debug_struct("RateLimitFuture")
            .field("key", &self.key)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S> Future for RateLimitFuture<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut, left } => {
                    let mut result = ready!(fut.poll(cx)).map_err(Into::into);
                    match &mut result {
                        Ok(resp) => {
                            this.shared.observe(this.key, resp);
                            if let Some(at) = *left {
                                resp.extensions_mut().insert(LeftLimiterAt(at));
                            }
                        }
                        Err(e) => {
                            if let Some(at) = *left {
                                e.set_left_limiter(at);
                            }
                        }
                    }
                    this.state.set(State::Done { err: None });
                    return Poll::Ready(result);
                }
                StateProj::Waiting { wait } => {
                    let tried = match wait.remote.as_mut() {
                        Some(check) => match check.as_mut().poll(cx) {
                            Poll::Pending => {
                                // Redis answers, or its timeout fires, by `until`, which is
                                // no later than the deadline.
                                crate::context::promise_wake(wait.until);
                                return Poll::Pending;
                            }
                            Poll::Ready(verdict) => {
                                wait.remote = None;
                                this.shared.after_remote(this.key, verdict)
                            }
                        },
                        None => {
                            if wait.poll_sleep(cx).is_pending() {
                                // Its end comes before the deadline (or the call would have
                                // been refused): the total timeout need not arm a timer
                                // meanwhile.
                                crate::context::promise_wake(wait.until);
                                return Poll::Pending;
                            }
                            this.shared.try_take(this.key)
                        }
                    };
                    match tried {
                        Try::Taken => match (wait.inner.take(), wait.req.take()) {
                            (Some(mut svc), Some(req)) => {
                                let now = Instant::now();
                                // A call that only asked Redis was not held: not reported,
                                // but it too is timed below from when it left.
                                if wait.held {
                                    let waited = now.saturating_duration_since(wait.arrived);
                                    this.shared.held(this.key, wait.paused, waited);
                                }
                                let fut = svc.call(req);
                                let left = Some(now);
                                this.state.set(State::Calling { fut, left });
                            }
                            // Unreachable: both are taken only here, when leaving this state.
                            _ => this.state.set(State::Done { err: None }),
                        },
                        Try::Remote(check, until) => {
                            wait.remote = Some(check);
                            wait.until = until;
                        }
                        Try::Denied(denied) => {
                            wait.held = true;
                            wait.paused |= denied.paused;
                            let now = Instant::now();
                            match this.shared.decide(
                                denied,
                                this.key,
                                wait.arrived,
                                now,
                                wait.deadline,
                            ) {
                                Ok(until) => wait.until = until,
                                Err(mut e) => {
                                    if let Some(req) = wait.req.as_ref() {
                                        e.set_url_if_missing(req.url());
                                    }
                                    this.state.set(State::Done { err: None });
                                    return Poll::Ready(Err(e));
                                }
                            }
                        }
                    }
                }
                StateProj::Done { err } => match err.take() {
                    Some(e) => return Poll::Ready(Err(e)),
                    None => panic!("RateLimitFuture polled after completion"),
                },
            }
        }
    }
}
