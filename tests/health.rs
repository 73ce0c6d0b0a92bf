//! `Client::health()`: what the snapshot says of each stage, over the in-memory transport in
//! paused time, and that reading it changes nothing.

mod support;

use std::time::Duration;

use palisade::bulkhead::{Bulkhead, Load};
use palisade::circuit_breaker::CircuitBreaker;
use palisade::fallback::FallbackCache;
use palisade::health::{BudgetHealth, CircuitHealth, FallbackHealth, HedgeHealth, HostHealth};
use palisade::hedge::Hedging;
use palisade::rate_limit::RateLimit;
use palisade::retry::Retry;
use palisade::{CircuitState, ErrorKind, Health, HostPolicy};
use support::{ms, secs, Mock, Step};

/// The entry of `host` (`host:port`), which must be listed.
fn host<'a>(health: &'a Health, host: &str) -> &'a HostHealth {
    health
        .hosts
        .iter()
        .find(|h| h.host == host)
        .unwrap_or_else(|| panic!("{host} is not listed: {health:#?}"))
}

fn hosts(health: &Health) -> Vec<&str> {
    health.hosts.iter().map(|h| h.host.as_str()).collect()
}

fn circuit<'a>(health: &'a Health, h: &str) -> &'a CircuitHealth {
    host(health, h)
        .circuit
        .as_ref()
        .expect("a breaker per host")
}

/// Lets spawned requests run up to their next wait, without moving the clock.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn load(in_flight: usize, queued: usize) -> Load {
    let mut l = Load::default();
    l.in_flight = in_flight;
    l.queued = queued;
    l
}

#[tokio::test(start_paused = true)]
async fn a_fresh_client_lists_no_host_and_a_stage_switched_off_is_none() {
    let mock = Mock::always(Step::Status(200));
    let health = mock.client(|b| b).health();
    assert!(health.hosts.is_empty());
    // The standard pipeline: a breaker per host (nothing at the top level), a budget.
    assert_eq!(health.circuit, None);
    assert_eq!((health.rate_limit.as_ref(), health.bulkhead), (None, None));
    let budget = health.budget.expect("the default budget");
    assert_eq!(
        (budget.retries_available, budget.balance, budget.reserve),
        (100, 100.0, 100.0)
    );
    assert_eq!(health.fallback, None);

    let bare = mock.client(|b| b.no_retry().no_circuit_breaker()).health();
    assert!(bare.hosts.is_empty());
    assert!(bare.circuit.is_none() && bare.budget.is_none() && bare.fallback.is_none());
    let no_budget = mock.client(|b| b.retry(support::exact(ms(10), ms(10))));
    assert_eq!(no_budget.health().budget, None, "a retry without a budget");

    // Every stage on, shared by all hosts: each at the top level, whole.
    let all = mock
        .client(|b| {
            b.circuit_breaker(CircuitBreaker::default().global())
                .rate_limit(RateLimit::per_second(50).burst(10))
                .bulkhead(Bulkhead::new(4))
                .fallback_cache(FallbackCache::default())
        })
        .health();
    assert!(all.hosts.is_empty());
    let c = all.circuit.expect("a global breaker");
    assert_eq!(
        (c.state, c.calls, c.failure_ratio),
        (CircuitState::Closed, 0, 0.0)
    );
    let l = all.rate_limit.expect("a global limiter");
    assert_eq!((l.tokens, l.burst), (10, 10));
    assert_eq!(all.bulkhead, Some(Load::default()));
    let f = all.fallback.expect("a fallback cache");
    assert_eq!((f.entries, f.stored_bytes, f.copying_bytes), (0, 0, 0));
    assert_eq!(f.max_bytes, 32 << 20);
}

