//! Fault injection (`palisade::testing::chaos`): rates and determinism over the layer alone,
//! then every fault through `palisade::Client`'s standard pipeline over `ChaosLayer` over the
//! in-memory transport, in paused time, side by side with the real fault scripted in the
//! transport: the same outcome, the same events, at the same times. Last, over a real
//! `reqwest::Client` and loopback sockets (real time), an injected reset and a cut body against
//! real ones.

mod support;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use palisade::rate_limit::RateLimit;
use palisade::testing::chaos::{
    Chaos, ChaosHandle, ChaosLayer, ChaosService, Fault, Injected, Match, Rule,
};
use palisade::{Client, ClientBuilder, Error, ErrorKind, FailureClass, ResponseExt};
use reqwest::{Request, Response};
use support::{exact, ms, secs, BodyEnd, Events, Mock, Step};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const URL: &str = "http://api.test/v1/items";

fn layer(chaos: Chaos) -> ChaosLayer {
    ChaosLayer::new(chaos).expect("valid test configuration")
}

/// The layer over `mock`, and its handle.
fn service(chaos: Chaos, mock: &Mock) -> (ChaosService<Mock>, ChaosHandle) {
    let l = layer(chaos);
    (l.layer(mock.clone()), l.handle())
}

fn req(method: Method, url: &str) -> Request {
    Request::new(method, url.parse().expect("valid test URL"))
}

async fn call<S>(svc: &mut S, r: Request) -> Result<Response, Error>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    svc.ready().await?.call(r).await
}

/// The rule that injected the outcome's fault, if one did.
fn mark(outcome: &Result<Response, Error>) -> Option<String> {
    match outcome {
        Ok(resp) => Injected::in_response(resp).map(|m| m.rule().to_owned()),
        Err(e) => Injected::in_error(e).map(|m| m.rule().to_owned()),
    }
}

/// Asserts that `count` out of `n` is within 4 standard deviations of `n · p`.
fn within_4_sigma(count: u64, n: u64, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (count as f64 - mean).abs() <= 4.0 * sigma,
        "{what}: {count} of {n}, expected {mean} ± {}",
        4.0 * sigma
    );
}

/// A predicate that matches the first request it is asked about, and no other.
fn first_only() -> Match {
    let seen = Arc::new(AtomicUsize::new(0));
    Match::from_fn(move |_| seen.fetch_add(1, Ordering::SeqCst) == 0)
}

