//! Host policies (`ClientBuilder::host`): each applies to its hosts only, the most specific
//! wins, inherited stages share the client's state, and host names are normalised the same
//! way for requests, patterns and the breaker handle. In-memory transport, paused time.

mod support;

use palisade::bulkhead::Bulkhead;
use palisade::circuit_breaker::CircuitBreaker;
use palisade::rate_limit::RateLimit;
use palisade::retry::Retry;
use palisade::{CircuitState, ErrorKind, HostPolicy};
use support::{exact, ms, secs, Mock, Step};

/// How many attempts the transport saw to `url`.
fn attempts(mock: &Mock, url: &str) -> usize {
    mock.seen().iter().filter(|s| s.url == url).count()
}

/// Sends a GET to `url` and gives its status or error kind.
async fn get(client: &palisade::Client, url: &str) -> Result<u16, ErrorKind> {
    match client.get(url).send().await {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => Err(e.kind()),
    }
}

fn retry(n: u32) -> Retry {
    exact(ms(10), ms(10)).max_attempts(n)
}

#[tokio::test(start_paused = true)]
async fn a_policy_applies_to_its_host_only() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| {
        b.retry(retry(3))
            .no_circuit_breaker()
            .host("pay.test", HostPolicy::new().no_retry())
    });
    for url in [
        "http://pay.test/x",
        "http://other.test/x",
        "http://pay.test:8080/x",
    ] {
        assert_eq!(get(&client, url).await, Ok(503));
    }
    assert_eq!(
        attempts(&mock, "http://pay.test/x"),
        1,
        "its policy: no retry"
    );
    assert_eq!(attempts(&mock, "http://pay.test:8080/x"), 1, "any port");
    assert_eq!(
        attempts(&mock, "http://other.test/x"),
        3,
        "the client's retry"
    );
}

#[tokio::test(start_paused = true)]
async fn the_most_specific_pattern_wins() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| {
        b.retry(retry(3))
            .no_circuit_breaker()
            .host("*.internal.test", HostPolicy::new().retry(retry(5)))
            .host("*.eu.internal.test", HostPolicy::new().retry(retry(4)))
            .host("slow.internal.test:8443", HostPolicy::new().retry(retry(2)))
            .host("slow.internal.test", HostPolicy::new().retry(retry(1)))
    });
    let cases = [
        ("http://a.internal.test/", 5),
        ("http://a.b.internal.test/", 5),
        ("http://db.eu.internal.test/", 4),
        ("https://slow.internal.test:8443/", 2),
        ("http://slow.internal.test/", 1),
        ("http://internal.test/", 3),
        ("http://notinternal.test/", 3),
    ];
    for (url, _) in cases {
        assert_eq!(get(&client, url).await, Ok(503), "{url}");
    }
    for (url, n) in cases {
        assert_eq!(attempts(&mock, url), n, "{url}");
    }
}

#[tokio::test(start_paused = true)]
async fn requests_find_their_policy_however_the_host_is_spelt() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| {
        b.retry(retry(3))
            .no_circuit_breaker()
            .host("API.Example.TEST.", HostPolicy::new().no_retry())
            .host("[0:0::1]:9000", HostPolicy::new().no_retry())
    });
    for url in [
        "http://api.example.test/a",
        "http://API.EXAMPLE.test./b",
        "https://api.example.test:443/c",
        "http://[::1]:9000/d",
    ] {
        assert_eq!(get(&client, url).await, Ok(503));
    }
    assert_eq!(mock.calls(), 4, "each once: {:?}", mock.seen());
}

#[tokio::test(start_paused = true)]
async fn an_overridden_attempt_timeout_bounds_its_hosts_only() {
    let mock = Mock::always(Step::after(ms(500), Step::Status(200)));
    let client = mock.client(|b| {
        b.no_retry()
            .host("slow.test", HostPolicy::new().attempt_timeout(ms(100)))
            .host(
                "fast.test",
                HostPolicy::new()
                    .total_timeout(ms(200))
                    .no_attempt_timeout(),
            )
    });
    let err = client.get("http://slow.test/").send().await.unwrap_err();
    assert_eq!(err.timeout_kind(), Some(palisade::TimeoutKind::Attempt));
    let err = client.get("http://fast.test/").send().await.unwrap_err();
    assert_eq!(err.timeout_kind(), Some(palisade::TimeoutKind::Total));
    assert_eq!(get(&client, "http://other.test/").await, Ok(200));
}

