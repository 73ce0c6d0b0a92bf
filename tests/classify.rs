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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade::retry::{Backoff, Retry};
use palisade::{
    Classifier, Client, ClientBuilder, ErrorKind, Event, FailureClass, GiveUpReason, ResponseExt,
    TimeoutKind,
};
use support::net::{closed_port, closing_server, reset_server, silent_server};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use FailureClass::{ClientError, Network, ServerError, Success, Throttled, Timeout};

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

/// Retry with the default policy (3 attempts, budget, 500/502/503/504) but a 1–5 ms backoff.
fn fast_retry() -> Retry {
    Retry::default().backoff(Backoff::new(
        Duration::from_millis(1),
        Duration::from_millis(5),
    ))
}

/// A client over the default reqwest transport, with the fast retry policy, redirects not
/// followed, and the probe installed; `f` adjusts the builder further.
fn make_client(probe: &Probe, f: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Client {
    let b = Client::builder()
        .http_client_builder(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()))
        .retry(fast_retry());
    f(probe.install(b))
        .build()
        .expect("valid test configuration")
}

/// A wiremock server that answers every `method` request to `/r` with `template`, expecting
/// exactly `expect` of them (checked again when the server is dropped).
async fn server(verb: &str, template: ResponseTemplate, expect: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method(verb))
        .and(path("/r"))
        .respond_with(template)
        .expect(expect)
        .mount(&server)
        .await;
    server
}

async fn received(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .len()
}

/// Sends one GET to a wiremock server answering `status` (plus `headers`), and checks the
/// response, the number of requests the server saw, `attempts()` and the classes observed.
async fn get_status(
    status: u16,
    headers: &[(&str, &str)],
    expected_class: FailureClass,
    expected_attempts: u32,
) {
    let mut template = ResponseTemplate::new(status);
    for (k, v) in headers {
        template = template.insert_header(*k, *v);
    }
    let server = server("GET", template, u64::from(expected_attempts)).await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let what = format!("GET {status} {headers:?}");

    let started = Instant::now();
    let resp = client
        .get(format!("{}/r", server.uri()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: an HTTP response is Ok, got {e:?}"));
    assert_eq!(resp.status().as_u16(), status, "{what}");
    assert_eq!(resp.attempts(), expected_attempts, "{what}: attempts()");
    assert_eq!(
        received(&server).await,
        expected_attempts as usize,
        "{what}: requests the server saw"
    );
    probe.assert_classes(&vec![expected_class; expected_attempts as usize], &what);
    assert_eq!(
        probe.event_statuses(),
        vec![Some(status); expected_attempts as usize],
        "{what}: Event::Attempt statuses"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{what}: took {:?}",
        started.elapsed()
    );
    server.verify().await;
}

// ---------------------------------------------------------------------------------------------
// Counting loopback servers (the ones in support::net, plus a counter)
// ---------------------------------------------------------------------------------------------

async fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Like `net::reset_server`/`net::closing_server`: reads each request's head, then resets
/// (`reset`) or closes cleanly. Counts the request heads it read.
async fn counting_hangup_server(reset: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let heads = Arc::new(AtomicUsize::new(0));
    let count = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                if reset {
                    // A zero linger sends RST on drop and never blocks (as in support::net).
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
                drop(s);
            });
        }
    });
    (addr, heads)
}

/// Like `net::silent_server`: accepts and never answers. Counts the connections it accepted.
async fn counting_silent_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted)
}

/// Waits until a server-side counter reaches `expected` (the server's tasks may lag behind the
/// client on a loaded machine), then a little longer, and asserts it is exactly `expected`.
async fn assert_count(counter: &AtomicUsize, expected: usize, what: &str) {
    let give_up = Instant::now() + Duration::from_secs(1);
    while counter.load(Ordering::SeqCst) < expected && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(counter.load(Ordering::SeqCst), expected, "{what}");
}

