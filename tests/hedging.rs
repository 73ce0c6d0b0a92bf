//! Hedging, in paused time over the in-memory transport: when hedges are sent (exact virtual
//! times), who wins, that losers are cancelled and free what they hold, that hedges spend the
//! retry budget, take rate-limit tokens and pass the breaker, and that the quantile delay
//! follows the host's latency.

mod support;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::bulkhead::Bulkhead;
use palisade::circuit_breaker::CircuitBreaker;
use palisade::hedge::Hedging;
use palisade::rate_limit::RateLimit;
use palisade::retry::{Retry, RetryBudget};
use palisade::{CircuitState, ClientBuilder, HostPolicy, ResponseExt, TimeoutKind};
use support::{exact, ms, secs, Events, Mock, Step};
use tokio::time::Instant;

const URL: &str = "http://a.test/items/1";

/// A client over `mock` with hedging after `delay`, exact retry delays and the events logged.
fn hedged(mock: &Mock, delay: Duration, events: &Events) -> palisade::Client {
    mock.client(|b| {
        b.retry(exact(ms(100), secs(1)))
            .hedging(Hedging::after(delay))
            .on_event(events.hook())
    })
}

/// When each request reached the transport, from `start`.
fn arrivals(mock: &Mock, start: Instant) -> Vec<Duration> {
    mock.seen().iter().map(|s| s.at - start).collect()
}

