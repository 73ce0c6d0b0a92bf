//! The bulkhead stage on its own (through `tower::ServiceBuilder`) over the in-memory transport,
//! in paused time.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::bulkhead::{Bulkhead, BulkheadLayer};
use palisade::layer::{RetryLayer, TotalTimeoutLayer};
use palisade::{Error, ErrorKind, ResponseExt};
use reqwest::{Method, Request, Response};
use support::{exact, ms, secs, Events, Mock, Step};
use tokio::time::{timeout, Instant};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use url::Url;

fn get(url: &str) -> Request {
    Request::new(Method::GET, url.parse().unwrap())
}

fn url(s: &str) -> Url {
    s.parse().unwrap()
}

/// The future of one call, made at once (a permit or a queue place is taken by `call`).
async fn start<S>(svc: &mut S, u: &str) -> S::Future
where
    S: Service<Request, Response = Response, Error = Error>,
{
    svc.ready().await.unwrap().call(get(u))
}

/// Awaits `f`, failing instead of hanging: in paused time a call that waits for a permit
/// nobody will give back would otherwise park the test forever.
async fn bounded<F: Future>(f: F) -> F::Output {
    timeout(secs(3_600), f)
        .await
        .expect("hung: a permit or a queue place was never given back")
}

/// One call, readied, made and awaited (bounded).
async fn send<S>(svc: &mut S, u: &str) -> Result<Response, Error>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    let fut = start(svc, u).await;
    bounded(fut).await
}

/// Joins a spawned call (bounded).
async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    bounded(task).await.expect("the task panicked")
}

/// Lets spawned tasks run up to their next wait, without moving the clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Counts the calls that reach the transport and are not finished yet, and the most at once.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The mock transport, instrumented with a [`Gauge`].
#[derive(Clone)]
struct Tracked {
    mock: Mock,
    gauge: Gauge,
}

impl Service<Request> for Tracked {
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.mock.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let now = self.gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.gauge.max.fetch_max(now, Ordering::SeqCst);
        let held = Held(self.gauge.now.clone());
        let fut = self.mock.call(req);
        Box::pin(async move {
            let _held = held;
            fut.await
        })
    }
}

#[tokio::test(start_paused = true)]
async fn never_more_than_n_in_flight_under_a_thousand_callers() {
    let mock = Mock::always(Step::after(ms(10), Step::Status(200)));
    let gauge = Gauge::default();
    let layer = BulkheadLayer::new(Bulkhead::new(10).max_queue(1_000)).unwrap();
    let svc = ServiceBuilder::new().layer(layer.clone()).service(Tracked {
        mock: mock.clone(),
        gauge: gauge.clone(),
    });
    let start = Instant::now();
    let tasks: Vec<_> = (0..1_000)
        .map(|i| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                svc.ready()
                    .await?
                    .call(get(&format!("http://api.test/{i}")))
                    .await
            })
        })
        .collect();
    settle().await;
    assert_eq!(layer.load().in_flight, 10);
    assert_eq!(layer.load().queued, 990);
    for t in tasks {
        assert_eq!(join(t).await.unwrap().status(), 200);
    }
    assert_eq!(
        gauge.max.load(Ordering::SeqCst),
        10,
        "the cap was reached, never passed"
    );
    assert_eq!(mock.calls(), 1_000);
    // 100 rounds of 10 calls of 10 ms each: a freed permit goes to the next caller at once.
    assert_eq!(start.elapsed(), secs(1));
    assert_eq!(layer.load().in_flight, 0);
    assert_eq!(layer.load().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_queue_the_calls_past_n_are_rejected_and_never_sent() {
    let mock = Mock::always(Step::after(ms(10), Step::Status(200)));
    let events = Events::default();
    let layer = BulkheadLayer::new(Bulkhead::new(10))
        .unwrap()
        .on_event(events.hook());
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { svc.ready().await?.call(get("http://api.test/x")).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match join(t).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.is_bulkhead_full(), "{e:?}");
                assert_eq!(e.attempts(), 0);
            }
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(mock.calls(), 10);
    assert_eq!(events.count("Rejected { kind: BulkheadFull"), 990);
}

