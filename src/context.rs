//! The per-request context the stages share: the total deadline and the attempt count.
//!
//! `reqwest::Request` keeps its extensions private, so the context travels in a tokio task-local
//! that the total-timeout stage sets around the rest of the pipeline, both while the stages
//! below are called and while their futures are polled. A stage that finds no context works
//! without a deadline: used without a total timeout, or under a layer of the user's that moves
//! the call to another task (`tokio::spawn`): such a call does not see the deadline, and keeps
//! running when the caller's request has timed out.
//!
//! A custom transport is called and polled under a detached context, so a transport that sends
//! through another palisade client (to fetch a token, say) neither sees this request's deadline
//! nor counts its attempts as this request's.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct RequestContext {
    pub(crate) deadline: Option<Instant>,
    /// The retry stage's attempts (each possibly hedged: see `hedges`).
    pub(crate) attempts: Cell<u32>,
    /// The copies the hedging stage sent besides those attempts (below `PROBED`), and whether
    /// a circuit breaker admitted one of the request's attempts as a probe (`PROBED`): one
    /// word, as a context sits in futures that have no byte to spare.
    pub(crate) hedges: Cell<u32>,
    /// The earliest instant by which a stage below promised, as it went pending, to wake the
    /// request's task (its own timer is armed for it): the total timeout need not arm a timer
    /// of its own while one is promised before the deadline. Cleared before each poll.
    pub(crate) wake_by: Cell<Option<Instant>>,
}

/// The bit of `RequestContext::hedges` that says an attempt was a probe.
const PROBED: u32 = 1 << 31;

impl RequestContext {
    /// The total-timeout stage calls the stage below it at once: that is attempt 1, unless a
    /// retry stage below records otherwise.
    pub(crate) fn new(deadline: Option<Instant>) -> Self {
        RequestContext {
            deadline,
            attempts: Cell::new(1),
            hedges: Cell::new(0),
            wake_by: Cell::new(None),
        }
    }

    /// A context with no deadline, for code that must not see the request's.
    pub(crate) fn detached() -> Self {
        RequestContext::new(None)
    }
}

tokio::task_local! {
    pub(crate) static CONTEXT: RequestContext;
}

