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
use super::Shared;
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

pin_project! {
    /// What a call waiting for a token holds.
    #[project = WaitProj]
    struct Wait<S> {
        #[pin]
        sleep: Sleep,
        // The inner service that was driven to readiness, and the request.
        inner: Option<S>,
        req: Option<Request>,
        // When the call came, from which `max_wait` counts.
        arrived: Instant,
        deadline: Option<Instant>,
        // Whether its host's pause held it at any of its waits (the key it is reported under).
        paused: bool,
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
            wait: Pin<Box<Wait<S>>>,
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

    /// A call that waits until `until` before it tries for a token again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn waiting(
        inner: S,
        req: Request,
        until: Instant,
        shared: Arc<Shared>,
        key: HostKey,
        arrived: Instant,
        deadline: Option<Instant>,
        paused: bool,
    ) -> Self {
        RateLimitFuture {
            state: State::Waiting {
                wait: Box::pin(Wait {
                    sleep: sleep_until(until),
                    inner: Some(inner),
                    req: Some(req),
                    arrived,
                    deadline,
                    paused,
                }),
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
                    let WaitProj {
                        mut sleep,
                        inner,
                        req,
                        arrived,
                        deadline,
                        paused,
                    } = wait.as_mut().project();
                    if sleep.as_mut().poll(cx).is_pending() {
                        // Its end comes before the deadline (or the call would have been
                        // refused): the total timeout need not arm a timer meanwhile.
                        crate::context::promise_wake(sleep.deadline());
                        return Poll::Pending;
                    }
                    match this.shared.limiter.acquire(this.key) {
                        Ok(()) => match (inner.take(), req.take()) {
                            (Some(mut svc), Some(req)) => {
                                let now = Instant::now();
                                let waited = now.saturating_duration_since(*arrived);
                                this.shared.held(this.key, *paused, waited);
                                let fut = svc.call(req);
                                let left = Some(now);
                                this.state.set(State::Calling { fut, left });
                            }
                            // Unreachable: both are taken only here, when leaving this state.
                            _ => this.state.set(State::Done { err: None }),
                        },
                        Err(denied) => {
                            *paused |= denied.paused;
                            let now = Instant::now();
                            match this
                                .shared
                                .decide(denied, this.key, *arrived, now, *deadline)
                            {
                                Ok(until) => sleep.reset(until),
                                Err(mut e) => {
                                    if let Some(req) = req.as_ref() {
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
