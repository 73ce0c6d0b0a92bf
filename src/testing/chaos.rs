//! Fault injection: a transport layer that makes attempts fail the way real ones do, at a rate,
//! for the requests you choose. Seeded, so a test sees the same faults on every run; switchable
//! and tunable at run time through a [`ChaosHandle`], so staging can rehearse an outage.
//!
//! [`ChaosLayer`] wraps the *transport*, below palisade's pipeline, where real faults happen:
//! give [`ClientBuilder::transport`](crate::ClientBuilder::transport) a `ChaosLayer` over a
//! `reqwest::Client`, a cassette replayer or a test double. Every attempt, retries included,
//! passes through it and is drawn for again, and every fault reaches the pipeline as its real
//! counterpart would, so the retry stage, the circuit breaker and the rate limiter act on it as
//! they would in an outage.
//!
//! ```
//! use std::time::Duration;
//! use palisade::testing::chaos::{Chaos, ChaosLayer, Fault, Match, Rule};
//! use tower::Layer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let chaos = ChaosLayer::new(
//!     Chaos::new(42)
//!         // Every request under /v1 of this host answers 503: a server error.
//!         .rule(
//!             Rule::new(Fault::Status(503))
//!                 .name("v1-down")
//!                 .when(Match::host("api.example.com").path_prefix("/v1")),
//!         )
//!         // One request in ten of the others waits 20 ms longer.
//!         .rule(Rule::new(Fault::Latency(Duration::from_millis(20))).rate(0.1)),
//! )?;
//! let handle = chaos.handle();
//!
//! // Any transport: here one that answers 200 without a network.
//! let transport = tower::service_fn(|_req: reqwest::Request| async {
//!     Ok::<_, palisade::Error>(reqwest::Response::from(http::Response::new("ok")))
//! });
//! let client = palisade::Client::builder()
//!     .transport(chaos.layer(transport))
//!     .no_retry()
//!     .build()?;
//!
//! let resp = client.get("https://api.example.com/v1/users").send().await?;
//! assert_eq!(resp.status(), 503);
//! assert_eq!(handle.injected("v1-down"), Some(1));
//!
//! // Off: one atomic load per request, and nothing injected.
//! handle.disable();
//! let resp = client.get("https://api.example.com/v1/users").send().await?;
//! assert_eq!(resp.status(), 200);
//! # Ok(()) }
//! ```
//!
//! # Faults, and what palisade makes of them
//!
//! | [`Fault`] | what the layer does | what the pipeline sees |
//! |---|---|---|
//! | `Status(s)` | answers `s` with an empty body; the transport is not called | the status' class: 500, 502, 503, 504 are `ServerError` and retried |
//! | `TooManyRequests { retry_after }` | answers 429 with `Retry-After` in whole seconds (rounded up) | `Throttled`: the retry waits exactly that long, the rate limiter pauses the host |
//! | `Reset` | fails with an I/O `ConnectionReset`; the transport is not called | `Network` ([`ErrorKind::Transport`](crate::ErrorKind::Transport)), *not* a connect failure: retried for idempotent requests only, as a reset may come after the server took the request |
//! | `Hang` | never answers; the request is dropped at once, the transport not called | the attempt timeout ends it: [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) |
//! | `Latency(d)` | waits `d`, then sends the request on | `d` more; past the attempt timeout, a `Timeout` (and the request is never sent) |
//! | `CutBody { after }` | sends the request on; the response's body fails after `after` bytes | the head is the server's; reading the body fails as a truncated one does (`reqwest::Error::is_decode`, [`ErrorKind::Body`](crate::ErrorKind::Body)); `content_length()` still gives the announced length |
//!
//! A fault's response or error says that it was injected, without changing how it is
//! classed: see [`Injected`].
//!
//! A `Hang` with neither an attempt nor a total timeout hangs for ever, as a real hung server
//! does; its future holds nothing (the request is dropped when the fault is drawn), so dropping
//! it frees everything.
//!
//! # Rules, draws and determinism
//!
//! A [`Chaos`] holds [`Rule`]s, each a fault, a rate (from 0 to 1) and a [`Match`] predicate.
//! For each call into an enabled layer:
//!
//! 1. the call takes the next number `n` of the layer's sequence (0, 1, 2, … in the order of
//!    the calls into the layer, every clone of its services sharing one sequence; reset by
//!    [`ChaosHandle::reseed`]);
//! 2. rule `i` (in the order the rules were added) is given the number
//!    [`Chaos::draw`]`(seed, n, i)`, uniform in `[0, 1)`, whether or not it matches or an
//!    earlier rule fired;
//! 3. the first rule whose draw is below its rate and whose predicate matches the request
//!    fires; the others do nothing.
//!
//! So the same seed and the same sequence of calls give the same faults, exactly. A draw
//! depends only on the seed, the call's number and the rule's place: a predicate that does not
//! match, or a rate changed at run time, changes no other call's draws, and raising a rate only
//! adds faults (a call hit at rate 0.2 is hit at 0.5 too). With concurrent requests the numbers
//! go in the order the calls reach the layer's `call`; for a test to be exact, send its
//! requests one after another.
//!
//! # Run time, and cost
//!
//! A [`ChaosHandle`] ([`ChaosLayer::handle`]; cheap to clone, shared with every service the
//! layer makes) enables and disables the layer, changes a rule's rate, restarts the sequence
//! with a seed, and counts the faults injected per rule.
//!
//! No lock is taken on any path. Disabled, a call costs one atomic load before it goes to the
//! transport. Enabled, it takes its number with one atomic add, and each rule costs one atomic
//! load of its rate and one step of a small generator (`fastrand`'s, seeded per call: nothing
//! is shared but the counter); a fault costs one more atomic add for its count. A fault is
//! logged at `debug`, target `palisade::testing::chaos` (`chaos.rule`, `chaos.fault`,
//! `http.request.method` and `url.full` as palisade shows URLs: no userinfo, no query value;
//! never a header).
//!
//! # Where to put it
//!
//! Below the pipeline, as the transport: there each attempt meets the faults, as it would
//! meet real ones. As a layer of a tower stack of your own it works anywhere a
//! `Service<reqwest::Request, Response = reqwest::Response>` goes, but above the retry stage
//! it would fail whole requests rather than attempts.

