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
//! With [hedging](crate::hedge) below (the stage between this one and the circuit breaker),
//! each attempt is a race of copies: this stage sees the race's one outcome and decides on it
//! as on any attempt, its hedges spend this stage's budget, and the response's attempts count
//! them.
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
use tower_service::Service;
use url::Url;

pub use self::backoff::{Backoff, Jitter};
use self::budget::Budget;
pub use self::budget::RetryBudget;
pub(crate) use self::budget::Withdrawal;
use crate::classify::{Classifier, FailureClass, Outcome};
use crate::context;
use crate::error::{ConfigError, Error, ErrorKind, TimeoutKind};
use crate::event::{Event, GiveUpReason, Hook};
use crate::ext::{Attempts, FinalAttemptSent};
use crate::health::BudgetHealth;

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
    circuit_wait: bool,
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
            circuit_wait: true,
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

    /// Fails a retry that the circuit breaker turns away at once, instead of waiting for the
    /// circuit as it does by default.
    ///
    /// By default, when a call's attempt failed and the breaker (below the retry stage in the
    /// standard order) turns its retry away, the retry waits for the circuit as for a
    /// `Retry-After`: for the rejection's [`retry_after`](Error::retry_after) (the end of the
    /// break, or when the probe out will have answered), plus up to one backoff base of jitter,
    /// then tries again. Only under a deadline (a total timeout or a request's
    /// [`timeout`](crate::RequestBuilder::timeout)), and only if the wait ends before it and
    /// within [`max_retry_after`](Self::max_retry_after); each wait takes a retry from the
    /// budget (given back when the circuit turns the call away again), and a turned-away retry
    /// is not an attempt (nothing was sent), so `max_attempts` counts what reached the host.
    ///
    /// A call the open circuit turns away on its *first* attempt fails at once, whatever this
    /// says, and so does a call one of whose attempts was a half-open probe (the host was
    /// still failing as of that probe): failing fast is what the breaker is for, and the calls
    /// that wait are only those already under way when it opened (bounded by the concurrency
    /// then, not by the traffic during the outage). Why wait at all: those calls have spent part of their deadline
    /// (often a whole attempt timeout) and the breaker may let them through before it ends; in
    /// `examples/simulate.rs`'s slow scenario the waits are the difference between doing
    /// worse than no resilience at all and doing better (the numbers are in the README).
    pub fn no_circuit_wait(mut self) -> Self {
        self.circuit_wait = false;
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

/// A [`Layer`](tower_layer::Layer) that wraps a service in [`RetryService`]. Every service it makes shares one
/// retry budget.
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

// Clone keeps the budget's `Arc`: services made before and after a rebuild share it.
#[derive(Clone)]
struct Shared {
    cfg: Retry,
    budget: Option<Arc<Budget>>,
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
                budget: cfg.budget.as_ref().map(|b| Arc::new(Budget::new(b))),
                epoch: Instant::now(),
                cfg,
                classifier,
                hook,
            }),
        }
    }

    /// Uses `classifier` instead of the default, for the services made since. The retry budget
    /// stays shared with the services made before.
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

    /// A read-only view of the retry budget, for [`Client::health`](crate::Client::health);
    /// `None` without a budget.
    pub(crate) fn budget_view(&self) -> Option<BudgetView> {
        self.shared.budget.as_ref().map(|budget| BudgetView {
            budget: budget.clone(),
            epoch: self.shared.epoch,
        })
    }
}

impl RetryLayer {
    /// The retry budget, to be spent by the hedging stage below too; `None` without a budget.
    pub(crate) fn budget_handle(&self) -> Option<BudgetHandle> {
        self.shared.budget.as_ref().map(|budget| BudgetHandle {
            budget: budget.clone(),
            epoch: self.shared.epoch,
        })
    }
}

/// A retry budget with the clock it is kept on: for the hedging stage, whose hedges spend the
/// retry stage's budget (or a budget of its own, in a pipeline without a retry stage).
#[derive(Clone)]
pub(crate) struct BudgetHandle {
    budget: Arc<Budget>,
    epoch: Instant,
}