fn since(start: Instant, at: &[Instant]) -> Vec<Duration> {
    at.iter().map(|t| *t - start).collect()
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_attempt_is_beaten_by_the_hedge_sent_at_the_delay() {
    let mock = Mock::script([
        Step::after(secs(1), Step::Status(200)),
        Step::after(ms(10), Step::Status(200)),
    ]);
    let events = Events::default();
    let client = hedged(&mock, ms(50), &events);
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(start.elapsed(), ms(60), "the hedge's answer, at 50 + 10 ms");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.attempts(), 2, "the hedge is an attempt");
    assert_eq!(arrivals(&mock, start), [ms(0), ms(50)]);
    // The first attempt was dropped as soon as the hedge won.
    assert_eq!(since(start, &mock.cancelled()), [ms(60)]);
    assert_eq!(mock.in_flight(), 0);
    assert_eq!(
        events.count(
            "Hedge { method: GET, url: \"http://a.test/items/1\", attempt: 2, after: 50ms }"
        ),
        1,
        "{:?}",
        events.all()
    );
    assert_eq!(events.count("HedgeWon"), 1);
    assert_eq!(events.count("attempt: 2, sent: 2"), 1, "{:?}", events.all());
    // One attempt for the retry stage: a race is one attempt, whatever its copies.
    assert_eq!(events.count("Attempt {"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fast_first_attempt_sends_no_hedge() {
    let mock = Mock::always(Step::after(ms(49), Step::Status(200)));
    let events = Events::default();
    let client = hedged(&mock, ms(50), &events);
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(start.elapsed(), ms(49));
    assert_eq!(resp.attempts(), 1);
    assert_eq!(mock.calls(), 1);
    assert!(mock.cancelled().is_empty());
    assert_eq!(events.count("Hedge"), 0, "{:?}", events.all());
    // Nothing is left waiting: no hedge later either.
    tokio::time::sleep(secs(5)).await;
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_can_win_after_a_hedge_was_sent() {
    let mock = Mock::script([
        Step::after(ms(70), Step::Status(200)),
        Step::after(ms(100), Step::Status(200)),
    ]);
    let events = Events::default();
    let client = hedged(&mock, ms(50), &events);
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(start.elapsed(), ms(70));
    assert_eq!(resp.attempts(), 2);
    assert_eq!(since(start, &mock.cancelled()), [ms(70)], "the hedge lost");
    assert_eq!(events.count("attempt: 1, sent: 2"), 1, "{:?}", events.all());
}

#[tokio::test(start_paused = true)]
async fn only_idempotent_requests_are_hedged() {
    let slow = Step::after(secs(1), Step::Status(200));
    let events = Events::default();
    // POST and PATCH: not idempotent, never hedged.
    for method in [http::Method::POST, http::Method::PATCH] {
        let mock = Mock::always(slow.clone());
        let client = hedged(&mock, ms(50), &events);
        let resp = client.request(method.clone(), URL).send().await.unwrap();
        assert_eq!(resp.attempts(), 1, "{method}");
        assert_eq!(mock.calls(), 1, "{method}");
    }
    // With an `Idempotency-Key`, as the retry stage would retry it.
    let mock = Mock::always(slow.clone());
    let client = hedged(&mock, ms(50), &events);
    let start = Instant::now();
    let resp = client
        .post(URL)
        .idempotency_key("k-1")
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 2);
    assert_eq!(arrivals(&mock, start), [ms(0), ms(50)]);
    let seen = mock.seen();
    assert_eq!(
        seen[1].headers["idempotency-key"], "k-1",
        "the copy is the request"
    );
    // Every idempotent method is.
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        let mock = Mock::always(slow.clone());
        let client = hedged(&mock, ms(50), &events);
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        client.request(method.clone(), URL).send().await.unwrap();
        assert_eq!(mock.calls(), 2, "{method}");
    }
}

/// A request body that is a stream: it cannot be copied.
struct Stream(Option<bytes::Bytes>);

impl http_body::Body for Stream {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, io::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_body_cannot_be_copied_is_sent_once() {
    let mock = Mock::always(Step::after(secs(1), Step::Status(200)));
    let events = Events::default();
    let client = hedged(&mock, ms(50), &events);
    let body = reqwest::Body::wrap(Stream(Some(bytes::Bytes::from_static(b"data"))));
    let resp = client.put(URL).body(body).send().await.unwrap();
    assert_eq!(resp.attempts(), 1);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_hedged_attempts_bounds_the_copies_each_a_delay_after_the_previous() {
    for (max, times) in [
        (1, vec![ms(0)]),
        (2, vec![ms(0), ms(50)]),
        (4, vec![ms(0), ms(50), ms(100), ms(150)]),
    ] {
        let mock = Mock::always(Step::after(secs(1), Step::Status(200)));
        let client = mock.client(|b| b.hedging(Hedging::after(ms(50)).max_hedged_attempts(max)));
        let start = Instant::now();
        let resp = client.get(URL).send().await.unwrap();
        assert_eq!(start.elapsed(), secs(1), "the first answers first");
        assert_eq!(arrivals(&mock, start), times, "max {max}");
        assert_eq!(resp.attempts(), max);
        // Every loser was dropped with the winner's answer.
        assert_eq!(mock.cancelled().len(), max as usize - 1);
        assert!(mock.cancelled().iter().all(|t| *t - start == secs(1)));
    }
}

#[tokio::test(start_paused = true)]
async fn a_zero_delay_sends_every_copy_at_once() {
    let mock = Mock::script([
        Step::after(ms(30), Step::Status(200)),
        Step::after(ms(20), Step::Status(200)),
        Step::after(ms(10), Step::Status(200)),
    ]);
    let client = mock.client(|b| b.hedging(Hedging::after(Duration::ZERO).max_hedged_attempts(3)));
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(start.elapsed(), ms(10), "the third copy's answer");
    assert_eq!(arrivals(&mock, start), [ms(0); 3]);
    assert_eq!(resp.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failure_waits_for_the_racer_still_running() {
    // The first fails after the hedge was sent; the hedge answers well.
    let mock = Mock::script([
        Step::after(ms(60), Step::Status(503)),
        Step::after(ms(30), Step::Status(200)),
    ]);
    let events = Events::default();
    let client = hedged(&mock, ms(50), &events);
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(start.elapsed(), ms(80));
    assert_eq!(mock.calls(), 2, "no retry: the race was won");
    assert_eq!(events.count("Retry {"), 0);
    // A reset of the hedge does not end the race either.
    let mock = Mock::script([
        Step::after(ms(90), Step::Status(200)),
        Step::after(ms(5), Step::Fail(io::ErrorKind::ConnectionReset)),
    ]);
    let client = hedged(&mock, ms(50), &events);
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), start.elapsed()), (200, ms(90)));
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_the_hedge_ends_the_race_and_the_retry_stage_decides() {
    // The first fails at 10 ms: no hedge replaces the retry, which comes after its backoff
    // (100 ms), and is hedged in its turn.
    let mock = Mock::script([
        Step::after(ms(10), Step::Status(503)),
        Step::after(secs(1), Step::Status(200)),
        Step::after(ms(10), Step::Status(200)),
    ]);
    let events = Events::default();
    let client = hedged(&mock, ms(50), &events);
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(arrivals(&mock, start), [ms(0), ms(110), ms(160)]);
    assert_eq!(start.elapsed(), ms(170));
    assert_eq!(
        resp.attempts(),
        3,
        "two attempts of the retry stage, one hedge"
    );
    assert_eq!(events.count("Retry {"), 1);
    assert_eq!(events.count("Hedge {"), 1);
}

#[tokio::test(start_paused = true)]
async fn when_every_racer_fails_the_last_failure_goes_to_the_retry_stage() {
    let mock = Mock::script([
        Step::after(ms(80), Step::Status(503)),
        Step::after(ms(40), Step::Status(502)),
        Step::after(ms(10), Step::Status(200)),
    ]);
    let events = Events::default();
    let client = hedged(&mock, ms(50), &events);
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The race ends at 90 ms with the hedge's 502 (the last); the retry after 100 ms.
    assert_eq!(arrivals(&mock, start), [ms(0), ms(50), ms(190)]);
    assert_eq!(resp.attempts(), 3);
    let retry = events
        .all()
        .into_iter()
        .find(|e| e.starts_with("Retry"))
        .unwrap();
    assert!(retry.contains("class: ServerError"), "{retry}");
    assert!(
        events.count("attempt: 1, class: ServerError, status: Some(502)") == 1,
        "{:?}",
        events.all()
    );
    // Without retries, the call returns that failure, and says what it sent.
    let mock = Mock::script([
        Step::after(ms(80), Step::Status(503)),
        Step::after(ms(40), Step::Status(502)),
    ]);
    let client = mock.client(|b| b.no_retry().hedging(Hedging::after(ms(50))));
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (502, 2));
}

#[tokio::test(start_paused = true)]
async fn hedges_spend_the_retry_budget_and_none_is_sent_without_it() {
    // A budget of 2 retries (2 per second over 1 s, nothing from the requests).
    let budget = RetryBudget::default()
        .retry_ratio(0.0)
        .min_per_second(2)
        .window(secs(1));
    let mock = Mock::always(Step::after(ms(200), Step::Status(200)));
    let events = Events::default();
    let client = mock.client(|b| {
        b.retry(Retry::default().budget(budget))
            .hedging(Hedging::after(ms(50)))
            .on_event(events.hook())
    });
    assert_eq!(client.health().budget.unwrap().retries_available, 2);
    let mut attempts = Vec::new();
    for _ in 0..4 {
        attempts.push(client.get(URL).send().await.unwrap().attempts());
    }
    assert_eq!(attempts, [2, 2, 1, 1], "two hedges, then none");
    assert_eq!(mock.calls(), 6);
    assert_eq!(client.health().budget.unwrap().retries_available, 0);
    // The window moves on: the budget is back, and so are the hedges.
    tokio::time::sleep(secs(2)).await;
    assert_eq!(client.get(URL).send().await.unwrap().attempts(), 2);
}

/// Offers `n` requests, one every 10 ms, to a server whose every answer takes `latency`,
/// through a client `f` makes; returns the attempts it received and the span of the load in
/// seconds.
async fn slow_outage(
    n: usize,
    latency: Duration,
    f: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> (usize, f64) {
    let mock = Mock::always(Step::after(latency, Step::Status(200)));
    let client = mock.client(f);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.get(URL).send().await }));
        tokio::time::sleep(ms(10)).await;
    }
    let span = start.elapsed().as_secs_f64();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    (mock.calls(), span)
}