mod body;
mod future;
mod handle;
mod predicate;

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use reqwest::{Request, Response, ResponseBuilderExt};
use tower_service::Service;

pub use self::future::ChaosFuture;
pub use self::handle::{ChaosHandle, RuleId, RuleStats};
pub use self::predicate::Match;
use crate::error::{ConfigError, Error};
use crate::redact::DisplayUrl;

/// A fault to inject. See the [module docs](self) for what each does and how palisade classes
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status and an empty body, without calling the transport. Must be a
    /// valid status code (100 to 999).
    Status(u16),
    /// Answer 429 with a `Retry-After` of this duration in whole seconds, rounded up (so a
    /// client never comes back earlier than it says), without calling the transport.
    TooManyRequests {
        /// The time the response asks the client to wait.
        retry_after: Duration,
    },
    /// Fail with an I/O error of kind `ConnectionReset`, as a connection reset by the peer
    /// after the request was written, without calling the transport.
    Reset,
    /// Never answer, as a hung server: the attempt timeout ends it. The request is dropped at
    /// once and the transport is not called.
    Hang,
    /// Wait this long, then send the request to the transport.
    Latency(Duration),
    /// Send the request to the transport, then cut the response's body after this many bytes:
    /// reading it fails with an I/O error of kind `UnexpectedEof` where the rest should be, as
    /// a connection closed before the message was complete. A body of `after` bytes or fewer
    /// is passed whole and fails instead of ending.
    CutBody {
        /// The bytes of the body that arrive before the cut.
        after: usize,
    },
}

