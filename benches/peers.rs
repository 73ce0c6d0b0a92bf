//! What palisade's standard pipeline costs next to its peers, on the success path, in the same
//! run: over an in-memory transport (the cost of the stages alone), over real loopback HTTP (the
//! cost as a share of a request), and from two threads against one (whether the shared breaker,
//! limiter and retry budget contend).
//!
//! Every iteration sends one GET built the same way in every variant (`Request::new`, the URL
//! parsed once, outside) and waits for the response.
//!
//! - `in_memory` (tokio `current_thread`), over the in-memory transport of `common`, which
//!   answers `200 OK` with an empty body at once:
//!   - `transport_direct`: the transport alone (`svc.clone().oneshot(req)`);
//!   - `palisade_standard`: `palisade::Client` with the standard pipeline (total timeout 30 s,
//!     retry with 3 attempts and the budget, circuit breaker per host, attempt timeout 10 s) plus
//!     a rate limit that is never reached (10⁹ per second, burst 10⁹), so that it has the same
//!     four kinds of stage as the peer, via `Client::execute`. It also keeps the total timeout,
//!     which the peer has no stage for, and, because the transport is a custom one, boxes it
//!     (`BoxCloneSyncService`: one allocation and a virtual call per attempt), which it does not
//!     do over reqwest;
//!   - `tower_resilience_stack`: tower-resilience's retry (3 attempts, exponential backoff
//!     100 ms capped at 10 s) → circuit breaker (its defaults) → rate limiter (token bucket,
//!     10⁹ per second, burst 10⁹, never reached) → time limiter (10 s), in palisade's order,
//!     over the same transport (`svc.clone().oneshot(req)`);
//!   - `palisade_host_policies` (this group only): `palisade_standard` with eight host policies
//!     (`ClientBuilder::host`: four exact hosts, four wildcards), the request's host matched by
//!     `*.example.com`, which inherits every stage: what picking a host's pipeline costs (an
//!     exact lookup that misses, then one per suffix of the host);
//!   - `palisade_metrics` (this group only): `palisade_standard` with metrics on
//!     (`ClientBuilder::metrics`) and no recorder installed, so the `metrics` facade's no-op:
//!     what recording costs palisade itself, before any exporter's own cost.
//!
//!   reqwest-middleware has no place here: its chain ends in `reqwest::Client::execute`
//!   (`Next::run` with no middleware left), and reqwest 0.13 has no pluggable transport, only
//!   `connector_layer`, which wraps the making of connections, under HTTP/1 or HTTP/2 encoding.
//!   It is measured over loopback only.
//! - `loopback` (client on a tokio `current_thread` runtime on the bench's thread; the server on
//!   a thread and `current_thread` runtime of its own): a hyper 1 HTTP/1.1 server on
//!   `127.0.0.1`, keep-alive, answering `200 OK` with a 26-byte body. Every variant reads the
//!   whole body (`Response::bytes`) and keeps its connection open between requests; each
//!   variant's `reqwest::Client` has the configuration palisade gives its own (a default
//!   `reqwest::ClientBuilder` with `.retry(reqwest::retry::never())`), so all speak HTTP/1.1
//!   (the server has no other) over connections of their own, kept open (one from one thread,
//!   two from two):
//!   - `reqwest_direct`: `reqwest::Client::execute`;
//!   - `palisade_standard`: `palisade::Client::builder().build()` (the standard pipeline; no rate
//!     limit), via `Client::execute`;
//!   - `reqwest_middleware_retry`: reqwest-middleware's `ClientWithMiddleware` with
//!     reqwest-retry's `RetryTransientMiddleware` (exponential backoff, 2 retries, so 3
//!     attempts), via `ClientWithMiddleware::execute`. It has no circuit breaker and no total or
//!     attempt timeout; palisade's pipeline does more.
//! - `in_memory_2_threads` and `loopback_2_threads` (tokio `multi_thread`, 2 workers): the same
//!   variants, 2 tasks sharing one client (each task holds a clone) and sending half of the
//!   requests each; the time per request is wall time / requests. If nothing contends, each
//!   variant's time per request is at most its single-threaded one and its ratio to the bare
//!   transport stays what it is on one thread. The loopback server still has one thread, and
//!   shares the 2 cores with the client's 2 workers, so `loopback_2_threads` shows less.
//!
//! Before criterion runs each group (in `cargo bench` only), the bench prints two tables:
//!
//! - heap allocations per request for each single-threaded variant (mean over 2,000 requests
//!   after 200 to warm up), from a counting global allocator that counts the bench's thread
//!   only: over loopback, what the client does (reqwest's connection task runs on that thread
//!   too), not the server;
//! - the time per request from rounds that run a batch through every variant in turn (200
//!   rounds of 1,000 requests in memory, 50 of 10,000 from 2 threads, 200 of 50 over loopback,
//!   100 of 100 from 2 threads), and palisade's time over each other variant's within each
//!   round (median and quartiles). Criterion measures one variant after the other, so on a
//!   shared machine a change of load between them shows as a difference between variants; the
//!   interleaved ratios cancel it.
//!
//! `PEERS_CALLGRIND=<group>/<variant>` (for example `in_memory/palisade_standard`) runs no
//! benchmark: the binary sends 200 requests to warm up, then `PEERS_CALLGRIND_N` more (default
//! 10,000) through that variant on a `current_thread` runtime, and exits. Run it under
//! `valgrind --tool=callgrind` once with N and once with `PEERS_CALLGRIND_N=0`: the difference
//! of the instruction counts over N is the instructions per request. Over loopback, add
//! `--separate-threads=yes` to tell the client's thread from the server's.
//!
//! Run with `cargo bench --bench peers` (about 75 s; no plots and 20,000 bootstrap resamples
//! instead of 100,000, see `criterion_group!` below).

