//! Bulkhead: at most N calls in flight, the rest wait in a bounded queue or are rejected.
//!
//! Why: a dependency that slows down holds every call sent to it for longer, so the calls in
//! flight pile up, and with them sockets, memory and the tasks waiting on them, until the whole
//! application is stuck behind one slow host. A bulkhead (named after a ship's watertight
//! compartments) caps how many calls may be in flight at once and refuses the rest quickly,
//! with [`ErrorKind::BulkheadFull`], instead of letting them queue without bound. With
//! [`per_host`](Bulkhead::per_host), each host has its own cap, so one slow host cannot take
//! the room the others need.
//!
//! How:
//!
//! - A call takes a permit before it is passed to the stage below and holds it until that
//!   stage answers with the response's head, fails, or the caller drops the future: every path
//!   gives it back. Reading the response's body afterwards is not counted.
//! - When no permit is free, the call waits in a FIFO queue of at most
//!   [`max_queue`](Bulkhead::max_queue) calls (default 0: rejected at once), for at most
//!   [`queue_timeout`](Bulkhead::queue_timeout) and never past the request's total deadline. A
//!   call that finds the queue full, or that is still waiting when its time is up, is rejected
//!   without reaching the stage below: [`Error::is_bulkhead_full`] is true and
//!   [`Error::attempts`] is 0. Each rejection emits [`Event::Rejected`] and a `debug` tracing
//!   event with the reason.
//! - The stage sits outside the retry stage in the [pipeline](crate#the-pipeline): one permit
//!   per request, held across all its attempts and backoff sleeps, so retries cannot push the
//!   number of requests in flight past the cap.
//! - Per host, the key is `host:port` (the scheme's default port when the URL gives none). A
//!   host's state is kept only while it has calls in flight or queued, and at most
//!   [`max_hosts`](Bulkhead::max_hosts) hosts at once: a call to a further host is rejected
//!   until one of them is idle.
//!
//! [`BulkheadLayer::load`] and [`BulkheadLayer::load_for`] tell how many calls are in flight and
//! queued.

mod future;
mod state;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::{Request, Response};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;
use url::Url;

pub use self::future::BulkheadFuture;
pub use self::state::Load;
use self::state::{Permit, State};
use crate::context;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::event::{Event, Hook};
use crate::host::host_key;

/// The bulkhead's configuration.
///
/// There is no default limit: how many calls a dependency can take at once is something only
/// the application knows, so [`Bulkhead::new`] asks for it. Defaults of the rest: no queue (a
/// call that finds every permit taken is rejected at once), no queue timeout of its own (a
/// queued call waits until the total deadline), one bulkhead for all hosts, at most 10,000
/// hosts tracked at once when per host.
///
/// ```
/// use std::time::Duration;
/// use palisade::bulkhead::{Bulkhead, BulkheadLayer};
///
/// let bulkhead = Bulkhead::new(32)
///     .max_queue(64)
///     .queue_timeout(Duration::from_millis(500))
///     .per_host();
/// let layer = BulkheadLayer::new(bulkhead)?;
/// # let _ = layer;
/// # assert_eq!(
/// #     BulkheadLayer::new(Bulkhead::new(0)).unwrap_err().field(),
/// #     "bulkhead.max_concurrent"
/// # );
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a policy does nothing until given to a client or a layer"]
pub struct Bulkhead {
    max_concurrent: usize,
    max_queue: usize,
    queue_timeout: Option<Duration>,
    per_host: bool,
    max_hosts: usize,
}

impl Bulkhead {
    /// A bulkhead that lets at most `max_concurrent` calls be in flight at once (per host with
    /// [`per_host`](Bulkhead::per_host)). It must be at least 1.
    pub fn new(max_concurrent: usize) -> Self {
        Bulkhead {
            max_concurrent,
            max_queue: 0,
            queue_timeout: None,
            per_host: false,
            max_hosts: 10_000,
        }
    }

    /// At most `max_concurrent` calls in flight at once. Set by [`Bulkhead::new`]; must be at
    /// least 1.
    pub fn max_concurrent(mut self, max_concurrent: usize) -> Self {
        self.max_concurrent = max_concurrent;
        self
    }