// ---------------------------------------------------------------------------------------------
// Responses from a real HTTP server (wiremock)
// ---------------------------------------------------------------------------------------------

/// 200, 204, 301 (redirects not followed) and 304 are `Success`: one request, one attempt.
#[tokio::test]
async fn success_statuses_are_success_and_sent_once() {
    for status in [200, 204, 304] {
        get_status(status, &[], Success, 1).await;
    }
    get_status(301, &[("location", "/elsewhere")], Success, 1).await;
}

/// 400, 401, 403 and 404 are `ClientError` and never retried: the server sees exactly one
/// request.
#[tokio::test]
async fn client_errors_are_client_error_and_not_retried() {
    for status in [400, 401, 403, 404] {
        get_status(status, &[], ClientError, 1).await;
    }
}

/// A 4xx that carries `Retry-After` is still a `ClientError` (only 429 and 503 are throttles).
#[tokio::test]
async fn client_error_with_retry_after_is_still_client_error() {
    get_status(404, &[("retry-after", "0")], ClientError, 1).await;
}

/// 408 Request Timeout is `Timeout`, retried to 3 attempts.
#[tokio::test]
async fn request_timeout_408_is_timeout_and_retried() {
    get_status(408, &[], Timeout, 3).await;
}

/// 429 is `Throttled`, retried (with and without `Retry-After`).
#[tokio::test]
async fn too_many_requests_429_is_throttled_and_retried() {
    get_status(429, &[], Throttled, 3).await;
    get_status(429, &[("retry-after", "0")], Throttled, 3).await;
}

/// 503 with `Retry-After: 0` is `Throttled`, and the retry delay comes from the header.
#[tokio::test]
async fn service_unavailable_with_retry_after_is_throttled() {
    let server = server(
        "GET",
        ResponseTemplate::new(503).insert_header("retry-after", "0"),
        3,
    )
    .await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let resp = client
        .get(format!("{}/r", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.attempts(), 3);
    assert_eq!(received(&server).await, 3);
    probe.assert_classes(&[Throttled; 3], "503 + Retry-After: 0");
    assert_eq!(
        probe.retries(),
        vec![(2, Throttled, true), (3, Throttled, true)],
        "both retries waited as Retry-After said"
    );
    assert_eq!(
        probe.gave_up(),
        vec![(3, Throttled, GiveUpReason::MaxAttempts)]
    );
}

/// A 503 whose `Retry-After` asks for longer than `max_retry_after` (60 s) is `Throttled` but
/// returned at once, without sleeping: one request.
#[tokio::test]
async fn throttle_asking_too_long_is_returned_at_once() {
    let server = server(
        "GET",
        ResponseTemplate::new(503).insert_header("retry-after", "120"),
        1,
    )
    .await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let started = Instant::now();
    let resp = client
        .get(format!("{}/r", server.uri()))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.attempts(), 1);
    assert_eq!(received(&server).await, 1);
    probe.assert_classes(&[Throttled], "503 + Retry-After: 120");
    assert_eq!(
        probe.gave_up(),
        vec![(1, Throttled, GiveUpReason::RetryAfterTooLong)]
    );
}

/// 500, 502, 503 (without `Retry-After`) and 504 are `ServerError`, retried to 3 attempts in
/// all; the server sees exactly 3 requests and the last response comes back.
#[tokio::test]
async fn retryable_server_errors_are_retried_three_times() {
    for status in [500, 502, 503, 504] {
        get_status(status, &[], ServerError, 3).await;
    }
}

/// 501 Not Implemented is a `ServerError`, but another attempt will not change it: sent once.
#[tokio::test]
async fn not_implemented_501_is_server_error_not_retried() {
    get_status(501, &[], ServerError, 1).await;
}

/// A POST that gets a 503 is not retried (POST is not idempotent): one request.
#[tokio::test]
async fn post_to_server_error_is_sent_once() {
    let server = server("POST", ResponseTemplate::new(503), 1).await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let resp = client
        .post(format!("{}/r", server.uri()))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.attempts(), 1);
    assert_eq!(received(&server).await, 1);
    probe.assert_classes(&[ServerError], "POST 503");
    assert_eq!(
        probe.gave_up(),
        vec![(1, ServerError, GiveUpReason::NotIdempotent)]
    );
}

