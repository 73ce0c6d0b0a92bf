//! Metrics (feature `metrics`): every instrument's name, unit, labels and values, recorded to an
//! in-memory recorder over the in-memory transport in paused time, and their cardinality.
#![cfg(feature = "metrics")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;

use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use palisade::bulkhead::Bulkhead;
use palisade::circuit_breaker::CircuitBreaker;
use palisade::fallback::FallbackCache;
use palisade::hedge::Hedging;
use palisade::metrics::{names, Metrics, OTHER};
use palisade::rate_limit::RateLimit;
use palisade::retry::{Retry, RetryBudget};
use palisade::{Client, ClientBuilder};
use support::{exact, ms, secs, Mock, Step};

const URL: &str = "http://a.test/items/7?token=s3cr3t-query";

/// One series of a snapshot.
#[derive(Debug, Clone)]
struct Series {
    kind: MetricKind,
    name: String,
    labels: BTreeMap<String, String>,
    unit: Option<Unit>,
    value: Value,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

/// What a recorder holds.
struct Recorded(Vec<Series>);

impl Recorded {
    fn take(snap: &Snapshotter) -> Recorded {
        Recorded(
            snap.snapshot()
                .into_vec()
                .into_iter()
                .map(|(ck, unit, _desc, v)| {
                    let (kind, key) = ck.into_parts();
                    Series {
                        kind,
                        name: key.name().to_owned(),
                        labels: key
                            .labels()
                            .map(|l| (l.key().to_owned(), l.value().to_owned()))
                            .collect(),
                        unit,
                        value: match v {
                            DebugValue::Counter(n) => Value::Counter(n),
                            DebugValue::Gauge(g) => Value::Gauge(g.into_inner()),
                            DebugValue::Histogram(h) => {
                                Value::Histogram(h.into_iter().map(|x| x.into_inner()).collect())
                            }
                        },
                    }
                })
                .collect(),
        )
    }

    fn named(&self, name: &str) -> Vec<&Series> {
        self.0.iter().filter(|s| s.name == name).collect()
    }