/// The default retry budget's bound on the attempts of `n` requests over `span` seconds: 20 %
/// more, plus 10 a second over the 10 s window.
fn bound(n: usize, span: f64) -> f64 {
    1.2 * n as f64 + 10.0 * (span + 10.0)
}

#[tokio::test(start_paused = true)]
async fn a_slow_outage_does_not_double_the_load() {
    // Every answer takes 500 ms, ten times the hedge delay: every request would be hedged.
    let (attempts, span) = slow_outage(3_000, ms(500), |b| b.hedging(Hedging::after(ms(50)))).await;
    eprintln!(
        "slow outage: 3000 requests over {span:.0} s, {attempts} attempts (bound {:.0})",
        bound(3_000, span)
    );
    assert!((attempts as f64) <= bound(3_000, span), "{attempts}");
    assert!(attempts < 3_000 * 3 / 2, "{attempts}: far from doubled");
    // And with a quantile delay, the estimate soon learns that 500 ms is the host's normal.
    let (attempts, _) =
        slow_outage(3_000, ms(500), |b| b.hedging(Hedging::at_quantile(0.95))).await;
    eprintln!("slow outage, p95: {attempts} attempts");
    assert!(attempts <= 3_000 + 100, "{attempts}");
}

#[tokio::test(start_paused = true)]
async fn without_a_retry_stage_hedging_has_a_budget_of_its_own() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| b.no_retry().hedging(Hedging::after(ms(50))));
    assert!(client.health().budget.is_none(), "no retry stage");
    let (attempts, span) = slow_outage(3_000, ms(500), |b| {
        b.no_retry().hedging(Hedging::after(ms(50)))
    })
    .await;
    eprintln!("slow outage without retry: {attempts} attempts");
    assert!((attempts as f64) <= bound(3_000, span), "{attempts}");
    assert!(attempts > 3_000 + 100, "{attempts}: the reserve at least");
}

