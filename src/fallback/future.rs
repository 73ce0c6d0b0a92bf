//! The fallback stage's future: waits for the stage below, stores a storable success (reading
//! its body), and answers a failure from the store.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, AGE};
use http::Method;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use reqwest::{Body, Request, Response, ResponseBuilderExt};
use tokio::time::Instant;
use url::Url;

use super::policy::{self, Plan, RequestFacts};
use super::store::Entry;
use super::{FallbackInfo, FallbackRequest, Shared};
use crate::classify::{FailureClass, Outcome};
use crate::error::{Error, TimeoutKind};
use crate::event::Event;
use crate::ext::{Attempts, ResponseExt};

/// The most an `Age` header says (RFC 9111 §1.2.2).
const MAX_AGE_SECS: u64 = 1 << 31;

/// What the stage remembers of a request while the stage below handles it.
pub(crate) struct Call {
    shared: Arc<Shared>,
    method: Method,
    url: Url,
    /// The key in place of the URL, from the user's key function.
    custom_key: Option<String>,
    /// The request's headers, kept when they may be needed: to pick a `Vary` variant, or for
    /// the static fallback.
    headers: HeaderMap,
    facts: RequestFacts,
    /// `false` when the key function kept the request out of the store.
    keyed: bool,
    start: Instant,
    deadline: Option<Instant>,
    /// Orders this request against unsafe ones that void the store (0 when not cacheable).
    seq: u64,
}

impl Call {
    pub(crate) fn new(shared: Arc<Shared>, req: &Request) -> Box<Call> {
        let mut facts = RequestFacts::of(req.method(), req.headers());
        let (custom_key, keyed) = match &shared.cfg.key_fn {
            Some(f) => {
                let k = f(req);
                let keyed = k.is_some();
                (k, keyed)
            }
            None => (None, true),
        };
        if !keyed {
            facts.cacheable = false;
        }
        let headers = if facts.cacheable || shared.cfg.static_fallback.is_some() {
            req.headers().clone()
        } else {
            HeaderMap::new()
        };
        let start = Instant::now();
        let deadline = req
            .timeout()
            .copied()
            .or(shared.cfg.total_timeout)
            .and_then(|t| start.checked_add(t));
        let seq = if facts.cacheable {
            shared.store.next_seq()
        } else {
            0
        };
        Box::new(Call {
            seq,
            method: req.method().clone(),
            url: req.url().clone(),
            custom_key,
            headers,
            facts,
            keyed,
            start,
            deadline,
            shared,
        })
    }

    /// The primary key of this request's resource under `method`.
    fn primary(&self, method: &Method) -> Vec<u8> {
        let resource = self.custom_key.as_deref().unwrap_or(self.url.as_str());
        let mut k = Vec::with_capacity(method.as_str().len() + 1 + resource.len());
        k.extend_from_slice(method.as_str().as_bytes());
        k.push(0);
        k.extend_from_slice(resource.as_bytes());
        k
    }

    /// How to store `resp`, if it is to be stored.
    fn plan(&self, resp: &Response) -> Option<Plan> {
        if !self.facts.cacheable {
            return None;
        }
        let class = self.shared.classifier.classify(Outcome::Response(resp));
        if class != FailureClass::Success {
            return None;
        }
        let cfg = &self.shared.cfg;
        let plan = policy::plan(cfg, &self.facts, resp.status(), resp.headers())?;
        match resp.content_length() {
            Some(n) if n > cfg.max_entry_bytes => None,
            _ => Some(plan),
        }
    }

    /// The outcome to hand back when nothing is to be stored: voids stored entries after an
    /// unsafe request succeeded, answers a failure from the store.
    fn finish(&self, result: Result<Response, Error>) -> Result<Response, Error> {
        match &result {
            Ok(resp) if !self.method.is_safe() && self.keyed && resp.status().as_u16() < 400 => {
                for m in [Method::GET, Method::HEAD] {
                    self.shared.store.invalidate(&self.primary(&m));
                }
                result
            }
            _ => self.recover(result),
        }
    }

    /// Answers a failure from the store or the static fallback, where the configuration allows.
    fn recover(&self, result: Result<Response, Error>) -> Result<Response, Error> {
        let Some(reason) = self.shared.reason(&result) else {
            return result;
        };
        let attempts = match &result {
            Ok(r) => r.attempts(),
            Err(e) => e.attempts(),
        };
        let now = Instant::now();
        if self.facts.cacheable && !self.facts.no_cache {
            let entry = self
                .shared
                .store
                .lookup(&self.primary(&self.method), &self.headers);
            if let Some((entry, age)) = entry.and_then(|e| e.servable_age(now).map(|a| (e, a))) {
                let info = FallbackInfo {
                    age: Some(age),
                    reason,
                };
                if let Some(resp) = self.serve_stored(&entry, info, attempts) {
                    self.report(info);
                    return Ok(resp);
                }
            }
        }
        if let Some(f) = &self.shared.cfg.static_fallback {
            let req = FallbackRequest {
                method: &self.method,
                url: &self.url,
                headers: &self.headers,
                reason,
            };
            if let Some(resp) = f(&req) {
                let info = FallbackInfo { age: None, reason };
                let (mut parts, body) = resp.into_parts();
                parts.extensions.insert(info);
                parts.extensions.insert(Attempts(attempts));
                let resp = with_url(parts, self.url.clone(), body);
                self.report(info);
                return Ok(resp);
            }
        }
        result
    }

