//! Attempt and total timeouts, and caller cancellation, over the in-memory transport in paused
//! time.

mod support;

use std::time::Duration;

use palisade::{ErrorKind, ResponseExt, TimeoutKind};
use support::{exact, ms, secs, Events, Mock, Step};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn attempt_timeout_fires_and_says_so() {
    let mock = Mock::always(Step::Hang);
    let client = mock.client(|b| b.attempt_timeout(secs(1)).no_retry());
    let start = Instant::now();
    let err = client.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(start.elapsed(), secs(1));
    assert!(err.is_timeout());
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Attempt));
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.url().map(|u| u.as_str()), Some("http://api.test/x"));
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_are_retried() {
    let mock = Mock::script([Step::Hang, Step::Hang]);
    let client = mock.client(|b| b.attempt_timeout(secs(1)).retry(exact(ms(100), secs(1))));
    let start = Instant::now();
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.attempts(), 3);
    // 1 s timeout, 100 ms sleep, 1 s timeout, 200 ms sleep, then the answer.
    assert_eq!(start.elapsed(), ms(2_300));
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_within_the_attempt_timeout_is_taken() {
    let mock = Mock::always(Step::after(ms(999), Step::Status(200)));
    let client = mock.client(|b| b.attempt_timeout(secs(1)));
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn total_timeout_fires_during_an_attempt() {
    // Attempt 1 times out at 2 s, the retry sleeps 100 ms, attempt 2 starts at 2.1 s and the
    // 3 s deadline cuts it.
    let mock = Mock::always(Step::Hang);
    let events = Events::default();
    let client = mock.client(|b| {
        b.total_timeout(secs(3))
            .attempt_timeout(secs(2))
            .retry(exact(ms(100), secs(1)))
            .on_event(events.hook())
    });
    let start = Instant::now();
    let err = client.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(start.elapsed(), secs(3));
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    assert_eq!(err.attempts(), 2);
    assert_eq!(mock.calls(), 2);
    assert_eq!(events.count("kind: Attempt"), 1);
    assert_eq!(events.count("kind: Total"), 1);
    assert_eq!(
        err.to_string(),
        "total timeout elapsed after 2 attempts for url (http://api.test/x)"
    );
}

#[tokio::test(start_paused = true)]
async fn total_timeout_fires_during_a_backoff_sleep() {
    // 503 at 0 s, sleep 2 s, 503 at 2 s, the next sleep (4 s) is cut by the 3 s deadline:
    // no third attempt starts.
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| {
        b.total_timeout(secs(3))
            .attempt_timeout(secs(1))
            .retry(exact(secs(2), secs(10)).max_attempts(5))
    });
    let start = Instant::now();
    let err = client.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(start.elapsed(), secs(3));
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    assert_eq!(err.attempts(), 2);
    tokio::time::sleep(secs(60)).await;
    assert_eq!(mock.calls(), 2, "no attempt starts after the deadline");
}