// ---------------------------------------------------------------------------------------------
// Rates and determinism, over the layer alone
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn two_rules_hit_at_their_rates_over_ten_thousand_calls() {
    let mock = Mock::always(Step::Status(200));
    let (mut svc, handle) = service(
        Chaos::new(2024)
            .rule(Rule::new(Fault::Status(503)).rate(0.2))
            .rule(Rule::new(Fault::Reset).rate(0.3)),
        &mock,
    );
    let n = 10_000;
    let (mut unavailable, mut resets, mut ok) = (0, 0, 0);
    for _ in 0..n {
        match call(&mut svc, req(Method::GET, URL)).await {
            Ok(r) if r.status() == 503 => unavailable += 1,
            Ok(r) if r.status() == 200 => ok += 1,
            Err(e) if e.kind() == ErrorKind::Transport => resets += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    within_4_sigma(unavailable, n, 0.2, "503");
    // The second rule fires only where the first did not: 0.8 · 0.3.
    within_4_sigma(resets, n, 0.8 * 0.3, "reset");
    assert_eq!(unavailable + resets + ok, n);
    assert_eq!(handle.injected("status_503"), Some(unavailable));
    assert_eq!(handle.injected("reset"), Some(resets));
    assert_eq!(handle.injected_total(), unavailable + resets);
    assert_eq!(mock.calls() as u64, ok, "faults never reach the transport");
    assert_eq!(handle.calls(), n);
}

/// Five faults at 10 % each; the rule each call met (or none), in order.
async fn run(seed: u64, calls: usize) -> (Vec<Option<String>>, ChaosHandle) {
    let mock = Mock::always(Step::Full(200, vec![], b"0123456789".to_vec()));
    let (mut svc, handle) = service(
        Chaos::new(seed)
            .rule(Rule::new(Fault::Status(503)).name("a").rate(0.1))
            .rule(Rule::new(Fault::Reset).name("b").rate(0.1))
            .rule(Rule::new(Fault::Latency(ms(10))).name("c").rate(0.1))
            .rule(Rule::new(Fault::CutBody { after: 3 }).name("d").rate(0.1))
            .rule(
                Rule::new(Fault::TooManyRequests {
                    retry_after: secs(1),
                })
                .name("e")
                .rate(0.1),
            ),
        &mock,
    );
    let mut faults = Vec::new();
    for _ in 0..calls {
        let start = Instant::now();
        let outcome = call(&mut svc, req(Method::GET, URL)).await;
        let rule = mark(&outcome);
        // Each mark goes with what its fault does.
        match (rule.as_deref(), outcome) {
            (Some("a"), Ok(r)) => assert_eq!(r.status(), 503),
            (Some("b"), Err(e)) => assert_eq!(e.kind(), ErrorKind::Transport),
            (Some("c"), Ok(r)) => {
                assert_eq!(start.elapsed(), ms(10));
                assert_eq!(r.bytes().await.unwrap(), &b"0123456789"[..]);
            }
            (Some("d"), Ok(r)) => assert!(r.bytes().await.is_err()),
            (Some("e"), Ok(r)) => assert_eq!(r.status(), 429),
            (None, Ok(r)) => {
                assert_eq!(start.elapsed(), Duration::ZERO);
                assert_eq!(r.bytes().await.unwrap(), &b"0123456789"[..]);
            }
            (rule, outcome) => panic!("{rule:?} with {outcome:?}"),
        }
        faults.push(rule);
    }
    (faults, handle)
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_faults_and_another_seed_others() {
    let (first, _) = run(7, 2_000).await;
    let (again, handle) = run(7, 2_000).await;
    assert_eq!(first, again);
    for rule in ["a", "b", "c", "d", "e"] {
        let n = first.iter().filter(|f| f.as_deref() == Some(rule)).count();
        assert!(n > 50, "rule {rule} fired {n} times");
        assert_eq!(handle.injected(rule), Some(n as u64));
    }
    let (other, _) = run(8, 2_000).await;
    assert_ne!(first, other);
    let differ = first.iter().zip(&other).filter(|(a, b)| a != b).count();
    assert!(differ > 400, "only {differ} calls differ");
}

#[tokio::test(start_paused = true)]
async fn the_faults_are_the_documented_draws_and_a_reseed_replays_them() {
    let mock = Mock::always(Step::Status(200));
    let (mut svc, handle) = service(
        Chaos::new(11)
            .rule(Rule::new(Fault::Status(500)).rate(0.25))
            .rule(Rule::new(Fault::Status(502)).rate(0.5)),
        &mock,
    );
    let expected = |seed: u64, n: u64| -> Vec<u16> {
        (0..n)
            .map(|c| {
                if Chaos::draw(seed, c, 0) < 0.25 {
                    500
                } else if Chaos::draw(seed, c, 1) < 0.5 {
                    502
                } else {
                    200
                }
            })
            .collect()
    };
    let mut statuses = Vec::new();
    for _ in 0..500 {
        statuses.push(
            call(&mut svc, req(Method::GET, URL))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, expected(11, 500));

    handle.reseed(11);
    assert_eq!(handle.calls(), 0);
    let mut replay = Vec::new();
    for _ in 0..500 {
        replay.push(
            call(&mut svc, req(Method::GET, URL))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(replay, statuses, "the same sequence again");

    handle.reseed(12);
    let mut other = Vec::new();
    for _ in 0..500 {
        other.push(
            call(&mut svc, req(Method::GET, URL))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(other, expected(12, 500));
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_service_share_one_sequence() {
    let mock = Mock::always(Step::Status(200));
    let chaos = || Chaos::new(5).rule(Rule::new(Fault::Status(503)).rate(0.5));
    let (mut one, _) = service(chaos(), &mock);
    let mut alone = Vec::new();
    for _ in 0..200 {
        alone.push(
            call(&mut one, req(Method::GET, URL))
                .await
                .unwrap()
                .status(),
        );
    }
    let (svc, _) = service(chaos(), &mock);
    let mut clones = [svc.clone(), svc];
    let mut shared = Vec::new();
    for i in 0..200 {
        let s = &mut clones[i % 2];
        shared.push(call(s, req(Method::GET, URL)).await.unwrap().status());
    }
    assert_eq!(shared, alone);
}

// ---------------------------------------------------------------------------------------------
// Each fault through the standard pipeline, beside the real one
// ---------------------------------------------------------------------------------------------

/// What a request came to, in words that show its class: the status and attempts of a
/// response, or the kind, timeout kind, connect mark, class and attempts of an error.
fn outcome(result: &Result<Response, Error>) -> String {
    match result {
        Ok(r) => format!("{} after {} attempt(s)", r.status(), r.attempts()),
        Err(e) => format!(
            "{:?} {:?} connect={} class={:?} after {} attempt(s)",
            e.kind(),
            e.timeout_kind(),
            e.is_connect(),
            FailureClass::from_error(e),
            e.attempts()
        ),
    }
}

/// What one run of a scenario showed: its outcome, its events, how long it took.
#[derive(Debug, PartialEq)]
struct Seen {
    outcome: String,
    events: Vec<String>,
    took: Duration,
}

/// Sends `request` through a client over `transport` (the standard pipeline, adjusted by `f`,
/// with exact backoff), and reports what it saw.
async fn through<S>(
    transport: S,
    f: impl Fn(ClientBuilder) -> ClientBuilder,
    request: impl Fn(&Client) -> palisade::RequestBuilder,
) -> (Seen, Result<Response, Error>)
where
    S: Service<Request, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let events = Events::default();
    let client = f(Client::builder()
        .transport(transport)
        .retry(exact(ms(100), secs(1)))
        .on_event(events.hook()))
    .build()
    .expect("valid test configuration");
    let start = Instant::now();
    let result = request(&client).send().await;
    let seen = Seen {
        outcome: outcome(&result),
        events: events.all(),
        took: start.elapsed(),
    };
    (seen, result)
}

/// Runs a scenario twice: over a transport that gives the real fault (`real`), and over
/// `ChaosLayer` with `rule` over a healthy transport. Asserts both saw the same outcome, the
/// same events at the same times; returns what the chaos run saw, and its result.
async fn same_as_real(
    real: Mock,
    rule: Rule,
    f: impl Fn(ClientBuilder) -> ClientBuilder,
    request: impl Fn(&Client) -> palisade::RequestBuilder,
) -> (Seen, Result<Response, Error>, Mock, ChaosHandle) {
    let (want, _) = through(real, &f, &request).await;
    let healthy = Mock::always(Step::Status(200));
    let l = layer(Chaos::new(1).rule(rule));
    let handle = l.handle();
    let (got, result) = through(l.layer(healthy.clone()), &f, &request).await;
    assert_eq!(got, want, "injected vs real");
    (got, result, healthy, handle)
}

#[tokio::test(start_paused = true)]
async fn an_injected_503_is_a_server_error_and_retried() {
    let (seen, result, healthy, handle) = same_as_real(
        Mock::always(Step::Status(503)),
        Rule::new(Fault::Status(503)),
        |b| b,
        |c| c.get(URL),
    )
    .await;
    assert_eq!(seen.outcome, "503 Service Unavailable after 3 attempt(s)");
    assert_eq!(seen.took, ms(300), "100 ms, then 200 ms of backoff");
    assert_eq!(
        seen.events
            .iter()
            .filter(|e| e.starts_with("Retry") && e.contains("class: ServerError"))
            .count(),
        2
    );
    let resp = result.unwrap();
    assert_eq!(Injected::in_response(&resp).unwrap().rule(), "status_503");
    assert_eq!(
        resp.url().as_str(),
        URL,
        "the request's URL, as reqwest gives it"
    );
    assert_eq!(healthy.calls(), 0);
    assert_eq!(handle.injected(0), Some(3), "each attempt drew again");
}

#[tokio::test(start_paused = true)]
async fn an_injected_429_delays_the_retry_by_its_retry_after_exactly() {
    let (seen, _, healthy, _) = same_as_real(
        Mock::script([Step::retry_after(429, "2")]),
        Rule::new(Fault::TooManyRequests {
            retry_after: secs(2),
        })
        .when(first_only()),
        |b| b,
        |c| c.get(URL),
    )
    .await;
    assert_eq!(seen.outcome, "200 OK after 2 attempt(s)");
    assert_eq!(seen.took, secs(2));
    assert!(
        seen.events
            .iter()
            .any(|e| e.contains("class: Throttled") && e.contains("delay: 2s")),
        "{:#?}",
        seen.events
    );
    assert_eq!(
        healthy.seen()[0].at.elapsed(),
        Duration::ZERO,
        "sent at 2 s"
    );
}

#[tokio::test(start_paused = true)]
async fn an_injected_429_pauses_its_host_in_the_rate_limiter() {
    let mock = Mock::always(Step::Status(200));
    let l = layer(
        Chaos::new(1).rule(
            Rule::new(Fault::TooManyRequests {
                retry_after: secs(2),
            })
            .when(first_only()),
        ),
    );
    let events = Events::default();
    let client = Client::builder()
        .transport(l.layer(mock.clone()))
        .retry(exact(ms(100), secs(1)))
        .rate_limit(RateLimit::per_second(100).per_host().max_wait(secs(10)))
        .on_event(events.hook())
        .build()
        .unwrap();
    let start = Instant::now();
    let c = client.clone();
    let first = tokio::spawn(async move { c.get("http://api.test/a").send().await });
    tokio::time::sleep(ms(500)).await;
    assert_eq!(events.count("ServerPushback"), 1, "{:#?}", events.all());
    let health = client.health();
    let host = health
        .hosts
        .iter()
        .find(|h| h.host == "api.test:80")
        .expect("the host");
    assert_eq!(host.paused_for, Some(ms(1_500)));
    // Another request to the host waits out the pause too; another host does not.
    client.get("http://other.test/").send().await.unwrap();
    assert_eq!(start.elapsed(), ms(500));
    let second = client.get("http://api.test/b").send().await.unwrap();
    assert_eq!(second.attempts(), 1);
    assert_eq!(start.elapsed(), secs(2));
    assert_eq!(first.await.unwrap().unwrap().attempts(), 2);
    let mut at: Vec<(String, Duration)> = mock
        .seen()
        .iter()
        .map(|s| (s.url.clone(), s.at - start))
        .collect();
    at.sort();
    assert_eq!(
        at,
        [
            ("http://api.test/a".to_owned(), secs(2)),
            ("http://api.test/b".to_owned(), secs(2)),
            ("http://other.test/".to_owned(), ms(500)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_injected_reset_is_a_network_failure_retried_only_when_idempotent() {
    let reset = || Mock::always(Step::Fail(io::ErrorKind::ConnectionReset));
    let (seen, result, _, _) =
        same_as_real(reset(), Rule::new(Fault::Reset), |b| b, |c| c.get(URL)).await;
    assert_eq!(
        seen.outcome,
        "Transport None connect=false class=Network after 3 attempt(s)"
    );
    assert_eq!(
        seen.events
            .iter()
            .filter(|e| e.starts_with("Attempt") && e.contains("class: Network"))
            .count(),
        3,
        "{:#?}",
        seen.events
    );
    let err = result.unwrap_err();
    assert_eq!(err.url().map(|u| u.as_str()), Some(URL));
    assert_eq!(Injected::in_error(&err).unwrap().fault(), &Fault::Reset);

    // A reset may come after the server took the request: a POST is not resent...
    let (seen, _, _, _) = same_as_real(
        reset(),
        Rule::new(Fault::Reset),
        |b| b,
        |c| c.post(URL).body("{}"),
    )
    .await;
    assert_eq!(
        seen.outcome,
        "Transport None connect=false class=Network after 1 attempt(s)"
    );
    // ...unless it carries an Idempotency-Key.
    let (seen, _, _, _) = same_as_real(
        reset(),
        Rule::new(Fault::Reset),
        |b| b,
        |c| c.post(URL).header("idempotency-key", "k-1").body("{}"),
    )
    .await;
    assert_eq!(
        seen.outcome,
        "Transport None connect=false class=Network after 3 attempt(s)"
    );
}

#[tokio::test(start_paused = true)]
async fn an_injected_hang_ends_in_the_attempt_timeout_exactly() {
    let (seen, _, healthy, _) = same_as_real(
        Mock::always(Step::Hang),
        Rule::new(Fault::Hang),
        |b| b.attempt_timeout(secs(1)).no_retry(),
        |c| c.get(URL),
    )
    .await;
    assert_eq!(
        seen.outcome,
        "Timeout Some(Attempt) connect=false class=Timeout after 1 attempt(s)"
    );
    assert_eq!(seen.took, secs(1));
    assert_eq!(healthy.calls(), 0);
    assert!(
        seen.events
            .iter()
            .any(|e| e == "Timeout { kind: Attempt, after: 1s }"),
        "{:#?}",
        seen.events
    );

    // Retried like a real hang: three attempt timeouts and two backoffs.
    let (seen, _, _, _) = same_as_real(
        Mock::always(Step::Hang),
        Rule::new(Fault::Hang),
        |b| b.attempt_timeout(secs(1)),
        |c| c.get(URL),
    )
    .await;
    assert_eq!(seen.took, ms(3_300));
    assert_eq!(
        seen.outcome,
        "Timeout Some(Attempt) connect=false class=Timeout after 3 attempt(s)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hang_holds_nothing_and_drops_cleanly() {
    let freed = support::Freed::default();
    let mock = Mock::always(Step::Status(200));
    let (mut svc, _) = service(Chaos::new(1).rule(Fault::Hang), &mock);
    let mut r = req(Method::POST, URL);
    *r.body_mut() = Some(reqwest::Body::from(freed.chunk(b"payload")));
    let fut = svc.ready().await.unwrap().call(r);
    assert!(
        freed.is_freed(),
        "the request is dropped when the hang is drawn"
    );
    assert_eq!(mock.calls(), 0);
    let waited = tokio::time::timeout(secs(3600), fut).await;
    assert!(waited.is_err(), "never answers");
}

#[tokio::test(start_paused = true)]
async fn injected_latency_adds_exactly_its_duration() {
    let (seen, result, healthy, _) = same_as_real(
        Mock::always(Step::after(ms(300), Step::Status(200))),
        Rule::new(Fault::Latency(ms(300))),
        |b| b,
        |c| c.get(URL),
    )
    .await;
    assert_eq!(seen.outcome, "200 OK after 1 attempt(s)");
    assert_eq!(seen.took, ms(300));
    assert_eq!(
        healthy.seen()[0].at.elapsed(),
        Duration::ZERO,
        "sent after the wait"
    );
    assert!(Injected::in_response(&result.unwrap()).is_some());

    // Longer than the attempt timeout: a timeout, after exactly the attempt timeout; the
    // request is never sent.
    let (seen, _, healthy, _) = same_as_real(
        Mock::always(Step::after(secs(2), Step::Status(200))),
        Rule::new(Fault::Latency(secs(2))),
        |b| b.attempt_timeout(secs(1)).no_retry(),
        |c| c.get(URL),
    )
    .await;
    assert_eq!(
        seen.outcome,
        "Timeout Some(Attempt) connect=false class=Timeout after 1 attempt(s)"
    );
    assert_eq!(seen.took, secs(1));
    assert_eq!(healthy.calls(), 0);
}

/// A response's body as read: its announced length, the bytes that came, whether it failed
/// (as a reqwest `is_decode` error) and the kind palisade gives that error.
async fn read_body(mut resp: Response) -> (Option<u64>, Vec<u8>, Option<(bool, ErrorKind)>) {
    let announced = resp.content_length();
    let mut got = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => return (announced, got, None),
            Err(e) => {
                let decode = e.is_decode();
                return (announced, got, Some((decode, Error::from(e).kind())));
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_cut_body_fails_when_read_and_is_shorter_than_its_content_length() {
    let headers = vec![("content-length", "10".to_owned())];
    let mock = Mock::always(Step::Full(200, headers.clone(), b"0123456789".to_vec()));
    let l = layer(Chaos::new(1).rule(Fault::CutBody { after: 4 }));
    let client = Client::builder()
        .transport(l.layer(mock.clone()))
        .build()
        .unwrap();
    let resp = client
        .get(URL)
        .send()
        .await
        .expect("the head is the server's");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(resp.url().as_str(), URL);
    assert_eq!(resp.attempts(), 1);
    assert_eq!(Injected::in_response(&resp).unwrap().rule(), "cut_body");
    let cut = read_body(resp).await;
    assert_eq!(
        cut,
        (Some(10), b"0123".to_vec(), Some((true, ErrorKind::Body)))
    );

    // As a body whose connection was cut after 4 of its 10 bytes.
    let truncated = tower::service_fn(|_req: Request| async {
        Ok::<_, Error>(support::chunked_response(
            vec![&b"0123"[..]],
            BodyEnd::Fail,
            Some(10),
        ))
    });
    let real = Client::builder().transport(truncated).build().unwrap();
    assert_eq!(read_body(real.get(URL).send().await.unwrap()).await, cut);

    // `bytes()` fails too, as a reqwest body error, with the mark in its chain.
    let err = client
        .get(URL)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap_err();
    assert!(err.is_decode(), "{err:?}");
    assert_eq!(Injected::in_error(&err).unwrap().rule(), "cut_body");
}

// ---------------------------------------------------------------------------------------------
// Predicates
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn only_matching_host_path_and_method_are_hit() {
    let mock = Mock::always(Step::Status(200));
    let l = layer(
        Chaos::new(1)
            .rule(
                Rule::new(Fault::Status(503)).name("v1").when(
                    Match::host("api.test")
                        .path_prefix("/v1")
                        .method(Method::GET),
                ),
            )
            .rule(Rule::new(Fault::Status(500)).name("canary").when(
                Match::host("*.canary.test").filter(|r| r.headers().contains_key("x-chaos")),
            )),
    );
    let handle = l.handle();
    let client = Client::builder()
        .transport(l.layer(mock.clone()))
        .no_retry()
        .build()
        .unwrap();
    for (method, url, chaos_header, want) in [
        (Method::GET, "http://api.test/v1", false, 503),
        (Method::GET, "http://api.test/v1/items?q=1", false, 503),
        (Method::GET, "http://API.test:8080/v1/items", false, 503),
        (Method::GET, "http://api.test/v10", false, 200),
        (Method::GET, "http://api.test/v2/items", false, 200),
        (Method::POST, "http://api.test/v1/items", false, 200),
        (Method::GET, "http://other.test/v1/items", false, 200),
        (Method::GET, "http://eu.canary.test/x", true, 500),
        (Method::GET, "http://eu.canary.test/x", false, 200),
        (Method::GET, "http://canary.test/x", true, 200),
    ] {
        let mut b = client.request(method.clone(), url);
        if chaos_header {
            b = b.header("x-chaos", "1");
        }
        let status = b.send().await.unwrap().status();
        assert_eq!(status, want, "{method} {url} x-chaos={chaos_header}");
    }
    assert_eq!(handle.injected("v1"), Some(3));
    assert_eq!(handle.injected("canary"), Some(1));
    assert_eq!(mock.calls(), 6);
}

// ---------------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn disabled_injects_nothing_and_enabled_goes_on_with_the_sequence() {
    let mock = Mock::always(Step::Status(200));
    let (mut svc, handle) = service(Chaos::new(1).rule(Fault::Status(503)).enabled(false), &mock);
    assert!(!handle.is_enabled());
    for _ in 0..100 {
        let resp = call(&mut svc, req(Method::GET, URL)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(Injected::in_response(&resp).is_none());
    }
    assert_eq!((handle.calls(), handle.injected_total()), (0, 0));
    assert_eq!(mock.calls(), 100);

    handle.enable();
    assert_eq!(
        call(&mut svc, req(Method::GET, URL))
            .await
            .unwrap()
            .status(),
        503
    );
    handle.disable();
    assert_eq!(
        call(&mut svc, req(Method::GET, URL))
            .await
            .unwrap()
            .status(),
        200
    );
    handle.enable();
    assert_eq!(
        call(&mut svc, req(Method::GET, URL))
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!((handle.calls(), handle.injected(0)), (2, Some(2)));
}

#[tokio::test(start_paused = true)]
async fn set_rate_changes_the_rate_at_run_time() {
    let mock = Mock::always(Step::Status(200));
    let (mut svc, handle) = service(
        Chaos::new(9).rule(Rule::new(Fault::Status(503)).name("flaky").rate(0.0)),
        &mock,
    );
    let hits = |svc: &mut ChaosService<Mock>, n: u64| {
        let mut svc = svc.clone();
        async move {
            let mut hit = 0;
            for _ in 0..n {
                if call(&mut svc, req(Method::GET, URL))
                    .await
                    .unwrap()
                    .status()
                    == 503
                {
                    hit += 1;
                }
            }
            hit
        }
    };
    assert_eq!(hits(&mut svc, 1_000).await, 0);
    handle.set_rate("flaky", 1.0).unwrap();
    assert_eq!(hits(&mut svc, 1_000).await, 1_000);
    handle.set_rate(0, 0.5).unwrap();
    let half = hits(&mut svc, 4_000).await;
    within_4_sigma(half, 4_000, 0.5, "at 0.5");
    assert_eq!(handle.injected("flaky"), Some(1_000 + half));

    // A bad rate is refused, naming the field, and changes nothing.
    for bad in [f64::NAN, -0.5, 1.5, f64::INFINITY] {
        let err = handle.set_rate("flaky", bad).unwrap_err();
        assert_eq!(err.field(), "chaos.rule.rate");
        assert_eq!(handle.rate("flaky"), Some(0.5));
    }
    let err = handle.set_rate("nope", 0.1).unwrap_err();
    assert_eq!(err.field(), "chaos.rule");
    assert!(err.to_string().contains("`nope`"), "{err}");
}

#[test]
fn invalid_configurations_are_config_errors_naming_the_field() {
    let err = ChaosLayer::new(Chaos::new(1).rule(Rule::new(Fault::Hang).rate(1.2))).unwrap_err();
    assert_eq!(err.field(), "chaos.rule.rate");
    assert_eq!(
        err.to_string(),
        "invalid configuration: `chaos.rule.rate` of rule `hang` must be a finite number from 0 to 1, got 1.2"
    );
    let err =
        ChaosLayer::new(Chaos::new(1).rule(Rule::new(Fault::Reset).rate(f64::NAN))).unwrap_err();
    assert_eq!(err.field(), "chaos.rule.rate");
    let err = ChaosLayer::new(Chaos::new(1).rule(Fault::Status(42))).unwrap_err();
    assert_eq!(err.field(), "chaos.rule.fault");
    let err = ChaosLayer::new(Chaos::new(1).rule(Fault::Reset).rule(Fault::Reset)).unwrap_err();
    assert_eq!(err.field(), "chaos.rule.name");
}

#[tokio::test(start_paused = true)]
async fn counts_are_kept_per_rule_and_reset() {
    let mock = Mock::always(Step::Status(200));
    let (mut svc, handle) = service(
        Chaos::new(3)
            .rule(Rule::new(Fault::Status(500)).name("five-hundred").rate(0.3))
            .rule(Rule::new(Fault::Reset).rate(0.3)),
        &mock,
    );
    let mut seen = [0u64; 2];
    for _ in 0..1_000 {
        match mark(&call(&mut svc, req(Method::GET, URL)).await).as_deref() {
            Some("five-hundred") => seen[0] += 1,
            Some("reset") => seen[1] += 1,
            None => {}
            Some(other) => panic!("{other}"),
        }
    }
    assert_eq!(handle.injected("five-hundred"), Some(seen[0]));
    assert_eq!(handle.injected(1), Some(seen[1]));
    let rules = handle.rules();
    assert_eq!(
        rules
            .iter()
            .map(|r| (r.name.as_str(), r.injected))
            .collect::<Vec<_>>(),
        [("five-hundred", seen[0]), ("reset", seen[1])]
    );
    handle.reset_counts();
    assert_eq!(handle.injected_total(), 0);
    assert_eq!(handle.calls(), 1_000, "the sequence goes on");
}

// ---------------------------------------------------------------------------------------------
// Tracing
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn each_injected_fault_logs_its_rule_at_debug_without_secrets() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mock = Mock::always(Step::Status(200));
    let (mut svc, _) = service(
        Chaos::new(1).rule(Rule::new(Fault::Reset).name("flaky-reset")),
        &mock,
    );
    let mut r = req(
        Method::GET,
        "http://user:hunter2@api.test/x?token=s3cret&page=2",
    );
    r.headers_mut()
        .insert("authorization", "Bearer very-secret-token".parse().unwrap());
    call(&mut svc, r).await.unwrap_err();

    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(out.contains("DEBUG"), "{out}");
    assert!(out.contains("chaos: fault injected"), "{out}");
    assert!(out.contains("chaos.rule=\"flaky-reset\""), "{out}");
    assert!(out.contains("chaos.fault=Reset"), "{out}");
    assert!(out.contains("http.request.method=GET"), "{out}");
    assert!(
        out.contains("url.full=http://api.test/x?token=REDACTED&page=REDACTED"),
        "{out}"
    );
    for secret in ["very-secret-token", "s3cret", "hunter2", "user"] {
        assert!(!out.contains(secret), "{secret} leaked: {out}");
    }
}

// ---------------------------------------------------------------------------------------------
// Over a real reqwest::Client, against real faults on loopback (real time)
// ---------------------------------------------------------------------------------------------

/// A client over `transport` with 1–5 ms of backoff, for real time.
fn real_time_client<S>(transport: S) -> Client
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<Error>,
    S::Future: Send + 'static,
{
    Client::builder()
        .transport(transport)
        .retry(exact(ms(1), ms(5)))
        .build()
        .unwrap()
}

fn no_pool() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .retry(reqwest::retry::never())
        .build()
        .unwrap()
}

#[tokio::test]
async fn over_reqwest_an_injected_reset_is_classed_as_a_real_one() {
    let (addr, heads) = support::net::reset_server().await;
    let url = format!("http://{addr}/r");
    let real = real_time_client(no_pool());
    let l = layer(Chaos::new(1).rule(Fault::Reset));
    let chaos = real_time_client(l.layer(no_pool()));
    for (what, want_attempts) in [("GET", 3), ("POST", 1)] {
        let send = |c: &Client| match what {
            "GET" => c.get(&url),
            _ => c.post(&url).body("{}"),
        };
        let real_err = send(&real).send().await.unwrap_err();
        let chaos_err = send(&chaos).send().await.unwrap_err();
        let r: Result<Response, Error> = Err(real_err);
        let c: Result<Response, Error> = Err(chaos_err);
        assert_eq!(outcome(&c), outcome(&r), "{what}");
        assert_eq!(
            outcome(&c),
            format!("Transport None connect=false class=Network after {want_attempts} attempt(s)")
        );
    }
    // The real server saw 3 + 1 requests; the injected resets sent none.
    heads.assert_settles_at(4, "heads read").await;
}

/// A server that reads each request's head, answers a head announcing 10 bytes and 4 of them,
/// then closes the connection.
async fn truncating_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123")
                    .await;
                let _ = s.flush().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn over_reqwest_a_cut_body_fails_as_a_truncated_one() {
    let truncating = truncating_server().await;
    let real = real_time_client(no_pool());
    let real_resp = real
        .get(format!("http://{truncating}/r"))
        .send()
        .await
        .unwrap();
    let want = read_body(real_resp).await;
    assert_eq!(
        want,
        (Some(10), b"0123".to_vec(), Some((true, ErrorKind::Body)))
    );

    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_string("0123456789"))
        .mount(&server)
        .await;
    let l = layer(Chaos::new(1).rule(Fault::CutBody { after: 4 }));
    let chaos = real_time_client(l.layer(no_pool()));
    let resp = chaos
        .get(format!("{}/r", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(read_body(resp).await, want);

    // Disabled, the same client reads the whole body.
    l.handle().disable();
    let resp = chaos
        .get(format!("{}/r", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), &b"0123456789"[..]);
}