impl Fault {
    /// The rule's name when it is given none.
    fn default_name(&self) -> String {
        match self {
            Fault::Status(s) => format!("status_{s}"),
            Fault::TooManyRequests { .. } => "too_many_requests".to_owned(),
            Fault::Reset => "reset".to_owned(),
            Fault::Hang => "hang".to_owned(),
            Fault::Latency(_) => "latency".to_owned(),
            Fault::CutBody { .. } => "cut_body".to_owned(),
        }
    }
}

/// One rule of a [`Chaos`]: a fault, the rate at which it fires and the requests it may hit.
///
/// ```
/// use std::time::Duration;
/// use http::Method;
/// use palisade::testing::chaos::{Fault, Match, Rule};
///
/// let rule = Rule::new(Fault::TooManyRequests { retry_after: Duration::from_secs(2) })
///     .name("throttle-posts")
///     .rate(0.05)
///     .when(Match::host("api.example.com").method(Method::POST));
/// # let _ = rule;
/// ```
#[derive(Debug, Clone)]
#[must_use = "a rule does nothing until given to a `Chaos`"]
pub struct Rule {
    name: Option<String>,
    fault: Fault,
    rate: f64,
    when: Match,
}

impl Rule {
    /// A rule that injects `fault` into every request (rate 1, [`Match::any`]), named after
    /// the fault (`status_503`, `too_many_requests`, `reset`, `hang`, `latency`, `cut_body`).
    pub fn new(fault: Fault) -> Self {
        Rule {
            name: None,
            fault,
            rate: 1.0,
            when: Match::any(),
        }
    }

    /// The rule's name, for [`ChaosHandle::set_rate`], [`ChaosHandle::injected`], logs and
    /// [`Injected::rule`]. Default: the fault's (see [`Rule::new`]). Names must be unique
    /// within a [`Chaos`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The share of matching calls the fault hits, a finite number from 0 to 1. Default 1:
    /// every matching call. Checked by [`ChaosLayer::new`].
    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = rate;
        self
    }

    /// The requests the rule may hit. Default [`Match::any`].
    pub fn when(mut self, when: Match) -> Self {
        self.when = when;
        self
    }
}

impl From<Fault> for Rule {
    fn from(fault: Fault) -> Self {
        Rule::new(fault)
    }
}

/// The configuration of a [`ChaosLayer`]: a seed and rules, evaluated in order. See the
/// [module docs](self).
///
/// ```
/// use palisade::testing::chaos::{Chaos, ChaosLayer, Fault, Rule};
///
/// let layer = ChaosLayer::new(
///     Chaos::new(7)
///         .rule(Rule::new(Fault::Status(503)).rate(0.2))
///         .rule(Rule::new(Fault::Reset).rate(0.05))
///         .enabled(false), // switched on later, through the handle
/// )?;
/// # let _ = layer;
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a configuration does nothing until given to `ChaosLayer::new`"]
pub struct Chaos {
    seed: u64,
    rules: Vec<Rule>,
    enabled: bool,
}

impl Chaos {
    /// No rules yet, enabled, with this seed for the draws.
    pub fn new(seed: u64) -> Self {
        Chaos {
            seed,
            rules: Vec::new(),
            enabled: true,
        }
    }

    /// Adds a rule after the others: it fires only for calls no earlier rule hit.
    pub fn rule(mut self, rule: impl Into<Rule>) -> Self {
        self.rules.push(rule.into());
        self
    }

    /// Whether the layer starts enabled. Default `true`; see [`ChaosHandle::enable`].
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The number rule `rule` of call `call` is compared to the rule's rate under `seed`:
    /// uniform in `[0, 1)`, a pure function of its arguments (see the
    /// [module docs](self#rules-draws-and-determinism)). The `rule`-th `f64` of a
    /// `fastrand::Rng` seeded with the SplitMix64 mix of `seed` and `call`.
    pub fn draw(seed: u64, call: u64, rule: usize) -> f64 {
        let mut rng = fastrand::Rng::with_seed(call_seed(seed, call));
        for _ in 0..rule {
            rng.f64();
        }
        rng.f64()
    }
}

