//! [`ChaosFuture`]: the response future of [`ChaosService`](super::ChaosService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use reqwest::{Request, Response};
use tokio::time::Sleep;
use tower_service::Service;

use super::body;
use super::Injected;
use crate::error::{Error, ErrorKind};

/// What is done to a response once the transport gave it: marked, and its body cut after so
/// many bytes if a number is given.
type Mark = (Injected, Option<usize>);

/// A call delayed by a `Latency` fault: the service made ready for it, the request, its mark.
struct Delayed<S> {
    svc: S,
    req: Request,
    injected: Injected,
}

pin_project! {
    /// The response future of [`ChaosService`](super::ChaosService).
    #[must_use = "futures do nothing unless polled"]
    pub struct ChaosFuture<F, S> {
        #[pin]
        state: State<F, S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S> {
        /// The transport's call; the response is marked (and its body cut) if a fault says so.
        Forward { #[pin] fut: F, mark: Option<Box<Mark>> },
        /// A `Latency` fault: the sleep, then the call.
        Delay { sleep: Pin<Box<Sleep>>, then: Option<Box<Delayed<S>>> },
        /// A status or a reset: the answer, until it is taken.
        Ready { result: Option<Result<Response, Error>> },
        /// A `Hang`: never ready, holding nothing.
        Hang,
    }
}

impl<F, S> ChaosFuture<F, S> {
    pub(crate) fn forward(fut: F, mark: Option<Mark>) -> Self {
        ChaosFuture {
            state: State::Forward {
                fut,
                mark: mark.map(Box::new),
            },
        }
    }

    pub(crate) fn ready(result: Result<Response, Error>) -> Self {
        ChaosFuture {
            state: State::Ready {
                result: Some(result),
            },
        }
    }

    pub(crate) fn hang() -> Self {
        ChaosFuture { state: State::Hang }
    }

    pub(crate) fn delay(delay: Duration, svc: S, req: Request, injected: Injected) -> Self {
        ChaosFuture {
            state: State::Delay {
                sleep: Box::pin(tokio::time::sleep(delay)),
                then: Some(Box::new(Delayed { svc, req, injected })),
            },
        }
    }
}

impl<F, S> fmt::Debug for ChaosFuture<F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state {
            State::Forward { .. } => "ChaosFuture::Forward",
            State::Delay { .. } => "ChaosFuture::Delay",
            State::Ready { .. } => "ChaosFuture::Ready",
            State::Hang => "ChaosFuture::Hang",
        })
    }
}

impl<F, S, E> Future for ChaosFuture<F, S>
where
    F: Future<Output = Result<Response, E>>,
    S: Service<Request, Response = Response, Error = E, Future = F>,
    E: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Forward { fut, mark } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    return Poll::Ready(match mark.take() {
                        Some(mark) => result.map(|resp| apply(resp, *mark)),
                        None => result,
                    });
                }
                StateProj::Delay { sleep, then } => {
                    ready!(sleep.as_mut().poll(cx));
                    let Some(delayed) = then.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let Delayed {
                        mut svc,
                        req,
                        injected,
                    } = *delayed;
                    let fut = svc.call(req);
                    this.state.set(State::Forward {
                        fut,
                        mark: Some(Box::new((injected, None))),
                    });
                }
                StateProj::Ready { result } => {
                    return Poll::Ready(
                        result
                            .take()
                            .unwrap_or_else(|| Err(polled_after_completion())),
                    );
                }
                StateProj::Hang => return Poll::Pending,
            }
        }
    }
}

fn polled_after_completion() -> Error {
    Error::from_source(ErrorKind::Request, "polled after completion")
}

/// Marks a response a fault was injected into, and cuts its body if the fault says so.
fn apply(mut resp: Response, (injected, cut): Mark) -> Response {
    match cut {
        None => {
            resp.extensions_mut().insert(injected);
            resp
        }
        Some(after) => body::cut(resp, after, injected),
    }
}