#[tokio::test(start_paused = true)]
async fn a_policy_can_switch_a_timeout_off() {
    let mock = Mock::always(Step::after(secs(40), Step::Status(200)));
    let client = mock.client(|b| {
        b.no_retry().host(
            "batch.test",
            HostPolicy::new().no_total_timeout().no_attempt_timeout(),
        )
    });
    assert_eq!(get(&client, "http://batch.test/").await, Ok(200));
    assert_eq!(
        get(&client, "http://other.test/").await,
        Err(ErrorKind::Timeout)
    );
}

#[tokio::test(start_paused = true)]
async fn an_own_rate_limit_is_its_hosts_only() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| {
        b.no_retry().host(
            "pay.test",
            HostPolicy::new().rate_limit(RateLimit::per_second(1).burst(1).fail_fast()),
        )
    });
    assert_eq!(get(&client, "http://pay.test/").await, Ok(200));
    assert_eq!(
        get(&client, "http://pay.test/").await,
        Err(ErrorKind::RateLimited)
    );
    for _ in 0..10 {
        assert_eq!(get(&client, "http://other.test/").await, Ok(200));
    }
    tokio::time::advance(secs(1)).await;
    assert_eq!(get(&client, "http://pay.test/").await, Ok(200));
}

#[tokio::test(start_paused = true)]
async fn an_inherited_stage_shares_the_clients_state() {
    // A global bucket of 2: the policy's host takes from the same bucket as every other.
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| {
        b.no_retry()
            .rate_limit(RateLimit::per_second(1).burst(2).fail_fast())
            .host("a.test", HostPolicy::new().attempt_timeout(secs(1)))
    });
    assert_eq!(get(&client, "http://a.test/").await, Ok(200));
    assert_eq!(get(&client, "http://b.test/").await, Ok(200));
    assert_eq!(
        get(&client, "http://a.test/").await,
        Err(ErrorKind::RateLimited)
    );
    assert_eq!(
        get(&client, "http://b.test/").await,
        Err(ErrorKind::RateLimited)
    );
}

#[tokio::test(start_paused = true)]
async fn a_policy_can_switch_the_clients_limiter_off() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| {
        b.no_retry()
            .rate_limit(RateLimit::per_second(1).burst(1).fail_fast())
            .host("internal.test", HostPolicy::new().no_rate_limit())
    });
    for _ in 0..5 {
        assert_eq!(get(&client, "http://internal.test/").await, Ok(200));
    }
    assert_eq!(get(&client, "http://b.test/").await, Ok(200));
    assert_eq!(
        get(&client, "http://b.test/").await,
        Err(ErrorKind::RateLimited)
    );
}

#[tokio::test(start_paused = true)]
async fn an_own_bulkhead_holds_its_hosts_only() {
    let mock = Mock::always(Step::after(ms(100), Step::Status(200)));
    let client = mock.client(|b| {
        b.no_retry()
            .host("pay.test", HostPolicy::new().bulkhead(Bulkhead::new(1)))
    });
    let (a, b, c, d) = tokio::join!(
        get(&client, "http://pay.test/1"),
        get(&client, "http://pay.test/2"),
        get(&client, "http://other.test/1"),
        get(&client, "http://other.test/2"),
    );
    assert_eq!(a, Ok(200));
    assert_eq!(b, Err(ErrorKind::BulkheadFull));
    assert_eq!((c, d), (Ok(200), Ok(200)));
}