#[tokio::test(start_paused = true)]
async fn failures_show_in_the_ratio_and_the_calls_of_the_window() {
    let mock = Mock::script([
        Step::Status(503),
        Step::Status(503),
        Step::Fail(std::io::ErrorKind::ConnectionReset),
        Step::Status(429),
        Step::Status(404),
        Step::Status(200),
    ]);
    let client = mock.client(|b| b.no_retry());
    for _ in 0..6 {
        let _ = client.get("http://a.test/x").send().await;
    }
    client.get("https://b.test/").send().await.unwrap();
    let health = client.health();
    assert_eq!(hosts(&health), ["a.test:80", "b.test:443"]);
    // Two 503s and a reset fail; the 404 and the 200 succeed; the 429 is the limiter's signal,
    // not counted.
    let a = circuit(&health, "a.test:80");
    assert_eq!((a.state, a.calls, a.failures), (CircuitState::Closed, 5, 3));
    assert_eq!(a.failure_ratio, 0.6);
    // The run of failures in a row (the 404 ended it; the 429 neither counts nor ends one).
    assert_eq!((a.consecutive_failures, a.half_open_in), (Some(0), None));
    let b = circuit(&health, "b.test:443");
    assert_eq!((b.calls, b.failures, b.failure_ratio), (1, 0, 0.0));
    // Stages that are off have no part.
    assert_eq!(host(&health, "a.test:80").rate_limit, None);
    assert_eq!(host(&health, "a.test:80").bulkhead, None);

    // The outcomes age out of the 30 s window, a tenth of it at a time.
    tokio::time::advance(secs(30)).await;
    let a = circuit(&client.health(), "a.test:80").clone();
    assert_eq!((a.calls, a.failure_ratio), (0, 0.0));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_tells_when_it_half_opens_and_reading_does_not_move_it() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| {
        b.no_retry().circuit_breaker(
            CircuitBreaker::default()
                .consecutive_failures(2)
                .break_duration(secs(5)),
        )
    });
    let url = "http://a.test/x";
    for _ in 0..2 {
        client.get(url).send().await.unwrap();
    }
    let err = client.get(url).send().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    tokio::time::advance(secs(2)).await;
    let c = circuit(&client.health(), "a.test:80").clone();
    assert_eq!(c.state, CircuitState::Open);
    assert_eq!(c.half_open_in, Some(secs(3)));
    // Both rules are on: the run that opened it, and the window's two calls.
    assert_eq!(
        (c.consecutive_failures, c.calls, c.isolated),
        (Some(2), 2, false)
    );

    // The break is over: open until a call moves it, with nothing left of the break.
    tokio::time::advance(secs(3)).await;
    for _ in 0..3 {
        let c = circuit(&client.health(), "a.test:80").clone();
        assert_eq!(
            (c.state, c.half_open_in),
            (CircuitState::Open, Some(Duration::ZERO))
        );
    }
    let breakers = client.circuit_breaker().expect("a breaker");
    assert_eq!(breakers.state("a.test:80"), CircuitState::Open);

    // A probe that takes a second: half-open while it runs, closed once it succeeds.
    mock.set(Step::after(secs(1), Step::Status(200)));
    let probe = tokio::spawn({
        let client = client.clone();
        async move { client.get(url).send().await }
    });
    settle().await;
    let c = circuit(&client.health(), "a.test:80").clone();
    assert_eq!((c.state, c.half_open_in), (CircuitState::HalfOpen, None));
    assert_eq!(probe.await.unwrap().unwrap().status(), 200);
    let c = circuit(&client.health(), "a.test:80").clone();
    assert_eq!(
        (c.state, c.consecutive_failures),
        (CircuitState::Closed, Some(0))
    );

    // Isolated by hand: open, with no end.
    breakers.isolate("a.test:80");
    let c = circuit(&client.health(), "a.test:80").clone();
    assert_eq!(
        (c.state, c.half_open_in, c.isolated),
        (CircuitState::Open, None, true)
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_pauses_its_host_for_exactly_that_long() {
    let mock = Mock::script([Step::retry_after(429, "2")]);
    let client = mock.client(|b| {
        b.no_retry()
            .no_circuit_breaker()
            .rate_limit(RateLimit::per_second(100).burst(20))
    });
    let resp = client.get("http://a.test/x").send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let health = client.health();
    assert_eq!(hosts(&health), ["a.test:80"]);
    let a = host(&health, "a.test:80");
    assert_eq!(a.paused_for, Some(secs(2)));
    // A global limiter: its bucket is at the top level, not the host's.
    assert_eq!(a.rate_limit, None);
    assert_eq!(health.rate_limit.as_ref().map(|l| l.tokens), Some(19));

    tokio::time::advance(ms(500)).await;
    assert_eq!(
        host(&client.health(), "a.test:80").paused_for,
        Some(ms(1_500))
    );
    tokio::time::advance(ms(1_500)).await;
    // Over: nothing else holds the host, so it is no longer listed.
    let health = client.health();
    assert!(health.hosts.is_empty(), "{health:#?}");
    assert_eq!(health.rate_limit.as_ref().map(|l| l.tokens), Some(20));
}

#[tokio::test(start_paused = true)]
async fn tokens_taken_show_per_host_and_come_back_one_per_interval() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| {
        b.no_retry()
            .rate_limit(RateLimit::per_second(10).burst(5).per_host())
    });
    for _ in 0..3 {
        client.get("http://a.test/x").send().await.unwrap();
    }
    client.get("http://b.test/y").send().await.unwrap();
    let bucket = |h: &Health, name: &str| host(h, name).rate_limit.clone().expect("a bucket");
    let health = client.health();
    assert_eq!(
        health.rate_limit, None,
        "per host: nothing at the top level"
    );
    assert_eq!(
        [bucket(&health, "a.test:80"), bucket(&health, "b.test:80")].map(|b| (b.tokens, b.burst)),
        [(2, 5), (4, 5)]
    );
    tokio::time::advance(ms(99)).await;
    assert_eq!(bucket(&client.health(), "a.test:80").tokens, 2);
    tokio::time::advance(ms(1)).await;
    let health = client.health();
    assert_eq!(bucket(&health, "a.test:80").tokens, 3);
    // Full again: the limiter holds nothing for b, but its breaker lists it, with a new
    // host's bucket.
    assert_eq!(bucket(&health, "b.test:80").tokens, 5);
    // Reading took no token: a's three go at once, the fourth is held.
    for _ in 0..3 {
        client.get("http://a.test/x").send().await.unwrap();
    }
    assert_eq!(bucket(&client.health(), "a.test:80").tokens, 0);
    let start = tokio::time::Instant::now();
    client.get("http://a.test/x").send().await.unwrap();
    assert_eq!(start.elapsed(), ms(100));
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_shows_its_calls_in_flight_and_queued() {
    let mock = Mock::always(Step::Hang);
    let client = mock.client(|b| {
        b.no_retry()
            .no_circuit_breaker()
            .bulkhead(Bulkhead::new(2).max_queue(3).per_host())
    });
    let mut tasks = Vec::new();
    for url in ["http://a.test/1", "http://a.test/2", "http://a.test/3"]
        .into_iter()
        .chain(["http://a.test/4", "http://b.test/1"])
    {
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.get(url).send().await }));
    }
    settle().await;
    let health = client.health();
    assert_eq!(hosts(&health), ["a.test:80", "b.test:80"]);
    assert_eq!(host(&health, "a.test:80").bulkhead, Some(load(2, 2)));
    assert_eq!(host(&health, "b.test:80").bulkhead, Some(load(1, 0)));
    assert_eq!(health.bulkhead, None, "per host: nothing at the top level");
    for t in &tasks {
        t.abort();
    }
    settle().await;
    assert!(client.health().hosts.is_empty(), "no call under way");

    // One bulkhead for all hosts: its load at the top level.
    let client = mock.client(|b| b.no_retry().bulkhead(Bulkhead::new(2).max_queue(3)));
    let tasks: Vec<_> = ["http://a.test/1", "http://b.test/1", "http://c.test/1"]
        .into_iter()
        .map(|url| {
            let c = client.clone();
            tokio::spawn(async move { c.get(url).send().await })
        })
        .collect();
    settle().await;
    let health = client.health();
    assert_eq!(health.bulkhead, Some(load(2, 1)));
    // The hosts are listed by their breakers, without a bulkhead part.
    assert_eq!(hosts(&health), ["a.test:80", "b.test:80"]);
    assert!(health.hosts.iter().all(|h| h.bulkhead.is_none()));
    for t in &tasks {
        t.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_goes_down_by_each_retry_and_up_by_each_request() {
    let mock = Mock::script([Step::Status(503), Step::Status(503)]);
    let client = mock.client(|b| b.no_circuit_breaker());
    let resp = client.get("http://a.test/x").send().await.unwrap();
    assert_eq!((resp.status().as_u16(), mock.calls()), (200, 3));
    // The reserve (10 a second over 10 s), plus a fifth of a retry for the request, less the
    // two retries.
    let budget = client.health().budget.expect("a budget");
    assert_eq!(
        (budget.retries_available, budget.balance, budget.reserve),
        (98, 98.2, 100.0)
    );
    // The window is 10 s: by then the request and its retries count no more.
    tokio::time::advance(secs(11)).await;
    let budget: BudgetHealth = client.health().budget.expect("a budget");
    assert_eq!((budget.retries_available, budget.balance), (100, 100.0));
}

#[tokio::test(start_paused = true)]
async fn the_fallback_store_shows_its_entries_and_bytes() {
    let mock = Mock::always(Step::Full(
        200,
        vec![("cache-control", "max-age=60".to_owned())],
        b"a stored body".to_vec(),
    ));
    let client = mock.client(|b| {
        b.no_retry()
            .fallback_cache(FallbackCache::default().max_bytes(1 << 20))
    });
    let body = client.get("http://a.test/x").send().await.unwrap();
    body.bytes().await.unwrap();
    let handle = client.fallback_cache().expect("a fallback cache");
    handle.sync();
    let f: FallbackHealth = client.health().fallback.expect("a fallback cache");
    assert_eq!((f.entries, f.copying_bytes, f.max_bytes), (1, 0, 1 << 20));
    assert_eq!(f.stored_bytes, handle.stored_bytes());
    assert!(f.stored_bytes > b"a stored body".len() as u64, "{f:?}");
    handle.clear();
    handle.sync();
    let f = client.health().fallback.expect("a fallback cache");
    assert_eq!((f.entries, f.stored_bytes), (0, 0));
}

/// 10,000 hosts in a per-host breaker and limiter: all listed, in order, and reading twice
/// gives the same snapshot. With caps of 1,000, at most 1,000 per map are listed however many
/// hosts were called.
#[tokio::test(start_paused = true)]
async fn ten_thousand_hosts_are_listed_in_order_and_the_list_stays_bounded() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| {
        b.no_retry()
            .rate_limit(RateLimit::per_minute(1).burst(1).per_host())
    });
    for i in 0..10_000 {
        client
            .get(format!("http://h{i:05}.test/"))
            .send()
            .await
            .unwrap();
    }
    let health = client.health();
    assert_eq!(health.hosts.len(), 10_000);
    assert!(health.hosts.windows(2).all(|w| w[0].host < w[1].host));
    let first = &health.hosts[0];
    assert_eq!(first.host, "h00000.test:80");
    assert_eq!(first.rate_limit.as_ref().map(|l| l.tokens), Some(0));
    assert_eq!(
        first.circuit.as_ref().map(|c| (c.calls, c.failures)),
        Some((1, 1))
    );
    assert_eq!(client.health(), health, "reading changes nothing");
    let breakers = client.circuit_breaker().expect("a breaker");
    assert_eq!(breakers.tracked_hosts(), 10_000);

    let capped = mock.client(|b| {
        b.no_retry()
            .circuit_breaker(CircuitBreaker::default().max_hosts(1_000))
            .rate_limit(
                RateLimit::per_minute(1)
                    .burst(1)
                    .per_host()
                    .max_hosts(1_000),
            )
    });
    for i in 0..10_000 {
        capped
            .get(format!("http://h{i:05}.test/"))
            .send()
            .await
            .unwrap();
    }
    let health = capped.health();
    let (breakers, buckets) = (
        health
            .hosts
            .iter()
            .filter(|h| h.circuit.as_ref().is_some_and(|c| c.calls > 0)),
        health
            .hosts
            .iter()
            .filter(|h| h.rate_limit.as_ref().is_some_and(|l| l.tokens == 0)),
    );
    assert_eq!((breakers.count(), buckets.count()), (1_000, 1_000));
    assert!(
        (1_000..=2_000).contains(&health.hosts.len()),
        "{} hosts",
        health.hosts.len()
    );
}

