//! Every failure class of DESIGN.md's table ("Failure classes and defaults"), arising from real
//! servers and real transport failures, end to end through `palisade::Client` over the default
//! reqwest transport (no in-memory mock).
//!
//! Each test observes the class twice: through the client's `classify_fn` hook (wrapping
//! `Classifier::default_class` and recording what it returned) and through the `on_event` hook's
//! `Event::Attempt { class, .. }`. Error outcomes are also checked with
//! `FailureClass::from_error`. Every test counts what the server saw (wiremock's received
//! requests, or connections/heads on a loopback socket) and checks it against `attempts()`, so
//! a retry in reqwest itself would show up as a mismatch.
//!
//! Real sockets and paused time do not mix: these tests run in real time with a 1–5 ms backoff
//! and timeouts of 100–1000 ms.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade::retry::{Backoff, Retry};
use palisade::{
    Classifier, Client, ClientBuilder, ErrorKind, Event, FailureClass, GiveUpReason,
    RequestBuilder, ResponseExt, TimeoutKind,
};
use support::net::{closed_port, closing_server, reset_server, silent_server, Counter};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use FailureClass::{ClientError, Network, ServerError, Success, Throttled, Timeout};
use GiveUpReason::{MaxAttempts, NotIdempotent, RetryAfterTooLong};

// ---------------------------------------------------------------------------------------------
// Observation helpers
// ---------------------------------------------------------------------------------------------

/// A shared, growing record.
type Log<T> = Arc<Mutex<Vec<T>>>;

/// Records what the classifier returned and what the event hook reported, per attempt.
#[derive(Clone, Default)]
struct Probe {
    /// Every class the `classify_fn` hook returned, in order.
    classified: Log<FailureClass>,
    /// `(attempt, class, status)` of every `Event::Attempt`.
    attempts: Log<(u32, FailureClass, Option<u16>)>,
    /// `(attempt about to be made, class of the previous one, delay came from Retry-After)` of
    /// every `Event::Retry`.
    retries: Log<(u32, FailureClass, bool)>,
    /// `(attempts, class, reason)` of every `Event::GaveUp`.
    gave_up: Log<(u32, FailureClass, GiveUpReason)>,
    /// Kinds of every `Event::Timeout`.
    timeouts: Log<TimeoutKind>,
}

impl Probe {
    fn install(&self, b: ClientBuilder) -> ClientBuilder {
        let classified = self.classified.clone();
        let attempts = self.attempts.clone();
        let retries = self.retries.clone();
        let gave_up = self.gave_up.clone();
        let timeouts = self.timeouts.clone();
        b.classify_fn(move |outcome| {
            let class = Classifier::default_class(outcome);
            classified.lock().unwrap().push(class);
            class
        })
        .on_event(move |e| match e {
            Event::Attempt {
                attempt,
                class,
                status,
                ..
            } => attempts
                .lock()
                .unwrap()
                .push((*attempt, *class, status.map(|s| s.as_u16()))),
            Event::Retry {
                attempt,
                class,
                from_retry_after,
                ..
            } => retries
                .lock()
                .unwrap()
                .push((*attempt, *class, *from_retry_after)),
            Event::GaveUp {
                attempts,
                class,
                reason,
                ..
            } => gave_up.lock().unwrap().push((*attempts, *class, *reason)),
            Event::Timeout { kind, .. } => timeouts.lock().unwrap().push(*kind),
            _ => {}
        })
    }

    fn classified(&self) -> Vec<FailureClass> {
        self.classified.lock().unwrap().clone()
    }

    fn event_classes(&self) -> Vec<FailureClass> {
        self.attempts.lock().unwrap().iter().map(|a| a.1).collect()
    }

    fn event_statuses(&self) -> Vec<Option<u16>> {
        self.attempts.lock().unwrap().iter().map(|a| a.2).collect()
    }

    fn retries(&self) -> Vec<(u32, FailureClass, bool)> {
        self.retries.lock().unwrap().clone()
    }

    fn gave_up(&self) -> Vec<(u32, FailureClass, GiveUpReason)> {
        self.gave_up.lock().unwrap().clone()
    }

