//! The fallback stage's future: waits for the stage below, hands a storable success on at
//! once with its body copied aside as it streams (stored when complete), and answers a failure
//! from the store.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AGE};
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use reqwest::{Body, Request, Response, ResponseBuilderExt};
use tokio::time::Instant;
use url::Url;

use super::policy::{self, Plan, RequestFacts};
use super::store::{self, Entry};
use super::{FallbackInfo, FallbackRequest, Shared};
use crate::classify::{FailureClass, Outcome};
use crate::error::Error;
use crate::event::Event;
use crate::ext::{Attempts, FinalAttemptSent, ResponseExt};

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
    /// The request's deadline: its own timeout, else the client's total timeout, from `start`.
    deadline: Option<Instant>,
    /// Orders this request against unsafe ones that void the store (0 when not cacheable).
    seq: u64,
}

impl Call {
    pub(crate) fn new(shared: Arc<Shared>, req: &Request) -> Box<Call> {
        let mut facts = RequestFacts::of(req.method(), req.headers());
        // Userinfo in the URL (kept by a request sent with `execute`) is a credential too.
        let url = req.url();
        facts.credentials |= !url.username().is_empty() || url.password().is_some();
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
        let resource = match &self.custom_key {
            Some(k) => Cow::Borrowed(k.as_str()),
            None => store::resource(&self.url),
        };
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

    /// Hands `resp` on at once, and stores it: now when it has no body, else once the caller
    /// has read its body to the end, through a [`Tee`] that copies it aside.
    fn store(self: Box<Self>, resp: Response, plan: Plan) -> Response {
        let arrived = Instant::now();
        let head = Head {
            status: resp.status(),
            version: resp.version(),
            headers: policy::stored_headers(resp.headers()),
            url: store::stored_url(resp.url()),
        };
        // RFC 9111 §4.2.3: the response delay counts from when the request that produced it
        // was sent, the last attempt (which the retry stage records after a retry).
        let sent = resp
            .extensions()
            .get::<FinalAttemptSent>()
            .map_or(self.start, |s| s.0);
        let initial_age =
            policy::initial_age(resp.headers(), arrived.saturating_duration_since(sent));
        let bodiless = self.method == Method::HEAD
            || resp.status() == StatusCode::NO_CONTENT
            || resp.content_length() == Some(0);
        let mut pending = Pending {
            call: self,
            plan,
            head: Some(head),
            arrived,
            initial_age,
        };
        if bodiless {
            pending.insert(Bytes::new(), arrived);
            return resp;
        }
        let url = resp.url().clone();
        let (parts, body) = http::Response::<Body>::from(resp).into_parts();
        if body.is_end_stream() {
            pending.insert(Bytes::new(), arrived);
            return with_url(parts, url, body);
        }
        let until = pending
            .call
            .deadline
            .or_else(|| arrived.checked_add(pending.call.shared.cfg.max_body_time));
        let max = pending.call.shared.cfg.max_entry_bytes;
        // A body that says how long it is gets its whole buffer with its first chunk (within the
        // limit); nothing is taken before data comes, so that a head announcing a length, and
        // a body that never follows, hold nothing.
        let hint = body.size_hint();
        let copy = Copying {
            max,
            hint: hint.exact().unwrap_or(hint.lower()).min(max),
            pending,
            until,
            buf: Vec::new(),
            taken: 0,
        };
        let tee = Tee {
            inner: body,
            copy: Some(copy),
        };
        with_url(parts, url, Body::wrap(tee))
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// What is stored of a response's head.
struct Head {
    status: StatusCode,
    version: http::Version,
    headers: HeaderMap,
    url: Url,
}

/// A response to be stored once its body is complete.
struct Pending {
    call: Box<Call>,
    plan: Plan,
    /// `None` once stored.
    head: Option<Head>,
    /// When its head arrived: the entry's `stored_at`, from which its age grows.
    arrived: Instant,
    initial_age: Duration,
}

impl Pending {
    /// Stores the response with `body`, if it could still be served at `now`. Takes the head
    /// out: a `Pending` is stored once.
    fn insert(&mut self, body: Bytes, now: Instant) {
        let Some(head) = self.head.take() else {
            return;
        };
        let call = &self.call;
        let entry = Entry::new(
            head.status,
            head.version,
            head.headers,
            body,
            head.url,
            self.arrived,
            self.initial_age,
            self.plan.freshness,
            self.plan.stale_allowance,
            call.seq,
        );
        if entry.servable_age(now).is_some() {
            let primary = call.primary(&call.method);
            let vary = std::mem::take(&mut self.plan.vary);
            call.shared
                .store
                .insert(&primary, vary, &call.headers, entry);
        }
    }
}

/// The copy a [`Tee`] makes of a body it passes on.
///
/// One buffer, grown as chunks come (doubling, never past `max`), so that what it holds is
/// what it copied, whatever the chunking: a server that sends its body a byte at a time costs
/// one buffer, not a handle per byte on hyper's read buffer. What the buffer takes is counted
/// in the store's budget for copies in flight, which all the copies of a store share: a copy
/// that would take the total past it is given up.
struct Copying {
    pending: Pending,
    /// The most bytes kept: past it, the copy is dropped.
    max: u64,
    /// When the copy is given up if the body has not ended: the request's deadline, else
    /// `max_body_time` after the head.
    until: Option<Instant>,
    /// The size the body announced (its `Content-Length`), within `max`: the buffer's size at
    /// its first chunk.
    hint: u64,
    buf: Vec<u8>,
    /// The bytes taken from the store's budget for copies: the buffer's capacity.
    taken: usize,
}

impl Copying {
    /// Keeps `data`; false when that takes the copy past its limit or the budget for copies in
    /// flight, or when its time is over.
    fn push(&mut self, data: &Bytes) -> bool {
        if data.is_empty() {
            return true;
        }
        if self.until.is_some_and(|until| Instant::now() >= until) {
            return false;
        }
        let len = self.buf.len().saturating_add(data.len());
        if len as u64 > self.max {
            return false;
        }
        if len > self.buf.capacity() && !self.grow(len) {
            return false;
        }
        self.buf.extend_from_slice(data);
        true
    }

    /// Grows the buffer to hold `len` bytes (`len` is within `max`), taking what it adds from
    /// the budget for copies: to the announced size, else to twice its size, within `max` (at
    /// most `max` held, and few reallocations); else, if the budget has no room for that, to
    /// `len` exactly. False when the budget has no room even for `len`.
    fn grow(&mut self, len: usize) -> bool {
        let max = usize::try_from(self.max).unwrap_or(usize::MAX);
        let hint = usize::try_from(self.hint).unwrap_or(0);
        let roomy = len
            .max(self.buf.capacity().saturating_mul(2).min(max))
            .max(hint.min(max));
        for want in [roomy, len] {
            let store = &self.pending.call.shared.store;
            if !store.take_copy_budget(want.saturating_sub(self.taken)) {
                continue;
            }
            self.taken = want.max(self.taken);
            self.buf.reserve_exact(want - self.buf.len());
            // The allocator may give more than asked: count what the buffer holds.
            let extra = self.buf.capacity().saturating_sub(self.taken);
            if extra > 0 {
                if !store.take_copy_budget(extra) {
                    return false;
                }
                self.taken += extra;
            }
            return true;
        }
        false
    }

    /// The body has ended: stores the response, unless the copy's time is over.
    fn complete(mut self) {
        let now = Instant::now();
        if self.until.is_some_and(|until| now >= until) {
            return;
        }
        // A buffer of its own, exactly the body's size: what the store weighs is what it holds.
        let mut buf = std::mem::take(&mut self.buf);
        buf.shrink_to_fit();
        self.pending.insert(Bytes::from(buf), now);
    }
}

impl Drop for Copying {
    /// Gives back what the buffer took of the budget for copies in flight, whether the copy
    /// was stored, given up or dropped with its body.
    fn drop(&mut self) {
        if self.taken > 0 {
            let taken = std::mem::take(&mut self.taken);
            self.pending.call.shared.store.give_copy_budget(taken);
        }
    }
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
    /// The body of a response to be stored: every frame passes on to the caller as it comes,
    /// and the data is copied aside. When the body ends, the copy is stored; a body that
    /// fails, grows past `max_entry_bytes`, is dropped before its end or has not ended by the
    /// copy's bound stores nothing, and its copy is freed.
    ///
    /// The bound is checked as frames come, not by a timer: a timer would need a runtime with
    /// timers enabled wherever the body is read, and a body that stalls past its bound costs at
    /// most its copy (within `max_entry_bytes`, and within the store's budget for copies in
    /// flight) until its next frame, or until it is dropped.
    struct Tee {
        #[pin]
        inner: Body,
        // Inline: `Body::wrap` boxes the whole tee once.
        copy: Option<Copying>,
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, reqwest::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        let Some(copy) = this.copy.as_mut() else {
            return Poll::Ready(polled);
        };
        let keep = match &polled {
            Some(Ok(frame)) => {
                let kept = frame.data_ref().is_none_or(|data| copy.push(data));
                if kept && this.inner.is_end_stream() {
                    if let Some(copy) = this.copy.take() {
                        copy.complete();
                    }
                    return Poll::Ready(polled);
                }
                kept
            }
            None => {
                if let Some(copy) = this.copy.take() {
                    copy.complete();
                }
                return Poll::Ready(polled);
            }
            Some(Err(_)) => false,
        };
        if !keep {
            *this.copy = None;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The future of [`FallbackCacheService`](super::FallbackCacheService).
    #[must_use = "futures do nothing unless polled"]
    pub struct FallbackFuture<F> {
        #[pin]
        fut: F,
        call: Option<Box<Call>>,
    }
}

impl<F> FallbackFuture<F> {
    pub(crate) fn new(fut: F, call: Box<Call>) -> Self {
        FallbackFuture {
            fut,
            call: Some(call),
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.fut.poll(cx)).map_err(Into::into);
        let Some(call) = this.call.take() else {
            return Poll::Ready(Err(Error::from_source(
                crate::ErrorKind::Request,
                "polled after completion",
            )));
        };
        Poll::Ready(match result {
            Ok(resp) => match call.plan(&resp) {
                Some(plan) => Ok(call.store(resp, plan)),
                None => call.finish(Ok(resp)),
            },
            Err(e) => call.finish(Err(e)),
        })
    }
}