/// Reading evicts nothing (idle hosts stay until a call sweeps them), touches no last-use mark
/// (a host idle since before the read is still swept as idle), and leaves an open breaker open
/// past its break.
#[tokio::test(start_paused = true)]
async fn reading_evicts_nothing_touches_no_mark_and_moves_no_breaker() {
    let mock = Mock::always(Step::Status(200));
    // Hosts idle for longer than the window and the break (35 s) are swept by the first call
    // every 17.5 s; at the cap of 2, the least recently used makes room.
    let client = mock.client(|b| {
        b.no_retry()
            .circuit_breaker(CircuitBreaker::default().max_hosts(2))
    });
    client.get("http://a.test/").send().await.unwrap();
    tokio::time::advance(secs(30)).await;
    client.get("http://b.test/").send().await.unwrap();
    tokio::time::advance(secs(10)).await;
    // `a` is idle (40 s), not yet swept. Had reading marked it used, the call to `c` would
    // keep it and evict `b`.
    for _ in 0..3 {
        assert_eq!(hosts(&client.health()), ["a.test:80", "b.test:80"]);
    }
    tokio::time::advance(secs(10)).await;
    client.get("http://c.test/").send().await.unwrap();
    assert_eq!(hosts(&client.health()), ["b.test:80", "c.test:80"]);

    // Idle for longer than the window and the break (35 s): a call would sweep them.
    tokio::time::advance(secs(100)).await;
    let before = client.health();
    assert_eq!(hosts(&before), ["b.test:80", "c.test:80"]);
    assert_eq!(client.health(), before);
    let breakers = client.circuit_breaker().expect("a breaker");
    assert_eq!(breakers.tracked_hosts(), 2);

    // An isolated host and an open one: reading past the break does not half-open it.
    mock.set(Step::Status(503));
    let failing = mock.client(|b| {
        b.no_retry().circuit_breaker(
            CircuitBreaker::default()
                .consecutive_failures(1)
                .break_duration(secs(1)),
        )
    });
    failing.get("http://d.test/").send().await.unwrap();
    tokio::time::advance(secs(60)).await;
    let before = failing.health();
    assert_eq!(circuit(&before, "d.test:80").state, CircuitState::Open);
    assert_eq!(failing.health(), before);
    let handle = failing.circuit_breaker().expect("a breaker");
    assert_eq!(handle.state("d.test:80"), CircuitState::Open);
}

