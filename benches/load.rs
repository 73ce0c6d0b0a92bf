//! What users feel: throughput and latency of many concurrent GETs to a real HTTP/1.1 server on
//! loopback, through palisade's standard pipeline, bare reqwest, and reqwest-middleware with
//! reqwest-retry, in interleaved rounds.
//!
//! - The server: hyper 1, HTTP/1.1 with keep-alive, on `127.0.0.1`, on a thread and a
//!   `current_thread` runtime of its own, answering every request with `200 OK` and a 26-byte
//!   JSON body.
//! - The clients, on one tokio `multi_thread` runtime with 2 workers (the machine's cores; a
//!   `current_thread` runtime for N = 1, where a second worker only adds noise: the latency of
//!   every client swings by 2× with which worker a response wakes), each
//!   with a `reqwest::Client` configured as palisade configures its own (a default builder with
//!   `.retry(reqwest::retry::never())`), each reading the whole body:
//!   - `reqwest`: `reqwest::Client`;
//!   - `palisade`: `palisade::Client::builder().build()`, the standard pipeline (total timeout
//!     30 s, retry with 3 attempts and the budget, a circuit breaker per host, attempt timeout
//!     10 s);
//!   - `middleware`: reqwest-middleware's `ClientWithMiddleware` with reqwest-retry's
//!     `RetryTransientMiddleware` (exponential backoff, 2 retries);
//!
//!   each sending `client.get(url).send()`, as applications do, through its own request
//!   builder.
//! - For each concurrency N (1, 64 and 2,000 by default): N tasks share one client and send
//!   requests one after the other until the round's count is reached. Every client first warms
//!   up with N concurrent requests, so that each has its N connections open before it is timed.
//! - Rounds run each client in turn, the order rotating each round, so a change of the machine's
//!   load falls on all of them alike; the ratio of each client's throughput to the first's
//!   (reqwest's) is taken within each round. The bench prints, per N and client, the median
//!   throughput over rounds, p50 and p99 latency over all requests, and the median ratio with
//!   its quartiles; and heap
//!   allocations per request, counted (in a pass of their own, not timed) on the client
//!   runtime's threads only.
//! - It writes `docs/load/load.csv` and the plot `docs/load/throughput.svg` (throughput against
//!   concurrency for the three clients).
//!
//! Run with `cargo bench --bench load` (about two minutes). `LOAD_ROUNDS` (default 9) sets the
//! rounds, `LOAD_CONCURRENCY` (default `1,64,2000`) the values of N, `LOAD_SCALE` (default 1.0)
//! multiplies the requests per round (N = 1: 2,000; 64: 20,000; 2,000: 40,000).
//! `LOAD_PROFILE=<client>` (`reqwest`, `palisade`, `middleware`) runs that client alone at the
//! first concurrency of `LOAD_CONCURRENCY` for `LOAD_PROFILE_SECS` (default 10), for a profiler.
//! `LOAD_CLIENTS` (default `reqwest,palisade,middleware`) lists the clients to compare, the
//! first being the one the others' throughput is divided by; `palisade-<stage>+<stage>` is
//! palisade without those stages (`total_timeout`, `attempt_timeout`, `retry`,
//! `circuit_breaker`), to see what each costs.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::alloc;
use common::server::loopback_server;
use reqwest::Url;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::RetryTransientMiddleware;

#[global_allocator]
static ALLOC: common::alloc::Counting = common::alloc::Counting;

// ---------------------------------------------------------------------------------------------
// The clients

type SendFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Clone)]
enum Client {
    Reqwest(reqwest::Client),
    Palisade(palisade::Client),
    Middleware(ClientWithMiddleware),
}

impl Client {
    /// The client a variant name names: `reqwest`, `middleware`, `palisade`, or
    /// `palisade-<stage>+<stage>…` for palisade without those stages (`total_timeout`,
    /// `attempt_timeout`, `retry`, `circuit_breaker`).
    fn named(name: &str) -> Client {
        let http = || {
            reqwest::Client::builder()
                .retry(reqwest::retry::never())
                .build()
                .expect("reqwest client")
        };
        match name {
            "reqwest" => Client::Reqwest(http()),
            "middleware" => {
                let policy = ExponentialBackoff::builder().build_with_max_retries(2);
                Client::Middleware(
                    reqwest_middleware::ClientBuilder::new(http())
                        .with(RetryTransientMiddleware::new_with_policy(policy))
                        .build(),
                )
            }
            "palisade" => Client::Palisade(palisade_client("")),
            other => match other.strip_prefix("palisade-") {
                Some(off) => Client::Palisade(palisade_client(off)),
                None => panic!("LOAD_CLIENTS: no client {other}"),
            },
        }
    }