use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

use common::alloc::allocs;
use common::server::loopback_server;
use common::{current_thread, transport, two_workers, RetryableRequest, URL};
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use palisade::rate_limit::RateLimit;
use reqwest::{Method, Request, Response, Url};
use reqwest_middleware::ClientWithMiddleware;
use reqwest_retry::policies::ExponentialBackoff as RetryPoliciesBackoff;
use reqwest_retry::RetryTransientMiddleware;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_resilience::circuitbreaker::{CircuitBreakerError, CircuitBreakerLayer};
use tower_resilience::ratelimiter::{RateLimiterLayer, RateLimiterServiceError};
use tower_resilience::retry::{ExponentialBackoff, RetryLayer};
use tower_resilience::timelimiter::{TimeLimiterError, TimeLimiterLayer};

#[global_allocator]
static ALLOC: common::alloc::Counting = common::alloc::Counting;

// ---------------------------------------------------------------------------------------------
// Variants

/// One way of sending a request, shared by the benchmarks, the allocation count and the
/// callgrind mode. Clones share the client (breakers, limiters, budget, connection pool).
trait Variant: Clone + Send + Sync + 'static {
    /// Sends one request and waits for the response (and over loopback, its body).
    fn send(&self) -> impl Future<Output = ()> + Send + '_;
}

/// The in-memory transport alone.
#[derive(Clone)]
struct TransportDirect<S> {
    url: Url,
    svc: S,
}

impl<S> Variant for TransportDirect<S>
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    fn send(&self) -> impl Future<Output = ()> + Send + '_ {
        let req = Request::new(Method::GET, self.url.clone());
        let fut = self.svc.clone().oneshot(req);
        async move {
            black_box(fut.await.expect("200"));
        }
    }
}

/// `palisade::Client::execute`; over loopback, reading the body too.
#[derive(Clone)]
struct Palisade {
    url: Url,
    client: palisade::Client,
    read_body: bool,
}