/// A POST with an `Idempotency-Key` that gets a 503 is retried like a GET: 3 requests, each
/// carrying the key and the body.
#[tokio::test]
async fn post_with_idempotency_key_is_retried() {
    let server = server("POST", ResponseTemplate::new(503), 3).await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let resp = client
        .post(format!("{}/r", server.uri()))
        .idempotency_key("k1")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.attempts(), 3);
    let seen = server.received_requests().await.unwrap();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r.headers.get("idempotency-key").unwrap(), "k1");
        assert_eq!(r.body, b"payload");
    }
    probe.assert_classes(&[ServerError; 3], "POST 503 + Idempotency-Key");
}

/// A failure then a success: the classes follow each attempt, and the server saw exactly as
/// many requests as `attempts()` says.
#[tokio::test]
async fn server_error_then_success_counts_match() {
    let server = MockServer::start().await;
    // wiremock answers with the first mounted mock that matches and has not reached its
    // `up_to_n_times` limit: 502, then 429, then 200.
    Mock::given(method("GET"))
        .and(path("/r"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/r"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/r"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&server)
        .await;
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
    Mock::given(method("GET"))
        .and(path("/r"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/r"))
        .mount(&server)
        .await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| {
        b.http_client_builder(
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::limited(1)),
        )
    });
    let err = client
        .get(format!("{}/r", server.uri()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Request, "{err:?}");
    assert_eq!(FailureClass::from_error(&err), ClientError);
    assert_eq!(err.attempts(), 1);
    assert_eq!(received(&server).await, 2);
    probe.assert_classes(&[ClientError], "redirect loop");
    assert_eq!(probe.event_statuses(), vec![None]);
}

// ---------------------------------------------------------------------------------------------
// Real transport failures
// ---------------------------------------------------------------------------------------------

/// Connection refused: `Err` with `is_connect()`, kind `Connect`, class `Network`, retried to 3
/// attempts.
#[tokio::test]
async fn connection_refused_is_network_and_retried() {
    let addr = closed_port();
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let url = format!("http://{addr}/r");
    let started = Instant::now();
    let err = client.get(&url).send().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
    assert!(!err.is_timeout());
    assert_eq!(err.timeout_kind(), None);
    assert_eq!(FailureClass::from_error(&err), Network);
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.url().map(|u| u.as_str()), Some(url.as_str()));
    probe.assert_classes(&[Network; 3], "connection refused");
    assert_eq!(probe.event_statuses(), vec![None; 3]);
    assert_eq!(
        probe.gave_up(),
        vec![(3, Network, GiveUpReason::MaxAttempts)]
    );
}

/// A connect failure is retried for any method, POST included: nothing reached the server.
#[tokio::test]
async fn connection_refused_post_is_retried() {
    let addr = closed_port();
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let err = client
        .post(format!("http://{addr}/r"))
        .body("payload")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert_eq!(FailureClass::from_error(&err), Network);
    assert_eq!(err.attempts(), 3);
    probe.assert_classes(&[Network; 3], "POST connection refused");
}

/// The connection is reset after the request was sent: kind `Transport` (not `Connect`), class
/// `Network`; a GET is retried to 3 attempts, each reaching the server.
#[tokio::test]
async fn reset_is_network_and_get_is_retried() {
    let (addr, heads) = counting_hangup_server(true).await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err:?}");
    assert!(!err.is_connect() && !err.is_timeout(), "{err:?}");
    assert_eq!(FailureClass::from_error(&err), Network);
    assert_eq!(err.attempts(), 3);
    assert_count(&heads, 3, "requests the server read").await;
    probe.assert_classes(&[Network; 3], "reset");
}