std::thread_local! {
    /// Set by `RequestBuilder::send` for the request it hands `Client::execute`.
    static BUILT: Cell<bool> = const { Cell::new(false) };
    /// Set by `Client::execute` while it calls the pipeline with a request `BUILT` marked.
    static CALLING_BUILT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (`Client::execute`) for a request palisade's `RequestBuilder` built: see
/// [`calling_built`].
pub(crate) fn built<R>(f: impl FnOnce() -> R) -> R {
    BUILT.with(|b| b.set(true));
    let r = f();
    BUILT.with(|b| b.set(false));
    r
}

/// Calls the pipeline (`f`), letting the retry stage know whether the request is one
/// palisade's `RequestBuilder` built (as [`built`] marked it).
pub(crate) fn calling<R>(f: impl FnOnce() -> R) -> R {
    let built = BUILT.with(|b| b.replace(false));
    CALLING_BUILT.with(|c| c.set(built));
    let r = f();
    CALLING_BUILT.with(|c| c.set(false));
    r
}

/// Whether the request the retry stage is called with now is one palisade's `RequestBuilder`
/// built: reqwest's builder gives a request no extension but its timeout, so a copy of it may
/// be made without reqwest's `try_clone`, which builds an extension map to throw away (three
/// allocations). Only the first stage to ask gets `true`, and only while `Client::execute`
/// calls the pipeline for such a request; anything else (a request given to `execute`, from
/// an `http::Request` with extensions of its own, say) is copied with `try_clone`.
pub(crate) fn take_built() -> bool {
    CALLING_BUILT.with(|c| c.replace(false))
}

/// The deadline of the request being processed, if a total timeout set one.
pub(crate) fn deadline() -> Option<Instant> {
    CONTEXT.try_with(|c| c.deadline).ok().flatten()
}

/// Records that attempt `n` is starting.
pub(crate) fn record_attempt(n: u32) {
    let _ = CONTEXT.try_with(|c| c.attempts.set(n));
}

/// The attempts made so far, hedges included (0 outside a request's context).
pub(crate) fn attempts() -> u32 {
    CONTEXT
        .try_with(|c| c.attempts.get().saturating_add(c.hedges.get() & !PROBED))
        .unwrap_or(0)
}

/// Records that a circuit breaker admitted an attempt of the request as a probe.
pub(crate) fn record_probe() {
    let _ = CONTEXT.try_with(|c| c.hedges.set(c.hedges.get() | PROBED));
}

/// Whether a circuit breaker admitted an attempt of the request as a probe (`false` outside a
/// context).
pub(crate) fn probed() -> bool {
    CONTEXT
        .try_with(|c| c.hedges.get() & PROBED != 0)
        .unwrap_or(false)
}

/// Records that the hedging stage sent one more copy of the request.
pub(crate) fn record_hedge() {
    let _ = CONTEXT.try_with(|c| {
        let h = c.hedges.get();
        c.hedges
            .set((h & PROBED) | ((h & !PROBED) + 1).min(PROBED - 1));
    });
}

/// The copies the hedging stage has sent so far for this request (0 outside a context).
pub(crate) fn hedges() -> u32 {
    CONTEXT.try_with(|c| c.hedges.get() & !PROBED).unwrap_or(0)
}

/// Promises that the request's task is woken by `at` at the latest: a stage calls it as it goes
/// pending with its own timer armed for `at` (the attempt timeout, a backoff sleep, a wait for a
/// rate-limit token), so that the total timeout arms no timer of its own while `at` comes before
/// the deadline. Only a promise kept by a timer may be made, and the future that made it must
/// still be polled when the poll returns: the total timeout relies on it to be polled again. (A
/// stage that races futures and drops one within a poll, as hedging does, must not let the
/// dropped one's promise stand: see `hedge::future`.)
pub(crate) fn promise_wake(at: Instant) {
    let _ = CONTEXT.try_with(|c| {
        let by = c.wake_by.get().map_or(at, |t| t.min(at));
        c.wake_by.set(Some(by));
    });
}

/// Takes the promise made since the last call (see [`promise_wake`]).
pub(crate) fn take_wake_by() -> Option<Instant> {
    CONTEXT.try_with(|c| c.wake_by.take()).ok().flatten()
}

/// Narrows a per-request transport timeout (reqwest's `Request::timeout`, which covers reading
/// the body too) to what is left of the deadline, so that a retry's copy cannot outlive it.
///
/// A request without one is left alone: in reqwest a per-request timeout *replaces* the
/// client's `timeout`, so setting one here would silently drop the client's.
pub(crate) fn bound_transport_timeout(req: &mut reqwest::Request, deadline: Option<Instant>) {
    // `timeout_mut` allocates reqwest's extension map even to read it: look first.
    if deadline.is_none() || req.timeout().is_none() {
        return;
    }
    if let (Some(deadline), Some(cur)) = (deadline, req.timeout_mut().as_mut()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < *cur {
            // At least 1 ms (reqwest's zero would fail at once), never above the caller's own.
            *cur = left.max(Duration::from_millis(1)).min(*cur);
        }
    }
}

pin_project_lite::pin_project! {
    /// A sleep that promises, each time it goes pending, to wake the task when it ends (see
    /// [`promise_wake`]).
    pub(crate) struct PromisedSleep {
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl PromisedSleep {
    pub(crate) fn until(at: Instant) -> Self {
        PromisedSleep {
            sleep: tokio::time::sleep_until(at),
        }
    }
}

impl std::future::Future for PromisedSleep {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let mut sleep = self.project().sleep;
        let polled = sleep.as_mut().poll(cx);
        if polled.is_pending() {
            promise_wake(sleep.deadline());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(timeout: Duration) -> reqwest::Request {
        let mut req = reqwest::Request::new(
            http::Method::GET,
            url::Url::parse("http://h/").expect("valid URL"),
        );
        *req.timeout_mut() = Some(timeout);
        req
    }

    #[test]
    fn only_the_call_of_a_built_request_is_marked_built_and_only_once() {
        // `RequestBuilder::send` → `Client::execute` → the retry stage's `call`.
        assert!(built(|| calling(take_built)));
        assert!(built(|| calling(|| (take_built(), take_built()))) == (true, false));
        // A request given to `execute` directly.
        assert!(!calling(take_built));
        // Outside a call, nothing is marked, before or after.
        assert!(!take_built());
        built(|| ());
        assert!(!calling(take_built), "a mark does not outlive its `send`");
        // A request sent from inside the call of another (a key function that sends, say) takes
        // the mark with it: the outer one is copied the safe way.
        let outer = built(|| {
            calling(|| {
                let inner = calling(take_built);
                (inner, take_built())
            })
        });
        assert_eq!(outer, (false, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_transport_timeout_is_narrowed_to_the_deadline_but_never_raised() {
        let now = Instant::now();
        let mut req = request(Duration::from_secs(5));
        bound_transport_timeout(&mut req, Some(now + Duration::from_secs(2)));
        assert_eq!(req.timeout(), Some(&Duration::from_secs(2)));
        // Near the deadline: at least 1 ms, so that reqwest does not fail at once...
        let mut req = request(Duration::from_secs(5));
        bound_transport_timeout(&mut req, Some(now));
        assert_eq!(req.timeout(), Some(&Duration::from_millis(1)));
        // ...but never more than the caller's own.
        let mut req = request(Duration::from_micros(500));
        bound_transport_timeout(&mut req, Some(now + Duration::from_micros(400)));
        assert_eq!(req.timeout(), Some(&Duration::from_micros(500)));
        // No timeout of its own: left alone (it would replace the client's).
        let mut req =
            reqwest::Request::new(http::Method::GET, url::Url::parse("http://h/").unwrap());
        bound_transport_timeout(&mut req, Some(now));
        assert_eq!(req.timeout(), None);
    }
}