impl BudgetHandle {
    /// A budget of its own, on a clock that starts now.
    pub(crate) fn new(cfg: &RetryBudget) -> Self {
        BudgetHandle {
            budget: Arc::new(Budget::new(cfg)),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    /// Records a request.
    pub(crate) fn deposit(&self) {
        self.budget.deposit(self.now());
    }

    /// Takes one retry (or hedge), if the budget holds one.
    pub(crate) fn try_withdraw(&self) -> Option<Withdrawal> {
        self.budget.try_withdraw(self.now())
    }

    /// Gives back a withdrawal that sent nothing after all.
    pub(crate) fn refund(&self, w: Withdrawal) {
        self.budget.refund(w);
    }

    /// The same budget, kept on the same clock.
    #[cfg(test)]
    pub(crate) fn same_as(&self, other: &BudgetHandle) -> bool {
        Arc::ptr_eq(&self.budget, &other.budget) && self.epoch == other.epoch
    }
}

impl fmt::Debug for BudgetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetHandle")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// A read-only view of a retry budget, on the clock of the stage that spends it.
#[derive(Clone)]
pub(crate) struct BudgetView {
    budget: Arc<Budget>,
    epoch: Instant,
}

impl BudgetView {
    /// The budget's balance now, read without moving its window.
    pub(crate) fn health(&self) -> BudgetHealth {
        let now = Instant::now().saturating_duration_since(self.epoch);
        let (retries_available, balance, reserve) = self.budget.health(now);
        BudgetHealth {
            retries_available,
            balance,
            reserve,
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

crate::shared_layer!(RetryLayer => RetryService);

/// Retries failed requests as the [module docs](self) describe. Made by [`RetryLayer`].
#[derive(Clone)]
pub struct RetryService<S> {
    inner: S,
    shared: Arc<Shared>,
}

crate::inner_accessors!(RetryService);

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
        let built = context::take_built();
        RetryFuture {
            inner: Box::pin(run(inner, self.shared.clone(), req, built)),
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
        /// The retry taken from the budget, given back if the caller leaves during the sleep.
        withdrawal: Option<Withdrawal>,
    },
    /// The backoff would reach the deadline: wait for it (the total timeout fires during the
    /// sleep) without spending the budget on a retry that cannot happen.
    SleepToDeadline(Instant),
    /// The circuit turned the retry away: wait for it, then try again; the turned-away retry
    /// is not counted as an attempt.
    WaitForCircuit {
        delay: Duration,
        withdrawal: Option<Withdrawal>,
    },
}

/// What the loop does next, once an attempt's outcome has been dealt with.
enum Step {
    Done(Result<Response, Error>),
    Sleep(Duration),
    SleepToDeadline(Instant, Error),
}

/// The state of one request through the stage that is not the service or its futures.
struct Progress {
    shared: Arc<Shared>,
    deadline: Option<Instant>,
    idempotent: bool,
    method: Method,
    /// The request's URL when the request is not kept (a last attempt, or the only one), for
    /// the attempt's error and events: cloned then only, as events and errors read the kept
    /// request's URL while there is one (tracing reads it from the request's span).
    url: Option<Box<Url>>,
    rng: Option<fastrand::Rng>,
    /// The previous backoff delay (for decorrelated jitter), in nanoseconds, saturating at
    /// 584 years: 8 bytes where a `Duration` takes 16, which keeps the boxed loop within the
    /// allocator's per-thread cache with the hedging stage's service below it.
    prev_delay: u64,
    attempt: u32,
    /// The retry withdrawn from the budget for the attempt to come, until that attempt ends:
    /// a caller that drops the request during the backoff sleep gives it back (see `Drop`),
    /// and so does a retry the circuit turns away (nothing was sent). Marked `sending` while
    /// its attempt is out: a caller that leaves then has made it.
    reserved: Option<Withdrawal>,
    /// When the latest attempt was sent, from the second one on.
    last_sent: Option<Instant>,
    /// The request was built by palisade's `RequestBuilder`: see [`copy_built`].
    built: bool,
}

impl Drop for Progress {
    /// A retry withdrawn before the backoff sleep and never made (the caller dropped the
    /// request, or its total timeout fired, during the sleep) goes back to the budget: callers
    /// who left must not spend retries that the others could use.
    fn drop(&mut self) {
        if let (Some(w), Some(b)) = (self.reserved.take(), &self.shared.budget) {
            if !w.is_sending() {
                b.refund(w);
            }
        }
    }
}

// The loop keeps only the service, the request kept for the next attempt and the bookkeeping
// above across its awaits; the copy being sent and the outcome live in synchronous code. That
// keeps the boxed future small (it is allocated for every request).
fn run<S>(
    inner: S,
    shared: Arc<Shared>,
    req: Request,
    built: bool,
) -> impl Future<Output = Result<Response, Error>> + Send
where
    S: Service<Request, Response = Response> + Send,
    S::Error: Into<Error>,
    S::Future: Send,
{
    let mut st = Progress::new(shared, &req);
    st.built = built;
    // The original, kept while another attempt may follow.
    let mut req = Some(req);
    let mut inner = inner;
    // An `async` block rather than an `async fn`: an `async fn` keeps its arguments twice
    // (captured and moved into the body), and this future is boxed for every request.
    async move {
        loop {
            let step = {
                let ready = inner.ready().await.map(|_| ()).map_err(Into::into);
                // The copy being sent lives only in these blocks, not across the await: that keeps
                // the boxed future small.
                let result = match ready {
                    Ok(()) => {
                        let call = match st.begin(&mut req) {
                            Ok(send) => inner.call(send),
                            Err(e) => return Err(e),
                        };
                        call.await.map_err(Into::into)
                    }
                    Err(e) => match st.begin(&mut req) {
                        Ok(_unsent) => Err(e),
                        Err(timeout) => return Err(timeout),
                    },
                };
                st.after(result, req.as_ref())
            };
            match step {
                Step::Done(r) => return r,
                // Sleeps that promise to wake the task: the total timeout above need not arm a
                // timer of its own while one runs (both end before the deadline, or at it).
                Step::Sleep(delay) => {
                    if !delay.is_zero() {
                        let now = Instant::now();
                        // As `tokio::time::sleep` does with a delay too long to add.
                        let at = now
                            .checked_add(delay)
                            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));
                        context::PromisedSleep::until(at).await;
                    }
                }
                Step::SleepToDeadline(deadline, err) => {
                    // The total timeout stage above fires at the deadline and drops this future;
                    // the error is for a retry stage used under a deadline but without that stage.
                    context::PromisedSleep::until(deadline).await;
                    return Err(err);
                }
            }
        }
    }
}

impl Progress {
    fn new(shared: Arc<Shared>, req: &Request) -> Self {
        if let Some(b) = &shared.budget {
            b.deposit(shared.now());
        }
        Progress {
            deadline: context::deadline(),
            idempotent: is_idempotent(req),
            method: req.method().clone(),
            url: None,
            rng: None,
            prev_delay: nanos(shared.cfg.backoff.base),
            attempt: 0,
            reserved: None,
            last_sent: None,
            built: false,
            shared,
        }
    }

    /// Starts the next attempt and returns the request to send. `req` holds the original: a
    /// copy is sent while another attempt may follow, and the original stays in `req`; a
    /// request whose body is a stream cannot be copied and is sent as it is, once. No attempt
    /// starts after the deadline, even when the task is polled late.
    fn begin(&mut self, req: &mut Option<Request>) -> Result<Request, Error> {
        let Some(original) = req.take() else {
            // Unreachable: `after` only asks for another attempt when the original was kept.
            return Err(Error::timeout(TimeoutKind::Total).with_attempts(self.attempt));
        };
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            let mut e = Error::timeout(TimeoutKind::Total).with_attempts(self.attempt);
            e.set_url_if_missing(original.url());
            return Err(e);
        }
        self.attempt += 1;
        // The retry is being made: what it took from the budget is spent, unless the circuit
        // turns it away (see `after`).
        self.reserved = self.reserved.map(Withdrawal::sending);
        let mut send = if self.attempt < self.shared.cfg.max_attempts {
            let copy = if self.built {
                copy_built(&original)
            } else {
                original.try_clone()
            };
            match copy {
                Some(copy) => {
                    *req = Some(original);
                    copy
                }
                None => original,
            }
        } else {
            original
        };
        if self.attempt > 1 {
            self.last_sent = Some(Instant::now());
        }
        // The only attempt's error gets its URL from the client; its events need it here.
        if req.is_none() && self.url.is_none() && (self.attempt > 1 || self.shared.hook.is_set()) {
            self.url = Some(Box::new(send.url().clone()));
        }
        context::record_attempt(self.attempt);
        context::bound_transport_timeout(&mut send, self.deadline);
        Ok(send)
    }

    /// Classifies an attempt's outcome, reports it, and decides what comes next.
    fn after(&mut self, result: Result<Response, Error>, kept: Option<&Request>) -> Step {
        let reserved = self.reserved.take();
        if let (Some(w), Some(b)) = (reserved, &self.shared.budget) {
            if matches!(&result, Err(e) if e.kind() == ErrorKind::CircuitOpen) {
                // Turned away before it was sent: the retry was not made.
                b.refund(w);
            }
        }
        let attempt = self.attempt;
        let shared = &self.shared;
        let outcome = Outcome::of(&result);
        let class = shared.classifier.classify(outcome);
        let status = outcome.status();
        tracing::debug!(
            http.request.resend_count = attempt - 1,
            http.response.status_code = status.map(|s| s.as_u16()),
            class = %class,
            "attempt finished"
        );
        let method = &self.method;
        let url_for_error = kept.map(Request::url).or(self.url.as_deref());
        if let Some(url) = url_for_error {
            shared.hook.emit_ref(&Event::Attempt {
                method,
                url,
                attempt,
                class,
                status,
            });
        }
        let next = decide(
            shared,
            &result,
            class,
            attempt,
            self.idempotent,
            kept.is_some(),
            self.deadline,
            &mut self.prev_delay,
            &mut self.rng,
        );
        // The copies a hedging stage below sent count as attempts of the call, for the
        // response's `attempts()` and the error's.
        let sent = attempt.saturating_add(context::hedges());
        match next {
            Next::Return => Step::Done(finish(result, sent, url_for_error, self.last_sent)),
            Next::GiveUp(reason) => {
                tracing::debug!(attempts = attempt, class = %class, reason = ?reason, "not retrying");
                if let Some(url) = url_for_error {
                    shared.hook.emit_ref(&Event::GaveUp {
                        method,
                        url,
                        attempts: attempt,
                        class,
                        reason,
                    });
                }
                Step::Done(finish(result, sent, url_for_error, self.last_sent))
            }
            Next::Sleep {
                delay,
                from_retry_after,
                withdrawal,
            } => {
                self.reserved = withdrawal;
                tracing::debug!(
                    http.request.resend_count = attempt,
                    class = %class,
                    delay_ms = delay.as_millis() as u64,
                    from_retry_after,
                    "retrying"
                );
                if let Some(url) = url_for_error {
                    shared.hook.emit_ref(&Event::Retry {
                        method,
                        url,
                        attempt: attempt + 1,
                        class,
                        delay,
                        from_retry_after,
                    });
                }
                // The failed response (and its connection) is released here, before sleeping.
                Step::Sleep(delay)
            }
            Next::WaitForCircuit { delay, withdrawal } => {
                self.reserved = withdrawal;
                // Nothing was sent: the next try takes this one's number.
                self.attempt -= 1;
                tracing::debug!(
                    http.request.resend_count = self.attempt,
                    delay_ms = delay.as_millis() as u64,
                    "the circuit turned the retry away; waiting for it"
                );
                if let Some(url) = url_for_error {
                    shared.hook.emit_ref(&Event::Retry {
                        method,
                        url,
                        attempt: self.attempt + 1,
                        class,
                        delay,
                        from_retry_after: true,
                    });
                }
                Step::Sleep(delay)
            }
            Next::SleepToDeadline(deadline) => {
                tracing::debug!(
                    attempts = attempt,
                    class = %class,
                    "the backoff reaches the total deadline; waiting for it"
                );
                let mut e = Error::timeout(TimeoutKind::Total).with_attempts(attempt);
                if let Some(url) = url_for_error {
                    e.set_url_if_missing(url);
                }
                Step::SleepToDeadline(deadline, e)
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
    prev_delay: &mut u64,
    rng: &mut Option<fastrand::Rng>,
) -> Next {
    let cfg = &shared.cfg;
    if class == FailureClass::Rejected {
        return wait_for_circuit(shared, result, attempt, can_resend, deadline, rng);
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
    // The deadline has come: nothing can be retried (the total timeout answers for it). Read
    // the clock only for an outcome that could be retried.
    if !retryable
        || matches!(result, Err(e) if e.timeout_kind() == Some(TimeoutKind::Total))
        || past(deadline, Duration::ZERO)
    {
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
            let d = cfg
                .backoff
                .delay(attempt, Duration::from_nanos(*prev_delay), rng);
            *prev_delay = nanos(d);
            (d, false)
        }
    };
    if let Some(dl) = deadline.filter(|_| past(deadline, delay)) {
        return Next::SleepToDeadline(dl);
    }
    let withdrawal = match withdraw(shared) {
        Ok(w) => w,
        Err(reason) => return Next::GiveUp(reason),
    };
    Next::Sleep {
        delay,
        from_retry_after,
        withdrawal,
    }
}

/// What follows a rejection by another stage: a retry the circuit breaker turned away waits
/// for it (see [`Retry::no_circuit_wait`]); anything else is returned.
fn wait_for_circuit(
    shared: &Shared,
    result: &Result<Response, Error>,
    attempt: u32,
    can_resend: bool,
    deadline: Option<Instant>,
    rng: &mut Option<fastrand::Rng>,
) -> Next {
    let cfg = &shared.cfg;
    let hint = match result {
        Err(e) if e.kind() == ErrorKind::CircuitOpen => e.retry_after(),
        _ => None,
    };
    // Not the circuit, or turned away for good (an isolated breaker gives no hint).
    let Some(hint) = hint else {
        return Next::Return;
    };
    // A first attempt turned away fails fast; so does a call without a deadline (it could wait
    // for ever), and one that was a probe itself (it saw the host still failing: the breaker
    // opened again on its attempt).
    if !cfg.circuit_wait || attempt <= 1 || !can_resend || deadline.is_none() || context::probed() {
        return Next::Return;
    }
    if hint > cfg.max_retry_after {
        return Next::GiveUp(GiveUpReason::RetryAfterTooLong);
    }
    if past(deadline, hint) {
        return Next::GiveUp(GiveUpReason::RetryAfterPastDeadline);
    }
    // Calls turned away together wake apart: up to one backoff base later.
    let rng = rng.get_or_insert_with(fastrand::Rng::new);
    let spread = Duration::from_nanos(rng.u64(0..=nanos(cfg.backoff.base)));
    let delay = Some(hint.saturating_add(spread))
        .filter(|&d| !past(deadline, d))
        .unwrap_or(hint);
    match withdraw(shared) {
        Ok(withdrawal) => Next::WaitForCircuit { delay, withdrawal },
        Err(reason) => Next::GiveUp(reason),
    }
}

/// Takes a retry from the budget, if there is one: `Ok(None)` without a budget.
fn withdraw(shared: &Shared) -> Result<Option<Withdrawal>, GiveUpReason> {
    match &shared.budget {
        Some(b) => b
            .try_withdraw(shared.now())
            .map(Some)
            .ok_or(GiveUpReason::BudgetExhausted),
        None => Ok(None),
    }
}

/// `d` in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether `delay` from now reaches the deadline.
fn past(deadline: Option<Instant>, delay: Duration) -> bool {
    deadline.is_some_and(|dl| Instant::now().checked_add(delay).is_none_or(|at| at >= dl))
}

fn finish(
    result: Result<Response, Error>,
    attempts: u32,
    url: Option<&Url>,
    last_sent: Option<Instant>,
) -> Result<Response, Error> {
    match result {
        Ok(mut r) => {
            // 1 is what `ResponseExt::attempts` says when there is no record: the success path
            // at the first try inserts nothing.
            if attempts > 1 {
                r.extensions_mut().insert(Attempts(attempts));
                // A hedge that won marked when it was sent: that is when this answer was asked.
                if let Some(at) = last_sent {
                    if r.extensions().get::<FinalAttemptSent>().is_none() {
                        r.extensions_mut().insert(FinalAttemptSent(at));
                    }
                }
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

/// A copy of a request palisade's `RequestBuilder` built (reqwest's builder gives a request no
/// extension but its timeout), made as reqwest's `try_clone` makes one but without the
/// extension map it builds only to replace it: three allocations fewer per request that may be
/// retried. A request with a body is copied with `try_clone`, the only way to share its bytes
/// (reqwest's `Body::try_clone` is its own).
fn copy_built(req: &Request) -> Option<Request> {
    if req.body().is_some() {
        return req.try_clone();
    }
    let mut copy = Request::new(req.method().clone(), req.url().clone());
    *copy.headers_mut() = req.headers().clone();
    *copy.version_mut() = req.version();
    if let Some(t) = req.timeout() {
        *copy.timeout_mut() = Some(*t);
    }
    Some(copy)
}

/// The `Idempotency-Key` header name, for callers that set it by hand.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Transport;

    /// A copy made for a retry of a request palisade's builder built is the request, as
    /// reqwest's `try_clone` makes it.
    #[test]
    fn a_built_request_is_copied_as_try_clone_copies_it() {
        let client = reqwest::Client::new();
        for body in [None, Some("b")] {
            let mut rb = client
                .put("http://a.test/x?y=1")
                .header("x-a", "1")
                .bearer_auth("t")
                .version(http::Version::HTTP_2)
                .timeout(Duration::from_secs(3));
            if let Some(b) = body {
                rb = rb.body(b);
            }
            let req = rb.build().unwrap();
            let (a, b) = (copy_built(&req).unwrap(), req.try_clone().unwrap());
            assert_eq!(a.method(), b.method());
            assert_eq!(a.url(), b.url());
            assert_eq!(a.headers(), b.headers());
            assert!(a.headers()["authorization"].is_sensitive());
            assert_eq!(a.version(), b.version());
            assert_eq!(a.timeout(), b.timeout());
            let bytes = |r: &Request| r.body().and_then(|b| b.as_bytes()).map(<[u8]>::to_vec);
            assert_eq!(bytes(&a), bytes(&b));
        }
    }

    /// The loop's future is boxed for every request: it should stay small enough for the
    /// allocator's per-thread cache (glibc's takes blocks up to 1,032 bytes). It was 2,064
    /// bytes before the loop was arranged to keep only what it needs across its awaits.
    #[test]
    fn the_boxed_loop_stays_small() {
        use tower::util::Either;
        // The stages a client's retry loop holds, as `ClientBuilder::build` makes them (the
        // hedging stage's service, off, is 8 bytes larger than the breaker's: the loop keeps
        // its previous backoff delay in 8 bytes rather than a `Duration`'s 16 to stay within).
        let layer = RetryLayer::new(Retry::default()).unwrap();
        let attempt: crate::client::AttemptStage =
            Either::Right(Transport::Reqwest(reqwest::Client::new()));
        #[cfg(feature = "metrics")]
        let attempt = crate::metrics::Measured::new(attempt, None);
        let svc: crate::client::HedgeStage =
            crate::hedge::HedgeService::off(Either::Right(Either::Right(attempt)));
        let req = Request::new(Method::GET, "http://a.test/".parse().unwrap());
        let fut = run(svc, layer.shared.clone(), req, false);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1_024, "the retry loop's future is {size} bytes");
    }
}