impl Variant for Palisade {
    fn send(&self) -> impl Future<Output = ()> + Send + '_ {
        let req = Request::new(Method::GET, self.url.clone());
        let fut = self.client.execute(req);
        async move {
            let resp = fut.await.expect("200");
            if self.read_body {
                black_box(resp.bytes().await.expect("body"));
            } else {
                black_box(resp);
            }
        }
    }
}

/// The error of the tower-resilience stack, inside out: time limiter, rate limiter, breaker.
type TrError = CircuitBreakerError<RateLimiterServiceError<TimeLimiterError<palisade::Error>>>;

/// tower-resilience's retry → circuit breaker → rate limiter → time limiter → the transport.
fn tower_resilience_stack() -> impl Service<
    RetryableRequest,
    Response = Response,
    Error = TrError,
    Future = impl Future<Output = Result<Response, TrError>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let retry = RetryLayer::<RetryableRequest, Response, TrError>::builder()
        .max_attempts(3)
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(100))
                .max_interval(Duration::from_secs(10)),
        )
        .build();
    let breaker = CircuitBreakerLayer::builder()
        .name("bench")
        .build()
        .expect("valid circuit breaker config");
    let limiter = RateLimiterLayer::burst(1_000_000_000, 1_000_000_000)
        .build()
        .expect("valid rate limiter config");
    let time_limiter = TimeLimiterLayer::builder()
        .timeout_duration(Duration::from_secs(10))
        .cancel_running_future(true)
        .build();
    ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .layer(limiter)
        .layer(time_limiter)
        .map_request(RetryableRequest::into_inner as fn(RetryableRequest) -> Request)
        .service(transport())
}

/// A tower-resilience stack (see [`tower_resilience_stack`]).
#[derive(Clone)]
struct TowerResilience<S> {
    url: Url,
    svc: S,
}

impl<S> Variant for TowerResilience<S>
where
    S: Service<RetryableRequest, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    fn send(&self) -> impl Future<Output = ()> + Send + '_ {
        let req = Request::new(Method::GET, self.url.clone());
        let req = RetryableRequest::new(req).expect("no streaming body");
        let fut = self.svc.clone().oneshot(req);
        async move {
            black_box(fut.await.expect("200"));
        }
    }
}

/// `reqwest::Client::execute`, reading the body.
#[derive(Clone)]
struct ReqwestDirect {
    url: Url,
    client: reqwest::Client,
}

impl Variant for ReqwestDirect {
    fn send(&self) -> impl Future<Output = ()> + Send + '_ {
        let req = Request::new(Method::GET, self.url.clone());
        let fut = self.client.execute(req);
        async move {
            let resp = fut.await.expect("200");
            black_box(resp.bytes().await.expect("body"));
        }
    }
}

/// `reqwest_middleware::ClientWithMiddleware::execute`, reading the body.
#[derive(Clone)]
struct Middleware {
    url: Url,
    client: ClientWithMiddleware,
}

impl Variant for Middleware {
    fn send(&self) -> impl Future<Output = ()> + Send + '_ {
        let req = Request::new(Method::GET, self.url.clone());
        async move {
            let resp = self.client.execute(req).await.expect("200");
            black_box(resp.bytes().await.expect("body"));
        }
    }
}

/// The `reqwest::Client` palisade builds for itself by default, for the peers over loopback.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .build()
        .expect("reqwest client")
}

/// The in-memory variants: the transport and the tower-resilience stack stay unboxed (their
/// types are the `impl Variant`s), as a user would hold them.
struct InMemory<D, T> {
    direct: D,
    palisade: Palisade,
    /// The same pipeline with metrics on, and no recorder installed (the facade's no-op).
    metrics: Palisade,
    /// The same pipeline with eight host policies, the request's host under a wildcard.
    hosts: Palisade,
    tower_resilience: T,
}