    /// One GET, its body read whole. The future is boxed in every variant alike, so that the
    /// driver is the same code for all.
    fn send(&self, url: &Url) -> SendFuture {
        let url = url.clone();
        // As applications send: `get(url).send()`, each client's own request builder.
        match self {
            Client::Reqwest(c) => {
                let fut = c.get(url).send();
                Box::pin(async move {
                    let resp = fut.await.expect("200");
                    black_box(resp.bytes().await.expect("body"));
                })
            }
            Client::Palisade(c) => {
                let fut = c.get(url).send();
                Box::pin(async move {
                    let resp = fut.await.expect("200");
                    black_box(resp.bytes().await.expect("body"));
                })
            }
            Client::Middleware(c) => {
                let fut = c.get(url).send();
                Box::pin(async move {
                    let resp = fut.await.expect("200");
                    black_box(resp.bytes().await.expect("body"));
                })
            }
        }
    }
}

/// palisade's standard pipeline, less the stages `off` names (joined with `+`).
fn palisade_client(off: &str) -> palisade::Client {
    let mut b = palisade::Client::builder();
    for stage in off.split('+').map(str::trim).filter(|s| !s.is_empty()) {
        b = match stage {
            "total_timeout" => b.no_total_timeout(),
            "attempt_timeout" => b.no_attempt_timeout(),
            "retry" => b.no_retry(),
            "circuit_breaker" => b.no_circuit_breaker(),
            other => panic!("LOAD_CLIENTS: palisade has no stage {other}"),
        };
    }
    b.build().expect("palisade")
}

// ---------------------------------------------------------------------------------------------
// The driver

/// What one client did in one round.
struct Round {
    elapsed: Duration,
    /// Latency of each request, in microseconds.
    latencies: Vec<u32>,
}

