//! What palisade's circuit breaker, rate limiter and bulkhead cost per call on the success
//! path, next to their peers.
//!
//! Every variant sends one GET through an in-memory transport that answers `200 OK` at once,
//! so what is measured is the cost of the stage, not of the network. Each iteration builds a
//! fresh `reqwest::Request` (the URL is parsed once, outside) and calls
//! `svc.clone().oneshot(req)`, the same way in every variant. Every stage is built from its
//! public layer.
//!
//! - `breaker_closed`: a closed breaker admits the call and records its success.
//!   - `transport_direct`: the transport alone;
//!   - `palisade`: `CircuitBreakerLayer` with the default policy (one breaker per host);
//!   - `tower_resilience`: tower-resilience's circuit breaker layer (its defaults);
//!   - `recloser`: recloser's `AsyncRecloser::call` around the transport's future (its
//!     defaults; one breaker, not per host).
//! - `rate_limit_check`: a limiter whose rate is never reached takes a token.
//!   - `transport_direct`;
//!   - `palisade`: `RateLimitLayer` at 10⁹ per second, burst 10⁹ (one limiter for all hosts);
//!   - `palisade_per_host`: the same limit `per_host()` (a bucket per host, found by the
//!     request's `host:port`);
//!   - `governor_direct`: for reference, a raw `governor::RateLimiter::direct` with the same
//!     quota checked before calling the transport (what palisade's limiter is built on).
//! - `bulkhead_acquire`: a bulkhead with room takes a permit and gives it back.
//!   - `transport_direct`;
//!   - `palisade`: `BulkheadLayer` with `Bulkhead::new(1024)` (one for all hosts);
//!   - `tower_resilience`: tower-resilience's bulkhead layer, 1,024 concurrent calls.
//!
//! Each group runs on a tokio `current_thread` runtime, then again as `<group>_2_threads` on a
//! `multi_thread` runtime with 2 workers: 2 tasks share one service (clones of it) and each
//! sends half of the calls; the time per call is wall time / calls. Compare each stage with
//! `transport_direct` in the same group: if nothing in the stage is contended (a lock, a cache
//! line both threads write), its ratio to the bare transport stays what it is on one thread.
//!
//! Run with `cargo bench --bench stages` (about 90 s; no plots and 20,000 bootstrap resamples
//! instead of 100,000, see `criterion_group!` below).

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{current_thread, transport, two_tasks, two_workers, URL};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use palisade::bulkhead::Bulkhead;
use palisade::circuit_breaker::CircuitBreaker;
use palisade::layer::{BulkheadLayer, CircuitBreakerLayer, RateLimitLayer};
use palisade::rate_limit::RateLimit;
use reqwest::{Method, Request, Response, Url};
use tower::{Layer, ServiceExt};
use tower_resilience::bulkhead::BulkheadLayer as TrBulkheadLayer;
use tower_resilience::circuitbreaker::CircuitBreakerLayer as TrCircuitBreakerLayer;

fn configure(mut group: BenchmarkGroup<'_, WallTime>) -> BenchmarkGroup<'_, WallTime> {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    group
}

/// One call per iteration on a `current_thread` runtime.
fn single<F, Fut>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    send: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Response>,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| async { black_box(send().await) })
    });
}

/// `iters` calls split between 2 tasks on a 2-worker runtime; the wall time is returned.
fn pair<F, Fut>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    send: F,
) where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| two_tasks(rt, iters, send.clone()))
    });
}

/// A sender: builds a fresh request and sends it through a clone of `svc`.
macro_rules! sender {
    ($url:expr, $svc:expr) => {{
        let (url, svc) = ($url.clone(), $svc);
        move || {
            let req = Request::new(Method::GET, url.clone());
            let fut = svc.clone().oneshot(req);
            async move { fut.await.expect("200") }
        }
    }};
}

