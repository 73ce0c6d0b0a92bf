//! The retry budget during a total outage, in paused time: retries add at most 20 % to the
//! offered load, plus 10 per second over the 10 s window, across every clone of a client.

mod support;

use std::time::Duration;

use palisade::retry::{Retry, RetryBudget};
use palisade::Client;
use support::{Events, Mock, Step};
use tokio::time::Instant;

/// Offers `n` requests, one every `spacing`, to a server that answers 503 to everything,
/// through `clones` clones of one client. Returns the attempts the server saw and the span in
/// seconds over which the requests were offered.
async fn outage(
    n: usize,
    spacing: Duration,
    retry: Retry,
    clones: usize,
    events: &Events,
) -> (usize, f64) {
    let mock = Mock::always(Step::Status(503));
    // The breaker would cut the outage short: these tests are about the budget alone.
    let client = mock.client(|b| b.retry(retry).no_circuit_breaker().on_event(events.hook()));
    let clients: Vec<Client> = (0..clones).map(|_| client.clone()).collect();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let c = clients[i % clones].clone();
        tasks.push(tokio::spawn(async move {
            c.get("http://api.test/x").send().await
        }));
        tokio::time::sleep(spacing).await;
    }
    let span = start.elapsed().as_secs_f64();
    for t in tasks {
        let resp = t.await.unwrap().unwrap();
        assert_eq!(resp.status(), 503);
    }
    eprintln!(
        "outage: {n} requests every {spacing:?} over {span:.1} s through {clones} clone(s): {} attempts (bound {:.0})",
        mock.calls(),
        bound(n, span)
    );
    (mock.calls(), span)
}

fn bound(n: usize, t: f64) -> f64 {
    1.2 * n as f64 + 10.0 * (t + 10.0)
}

/// A 1,000-request outage with the default policy, asserting the budget's bound; returns the
/// attempts the server saw and the events.
async fn within_budget(spacing: Duration, clones: usize) -> (usize, Events) {
    let events = Events::default();
    let (attempts, t) = outage(1_000, spacing, Retry::default(), clones, &events).await;
    assert!(
        (attempts as f64) <= bound(1_000, t),
        "{attempts} attempts over {t} s"
    );
    (attempts, events)
}

#[tokio::test(start_paused = true)]
async fn a_ten_second_outage_stays_within_the_budget() {
    let (attempts, events) = within_budget(Duration::from_millis(10), 1).await;
    // The budget still lets the reserve and the 20 % through.
    assert!(attempts >= 1_000 + 200, "{attempts}");
    assert!(events.count("BudgetExhausted") > 0);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_second_outage_stays_within_the_budget() {
    let (attempts, _) = within_budget(Duration::from_millis(100), 1).await;
    assert!((attempts as f64) < 3_000.0 * 0.8, "{attempts}");
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_budget() {
    // Eight clones, one budget: the same bound as one client.
    within_budget(Duration::from_millis(10), 8).await;
}

#[tokio::test(start_paused = true)]
async fn without_the_budget_the_outage_triples_the_load() {
    let events = Events::default();
    let (attempts, _) = outage(
        1_000,
        Duration::from_millis(10),
        Retry::default().no_budget(),
        1,
        &events,
    )
    .await;
    assert_eq!(attempts, 3_000);
    assert_eq!(events.count("BudgetExhausted"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_tighter_budget_lets_fewer_retries_through() {
    let events = Events::default();
    let tight = RetryBudget::default().retry_ratio(0.05).min_per_second(1);
    let (attempts, t) = outage(
        1_000,
        Duration::from_millis(10),
        Retry::default().budget(tight),
        1,
        &events,
    )
    .await;
    let limit = 1.05 * 1_000.0 + 1.0 * (t + 10.0);
    assert!((attempts as f64) <= limit, "{attempts} attempts over {t} s");
}

#[tokio::test(start_paused = true)]
async fn scattered_failures_are_all_retried() {
    // One failure in ten: the budget has room for every retry.
    let mock = Mock::script((0..1_000).map(|i| {
        if i % 10 == 0 {
            Step::Status(503)
        } else {
            Step::Status(200)
        }
    }));
    let events = Events::default();
    let client = mock.client(|b| b.on_event(events.hook()));
    for _ in 0..900 {
        let resp = client.get("http://api.test/x").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(events.count("BudgetExhausted"), 0);
}

// Regression: a retry was withdrawn from the budget before the backoff sleep, so a caller that
// dropped its request during the sleep spent a retry that never happened, and callers that
// stayed found the budget empty.
#[tokio::test(start_paused = true)]
async fn callers_who_leave_during_the_backoff_give_their_retry_back() {
    let mock = Mock::always(Step::Status(503));
    let events = Events::default();
    // A reserve of exactly 10 retries (1 a second over 10 s), nothing from deposits; 1 s
    // backoff, so that the sleep can be interrupted.
    let retry = support::exact(Duration::from_secs(1), Duration::from_secs(1))
        .max_attempts(2)
        .budget(RetryBudget::default().retry_ratio(0.0).min_per_second(1));
    let client = mock.client(|b| b.retry(retry).no_circuit_breaker().on_event(events.hook()));
    // Ten callers fail once, withdraw a retry each, and give up during the sleep.
    for _ in 0..10 {
        let left = tokio::time::timeout(
            Duration::from_millis(500),
            client.get("http://api.test/x").send(),
        )
        .await;
        assert!(left.is_err(), "the caller left during the backoff");
    }
    assert_eq!(mock.calls(), 10, "no retry was made");
    assert_eq!(events.count("Retry"), 10);
    // The budget is whole again: the next caller retries.
    let resp = client.get("http://api.test/x").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    use palisade::ResponseExt;
    assert_eq!(resp.attempts(), 2, "{:?}", events.all());
    assert_eq!(events.count("BudgetExhausted"), 0);
}