/// The snapshot as JSON: seconds for durations, `snake_case` states, `null` for what is off,
/// and hosts only, never the userinfo, path or query of a request.
#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn the_snapshot_serializes_to_readable_json_with_hosts_only() {
    let mock = Mock::script([Step::Status(503), Step::retry_after(429, "2")]);
    let client = mock.client(|b| {
        b.no_retry()
            .circuit_breaker(CircuitBreaker::default().consecutive_failures(1))
            .rate_limit(RateLimit::per_second(10).burst(10).per_host())
            .bulkhead(Bulkhead::new(32).per_host())
            .fallback_cache(FallbackCache::default())
    });
    let secret = "https://user:hunter2@api.example.com/v1/users?token=s3cr3t";
    client
        .get(secret)
        .bearer_auth("b34r3r")
        .send()
        .await
        .unwrap();
    client.get("http://b.test/x?k=v").send().await.unwrap();
    tokio::time::advance(ms(1_500)).await;

    let json = serde_json::to_string(&client.health()).unwrap();
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&client.health()).unwrap()
    );
    for leak in ["user", "hunter2", "v1", "token=", "s3cr3t", "b34r3r", "k=v"] {
        assert!(!json.contains(leak), "{leak} in {json}");
    }
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "hosts": [
                {
                    "host": "api.example.com:443",
                    "policy": null,
                    "circuit": {
                        "state": "open",
                        "failure_ratio": 1.0,
                        "calls": 1,
                        "failures": 1,
                        "consecutive_failures": 1,
                        "half_open_in_secs": 3.5,
                        "isolated": false
                    },
                    "rate_limit": { "tokens": 10, "burst": 10 },
                    "paused_for_secs": null,
                    "bulkhead": { "in_flight": 0, "queued": 0 },
                    "hedge": null
                },
                {
                    "host": "b.test:80",
                    "policy": null,
                    "circuit": {
                        "state": "closed",
                        "failure_ratio": 0.0,
                        "calls": 0,
                        "failures": 0,
                        "consecutive_failures": 0,
                        "half_open_in_secs": null,
                        "isolated": false
                    },
                    "rate_limit": { "tokens": 10, "burst": 10 },
                    "paused_for_secs": 0.5,
                    "bulkhead": { "in_flight": 0, "queued": 0 },
                    "hedge": null
                }
            ],
            "circuit": null,
            "rate_limit": null,
            "bulkhead": null,
            "budget": null,
            "fallback": {
                "entries": 0,
                "stored_bytes": 0,
                "copying_bytes": 0,
                "max_bytes": 33554432
            },
            "fleet": null,
            "policies": []
        })
    );
}

