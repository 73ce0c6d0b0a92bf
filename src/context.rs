//! The per-request context the stages share: the total deadline and the attempt count.
//!
//! `reqwest::Request` keeps its extensions private, so the context travels in a tokio task-local
//! set by the total-timeout stage around the rest of the pipeline. A stage that finds no context
//! (used without a total timeout, or across a task boundary such as `tower::buffer`) works
//! without a deadline.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct RequestContext {
    pub(crate) deadline: Instant,
    pub(crate) attempts: Cell<u32>,
}

impl RequestContext {
    pub(crate) fn new(deadline: Instant) -> Self {
        RequestContext {
            deadline,
            attempts: Cell::new(0),
        }
    }
}

tokio::task_local! {
    pub(crate) static CONTEXT: RequestContext;
}

/// The deadline of the request being processed, if a total timeout set one.
pub(crate) fn deadline() -> Option<Instant> {
    CONTEXT.try_with(|c| c.deadline).ok()
}

/// Records that attempt `n` is starting.
pub(crate) fn record_attempt(n: u32) {
    let _ = CONTEXT.try_with(|c| c.attempts.set(n));
}

/// Narrows a per-request transport timeout (reqwest's `Request::timeout`, which covers reading
/// the body too) to what is left of the deadline, so that a retry's copy cannot outlive it.
///
/// A request without one is left alone: in reqwest a per-request timeout *replaces* the
/// client's `timeout`, so setting one here would silently drop the client's.
pub(crate) fn bound_transport_timeout(req: &mut reqwest::Request, deadline: Option<Instant>) {
    if let (Some(deadline), Some(cur)) = (deadline, req.timeout_mut().as_mut()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < *cur {
            *cur = left.max(Duration::from_millis(1));
        }
    }
}
