//! [`ResponseExt`]: what the pipeline did for a response.

/// How many attempts produced a response; kept in the response's extensions by the retry
/// stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempts(pub(crate) u32);

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
    fn attempts(&self) -> u32;
}

impl ResponseExt for reqwest::Response {
    fn attempts(&self) -> u32 {
        self.extensions().get::<Attempts>().map_or(1, |a| a.0)
    }
}