#[tokio::test(start_paused = true)]
async fn each_hedge_takes_a_rate_limit_token_and_a_rejected_one_costs_no_budget() {
    // One token: the first attempt takes it, the hedge finds none and is rejected at once; the
    // first attempt goes on and answers.
    let mock = Mock::always(Step::after(ms(200), Step::Status(200)));
    let events = Events::default();
    let client = mock.client(|b| {
        b.rate_limit(RateLimit::per_second(1).burst(1).fail_fast())
            .hedging(Hedging::after(ms(50)))
            .on_event(events.hook())
    });
    let before = client.health().budget.unwrap().retries_available;
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), start.elapsed()), (200, ms(200)));
    assert_eq!(mock.calls(), 1, "the hedge never reached the transport");
    assert_eq!(events.count("Hedge {"), 1, "{:?}", events.all());
    assert_eq!(events.count("Rejected { kind: RateLimited"), 1);
    assert_eq!(events.count("HedgeWon"), 1);
    assert_eq!(resp.attempts(), 2, "a hedge was sent to the stages below");
    assert_eq!(
        client.health().budget.unwrap().retries_available,
        before,
        "the rejected hedge gave its retry back"
    );
    // With a token, a hedge goes through: tokens are spent per attempt.
    tokio::time::sleep(secs(1)).await;
    let client = mock.client(|b| {
        b.rate_limit(RateLimit::per_second(1).burst(2).fail_fast())
            .hedging(Hedging::after(ms(50)))
    });
    client.get(URL).send().await.unwrap();
    assert_eq!(mock.calls(), 3);
    let err = client.get(URL).send().await.unwrap_err();
    assert!(err.is_rate_limited(), "both tokens spent: {err}");
}