    /// The series of `name` with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> &Series {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .unwrap_or_else(|| panic!("no {name} {want:?} in {:#?}", self.named(name)))
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let s = self.get(name, labels);
        assert_eq!(s.kind, MetricKind::Counter, "{name}");
        match s.value {
            Value::Counter(n) => n,
            ref v => panic!("{name}: {v:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let s = self.get(name, labels);
        assert_eq!(s.kind, MetricKind::Gauge, "{name}");
        match s.value {
            Value::Gauge(g) => g,
            ref v => panic!("{name}: {v:?}"),
        }
    }

    /// A histogram's values, sorted, checked to be in seconds.
    fn seconds(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let s = self.get(name, labels);
        assert_eq!(s.kind, MetricKind::Histogram, "{name}");
        assert_eq!(s.unit, Some(Unit::Seconds), "{name}'s unit");
        match &s.value {
            Value::Histogram(h) => {
                let mut h = h.clone();
                h.sort_by(f64::total_cmp);
                h
            }
            v => panic!("{name}: {v:?}"),
        }
    }
}

/// Runs `f` on a paused current-thread runtime with an in-memory recorder as this thread's
/// recorder, and returns what was recorded (`f` gets the snapshotter to look in the middle).
fn run<F, Fut>(f: F) -> Recorded
where
    F: FnOnce(Snapshotter) -> Fut,
    Fut: Future<Output = ()>,
{
    run_in_time(true, f)
}

/// [`run`], in paused time or in real time (for real sockets).
fn run_in_time<F, Fut>(paused: bool, f: F) -> Recorded
where
    F: FnOnce(Snapshotter) -> Fut,
    Fut: Future<Output = ()>,
{
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || rt.block_on(f(snap.clone())));
    Recorded::take(&snap)
}

fn metered(mock: &Mock, f: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Client {
    mock.client(|b| f(b.metrics(Metrics::new())))
}

const HOST: (&str, &str) = ("server.address", "a.test");
const PORT: (&str, &str) = ("server.port", "80");
const GET: (&str, &str) = ("http.request.method", "GET");

#[test]
fn each_attempt_is_timed_with_opentelemetry_names() {
    let r = run(|_| async {
        let mock = Mock::script([
            Step::after(ms(250), Step::Status(503)),
            Step::after(ms(100), Step::Status(200)),
        ]);
        let c = metered(&mock, |b| b.retry(exact(secs(1), secs(1))));
        assert_eq!(c.get(URL).send().await.unwrap().status(), 200);
    });
    let name = names::HTTP_CLIENT_REQUEST_DURATION;
    assert_eq!(name, "http.client.request.duration");
    let failed = [
        GET,
        HOST,
        PORT,
        ("http.response.status_code", "503"),
        ("error.type", "503"),
    ];
    assert_eq!(r.seconds(name, &failed), [0.25]);
    let ok = [GET, HOST, PORT, ("http.response.status_code", "200")];
    assert_eq!(r.seconds(name, &ok), [0.1]);
    assert_eq!(r.named(name).len(), 2);
}

#[test]
fn the_whole_call_is_timed_with_its_retries_and_sleeps() {
    let r = run(|_| async {
        let mock = Mock::script([
            Step::after(ms(250), Step::Status(503)),
            Step::after(ms(100), Step::Status(200)),
        ]);
        let c = metered(&mock, |b| b.retry(exact(secs(1), secs(1))));
        c.get(URL).send().await.unwrap();
    });
    let ok = [GET, HOST, PORT, ("http.response.status_code", "200")];
    assert_eq!(r.seconds(names::REQUEST_DURATION, &ok), [1.35]);
}

#[test]
fn failures_are_labelled_by_error_type() {
    let r = run(|_| async {
        let mock = Mock::always(Step::Fail(io::ErrorKind::ConnectionRefused));
        let c = metered(&mock, |b| b.no_retry());
        assert!(c.get(URL).send().await.unwrap_err().is_connect());
        let mock = Mock::always(Step::Hang);
        let c = metered(&mock, |b| b.no_retry().attempt_timeout(secs(2)));
        assert!(c.get(URL).send().await.unwrap_err().is_timeout());
    });
    for name in [names::HTTP_CLIENT_REQUEST_DURATION, names::REQUEST_DURATION] {
        assert_eq!(
            r.seconds(name, &[GET, HOST, PORT, ("error.type", "connect")]),
            [0.0]
        );
        assert_eq!(
            r.seconds(name, &[GET, HOST, PORT, ("error.type", "timeout")]),
            [2.0]
        );
    }
    assert_eq!(
        r.counter(names::TIMEOUTS, &[("palisade.timeout.kind", "attempt")]),
        1
    );
}

#[test]
fn a_dropped_call_is_recorded_as_cancelled() {
    let r = run(|_| async {
        let mock = Mock::always(Step::Hang);
        let c = metered(&mock, |b| b);
        let fut = c.get(URL).send();
        assert!(tokio::time::timeout(secs(3), fut).await.is_err());
    });
    for name in [names::HTTP_CLIENT_REQUEST_DURATION, names::REQUEST_DURATION] {
        assert_eq!(
            r.seconds(name, &[GET, HOST, PORT, ("error.type", "cancelled")]),
            [3.0],
            "{name}"
        );
    }
}

#[test]
fn a_total_timeout_is_counted() {
    let r = run(|_| async {
        let mock = Mock::always(Step::Hang);
        let c = metered(&mock, |b| b.total_timeout(secs(4)).no_attempt_timeout());
        assert!(c.get(URL).send().await.unwrap_err().is_timeout());
    });
    assert_eq!(
        r.counter(names::TIMEOUTS, &[("palisade.timeout.kind", "total")]),
        1
    );
    assert_eq!(
        r.seconds(
            names::REQUEST_DURATION,
            &[GET, HOST, PORT, ("error.type", "timeout")]
        ),
        [4.0]
    );
}

#[test]
fn retries_and_give_ups_are_counted_by_reason() {
    let r = run(|_| async {
        let mock = Mock::script([
            Step::Status(503),
            Step::retry_after(429, "1"),
            Step::Status(503),
        ]);
        let c = metered(&mock, |b| b.retry(exact(ms(10), ms(10)).max_attempts(3)));
        assert_eq!(c.get(URL).send().await.unwrap().status(), 503);
    });
    let reason = |r: &'static str| [HOST, ("palisade.retry.reason", r)];
    assert_eq!(r.counter(names::RETRIES, &reason("server_error")), 1);
    assert_eq!(r.counter(names::RETRIES, &reason("throttled")), 1);
    assert_eq!(
        r.counter(
            names::GIVE_UPS,
            &[HOST, ("palisade.retry.give_up_reason", "max_attempts")]
        ),
        1
    );
    assert!(r.named(names::BUDGET_EXHAUSTED).is_empty());
}

#[test]
fn budget_refusals_are_counted() {
    let r = run(|_| async {
        let mock = Mock::always(Step::Status(503));
        let budget = RetryBudget::default().retry_ratio(0.0).min_per_second(0);
        let retry = exact(ms(10), ms(10)).budget(budget);
        let c = metered(&mock, |b| b.retry(retry).no_circuit_breaker());
        for _ in 0..3 {
            assert_eq!(c.get(URL).send().await.unwrap().status(), 503);
        }
    });
    assert_eq!(r.counter(names::BUDGET_EXHAUSTED, &[HOST]), 3);
    assert_eq!(
        r.counter(
            names::GIVE_UPS,
            &[HOST, ("palisade.retry.give_up_reason", "budget_exhausted")]
        ),
        3
    );
    assert!(r.named(names::RETRIES).is_empty());
}

/// A hedge is counted as refused when it is due and the budget has no retry left, once per
/// race (the race sends no more); not when the budget pays for it, nor when no hedge is due
/// (a quick answer, a request that is not hedged).
#[test]
fn hedges_the_budget_refuses_are_counted_and_no_others() {
    run(|snap| async move {
        // A budget of 2 retries (2 a second over 1 s, nothing from the requests).
        let budget = RetryBudget::default()
            .retry_ratio(0.0)
            .min_per_second(2)
            .window(secs(1));
        let slow = Step::after(ms(200), Step::Status(200));
        let mock = Mock::always(slow.clone());
        // Copies at 50, 100 and 150 ms of a call whose every attempt takes 200 ms.
        let hedging = Hedging::after(ms(50)).max_hedged_attempts(4);
        let c = metered(&mock, |b| {
            b.retry(Retry::default().budget(budget))
                .hedging(hedging.clone())
        });
        let attempts = |c: &Client| {
            let c = c.clone();
            async move {
                use palisade::ResponseExt;
                c.get(URL).send().await.unwrap().attempts()
            }
        };
        // Counted since the last look (a snapshot takes what it shows); 0 if never recorded.
        let count = |r: &Recorded, name: &str| {
            r.named(name)
                .iter()
                .map(|s| match s.value {
                    Value::Counter(n) => n,
                    ref v => panic!("{name}: {v:?}"),
                })
                .sum::<u64>()
        };
        // The first race's two hedges spend the budget; its third is refused.
        assert_eq!(attempts(&c).await, 3);
        let r = Recorded::take(&snap);
        assert_eq!(r.counter(names::HEDGES_SENT, &[HOST]), 2);
        assert_eq!(r.counter(names::HEDGE_BUDGET_REFUSED, &[HOST]), 1);
        // No hedge due: a quick answer, a slow POST (never hedged). (All within the budget's
        // 1 s window.)
        mock.set(Step::after(ms(10), Step::Status(200)));
        assert_eq!(attempts(&c).await, 1);
        mock.set(slow);
        c.post(URL).send().await.unwrap();
        let r = Recorded::take(&snap);
        assert_eq!(count(&r, names::HEDGE_BUDGET_REFUSED), 0);
        // Slow answers with the budget spent: each race's first hedge is refused, once.
        for _ in 0..2 {
            assert_eq!(attempts(&c).await, 1);
        }
        let r = Recorded::take(&snap);
        assert_eq!(r.counter(names::HEDGE_BUDGET_REFUSED, &[HOST]), 2);
        assert_eq!(count(&r, names::HEDGES_SENT), 0);
        // The window moves on: the budget pays for two hedges again, and refuses the third.
        tokio::time::sleep(secs(2)).await;
        assert_eq!(attempts(&c).await, 3);
        let r = Recorded::take(&snap);
        assert_eq!(r.counter(names::HEDGES_SENT, &[HOST]), 2);
        assert_eq!(r.counter(names::HEDGE_BUDGET_REFUSED, &[HOST]), 1);
        // A retry stage without a budget refuses no hedge.
        let unbounded = metered(&mock, |b| {
            b.retry(Retry::default().no_budget()).hedging(hedging)
        });
        for _ in 0..3 {
            assert_eq!(attempts(&unbounded).await, 4);
        }
        let r = Recorded::take(&snap);
        assert_eq!(r.counter(names::HEDGES_SENT, &[HOST]), 9);
        assert_eq!(count(&r, names::HEDGE_BUDGET_REFUSED), 0);
    });
}

#[test]
fn breaker_transitions_state_and_rejections() {
    run(|snap| async move {
        let mock = Mock::always(Step::Status(500));
        let breaker = CircuitBreaker::default()
            .consecutive_failures(2)
            .break_duration(secs(5));
        let c = metered(&mock, |b| b.no_retry().circuit_breaker(breaker));
        c.get(URL).send().await.unwrap();
        c.get(URL).send().await.unwrap();
        assert!(c.get(URL).send().await.unwrap_err().is_circuit_open());
        // Snapshots take what they show: look at the state while open.
        let open = Recorded::take(&snap);
        assert_eq!(open.gauge(names::CIRCUIT_STATE, &[HOST]), 2.0);
        mock.set(Step::Status(200));
        tokio::time::advance(secs(5)).await;
        c.get(URL).send().await.unwrap();
        let closed = Recorded::take(&snap);
        assert_eq!(closed.gauge(names::CIRCUIT_STATE, &[HOST]), 0.0);
        let t = |from, to| {
            [
                HOST,
                ("palisade.circuit_breaker.from", from),
                ("palisade.circuit_breaker.to", to),
            ]
        };
        assert_eq!(
            open.counter(names::CIRCUIT_TRANSITIONS, &t("closed", "open")),
            1
        );
        assert_eq!(open.counter(names::CIRCUIT_REJECTIONS, &[HOST]), 1);
        assert_eq!(
            closed.counter(names::CIRCUIT_TRANSITIONS, &t("open", "half_open")),
            1
        );
        assert_eq!(
            closed.counter(names::CIRCUIT_TRANSITIONS, &t("half_open", "closed")),
            1
        );
    });
}

#[test]
fn a_global_breaker_records_without_a_host() {
    let r = run(|_| async {
        let mock = Mock::always(Step::Status(500));
        let breaker = CircuitBreaker::default().consecutive_failures(1).global();
        let c = metered(&mock, |b| b.no_retry().circuit_breaker(breaker));
        c.get(URL).send().await.unwrap();
    });
    assert_eq!(r.gauge(names::CIRCUIT_STATE, &[]), 2.0);
}

#[test]
fn limiter_waits_rejections_and_pushback() {
    let r = run(|_| async {
        let mock = Mock::script([Step::Status(200), Step::retry_after(429, "2")]);
        let c = metered(&mock, |b| {
            b.no_retry().rate_limit(RateLimit::per_second(1).per_host())
        });
        c.get(URL).send().await.unwrap();
        // Waits a second for its token, then meets a 429 that pauses the host for 2 s.
        assert_eq!(c.get(URL).send().await.unwrap().status(), 429);
        let fast = metered(&Mock::default(), |b| {
            b.no_retry()
                .rate_limit(RateLimit::per_second(1).per_host().fail_fast())
        });
        fast.get(URL).send().await.unwrap();
        assert!(fast.get(URL).send().await.unwrap_err().is_rate_limited());
    });
    assert_eq!(r.counter(names::RATE_LIMIT_WAITS, &[HOST]), 1);
    assert_eq!(r.seconds(names::RATE_LIMIT_WAIT_DURATION, &[HOST]), [1.0]);
    assert_eq!(r.counter(names::PUSHBACKS, &[HOST]), 1);
    assert_eq!(r.seconds(names::PUSHBACK_DURATION, &[HOST]), [2.0]);
    assert_eq!(r.counter(names::RATE_LIMIT_REJECTIONS, &[HOST]), 1);
}

#[test]
fn bulkhead_in_flight_and_rejections() {
    run(|snap| async move {
        let mock = Mock::always(Step::after(secs(1), Step::Status(200)));
        let bulkhead = Bulkhead::new(2).max_queue(0).per_host();
        let c = metered(&mock, |b| b.no_retry().bulkhead(bulkhead));
        let (a, b) = (c.get(URL).send(), c.get(URL).send());
        let (a, b) = (tokio::spawn(a), tokio::spawn(b));
        tokio::task::yield_now().await;
        let busy = Recorded::take(&snap);
        assert_eq!(busy.gauge(names::BULKHEAD_IN_FLIGHT, &[HOST]), 2.0);
        assert!(c.get(URL).send().await.unwrap_err().kind() == palisade::ErrorKind::BulkheadFull);
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        // The debugging recorder's snapshot resets what it shows, gauges too: the second
        // shows the change since the first, both permits given back.
        let idle = Recorded::take(&snap);
        assert_eq!(idle.gauge(names::BULKHEAD_IN_FLIGHT, &[HOST]), -2.0);
        assert_eq!(idle.counter(names::BULKHEAD_REJECTIONS, &[HOST]), 1);
    });
}

#[test]
fn fallbacks_served_are_counted_and_the_call_says_so() {
    let r = run(|_| async {
        let mock = Mock::always(Step::Full(
            200,
            vec![("cache-control", "max-age=60".to_owned())],
            b"stored".to_vec(),
        ));
        let c = metered(&mock, |b| {
            b.no_retry()
                .no_circuit_breaker()
                .fallback_cache(FallbackCache::default())
        });
        assert_eq!(
            c.get(URL).send().await.unwrap().text().await.unwrap(),
            "stored"
        );
        mock.set(Step::Status(503));
        let resp = c.get(URL).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "stored");
    });
    assert_eq!(
        r.counter(
            names::FALLBACKS_SERVED,
            &[
                HOST,
                ("palisade.fallback.reason", "server_error"),
                ("palisade.fallback.source", "stored"),
            ]
        ),
        1
    );
    let served = [
        GET,
        HOST,
        PORT,
        ("http.response.status_code", "200"),
        ("palisade.fallback", "server_error"),
    ];
    assert_eq!(r.seconds(names::REQUEST_DURATION, &served).len(), 1);
    let plain = [GET, HOST, PORT, ("http.response.status_code", "200")];
    assert_eq!(r.seconds(names::REQUEST_DURATION, &plain).len(), 1);
}

/// Every instrument has a unit and a description once a client is built.
#[test]
fn instruments_are_described() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let c = Client::builder().metrics(Metrics::new()).build().unwrap();
        drop(c);
        // Described only: nothing is in a snapshot until recorded.
        metrics::counter!(names::RETRIES).increment(1);
        metrics::histogram!(names::REQUEST_DURATION).record(1.0);
    });
    let r = snap.snapshot().into_vec();
    for (ck, unit, desc, _) in r {
        let name = ck.key().name();
        assert!(
            desc.is_some_and(|d| !d.is_empty()),
            "{name} has a description"
        );
        let want = if name == names::RETRIES {
            Unit::Count
        } else {
            Unit::Seconds
        };
        assert_eq!(unit, Some(want), "{name}");
    }
}