#[tokio::test(start_paused = true)]
async fn past_n_in_flight_and_q_queued_the_next_caller_is_rejected_at_once() {
    // N = 2, Q = 3: calls 1–2 go through, 3–5 wait, 6 is rejected at once.
    let mock = Mock::always(Step::after(secs(1), Step::Status(200)));
    let events = Events::default();
    let layer = BulkheadLayer::new(Bulkhead::new(2).max_queue(3))
        .unwrap()
        .on_event(events.hook());
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let start = Instant::now();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { svc.ready().await?.call(get("http://api.test/x")).await })
        })
        .collect();
    settle().await;
    assert_eq!(mock.calls(), 2);
    assert_eq!(layer.load().in_flight, 2);
    assert_eq!(layer.load().queued, 3);

    let mut sixth = svc.clone();
    let err = sixth
        .ready()
        .await
        .unwrap()
        .call(get("http://api.test/x?token=1"))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "rejected at once");
    assert_eq!(err.kind(), ErrorKind::BulkheadFull);
    assert_eq!(err.retry_after(), None);
    assert_eq!(err.attempts(), 0);
    assert_eq!(
        err.url().map(Url::as_str),
        Some("http://api.test/x?token=1")
    );
    assert_eq!(
        mock.calls(),
        2,
        "a rejected call never reaches the stage below"
    );
    assert_eq!(
        events.all(),
        ["Rejected { kind: BulkheadFull, key: \"\", retry_after: None }"]
    );

    // The queued callers get in as permits free, in order.
    for t in tasks {
        assert_eq!(join(t).await.unwrap().status(), 200);
    }
    let arrivals: Vec<_> = mock.seen().iter().map(|s| s.at - start).collect();
    assert_eq!(arrivals, [secs(0), secs(0), secs(1), secs(1), secs(2)]);
    assert_eq!(start.elapsed(), secs(3));
    assert_eq!(events.count("Rejected"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_queued_caller_is_rejected_after_exactly_the_queue_timeout() {
    let mock = Mock::always(Step::Hang);
    let events = Events::default();
    let layer = BulkheadLayer::new(Bulkhead::new(1).max_queue(1).queue_timeout(ms(300)))
        .unwrap()
        .on_event(events.hook());
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let _in_flight = start(&mut svc, "http://api.test/a").await;
    let begin = Instant::now();
    let err = send(&mut svc, "http://api.test/b").await.unwrap_err();
    assert_eq!(begin.elapsed(), ms(300));
    assert!(err.is_bulkhead_full());
    assert_eq!(err.url().map(Url::as_str), Some("http://api.test/b"));
    assert_eq!(mock.calls(), 1);
    assert_eq!(layer.load().queued, 0, "the waiter left the queue");
    assert_eq!(layer.load().in_flight, 1);
    assert_eq!(events.count("Rejected { kind: BulkheadFull"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_queued_caller_that_gets_a_permit_in_time_is_served() {
    let mock = Mock::script([Step::after(ms(299), Step::Status(200))]);
    let layer = BulkheadLayer::new(Bulkhead::new(1).max_queue(1).queue_timeout(ms(300))).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let first = tokio::spawn(start(&mut svc, "http://api.test/a").await);
    let begin = Instant::now();
    let second = send(&mut svc, "http://api.test/b").await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(begin.elapsed(), ms(299));
    assert_eq!(join(first).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn the_total_deadline_bounds_the_queue_wait() {
    // The queue timeout is 1 s, but the request's total timeout of 200 ms comes first.
    let mock = Mock::always(Step::Hang);
    let layer = BulkheadLayer::new(Bulkhead::new(1).max_queue(1).queue_timeout(secs(1))).unwrap();
    // The first call takes the permit through a stack without a deadline, so it never frees it.
    let mut plain = layer.layer(mock.clone());
    let _in_flight = start(&mut plain, "http://api.test/a").await;
    let mut with_deadline = ServiceBuilder::new()
        .layer(TotalTimeoutLayer::new(ms(200)).unwrap())
        .layer(layer.clone())
        .service(mock.clone());
    let begin = Instant::now();
    let err = send(&mut with_deadline, "http://api.test/b")
        .await
        .unwrap_err();
    assert_eq!(begin.elapsed(), ms(200));
    assert!(err.is_bulkhead_full(), "{err:?}");
    assert_eq!(layer.load().queued, 0);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_queue_timeout_the_total_deadline_still_bounds_the_wait() {
    let mock = Mock::always(Step::Hang);
    let layer = BulkheadLayer::new(Bulkhead::new(1).max_queue(1)).unwrap();
    let mut plain = layer.layer(mock.clone());
    let _in_flight = start(&mut plain, "http://api.test/a").await;
    let mut with_deadline = ServiceBuilder::new()
        .layer(TotalTimeoutLayer::new(ms(700)).unwrap())
        .layer(layer.clone())
        .service(mock.clone());
    let begin = Instant::now();
    let err = send(&mut with_deadline, "http://api.test/b")
        .await
        .unwrap_err();
    assert_eq!(begin.elapsed(), ms(700));
    assert!(err.is_bulkhead_full(), "{err:?}");
    assert_eq!(layer.load().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_an_in_flight_call_frees_its_permit() {
    let mock = Mock::script([Step::Hang]);
    let layer = BulkheadLayer::new(Bulkhead::new(1)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let mut first = start(&mut svc, "http://api.test/a").await;
    assert!(
        timeout(secs(1), &mut first).await.is_err(),
        "still in flight"
    );
    assert_eq!(layer.load().in_flight, 1);
    let err = send(&mut svc, "http://api.test/b").await.unwrap_err();
    assert!(err.is_bulkhead_full());
    drop(first);
    assert_eq!(layer.load().in_flight, 0);
    let resp = send(&mut svc, "http://api.test/c").await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_queued_call_leaves_the_queue_and_the_next_one_gets_the_permit() {
    let mock = Mock::script([Step::after(secs(1), Step::Status(200))]);
    let layer = BulkheadLayer::new(Bulkhead::new(1).max_queue(1)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let first = tokio::spawn(start(&mut svc, "http://api.test/a").await);
    let mut queued = start(&mut svc, "http://api.test/b").await;
    assert!(timeout(ms(100), &mut queued).await.is_err(), "still queued");
    assert_eq!(layer.load().queued, 1);
    assert!(send(&mut svc, "http://api.test/c")
        .await
        .unwrap_err()
        .is_bulkhead_full());
    drop(queued);
    assert_eq!(layer.load().queued, 0);
    // The place is free again, and the permit goes to the caller who took it.
    let begin = Instant::now();
    let resp = send(&mut svc, "http://api.test/d").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(begin.elapsed(), ms(900));
    join(first).await.unwrap();
    let urls: Vec<_> = mock.seen().iter().map(|s| s.url.clone()).collect();
    assert_eq!(urls, ["http://api.test/a", "http://api.test/d"]);
    assert_eq!(layer.load(), Default::default());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_granted_a_permit_and_dropped_before_it_ran_gives_the_permit_back() {
    let mock = Mock::script([Step::Hang]);
    let layer = BulkheadLayer::new(Bulkhead::new(1).max_queue(1)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let first = start(&mut svc, "http://api.test/a").await;
    let mut queued = start(&mut svc, "http://api.test/b").await;
    assert!(timeout(ms(10), &mut queued).await.is_err());
    // The permit passes to the waiter, which is dropped before it is polled again.
    drop(first);
    drop(queued);
    assert_eq!(layer.load().in_flight, 0);
    assert_eq!(layer.load().queued, 0);
    let resp = send(&mut svc, "http://api.test/c").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn errors_and_error_responses_free_their_permits() {
    let mock = Mock::script([
        Step::Fail(std::io::ErrorKind::ConnectionReset),
        Step::Fail(std::io::ErrorKind::ConnectionRefused),
        Step::Status(503),
    ]);
    let layer = BulkheadLayer::new(Bulkhead::new(1)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let e = send(&mut svc, "http://api.test/x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport);
    assert_eq!(layer.load().in_flight, 0);
    let e = send(&mut svc, "http://api.test/x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect);
    let r = send(&mut svc, "http://api.test/x").await.unwrap();
    assert_eq!(r.status(), 503);
    let r = send(&mut svc, "http://api.test/x").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(layer.load().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn one_permit_is_held_across_all_the_attempts_of_a_request() {
    // Bulkhead outside retry: 503, sleep 100 ms, 503, sleep 200 ms, 200.
    let mock = Mock::script([Step::Status(503), Step::Status(503)]);
    let layer = BulkheadLayer::new(Bulkhead::new(1)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(RetryLayer::new(exact(ms(100), secs(1))).unwrap())
        .service(mock.clone());
    let retrying = tokio::spawn(start(&mut svc, "http://api.test/a").await);
    tokio::time::sleep(ms(150)).await;
    assert_eq!(mock.calls(), 2, "inside the second backoff sleep");
    assert_eq!(layer.load().in_flight, 1);
    let err = send(&mut svc, "http://api.test/b").await.unwrap_err();
    assert!(err.is_bulkhead_full());
    let resp = join(retrying).await.unwrap();
    assert_eq!(resp.attempts(), 3);
    assert_eq!(layer.load().in_flight, 0);
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn per_host_a_full_host_does_not_block_another() {
    let mock = Mock::always(Step::after(secs(1), Step::Status(200)));
    let events = Events::default();
    let layer = BulkheadLayer::new(Bulkhead::new(1).per_host())
        .unwrap()
        .on_event(events.hook());
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let a = start(&mut svc, "http://a.test/1").await;
    let err = send(&mut svc, "http://a.test:80/2").await.unwrap_err();
    assert!(err.is_bulkhead_full(), "the same host:port");
    assert_eq!(
        events.all(),
        ["Rejected { kind: BulkheadFull, key: \"a.test:80\", retry_after: None }"]
    );
    let b = send(&mut svc, "http://b.test/1").await.unwrap();
    assert_eq!(b.status(), 200);
    let other_port = send(&mut svc, "http://a.test:8080/1").await.unwrap();
    assert_eq!(other_port.status(), 200);
    assert_eq!(layer.load_for(&url("http://a.test/")).in_flight, 1);
    assert_eq!(layer.load_for(&url("http://b.test/")).in_flight, 0);
    assert_eq!(layer.load().in_flight, 1);
    assert_eq!(layer.tracked_hosts(), 1, "idle hosts are removed");
    drop(a);
    assert_eq!(layer.tracked_hosts(), 0);
}

#[tokio::test(start_paused = true)]
async fn per_host_the_host_map_is_bounded_and_idle_hosts_are_evicted() {
    let mock = Mock::always(Step::after(ms(10), Step::Status(200)));
    let events = Events::default();
    let layer = BulkheadLayer::new(Bulkhead::new(2).per_host().max_hosts(2))
        .unwrap()
        .on_event(events.hook());
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let a = start(&mut svc, "http://a.test/").await;
    let b = start(&mut svc, "http://b.test/").await;
    assert_eq!(layer.tracked_hosts(), 2);
    let err = send(&mut svc, "http://c.test/").await.unwrap_err();
    assert!(err.is_bulkhead_full(), "no room for a third host");
    assert_eq!(events.count("key: \"c.test:80\""), 1);
    // A busy host is still served.
    let a2 = send(&mut svc, "http://a.test/").await.unwrap();
    assert_eq!(a2.status(), 200);
    bounded(a).await.unwrap();
    assert_eq!(layer.tracked_hosts(), 1);
    let c = send(&mut svc, "http://c.test/").await.unwrap();
    assert_eq!(c.status(), 200);
    drop(b);
    assert_eq!(layer.tracked_hosts(), 0);
    // Many hosts one after another leave nothing behind.
    for i in 0..1_000 {
        let r = send(&mut svc, &format!("http://h{i}.test/")).await;
        assert_eq!(r.unwrap().status(), 200);
        assert_eq!(layer.tracked_hosts(), 0);
    }
    assert_eq!(events.count("Rejected"), 1);
}

#[tokio::test(start_paused = true)]
async fn per_host_queues_are_per_host() {
    let mock = Mock::always(Step::after(secs(1), Step::Status(200)));
    let layer = BulkheadLayer::new(Bulkhead::new(1).max_queue(1).per_host()).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let _a1 = start(&mut svc, "http://a.test/").await;
    let _a2 = start(&mut svc, "http://a.test/").await;
    assert!(send(&mut svc, "http://a.test/")
        .await
        .unwrap_err()
        .is_bulkhead_full());
    let _b1 = start(&mut svc, "http://b.test/").await;
    let _b2 = start(&mut svc, "http://b.test/").await;
    assert_eq!(layer.load_for(&url("http://a.test/")).queued, 1);
    assert_eq!(layer.load_for(&url("http://b.test/")).queued, 1);
    assert_eq!(layer.load().queued, 2);
    assert_eq!(layer.load().in_flight, 2);
}

#[test]
fn bad_configuration_is_a_config_error_naming_the_field() {
    let field = |b: Bulkhead| BulkheadLayer::new(b).unwrap_err().field().to_owned();
    assert_eq!(field(Bulkhead::new(0)), "bulkhead.max_concurrent");
    assert_eq!(
        field(Bulkhead::new(4).max_concurrent(0)),
        "bulkhead.max_concurrent"
    );
    assert_eq!(field(Bulkhead::new(usize::MAX)), "bulkhead.max_concurrent");
    assert_eq!(
        field(Bulkhead::new(4).max_queue(8).queue_timeout(Duration::ZERO)),
        "bulkhead.queue_timeout"
    );
    assert_eq!(
        field(Bulkhead::new(4).per_host().max_hosts(0)),
        "bulkhead.max_hosts"
    );
    let e = BulkheadLayer::new(Bulkhead::new(0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid configuration: `bulkhead.max_concurrent` must be at least 1"
    );
    // Extreme but valid values are accepted, and nothing panics.
    assert!(BulkheadLayer::new(
        Bulkhead::new(1)
            .max_queue(usize::MAX)
            .queue_timeout(Duration::MAX)
            .max_hosts(usize::MAX)
    )
    .is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_huge_queue_timeout_does_not_overflow() {
    let mock = Mock::script([Step::after(secs(5), Step::Status(200))]);
    let layer =
        BulkheadLayer::new(Bulkhead::new(1).max_queue(1).queue_timeout(Duration::MAX)).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(mock.clone());
    let first = tokio::spawn(start(&mut svc, "http://api.test/a").await);
    let resp = send(&mut svc, "http://api.test/b").await.unwrap();
    assert_eq!(resp.status(), 200);
    join(first).await.unwrap();
}

/// Counts calls in flight per host, and the most at once for any host.
#[derive(Clone, Default)]
struct PerHostGauge {
    now: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    max: Arc<AtomicUsize>,
}

impl Service<Request> for PerHostGauge {
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let host = req.url().host_str().unwrap_or_default().to_owned();
        let gauge = self.clone();
        Box::pin(async move {
            {
                let mut now = gauge.now.lock().unwrap();
                let n = now.entry(host.clone()).or_default();
                *n += 1;
                gauge.max.fetch_max(*n, Ordering::SeqCst);
            }
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            *gauge.now.lock().unwrap().get_mut(&host).unwrap() -= 1;
            Ok(support::response(200, &[], Vec::new()))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_host_limits_hold_across_threads_and_leave_no_state_behind() {
    // Hosts come and go thousands of times from four threads: each host's slot must be the only
    // one while it is busy (two would let through twice the cap), and go once it is idle.
    let gauge = PerHostGauge::default();
    let layer = BulkheadLayer::new(Bulkhead::new(2).max_queue(10_000).per_host()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(gauge.clone());
    let tasks: Vec<_> = (0..4_000)
        .map(|i| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                svc.ready()
                    .await?
                    .call(get(&format!("http://h{}.test/", i % 8)))
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(join(t).await.unwrap().status(), 200);
    }
    assert!(
        gauge.max.load(Ordering::SeqCst) <= 2,
        "more than 2 in flight for a host"
    );
    assert_eq!(layer.tracked_hosts(), 0);
    assert_eq!(layer.load(), Default::default());
}