/// A breaker that opens on one failure for 1 s, with `permits` probes, over `mock`.
fn with_breaker(mock: &Mock, permits: u32, events: &Events) -> palisade::Client {
    mock.client(|b| {
        b.retry(exact(ms(100), secs(1)).max_attempts(1))
            .circuit_breaker(
                CircuitBreaker::default()
                    .consecutive_failures(1)
                    .break_duration(secs(1))
                    .half_open_permits(permits),
            )
            .hedging(Hedging::after(ms(50)))
            .on_event(events.hook())
    })
}

#[tokio::test(start_paused = true)]
async fn a_breaker_that_admits_no_more_rejects_the_hedge_and_the_first_goes_on() {
    let mock = Mock::script([Step::Status(500), Step::after(ms(200), Step::Status(200))]);
    let events = Events::default();
    let client = with_breaker(&mock, 1, &events);
    assert_eq!(client.get(URL).send().await.unwrap().status(), 500);
    let breakers = client.circuit_breaker().unwrap();
    assert_eq!(breakers.state("a.test:80"), CircuitState::Open);
    tokio::time::sleep(secs(1)).await;
    // Half-open: the first attempt is the probe; the hedge finds no permit.
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), start.elapsed()), (200, ms(200)));
    assert_eq!(mock.calls(), 2, "the hedge never reached the transport");
    assert_eq!(
        events.count("Rejected { kind: CircuitOpen"),
        1,
        "{:?}",
        events.all()
    );
    assert_eq!(breakers.state("a.test:80"), CircuitState::Closed);
    // An open breaker rejects the first attempt: nothing to hedge.
    breakers.isolate("a.test:80");
    let err = client.get(URL).send().await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_loser_gives_its_probe_permit_back() {
    // Two probes: the first attempt and the hedge each hold one; the hedge wins, the first
    // is dropped, and its permit is free for the next call.
    let mock = Mock::script([
        Step::Status(500),
        Step::after(secs(1), Step::Status(200)),
        Step::after(ms(10), Step::Status(200)),
    ]);
    let events = Events::default();
    let client = with_breaker(&mock, 2, &events);
    client.get(URL).send().await.unwrap();
    tokio::time::sleep(secs(1)).await;
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(start.elapsed(), ms(60));
    assert_eq!(resp.attempts(), 2);
    let breakers = client.circuit_breaker().unwrap();
    assert_eq!(
        breakers.state("a.test:80"),
        CircuitState::HalfOpen,
        "one probe succeeded, one was cancelled"
    );
    // Its permit came back: the next call is the second probe, and closes the breaker.
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(breakers.state("a.test:80"), CircuitState::Closed);
    assert_eq!(events.count("Rejected"), 0, "{:?}", events.all());
}

