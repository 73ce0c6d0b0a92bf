//! A retry that the circuit breaker turns away waits for the circuit (`Retry::no_circuit_wait`
//! switches it off): the standard pipeline in paused time over the in-memory transport.

mod support;

use std::time::Duration;

use palisade::circuit_breaker::CircuitBreaker;
use palisade::retry::RetryBudget;
use palisade::{Client, ClientBuilder, Error, ResponseExt};
use reqwest::Response;
use support::{exact, ms, secs, Events, Mock, Step};
use tokio::time::Instant;

const URL: &str = "http://api.test/x";

/// A 503 after 10 ms: calls sent together are all admitted before the first fails.
fn down() -> Step {
    Step::after(ms(10), Step::Status(503))
}

/// Opens at the second failure in a row; 5 s break; probes cut at 1 s. Retries after exactly
/// 100 ms.
fn rig(mock: &Mock, events: &Events, f: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Client {
    mock.client(|b| {
        f(b.on_event(events.hook())
            .retry(exact(ms(100), secs(1)))
            .circuit_breaker(
                CircuitBreaker::default()
                    .no_failure_ratio()
                    .consecutive_failures(2),
            ))
    })
}

/// Sends `n` calls at once; each result with the time it took.
async fn concurrently(client: &Client, n: usize) -> Vec<(Result<Response, Error>, Duration)> {
    let calls = (0..n).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let r = client.get(URL).send().await;
            (r, start.elapsed())
        })
    });
    let mut out = Vec::new();
    for c in calls.collect::<Vec<_>>() {
        out.push(c.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_retry_turned_away_by_the_circuit_waits_for_it() {
    // Both first attempts fail and open the circuit; the host is back when it half-opens.
    let mock = Mock::script([down(), down()]);
    let events = Events::default();
    let client = rig(&mock, &events, |b| b);
    for (r, took) in concurrently(&client, 2).await {
        let resp = r.expect("the retry waited for the circuit and got through");
        assert_eq!(resp.status(), 200);
        // The turned-away retries are not attempts: nothing was sent.
        assert_eq!(resp.attempts(), 2);
        // The break (5 s from the trip at 10 ms) plus at most one backoff base of spread.
        assert!(
            took >= secs(5) + ms(10) && took <= secs(5) + ms(110),
            "{took:?}"
        );
    }
    assert_eq!(
        mock.calls(),
        4,
        "two first attempts, one probe, one call after it"
    );
    assert_eq!(events.count("class: Rejected"), 4, "{:#?}", events.all());
    assert_eq!(
        events.count("Retry {"),
        4,
        "two backoffs, two waits for the circuit"
    );
}

#[tokio::test(start_paused = true)]
async fn with_no_circuit_wait_the_turned_away_retry_fails_at_once() {
    let mock = Mock::script([down(), down()]);
    let events = Events::default();
    let client = rig(&mock, &events, |b| {
        b.retry(exact(ms(100), secs(1)).no_circuit_wait())
    });
    for (r, took) in concurrently(&client, 2).await {
        let err = r.expect_err("turned away");
        assert!(err.is_circuit_open(), "{err:?}");
        assert_eq!(
            took,
            ms(110),
            "the 503, the backoff, then the rejection at once"
        );
    }
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_was_a_probe_does_not_wait() {
    let mock = Mock::always(down());
    let events = Events::default();
    let client = rig(&mock, &events, |b| b);
    // Opens the circuit at 10 ms; both calls wait for it. The first to wake at 5 s probes
    // (503: open again), retries, is turned away and, having been a probe itself, fails at
    // once; the other waits on and probes at 10 s, then fails the same way.
    let mut took: Vec<Duration> = concurrently(&client, 2)
        .await
        .into_iter()
        .map(|(r, took)| {
            let err = r.expect_err("the host is down");
            assert!(err.is_circuit_open(), "{err:?}");
            took
        })
        .collect();
    took.sort();
    assert_eq!(
        mock.calls(),
        4,
        "two first attempts and one probe by each call"
    );
    // The wake (5.01 s, plus up to 100 ms of spread), the probe's 10 ms, the second backoff
    // (200 ms).
    assert!(
        took[0] >= secs(5) + ms(220) && took[0] <= secs(5) + ms(320),
        "{took:?}"
    );
    assert!(
        took[1] >= secs(10) + ms(220) && took[1] <= secs(10) + ms(550),
        "{took:?}"
    );
    // The next call's first attempt is turned away at once, as ever.
    let start = Instant::now();
    let err = client.get(URL).send().await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn no_wait_past_the_deadline_nor_without_one() {
    let mock = Mock::script([down(), down()]);
    let events = Events::default();
    // A request timeout of 2 s ends before the break (5 s): waiting could only time out.
    let client_with = rig(&mock, &events, |b| b);
    let calls = (0..2).map(|_| {
        let client = client_with.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let r = client.get(URL).timeout(secs(2)).send().await;
            (r, start.elapsed())
        })
    });
    for c in calls.collect::<Vec<_>>() {
        let (r, took) = c.await.unwrap();
        assert!(r.expect_err("turned away").is_circuit_open());
        assert_eq!(took, ms(110));
    }
    assert_eq!(
        events.count("RetryAfterPastDeadline"),
        2,
        "{:#?}",
        events.all()
    );

    // Without a deadline a call could wait for ever: it fails at once.
    let mock = Mock::script([down(), down()]);
    let client = rig(&mock, &events, |b| b.no_total_timeout());
    for (r, took) in concurrently(&client, 2).await {
        assert!(r.expect_err("turned away").is_circuit_open());
        assert_eq!(took, ms(110));
    }
}

#[tokio::test(start_paused = true)]
async fn waits_take_their_retries_from_the_budget_and_give_back_those_turned_away() {
    // 10 retries in the budget's window and 8 calls: each call's retry (8) is turned away and
    // given back, so all 8 can then wait (8 more withdrawals). Were the turned-away retries
    // spent, 6 calls would find the budget empty.
    let mock = Mock::script(std::iter::repeat_n(down(), 8));
    let events = Events::default();
    let budget = RetryBudget::default().retry_ratio(0.0).min_per_second(1);
    let client = rig(&mock, &events, |b| {
        b.retry(exact(ms(100), secs(1)).budget(budget))
    });
    for (r, _) in concurrently(&client, 8).await {
        assert_eq!(r.expect("waited and got through").status(), 200);
    }
    assert_eq!(events.count("BudgetExhausted"), 0);

    // With a budget of 4 retries, 4 calls retry, are turned away, and wait; the other 4 find
    // the budget empty at their 503, which they return at once.
    let mock = Mock::script(std::iter::repeat_n(down(), 8));
    let budget = RetryBudget::default()
        .retry_ratio(0.0)
        .min_per_second(1)
        .window(secs(4));
    let events = Events::default();
    let client = rig(&mock, &events, |b| {
        b.retry(exact(ms(100), secs(1)).budget(budget))
    });
    let mut statuses: Vec<u16> = concurrently(&client, 8)
        .await
        .into_iter()
        .map(|(r, _)| r.expect("an answer").status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 503, 503, 503, 503]);
    assert_eq!(events.count("BudgetExhausted"), 4, "{:#?}", events.all());
}
