//! [`ResponseExt`]: what the pipeline did for a response.

use crate::fallback::FallbackInfo;

/// How many attempts produced a response; kept in the response's extensions by the retry
/// stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempts(pub(crate) u32);

/// When the attempt that produced a response was sent; kept beside [`Attempts`] by the retry
/// stage when that was not the first attempt, so that the fallback cache counts a stored
/// response's age from the request that produced it (RFC 9111 §4.2.3 `request_time`), not
/// from the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FinalAttemptSent(pub(crate) tokio::time::Instant);

mod sealed {
    pub trait Sealed {}
    impl Sealed for reqwest::Response {}
}

/// What the pipeline did to produce a `reqwest::Response`.
///
/// ```
/// use palisade::ResponseExt;
/// # async fn run(client: palisade::Client) -> Result<(), palisade::Error> {
/// let resp = client.get("http://localhost/").send().await?;
/// if resp.attempts() > 1 {
///     println!("took {} attempts", resp.attempts());
/// }
/// # Ok(()) }
/// ```
pub trait ResponseExt: sealed::Sealed {
    /// How many attempts the pipeline made, the one that produced this response included: 1
    /// when it came at the first try (or when no retry stage was in the pipeline).
    ///
    /// Every copy sent is an attempt: with [hedging](crate::hedge), the hedges count with the
    /// retries (a first attempt hedged once and then retried once makes 3), whichever copy
    /// won. The retry stage's [`Event::Attempt`](crate::Event::Attempt) numbers its own
    /// attempts, each hedged race once.
    ///
    /// For a response served by the [fallback cache](crate::fallback), the attempts of the
    /// request that failed, as its [`Error::attempts`](crate::Error::attempts) would have
    /// said.
    fn attempts(&self) -> u32;

    /// Set when the [fallback cache](crate::fallback) served this response in place of a
    /// failure: how old it is and why it was served.
    ///
    /// ```
    /// use palisade::ResponseExt;
    /// # async fn run(client: palisade::Client) -> Result<(), palisade::Error> {
    /// let resp = client.get("http://localhost/").send().await?;
    /// if let Some(fb) = resp.fallback() {
    ///     println!("stale by {:?}, after {}", fb.age(), fb.reason());
    /// }
    /// # Ok(()) }
    /// ```
    fn fallback(&self) -> Option<FallbackInfo>;
}

impl ResponseExt for reqwest::Response {
    fn attempts(&self) -> u32 {
        self.extensions().get::<Attempts>().map_or(1, |a| a.0)
    }

    fn fallback(&self) -> Option<FallbackInfo> {
        self.extensions().get::<FallbackInfo>().copied()
    }
}

/// When the call left a rate limiter that made it wait (for a token, or for a pushback pause
/// to end), on tokio's clock; kept in the response's extensions by the rate-limit stage, so
/// that the circuit breaker above times a slow call from when it left for the host, not from
/// when it started waiting. Absent when the call did not wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeftLimiterAt(pub(crate) tokio::time::Instant);