#[tokio::test(start_paused = true)]
async fn a_hedged_call_holds_one_bulkhead_place_and_frees_it() {
    let mock = Mock::always(Step::after(ms(200), Step::Status(200)));
    let client = mock.client(|b| b.bulkhead(Bulkhead::new(1)).hedging(Hedging::after(ms(50))));
    let c = client.clone();
    let first = tokio::spawn(async move { c.get(URL).send().await });
    tokio::time::sleep(ms(100)).await;
    assert_eq!(mock.in_flight(), 2, "the call and its hedge");
    let err = client.get(URL).send().await.unwrap_err();
    assert!(err.is_bulkhead_full(), "{err}");
    assert_eq!(first.await.unwrap().unwrap().attempts(), 2);
    assert_eq!(mock.in_flight(), 0);
    // The place is free again; and a call dropped mid-race frees it too.
    let c = client.clone();
    let dropped = tokio::spawn(async move { c.get(URL).send().await });
    tokio::time::sleep(ms(100)).await;
    dropped.abort();
    let _ = dropped.await;
    assert_eq!(mock.in_flight(), 0);
    assert!(client.get(URL).send().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_drops_every_racer() {
    let mock = Mock::always(Step::Hang);
    let client = mock.client(|b| b.hedging(Hedging::after(ms(50)).max_hedged_attempts(3)));
    let start = Instant::now();
    let call = client.get(URL).send();
    let left = tokio::time::timeout(ms(120), call).await;
    assert!(left.is_err(), "the caller left");
    assert_eq!(arrivals(&mock, start), [ms(0), ms(50), ms(100)]);
    assert_eq!(since(start, &mock.cancelled()), [ms(120); 3]);
    // And no hedge is sent later by anyone.
    tokio::time::sleep(secs(1)).await;
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_bounds_every_racer() {
    for attempt_timeout in [Some(ms(120)), None] {
        let mock = Mock::always(Step::Hang);
        let events = Events::default();
        let client = mock.client(|b| {
            let b: ClientBuilder = b
                .total_timeout(ms(120))
                .hedging(Hedging::after(ms(50)).max_hedged_attempts(5))
                .on_event(events.hook());
            match attempt_timeout {
                Some(t) => b.attempt_timeout(t),
                None => b.no_attempt_timeout(),
            }
        });
        let start = Instant::now();
        let err = client.get(URL).send().await.unwrap_err();
        assert_eq!(start.elapsed(), ms(120), "{attempt_timeout:?}");
        assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total), "{err}");
        // Hedges at 50 and 100 ms; the next would be at 150, past the deadline.
        assert_eq!(arrivals(&mock, start), [ms(0), ms(50), ms(100)]);
        assert_eq!(err.attempts(), 3, "the hedges count");
        assert_eq!(mock.in_flight(), 0);
        assert_eq!(mock.cancelled().len(), 3);
    }
    // A deadline that comes before the first hedge would: no race at all.
    let mock = Mock::always(Step::Hang);
    let client = mock.client(|b| {
        b.total_timeout(ms(40))
            .attempt_timeout(ms(40))
            .hedging(Hedging::after(ms(50)))
    });
    let err = client.get(URL).send().await.unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_has_its_own_attempt_timeout() {
    // Both hang: the first's attempt timeout fires at 100 ms, the hedge's at 150 ms; then the
    // race has failed, and the retry stage retries it after 100 ms.
    let mock = Mock::script([
        Step::Hang,
        Step::Hang,
        Step::after(ms(10), Step::Status(200)),
    ]);
    let events = Events::default();
    let client = mock.client(|b| {
        b.attempt_timeout(ms(100))
            .retry(exact(ms(100), secs(1)))
            .hedging(Hedging::after(ms(50)))
            .on_event(events.hook())
    });
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(arrivals(&mock, start), [ms(0), ms(50), ms(250)]);
    assert_eq!(start.elapsed(), ms(260));
    assert_eq!(resp.attempts(), 3);
    assert_eq!(
        events.count("Timeout { kind: Attempt"),
        2,
        "{:?}",
        events.all()
    );
}

#[tokio::test(start_paused = true)]
async fn the_quantile_delay_follows_the_hosts_latency() {
    let mock = Mock::always(Step::after(ms(100), Step::Status(200)));
    let events = Events::default();
    let client = mock.client(|b| {
        b.hedging(
            Hedging::at_quantile(0.9)
                .min_samples(10)
                .fallback_delay(ms(500)),
        )
        .on_event(events.hook())
    });
    // Until 10 answers are in, the fallback delay: 100 ms answers are never hedged.
    for _ in 0..10 {
        client.get(URL).send().await.unwrap();
    }
    assert_eq!(mock.calls(), 10);
    // Now the delay is the host's p90, 100 ms, rounded up to its bucket's edge (98.304 ms to
    // 106.496 ms), and by tokio's timer to the millisecond: a slow answer is hedged then.
    mock.set(Step::after(secs(1), Step::Status(200)));
    let start = Instant::now();
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(resp.attempts(), 2);
    let hedge_at = mock.seen()[11].at - start;
    assert_eq!(hedge_at, ms(107));
    // The host slows down to 300 ms: a few hedged answers later, that is its p90 and its
    // requests are no longer hedged.
    mock.set(Step::after(ms(300), Step::Status(200)));
    let mut hedged = Vec::new();
    for _ in 0..5 {
        hedged.push(client.get(URL).send().await.unwrap().attempts() > 1);
    }
    assert!(hedged[0], "{hedged:?}");
    assert!(!hedged[4], "{hedged:?}");
    let calls = mock.calls();
    for _ in 0..20 {
        assert_eq!(client.get(URL).send().await.unwrap().attempts(), 1);
    }
    assert_eq!(mock.calls(), calls + 20);
    // Another host has its own estimate: the fallback delay.
    let start = Instant::now();
    mock.set(Step::after(secs(1), Step::Status(200)));
    client.get("http://b.test/").send().await.unwrap();
    let seen = mock.seen();
    assert_eq!(seen[seen.len() - 1].at - start, ms(500));
}

#[tokio::test(start_paused = true)]
async fn host_policies_set_or_switch_off_hedging() {
    let mock = Mock::always(Step::after(ms(200), Step::Status(200)));
    let client = mock.client(|b| {
        b.hedging(Hedging::after(ms(50)))
            .host("quiet.test", HostPolicy::new().no_hedging())
            .host(
                "eager.test",
                HostPolicy::new().hedging(Hedging::after(ms(10)).max_hedged_attempts(3)),
            )
            .host(
                "own-retry.test",
                HostPolicy::new().retry(Retry::default().max_attempts(2)),
            )
    });
    let attempts = |url: &'static str| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().attempts() }
    };
    assert_eq!(attempts("http://a.test/").await, 2);
    assert_eq!(attempts("http://quiet.test/").await, 1);
    let start = Instant::now();
    let before = mock.calls();
    assert_eq!(attempts("http://eager.test/").await, 3);
    let at: Vec<Duration> = mock.seen()[before..].iter().map(|s| s.at - start).collect();
    assert_eq!(at, [ms(0), ms(10), ms(20)]);
    // Inherited hedging, on the policy's own retry budget.
    assert_eq!(attempts("http://own-retry.test/").await, 2);
    let debug = format!("{client:?}");
    assert!(
        debug.contains("hedging(after 50ms, max_hedged_attempts=2)"),
        "{debug}"
    );
}

#[test]
fn bad_hedging_values_are_config_errors_naming_the_field() {
    let err = |b: ClientBuilder| b.build().unwrap_err().field().to_owned();
    assert_eq!(
        err(palisade::Client::builder().hedging(Hedging::after(ms(1)).max_hedged_attempts(0))),
        "hedging.max_hedged_attempts"
    );
    assert_eq!(
        err(palisade::Client::builder().hedging(Hedging::at_quantile(1.5))),
        "hedging.quantile"
    );
    assert_eq!(
        err(palisade::Client::builder().host(
            "a.test",
            HostPolicy::new().hedging(
                Hedging::at_quantile(0.9)
                    .min_delay(secs(2))
                    .max_delay(secs(1))
            )
        )),
        "hosts.\"a.test\".hedging.max_delay"
    );
    assert!(palisade::Client::builder()
        .hedging(Hedging::at_quantile(0.95))
        .no_hedging()
        .build()
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_fallback_cache_dates_a_hedges_answer_from_when_the_hedge_was_sent() {
    use palisade::fallback::FallbackCache;
    let mock = Mock::script([
        Step::after(secs(5), Step::Status(200)),
        Step::after(
            ms(10),
            Step::With(200, vec![("cache-control", "max-age=60".into())]),
        ),
        Step::Status(503),
    ]);
    let client = mock.client(|b| {
        b.no_retry()
            .hedging(Hedging::after(secs(2)))
            .fallback_cache(FallbackCache::default())
    });
    let resp = client.get(URL).send().await.unwrap();
    assert_eq!(resp.attempts(), 2);
    drop(resp);
    tokio::time::sleep(secs(10)).await;
    let resp = client.get(URL).send().await.unwrap();
    let fb = resp.fallback().expect("served from the cache");
    // Asked at 2 s (the hedge), answered at 2.01 s, served 10 s later: 10 s old. Counted from
    // the call's start, it would be 12 s.
    assert_eq!(fb.age().map(|a| a.as_secs()), Some(10), "{:?}", fb.age());
}

#[cfg(feature = "metrics")]
#[test]
fn hedges_and_their_wins_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let mock = Mock::script([
                Step::after(secs(1), Step::Status(200)),
                Step::after(ms(10), Step::Status(200)),
                Step::after(ms(70), Step::Status(200)),
                Step::after(ms(100), Step::Status(200)),
                Step::after(ms(10), Step::Status(200)),
            ]);
            let client = mock.client(|b| {
                b.hedging(Hedging::after(ms(50)))
                    .metrics(palisade::metrics::Metrics::new())
            });
            for _ in 0..3 {
                client.get(URL).send().await.unwrap();
            }
        })
    });
    let mut counters = std::collections::BTreeMap::new();
    for (key, _, _, value) in snap.snapshot().into_vec() {
        let key = key.key().clone();
        if !key.name().starts_with("palisade.hedge") {
            continue;
        }
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let DebugValue::Counter(n) = value else {
            panic!("{} is a counter", key.name());
        };
        counters.insert(format!("{} {}", key.name(), labels.join(",")), n);
    }
    let want: std::collections::BTreeMap<String, u64> = [
        ("palisade.hedge.sent server.address=a.test", 2),
        (
            "palisade.hedge.wins server.address=a.test,palisade.hedge.attempt=2",
            1,
        ),
        (
            "palisade.hedge.wins server.address=a.test,palisade.hedge.attempt=1",
            1,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counters, want);
}

