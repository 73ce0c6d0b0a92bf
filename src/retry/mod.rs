//! Retry: send a failed request again, after a backoff, within a budget.
//!
//! The stage asks the [`Classifier`] what each attempt's outcome means and retries
//! `Throttled`, `Timeout` and `Network` outcomes, and `ServerError` responses with a status in
//! [`Retry::server_error_statuses`] (500, 502, 503 and 504 by default). It does not retry:
//!
//! - a request whose method is not idempotent (only GET, HEAD, OPTIONS, TRACE, PUT and DELETE
//!   are) unless it carries an `Idempotency-Key` header; a connect failure is retried for any
//!   method, since nothing reached the server;
//! - a request whose body is a stream: such a request cannot be cloned and is sent once;
//! - when the server's `Retry-After` asks for more than [`Retry::max_retry_after`], or for a
//!   time past the total deadline: the response is returned at once, without sleeping;
//! - when the total deadline has come (a timeout at the deadline is not retried);
//! - when the [retry budget](RetryBudget) is spent.
//!
//! The delay before retry `n` is drawn by the [`Backoff`] schedule, unless the response carries a
//! valid `Retry-After`, which then sets the delay exactly: never earlier than the server asked.
//! A backoff sleep is bounded by the total timeout like everything else: when the delay drawn
//! reaches the deadline, the stage waits for the deadline without spending the budget, and the
//! request fails with the total timeout. No attempt starts after the deadline, even when the
//! task is polled late.
//! After the last attempt the last response is returned as it is, whatever its status; the
//! response tells how many attempts were made through [`ResponseExt::attempts`].
//!
//! Why a budget and not only a maximum of attempts: see [`RetryBudget`].
//!
//! [`ResponseExt::attempts`]: crate::ResponseExt::attempts

mod backoff;
mod budget;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, StatusCode};
use reqwest::{Request, Response};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;
use url::Url;

pub use self::backoff::{Backoff, Jitter};
use self::budget::Budget;
pub use self::budget::RetryBudget;
use crate::classify::{Classifier, FailureClass, Outcome};
use crate::context;
use crate::error::{ConfigError, Error, TimeoutKind};
use crate::event::{Event, GiveUpReason, Hook};
use crate::ext::Attempts;

/// The retry policy's configuration.
///
/// Default: 3 attempts in all, [`Backoff::default`] (base 100 ms, cap 10 s, full jitter),
/// `Retry-After` honoured up to 60 s, server errors 500, 502, 503 and 504 retried, and the
/// default [`RetryBudget`].
///
/// ```
/// use std::time::Duration;
/// use palisade::retry::{Backoff, Jitter, Retry};
///
/// let retry = Retry::default()
///     .max_attempts(5)
///     .backoff(Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).jitter(Jitter::Equal))
///     .max_retry_after(Duration::from_secs(30));
/// let layer = palisade::layer::RetryLayer::new(retry)?;
/// # let _ = layer;
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a policy does nothing until given to a client or a layer"]
pub struct Retry {
    pub(crate) max_attempts: u32,
    backoff: Backoff,
    max_retry_after: Duration,
    budget: Option<RetryBudget>,
    statuses: Vec<StatusCode>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 3,
            backoff: Backoff::default(),
            max_retry_after: Duration::from_secs(60),
            budget: Some(RetryBudget::default()),
            statuses: [500, 502, 503, 504]
                .into_iter()
                .filter_map(|s| StatusCode::from_u16(s).ok())
                .collect(),
        }
    }
}