    /// How many calls may wait for a permit (per host with [`per_host`](Bulkhead::per_host)).
    /// Default 0: a call that finds every permit taken is rejected at once, which is what a
    /// bulkhead is for; a queue smooths short bursts at the cost of their latency.
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.max_queue = max_queue;
        self
    }

    /// The longest a call waits in the queue before it is rejected. Default: no bound of its
    /// own, the request's total deadline bounds the wait (without a total timeout above the
    /// stage a queued call waits until a permit is free). A total deadline that comes first
    /// always cuts the wait short. Must be above zero: for no wait at all, leave
    /// [`max_queue`](Bulkhead::max_queue) at 0.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = Some(timeout);
        self
    }

    /// One bulkhead per host (`host:port`) instead of one for all: each host may have
    /// `max_concurrent` calls in flight and `max_queue` waiting. Default: one for all hosts.
    pub fn per_host(mut self) -> Self {
        self.per_host = true;
        self
    }

    /// With [`per_host`](Bulkhead::per_host), the most hosts with calls in flight or queued at
    /// once. A host's state is removed as soon as it has neither; a call to a new host when
    /// this many are busy is rejected. Default 10,000; must be at least 1.
    pub fn max_hosts(mut self, max_hosts: usize) -> Self {
        self.max_hosts = max_hosts;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 {
            return Err(ConfigError::new(
                "bulkhead.max_concurrent",
                "must be at least 1",
            ));
        }
        let max = tokio::sync::Semaphore::MAX_PERMITS;
        if self.max_concurrent > max {
            return Err(ConfigError::new(
                "bulkhead.max_concurrent",
                format!("must be at most {max}"),
            ));
        }
        if self.queue_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                "bulkhead.queue_timeout",
                "must be above zero (for no wait, leave max_queue at 0)",
            ));
        }
        if self.max_hosts == 0 {
            return Err(ConfigError::new("bulkhead.max_hosts", "must be at least 1"));
        }
        Ok(())
    }
}

/// A [`Layer`] that wraps a service in [`BulkheadService`]. Every service it makes, and every
/// clone of it, shares one set of permits and queues.
#[derive(Clone)]
pub struct BulkheadLayer {
    shared: Arc<Shared>,
    hook: Hook,
}

struct Shared {
    cfg: Bulkhead,
    state: Arc<State>,
}

impl BulkheadLayer {
    /// A layer with the given configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when `max_concurrent` is 0 or above tokio's
    /// `Semaphore::MAX_PERMITS`, `queue_timeout` is zero, or `max_hosts` is 0.
    pub fn new(cfg: Bulkhead) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self::from_parts(cfg, Hook::default()))
    }

    /// A layer from a configuration the caller has validated.
    pub(crate) fn from_parts(cfg: Bulkhead, hook: Hook) -> Self {
        let state = Arc::new(State::new(
            cfg.max_concurrent,
            cfg.max_queue,
            cfg.per_host,
            cfg.max_hosts,
        ));
        BulkheadLayer {
            shared: Arc::new(Shared { cfg, state }),
            hook,
        }
    }

    /// Calls `hook` with [`Event::Rejected`] for every call the bulkhead rejects. The layer
    /// keeps its permits and queues: services made before and after share them.
    pub fn on_event<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.hook = Hook::new(hook);
        self
    }

    /// The calls in flight and queued, summed over every host.
    pub fn load(&self) -> Load {
        self.shared.state.load()
    }

    /// The calls in flight and queued for the host of `url` (its `host:port`) with
    /// [`per_host`](Bulkhead::per_host); for the whole bulkhead otherwise.
    pub fn load_for(&self, url: &Url) -> Load {
        if self.shared.state.is_per_host() {
            self.shared.state.load_of(&host_key(url))
        } else {
            self.shared.state.load()
        }
    }

    /// How many hosts the per-host bulkhead keeps state for: those with calls in flight or
    /// queued. 1 for a bulkhead shared by all hosts.
    pub fn tracked_hosts(&self) -> usize {
        self.shared.state.keys()
    }

    /// A read-only view of the bulkhead's load, for [`Client::health`](crate::Client::health).
    pub(crate) fn view(&self) -> BulkheadView {
        BulkheadView {
            state: self.shared.state.clone(),
        }
    }
}

