//! The bulkhead's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use reqwest::Response;

use super::state::Permit;
use crate::error::{Error, ErrorKind};

/// A call waiting in the queue: it resolves to the inner service's future, called once a permit
/// was granted, with the permit; or to the rejection. Boxed because waiting is the slow path
/// (the call has to wait anyway) and the semaphore's acquire future cannot be named; the fast
/// path, a permit free at once, allocates nothing.
pub(crate) type Queued<F> = Pin<Box<dyn Future<Output = Result<(F, Permit), Error>> + Send>>;

pin_project! {
    /// The response future of [`BulkheadService`](super::BulkheadService).
    ///
    /// It holds the call's permit from the moment it is granted until the stage below answers
    /// (or fails), and gives it back when it completes or is dropped: a caller that gives up,
    /// queued or in flight, frees its place.
    #[must_use = "futures do nothing unless polled"]
    pub struct BulkheadFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Queued { wait: Queued<F> },
        Running {
            #[pin]
            fut: F,
            permit: Option<Permit>,
        },
        Rejected { err: Option<Error> },
    }
}

impl<F> BulkheadFuture<F> {
    pub(crate) fn running(fut: F, permit: Permit) -> Self {
        BulkheadFuture {
            state: State::Running {
                fut,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn queued(wait: Queued<F>) -> Self {
        BulkheadFuture {
            state: State::Queued { wait },
        }
    }

    pub(crate) fn rejected(err: Error) -> Self {
        BulkheadFuture {
            state: State::Rejected { err: Some(err) },
        }
    }
}

impl<F> fmt::Debug for BulkheadFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Queued { .. } => "queued",
            State::Running { .. } => "running",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("BulkheadFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, E> Future for BulkheadFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Running { fut, permit } => {
                    let out = ready!(fut.poll(cx));
                    // The call is over: its place is free before the caller sees the outcome.
                    drop(permit.take());
                    return Poll::Ready(out.map_err(Into::into));
                }
                StateProj::Queued { wait } => {
                    let (fut, permit) = ready!(wait.as_mut().poll(cx))?;
                    state.set(State::Running {
                        fut,
                        permit: Some(permit),
                    });
                }
                StateProj::Rejected { err } => {
                    return Poll::Ready(Err(err.take().unwrap_or_else(|| {
                        Error::from_source(ErrorKind::Request, "polled after completion")
                    })));
                }
            }
        }
    }
}
