//! What palisade's pipeline costs on the success path.
//!
//! Every variant sends one GET through an in-memory transport that answers `200 OK` at once, so
//! what is measured is the cost of the stages, not of the network. Each iteration builds a fresh
//! `reqwest::Request` (the URL is parsed once, outside) the same way in every variant.
//!
//! - `success_path` (tokio `current_thread`):
//!   - `transport_direct`: the transport alone (`svc.clone().oneshot(req)`);
//!   - `palisade_standard`: `palisade::Client` with the standard pipeline (total timeout 30 s,
//!     retry 3 attempts with budget, attempt timeout 10 s) over that transport, via
//!     `Client::execute`;
//!   - `palisade_layers`: the same stages built from the public layers with
//!     `tower::ServiceBuilder`, without the client's span and URL bookkeeping;
//!   - `tower_resilience_retry_timelimiter`: tower-resilience's retry (3 attempts, exponential
//!     backoff 100 ms capped at 10 s) over its time limiter (10 s).
//! - `success_path_2_threads` (tokio `multi_thread`, 2 workers): 2 tasks share one client (or
//!   transport) and send requests concurrently; the time per request is wall time / requests,
//!   so it should not exceed the single-threaded figure if nothing contends.
//!
//! Run with `cargo bench --bench overhead` (about 30 s; no plots, see `criterion_group!` below).

use std::hint::black_box;
use std::time::Duration;

mod common;

use common::{current_thread, transport, two_tasks, two_workers, RetryableRequest, URL};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use palisade::layer::{AttemptTimeoutLayer, RetryLayer, TotalTimeoutLayer};
use reqwest::{Method, Request, Response, Url};
use tower::{ServiceBuilder, ServiceExt};
use tower_resilience::retry::{ExponentialBackoff, RetryLayer as TrRetryLayer};
use tower_resilience::timelimiter::{TimeLimiterError, TimeLimiterLayer};

fn palisade_client() -> palisade::Client {
    palisade::Client::builder()
        .transport(transport())
        .build()
        .expect("standard pipeline")
}

fn success_path(c: &mut Criterion) {
    let rt = current_thread();
    let url = Url::parse(URL).expect("valid URL");
    let url = &url;

    let mut group = c.benchmark_group("success_path");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));

    let direct = transport();
    let direct = &direct;
    group.bench_function("transport_direct", |b| {
        b.to_async(&rt).iter(|| async move {
            let req = Request::new(Method::GET, url.clone());
            black_box(direct.clone().oneshot(req).await.expect("200"))
        })
    });

    let client = palisade_client();
    let client = &client;
    group.bench_function("palisade_standard", |b| {
        b.to_async(&rt).iter(|| async move {
            let req = Request::new(Method::GET, url.clone());
            black_box(client.execute(req).await.expect("200"))
        })
    });

    let layers = ServiceBuilder::new()
        .layer(TotalTimeoutLayer::new(Duration::from_secs(30)).expect("valid"))
        .layer(RetryLayer::new(palisade::retry::Retry::default()).expect("valid"))
        .layer(AttemptTimeoutLayer::new(Duration::from_secs(10)).expect("valid"))
        .service(transport());
    let layers = &layers;
    group.bench_function("palisade_layers", |b| {
        b.to_async(&rt).iter(|| async move {
            let req = Request::new(Method::GET, url.clone());
            black_box(layers.clone().oneshot(req).await.expect("200"))
        })
    });

    // As in the probe: Retry → TimeLimiter (per attempt) → unwrap the request → transport.
    let retry =
        TrRetryLayer::<RetryableRequest, Response, TimeLimiterError<palisade::Error>>::builder()
            .max_attempts(3)
            .backoff(
                ExponentialBackoff::new(Duration::from_millis(100))
                    .max_interval(Duration::from_secs(10)),
            )
            .build();
    let time_limiter = TimeLimiterLayer::builder()
        .timeout_duration(Duration::from_secs(10))
        .cancel_running_future(true)
        .build();
    let resilience = ServiceBuilder::new()
        .layer(retry)
        .layer(time_limiter)
        .map_request(RetryableRequest::into_inner as fn(RetryableRequest) -> Request)
        .service(transport());
    let resilience = &resilience;
    group.bench_function("tower_resilience_retry_timelimiter", |b| {
        b.to_async(&rt).iter(|| async move {
            let req = Request::new(Method::GET, url.clone());
            let req = RetryableRequest::new(req).expect("no streaming body");
            black_box(resilience.clone().oneshot(req).await.expect("200"))
        })
    });

    group.finish();
}

fn success_path_2_threads(c: &mut Criterion) {
    let rt = two_workers();
    let url = Url::parse(URL).expect("valid URL");

    let mut group = c.benchmark_group("success_path_2_threads");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));

    let direct = transport();
    let u = url.clone();
    group.bench_function("transport_direct", |b| {
        b.iter_custom(|iters| {
            let (u, direct) = (u.clone(), direct.clone());
            two_tasks(&rt, iters, move || {
                let req = Request::new(Method::GET, u.clone());
                let fut = direct.clone().oneshot(req);
                async move { fut.await.expect("200") }
            })
        })
    });

    let client = palisade_client();
    let u = url.clone();
    group.bench_function("palisade_standard", |b| {
        b.iter_custom(|iters| {
            let (u, client) = (u.clone(), client.clone());
            two_tasks(&rt, iters, move || {
                let req = Request::new(Method::GET, u.clone());
                let fut = client.execute(req);
                async move { fut.await.expect("200") }
            })
        })
    });

    group.finish();
}

criterion_group! {
    name = benches;
    // The plots (plotters backend when gnuplot is missing) take longer than the measurements:
    // without them the whole bench runs in about 30 s.
    config = Criterion::default().without_plots();
    targets = success_path, success_path_2_threads
}
criterion_main!(benches);