fn hedge<'a>(health: &'a Health, h: &str) -> &'a HedgeHealth {
    host(health, h).hedge.as_ref().expect("hedging on")
}

/// The upper edge of the estimate's bucket that holds 100 ms (98.304 ms to 106.496 ms): the
/// p90 of answers that all take 100 ms.
const P90_OF_100_MS: Duration = Duration::from_micros(106_496);

/// At a quantile: no delay until `min_samples` answers are in, then the host's estimate, the
/// one its next call waits; the samples decay with the half-life, and reading decays nothing.
/// Hosts are listed for their estimate alone.
#[tokio::test(start_paused = true)]
async fn a_quantile_hedge_delay_shows_its_estimate_and_the_samples_it_rests_on() {
    let mock = Mock::always(Step::after(ms(100), Step::Status(200)));
    let client = mock.client(|b| {
        b.no_circuit_breaker().hedging(
            Hedging::at_quantile(0.9)
                .min_samples(10)
                .fallback_delay(ms(500)),
        )
    });
    assert!(client.health().hosts.is_empty(), "no estimate yet");
    for _ in 0..9 {
        client.get("http://a.test/x").send().await.unwrap();
    }
    client.get("http://b.test/y").send().await.unwrap();
    let health = client.health();
    assert_eq!(hosts(&health), ["a.test:80", "b.test:80"]);
    let a = hedge(&health, "a.test:80");
    assert_eq!((a.delay, a.quantile, a.samples), (None, Some(0.9), Some(9)));
    let b = hedge(&health, "b.test:80");
    assert_eq!((b.delay, b.samples), (None, Some(1)));
    assert_eq!(host(&health, "a.test:80").circuit, None, "no breaker");

    client.get("http://a.test/x").send().await.unwrap();
    let a = hedge(&client.health(), "a.test:80").clone();
    assert_eq!((a.delay, a.samples), (Some(P90_OF_100_MS), Some(10)));
    // The next call waits that long (to tokio's millisecond) before its hedge.
    mock.set(Step::after(secs(1), Step::Status(200)));
    let start = tokio::time::Instant::now();
    let before = mock.calls();
    client.get("http://a.test/x").send().await.unwrap();
    assert_eq!(mock.seen()[before + 1].at - start, ms(107));
    // The first attempt won, after 1 s: one more sample, above the p90.
    let a = hedge(&client.health(), "a.test:80").clone();
    assert_eq!((a.delay, a.samples), (Some(P90_OF_100_MS), Some(11)));

    // One half-life (10 s) on, each bucket's count is halved, rounded down: 5 samples, below
    // min_samples.
    tokio::time::advance(secs(10)).await;
    let health = client.health();
    let a = hedge(&health, "a.test:80");
    assert_eq!((a.delay, a.samples), (None, Some(5)));
    assert_eq!(hedge(&health, "b.test:80").samples, Some(0));
    assert_eq!(client.health(), health, "reading changes nothing");
}