#[tokio::test(start_paused = true)]
async fn an_own_breaker_opens_for_its_hosts_and_the_handle_finds_it() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| {
        b.no_retry().host(
            "flaky.test",
            HostPolicy::new().circuit_breaker(CircuitBreaker::default().consecutive_failures(2)),
        )
    });
    for _ in 0..2 {
        assert_eq!(get(&client, "http://flaky.test/").await, Ok(503));
        assert_eq!(get(&client, "http://steady.test/").await, Ok(503));
    }
    assert_eq!(
        get(&client, "http://flaky.test/").await,
        Err(ErrorKind::CircuitOpen)
    );
    assert_eq!(
        get(&client, "http://steady.test/").await,
        Ok(503),
        "20 calls needed"
    );
    let breakers = client.circuit_breaker().expect("breakers");
    for name in [
        "flaky.test:80",
        "FLAKY.test",
        "flaky.test.",
        "http://Flaky.Test/x",
    ] {
        assert_eq!(breakers.state(name), CircuitState::Open, "{name}");
    }
    assert_eq!(breakers.state("steady.test:80"), CircuitState::Closed);
    assert_eq!(
        breakers.state("flaky.test:443"),
        CircuitState::Closed,
        "never called"
    );
    assert_eq!(breakers.tracked_hosts(), 2);
    breakers.reset("Flaky.Test:80");
    assert_eq!(get(&client, "http://flaky.test/").await, Ok(503));
    // Isolating a host of the client's own policy, spelt otherwise.
    breakers.isolate("STEADY.test.");
    assert_eq!(
        get(&client, "http://steady.test/").await,
        Err(ErrorKind::CircuitOpen)
    );
    assert_eq!(
        get(&client, "https://steady.test/").await,
        Err(ErrorKind::CircuitOpen),
        "a bare host names both default ports"
    );
    assert_eq!(get(&client, "http://steady.test:8080/").await, Ok(503));
}

#[tokio::test(start_paused = true)]
async fn a_policy_without_a_breaker_has_none_to_isolate() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| {
        b.no_retry()
            .host("raw.test", HostPolicy::new().no_circuit_breaker())
    });
    let breakers = client.circuit_breaker().expect("the client's");
    breakers.isolate("raw.test");
    assert_eq!(breakers.state("raw.test"), CircuitState::Closed);
    assert_eq!(get(&client, "http://raw.test/").await, Ok(200));
}

#[tokio::test(start_paused = true)]
async fn a_client_without_a_breaker_gets_a_handle_when_a_policy_has_one() {
    let mock = Mock::always(Step::Status(200));
    let plain = mock.client(|b| b.no_circuit_breaker());
    assert!(plain.circuit_breaker().is_none());
    let client = mock.client(|b| {
        b.no_circuit_breaker().host(
            "a.test",
            HostPolicy::new().circuit_breaker(CircuitBreaker::default()),
        )
    });
    let breakers = client.circuit_breaker().expect("the policy's");
    breakers.isolate("a.test");
    assert_eq!(
        get(&client, "http://a.test/").await,
        Err(ErrorKind::CircuitOpen)
    );
    breakers.isolate("b.test");
    assert_eq!(get(&client, "http://b.test/").await, Ok(200), "no breaker");
}

// Issue 14: "today a mis-cased key isolates a breaker no call looks up". Without any policy.
#[tokio::test(start_paused = true)]
async fn the_breaker_handle_normalises_the_host_it_is_given() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| b.no_retry());
    let breakers = client.circuit_breaker().unwrap();
    breakers.isolate("A.Test:80");
    assert_eq!(
        get(&client, "http://a.test/").await,
        Err(ErrorKind::CircuitOpen)
    );
    assert_eq!(breakers.state("a.test:80"), CircuitState::Open);
    breakers.reset("a.test.:80");
    assert_eq!(get(&client, "http://a.test/").await, Ok(200));
    // A request with a trailing dot is the same host.
    breakers.isolate("b.test:80");
    assert_eq!(
        get(&client, "http://b.test./").await,
        Err(ErrorKind::CircuitOpen)
    );
    // Text that is not a host names nothing, and does not panic.
    for junk in [
        "",
        " ",
        "::",
        "[",
        "a b",
        "http://",
        "b.test:99999",
        "*.test",
    ] {
        breakers.isolate(junk);
        breakers.reset(junk);
        assert_eq!(breakers.state(junk), CircuitState::Closed, "{junk:?}");
    }
    assert_eq!(breakers.state("b.test"), CircuitState::Open);
}