/// The same reset for a POST: it reached the server, so it is sent once.
#[tokio::test]
async fn reset_post_is_sent_once() {
    let (addr, heads) = counting_hangup_server(true).await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let err = client
        .post(format!("http://{addr}/r"))
        .body("payload")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err:?}");
    assert!(!err.is_connect());
    assert_eq!(FailureClass::from_error(&err), Network);
    assert_eq!(err.attempts(), 1);
    assert_count(&heads, 1, "requests the server read").await;
    probe.assert_classes(&[Network], "POST reset");
    assert_eq!(
        probe.gave_up(),
        vec![(1, Network, GiveUpReason::NotIdempotent)]
    );
}

/// `support::net::reset_server` itself (no counter) gives the same class.
#[tokio::test]
async fn support_reset_server_is_network() {
    let addr = reset_server().await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err:?}");
    assert_eq!(FailureClass::from_error(&err), Network);
    assert_eq!(err.attempts(), 3);
    probe.assert_classes(&[Network; 3], "support reset_server");
}

/// The server closes the connection cleanly without answering (an incomplete message): kind
/// `Transport`, class `Network`, a GET retried to 3 attempts.
#[tokio::test]
async fn incomplete_message_is_network_and_retried() {
    let (addr, heads) = counting_hangup_server(false).await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err:?}");
    assert!(!err.is_connect() && !err.is_timeout(), "{err:?}");
    assert_eq!(FailureClass::from_error(&err), Network);
    assert_eq!(err.attempts(), 3);
    assert_count(&heads, 3, "requests the server read").await;
    probe.assert_classes(&[Network; 3], "incomplete message");

    // And `support::net::closing_server` itself.
    let addr = closing_server().await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| b);
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(FailureClass::from_error(&err), Network, "{err:?}");
    assert_eq!(err.attempts(), 3);
    probe.assert_classes(&[Network; 3], "support closing_server");
}

/// A server that never answers, attempt timeout 100 ms, total 1 s: each attempt times out after
/// 100 ms; the third (at about 200 ms) ends well before the total deadline, so the error is the
/// attempt timeout, after 3 attempts, each on its own connection.
#[tokio::test]
async fn silent_server_attempt_timeout_fires_on_each_attempt() {
    let (addr, accepted) = counting_silent_server().await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| {
        b.attempt_timeout(Duration::from_millis(100))
            .total_timeout(Duration::from_millis(1000))
    });
    let started = Instant::now();
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Attempt), "{err:?}");
    assert!(!err.is_connect());
    assert_eq!(FailureClass::from_error(&err), Timeout);
    assert_eq!(err.attempts(), 3);
    assert_count(&accepted, 3, "connections accepted").await;
    probe.assert_classes(&[Timeout; 3], "silent server, attempt timeout");
    assert_eq!(probe.timeouts(), vec![TimeoutKind::Attempt; 3]);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(900),
        "three 100 ms attempts took {took:?}"
    );
}

/// `support::net::silent_server` itself gives the same attempt timeout.
#[tokio::test]
async fn support_silent_server_is_timeout() {
    let addr = silent_server().await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| {
        b.attempt_timeout(Duration::from_millis(100))
            .total_timeout(Duration::from_millis(1000))
    });
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Attempt), "{err:?}");
    assert_eq!(FailureClass::from_error(&err), Timeout);
    assert_eq!(err.attempts(), 3);
    probe.assert_classes(&[Timeout; 3], "support silent_server");
}