/// Fresh clients and stacks, so that no state carries over between groups.
fn in_memory_variants() -> InMemory<impl Variant, impl Variant> {
    let url = Url::parse(URL).expect("valid URL");
    let builder = || {
        palisade::Client::builder()
            .transport(transport())
            .rate_limit(RateLimit::per_second(1_000_000_000).burst(1_000_000_000))
    };
    let client = builder().build().expect("standard pipeline");
    let metered = builder()
        .metrics(palisade::metrics::Metrics::new())
        .build()
        .expect("standard pipeline with metrics");
    let mut with_hosts = builder();
    for (i, pattern) in [
        "a.example.net",
        "b.example.net:8443",
        "c.example.org",
        "d.example.org",
        "*.example.org",
        "*.example.net",
        "*.internal.example.com",
        "*.example.com",
    ]
    .into_iter()
    .enumerate()
    {
        let policy = palisade::HostPolicy::new();
        // Each policy overrides something but the one the request goes through.
        let policy = if pattern == "*.example.com" {
            policy
        } else {
            policy.attempt_timeout(Duration::from_secs(1 + i as u64))
        };
        with_hosts = with_hosts.host(pattern, policy);
    }
    let with_hosts = with_hosts
        .build()
        .expect("standard pipeline with host policies");
    InMemory {
        direct: TransportDirect {
            url: url.clone(),
            svc: transport(),
        },
        palisade: Palisade {
            url: url.clone(),
            client,
            read_body: false,
        },
        metrics: Palisade {
            url: url.clone(),
            client: metered,
            read_body: false,
        },
        hosts: Palisade {
            url: url.clone(),
            client: with_hosts,
            read_body: false,
        },
        tower_resilience: TowerResilience {
            url,
            svc: tower_resilience_stack(),
        },
    }
}

struct Loopback {
    reqwest: ReqwestDirect,
    palisade: Palisade,
    middleware: Middleware,
}

impl Loopback {
    fn new(addr: SocketAddr) -> Self {
        let url = Url::parse(&format!("http://{addr}/users/1")).expect("valid URL");
        let client = palisade::Client::builder()
            .build()
            .expect("standard pipeline");
        let policy = RetryPoliciesBackoff::builder().build_with_max_retries(2);
        let middleware = reqwest_middleware::ClientBuilder::new(http_client())
            .with(RetryTransientMiddleware::new_with_policy(policy))
            .build();
        Self {
            reqwest: ReqwestDirect {
                url: url.clone(),
                client: http_client(),
            },
            palisade: Palisade {
                url: url.clone(),
                client,
                read_body: true,
            },
            middleware: Middleware {
                url,
                client: middleware,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Drivers

/// `iters` requests split between 2 tasks on `rt`, each with its own clone of `v`; the wall
/// time is returned.
fn two_tasks<V: Variant>(rt: &tokio::runtime::Runtime, iters: u64, v: &V) -> Duration {
    rt.block_on(async {
        let per_task = [iters / 2, iters - iters / 2];
        let start = Instant::now();
        let tasks = per_task.map(|n| {
            let v = v.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    v.send().await;
                }
            })
        });
        for t in tasks {
            t.await.expect("task");
        }
        start.elapsed()
    })
}

fn configure(mut group: BenchmarkGroup<'_, WallTime>) -> BenchmarkGroup<'_, WallTime> {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group
}

fn single<V: Variant>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    v: &V,
) {
    group.bench_function(name, |b| b.to_async(rt).iter(|| v.send()));
}

fn pair<V: Variant>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    v: &V,
) {
    group.bench_function(name, |b| b.iter_custom(|iters| two_tasks(rt, iters, v)));
}

const WARM_UP: u64 = 200;

/// Prints the mean heap allocations of this thread per request, over [`ALLOC_N`] requests
/// after [`WARM_UP`].
fn print_allocations<V: Variant>(rt: &tokio::runtime::Runtime, name: &str, v: &V) {
    let per = rt.block_on(async {
        for _ in 0..WARM_UP {
            v.send().await;
        }
        let before = allocs();
        for _ in 0..ALLOC_N {
            v.send().await;
        }
        (allocs() - before) as f64 / ALLOC_N as f64
    });
    println!("  {name:<36} {per:>6.1}");
}