#[test]
fn bad_patterns_and_values_are_named_with_their_host() {
    let err = |b: palisade::ClientBuilder| b.build().unwrap_err();
    let e = err(palisade::Client::builder().host("https://api.test/", HostPolicy::new()));
    assert_eq!(e.field(), "hosts.\"https://api.test/\"");
    assert!(e.rule().contains("without a scheme"), "{e}");
    let e = err(palisade::Client::builder().host("*.com", HostPolicy::new()));
    assert_eq!(e.field(), "hosts.\"*.com\"");
    let e = err(palisade::Client::builder().host("", HostPolicy::new()));
    assert_eq!(e.field(), "hosts.\"\"");
    let e = err(palisade::Client::builder().host(
        "api.test",
        HostPolicy::new().retry(Retry::default().max_attempts(0)),
    ));
    assert_eq!(e.field(), "hosts.\"api.test\".retry.max_attempts");
    assert_eq!(
        e.to_string(),
        "invalid configuration: `hosts.\"api.test\".retry.max_attempts` must be at least 1, got 0"
            .replace("must be at least 1, got 0", e.rule())
    );
    let e =
        err(palisade::Client::builder()
            .host("api.test", HostPolicy::new().attempt_timeout(secs(60))));
    assert_eq!(
        e.field(),
        "hosts.\"api.test\".attempt_timeout",
        "over the client's 30 s"
    );
    let e =
        err(palisade::Client::builder().host("api.test", HostPolicy::new().total_timeout(secs(5))));
    assert_eq!(
        e.field(),
        "hosts.\"api.test\".attempt_timeout",
        "the client's 10 s"
    );
    assert!(e.rule().contains("inherited"), "{e}");
    let e =
        err(palisade::Client::builder().host("api.test", HostPolicy::new().total_timeout(ms(0))));
    assert_eq!(e.field(), "hosts.\"api.test\".total_timeout");
    let e = err(palisade::Client::builder().host(
        "api.test",
        HostPolicy::new().rate_limit(RateLimit::per_second(0)),
    ));
    assert_eq!(e.field(), "hosts.\"api.test\".rate_limit.rate");
    let e =
        err(palisade::Client::builder()
            .host("api.test", HostPolicy::new().bulkhead(Bulkhead::new(0))));
    assert!(e.field().starts_with("hosts.\"api.test\".bulkhead."), "{e}");
    let e = err(palisade::Client::builder().host(
        "api.test",
        HostPolicy::new().circuit_breaker(CircuitBreaker::default().failure_ratio(2.0)),
    ));
    assert_eq!(
        e.field(),
        "hosts.\"api.test\".circuit_breaker.failure_ratio"
    );
    // A policy may lengthen the attempt timeout when it lengthens the total one too.
    palisade::Client::builder()
        .host(
            "api.test",
            HostPolicy::new()
                .total_timeout(secs(120))
                .attempt_timeout(secs(60)),
        )
        .build()
        .expect("valid");
}

#[tokio::test(start_paused = true)]
async fn health_names_each_hosts_policy() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| {
        b.no_retry()
            .rate_limit(RateLimit::per_second(10).burst(10).per_host())
            .host(
                "*.partner.test",
                HostPolicy::new()
                    .rate_limit(RateLimit::per_second(5).burst(5))
                    .retry(Retry::default()),
            )
    });
    for url in [
        "http://a.partner.test/",
        "http://b.partner.test/",
        "http://own.test/",
    ] {
        assert_eq!(get(&client, url).await, Ok(200));
    }
    let health = client.health();
    let hosts: Vec<(&str, Option<&str>)> = health
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.policy.as_deref()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("a.partner.test:80", Some("*.partner.test")),
            ("b.partner.test:80", Some("*.partner.test")),
            ("own.test:80", None),
        ]
    );
    // The partner's limiter is one bucket for all its hosts: at the policy, not per host.
    assert_eq!(health.policies.len(), 1);
    let partner = &health.policies[0];
    assert_eq!(partner.pattern, "*.partner.test");
    assert_eq!(partner.rate_limit.as_ref().map(|l| l.tokens), Some(3));
    assert!(partner.budget.is_some(), "its own retry budget");
    assert!(health.budget.is_none(), "the client does not retry");
    assert_eq!(
        health.hosts[0].rate_limit, None,
        "shared by the policy's hosts"
    );
    assert_eq!(
        health.hosts[2].rate_limit.as_ref().map(|l| l.tokens),
        Some(9)
    );
    assert!(
        health.hosts[0].circuit.is_some(),
        "the client's breakers, inherited"
    );
}

#[test]
fn a_clients_debug_names_its_policies() {
    let client = palisade::Client::builder()
        .host("*.Example.test", HostPolicy::new().no_retry())
        .build()
        .unwrap();
    let debug = format!("{client:?}");
    assert!(debug.contains("*.example.test"), "{debug}");
    let builder = palisade::Client::builder().host("a.test", HostPolicy::new().no_retry());
    assert!(format!("{builder:?}").contains("a.test"));
}