/// A read-only view of a bulkhead's load, for [`Client::health`](crate::Client::health).
#[derive(Clone)]
pub(crate) struct BulkheadView {
    state: Arc<State>,
}

impl BulkheadView {
    /// The load of a bulkhead shared by all hosts; `None` per host.
    pub(crate) fn global(&self) -> Option<Load> {
        self.state.global_load()
    }

    /// Calls `f` with each host that has calls in flight or queued (per host only).
    pub(crate) fn hosts(&self, f: impl FnMut(&str, Load)) {
        self.state.for_each_host(f);
    }

    pub(crate) fn is_per_host(&self) -> bool {
        self.state.is_per_host()
    }
}

impl fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("policy", &self.shared.cfg)
            .field("load", &self.load())
            .field("hook", &self.hook)
            .finish()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            shared: self.shared.clone(),
            hook: self.hook.clone(),
        }
    }
}

/// Caps the calls in flight as the [module docs](self) describe. Made by [`BulkheadLayer`].
#[derive(Clone)]
pub struct BulkheadService<S> {
    inner: S,
    shared: Arc<Shared>,
    hook: Hook,
}

crate::inner_accessors!(BulkheadService);

impl<S: fmt::Debug> fmt::Debug for BulkheadService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadService")
            .field("inner", &self.inner)
            .field("policy", &self.shared.cfg)
            .finish()
    }
}

/// Reports a rejection and makes its error.
fn reject(hook: &Hook, key: &str, url: &Url, reason: &'static str) -> Error {
    tracing::debug!(bulkhead.key = key, reason, "bulkhead full: call rejected");
    hook.emit_ref(&Event::Rejected {
        kind: ErrorKind::BulkheadFull,
        key,
        retry_after: None,
    });
    let mut e = Error::rejected(ErrorKind::BulkheadFull, None).with_attempts(0);
    e.set_url_if_missing(url);
    e
}

impl<S> Service<Request> for BulkheadService<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = BulkheadFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let state = &self.shared.state;
        let key = if state.is_per_host() {
            host_key(req.url())
        } else {
            String::new()
        };
        let lease = match state.lease(key) {
            Ok(lease) => lease,
            Err(key) => {
                let e = reject(&self.hook, &key, req.url(), "too many hosts busy");
                return BulkheadFuture::rejected(e);
            }
        };
        // Fast path: a permit is free (and nobody is queued for it), the call goes through now.
        if let Some(permit) = lease.try_acquire() {
            return BulkheadFuture::running(
                self.inner.call(req),
                Permit::new(permit, lease, &self.hook),
            );
        }
        let Some(place) = lease.enqueue() else {
            let e = reject(&self.hook, lease.key(), req.url(), "queue full");
            return BulkheadFuture::rejected(e);
        };
        let now = Instant::now();
        let mut until = self
            .shared
            .cfg
            .queue_timeout
            .and_then(|t| now.checked_add(t));
        if let Some(deadline) = context::deadline() {
            until = Some(until.map_or(deadline, |u| u.min(deadline)));
        }
        if until.is_some_and(|u| u <= now) {
            let e = reject(&self.hook, lease.key(), req.url(), "total deadline passed");
            return BulkheadFuture::rejected(e);
        }
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let hook = self.hook.clone();
        let sem = lease.semaphore();
        BulkheadFuture::queued(Box::pin(async move {
            let acquired = match until {
                Some(at) => tokio::time::timeout_at(at, sem.acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok),
                // The semaphore is never closed.
                None => sem.acquire_owned().await.ok(),
            };
            drop(place);
            match acquired {
                Some(permit) => Ok((svc.call(req), Permit::new(permit, lease, &hook))),
                None => Err(reject(&hook, lease.key(), req.url(), "queue timeout")),
            }
        }))
    }
}