impl Retry {
    /// Attempts in all, the first included. Default 3; must be at least 1 (1 never retries).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The backoff schedule. Default [`Backoff::default`]: base 100 ms, cap 10 s, full jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest `Retry-After` the stage waits for. A response asking for longer is returned
    /// at once, without sleeping. Default 60 s.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The retry budget, shared by every request through the layer (and every clone of a
    /// [`Client`](crate::Client)). Default [`RetryBudget::default`].
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Switches the retry budget off: every request may make all its attempts, so a total
    /// outage multiplies the load by `max_attempts`. Not recommended.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The 5xx statuses that are retried when classed `ServerError`. Default 500, 502, 503,
    /// 504 (501 Not Implemented and 505 and up are answers that another attempt will not
    /// change). The list filters 5xx responses only: a response of another status that a
    /// custom classifier calls a `ServerError` is retried, and a 503 with `Retry-After` is
    /// `Throttled` by default and retried whatever the list says.
    pub fn server_error_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "retry.max_attempts",
                "must be at least 1 (1 sends once and never retries)",
            ));
        }
        if self.backoff.base.is_zero() {
            return Err(ConfigError::new("retry.backoff.base", "must be above zero"));
        }
        if self.backoff.max < self.backoff.base {
            return Err(ConfigError::new(
                "retry.backoff.max",
                format!(
                    "must be at least the base delay ({:?}), got {:?}",
                    self.backoff.base, self.backoff.max
                ),
            ));
        }
        if let Some(b) = &self.budget {
            b.validate()?;
        }
        Ok(())
    }
}

/// Whether a request may be sent twice without harm: an idempotent method (RFC 9110 §9.2.2)
/// or an `Idempotency-Key` header.
pub(crate) fn is_idempotent(req: &Request) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.headers().contains_key(IDEMPOTENCY_KEY)
}

/// A [`Layer`] that wraps a service in [`RetryService`]. Every service it makes shares one
/// retry budget.
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: Retry,
    budget: Option<Budget>,
    epoch: Instant,
    classifier: Classifier,
    hook: Hook,
}

impl Shared {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }
}

impl RetryLayer {
    /// A layer with the given policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when `max_attempts` is 0, the backoff's base is zero
    /// or its cap below its base, or the budget's ratio is not a finite number from 0 to 1,000.
    pub fn new(cfg: Retry) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self::from_parts(
            cfg,
            Classifier::default(),
            Hook::default(),
        ))
    }

    pub(crate) fn from_parts(cfg: Retry, classifier: Classifier, hook: Hook) -> Self {
        RetryLayer {
            shared: Arc::new(Shared {
                budget: cfg.budget.as_ref().map(Budget::new),
                epoch: Instant::now(),
                cfg,
                classifier,
                hook,
            }),
        }
    }

    /// Uses `classifier` instead of the default. It is shared with the services made since.
    pub fn classifier(self, classifier: Classifier) -> Self {
        self.rebuild(|s| s.classifier = classifier)
    }

    /// Calls `hook` for every attempt, retry and give-up.
    pub fn on_event<F>(self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.rebuild(|s| s.hook = Hook::new(hook))
    }

    fn rebuild(self, f: impl FnOnce(&mut Shared)) -> Self {
        let s = &self.shared;
        let mut shared = Shared {
            cfg: s.cfg.clone(),
            budget: s.cfg.budget.as_ref().map(Budget::new),
            epoch: s.epoch,
            classifier: s.classifier.clone(),
            hook: s.hook.clone(),
        };
        f(&mut shared);
        RetryLayer {
            shared: Arc::new(shared),
        }
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.shared.cfg)
            .field("classifier", &self.shared.classifier)
            .field("hook", &self.shared.hook)
            .finish()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Retries failed requests as the [module docs](self) describe. Made by [`RetryLayer`].
#[derive(Clone)]
pub struct RetryService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RetryService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for RetryService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .field("policy", &self.shared.cfg)
            .finish()
    }
}

/// The response future of [`RetryService`].
#[must_use = "futures do nothing unless polled"]
pub struct RetryFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>,
}

impl fmt::Debug for RetryFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryFuture")
    }
}