#[test]
fn a_hundred_thousand_hosts_make_a_bounded_number_of_series() {
    let r = run(|_| async {
        let mock = Mock::always(Step::Status(200));
        let c = mock.client(|b| b.no_retry().metrics(Metrics::new().max_hosts(100)));
        for i in 0..100_000 {
            c.get(format!("http://h{i}.test/")).send().await.unwrap();
        }
    });
    for name in [names::HTTP_CLIENT_REQUEST_DURATION, names::REQUEST_DURATION] {
        let series = r.named(name);
        let hosts: BTreeSet<&str> = series
            .iter()
            .map(|s| s.labels["server.address"].as_str())
            .collect();
        assert_eq!(hosts.len(), 101, "{name}: 100 hosts and {OTHER}");
        assert!(hosts.contains(OTHER));
        assert_eq!(series.len(), 101);
        let other = r.seconds(
            name,
            &[
                GET,
                ("server.address", OTHER),
                ("http.response.status_code", "200"),
            ],
        );
        assert_eq!(other.len(), 100_000 - 100);
    }
}

#[test]
fn no_label_holds_a_secret() {
    let r = run(|_| async {
        let mock = Mock::script([Step::Status(503), Step::Status(500)]);
        let c = metered(&mock, |b| b.retry(exact(ms(10), ms(10)).max_attempts(2)));
        let url = "http://user:pa55word@a.test/private/path?api_key=s3cr3t-query#frag";
        c.get(url)
            .header("authorization", "Bearer t0ken-value")
            .send()
            .await
            .unwrap();
    });
    assert!(!r.0.is_empty());
    for s in &r.0 {
        for (k, v) in &s.labels {
            for secret in [
                "user", "pa55word", "private", "path", "s3cr3t", "api_key", "frag", "t0ken",
                "Bearer",
            ] {
                assert!(!v.contains(secret), "{}: {k}={v}", s.name);
            }
        }
    }
}