/// Runs every variant in `<name>` (one thread), then in `<name>_2_threads`.
macro_rules! bench_group {
    ($c:expr, $name:literal, $($id:literal => $send:expr),+ $(,)?) => {{
        let rt = current_thread();
        let mut group = configure($c.benchmark_group($name));
        $( single(&mut group, &rt, $id, $send.clone()); )+
        group.finish();
        let rt = two_workers();
        let mut group = configure($c.benchmark_group(concat!($name, "_2_threads")));
        $( pair(&mut group, &rt, $id, $send.clone()); )+
        group.finish();
    }};
}

fn breaker_closed(c: &mut Criterion) {
    let url = Url::parse(URL).expect("valid URL");

    let direct = sender!(url, transport());

    let layer = CircuitBreakerLayer::new(CircuitBreaker::default()).expect("valid");
    let palisade = sender!(url, layer.layer(transport()));

    let layer = TrCircuitBreakerLayer::builder()
        .name("bench")
        .build()
        .expect("valid circuit breaker config");
    let tower_resilience = sender!(url, layer.layer(transport()));

    let breaker: recloser::AsyncRecloser = recloser::Recloser::default().into();
    let recloser = {
        let (url, svc) = (url.clone(), transport());
        move || {
            let req = Request::new(Method::GET, url.clone());
            let fut = breaker.call(svc.clone().oneshot(req));
            async move { fut.await.expect("200") }
        }
    };

    bench_group!(c, "breaker_closed",
        "transport_direct" => direct,
        "palisade" => palisade,
        "tower_resilience" => tower_resilience,
        "recloser" => recloser,
    );
}

fn rate_limit_check(c: &mut Criterion) {
    let url = Url::parse(URL).expect("valid URL");

    let direct = sender!(url, transport());

    let layer = RateLimitLayer::new(RateLimit::per_second(1_000_000_000).burst(1_000_000_000))
        .expect("valid");
    let palisade = sender!(url, layer.layer(transport()));

    let layer = RateLimitLayer::new(
        RateLimit::per_second(1_000_000_000)
            .burst(1_000_000_000)
            .per_host(),
    )
    .expect("valid");
    let palisade_per_host = sender!(url, layer.layer(transport()));

    let quota = governor::Quota::per_second(NonZeroU32::new(1_000_000_000).expect("non-zero"))
        .allow_burst(NonZeroU32::new(1_000_000_000).expect("non-zero"));
    let limiter = Arc::new(governor::RateLimiter::direct(quota));
    let governor_direct = {
        let (url, svc) = (url.clone(), transport());
        move || {
            assert!(limiter.check().is_ok(), "the rate is never reached");
            let req = Request::new(Method::GET, url.clone());
            let fut = svc.clone().oneshot(req);
            async move { fut.await.expect("200") }
        }
    };

    bench_group!(c, "rate_limit_check",
        "transport_direct" => direct,
        "palisade" => palisade,
        "palisade_per_host" => palisade_per_host,
        "governor_direct" => governor_direct,
    );
}

fn bulkhead_acquire(c: &mut Criterion) {
    let url = Url::parse(URL).expect("valid URL");

    let direct = sender!(url, transport());

    let layer = BulkheadLayer::new(Bulkhead::new(1024)).expect("valid");
    let palisade = sender!(url, layer.layer(transport()));

    let layer = TrBulkheadLayer::builder()
        .name("bench")
        .max_concurrent_calls(1024)
        .build()
        .expect("valid bulkhead config");
    let tower_resilience = sender!(url, layer.layer(transport()));

    bench_group!(c, "bulkhead_acquire",
        "transport_direct" => direct,
        "palisade" => palisade,
        "tower_resilience" => tower_resilience,
    );
}

criterion_group! {
    name = benches;
    // The plots (plotters backend when gnuplot is missing) and the default 100,000 bootstrap
    // resamples take longer than the measurements: without them the 20 benchmarks run in about
    // 90 s.
    config = Criterion::default().without_plots().nresamples(20_000);
    targets = breaker_closed, rate_limit_check, bulkhead_acquire
}
criterion_main!(benches);