impl Future for RetryFuture {
    type Output = Result<Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S> Service<Request> for RetryService<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
{
    type Response = Response;
    type Error = Error;
    type Future = RetryFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> RetryFuture {
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        RetryFuture {
            inner: Box::pin(run(inner, self.shared.clone(), req)),
        }
    }
}

/// What the loop decided after an attempt.
enum Next {
    Return,
    GiveUp(GiveUpReason),
    Sleep {
        delay: Duration,
        from_retry_after: bool,
    },
    /// The backoff would reach the deadline: wait for it (the total timeout fires during the
    /// sleep) without spending the budget on a retry that cannot happen.
    SleepToDeadline(Instant),
}

async fn run<S>(mut inner: S, shared: Arc<Shared>, req: Request) -> Result<Response, Error>
where
    S: Service<Request, Response = Response> + Send,
    S::Error: Into<Error>,
    S::Future: Send,
{
    let cfg = &shared.cfg;
    let deadline = context::deadline();
    if let Some(b) = &shared.budget {
        b.deposit(shared.now());
    }
    let idempotent = is_idempotent(&req);
    let method = req.method().clone();
    // The URL is cloned only for the event hook; tracing reads it from the request's span.
    let url: Option<Url> = shared.hook.is_set().then(|| req.url().clone());
    let mut req = req;
    let mut rng: Option<fastrand::Rng> = None;
    let mut prev_delay = cfg.backoff.base;
    let mut attempt: u32 = 0;

    loop {
        attempt += 1;
        // No attempt starts after the deadline, even when this task is polled late.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let mut e = Error::timeout(TimeoutKind::Total).with_attempts(attempt - 1);
            e.set_url_if_missing(req.url());
            return Err(e);
        }
        // Send a copy while another attempt may follow, and keep the original for it. A
        // request whose body is a stream cannot be copied: it is sent as it is, once.
        let (mut send, kept) = if attempt < cfg.max_attempts {
            match req.try_clone() {
                Some(copy) => (copy, Some(req)),
                None => (req, None),
            }
        } else {
            (req, None)
        };
        context::record_attempt(attempt);
        context::bound_transport_timeout(&mut send, deadline);
        // For the error of a last attempt, whose request is not kept.
        let last_url = (kept.is_none() && attempt > 1).then(|| send.url().clone());

        let ready: Result<(), Error> = inner.ready().await.map(|_| ()).map_err(Into::into);
        let result = match ready {
            Ok(()) => inner.call(send).await.map_err(Into::into),
            Err(e) => Err(e),
        };
        let outcome = Outcome::of(&result);
        let class = shared.classifier.classify(outcome);
        let status = outcome.status();
        tracing::debug!(
            http.request.resend_count = attempt - 1,
            http.response.status_code = status.map(|s| s.as_u16()),
            class = %class,
            "attempt finished"
        );
        if let Some(url) = &url {
            shared.hook.emit_ref(&Event::Attempt {
                method: &method,
                url,
                attempt,
                class,
                status,
            });
        }

        let next = decide(
            &shared,
            &result,
            class,
            attempt,
            idempotent,
            kept.is_some(),
            deadline,
            &mut prev_delay,
            &mut rng,
        );
        match next {
            Next::Return => {
                return finish(
                    result,
                    attempt,
                    kept.as_ref().map(Request::url).or(last_url.as_ref()),
                )
            }
            Next::GiveUp(reason) => {
                tracing::debug!(attempts = attempt, class = %class, reason = ?reason, "not retrying");
                if let Some(url) = &url {
                    shared.hook.emit_ref(&Event::GaveUp {
                        method: &method,
                        url,
                        attempts: attempt,
                        class,
                        reason,
                    });
                }
                return finish(
                    result,
                    attempt,
                    kept.as_ref().map(Request::url).or(last_url.as_ref()),
                );
            }
            Next::Sleep {
                delay,
                from_retry_after,
            } => {
                // `decide` only sleeps when a copy was kept.
                let Some(next) = kept else {
                    return finish(result, attempt, last_url.as_ref());
                };
                req = next;
                tracing::debug!(
                    http.request.resend_count = attempt,
                    class = %class,
                    delay_ms = delay.as_millis() as u64,
                    from_retry_after,
                    "retrying"
                );
                if let Some(url) = &url {
                    shared.hook.emit_ref(&Event::Retry {
                        method: &method,
                        url,
                        attempt: attempt + 1,
                        class,
                        delay,
                        from_retry_after,
                    });
                }
                // Release the failed response (and its connection) before sleeping.
                drop(result);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            Next::SleepToDeadline(deadline) => {
                tracing::debug!(
                    attempts = attempt,
                    class = %class,
                    "the backoff reaches the total deadline; waiting for it"
                );
                drop(result);
                // The total timeout stage above fires at the deadline and drops this future;
                // this error is for a retry stage used under a deadline but without it.
                tokio::time::sleep_until(deadline).await;
                let mut e = Error::timeout(TimeoutKind::Total).with_attempts(attempt);
                if let Some(url) = kept.as_ref().map(Request::url).or(last_url.as_ref()) {
                    e.set_url_if_missing(url);
                }
                return Err(e);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn decide(
    shared: &Shared,
    result: &Result<Response, Error>,
    class: FailureClass,
    attempt: u32,
    idempotent: bool,
    can_resend: bool,
    deadline: Option<Instant>,
    prev_delay: &mut Duration,
    rng: &mut Option<fastrand::Rng>,
) -> Next {
    let cfg = &shared.cfg;
    // The deadline has come: nothing can be retried (the total timeout answers for it).
    if matches!(result, Err(e) if e.timeout_kind() == Some(TimeoutKind::Total))
        || past(deadline, Duration::ZERO)
    {
        return Next::Return;
    }
    let retryable = match class {
        FailureClass::Throttled | FailureClass::Timeout | FailureClass::Network => true,
        // The status list filters 5xx answers; anything a custom classifier calls a server
        // error (a 404 during a deployment, an error body in a 200) is retried.
        FailureClass::ServerError => match result {
            Ok(r) if r.status().as_u16() >= 500 => cfg.statuses.contains(&r.status()),
            _ => true,
        },
        _ => false,
    };
    if !retryable {
        return Next::Return;
    }
    if attempt >= cfg.max_attempts {
        return Next::GiveUp(GiveUpReason::MaxAttempts);
    }
    if !can_resend {
        return Next::GiveUp(GiveUpReason::BodyNotCloneable);
    }
    let connect_failure = matches!(result, Err(e) if e.is_connect());
    if !idempotent && !connect_failure {
        return Next::GiveUp(GiveUpReason::NotIdempotent);
    }
    let hinted = match result {
        Ok(r) => crate::retry_after::retry_after(r.headers()),
        Err(_) => None,
    };
    let (delay, from_retry_after) = match hinted {
        Some(d) if d > cfg.max_retry_after => return Next::GiveUp(GiveUpReason::RetryAfterTooLong),
        // The server says a retry cannot succeed before `d`: if that is past the deadline,
        // waiting would only turn its answer into a timeout. Return the answer now.
        Some(d) if past(deadline, d) => return Next::GiveUp(GiveUpReason::RetryAfterPastDeadline),
        Some(d) => (d, true),
        None => {
            let rng = rng.get_or_insert_with(fastrand::Rng::new);
            let d = cfg.backoff.delay(attempt, *prev_delay, rng);
            *prev_delay = d;
            (d, false)
        }
    };
    if let Some(dl) = deadline.filter(|_| past(deadline, delay)) {
        return Next::SleepToDeadline(dl);
    }
    if let Some(b) = &shared.budget {
        if !b.try_withdraw(shared.now()) {
            return Next::GiveUp(GiveUpReason::BudgetExhausted);
        }
    }
    Next::Sleep {
        delay,
        from_retry_after,
    }
}

/// Whether `delay` from now reaches the deadline.
fn past(deadline: Option<Instant>, delay: Duration) -> bool {
    deadline.is_some_and(|dl| Instant::now().checked_add(delay).is_none_or(|at| at >= dl))
}

fn finish(
    result: Result<Response, Error>,
    attempts: u32,
    url: Option<&Url>,
) -> Result<Response, Error> {
    match result {
        Ok(mut r) => {
            // 1 is what `ResponseExt::attempts` says when there is no record: the success path
            // at the first try inserts nothing.
            if attempts > 1 {
                r.extensions_mut().insert(Attempts(attempts));
            }
            Ok(r)
        }
        Err(mut e) => {
            e.set_attempts(attempts);
            if let Some(url) = url {
                e.set_url_if_missing(url);
            }
            Err(e)
        }
    }
}

/// The `Idempotency-Key` header name, for callers that set it by hand.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