/// The seed of call `n`'s generator: SplitMix64's `n`-th output from `seed`.
fn call_seed(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Checks a rate: a finite number from 0 to 1.
fn check_rate(name: &str, rate: f64) -> Result<(), ConfigError> {
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(ConfigError::new(
            "chaos.rule.rate",
            format!("of rule `{name}` must be a finite number from 0 to 1, got {rate}"),
        ))
    }
}

/// A rule as the layer holds it: its rate and count are atomics the handle changes.
struct RuleState {
    name: Arc<str>,
    fault: Fault,
    when: Match,
    rate: AtomicU64,
    injected: AtomicU64,
    action: Action,
}

/// What a rule does when it fires: its fault, made ready to inject.
#[derive(Debug, Clone)]
enum Action {
    /// Answer with this status, and this `Retry-After` if any.
    Answer(StatusCode, Option<HeaderValue>),
    Reset,
    Hang,
    Latency(Duration),
    CutBody(usize),
}

impl RuleState {
    fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }
}

/// What a layer, its services and its handles share.
struct Shared {
    enabled: AtomicBool,
    seed: AtomicU64,
    /// The number of the next call drawn for.
    next: AtomicU64,
    rules: Box<[RuleState]>,
}

impl Shared {
    /// The rule that fires for `req`, if any, by the procedure of the module docs.
    fn draw(&self, req: &Request) -> Option<usize> {
        if self.rules.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut rng = fastrand::Rng::with_seed(call_seed(self.seed.load(Ordering::Relaxed), n));
        self.rules.iter().position(|rule| {
            let draw = rng.f64();
            draw < rule.rate() && rule.when.matches(req)
        })
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("enabled", &self.enabled.load(Ordering::Relaxed))
            .field(
                "rules",
                &self.rules.iter().map(|r| &*r.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A [`Layer`](tower_layer::Layer) that injects faults into the calls of the service it wraps:
/// see the [module docs](self). Every service it makes shares one sequence, one set of rates
/// and counts, and the [`ChaosHandle`]s of [`handle`](ChaosLayer::handle).
#[derive(Clone, Debug)]
pub struct ChaosLayer {
    shared: Arc<Shared>,
}

impl ChaosLayer {
    /// A layer with this configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when a rule's rate is not a finite number from 0 to 1
    /// (`chaos.rule.rate`), a status fault's code is not a valid status (`chaos.rule.fault`),
    /// or two rules have one name (`chaos.rule.name`).
    pub fn new(chaos: Chaos) -> Result<Self, ConfigError> {
        let mut rules: Vec<RuleState> = Vec::with_capacity(chaos.rules.len());
        for rule in chaos.rules {
            let name = rule.name.unwrap_or_else(|| rule.fault.default_name());
            check_rate(&name, rule.rate)?;
            if rules.iter().any(|r| *r.name == *name) {
                return Err(ConfigError::new(
                    "chaos.rule.name",
                    format!("must be unique, got `{name}` twice (name rules with `Rule::name`)"),
                ));
            }
            let action = match rule.fault {
                Fault::Status(code) => match StatusCode::from_u16(code) {
                    Ok(s) => Action::Answer(s, None),
                    Err(_) => {
                        return Err(ConfigError::new(
                            "chaos.rule.fault",
                            format!(
                            "of rule `{name}` must be a valid status code (100 to 999), got {code}"
                        ),
                        ))
                    }
                },
                Fault::TooManyRequests { retry_after } => {
                    let secs = retry_after
                        .as_secs()
                        .saturating_add(u64::from(retry_after.subsec_nanos() > 0));
                    Action::Answer(StatusCode::TOO_MANY_REQUESTS, Some(HeaderValue::from(secs)))
                }
                Fault::Reset => Action::Reset,
                Fault::Hang => Action::Hang,
                Fault::Latency(d) => Action::Latency(d),
                Fault::CutBody { after } => Action::CutBody(after),
            };
            rules.push(RuleState {
                name: name.into(),
                fault: rule.fault,
                when: rule.when,
                rate: AtomicU64::new(rule.rate.to_bits()),
                injected: AtomicU64::new(0),
                action,
            });
        }
        Ok(ChaosLayer {
            shared: Arc::new(Shared {
                enabled: AtomicBool::new(chaos.enabled),
                seed: AtomicU64::new(chaos.seed),
                next: AtomicU64::new(0),
                rules: rules.into_boxed_slice(),
            }),
        })
    }

    /// A handle on the layer's state, shared with every service it made or will make.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle::new(self.shared.clone())
    }
}

impl<S> tower_layer::Layer<S> for ChaosLayer {
    type Service = ChaosService<S>;

    fn layer(&self, inner: S) -> ChaosService<S> {
        ChaosService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of a [`ChaosLayer`]: the inner service, with faults injected into its calls.
///
/// The inner service must be `Clone` (as `reqwest::Client` and transports given to
/// [`ClientBuilder::transport`](crate::ClientBuilder::transport) are): a `Latency` fault takes
/// the service made ready for the call along into its future, to call it after the wait, and
/// leaves a clone in its place. A fault that does not reach the inner service (a status, a
/// reset, a hang) leaves the readiness its `poll_ready` gave unused, as tower's `Filter` does
/// when it rejects a call.
#[derive(Clone)]
pub struct ChaosService<S> {
    inner: S,
    shared: Arc<Shared>,
}

crate::inner_accessors!(ChaosService);

impl<S> ChaosService<S> {
    /// A handle on the layer's state (see [`ChaosLayer::handle`]).
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle::new(self.shared.clone())
    }
}

impl<S> fmt::Debug for ChaosService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosService")
            .field("chaos", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Request> for ChaosService<S>
where
    S: Service<Request, Response = Response> + Clone,
    S::Error: Into<Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = ChaosFuture<S::Future, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let fired = if self.shared.enabled.load(Ordering::Relaxed) {
            self.shared.draw(&req)
        } else {
            None
        };
        match fired {
            None => ChaosFuture::forward(self.inner.call(req), None),
            Some(i) => self.inject(i, req),
        }
    }
}

impl<S> ChaosService<S>
where
    S: Service<Request, Response = Response> + Clone,
    S::Error: Into<Error>,
{
    /// Injects rule `i`'s fault into the call of `req`.
    fn inject(&mut self, i: usize, req: Request) -> ChaosFuture<S::Future, S> {
        let rule = &self.shared.rules[i];
        rule.injected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            chaos.rule = &*rule.name,
            chaos.fault = ?rule.fault,
            http.request.method = %req.method(),
            url.full = %DisplayUrl(req.url()),
            "chaos: fault injected"
        );
        let injected = Injected {
            rule: rule.name.clone(),
            index: i,
            fault: rule.fault.clone(),
        };
        match &rule.action {
            Action::Answer(status, retry_after) => {
                ChaosFuture::ready(Ok(answer(*status, retry_after.clone(), &req, injected)))
            }
            Action::Reset => {
                let mut err = Error::from(io::Error::new(io::ErrorKind::ConnectionReset, injected));
                err.set_url_if_missing(req.url());
                ChaosFuture::ready(Err(err))
            }
            Action::Hang => ChaosFuture::hang(),
            Action::Latency(delay) => {
                // The service that was made ready goes with the call; a clone takes its place.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ChaosFuture::delay(*delay, ready, req, injected)
            }
            Action::CutBody(after) => {
                ChaosFuture::forward(self.inner.call(req), Some((injected, Some(*after))))
            }
        }
    }
}

/// The response of a status fault: `status`, an empty body, the request's URL as reqwest
/// gives it, and the mark.
fn answer(
    status: StatusCode,
    retry_after: Option<HeaderValue>,
    req: &Request,
    injected: Injected,
) -> Response {
    let mut b = http::Response::builder()
        .status(status)
        .url(req.url().clone())
        .extension(injected);
    if let Some(v) = retry_after {
        b = b.header(http::header::RETRY_AFTER, v);
    }
    let resp = b.body(reqwest::Body::from(bytes::Bytes::new()));
    // The parts are all valid; should the builder ever refuse them, the status is still right.
    Response::from(resp.unwrap_or_else(|_| {
        let mut r = http::Response::new(reqwest::Body::from(bytes::Bytes::new()));
        *r.status_mut() = status;
        r
    }))
}

/// The mark of an injected fault, for a test (or a log) to tell it from a real one. Classifying
/// it changes nothing: a fault is classed as its real counterpart.
///
/// A response of a status fault, and one a `Latency` or `CutBody` fault was injected into,
/// carries it as an extension ([`Injected::in_response`]); an error of a `Reset`, and the
/// error a cut body fails with, has it at the end of its `source()` chain
/// ([`Injected::in_error`]). A `Hang` leaves no mark: the timeout that ends it is palisade's.
///
/// ```
/// use palisade::testing::chaos::Injected;
///
/// # fn check(resp: &reqwest::Response, err: &palisade::Error) {
/// if let Some(mark) = Injected::in_response(resp) {
///     println!("rule {} ({:?})", mark.rule(), mark.fault());
/// }
/// assert_eq!(Injected::in_error(err).map(Injected::rule), Some("reset"));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    rule: Arc<str>,
    index: usize,
    fault: Fault,
}

impl Injected {
    /// The name of the rule that injected the fault.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The place of the rule in its [`Chaos`], from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The fault injected.
    pub fn fault(&self) -> &Fault {
        &self.fault
    }