const ALLOC_N: u64 = 2_000;

/// `n` requests through `v` on `rt`, one after the other; the wall time is returned.
fn one_task<V: Variant>(rt: &tokio::runtime::Runtime, n: u64, v: &V) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            v.send().await;
        }
        start.elapsed()
    })
}

/// A batch of requests through one variant: takes the number of requests, returns the time.
type Batch<'a> = (&'a str, Box<dyn Fn(u64) -> Duration + 'a>);

/// A batch of `n` requests, one after the other, through `v` on `rt`.
fn serial<'a, V: Variant>(rt: &'a tokio::runtime::Runtime, name: &'a str, v: &'a V) -> Batch<'a> {
    (name, Box::new(move |n| one_task(rt, n, v)))
}

/// A batch of `n` requests from 2 tasks through `v` on `rt`.
fn parallel<'a, V: Variant>(rt: &'a tokio::runtime::Runtime, name: &'a str, v: &'a V) -> Batch<'a> {
    (name, Box::new(move |n| two_tasks(rt, n, v)))
}

/// Runs `rounds` rounds of `n` requests through every variant in turn (the order rotating
/// each round) and prints, for each, the median time per request with its interquartile range,
/// and the median over rounds of palisade's time (`variants[PALISADE]`) divided by its time in
/// the same round.
///
/// Criterion measures one variant after the other, so a change in the machine's load between
/// them shows as a difference between variants; on a shared machine that is often larger than
/// the difference itself. Rounds that interleave the variants see the same load, and the ratio
/// within each round cancels it.
fn print_interleaved(title: &str, rounds: usize, n: u64, variants: &[Batch<'_>]) {
    let k = variants.len();
    let mut per_request: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); k];
    for (_, run) in variants {
        run(n); // warm-up
    }
    for round in 0..rounds {
        for i in 0..k {
            let j = (round + i) % k;
            let t = variants[j].1(n);
            per_request[j].push(t.as_nanos() as f64 / n as f64);
        }
    }
    let palisade = variants[PALISADE].0;
    println!("{title}: ns per request, median [p25–p75] of {rounds} interleaved rounds of {n}");
    for (j, (name, _)) in variants.iter().enumerate() {
        let t = quartiles(per_request[j].clone());
        print!("  {name:<26} {:>9.0} [{:.0}–{:.0}]", t[1], t[0], t[2]);
        if j != PALISADE {
            let ratios = per_request[PALISADE]
                .iter()
                .zip(&per_request[j])
                .map(|(p, x)| p / x)
                .collect();
            let r = quartiles(ratios);
            print!(
                "   {palisade} / {name}: {:.2} [{:.2}–{:.2}]",
                r[1], r[0], r[2]
            );
        }
        println!();
    }
}

/// Where palisade is in the variants given to [`print_interleaved`].
const PALISADE: usize = 1;

/// The 25th, 50th and 75th percentiles.
fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

/// Whether to print the tables before the group `group` with these variants: only when
/// criterion measures (`cargo bench`, not `cargo test --benches` nor `--list`), not under
/// `--profile-time` (a profiler should see the benchmark alone), and, when a filter is given,
/// only if it matches one of the group's benchmarks (as a substring: criterion takes a regex,
/// so a filter with regex syntax prints every table).
fn tables(group: &str, variants: &[&str]) -> bool {
    // criterion's options that take a value.
    const WITH_VALUE: &[&str] = &[
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--plotting-backend",
        "--output-format",
        "--color",
        "--format",
        "-s",
        "-b",
        "-c",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    if !has("--bench") || has("--list") || has("--profile-time") {
        return false;
    }
    let mut filter = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            it.next();
        } else if !a.starts_with('-') {
            filter = Some(a.as_str());
        }
    }
    match filter {
        None => true,
        Some(f) => variants.iter().any(|v| format!("{group}/{v}").contains(f)),
    }
}