    fn serve_stored(&self, entry: &Entry, info: FallbackInfo, attempts: u32) -> Option<Response> {
        let age = info.age.unwrap_or_default().as_secs().min(MAX_AGE_SECS);
        let body = if self.method == Method::HEAD {
            Body::from(Bytes::new())
        } else {
            Body::from(entry.body.clone())
        };
        let mut resp = http::Response::builder()
            .status(entry.status)
            .version(entry.version)
            .url(entry.url.clone())
            .extension(info)
            .extension(Attempts(attempts))
            .body(body)
            .ok()?;
        let headers = resp.headers_mut();
        headers.clone_from(&entry.headers);
        headers.insert(AGE, HeaderValue::from(age));
        Some(Response::from(resp))
    }

    fn report(&self, info: FallbackInfo) {
        tracing::info!(
            fallback.reason = %info.reason,
            fallback.age_s = info.age.map(|a| a.as_secs()),
            "served a fallback response after a failure"
        );
        self.shared.hook.emit_ref(&Event::Fallback {
            url: &self.url,
            reason: info.reason,
            age: info.age,
        });
    }

    /// Reads the body of `resp` and stores it; the failure of reading it is answered like any
    /// other.
    async fn store(self: Box<Self>, resp: Response, plan: Plan) -> Result<Response, Error> {
        let arrived = Instant::now();
        let max = self.shared.cfg.max_entry_bytes;
        let read = match self.deadline {
            Some(d) => match tokio::time::timeout_at(d, buffer(resp, max)).await {
                Ok(r) => r,
                Err(_) => {
                    let mut e = Error::timeout(TimeoutKind::Total);
                    e.set_url_if_missing(&self.url);
                    Err(e)
                }
            },
            None => buffer(resp, max).await,
        };
        match read {
            Ok(Buffered::Whole { resp, stored }) => {
                let StoredParts {
                    status,
                    version,
                    headers,
                    body,
                    url,
                } = *stored;
                let entry = Entry::new(
                    status,
                    version,
                    headers,
                    body,
                    url,
                    arrived,
                    policy::initial_age(resp.headers(), arrived - self.start),
                    plan.freshness,
                    plan.stale_allowance,
                    self.seq,
                );
                if entry.servable_age(arrived).is_some() {
                    let primary = self.primary(&self.method);
                    self.shared
                        .store
                        .insert(&primary, plan.vary, &self.headers, entry);
                }
                Ok(resp)
            }
            Ok(Buffered::TooLarge(resp)) => Ok(resp),
            Err(e) => self.recover(Err(e)),
        }
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// What the stored copy is made of.
struct StoredParts {
    status: http::StatusCode,
    version: http::Version,
    headers: HeaderMap,
    body: Bytes,
    url: Url,
}

enum Buffered {
    /// The whole body: the response to hand on (same head, the body in memory) and what to
    /// store.
    Whole {
        resp: Response,
        stored: Box<StoredParts>,
    },
    /// Over the limit: the response with what was read put back before the rest.
    TooLarge(Response),
}

/// Reads `resp`'s body up to `max` bytes.
async fn buffer(mut resp: Response, max: u64) -> Result<Buffered, Error> {
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut len: u64 = 0;
    while let Some(chunk) = resp.chunk().await.map_err(Error::from)? {
        len = len.saturating_add(chunk.len() as u64);
        chunks.push_back(chunk);
        if len > max {
            let url = resp.url().clone();
            let (parts, rest) = http::Response::<Body>::from(resp).into_parts();
            let body = Body::wrap(Prefixed {
                prefix: chunks,
                rest,
            });
            return Ok(Buffered::TooLarge(with_url(parts, url, body)));
        }
    }
    let body = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(len as usize);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            all.freeze()
        }
    };
    let url = resp.url().clone();
    let (parts, _) = http::Response::<Body>::from(resp).into_parts();
    let stored = Box::new(StoredParts {
        status: parts.status,
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
        url: url.clone(),
    });
    let resp = with_url(parts, url, Body::from(body));
    Ok(Buffered::Whole { resp, stored })
}

/// A reqwest response from parts and a body, with `url` as its URL (reqwest keeps it in an
/// extension only its own builder can set).
fn with_url(mut parts: http::response::Parts, url: Url, body: Body) -> Response {
    if let Ok(carrier) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(carrier.into_parts().0.extensions);
    }
    Response::from(http::Response::from_parts(parts, body))
}

pin_project! {
    /// A body that yields chunks already read, then the rest of the original body.
    struct Prefixed {
        prefix: VecDeque<Bytes>,
        #[pin]
        rest: Body,
    }
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, reqwest::Error>>> {
        let this = self.project();
        if let Some(chunk) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self.prefix.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

pin_project! {
    /// The future of [`FallbackCacheService`](super::FallbackCacheService).
    #[must_use = "futures do nothing unless polled"]
    pub struct FallbackFuture<F> {
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
            call: Option<Box<Call>>,
        },
        Storing {
            fut: BoxFuture,
        },
    }
}

impl<F> FallbackFuture<F> {
    pub(crate) fn new(fut: F, call: Box<Call>) -> Self {
        FallbackFuture {
            state: State::Called {
                fut,
                call: Some(call),
            },
        }
    }
}

impl<F> fmt::Debug for FallbackFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FallbackFuture")
    }
}

impl<F, E> Future for FallbackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Called { fut, call } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    let Some(call) = call.take() else {
                        return Poll::Ready(Err(Error::from_source(
                            crate::ErrorKind::Request,
                            "polled after completion",
                        )));
                    };
                    match result {
                        Ok(resp) => match call.plan(&resp) {
                            Some(plan) => Box::pin(call.store(resp, plan)) as BoxFuture,
                            None => return Poll::Ready(call.finish(Ok(resp))),
                        },
                        Err(e) => return Poll::Ready(call.finish(Err(e))),
                    }
                }
                StateProj::Storing { fut } => return fut.as_mut().poll(cx),
            };
            self.as_mut()
                .project()
                .state
                .set(State::Storing { fut: next });
        }
    }
}