    /// The mark on a response a fault was injected into, if any.
    pub fn in_response(resp: &Response) -> Option<&Injected> {
        resp.extensions().get::<Injected>()
    }

    /// The mark in an error's `source()` chain (the error itself included), if any: an
    /// injected reset, or the failure of a cut body (a `reqwest::Error` from
    /// `Response::bytes`, or a [`palisade::Error`](crate::Error) made from one).
    pub fn in_error<'e>(err: &'e (dyn StdError + 'static)) -> Option<&'e Injected> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(mark) = e.downcast_ref::<Injected>() {
                return Some(mark);
            }
            // `io::Error::source` skips the error it wraps; `get_ref` returns it.
            cur = match e.downcast_ref::<io::Error>() {
                Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
                None => e.source(),
            };
        }
        None
    }
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fault {
            Fault::Reset => f.write_str("connection reset by peer")?,
            Fault::CutBody { .. } => f.write_str("connection closed before message completed")?,
            fault => write!(f, "{fault:?}")?,
        }
        write!(f, " (injected by chaos rule `{}`)", self.rule)
    }
}

impl StdError for Injected {}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(chaos: Chaos) -> ChaosLayer {
        ChaosLayer::new(chaos).expect("valid test configuration")
    }

    #[test]
    fn rates_are_checked_and_named() {
        for rate in [-0.1, 1.000_001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = ChaosLayer::new(Chaos::new(1).rule(Rule::new(Fault::Reset).rate(rate)))
                .unwrap_err();
            assert_eq!(err.field(), "chaos.rule.rate", "{rate}");
            assert!(err.rule().contains("`reset`"), "{}", err.rule());
        }
        for rate in [0.0, 0.5, 1.0] {
            layer(Chaos::new(1).rule(Rule::new(Fault::Reset).rate(rate)));
        }
    }

    #[test]
    fn statuses_and_names_are_checked() {
        for code in [0, 99, 1000] {
            let err = ChaosLayer::new(Chaos::new(1).rule(Fault::Status(code))).unwrap_err();
            assert_eq!(err.field(), "chaos.rule.fault", "{code}");
        }
        let err = ChaosLayer::new(
            Chaos::new(1)
                .rule(Fault::Status(503))
                .rule(Fault::Status(503)),
        )
        .unwrap_err();
        assert_eq!(err.field(), "chaos.rule.name");
        assert!(err.rule().contains("`status_503`"), "{}", err.rule());
        layer(
            Chaos::new(1)
                .rule(Fault::Status(503))
                .rule(Rule::new(Fault::Status(503)).name("again")),
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        for (d, want) in [
            (Duration::ZERO, "0"),
            (Duration::from_secs(2), "2"),
            (Duration::from_millis(1_001), "2"),
            (Duration::from_millis(1), "1"),
            (Duration::MAX, "18446744073709551615"),
        ] {
            let l = layer(Chaos::new(1).rule(Fault::TooManyRequests { retry_after: d }));
            let Action::Answer(status, Some(v)) = &l.shared.rules[0].action else {
                panic!("an answer with Retry-After");
            };
            assert_eq!(*status, 429);
            assert_eq!(v, want, "{d:?}");
        }
    }

    #[test]
    fn draws_are_uniform_pure_and_independent_of_the_rules() {
        assert_eq!(Chaos::draw(7, 3, 1), Chaos::draw(7, 3, 1));
        assert_ne!(Chaos::draw(7, 3, 1), Chaos::draw(8, 3, 1));
        assert_ne!(Chaos::draw(7, 3, 1), Chaos::draw(7, 4, 1));
        assert_ne!(Chaos::draw(7, 3, 0), Chaos::draw(7, 3, 1));
        // No correlation from one call's rule 1 to the next call's rule 0.
        assert_ne!(Chaos::draw(7, 3, 1), Chaos::draw(7, 4, 0));
        let n = 100_000;
        let mean = (0..n).map(|c| Chaos::draw(42, c, 0)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!((0..n).all(|c| (0.0..1.0).contains(&Chaos::draw(42, c, 2))));
    }

    #[test]
    fn the_service_fires_exactly_when_the_documented_draw_is_below_the_rate() {
        let l = layer(
            Chaos::new(99)
                .rule(Rule::new(Fault::Status(500)).rate(0.3))
                .rule(Rule::new(Fault::Status(503)).rate(0.5)),
        );
        let req = Request::new(http::Method::GET, "http://h/".parse().unwrap());
        for n in 0..1_000 {
            let want = if Chaos::draw(99, n, 0) < 0.3 {
                Some(0)
            } else if Chaos::draw(99, n, 1) < 0.5 {
                Some(1)
            } else {
                None
            };
            assert_eq!(l.shared.draw(&req), want, "call {n}");
        }
    }

    #[test]
    fn injected_marks_read_as_the_real_errors() {
        let mark = |fault| Injected {
            rule: "r".into(),
            index: 0,
            fault,
        };
        assert_eq!(
            mark(Fault::Reset).to_string(),
            "connection reset by peer (injected by chaos rule `r`)"
        );
        assert_eq!(
            mark(Fault::CutBody { after: 1 }).to_string(),
            "connection closed before message completed (injected by chaos rule `r`)"
        );
        let io = io::Error::new(io::ErrorKind::ConnectionReset, mark(Fault::Reset));
        let err = Error::from(io);
        assert_eq!(Injected::in_error(&err).map(Injected::rule), Some("r"));
        let plain = Error::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(Injected::in_error(&plain).is_none());
    }

    #[test]
    fn layer_and_service_debug_name_the_rules() {
        let l = layer(
            Chaos::new(1)
                .rule(Rule::new(Fault::Hang).name("stuck"))
                .enabled(false),
        );
        assert_eq!(
            format!("{l:?}"),
            r#"ChaosLayer { shared: Chaos { enabled: false, rules: ["stuck"] } }"#
        );
        let svc = tower_layer::Layer::layer(&l, ());
        assert!(format!("{svc:?}").starts_with("ChaosService { chaos: Chaos {"));
    }
}
