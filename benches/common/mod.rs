//! What the benches share: the in-memory transport, the runtimes, and the two-task driver.
#![allow(dead_code)] // each bench binary uses part of it

pub mod alloc;
pub mod server;

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use reqwest::{Request, Response};
use tower::Service;

pub const URL: &str = "http://api.example.com/users/1";

/// The in-memory transport: answers `200 OK` with an empty body at once.
pub fn transport() -> impl Service<
    Request,
    Response = Response,
    Error = palisade::Error,
    Future = impl Future<Output = Result<Response, palisade::Error>> + Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|_req: Request| async {
        Ok::<_, palisade::Error>(Response::from(http::Response::new(Vec::<u8>::new())))
    })
}

pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `iters` requests split between 2 tasks on `rt` and returns the wall time.
pub fn two_tasks<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, send: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    rt.block_on(async {
        let per_task = [iters / 2, iters - iters / 2];
        let start = Instant::now();
        let tasks = per_task.map(|n| {
            let send = send.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    black_box(send().await);
                }
            })
        });
        for t in tasks {
            t.await.expect("task");
        }
        start.elapsed()
    })
}

/// `reqwest::Request` is not `Clone`, and tower-resilience's retry clones the request before
/// every attempt: this wrapper clones with `try_clone`. Requests with a streaming body are
/// rejected by [`RetryableRequest::new`], so the `expect` cannot fire.
pub struct RetryableRequest(Request);

impl RetryableRequest {
    pub fn new(req: Request) -> Result<Self, Box<Request>> {
        match req.body() {
            Some(b) if b.as_bytes().is_none() => Err(Box::new(req)),
            _ => Ok(Self(req)),
        }
    }

    pub fn into_inner(self) -> Request {
        self.0
    }
}

impl Clone for RetryableRequest {
    fn clone(&self) -> Self {
        Self(
            self.0
                .try_clone()
                .expect("RetryableRequest::new guarantees a buffered body"),
        )
    }
}
