//! The rate-limit stage on its own (tower layers over the in-memory transport), in paused time.

mod support;

use std::time::Duration;

use palisade::layer::{RetryLayer, TotalTimeoutLayer};
use palisade::rate_limit::{RateLimit, RateLimitLayer, RateLimitService};
use palisade::{Error, ErrorKind};
use reqwest::{Method, Request, Response};
use support::{exact, ms, secs, Events, Mock, Step};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

fn req(url: &str) -> Request {
    Request::new(Method::GET, url.parse().expect("valid test URL"))
}

async fn send<S>(svc: &mut S, url: &str) -> Result<Response, Error>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    svc.ready().await?.call(req(url)).await
}

fn layer(limit: RateLimit, events: &Events) -> RateLimitLayer {
    RateLimitLayer::new(limit)
        .expect("valid test configuration")
        .on_event(events.hook())
}

fn service(layer: &RateLimitLayer, mock: &Mock) -> RateLimitService<Mock> {
    tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone())
}

/// When the transport saw each request to `url`, from `start`.
fn times(mock: &Mock, url: &str, start: Instant) -> Vec<Duration> {
    mock.seen()
        .iter()
        .filter(|s| s.url == url)
        .map(|s| s.at - start)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn over_ten_seconds_admits_the_burst_plus_the_rate_and_no_more() {
    // 50/s with a burst of 10, offered 2,000/s in fail-fast mode for 10 s (both ends included):
    // 10 at once, then one every 20 ms.
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(RateLimit::per_second(50).burst(10).fail_fast(), &events);
    let mut svc = service(&rl, &mock);
    let start = Instant::now();
    let (mut ok, mut rejected) = (0, 0);
    for tick in 0..=10_000 {
        assert_eq!(start.elapsed(), ms(tick));
        for _ in 0..2 {
            match send(&mut svc, "http://api.test/x").await {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(e.is_rate_limited(), "{e:?}");
                    rejected += 1;
                }
            }
        }
        tokio::time::sleep(ms(1)).await;
    }
    assert_eq!(ok, 510);
    assert_eq!(
        mock.calls(),
        510,
        "a rejected call never reaches the transport"
    );
    assert_eq!(rejected, 20_002 - 510);
    assert_eq!(events.count("Rejected"), rejected);
    let seen = times(&mock, "http://api.test/x", start);
    // Two calls a millisecond take the burst in 5 ms.
    let burst: Vec<_> = (0..10).map(|i| ms(i / 2)).collect();
    assert_eq!(seen[..10], burst);
    assert!(seen[10..]
        .iter()
        .enumerate()
        .all(|(i, t)| *t == ms(20 * (i as u64 + 1))));
}

