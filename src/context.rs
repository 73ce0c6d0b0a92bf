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

/// Bounds the transport's own per-request timeout by what is left of the deadline, so that
/// reading the body after palisade returns the response cannot outlive the total timeout.
pub(crate) fn bound_transport_timeout(req: &mut reqwest::Request, deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let t = req.timeout_mut();
        *t = Some(match *t {
            Some(cur) if cur < left => cur,
            _ => left.max(Duration::from_millis(1)),
        });
    }
}
