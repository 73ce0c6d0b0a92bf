//! The retry stage through the client, over the in-memory transport in paused time: attempts,
//! idempotency, backoff delays, Retry-After.

mod support;

use std::io;
use std::time::{Duration, SystemTime};

use palisade::retry::{Backoff, Jitter, Retry};
use palisade::{Event, FailureClass, ResponseExt};
use support::{exact, ms, Events, Mock, Step};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn three_attempts_in_all_on_503() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| b);
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.status(), 503, "the last response is returned");
    assert_eq!(resp.attempts(), 3);
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn success_after_failures_reports_its_attempts() {
    let mock = Mock::script([Step::Status(502), Step::Status(504)]);
    let client = mock.client(|b| b);
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_retried() {
    for status in [400, 401, 403, 404, 409, 422] {
        let mock = Mock::always(Step::Status(status));
        let client = mock.client(|b| b);
        let resp = client.get("http://api.test/x").send().await.unwrap();
        assert_eq!(resp.status(), status);
        assert_eq!(resp.attempts(), 1, "{status}");
        assert_eq!(mock.calls(), 1, "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn not_implemented_and_other_5xx_outside_the_list_are_not_retried() {
    for status in [501, 505, 511] {
        let mock = Mock::always(Step::Status(status));
        let client = mock.client(|b| b);
        let resp = client.get("http://api.test/x").send().await.unwrap();
        assert_eq!(mock.calls(), 1, "{status}");
        assert_eq!(resp.attempts(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn retried_classes_are_429_408_timeouts_and_network_failures() {
    for step in [
        Step::Status(429),
        Step::Status(408),
        Step::Fail(io::ErrorKind::ConnectionReset),
        Step::Fail(io::ErrorKind::ConnectionRefused),
        Step::Fail(io::ErrorKind::UnexpectedEof),
        Step::Fail(io::ErrorKind::TimedOut),
    ] {
        let mock = Mock::always(step.clone());
        let client = mock.client(|b| b);
        let _ = client.get("http://api.test/x").send().await;
        assert_eq!(mock.calls(), 3, "{step:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn post_is_not_retried_on_503() {
    let mock = Mock::always(Step::Status(503));
    let events = Events::default();
    let client = mock.client(|b| b.on_event(events.hook()));
    let resp = client
        .post("http://api.test/orders")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(mock.calls(), 1);
    assert_eq!(events.count("NotIdempotent"), 1);
}

#[tokio::test(start_paused = true)]
async fn post_with_idempotency_key_is_retried() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| b);
    let resp = client
        .post("http://api.test/orders")
        .idempotency_key("order-42")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 3);
    let seen = mock.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|s| s.headers["idempotency-key"] == "order-42"));
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_after_a_connect_failure_only() {
    let mock = Mock::script([Step::Fail(io::ErrorKind::ConnectionRefused)]);
    let client = mock.client(|b| b);
    let resp = client
        .post("http://api.test/orders")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.attempts(), 2);

    // A reset may have happened after the server processed the request: not retried.
    let mock = Mock::script([Step::Fail(io::ErrorKind::ConnectionReset)]);
    let client = mock.client(|b| b);
    let err = client
        .patch("http://api.test/orders/1")
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), palisade::ErrorKind::Transport);
    assert_eq!(err.attempts(), 1);
    assert_eq!(mock.calls(), 1);
}

// Regression: `HostUnreachable`/`NetworkUnreachable` anywhere in an error's chain made it a
// connect failure, and connect failures are resent for any method, so a POST that the server
// had taken could be sent twice. A transport that takes the request, then fails with the error
// a retransmission timeout reports on an established socket.
#[tokio::test(start_paused = true)]
async fn a_post_that_fails_after_it_was_taken_is_sent_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    for kind in [
        io::ErrorKind::HostUnreachable,
        io::ErrorKind::NetworkUnreachable,
        io::ErrorKind::ConnectionRefused,
    ] {
        let taken = Arc::new(AtomicUsize::new(0));
        let t = taken.clone();
        let svc = tower::service_fn(move |req: reqwest::Request| {
            let t = t.clone();
            async move {
                // The whole request reached the server...
                assert!(req.body().and_then(|b| b.as_bytes()).is_some());
                t.fetch_add(1, Ordering::SeqCst);
                // ...then the connection failed, wrapped as a client library would.
                Err::<reqwest::Response, _>(io::Error::other(io::Error::new(kind, "after write")))
            }
        });
        let events = Events::default();
        let client = palisade::Client::builder()
            .transport(svc)
            .on_event(events.hook())
            .build()
            .unwrap();
        let err = client
            .post("http://api.test/orders")
            .body("{}")
            .send()
            .await
            .unwrap_err();
        assert!(!err.is_connect(), "{kind:?}: {err:?}");
        assert_eq!(taken.load(Ordering::SeqCst), 1, "{kind:?} was resent");
        assert_eq!(err.attempts(), 1);
        assert_eq!(events.count("NotIdempotent"), 1, "{kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn idempotent_methods_are_retried() {
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        let mock = Mock::always(Step::Status(503));
        let client = mock.client(|b| b);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let _ = client.request(m, "http://api.test/x").send().await.unwrap();
        assert_eq!(mock.calls(), 3, "{method}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_sent_once() {
    let mock = Mock::always(Step::Status(503));
    let events = Events::default();
    let client = mock.client(|b| b.on_event(events.hook()));
    let body = reqwest::Body::wrap(String::from("streamed"));
    let resp = client
        .put("http://api.test/blob")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(mock.calls(), 1);
    assert_eq!(events.count("BodyNotCloneable"), 1);
}

#[tokio::test(start_paused = true)]
async fn backoff_without_jitter_doubles_then_caps() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| {
        b.no_total_timeout()
            .retry(exact(ms(100), ms(700)).max_attempts(6))
    });
    let _ = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(mock.gaps(), [ms(100), ms(200), ms(400), ms(700), ms(700)]);
}

/// The gaps between the attempts of each of `requests` sequential requests that all failed
/// `attempts` times (one client, so one reqwest client is built).
async fn gaps_per_request(
    jitter: Jitter,
    requests: usize,
    attempts: u32,
    max: Duration,
) -> Vec<Vec<Duration>> {
    let mock = Mock::always(Step::Status(503));
    // Hundreds of 503s from one host would open the breaker: these tests are about the delays.
    let client = mock.client(|b| {
        b.no_total_timeout().no_circuit_breaker().retry(
            Retry::default()
                .max_attempts(attempts)
                .no_budget()
                .backoff(Backoff::new(ms(100), max).jitter(jitter)),
        )
    });
    for _ in 0..requests {
        let _ = client.get("http://api.test/x").send().await.unwrap();
    }
    let seen = mock.seen();
    assert_eq!(seen.len(), requests * attempts as usize);
    seen.chunks(attempts as usize)
        .map(|c| c.windows(2).map(|w| w[1].at - w[0].at).collect())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_jitter_variant_stays_within_its_bounds() {
    let (base, max) = (ms(100), ms(2_000));
    let ceiling = |n: u32| base.saturating_mul(1 << (n - 1)).min(max);
    for jitter in [
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
        Jitter::None,
    ] {
        for gaps in gaps_per_request(jitter, 50, 8, max).await {
            assert_eq!(gaps.len(), 7);
            let mut prev = base;
            for (i, gap) in gaps.iter().copied().enumerate() {
                let n = i as u32 + 1;
                let c = ceiling(n);
                match jitter {
                    Jitter::Full => assert!(gap <= c, "{jitter:?} {n}: {gap:?} > {c:?}"),
                    Jitter::Equal => assert!(gap >= c / 2 && gap <= c, "{jitter:?} {n}: {gap:?}"),
                    Jitter::Decorrelated => {
                        assert!(gap >= base && gap <= max && gap <= (prev * 3).max(base));
                    }
                    _ => assert_eq!(gap, c),
                }
                prev = gap;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn full_jitter_delays_grow_on_average() {
    // 200 requests, 4 retries each: the mean delay before retry n grows with n.
    let mut sums = [Duration::ZERO; 4];
    for gaps in gaps_per_request(Jitter::Full, 200, 5, ms(10_000)).await {
        for (s, g) in sums.iter_mut().zip(gaps) {
            *s += g;
        }
    }
    let means: Vec<_> = sums.iter().map(|s| *s / 200).collect();
    for w in means.windows(2) {
        assert!(w[1] > w[0], "means {means:?}");
    }
    // Full jitter: the mean is about half the ceiling (50, 100, 200, 400 ms).
    assert!(means[3] > ms(300) && means[3] < ms(500), "means {means:?}");
}

#[tokio::test(start_paused = true)]
async fn attempt_one_thousand_does_not_overflow() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| {
        b.no_total_timeout()
            .no_circuit_breaker()
            .retry(exact(MS, ms(10)).max_attempts(1_000))
    });
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.attempts(), 1_000);
    assert_eq!(mock.calls(), 1_000);
    assert_eq!(*mock.gaps().last().unwrap(), ms(10));
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_honoured_to_the_millisecond() {
    for status in [503, 429] {
        let mock = Mock::script([Step::retry_after(status, "2")]);
        let events = Events::default();
        let client = mock.client(|b| b.on_event(events.hook()));
        let resp = client.get("http://api.test/x").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(mock.gaps(), [Duration::from_secs(2)], "{status}");
        assert_eq!(events.count("from_retry_after: true"), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_measured_against_the_date_header() {
    let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mock = Mock::script([Step::With(
        503,
        vec![
            ("date", httpdate::fmt_http_date(date)),
            (
                "retry-after",
                httpdate::fmt_http_date(date + Duration::from_secs(5)),
            ),
        ],
    )]);
    let client = mock.client(|b| b);
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.gaps(), [Duration::from_secs(5)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_date_in_the_past_means_no_wait() {
    let mock = Mock::script([Step::retry_after(429, "Sun, 06 Nov 1994 08:49:37 GMT")]);
    let client = mock.client(|b| b);
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.gaps(), [Duration::ZERO]);
}

#[tokio::test(start_paused = true)]
async fn garbage_retry_after_is_ignored_and_backoff_applies() {
    for garbage in ["soon", "-5", "1.5", "Sun, 99 Nov 1994 08:49:37 GMT", ""] {
        let mock = Mock::script([Step::retry_after(503, garbage)]);
        let client = mock.client(|b| b.retry(exact(ms(100), ms(1_000))));
        let resp = client.get("http://api.test/x").send().await.unwrap();
        assert_eq!(resp.status(), 200, "{garbage:?}");
        assert_eq!(mock.gaps(), [ms(100)], "{garbage:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_over_the_cap_returns_the_response_without_sleeping() {
    let mock = Mock::always(Step::retry_after(429, "120"));
    let events = Events::default();
    let client = mock.client(|b| b.on_event(events.hook()));
    let start = Instant::now();
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.attempts(), 1);
    assert_eq!(mock.calls(), 1);
    assert_eq!(events.count("RetryAfterTooLong"), 1);

    // An absurd value saturates instead of overflowing, and is over the cap too.
    let mock = Mock::always(Step::retry_after(503, "99999999999999999999999"));
    let resp = mock
        .client(|b| b)
        .get("http://api.test/x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 1);

    // The cap is configurable.
    let mock = Mock::script([Step::retry_after(429, "120")]);
    let client = mock.client(|b| {
        b.total_timeout(Duration::from_secs(300))
            .retry(Retry::default().max_retry_after(Duration::from_secs(120)))
    });
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.gaps(), [Duration::from_secs(120)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_past_the_deadline_returns_the_response_without_sleeping() {
    let mock = Mock::always(Step::retry_after(503, "10"));
    let events = Events::default();
    let client = mock.client(|b| {
        b.total_timeout(Duration::from_secs(5))
            .attempt_timeout(Duration::from_secs(1))
            .on_event(events.hook())
    });
    let start = Instant::now();
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(resp.status(), 503);
    assert_eq!(mock.calls(), 1);
    assert_eq!(events.count("RetryAfterPastDeadline"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_custom_classifier_decides_what_is_retried() {
    // This API answers 404 while a resource is being created: treat it as a server error.
    let mock = Mock::script([Step::Status(404), Step::Status(404)]);
    let client = mock.client(|b| {
        b.classify_fn(|outcome| match outcome.status() {
            Some(s) if s == 404 => FailureClass::ServerError,
            _ => palisade::Classifier::default_class(outcome),
        })
    });
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.attempts(), 3);

    // And what is not: a 503 classed as a client error is returned at once.
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| b.classify_fn(|_| FailureClass::ClientError));
    let _ = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn events_tell_each_attempt_retry_and_give_up() {
    let mock = Mock::always(Step::Status(503));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let client = mock.client(|b| {
        b.retry(exact(ms(100), ms(1_000))).on_event(move |e| {
            let line = match e {
                Event::Attempt {
                    attempt,
                    class,
                    status,
                    ..
                } => format!("attempt {attempt} {class} {}", status.unwrap().as_u16()),
                Event::Retry { attempt, delay, .. } => {
                    format!("retry {attempt} after {}ms", delay.as_millis())
                }
                Event::GaveUp {
                    attempts, reason, ..
                } => format!("gave up after {attempts}: {reason:?}"),
                other => format!("{other:?}"),
            };
            log.lock().unwrap().push(line);
        })
    });
    let _ = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "attempt 1 server_error 503",
            "retry 2 after 100ms",
            "attempt 2 server_error 503",
            "retry 3 after 200ms",
            "attempt 3 server_error 503",
            "gave up after 3: MaxAttempts",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_sends_once() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| b.no_retry());
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.attempts(), 1);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_works_on_its_own() {
    use tower::{Service, ServiceExt};
    let mock = Mock::always(Step::Status(502));
    let mut svc = tower::ServiceBuilder::new()
        .layer(palisade::layer::RetryLayer::new(exact(ms(10), ms(10)).max_attempts(4)).unwrap())
        .service(mock.clone());
    let req = reqwest::Request::new(reqwest::Method::GET, "http://api.test/x".parse().unwrap());
    let resp = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(resp.attempts(), 4);
    assert_eq!(mock.gaps(), [ms(10); 3]);
}

#[tokio::test(start_paused = true)]
async fn statuses_beyond_599_are_not_retried() {
    // Regression: anything above 599 was classed a server error and retried.
    let mock = Mock::always(Step::Status(999));
    let client = mock.client(|b| b);
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 999);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn services_made_before_and_after_on_event_share_one_budget() {
    // Regression: `on_event` and `classifier` rebuilt the layer with a fresh budget.
    use palisade::retry::RetryBudget;
    use tower::{Service, ServiceExt};
    let mock = Mock::always(Step::Status(503));
    // A budget of exactly one retry: no ratio, 1 per second over a 1 s window.
    let budget = RetryBudget::default()
        .retry_ratio(0.0)
        .min_per_second(1)
        .window(Duration::from_secs(1));
    let layer = palisade::layer::RetryLayer::new(exact(ms(1), ms(1)).budget(budget)).unwrap();
    let mut before = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let mut after = tower::ServiceBuilder::new()
        .layer(layer.on_event(|_| {}))
        .service(mock.clone());
    let req = || reqwest::Request::new(reqwest::Method::GET, "http://api.test/x".parse().unwrap());
    let first = before.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(first.attempts(), 2, "the one retry in the budget");
    let second = after.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(
        second.attempts(),
        1,
        "the budget is spent for both services"
    );
}

// A request built by palisade's `RequestBuilder` is copied for its retries without reqwest's
// `try_clone` (which builds an extension map only to throw it away): each copy carries the
// method, URL, headers, version and timeout of the original, and a body is shared.
#[tokio::test(start_paused = true)]
async fn every_retry_of_a_built_request_carries_all_of_it() {
    for body in [None, Some("payload")] {
        let mock = Mock::script([Step::Status(503), Step::Status(503)]);
        let client = mock.client(|b| b.retry(exact(ms(10), ms(10))));
        let mut rb = client
            .put("http://api.test/items/1?x=1")
            .header("x-trace", "abc")
            .bearer_auth("token")
            .version(reqwest::Version::HTTP_11)
            .timeout(Duration::from_secs(20));
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let seen = mock.seen();
        assert_eq!(seen.len(), 3);
        for s in &seen {
            assert_eq!(s.method, reqwest::Method::PUT);
            assert_eq!(s.url, "http://api.test/items/1?x=1");
            assert_eq!(s.headers["x-trace"], "abc");
            assert_eq!(s.headers["authorization"], "Bearer token");
            assert!(s.headers["authorization"].is_sensitive());
            assert!(
                s.timeout.is_some_and(|t| t <= Duration::from_secs(20)),
                "{s:?}"
            );
        }
    }
}

// A request given to `execute` may carry extensions of its own (from an `http::Request`): its
// retries are copied with `try_clone`, which keeps them.
#[tokio::test(start_paused = true)]
async fn a_retry_of_an_executed_request_keeps_its_extensions() {
    #[derive(Clone, Debug, PartialEq)]
    struct Mark(u32);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = tower::service_fn(move |req: reqwest::Request| {
        let s = s.clone();
        async move {
            let http: http::Request<reqwest::Body> = req.try_into().unwrap();
            let mut seen = s.lock().unwrap();
            seen.push(http.extensions().get::<Mark>().cloned());
            let status = if seen.len() < 2 { 503 } else { 200 };
            Ok::<_, palisade::Error>(support::response(status, &[], Vec::new()))
        }
    });
    let client = palisade::Client::builder()
        .transport(svc)
        .retry(exact(ms(10), ms(10)))
        .build()
        .unwrap();
    let mut http = http::Request::new(reqwest::Body::from(""));
    *http.uri_mut() = "http://api.test/x".parse().unwrap();
    http.extensions_mut().insert(Mark(7));
    let req = reqwest::Request::try_from(http).unwrap();
    let resp = client.execute(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(*seen.lock().unwrap(), vec![Some(Mark(7)), Some(Mark(7))]);
}