/// A fixed delay: the same for every host listed, with no estimate.
#[tokio::test(start_paused = true)]
async fn a_fixed_hedge_delay_is_given_for_every_host_listed() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| b.hedging(Hedging::after(ms(50))));
    client.get("http://a.test/").send().await.unwrap();
    client.get("http://b.test/").send().await.unwrap();
    let health = client.health();
    // Listed by their breakers: a fixed delay keeps no state of its own.
    assert_eq!(hosts(&health), ["a.test:80", "b.test:80"]);
    for h in ["a.test:80", "b.test:80"] {
        let hedge = hedge(&health, h);
        assert_eq!(
            (hedge.delay, hedge.quantile, hedge.samples),
            (Some(ms(50)), None, None)
        );
    }
    let bare = mock.client(|b| b.no_circuit_breaker().hedging(Hedging::after(ms(50))));
    bare.get("http://a.test/").send().await.unwrap();
    assert!(bare.health().hosts.is_empty(), "nothing holds the host");
}

/// Without hedging, a host has no hedge part; under host policies, each host has its own
/// pipeline's: switched off, set by the policy, or the client's inherited (whose estimates it
/// shares, and is listed once).
#[tokio::test(start_paused = true)]
async fn a_host_has_no_hedge_part_without_hedging_or_under_a_policy_that_switches_it_off() {
    let mock = Mock::always(Step::after(ms(100), Step::Status(200)));
    let plain = mock.client(|b| b);
    plain.get("http://a.test/").send().await.unwrap();
    let health = plain.health();
    assert_eq!(hosts(&health), ["a.test:80"]);
    assert_eq!(host(&health, "a.test:80").hedge, None);

    let client = mock.client(|b| {
        b.hedging(Hedging::at_quantile(0.95).min_samples(2))
            .host("quiet.test", HostPolicy::new().no_hedging())
            .host(
                "eager.test",
                HostPolicy::new().hedging(Hedging::after(ms(10))),
            )
            .host(
                "own-retry.test",
                HostPolicy::new().retry(Retry::default().max_attempts(2)),
            )
    });
    for url in [
        "http://a.test/",
        "http://quiet.test/",
        "http://own-retry.test/",
    ] {
        for _ in 0..2 {
            client.get(url).send().await.unwrap();
        }
    }
    client.get("http://eager.test/").send().await.unwrap();
    let health = client.health();
    assert_eq!(
        hosts(&health),
        [
            "a.test:80",
            "eager.test:80",
            "own-retry.test:80",
            "quiet.test:80"
        ]
    );
    let quiet = host(&health, "quiet.test:80");
    assert_eq!(quiet.policy.as_deref(), Some("quiet.test"));
    assert_eq!(quiet.hedge, None, "switched off by its policy");
    assert!(quiet.circuit.is_some(), "the client's breakers, inherited");
    let eager = hedge(&health, "eager.test:80");
    assert_eq!((eager.delay, eager.quantile), (Some(ms(10)), None));
    // The eager policy's fixed delay keeps no estimate; the others hold the client's.
    // The p95 of two answers of 100 ms: the same bucket's edge.
    let p95_of_100_ms = Some(P90_OF_100_MS);
    for h in ["a.test:80", "own-retry.test:80"] {
        let hedge = hedge(&health, h);
        assert_eq!(
            (hedge.delay, hedge.quantile, hedge.samples),
            (p95_of_100_ms, Some(0.95), Some(2)),
            "{h}"
        );
    }
}

/// `delay_secs` in seconds (to the millisecond, rounded up), the quantile and the samples.
#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn a_hosts_hedge_serializes_with_its_delay_in_seconds() {
    let mock = Mock::always(Step::after(ms(100), Step::Status(200)));
    let client = mock.client(|b| {
        b.no_circuit_breaker()
            .hedging(Hedging::at_quantile(0.9).min_samples(3))
    });
    for _ in 0..3 {
        client.get("http://a.test/").send().await.unwrap();
    }
    let value = serde_json::to_value(client.health()).unwrap();
    assert_eq!(
        value["hosts"][0]["hedge"],
        serde_json::json!({ "delay_secs": 0.107, "quantile": 0.9, "samples": 3 })
    );
    let fixed = mock.client(|b| b.hedging(Hedging::after(ms(50))));
    fixed.get("http://a.test/").send().await.unwrap();
    let value = serde_json::to_value(fixed.health()).unwrap();
    assert_eq!(
        value["hosts"][0]["hedge"],
        serde_json::json!({ "delay_secs": 0.05, "quantile": null, "samples": null })
    );
}