#[test]
fn nothing_is_recorded_when_off() {
    let r = run(|_| async {
        let mock = Mock::script([Step::Status(503)]);
        let c = mock.client(|b| b.retry(exact(ms(10), ms(10))));
        c.get(URL).send().await.unwrap();
    });
    assert!(r.0.is_empty(), "{:?}", r.0);
}

#[test]
fn other_methods_are_other() {
    let r = run(|_| async {
        let mock = Mock::always(Step::Status(200));
        let c = metered(&mock, |b| b.no_retry());
        let m = reqwest::Method::from_bytes(b"PURGE").unwrap();
        c.request(m, URL).send().await.unwrap();
    });
    let labels = [
        ("http.request.method", OTHER),
        HOST,
        PORT,
        ("http.response.status_code", "200"),
    ];
    assert_eq!(r.seconds(names::REQUEST_DURATION, &labels).len(), 1);
}

/// Fleet mode's switch to its local fallback, with Redis unreachable (a closed port): no Redis
/// needed. In real time: the connection attempt is a real socket's.
#[test]
fn a_fleet_fallback_is_counted_and_the_mode_gauge_drops() {
    use palisade::rate_limit::Redis;
    let r = run_in_time(false, |_| async {
        let port = support::net::closed_port().port();
        let mock = Mock::always(Step::Status(200));
        let redis = Redis::new(format!("redis://127.0.0.1:{port}/")).timeout(ms(100));
        let c = metered(&mock, |b| {
            b.no_retry()
                .rate_limit(RateLimit::per_second(10).redis(redis))
        });
        assert_eq!(c.get(URL).send().await.unwrap().status(), 200);
    });
    assert_eq!(r.gauge(names::FLEET_SHARED, &[]), 0.0);
    assert_eq!(
        r.counter(
            names::FLEET_FALLBACKS,
            &[("palisade.fleet.reason", "unreachable")]
        ),
        1
    );
}