/// `total` requests through `client` from `n` tasks, each sending one after the other.
async fn run(client: &Client, url: &Url, n: usize, total: usize, timed: bool) -> Round {
    let left = Arc::new(AtomicUsize::new(total));
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, left) = (client.clone(), url.clone(), left.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                    .is_ok()
                {
                    let t = Instant::now();
                    client.send(&url).await;
                    if timed {
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(if timed { total } else { 0 });
    for t in tasks {
        latencies.extend(t.await.expect("task"));
    }
    Round {
        elapsed: start.elapsed(),
        latencies,
    }
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
}

fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The results of one concurrency, for the table, the CSV and the plot.
struct Row {
    n: usize,
    /// Per client: median throughput (requests per second), p50 and p99 latency (µs),
    /// allocations per request, and the quartiles of its throughput over the first client's
    /// (reqwest's, by default) round by round.
    clients: Vec<(f64, f64, f64, f64, [f64; 3])>,
}

fn runtime(n: usize) -> tokio::runtime::Runtime {
    if n == 1 {
        // One request at a time gains nothing from a second worker, and on two the latency of
        // every client swings by 2× with which worker the response wakes. It runs on this
        // thread (`block_on`), which counts its allocations then.
        alloc::count_this_thread();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_start(alloc::count_this_thread)
            .build()
            .expect("client runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(alloc::count_this_thread)
            .build()
            .expect("client runtime")
    }
}

fn main() {
    // A harness that lists benchmarks (`--list`) finds none to list here.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = env("LOAD_ROUNDS", 9);
    let scale: f64 = env("LOAD_SCALE", 1.0);
    let concurrency: Vec<usize> = std::env::var("LOAD_CONCURRENCY")
        .unwrap_or_else(|_| "1,64,2000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let names: Vec<String> = std::env::var("LOAD_CLIENTS")
        .unwrap_or_else(|_| "reqwest,palisade,middleware".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();

    alloc::set_counting(false);
    let addr = loopback_server();
    let url = Url::parse(&format!("http://{addr}/users/1")).expect("valid URL");

    if let Ok(name) = std::env::var("LOAD_PROFILE") {
        let n = concurrency.first().copied().unwrap_or(2_000);
        profile(&runtime(n), &url, &name, n);
        return;
    }
    println!(
        "load: {rounds} interleaved rounds per concurrency, server hyper HTTP/1.1 on {addr}, \
         clients on 2 tokio workers (1 for N = 1)"
    );
    let mut rows = Vec::new();
    for &n in &concurrency {
        let base = match n {
            1 => 2_000,
            n if n <= 64 => 20_000,
            _ => 40_000,
        };
        let total = ((base as f64 * scale) as usize).max(n);
        let rt = runtime(n);
        // Fresh clients per concurrency, so that pools and state do not carry over.
        let clients: Vec<Client> = names.iter().map(|c| Client::named(c)).collect();
        let k = clients.len();
        let mut tput: Vec<Vec<f64>> = vec![Vec::new(); k];
        let mut lats: Vec<Vec<u32>> = vec![Vec::new(); k];
        let mut allocs = vec![0.0; k];
        rt.block_on(async {
            for c in &clients {
                run(c, &url, n, n, false).await;
                run(c, &url, n, n.max(1_000), false).await;
            }
            // Allocations, in a pass of their own.
            for (i, c) in clients.iter().enumerate() {
                let m = (total / 4).max(n);
                let before = alloc::allocs();
                alloc::set_counting(true);
                run(c, &url, n, m, false).await;
                alloc::set_counting(false);
                allocs[i] = (alloc::allocs() - before) as f64 / m as f64;
            }
            for round in 0..rounds {
                for i in 0..k {
                    let j = (round + i) % k;
                    let r = run(&clients[j], &url, n, total, true).await;
                    tput[j].push(total as f64 / r.elapsed.as_secs_f64());
                    lats[j].extend(r.latencies);
                }
            }
        });
        println!("\nN = {n}: {total} requests per round");
        println!(
            "  {:<28} {:>10} {:>9} {:>9} {:>11}   {} (median [p25–p75] of rounds)",
            "client",
            "req/s",
            "p50 µs",
            "p99 µs",
            "allocs/req",
            format_args!("throughput / {}'s", names[0])
        );
        let mut row = Row {
            n,
            clients: Vec::new(),
        };
        for j in 0..k {
            lats[j].sort_unstable();
            let t = quartiles(tput[j].clone())[1];
            let (p50, p99) = (percentile(&lats[j], 0.5), percentile(&lats[j], 0.99));
            let ratio = quartiles(tput[j].iter().zip(&tput[0]).map(|(p, x)| p / x).collect());
            row.clients.push((t, p50, p99, allocs[j], ratio));
            println!(
                "  {:<28} {:>10.0} {:>9.0} {:>9.0} {:>11.1}   {:.3} [{:.3}–{:.3}]",
                names[j], t, p50, p99, allocs[j], ratio[1], ratio[0], ratio[2]
            );
        }
        rows.push(row);
    }
    if let Err(e) = write_results(&names, &rows) {
        eprintln!("could not write docs/load: {e}");
    }
}

/// `LOAD_PROFILE=<client>`: only that client (a name as `LOAD_CLIENTS` takes), at the first
/// concurrency given, for `LOAD_PROFILE_SECS` (default 10) after a warm-up, for a profiler to
/// watch (`perf record`).
fn profile(rt: &tokio::runtime::Runtime, url: &Url, name: &str, n: usize) {
    let client = Client::named(name);
    let secs: f64 = env("LOAD_PROFILE_SECS", 10.0);
    rt.block_on(async {
        run(&client, url, n, n.max(2_000), false).await;
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed().as_secs_f64() < secs {
            run(&client, url, n, 20_000, false).await;
            sent += 20_000;
        }
        let rate = sent as f64 / start.elapsed().as_secs_f64();
        println!("{name}: {sent} requests from {n} tasks, {rate:.0} per second");
    });
}

// ---------------------------------------------------------------------------------------------
// CSV and plot

fn write_results(names: &[String], rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/load");
    std::fs::create_dir_all(&dir)?;
    let mut csv = format!(
        "concurrency,client,throughput_rps,p50_us,p99_us,allocs_per_request,\
         ratio_to_{0}_p25,ratio_to_{0}_median,ratio_to_{0}_p75\n",
        names[0]
    );
    for r in rows {
        for (j, name) in names.iter().enumerate() {
            let (t, p50, p99, a, ratio) = r.clients[j];
            csv.push_str(&format!(
                "{},{name},{t:.0},{p50:.0},{p99:.0},{a:.1},{:.3},{:.3},{:.3}\n",
                r.n, ratio[0], ratio[1], ratio[2]
            ));
        }
    }
    std::fs::write(dir.join("load.csv"), csv)?;
    if rows.len() < 2 {
        return Ok(());
    }

    let path = dir.join("throughput.svg");
    let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_n = rows.iter().map(|r| r.n).max().unwrap_or(1) as f64;
    let max_t = rows
        .iter()
        .flat_map(|r| r.clients.iter().map(|c| c.0))
        .fold(0.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput against concurrency, loopback HTTP/1.1",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..max_n * 1.5).log_scale(), 0.0..max_t)?;
    chart
        .configure_mesh()
        .x_desc("concurrent requests")
        .y_desc("requests per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let colors = [
        RGBColor(90, 90, 90),
        RGBColor(200, 60, 30),
        RGBColor(40, 90, 190),
        RGBColor(40, 150, 60),
        RGBColor(150, 60, 160),
    ];
    for (j, name) in names.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.n as f64, r.clients[j].0)).collect();
        let c = colors[j % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