/// Attempt timeout 200 ms, total 380 ms: the first attempt times out at 200 ms (attempt
/// timeout); the second starts at about 201 ms and would time out at about 401 ms, but is cut
/// at the total deadline, 380 ms, so the error is the total timeout, after 2 attempts on 2
/// connections. (The 180 ms between the first timeout and the deadline leave the second attempt
/// room to start even on a loaded machine: with 100 ms and 150 ms, 32 test processes on 2 cores
/// sometimes woke the task after the deadline, and the request ended after 1 attempt.)
#[tokio::test]
async fn silent_server_total_timeout_cuts_the_second_attempt() {
    let (addr, accepted) = counting_silent_server().await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| {
        b.attempt_timeout(Duration::from_millis(200))
            .total_timeout(Duration::from_millis(380))
    });
    let started = Instant::now();
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total), "{err:?}");
    assert_eq!(FailureClass::from_error(&err), Timeout);
    assert_eq!(err.attempts(), 2, "{err:?}");
    assert_count(&accepted, 2, "connections accepted").await;
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_millis(900),
        "total timeout of 380 ms took {took:?}"
    );
    // The first attempt timed out on its own; the second was cut by the deadline (the attempt
    // timeout capped at the deadline fires with the total timeout's kind). Both are `Timeout`
    // to the classifier; the total-timeout stage reports the one `Total` event.
    probe.assert_classes(&[Timeout; 2], "silent server, total timeout");
    assert_eq!(
        probe.timeouts(),
        vec![TimeoutKind::Attempt, TimeoutKind::Total]
    );
}

/// reqwest's own `read_timeout` (palisade's attempt timeout removed) fires as a transport
/// timeout: class `Timeout`, retried to 3 attempts, each on its own connection.
#[tokio::test]
async fn reqwest_read_timeout_is_transport_timeout_and_retried() {
    let (addr, accepted) = counting_silent_server().await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| {
        b.http_client_builder(reqwest::Client::builder().read_timeout(Duration::from_millis(100)))
            .no_attempt_timeout()
            .total_timeout(Duration::from_secs(2))
    });
    let started = Instant::now();
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Transport), "{err:?}");
    assert_eq!(FailureClass::from_error(&err), Timeout);
    assert_eq!(err.attempts(), 3);
    assert_count(&accepted, 3, "connections accepted").await;
    probe.assert_classes(&[Timeout; 3], "reqwest read_timeout");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

/// reqwest's own `timeout` with neither attempt nor total timeout in palisade: a transport
/// timeout, retried to 3 attempts.
#[tokio::test]
async fn reqwest_timeout_without_total_timeout_is_transport_timeout() {
    let (addr, accepted) = counting_silent_server().await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| {
        b.http_client_builder(reqwest::Client::builder().timeout(Duration::from_millis(100)))
            .no_attempt_timeout()
            .no_total_timeout()
    });
    let started = Instant::now();
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Transport), "{err:?}");
    assert_eq!(FailureClass::from_error(&err), Timeout);
    assert_eq!(err.attempts(), 3);
    assert_count(&accepted, 3, "connections accepted").await;
    probe.assert_classes(&[Timeout; 3], "reqwest timeout, no total timeout");
    assert!(took < Duration::from_millis(1000), "took {took:?}");
}

/// reqwest's own `timeout` (palisade's attempt timeout removed, total timeout kept at 1 s):
/// should be a transport timeout after 100 ms per attempt, retried to 3 attempts.
///
/// Regression: the total timeout used to set a per-request timeout, which in reqwest replaces
/// the client's `timeout`; the client's 100 ms was silently dropped.
#[tokio::test]
async fn reqwest_timeout_is_transport_timeout_and_retried() {
    let (addr, accepted) = counting_silent_server().await;
    let probe = Probe::default();
    let client = make_client(&probe, |b| {
        b.http_client_builder(reqwest::Client::builder().timeout(Duration::from_millis(100)))
            .no_attempt_timeout()
            .total_timeout(Duration::from_secs(1))
    });
    let started = Instant::now();
    let err = client
        .get(format!("http://{addr}/r"))
        .send()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Transport), "{err:?}");
    assert_eq!(FailureClass::from_error(&err), Timeout);
    assert_eq!(err.attempts(), 3, "{err:?}");
    assert_count(&accepted, 3, "connections accepted").await;
    probe.assert_classes(&[Timeout; 3], "reqwest timeout");
    assert!(took < Duration::from_millis(900), "took {took:?}");
}
