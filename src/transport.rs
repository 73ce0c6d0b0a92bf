//! The bottom of the pipeline: reqwest, or a transport of the user's.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use reqwest::{Request, Response};
use tokio::task::futures::TaskLocalFuture;
use tower::util::BoxCloneSyncService;
use tower_service::Service;

use crate::context::{RequestContext, CONTEXT};
use crate::error::Error;

/// What the pipeline sends attempts through.
#[derive(Clone)]
pub(crate) enum Transport {
    Reqwest(reqwest::Client),
    Custom(BoxCloneSyncService<Request, Response, Error>),
}

/// Names the transport only: a `reqwest::Client`'s own `Debug` shows its default headers'
/// values (credentials among them, when a client is built with an `Authorization` default).
impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Reqwest(_) => f.write_str("Reqwest"),
            Transport::Custom(_) => f.write_str("Custom"),
        }
    }
}

pin_project! {
    #[project = TransportFutureProj]
    pub(crate) enum TransportFuture {
        Reqwest { #[pin] fut: <reqwest::Client as Service<Request>>::Future },
        Custom {
            #[pin]
            fut: TaskLocalFuture<RequestContext, Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>>,
        },
    }
}

impl Future for TransportFuture {
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TransportFutureProj::Reqwest { fut } => fut.poll(cx).map_err(Error::from),
            TransportFutureProj::Custom { fut } => fut.poll(cx),
        }
    }
}

impl Service<Request> for Transport {
    type Response = Response;
    type Error = Error;
    type Future = TransportFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self {
            Transport::Reqwest(_) => Poll::Ready(Ok(())),
            Transport::Custom(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request) -> TransportFuture {
        match self {
            Transport::Reqwest(c) => TransportFuture::Reqwest { fut: c.call(req) },
            // A custom transport runs detached from this request's context (see `context`).
            Transport::Custom(s) => {
                let fut = CONTEXT.sync_scope(RequestContext::detached(), || s.call(req));
                TransportFuture::Custom {
                    fut: CONTEXT.scope(RequestContext::detached(), fut),
                }
            }
        }
    }
}

/// A stage whose future is boxed: for the place of a stage switched off whose future would
/// otherwise be much larger than the stage's own (see `client::RetryStage`).
#[derive(Clone, Debug)]
pub(crate) struct Boxed<S>(pub(crate) S);

impl<S> Service<Request> for Boxed<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<Error>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_default_header_value() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer SECRET"),
        );
        let c = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        assert!(
            format!("{c:?}").contains("SECRET"),
            "reqwest's own Debug shows it"
        );
        assert_eq!(format!("{:?}", Transport::Reqwest(c)), "Reqwest");
    }
}