#[tokio::test(start_paused = true)]
async fn waiting_callers_go_one_token_interval_apart() {
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(
        RateLimit::per_second(50).burst(10).max_wait(secs(60)),
        &events,
    );
    let svc = service(&rl, &mock);
    let start = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { send(&mut svc, "http://api.test/x").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(start.elapsed(), ms(20 * 90));
    let seen = times(&mock, "http://api.test/x", start);
    let want: Vec<_> = (0..100u64).map(|i| ms(20 * i.saturating_sub(9))).collect();
    assert_eq!(seen, want);
    assert_eq!(events.count("Rejected"), 0);
}

#[tokio::test(start_paused = true)]
async fn per_host_limits_are_independent() {
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(
        RateLimit::per_second(1).burst(2).per_host().fail_fast(),
        &events,
    );
    let mut svc = service(&rl, &mock);
    for url in ["http://a.test/1", "http://a.test/2"] {
        send(&mut svc, url).await.unwrap();
    }
    let err = send(&mut svc, "http://a.test/3").await.unwrap_err();
    assert!(err.is_rate_limited());
    // Host B, and host A on another port, still have their whole burst.
    for url in ["http://b.test/1", "http://b.test/2", "http://a.test:8080/"] {
        send(&mut svc, url).await.unwrap();
    }
    assert!(send(&mut svc, "http://b.test/3").await.is_err());
    assert_eq!(mock.calls(), 5);
    assert_eq!(rl.tracked_hosts(), 3);
    assert_eq!(events.count(r#"key: "a.test:80""#), 1);
    assert_eq!(events.count(r#"key: "b.test:80""#), 1);

    // The same calls through a global limiter share one bucket.
    let mock = Mock::always(Step::Status(200));
    let global = layer(RateLimit::per_second(1).burst(2).fail_fast(), &events);
    let mut svc = service(&global, &mock);
    send(&mut svc, "http://a.test/1").await.unwrap();
    send(&mut svc, "http://a.test/2").await.unwrap();
    assert!(send(&mut svc, "http://b.test/1")
        .await
        .unwrap_err()
        .is_rate_limited());
    assert_eq!(global.tracked_hosts(), 0);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_errors_carry_an_exact_retry_after() {
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(RateLimit::per_second(10).burst(2).fail_fast(), &events);
    let mut svc = service(&rl, &mock);
    let start = Instant::now();
    send(&mut svc, "http://api.test/x").await.unwrap();
    send(&mut svc, "http://api.test/x").await.unwrap();
    let err = send(&mut svc, "http://api.test/x?k=v").await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert!(err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(ms(100)));
    assert_eq!(err.url().map(|u| u.as_str()), Some("http://api.test/x?k=v"));
    assert!(err
        .to_string()
        .starts_with("rate limited for url (http://api.test/x"));

    tokio::time::advance(ms(30)).await;
    let err = send(&mut svc, "http://api.test/x").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(ms(70)));
    tokio::time::advance(ms(70)).await;
    send(&mut svc, "http://api.test/x").await.unwrap();
    assert_eq!(mock.calls(), 3);
    assert_eq!(events.count("Rejected"), 2);
    assert_eq!(events.count("retry_after: Some(100ms)"), 1);
    assert_eq!(events.count("RateLimitWait"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_waits_exactly_until_the_next_token() {
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(RateLimit::per_second(10).burst(1), &events);
    let mut svc = service(&rl, &mock);
    let start = Instant::now();
    send(&mut svc, "http://api.test/x").await.unwrap();
    send(&mut svc, "http://api.test/x").await.unwrap();
    assert_eq!(start.elapsed(), ms(100));
    tokio::time::advance(ms(30)).await;
    send(&mut svc, "http://api.test/x").await.unwrap();
    assert_eq!(start.elapsed(), ms(200));
    assert_eq!(
        times(&mock, "http://api.test/x", start),
        [ms(0), ms(100), ms(200)]
    );
    assert_eq!(events.count("RateLimitWait"), 2);
    assert_eq!(events.count("wait: 100ms"), 1);
    assert_eq!(events.count("wait: 70ms"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_max_wait_fails_fast() {
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(RateLimit::per_second(1).burst(1).max_wait(ms(500)), &events);
    let mut svc = service(&rl, &mock);
    let start = Instant::now();
    send(&mut svc, "http://api.test/x").await.unwrap();
    let err = send(&mut svc, "http://api.test/x").await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "rejected without waiting");
    assert!(err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(secs(1)));
    assert_eq!(mock.calls(), 1);
    // Exactly max_wait away: waits.
    tokio::time::advance(ms(500)).await;
    send(&mut svc, "http://api.test/x").await.unwrap();
    assert_eq!(start.elapsed(), secs(1));
    assert_eq!(events.count("RateLimitWait"), 1);
}

#[tokio::test(start_paused = true)]
async fn max_wait_counts_from_arrival_when_a_call_loses_the_token_to_another() {
    // Waiting calls are not queued: two that wait for the same token both wake at 100 ms; the
    // one that loses would wait 100 ms more, 200 ms in all, past its max_wait of 150 ms.
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(
        RateLimit::per_second(10).burst(1).max_wait(ms(150)),
        &events,
    );
    let mut svc = service(&rl, &mock);
    let start = Instant::now();
    send(&mut svc, "http://api.test/x").await.unwrap();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&mut svc, "http://api.test/x").await;
                (r.map(|_| ()), Instant::now())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(results.iter().all(|(_, at)| *at - start == ms(100)));
    let errs: Vec<_> = results
        .iter()
        .filter_map(|(r, _)| r.as_ref().err())
        .collect();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].retry_after(), Some(ms(100)));
    assert_eq!(mock.calls(), 2);
}

// Regression: a call that lost the token it woke for to another waiting call was reported
// again for each sleep, so `palisade.rate_limit.waits` counted sleeps, not calls, and its
// duration histogram the sleeps' lengths, not how long the calls were held.
#[tokio::test(start_paused = true)]
async fn a_held_call_is_reported_once_with_its_whole_wait() {
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(RateLimit::per_second(10).burst(1), &events);
    let mut svc = service(&rl, &mock);
    let start = Instant::now();
    send(&mut svc, "http://api.test/x").await.unwrap();
    // Three calls wait for the next token at once; each wakes at every token until it wins.
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { send(&mut svc, "http://api.test/x").await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(start.elapsed(), ms(300));
    assert_eq!(events.count("RateLimitWait"), 3, "{:#?}", events.all());
    for wait in ["100ms", "200ms", "300ms"] {
        assert_eq!(
            events.count(&format!(r#"RateLimitWait {{ key: "", wait: {wait} }}"#)),
            1,
            "{:#?}",
            events.all()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_total_deadline_fails_fast() {
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(RateLimit::per_second(1).burst(1).max_wait(secs(5)), &events);
    let mut svc = tower::ServiceBuilder::new()
        .layer(TotalTimeoutLayer::new(ms(800)).unwrap())
        .layer(rl.clone())
        .service(mock.clone());
    let start = Instant::now();
    send(&mut svc, "http://api.test/x").await.unwrap();
    let err = send(&mut svc, "http://api.test/x").await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(err.is_rate_limited(), "{err:?}");
    assert!(!err.is_timeout());
    assert_eq!(err.retry_after(), Some(secs(1)));
    assert_eq!(mock.calls(), 1);

    // A token that comes before the deadline is waited for. (A second's worth of tokens has
    // not come yet: the bucket is empty again after this.)
    let mut svc = tower::ServiceBuilder::new()
        .layer(TotalTimeoutLayer::new(ms(1_500)).unwrap())
        .layer(rl)
        .service(mock.clone());
    send(&mut svc, "http://api.test/x").await.unwrap();
    assert_eq!(start.elapsed(), secs(1));
    // A token due exactly at the deadline is not.
    let mut svc = tower::ServiceBuilder::new()
        .layer(TotalTimeoutLayer::new(secs(1)).unwrap())
        .layer(layer(
            RateLimit::per_second(1).burst(1).max_wait(secs(5)),
            &events,
        ))
        .service(mock.clone());
    send(&mut svc, "http://api.test/x").await.unwrap();
    let err = send(&mut svc, "http://api.test/x").await.unwrap_err();
    assert!(err.is_rate_limited());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_call_takes_no_token() {
    let mock = Mock::always(Step::Status(200));
    let events = Events::default();
    let rl = layer(RateLimit::per_second(10).burst(1), &events);
    let mut svc = service(&rl, &mock);
    let start = Instant::now();
    send(&mut svc, "http://api.test/x").await.unwrap();
    let waiting = svc.ready().await.unwrap().call(req("http://api.test/x"));
    let _ = tokio::time::timeout(ms(50), waiting).await.unwrap_err();
    tokio::time::advance(ms(50)).await;
    send(&mut svc, "http://api.test/x").await.unwrap();
    assert_eq!(start.elapsed(), ms(100), "the token was free for this call");
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_takes_a_token() {
    // Below the retry stage, each attempt waits for its own token.
    let mock = Mock::script([Step::Status(503), Step::Status(503)]);
    let events = Events::default();
    let mut svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(exact(ms(10), ms(10))).unwrap())
        .layer(layer(RateLimit::per_second(10).burst(1), &events))
        .service(mock.clone());
    let start = Instant::now();
    let resp = send(&mut svc, "http://api.test/x").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        times(&mock, "http://api.test/x", start),
        [ms(0), ms(100), ms(200)]
    );
    assert_eq!(events.count("RateLimitWait"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_holds_its_host_for_everyone_and_a_later_200_does_not_end_it() {
    // X (to A) answers 200 after 500 ms; Y (to A) answers 429 with `Retry-After: 2` at once.
    let mock = Mock::script([
        Step::after(ms(500), Step::Status(200)),
        Step::retry_after(429, "2"),
    ]);
    let events = Events::default();
    let rl = layer(
        RateLimit::per_second(1_000)
            .burst(100)
            .per_host()
            .max_wait(secs(10)),
        &events,
    );
    let mut svc = service(&rl, &mock);
    let start = Instant::now();
    let x = tokio::spawn(svc.ready().await.unwrap().call(req("http://a.test/x")));
    let y = send(&mut svc, "http://a.test/y").await.unwrap();
    assert_eq!(y.status(), 429);
    assert_eq!(events.count("ServerPushback"), 1);
    assert_eq!(events.count("pause: 2s"), 1);
    // Host B is not held.
    send(&mut svc, "http://b.test/1").await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Three calls to A at 0, 0.6 and 1.9 s all go at 2 s; X's 200 at 0.5 s changes nothing.
    let spawn_a = |svc: &RateLimitService<Mock>, path: &'static str| {
        let mut svc = svc.clone();
        tokio::spawn(async move { send(&mut svc, &format!("http://a.test/{path}")).await })
    };
    let z0 = spawn_a(&svc, "z0");
    tokio::time::sleep(ms(600)).await;
    assert_eq!(x.await.unwrap().unwrap().status(), 200);
    let z1 = spawn_a(&svc, "z1");
    send(&mut svc, "http://b.test/2").await.unwrap();
    assert_eq!(start.elapsed(), ms(600));
    tokio::time::sleep(ms(1_300)).await;
    let z2 = spawn_a(&svc, "z2");
    for z in [z0, z1, z2] {
        assert_eq!(z.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(start.elapsed(), secs(2));
    for path in ["z0", "z1", "z2"] {
        assert_eq!(
            times(&mock, &format!("http://a.test/{path}"), start),
            [secs(2)],
            "{path}"
        );
    }
    assert_eq!(times(&mock, "http://b.test/1", start), [Duration::ZERO]);
    assert_eq!(times(&mock, "http://b.test/2", start), [ms(600)]);
    assert_eq!(events.count("ServerPushback"), 1);
    assert_eq!(
        events.count(r#"RateLimitWait { key: "a.test:80", wait: 2s }"#),
        1
    );
    assert_eq!(
        events.count(r#"RateLimitWait { key: "a.test:80", wait: 1.4s }"#),
        1
    );
    assert_eq!(
        events.count(r#"RateLimitWait { key: "a.test:80", wait: 100ms }"#),
        1
    );
    assert_eq!(events.count(r#"key: "b.test:80""#), 0);
}

#[tokio::test(start_paused = true)]
async fn during_a_pause_fail_fast_calls_get_the_rest_of_it_as_their_hint() {
    let mock = Mock::script([Step::retry_after(429, "2")]);
    let events = Events::default();
    let rl = layer(RateLimit::per_second(100).per_host().fail_fast(), &events);
    let mut svc = service(&rl, &mock);
    assert_eq!(
        send(&mut svc, "http://a.test/").await.unwrap().status(),
        429
    );
    tokio::time::advance(ms(500)).await;
    let err = send(&mut svc, "http://a.test/").await.unwrap_err();
    assert!(err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(ms(1_500)));
    send(&mut svc, "http://b.test/").await.unwrap();
    tokio::time::advance(ms(1_500)).await;
    send(&mut svc, "http://a.test/").await.unwrap();
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn longer_pushback_extends_the_pause_and_shorter_does_not_shorten_it() {
    let mock = Mock::script([
        Step::retry_after(429, "2"),
        Step::retry_after(429, "5"),
        Step::retry_after(429, "1"),
    ]);
    let events = Events::default();
    let rl = layer(RateLimit::per_second(100).fail_fast(), &events);
    let mut svc = service(&rl, &mock);
    // Three calls in flight at once (sent before any answer is seen), answered in order.
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(svc.ready().await.unwrap().call(req("http://a.test/")));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().status(), 429);
    }
    let err = send(&mut svc, "http://a.test/").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(secs(5)));
    assert_eq!(
        events.count("ServerPushback"),
        2,
        "the shorter pause changed nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn which_responses_push_back_and_how_far() {
    let mock = Mock::script([
        // No Retry-After: no pause.
        Step::Status(429),
        // A 503 without Retry-After is a server error, not a throttle.
        Step::Status(503),
        // A 200 with Retry-After is not a throttle either.
        Step::retry_after(200, "30"),
        // A 503 with Retry-After is; an hour is capped by max_pushback.
        Step::retry_after(503, "3600"),
    ]);
    let events = Events::default();
    let rl = layer(
        RateLimit::per_second(100).fail_fast().max_pushback(secs(5)),
        &events,
    );
    let mut svc = service(&rl, &mock);
    for want in [429, 503, 200, 503] {
        let resp = send(&mut svc, "http://a.test/").await.unwrap();
        assert_eq!(resp.status(), want);
    }
    let err = send(&mut svc, "http://a.test/").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(secs(5)));
    assert_eq!(events.count("ServerPushback"), 1);
    assert_eq!(
        events.count(r#"ServerPushback { key: "a.test:80", pause: 5s }"#),
        1
    );
    // A global limiter too pauses the host that pushed back only.
    send(&mut svc, "http://b.test/").await.unwrap();
}

// Issue 9, defect 8: with a global limiter, a 429 from any host paused every host.
#[tokio::test(start_paused = true)]
async fn a_429_from_one_host_pauses_that_host_only_even_for_a_global_limiter() {
    let mock = Mock::script([Step::retry_after(429, "60")]);
    let events = Events::default();
    let rl = layer(
        RateLimit::per_second(10).burst(3).max_wait(secs(1)),
        &events,
    );
    let mut svc = service(&rl, &mock);
    let start = Instant::now();
    assert_eq!(
        send(&mut svc, "http://hook.test/").await.unwrap().status(),
        429
    );
    // Other hosts go on at once (this failed before: they waited out the same 60 s).
    send(&mut svc, "http://api.test/1").await.unwrap();
    send(&mut svc, "http://other.test/").await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The paused host waits no more than max_wait: it is rejected with the rest of its pause.
    let err = send(&mut svc, "http://hook.test/").await.unwrap_err();
    assert!(err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(secs(60)));
    assert_eq!(
        events.count(r#"Rejected { kind: RateLimited, key: "hook.test:80""#),
        1
    );
    // The bucket is still one for all hosts: the burst of 3 is spent, the next call waits for
    // a token (and its wait is the global bucket's, key "").
    send(&mut svc, "http://api.test/2").await.unwrap();
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(events.count(r#"RateLimitWait { key: "", wait: 100ms }"#), 1);
    assert_eq!(mock.calls(), 4);
    tokio::time::advance(secs(60)).await;
    send(&mut svc, "http://hook.test/").await.unwrap();
}

// Issue 9, defect 8: the pause map is keyed by hosts a remote party chooses; it is bounded by
// max_hosts, keeping the pauses that end last.
#[tokio::test(start_paused = true)]
async fn pauses_are_bounded_by_max_hosts_and_the_one_that_ends_first_goes() {
    let mock = Mock::script([
        Step::retry_after(429, "10"),
        Step::retry_after(429, "30"),
        Step::retry_after(429, "20"),
        Step::retry_after(429, "5"),
    ]);
    let events = Events::default();
    let rl = layer(
        RateLimit::per_second(1_000).max_hosts(2).fail_fast(),
        &events,
    );
    let mut svc = service(&rl, &mock);
    for host in ["a", "b", "c", "d"] {
        let resp = send(&mut svc, &format!("http://{host}.test/"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
    }
    // c's 20 s took a's 10 s place; d's 5 s, ending before both, was not kept.
    let hint = |e: Error| e.retry_after();
    assert_eq!(
        hint(send(&mut svc, "http://b.test/").await.unwrap_err()),
        Some(secs(30))
    );
    assert_eq!(
        hint(send(&mut svc, "http://c.test/").await.unwrap_err()),
        Some(secs(20))
    );
    send(&mut svc, "http://a.test/").await.unwrap();
    send(&mut svc, "http://d.test/").await.unwrap();
    assert_eq!(events.count("ServerPushback"), 3);
}

#[tokio::test(start_paused = true)]
async fn max_pushback_zero_ignores_pushback_and_a_custom_classifier_decides() {
    let mock = Mock::script([Step::retry_after(429, "2")]);
    let events = Events::default();
    let rl = layer(
        RateLimit::per_second(100)
            .fail_fast()
            .max_pushback(Duration::ZERO),
        &events,
    );
    let mut svc = service(&rl, &mock);
    send(&mut svc, "http://a.test/").await.unwrap();
    send(&mut svc, "http://a.test/").await.unwrap();

    // An API that says "slow down" with a 418 and Retry-After.
    let mock = Mock::script([Step::retry_after(418, "2")]);
    let rl = layer(RateLimit::per_second(100).fail_fast(), &events).classifier(
        palisade::Classifier::from_fn(|o| match o.status() {
            Some(s) if s == 418 => palisade::FailureClass::Throttled,
            _ => palisade::Classifier::default_class(o),
        }),
    );
    let mut svc = service(&rl, &mock);
    send(&mut svc, "http://a.test/").await.unwrap();
    let err = send(&mut svc, "http://a.test/").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(secs(2)));
}

#[tokio::test(start_paused = true)]
async fn idle_hosts_are_dropped() {
    let mock = Mock::always(Step::Status(200));
    let rl = RateLimitLayer::new(
        RateLimit::per_second(50)
            .burst(10)
            .per_host()
            .max_hosts(100_000)
            .fail_fast(),
    )
    .unwrap();
    let mut svc = service(&rl, &mock);
    for i in 0..100_000 {
        send(&mut svc, &format!("http://h{i}.test/")).await.unwrap();
    }
    assert_eq!(rl.tracked_hosts(), 100_000, "every host is still in use");
    // Their buckets are full again 20 ms after their one call; the next sweep (within 1,024
    // calls, since more than a second has passed) drops them.
    tokio::time::sleep(secs(2)).await;
    for _ in 0..1024 {
        let _ = send(&mut svc, "http://one.test/").await;
    }
    assert_eq!(rl.tracked_hosts(), 1);
}

// Issue 9, defect 9: nothing bounded the per-host limiter's memory; a host was dropped only
// once its bucket was full again, years away for this limit (this kept all 100,000).
#[tokio::test(start_paused = true)]
async fn per_host_buckets_are_bounded_by_default() {
    let mock = Mock::always(Step::Status(200));
    let rl = RateLimitLayer::new(RateLimit::per_minute(1).burst(1_000_000).per_host()).unwrap();
    let mut svc = service(&rl, &mock);
    for i in 0..100_000 {
        send(&mut svc, &format!("http://h{i}.test/")).await.unwrap();
    }
    assert!(rl.tracked_hosts() <= 10_000, "{}", rl.tracked_hosts());
}

// Issue 9, defect 9: `max_hosts` caps the per-host limiter, and below the cap no host's state
// is lost.
#[tokio::test(start_paused = true)]
async fn max_hosts_caps_the_per_host_limiter_and_nothing_is_evicted_below_it() {
    let mock = Mock::always(Step::Status(200));
    let rl = RateLimitLayer::new(
        RateLimit::per_minute(1)
            .burst(1_000_000)
            .per_host()
            .max_hosts(500),
    )
    .unwrap();
    let mut svc = service(&rl, &mock);
    for i in 0..100_000 {
        send(&mut svc, &format!("http://h{i}.test/")).await.unwrap();
        assert!(rl.tracked_hosts() <= 500);
    }
    assert_eq!(rl.tracked_hosts(), 500);

    // A host that spent its burst stays limited while up to max_hosts hosts are known.
    let rl = RateLimitLayer::new(
        RateLimit::per_minute(1)
            .burst(2)
            .per_host()
            .max_hosts(1_000)
            .fail_fast(),
    )
    .unwrap();
    let mut svc = service(&rl, &mock);
    send(&mut svc, "http://busy.test/").await.unwrap();
    send(&mut svc, "http://busy.test/").await.unwrap();
    for i in 0..999 {
        send(&mut svc, &format!("http://h{i}.test/")).await.unwrap();
        if i % 100 == 0 {
            let err = send(&mut svc, "http://busy.test/").await.unwrap_err();
            assert_eq!(err.retry_after(), Some(secs(60)), "after {i} hosts");
        }
    }
    assert_eq!(rl.tracked_hosts(), 1_000);
    assert!(send(&mut svc, "http://busy.test/")
        .await
        .unwrap_err()
        .is_rate_limited());
}

#[test]
fn bad_configuration_is_a_config_error_naming_the_field() {
    let field = |limit: RateLimit| RateLimitLayer::new(limit).unwrap_err().field().to_owned();
    assert_eq!(field(RateLimit::per_second(0)), "rate_limit.rate");
    assert_eq!(field(RateLimit::per_minute(0).burst(5)), "rate_limit.rate");
    assert_eq!(
        field(RateLimit::per_second(10).burst(0)),
        "rate_limit.burst"
    );
    assert_eq!(
        field(RateLimit::per_second(10).max_hosts(0)),
        "rate_limit.max_hosts"
    );
    // A burst that would take thousands of years to refill.
    assert_eq!(
        field(RateLimit::per_minute(1).burst(u32::MAX)),
        "rate_limit.burst"
    );
    let err = RateLimitLayer::new(RateLimit::per_second(0)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: `rate_limit.rate` must be at least 1"
    );
    // Extremes that work.
    RateLimitLayer::new(RateLimit::per_second(u32::MAX).burst(u32::MAX)).unwrap();
    RateLimitLayer::new(RateLimit::per_minute(1).burst(1_000_000)).unwrap();
    RateLimitLayer::new(
        RateLimit::per_second(1)
            .max_wait(Duration::MAX)
            .max_pushback(Duration::MAX),
    )
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn extreme_settings_neither_panic_nor_hang() {
    // A Retry-After of u64::MAX seconds, uncapped: the pause is held to 100 years, and a call
    // that may not wait that long fails at once.
    let mock = Mock::script([Step::retry_after(429, "18446744073709551615")]);
    let events = Events::default();
    let rl = layer(
        RateLimit::per_second(u32::MAX)
            .burst(u32::MAX)
            .max_pushback(Duration::MAX),
        &events,
    );
    let mut svc = service(&rl, &mock);
    send(&mut svc, "http://a.test/").await.unwrap();
    let err = send(&mut svc, "http://a.test/").await.unwrap_err();
    assert!(err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(secs(100 * 365 * 24 * 3600)));
    assert_eq!(events.count("pause: 3153600000s"), 1);
}