    fn timeouts(&self) -> Vec<TimeoutKind> {
        self.timeouts.lock().unwrap().clone()
    }

    /// Asserts that the classifier and the attempt events both saw exactly `expected`, one class
    /// per attempt, with the attempts numbered 1, 2, ….
    #[track_caller]
    fn assert_classes(&self, expected: &[FailureClass], what: &str) {
        assert_eq!(self.classified(), expected, "{what}: classifier hook");
        assert_eq!(
            self.event_classes(),
            expected,
            "{what}: Event::Attempt classes"
        );
        let numbers: Vec<u32> = self.attempts.lock().unwrap().iter().map(|a| a.0).collect();
        let want: Vec<u32> = (1..=expected.len() as u32).collect();
        assert_eq!(numbers, want, "{what}: Event::Attempt numbering");
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Retry with the default policy (3 attempts, budget, 500/502/503/504) but a 1–5 ms backoff.
fn fast_retry() -> Retry {
    Retry::default().backoff(Backoff::new(ms(1), ms(5)))
}

/// A client over the default reqwest transport, with the fast retry policy, redirects not
/// followed, and the probe installed; `f` adjusts the builder further.
fn make_client(probe: &Probe, f: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Client {
    // The circuit breaker asks the classifier too; these tests count one classification per
    // attempt, so the breaker is left out (its own tests are in tests/circuit_breaker.rs).
    let b = Client::builder()
        .http_client_builder(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()))
        .retry(fast_retry())
        .no_circuit_breaker();
    f(probe.install(b))
        .build()
        .expect("valid test configuration")
}

// ---------------------------------------------------------------------------------------------
// Sending a request and checking everything it shows
// ---------------------------------------------------------------------------------------------

/// A request the tests send.
#[derive(Clone, Copy, Debug)]
enum Req {
    Get,
    /// A POST with a body.
    Post,
    /// A POST with a body and an `Idempotency-Key`.
    PostWithKey,
}

impl Req {
    fn verb(self) -> &'static str {
        match self {
            Req::Get => "GET",
            Req::Post | Req::PostWithKey => "POST",
        }
    }

    fn build(self, client: &Client, url: &str) -> RequestBuilder {
        match self {
            Req::Get => client.get(url),
            Req::Post => client.post(url).body("payload"),
            Req::PostWithKey => client.post(url).idempotency_key("k1").body("payload"),
        }
    }
}

/// Matches `verb` requests to `/r` on a wiremock server.
fn on_r(verb: &str) -> wiremock::MockBuilder {
    Mock::given(method(verb)).and(path("/r"))
}

async fn received(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .len()
}

/// Sends `req` to a wiremock server that answers every request with `status` (plus `headers`),
/// and checks the response status, `attempts()`, the number of requests the server saw (exactly
/// `attempts`, also checked by the server itself), the class and status of every attempt, and
/// that it all took under a second. Returns the probe and the server for further checks.
async fn answered(
    req: Req,
    status: u16,
    headers: &[(&str, &str)],
    class: FailureClass,
    attempts: u32,
) -> (Probe, MockServer) {
    let mut template = ResponseTemplate::new(status);
    for (k, v) in headers {
        template = template.insert_header(*k, *v);
    }
    let server = MockServer::start().await;
    on_r(req.verb())
        .respond_with(template)
        .expect(u64::from(attempts))
        .mount(&server)
        .await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let what = format!("{req:?} {status} {headers:?}");

    let started = Instant::now();
    let resp = req
        .build(&client, &format!("{}/r", server.uri()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: an HTTP response is Ok, got {e:?}"));
    let took = started.elapsed();
    let n = attempts as usize;
    assert_eq!(resp.status().as_u16(), status, "{what}");
    assert_eq!(resp.attempts(), attempts, "{what}: attempts()");
    assert_eq!(
        received(&server).await,
        n,
        "{what}: requests the server saw"
    );
    probe.assert_classes(&vec![class; n], &what);
    assert_eq!(
        probe.event_statuses(),
        vec![Some(status); n],
        "{what}: Event::Attempt statuses"
    );
    assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
    server.verify().await;
    (probe, server)
}

/// What a request that ends in `Err` should show.
struct Failure {
    kind: ErrorKind,
    timeout: Option<TimeoutKind>,
    class: FailureClass,
    attempts: u32,
    /// The reason of the one `Event::GaveUp`, if the retry stage gave up (rather than returning
    /// a failure it does not retry, or being cut by the total timeout).
    gave_up: Option<GiveUpReason>,
}

impl Failure {
    /// An error of `kind` (not a timeout).
    fn new(
        kind: ErrorKind,
        class: FailureClass,
        attempts: u32,
        gave_up: Option<GiveUpReason>,
    ) -> Self {
        Failure {
            kind,
            timeout: None,
            class,
            attempts,
            gave_up,
        }
    }

    /// A timeout of `kind`: error kind `Timeout`, class `Timeout`.
    fn timeout(kind: TimeoutKind, attempts: u32, gave_up: Option<GiveUpReason>) -> Self {
        Failure {
            kind: ErrorKind::Timeout,
            timeout: Some(kind),
            class: Timeout,
            attempts,
            gave_up,
        }
    }

    /// Checks `err` (kind, `is_connect()`, `is_timeout()`, `timeout_kind()`, class, `attempts()`,
    /// URL) and what the probe saw (one class per attempt, no statuses, the give-up event).
    #[track_caller]
    fn check(&self, err: &palisade::Error, probe: &Probe, url: &str, what: &str) {
        let n = self.attempts as usize;
        assert_eq!(err.kind(), self.kind, "{what}: {err:?}");
        assert_eq!(
            err.is_connect(),
            self.kind == ErrorKind::Connect,
            "{what}: {err:?}"
        );
        assert_eq!(
            err.is_timeout(),
            self.kind == ErrorKind::Timeout,
            "{what}: {err:?}"
        );
        assert_eq!(err.timeout_kind(), self.timeout, "{what}: {err:?}");
        assert_eq!(FailureClass::from_error(err), self.class, "{what}: {err:?}");
        assert_eq!(
            err.attempts(),
            self.attempts,
            "{what}: attempts() of {err:?}"
        );
        assert_eq!(err.url().map(|u| u.as_str()), Some(url), "{what}: URL");
        probe.assert_classes(&vec![self.class; n], what);
        assert_eq!(probe.event_statuses(), vec![None; n], "{what}: statuses");
        let gave_up: Vec<_> = self
            .gave_up
            .map(|reason| (self.attempts, self.class, reason))
            .into_iter()
            .collect();
        assert_eq!(probe.gave_up(), gave_up, "{what}: Event::GaveUp");
    }
}

/// A loopback peer from `support::net`, started afresh for each request.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// Nothing listening.
    ClosedPort,
    /// Resets each connection after reading the request's head.
    Reset,
    /// Closes each connection cleanly, unanswered, after reading the request's head.
    Closing,
    /// Accepts and never answers.
    Silent,
}

impl Peer {
    /// The peer's address, and its count of what it saw with what that count is.
    async fn start(self) -> (SocketAddr, Option<(Counter, &'static str)>) {
        let (addr, counter) = match self {
            Peer::ClosedPort => return (closed_port(), None),
            Peer::Reset => reset_server().await,
            Peer::Closing => closing_server().await,
            Peer::Silent => silent_server().await,
        };
        let counts = match self {
            Peer::Silent => "connections accepted",
            _ => "requests the server read",
        };
        (addr, Some((counter, counts)))
    }
}

/// Sends `req` to a fresh `peer` with a client adjusted by `f`, and checks that it fails as
/// `want` says (see [`Failure::check`]) and that the peer saw exactly one request (or
/// connection) per attempt. Returns the probe and how long the request took.
async fn fails(
    peer: Peer,
    req: Req,
    f: impl FnOnce(ClientBuilder) -> ClientBuilder,
    want: Failure,
) -> (Probe, Duration) {
    let (addr, seen) = peer.start().await;
    let url = format!("http://{addr}/r");
    let probe = Probe::default();
    let client = make_client(&probe, f);
    let what = format!("{req:?} to {peer:?}");

    let started = Instant::now();
    let err = req.build(&client, &url).send().await.unwrap_err();
    let took = started.elapsed();
    want.check(&err, &probe, &url, &what);
    if let Some((counter, counts)) = seen {
        let what = format!("{what}: {counts}");
        counter
            .assert_settles_at(want.attempts as usize, &what)
            .await;
    }
    (probe, took)
}

/// Timeouts for the silent-server tests: palisade's attempt and total timeouts, in ms.
fn timeouts(attempt_ms: u64, total_ms: u64) -> impl FnOnce(ClientBuilder) -> ClientBuilder {
    move |b| {
        b.attempt_timeout(ms(attempt_ms))
            .total_timeout(ms(total_ms))
    }
}

/// A GET to a silent server with reqwest's own timeouts from `http`, palisade's attempt timeout
/// removed and its total timeout `total` (or none): a transport timeout, class `Timeout`,
/// retried to 3 attempts, each on its own connection, all in under `under`.
async fn reqwest_timeout_fires(
    http: reqwest::ClientBuilder,
    total: Option<Duration>,
    under: Duration,
) {
    let want = Failure::timeout(TimeoutKind::Transport, 3, Some(MaxAttempts));
    let (_, took) = fails(
        Peer::Silent,
        Req::Get,
        |b| {
            let b = b.http_client_builder(http).no_attempt_timeout();
            match total {
                Some(t) => b.total_timeout(t),
                None => b.no_total_timeout(),
            }
        },
        want,
    )
    .await;
    assert!(took < under, "took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Responses from a real HTTP server (wiremock)
// ---------------------------------------------------------------------------------------------

/// 200, 204, 301 (redirects not followed) and 304 are `Success`: one request, one attempt.
#[tokio::test]
async fn success_statuses_are_success_and_sent_once() {
    for status in [200, 204, 304] {
        answered(Req::Get, status, &[], Success, 1).await;
    }
    answered(Req::Get, 301, &[("location", "/elsewhere")], Success, 1).await;
}

/// 400, 401, 403 and 404 are `ClientError` and never retried: the server sees exactly one
/// request.
#[tokio::test]
async fn client_errors_are_client_error_and_not_retried() {
    for status in [400, 401, 403, 404] {
        answered(Req::Get, status, &[], ClientError, 1).await;
    }
}

/// A 4xx that carries `Retry-After` is still a `ClientError` (only 429 and 503 are throttles).
#[tokio::test]
async fn client_error_with_retry_after_is_still_client_error() {
    answered(Req::Get, 404, &[("retry-after", "0")], ClientError, 1).await;
}

/// 408 Request Timeout is `Timeout`, retried to 3 attempts.
#[tokio::test]
async fn request_timeout_408_is_timeout_and_retried() {
    answered(Req::Get, 408, &[], Timeout, 3).await;
}

/// 429 is `Throttled`, retried (with and without `Retry-After`).
#[tokio::test]
async fn too_many_requests_429_is_throttled_and_retried() {
    answered(Req::Get, 429, &[], Throttled, 3).await;
    answered(Req::Get, 429, &[("retry-after", "0")], Throttled, 3).await;
}

/// 503 with `Retry-After: 0` is `Throttled`, and the retry delay comes from the header.
#[tokio::test]
async fn service_unavailable_with_retry_after_is_throttled() {
    let (probe, _) = answered(Req::Get, 503, &[("retry-after", "0")], Throttled, 3).await;
    assert_eq!(
        probe.retries(),
        vec![(2, Throttled, true), (3, Throttled, true)],
        "both retries waited as Retry-After said"
    );
    assert_eq!(probe.gave_up(), vec![(3, Throttled, MaxAttempts)]);
}

/// A 503 whose `Retry-After` asks for longer than `max_retry_after` (60 s) is `Throttled` but
/// returned at once, without sleeping: one request.
#[tokio::test]
async fn throttle_asking_too_long_is_returned_at_once() {
    let (probe, _) = answered(Req::Get, 503, &[("retry-after", "120")], Throttled, 1).await;
    assert_eq!(probe.gave_up(), vec![(1, Throttled, RetryAfterTooLong)]);
}

/// 500, 502, 503 (without `Retry-After`) and 504 are `ServerError`, retried to 3 attempts in
/// all; the server sees exactly 3 requests and the last response comes back.
#[tokio::test]
async fn retryable_server_errors_are_retried_three_times() {
    for status in [500, 502, 503, 504] {
        answered(Req::Get, status, &[], ServerError, 3).await;
    }
}

/// 501 Not Implemented is a `ServerError`, but another attempt will not change it: sent once.
#[tokio::test]
async fn not_implemented_501_is_server_error_not_retried() {
    answered(Req::Get, 501, &[], ServerError, 1).await;
}

/// A POST that gets a 503 is not retried (POST is not idempotent): one request.
#[tokio::test]
async fn post_to_server_error_is_sent_once() {
    let (probe, _) = answered(Req::Post, 503, &[], ServerError, 1).await;
    assert_eq!(probe.gave_up(), vec![(1, ServerError, NotIdempotent)]);
}

/// A POST with an `Idempotency-Key` that gets a 503 is retried like a GET: 3 requests, each
/// carrying the key and the body.
#[tokio::test]
async fn post_with_idempotency_key_is_retried() {
    let (_, server) = answered(Req::PostWithKey, 503, &[], ServerError, 3).await;
    let seen = server.received_requests().await.unwrap();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r.headers.get("idempotency-key").unwrap(), "k1");
        assert_eq!(r.body, b"payload");
    }
}

/// A failure then a success: the classes follow each attempt, and the server saw exactly as
/// many requests as `attempts()` says.
#[tokio::test]
async fn server_error_then_success_counts_match() {
    let server = MockServer::start().await;
    // wiremock answers with the first mounted mock that matches and has not reached its
    // `up_to_n_times` limit: 502, then 429, then 200.
    for template in [
        ResponseTemplate::new(502),
        ResponseTemplate::new(429),
        ResponseTemplate::new(200).set_body_string("ok"),
    ] {
        on_r("GET")
            .respond_with(template)
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
    }
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let resp = client
        .get(format!("{}/r", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.attempts(), 3);
    assert_eq!(received(&server).await, 3);
    probe.assert_classes(&[ServerError, Throttled, Success], "502, 429, 200");
    assert_eq!(
        probe.event_statuses(),
        vec![Some(502), Some(429), Some(200)]
    );
    assert_eq!(resp.text().await.unwrap(), "ok");
    server.verify().await;
}

/// A redirect loop fails inside reqwest (too many redirects): an `Err` of kind `Request`, class
/// `ClientError`, never retried. The server sees one chain of redirects (the request and the
/// one redirect `Policy::limited(1)` follows), not three.
#[tokio::test]
async fn redirect_loop_is_client_error_not_retried() {
    let server = MockServer::start().await;
    on_r("GET")
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/r"))
        .mount(&server)
        .await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| {
        b.http_client_builder(
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::limited(1)),
        )
    });
    let url = format!("{}/r", server.uri());
    let err = client.get(&url).send().await.unwrap_err();
    Failure::new(ErrorKind::Request, ClientError, 1, None).check(&err, &probe, &url, "loop");
    assert_eq!(received(&server).await, 2);
}

// ---------------------------------------------------------------------------------------------
// Real transport failures
// ---------------------------------------------------------------------------------------------

/// Connection refused: `Err` with `is_connect()`, kind `Connect`, class `Network`, retried to 3
/// attempts.
#[tokio::test]
async fn connection_refused_is_network_and_retried() {
    let want = Failure::new(ErrorKind::Connect, Network, 3, Some(MaxAttempts));
    let (_, took) = fails(Peer::ClosedPort, Req::Get, |b| b, want).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// A connect failure is retried for any method, POST included: nothing reached the server.
#[tokio::test]
async fn connection_refused_post_is_retried() {
    let want = Failure::new(ErrorKind::Connect, Network, 3, Some(MaxAttempts));
    fails(Peer::ClosedPort, Req::Post, |b| b, want).await;
}

/// The connection is reset after the request was sent: kind `Transport` (not `Connect`), class
/// `Network`; a GET is retried to 3 attempts, each reaching the server.
#[tokio::test]
async fn reset_is_network_and_get_is_retried() {
    let want = Failure::new(ErrorKind::Transport, Network, 3, Some(MaxAttempts));
    fails(Peer::Reset, Req::Get, |b| b, want).await;
}

/// The same reset for a POST: it reached the server, so it is sent once.
#[tokio::test]
async fn reset_post_is_sent_once() {
    let want = Failure::new(ErrorKind::Transport, Network, 1, Some(NotIdempotent));
    fails(Peer::Reset, Req::Post, |b| b, want).await;
}

/// The server closes the connection cleanly without answering (an incomplete message): kind
/// `Transport`, class `Network`, a GET retried to 3 attempts.
#[tokio::test]
async fn incomplete_message_is_network_and_retried() {
    let want = Failure::new(ErrorKind::Transport, Network, 3, Some(MaxAttempts));
    fails(Peer::Closing, Req::Get, |b| b, want).await;
}

/// A server that never answers, attempt timeout 100 ms, total 1 s: each attempt times out after
/// 100 ms; the third (at about 200 ms) ends well before the total deadline, so the error is the
/// attempt timeout, after 3 attempts, each on its own connection.
#[tokio::test]
async fn silent_server_attempt_timeout_fires_on_each_attempt() {
    let want = Failure::timeout(TimeoutKind::Attempt, 3, Some(MaxAttempts));
    let (probe, took) = fails(Peer::Silent, Req::Get, timeouts(100, 1000), want).await;
    assert_eq!(probe.timeouts(), vec![TimeoutKind::Attempt; 3]);
    assert!(
        (ms(300)..ms(900)).contains(&took),
        "three 100 ms attempts took {took:?}"
    );
}

/// Attempt timeout 200 ms, total 380 ms: the first attempt times out at 200 ms (attempt
/// timeout); the second starts at about 201 ms and would time out at about 401 ms, but is cut
/// at the total deadline, 380 ms, so the error is the total timeout, after 2 attempts on 2
/// connections. (The 180 ms between the first timeout and the deadline leave the second attempt
/// room to start even on a loaded machine: with 100 ms and 150 ms, 32 test processes on 2 cores
/// sometimes woke the task after the deadline, and the request ended after 1 attempt.)
#[tokio::test]
async fn silent_server_total_timeout_cuts_the_second_attempt() {
    // The first attempt timed out on its own; the second was cut by the deadline (the attempt
    // timeout capped at the deadline fires with the total timeout's kind). Both are `Timeout`
    // to the classifier; the total-timeout stage reports the one `Total` event. The retry stage
    // did not give up: the deadline ended the request.
    let want = Failure::timeout(TimeoutKind::Total, 2, None);
    let (probe, took) = fails(Peer::Silent, Req::Get, timeouts(200, 380), want).await;
    assert_eq!(
        probe.timeouts(),
        vec![TimeoutKind::Attempt, TimeoutKind::Total]
    );
    assert!(
        (ms(380)..ms(900)).contains(&took),
        "total timeout of 380 ms took {took:?}"
    );
}

/// reqwest's own `read_timeout` (palisade's attempt timeout removed) fires as a transport
/// timeout: class `Timeout`, retried to 3 attempts, each on its own connection.
#[tokio::test]
async fn reqwest_read_timeout_is_transport_timeout_and_retried() {
    let http = reqwest::Client::builder().read_timeout(ms(100));
    reqwest_timeout_fires(http, Some(ms(2000)), ms(1500)).await;
}

/// reqwest's own `timeout` with neither attempt nor total timeout in palisade: a transport
/// timeout, retried to 3 attempts.
#[tokio::test]
async fn reqwest_timeout_without_total_timeout_is_transport_timeout() {
    let http = reqwest::Client::builder().timeout(ms(100));
    reqwest_timeout_fires(http, None, ms(1000)).await;
}

/// reqwest's own `timeout` (palisade's attempt timeout removed, total timeout kept at 1 s):
/// should be a transport timeout after 100 ms per attempt, retried to 3 attempts.
///
/// Regression: the total timeout used to set a per-request timeout, which in reqwest replaces
/// the client's `timeout`; the client's 100 ms was silently dropped.
#[tokio::test]
async fn reqwest_timeout_is_transport_timeout_and_retried() {
    let http = reqwest::Client::builder().timeout(ms(100));
    reqwest_timeout_fires(http, Some(ms(1000)), ms(900)).await;
}