/// A local server whose first answer to `/slow` takes 2 s and every later one 10 ms.
async fn slow_then_fast() -> wiremock::MockServer {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock as Route, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Route::given(method("GET"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(secs(2)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Route::given(method("GET"))
        .and(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(ms(10)))
        .mount(&server)
        .await;
    server
}

// Real sockets, real time: the margins are wide.
#[tokio::test]
async fn over_reqwest_the_hedge_answers_and_the_slow_request_is_dropped() {
    let server = slow_then_fast().await;
    let client = palisade::Client::builder()
        .hedging(Hedging::after(ms(100)))
        .build()
        .unwrap();
    let start = std::time::Instant::now();
    let resp = client
        .get(format!("{}/slow", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.attempts(), 2);
    assert!(start.elapsed() < ms(1_500), "{:?}", start.elapsed());
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[cfg(feature = "middleware")]
#[tokio::test]
async fn through_the_middleware_each_copy_runs_the_chain_below() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts the calls that pass through it.
    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicUsize>);

    #[async_trait::async_trait]
    impl reqwest_middleware::Middleware for Counting {
        async fn handle(
            &self,
            req: reqwest::Request,
            ext: &mut http::Extensions,
            next: reqwest_middleware::Next<'_>,
        ) -> reqwest_middleware::Result<reqwest::Response> {
            self.0.fetch_add(1, Ordering::SeqCst);
            next.run(req, ext).await
        }
    }

    let server = slow_then_fast().await;
    let below = Counting::default();
    let palisade = palisade::Client::builder()
        .hedging(Hedging::after(ms(100)))
        .build_middleware()
        .unwrap();
    let http = reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(http)
        .with(palisade)
        .with(below.clone())
        .build();
    let start = std::time::Instant::now();
    let resp = client
        .get(format!("{}/slow", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (200, 2));
    assert!(start.elapsed() < ms(1_500), "{:?}", start.elapsed());
    assert_eq!(below.0.load(Ordering::SeqCst), 2, "the first and its hedge");
}