// ---------------------------------------------------------------------------------------------
// Groups

/// The variants of `in_memory` and `in_memory_2_threads`, palisade at [`PALISADE`].
const IN_MEMORY: [&str; 3] = [
    "transport_direct",
    "palisade_standard",
    "tower_resilience_stack",
];

/// The variants of `in_memory`: those of `in_memory_2_threads`, palisade with metrics on, and
/// with host policies.
const IN_MEMORY_1: [&str; 5] = [
    "transport_direct",
    "palisade_standard",
    "tower_resilience_stack",
    "palisade_metrics",
    "palisade_host_policies",
];

/// The variants of `loopback` and `loopback_2_threads`, palisade at [`PALISADE`].
const LOOPBACK: [&str; 3] = [
    "reqwest_direct",
    "palisade_standard",
    "reqwest_middleware_retry",
];

fn in_memory(c: &mut Criterion) {
    let rt = current_thread();
    let v = in_memory_variants();
    if tables("in_memory", &IN_MEMORY_1) {
        println!("heap allocations per request (mean of {ALLOC_N}):");
        print_allocations(&rt, "in_memory/transport_direct", &v.direct);
        print_allocations(&rt, "in_memory/palisade_standard", &v.palisade);
        print_allocations(&rt, "in_memory/tower_resilience_stack", &v.tower_resilience);
        print_allocations(&rt, "in_memory/palisade_metrics", &v.metrics);
        print_allocations(&rt, "in_memory/palisade_host_policies", &v.hosts);
        print_interleaved(
            "in_memory",
            200,
            1_000,
            &[
                serial(&rt, "transport_direct", &v.direct),
                serial(&rt, "palisade_standard", &v.palisade),
                serial(&rt, "tower_resilience_stack", &v.tower_resilience),
                serial(&rt, "palisade_metrics", &v.metrics),
                serial(&rt, "palisade_host_policies", &v.hosts),
            ],
        );
    }
    let mut group = configure(c.benchmark_group("in_memory"));
    single(&mut group, &rt, "transport_direct", &v.direct);
    single(&mut group, &rt, "palisade_standard", &v.palisade);
    let tower_resilience = &v.tower_resilience;
    single(&mut group, &rt, "tower_resilience_stack", tower_resilience);
    single(&mut group, &rt, "palisade_metrics", &v.metrics);
    single(&mut group, &rt, "palisade_host_policies", &v.hosts);
    group.finish();
}

fn in_memory_2_threads(c: &mut Criterion) {
    let rt = two_workers();
    let v = in_memory_variants();
    if tables("in_memory_2_threads", &IN_MEMORY) {
        print_interleaved(
            "in_memory_2_threads",
            50,
            10_000,
            &[
                parallel(&rt, "transport_direct", &v.direct),
                parallel(&rt, "palisade_standard", &v.palisade),
                parallel(&rt, "tower_resilience_stack", &v.tower_resilience),
            ],
        );
    }
    let mut group = configure(c.benchmark_group("in_memory_2_threads"));
    pair(&mut group, &rt, "transport_direct", &v.direct);
    pair(&mut group, &rt, "palisade_standard", &v.palisade);
    let tower_resilience = &v.tower_resilience;
    pair(&mut group, &rt, "tower_resilience_stack", tower_resilience);
    group.finish();
}

