//! Shared test support: an in-memory scripted transport, real-socket misbehaving servers and a
//! helper to build a client over either, and a real Redis for the fleet-mode tests.
#![allow(dead_code, unreachable_pub)]

pub mod net;
pub mod redis;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::{Client, ClientBuilder, Error};
use reqwest::{Method, Request, Response, ResponseBuilderExt};
use tokio::time::Instant;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A retry policy with exact delays (no jitter) and no budget, for tests that check timing.
pub fn exact(base: Duration, max: Duration) -> palisade::retry::Retry {
    palisade::retry::Retry::default()
        .backoff(palisade::retry::Backoff::new(base, max).jitter(palisade::retry::Jitter::None))
        .no_budget()
}

/// What the in-memory transport does for one attempt.
#[derive(Clone, Debug)]
pub enum Step {
    /// Answer with this status and no headers.
    Status(u16),
    /// Answer with this status and these headers.
    With(u16, Vec<(&'static str, String)>),
    /// Answer with this status, headers and body.
    Full(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Fail with an I/O error of this kind. `ConnectionRefused` is a connect error (the mock
    /// knows it sent nothing, as a transport whose connect call failed does); other kinds are
    /// converted as palisade converts any I/O error.
    Fail(io::ErrorKind),
    /// Never answer.
    Hang,
    /// Wait (in tokio time), then do the inner step.
    After(Duration, Box<Step>),
    /// Answer with this status and headers, and a body sent in these chunks, without a
    /// `Content-Length`; then end the body, or (`hang`) never end it.
    Chunks(u16, Vec<(&'static str, String)>, Vec<Vec<u8>>, bool),
}

impl Step {
    pub fn after(d: Duration, step: Step) -> Step {
        Step::After(d, Box::new(step))
    }
    pub fn retry_after(status: u16, value: &str) -> Step {
        Step::With(status, vec![("retry-after", value.to_owned())])
    }
}

/// One request the transport received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub method: Method,
    pub url: String,
    pub headers: reqwest::header::HeaderMap,
    pub timeout: Option<Duration>,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Step>,
    fallback: Option<Step>,
    seen: Vec<Seen>,
    /// Attempts that answered (or failed).
    answered: usize,
    /// Attempts whose future was dropped before it answered, by the time they were dropped.
    cancelled: Vec<Instant>,
}

/// An in-memory transport that answers from a script, then with a fallback step, and records
/// every request with its (tokio) arrival time.
#[derive(Clone, Default)]
pub struct Mock {
    inner: Arc<Mutex<Inner>>,
}

impl Mock {
    /// A transport that answers every request with `step`.
    pub fn always(step: Step) -> Mock {
        let m = Mock::default();
        m.inner.lock().unwrap().fallback = Some(step);
        m
    }

    /// A transport that answers with `steps` in order, then with 200.
    pub fn script(steps: impl IntoIterator<Item = Step>) -> Mock {
        let m = Mock::always(Step::Status(200));
        m.inner.lock().unwrap().script = steps.into_iter().collect();
        m
    }

    /// Changes what the transport answers once its script is spent (a host going down or
    /// coming back).
    pub fn set(&self, step: Step) {
        self.inner.lock().unwrap().fallback = Some(step);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    pub fn calls(&self) -> usize {
        self.inner.lock().unwrap().seen.len()
    }

    /// When each attempt dropped before it answered was dropped (a hedge that lost, a call the
    /// caller left or a timeout cut short).
    pub fn cancelled(&self) -> Vec<Instant> {
        self.inner.lock().unwrap().cancelled.clone()
    }

    /// Attempts sent and neither answered nor dropped yet.
    pub fn in_flight(&self) -> usize {
        let inner = self.inner.lock().unwrap();
        inner.seen.len() - inner.cancelled.len() - inner.answered
    }

    /// Times between consecutive requests.
    pub fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen();
        seen.windows(2).map(|w| w[1].at - w[0].at).collect()
    }

    /// A client over this transport; `f` adjusts the standard builder.
    pub fn client(&self, f: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Client {
        f(Client::builder().transport(self.clone()))
            .build()
            .expect("valid test configuration")
    }
}

pub fn response(status: u16, headers: &[(&'static str, String)], body: Vec<u8>) -> Response {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    Response::from(b.body(body).expect("valid test response"))
}

/// Runs `step`, and gives a response the request's URL as reqwest would.
fn run_for(
    url: url::Url,
    step: Step,
) -> Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>> {
    Box::pin(async move {
        let resp = run(step).await?;
        let (mut parts, body) = http::Response::<reqwest::Body>::from(resp).into_parts();
        let carrier = http::Response::builder()
            .url(url)
            .body(())
            .expect("a response");
        parts.extensions.extend(carrier.into_parts().0.extensions);
        Ok(Response::from(http::Response::from_parts(parts, body)))
    })
}

fn run(step: Step) -> Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>> {
    Box::pin(async move {
        match step {
            Step::Status(s) => Ok(response(s, &[], Vec::new())),
            Step::With(s, h) => Ok(response(s, &h, Vec::new())),
            Step::Full(s, h, b) => Ok(response(s, &h, b)),
            Step::Fail(io::ErrorKind::ConnectionRefused) => Err(Error::from_source(
                palisade::ErrorKind::Connect,
                io::Error::new(io::ErrorKind::ConnectionRefused, "scripted failure"),
            )),
            Step::Fail(kind) => Err(Error::from(io::Error::new(kind, "scripted failure"))),
            Step::Hang => std::future::pending().await,
            Step::After(d, step) => {
                tokio::time::sleep(d).await;
                run(*step).await
            }
            Step::Chunks(s, h, chunks, hang) => {
                let body = reqwest::Body::wrap(ChunkBody {
                    chunks: chunks.into_iter().map(bytes::Bytes::from).collect(),
                    end: if hang { BodyEnd::Hang } else { BodyEnd::Finish },
                    size: None,
                });
                let mut b = http::Response::builder().status(s);
                for (k, v) in &h {
                    b = b.header(*k, v.as_str());
                }
                Ok(Response::from(b.body(body).expect("valid test response")))
            }
        }
    })
}

/// How a [`ChunkBody`] ends once its chunks are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// It ends.
    Finish,
    /// It never goes on.
    Hang,
    /// It fails: the connection was cut.
    Fail,
}

impl BodyEnd {
    /// The frame a body gives once its chunks are sent: none (it ended), none yet (it hangs),
    /// or an error, once (the connection was cut), after which it has ended.
    fn frame(&mut self) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, io::Error>>> {
        match self {
            BodyEnd::Finish => Poll::Ready(None),
            BodyEnd::Hang => Poll::Pending,
            BodyEnd::Fail => {
                *self = BodyEnd::Finish;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body cut short",
                ))))
            }
        }
    }
}

/// A body sent in chunks, with no length known in advance unless `size` announces one (as a
/// `Content-Length` does), ending as `end` says.
pub struct ChunkBody {
    chunks: VecDeque<bytes::Bytes>,
    end: BodyEnd,
    size: Option<u64>,
}

impl http_body::Body for ChunkBody {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, io::Error>>> {
        match self.chunks.pop_front() {
            Some(c) => Poll::Ready(Some(Ok(http_body::Frame::data(c)))),
            None => self.end.frame(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.size {
            Some(n) => http_body::SizeHint::with_exact(n),
            None => http_body::SizeHint::default(),
        }
    }
}

/// A 200 whose body is `chunks`, ending as `end` says, with `size` announced if given.
pub fn chunked_response(chunks: Vec<&'static [u8]>, end: BodyEnd, size: Option<u64>) -> Response {
    chunked_response_of(
        chunks.into_iter().map(bytes::Bytes::from_static).collect(),
        end,
        size,
    )
}

/// [`chunked_response`] with chunks of any origin (one whose owner tells when it is freed,
/// say).
pub fn chunked_response_of(chunks: Vec<bytes::Bytes>, end: BodyEnd, size: Option<u64>) -> Response {
    let body = reqwest::Body::wrap(ChunkBody {
        chunks: chunks.into(),
        end,
        size,
    });
    Response::from(http::Response::new(body))
}

/// A body that sends each chunk after its delay (counted from the previous chunk, in tokio
/// time), then ends as `end` says.
pub struct Trickle {
    chunks: VecDeque<(Duration, bytes::Bytes)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    end: BodyEnd,
}

impl http_body::Body for Trickle {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, io::Error>>> {
        let Some((delay, _)) = self.chunks.front() else {
            return self.end.frame();
        };
        let delay = *delay;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
        std::task::ready!(sleep.as_mut().poll(cx));
        self.sleep = None;
        let (_, chunk) = self.chunks.pop_front().expect("a chunk");
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

/// A 200 whose body is `chunks`, each sent after its delay, ending as `end` says.
pub fn trickle_response(chunks: Vec<(Duration, &'static [u8])>, end: BodyEnd) -> Response {
    let body = reqwest::Body::wrap(Trickle {
        chunks: chunks
            .into_iter()
            .map(|(d, c)| (d, bytes::Bytes::from_static(c)))
            .collect(),
        sleep: None,
        end,
    });
    Response::from(http::Response::new(body))
}

/// The bytes of a chunk whose memory reports when it is freed: [`Freed::is_freed`] turns true
/// once every copy of the [`bytes::Bytes`] made by [`Freed::chunk`] is dropped.
#[derive(Clone, Default)]
pub struct Freed(Arc<std::sync::atomic::AtomicBool>);

struct Owner(Vec<u8>, Arc<std::sync::atomic::AtomicBool>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Freed {
    /// A chunk holding `data`, whose freeing this handle sees.
    pub fn chunk(&self, data: &[u8]) -> bytes::Bytes {
        bytes::Bytes::from_owner(Owner(data.to_vec(), self.0.clone()))
    }

    pub fn is_freed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl tower::Service<Request> for Mock {
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let step = {
            let mut inner = self.inner.lock().unwrap();
            inner.seen.push(Seen {
                at: Instant::now(),
                method: req.method().clone(),
                url: req.url().to_string(),
                headers: req.headers().clone(),
                timeout: req.timeout().copied(),
            });
            match inner.script.pop_front() {
                Some(s) => s,
                None => inner.fallback.clone().unwrap_or(Step::Status(200)),
            }
        };
        Box::pin(Watched {
            fut: run_for(req.url().clone(), step),
            inner: Some(self.inner.clone()),
        })
    }
}

/// An attempt's future that tells the mock whether it answered or was dropped first.
struct Watched {
    fut: Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>,
    /// Taken when the attempt answers.
    inner: Option<Arc<Mutex<Inner>>>,
}

impl Future for Watched {
    type Output = Result<Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = std::task::ready!(self.fut.as_mut().poll(cx));
        if let Some(inner) = self.inner.take() {
            inner.lock().unwrap().answered += 1;
        }
        Poll::Ready(out)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Never a panic in a drop (a test that failed may have poisoned the lock).
        if let Some(Ok(mut inner)) = self.inner.take().as_ref().map(|i| i.lock()) {
            inner.cancelled.push(Instant::now());
        }
    }
}

/// Collects the events a client emits, as strings like `retry 2 503 delay=100ms`.
#[derive(Clone, Default)]
pub struct Events {
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Events {
    pub fn hook(&self) -> impl Fn(&palisade::Event<'_>) + Send + Sync + 'static {
        let log = self.log.clone();
        move |e| log.lock().unwrap().push(format!("{e:?}"))
    }
    pub fn all(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    pub fn count(&self, needle: &str) -> usize {
        self.all().iter().filter(|e| e.contains(needle)).count()
    }
}