#[tokio::test(start_paused = true)]
async fn total_timeout_without_retry_or_attempt_timeout() {
    let mock = Mock::always(Step::Hang);
    let client = mock.client(|b| b.no_retry().no_attempt_timeout().total_timeout(secs(1)));
    let start = Instant::now();
    let err = client.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(start.elapsed(), secs(1));
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    assert_eq!(err.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_is_capped_by_the_deadline_and_reported_as_total() {
    // Attempt timeout 2 s, but attempt 2 starts at 1.1 s with only 1.5 s of the deadline left.
    let mock = Mock::script([Step::after(secs(1), Step::Status(503)), Step::Hang]);
    let events = Events::default();
    let client = mock.client(|b| {
        b.total_timeout(ms(2_600))
            .attempt_timeout(secs(2))
            .on_event(events.hook())
            .retry(exact(ms(100), secs(1)))
    });
    let start = Instant::now();
    let err = client.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(start.elapsed(), ms(2_600));
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    assert_eq!(err.attempts(), 2);
    assert_eq!(events.count("kind: Attempt"), 0);
    assert_eq!(events.count("kind: Total"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_timeout_replaces_the_total_timeout() {
    let mock = Mock::always(Step::Hang);
    let client = mock.client(|b| b.attempt_timeout(secs(10)));
    let start = Instant::now();
    let err = client
        .get("http://api.test/x")
        .timeout(ms(500))
        .send()
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), ms(500));
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
}

#[tokio::test(start_paused = true)]
async fn a_request_timeout_is_narrowed_to_what_is_left_for_each_retry() {
    // reqwest applies a per-request timeout to reading the body too: a retry's copy carries
    // what is left of it, so the body cannot outlive the deadline.
    let mock = Mock::script([Step::after(secs(1), Step::Status(503))]);
    let client = mock.client(|b| b.retry(exact(ms(500), secs(1))));
    let _ = client
        .get("http://api.test/x")
        .timeout(secs(10))
        .send()
        .await
        .unwrap();
    let seen = mock.seen();
    assert_eq!(seen[0].timeout, Some(secs(10)));
    assert_eq!(seen[1].timeout, Some(ms(8_500)));
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_timeout_gets_none_so_the_clients_own_stays_in_force() {
    // Regression: the total timeout used to set one, which in reqwest replaces the client's
    // `timeout` and silently dropped it.
    let mock = Mock::script([Step::Status(503)]);
    let client = mock.client(|b| b.total_timeout(secs(10)));
    let _ = client.get("http://api.test/x").send().await.unwrap();
    assert!(mock.seen().iter().all(|s| s.timeout.is_none()));
}

#[tokio::test(start_paused = true)]
async fn caller_cancellation_is_not_a_timeout_and_is_not_retried() {
    let mock = Mock::always(Step::Hang);
    let events = Events::default();
    let client = mock.client(|b| b.on_event(events.hook()));
    let caller = tokio::time::timeout(ms(300), client.get("http://api.test/x").send()).await;
    assert!(caller.is_err(), "the caller gave up first");
    // Long after, nothing more was sent and no timeout or retry was reported.
    tokio::time::sleep(secs(120)).await;
    assert_eq!(mock.calls(), 1);
    assert_eq!(events.count("Timeout"), 0);
    assert_eq!(events.count("Retry"), 0);
}

#[tokio::test(start_paused = true)]
async fn cancellation_during_a_backoff_sleep_stops_the_retries() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| b.retry(exact(secs(1), secs(1))));
    let handle = tokio::spawn({
        let client = client.clone();
        async move { client.get("http://api.test/x").send().await }
    });
    tokio::time::sleep(ms(500)).await;
    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());
    tokio::time::sleep(secs(60)).await;
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_layers_work_on_their_own() {
    use palisade::layer::{AttemptTimeoutLayer, TotalTimeoutLayer};
    use tower::{Service, ServiceExt};
    let mock = Mock::always(Step::Hang);
    let mut svc = tower::ServiceBuilder::new()
        .layer(TotalTimeoutLayer::new(secs(5)).unwrap())
        .layer(AttemptTimeoutLayer::new(secs(2)).unwrap())
        .service(mock.clone());
    let req = reqwest::Request::new(reqwest::Method::GET, "http://api.test/x".parse().unwrap());
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(start.elapsed(), secs(2));
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Attempt));
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_after_the_deadline_when_the_task_is_polled_late() {
    // Regression: a task woken after both its backoff sleep and the deadline had passed used to
    // send another attempt and return its answer.
    let mock = Mock::script([Step::Status(503)]);
    let client = mock.client(|b| {
        b.total_timeout(ms(300))
            .attempt_timeout(ms(100))
            .retry(exact(ms(50), secs(1)))
    });
    let task = tokio::spawn(async move { client.get("http://api.test/x").send().await });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(mock.calls(), 1);
    // The clock jumps past the backoff and the deadline before the task runs again.
    tokio::time::advance(ms(500)).await;
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    assert_eq!(err.attempts(), 1);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_at_the_deadline_is_not_retried_and_spends_no_budget() {
    // Regression: the attempt timeout capped by the deadline used to be retried: a retry event,
    // a budget withdrawal, then the total timeout.
    let mock = Mock::always(Step::Hang);
    let events = Events::default();
    let client = mock.client(|b| {
        b.total_timeout(secs(1))
            .attempt_timeout(secs(1))
            .on_event(events.hook())
    });
    let err = client.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    assert_eq!(events.count("Retry {"), 0, "{:?}", events.all());
    assert_eq!(events.count("kind: Total"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_backoff_that_reaches_the_deadline_is_not_a_retry() {
    let mock = Mock::always(Step::Status(503));
    let events = Events::default();
    let client = mock.client(|b| {
        b.total_timeout(secs(3))
            .attempt_timeout(secs(1))
            .retry(exact(secs(2), secs(10)).max_attempts(5))
            .on_event(events.hook())
    });
    let err = client.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    // One retry (after 2 s); the 4 s backoff from 2 s would end past the deadline.
    assert_eq!(events.count("Retry {"), 1, "{:?}", events.all());
}

#[tokio::test(start_paused = true)]
async fn a_request_timeout_is_a_deadline_even_without_a_total_timeout() {
    // Regression: with `no_total_timeout` a request's timeout used to bound each attempt only.
    let mock = Mock::always(Step::Hang);
    // Attempts time out at 0.4 s and 0.85 s; the third starts at 0.95 s and the deadline cuts it.
    let client = mock.client(|b| {
        b.no_total_timeout()
            .attempt_timeout(ms(400))
            .retry(exact(ms(50), secs(1)))
    });
    let start = Instant::now();
    let err = client
        .get("http://api.test/x")
        .timeout(secs(1))
        .send()
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), secs(1));
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    assert_eq!(err.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_zero_request_timeout_starts_no_attempt() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| b);
    let err = client
        .get("http://api.test/x")
        .timeout(Duration::ZERO)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    assert_eq!(err.attempts(), 0);
    assert_eq!(mock.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_transport_that_uses_another_client_does_not_mix_their_contexts() {
    // Regression: the inner client's attempts were counted as the outer request's, and the
    // inner client saw the outer deadline.
    let inner_mock = Mock::always(Step::Status(503));
    let inner = inner_mock.client(|b| b.no_total_timeout().retry(exact(ms(10), ms(10))));
    let outer = palisade::Client::builder()
        .no_retry()
        .total_timeout(secs(10))
        .transport(tower::service_fn(move |_req: reqwest::Request| {
            let inner = inner.clone();
            async move {
                // Fetch a token through the inner client, then hang.
                let token = inner.get("http://auth.test/token").send().await?;
                assert_eq!(token.attempts(), 3);
                std::future::pending::<Result<reqwest::Response, palisade::Error>>().await
            }
        }))
        .build()
        .unwrap();
    let err = outer.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Total));
    assert_eq!(err.attempts(), 1);
    assert_eq!(inner_mock.calls(), 3);
}