fn loopback(c: &mut Criterion) {
    let addr = loopback_server();
    let rt = current_thread();
    // Built inside the runtime: reqwest's connection pool spawns onto it.
    let v = rt.block_on(async { Loopback::new(addr) });
    if tables("loopback", &LOOPBACK) {
        println!("heap allocations per request on the client's thread (mean of {ALLOC_N}):");
        print_allocations(&rt, "loopback/reqwest_direct", &v.reqwest);
        print_allocations(&rt, "loopback/palisade_standard", &v.palisade);
        print_allocations(&rt, "loopback/reqwest_middleware_retry", &v.middleware);
        print_interleaved(
            "loopback",
            200,
            50,
            &[
                serial(&rt, "reqwest_direct", &v.reqwest),
                serial(&rt, "palisade_standard", &v.palisade),
                serial(&rt, "reqwest_middleware_retry", &v.middleware),
            ],
        );
    }
    let mut group = configure(c.benchmark_group("loopback"));
    single(&mut group, &rt, "reqwest_direct", &v.reqwest);
    single(&mut group, &rt, "palisade_standard", &v.palisade);
    single(&mut group, &rt, "reqwest_middleware_retry", &v.middleware);
    group.finish();
}

fn loopback_2_threads(c: &mut Criterion) {
    let addr = loopback_server();
    let rt = two_workers();
    let v = rt.block_on(async { Loopback::new(addr) });
    if tables("loopback_2_threads", &LOOPBACK) {
        print_interleaved(
            "loopback_2_threads",
            100,
            100,
            &[
                parallel(&rt, "reqwest_direct", &v.reqwest),
                parallel(&rt, "palisade_standard", &v.palisade),
                parallel(&rt, "reqwest_middleware_retry", &v.middleware),
            ],
        );
    }
    let mut group = configure(c.benchmark_group("loopback_2_threads"));
    pair(&mut group, &rt, "reqwest_direct", &v.reqwest);
    pair(&mut group, &rt, "palisade_standard", &v.palisade);
    pair(&mut group, &rt, "reqwest_middleware_retry", &v.middleware);
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Callgrind mode

/// Sends `PEERS_CALLGRIND_N` requests (after [`WARM_UP`]) through the named variant.
fn callgrind(variant: &str) {
    let n: u64 = std::env::var("PEERS_CALLGRIND_N")
        .map(|s| s.parse().expect("PEERS_CALLGRIND_N: a number"))
        .unwrap_or(10_000);
    let rt = current_thread();
    match variant.split_once('/') {
        Some(("in_memory", name)) => {
            let v = in_memory_variants();
            match name {
                "transport_direct" => send_n(&rt, &v.direct, n),
                "palisade_standard" => send_n(&rt, &v.palisade, n),
                "tower_resilience_stack" => send_n(&rt, &v.tower_resilience, n),
                "palisade_metrics" => send_n(&rt, &v.metrics, n),
                "palisade_host_policies" => send_n(&rt, &v.hosts, n),
                _ => panic!("unknown variant {variant}"),
            }
        }
        Some(("loopback", name)) => {
            let addr = loopback_server();
            let v = rt.block_on(async { Loopback::new(addr) });
            match name {
                "reqwest_direct" => send_n(&rt, &v.reqwest, n),
                "palisade_standard" => send_n(&rt, &v.palisade, n),
                "reqwest_middleware_retry" => send_n(&rt, &v.middleware, n),
                _ => panic!("unknown variant {variant}"),
            }
        }
        _ => panic!("PEERS_CALLGRIND: <group>/<variant>, got {variant}"),
    }
}

fn send_n<V: Variant>(rt: &tokio::runtime::Runtime, v: &V, n: u64) {
    rt.block_on(async {
        for _ in 0..WARM_UP + n {
            v.send().await;
        }
    });
}

criterion_group! {
    name = benches;
    // The plots (plotters backend when gnuplot is missing) and the default 100,000 bootstrap
    // resamples take longer than the measurements: without them the 12 benchmarks run in about
    // 60 s, and the tables above take 15 s more.
    config = Criterion::default().without_plots().nresamples(20_000);
    targets = in_memory, in_memory_2_threads, loopback, loopback_2_threads
}

// `criterion_main!`, with the callgrind mode in front.
fn main() {
    // Allocations are counted on this thread only: the client's, not the server's.
    common::alloc::count_this_thread();
    if let Ok(variant) = std::env::var("PEERS_CALLGRIND") {
        callgrind(&variant);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
