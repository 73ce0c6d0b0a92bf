//! What a rate-limit check costs in fleet mode (feature `redis`): the local limiter against the
//! quota shared on a Redis on loopback, one call after the other, over the in-memory transport
//! (so what is measured is the check, not the network to the API).
//!
//! - `local`: `RateLimitLayer` at 10⁹ per second, burst 10⁹, per host;
//! - `redis`: the same limit with `.redis(..)`: one script (`EVALSHA`) per check;
//! - `redis_lease_10`: the same with `Redis::lease(10)`: one script per ten checks;
//! - `redis_fallback`: the same with Redis unreachable, so on its local fallback (what a call
//!   costs while Redis is down).
//!
//! Before criterion runs, it prints the Redis calls per request (from Redis's own
//! `INFO commandstats`, over 1,000 requests).
//!
//! The Redis is `PALISADE_REDIS_URL`'s (`scripts/test` starts one) or, without it, a
//! `redis-server` the bench starts on a free port and stops at the end (`PALISADE_REDIS_SERVER`
//! or `redis-server` on the `PATH`). With neither, the bench says so and measures `local`
//! only.
//!
//! Run with `cargo bench --bench fleet` (about 20 s).

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use common::{current_thread, transport, URL};
use criterion::{criterion_group, Criterion, Throughput};
use palisade::layer::RateLimitLayer;
use palisade::rate_limit::{RateLimit, Redis};
use reqwest::{Method, Request, Url};
use tower::{Layer, ServiceExt};

/// A Redis for the bench: the one `PALISADE_REDIS_URL` names, or one started here.
struct Server {
    addr: String,
    child: Option<Child>,
}

impl Server {
    fn find() -> Option<Server> {
        if let Ok(url) = std::env::var("PALISADE_REDIS_URL") {
            let u = Url::parse(&url).ok()?;
            let addr = format!("{}:{}", u.host_str()?, u.port().unwrap_or(6379));
            return Some(Server { addr, child: None });
        }
        let bin = std::env::var("PALISADE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Server {
            addr: format!("127.0.0.1:{port}"),
            child: Some(child),
        };
        for _ in 0..100 {
            if server.command("PING").is_some_and(|r| r.contains("PONG")) {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// One inline command's whole reply (bulk replies read to their end).
    fn command(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        if let Some(len) = line.strip_prefix('$') {
            let len: usize = len.trim().parse().ok()?;
            let mut body = vec![0; len + 2];
            std::io::Read::read_exact(&mut r, &mut body).ok()?;
            return String::from_utf8(body).ok();
        }
        Some(line)
    }

    /// How many times Redis ran palisade's script so far.
    fn script_calls(&self) -> u64 {
        let info = self.command("INFO commandstats").unwrap_or_default();
        ["cmdstat_evalsha:", "cmdstat_eval:"]
            .iter()
            .filter_map(|p| info.lines().find(|l| l.starts_with(p)))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn limit() -> RateLimit {
    RateLimit::per_second(1_000_000_000)
        .burst(1_000_000_000)
        .per_host()
}

fn prefix() -> String {
    format!("palisade-bench-{}", std::process::id())
}

fn fleet(c: &mut Criterion) {
    let rt = current_thread();
    let url = Url::parse(URL).expect("valid URL");
    let server = Server::find();
    let local = RateLimitLayer::new(limit())
        .expect("valid limit")
        .layer(transport());
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let fallback = RateLimitLayer::new(
        limit().redis(Redis::new(format!("redis://{closed}/")).timeout(Duration::from_millis(100))),
    )
    .expect("valid limit")
    .layer(transport());
    let remote = server.as_ref().map(|s| {
        RateLimitLayer::new(limit().redis(Redis::new(s.url()).prefix(prefix())))
            .expect("valid limit")
            .layer(transport())
    });
    let leased = server.as_ref().map(|s| {
        let redis = Redis::new(s.url()).prefix(prefix() + "-lease").lease(10);
        RateLimitLayer::new(limit().redis(redis))
            .expect("valid limit")
            .layer(transport())
    });
    match (&server, &remote) {
        (Some(s), Some(svc)) => {
            rt.block_on(async {
                for _ in 0..100 {
                    svc.clone()
                        .oneshot(Request::new(Method::GET, url.clone()))
                        .await
                        .unwrap();
                }
                let before = s.script_calls();
                for _ in 0..1_000 {
                    svc.clone()
                        .oneshot(Request::new(Method::GET, url.clone()))
                        .await
                        .unwrap();
                }
                let calls = s.script_calls() - before;
                println!(
                    "Redis script calls per request: {:.2}",
                    calls as f64 / 1_000.0
                );
                if let Some(svc) = &leased {
                    let before = s.script_calls();
                    for _ in 0..1_000 {
                        let req = Request::new(Method::GET, url.clone());
                        svc.clone().oneshot(req).await.unwrap();
                    }
                    let calls = s.script_calls() - before;
                    let per = calls as f64 / 1_000.0;
                    println!("Redis script calls per request with lease(10): {per:.2}");
                }
            });
        }
        _ => println!(
            "no Redis: set PALISADE_REDIS_URL or put redis-server on the PATH; measuring local only"
        ),
    }
    // Into the fallback before measuring it.
    rt.block_on(async {
        let _ = fallback
            .clone()
            .oneshot(Request::new(Method::GET, url.clone()))
            .await;
    });

    let mut group = c.benchmark_group("rate_limit_check");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group.bench_function("local", |b| {
        b.to_async(&rt).iter(|| async {
            let req = Request::new(Method::GET, url.clone());
            black_box(local.clone().oneshot(req).await.unwrap())
        })
    });
    if let Some(svc) = &remote {
        group.bench_function("redis", |b| {
            b.to_async(&rt).iter(|| async {
                let req = Request::new(Method::GET, url.clone());
                black_box(svc.clone().oneshot(req).await.unwrap())
            })
        });
    }
    if let Some(svc) = &leased {
        group.bench_function("redis_lease_10", |b| {
            b.to_async(&rt).iter(|| async {
                let req = Request::new(Method::GET, url.clone());
                black_box(svc.clone().oneshot(req).await.unwrap())
            })
        });
    }
    group.bench_function("redis_fallback", |b| {
        b.to_async(&rt).iter(|| async {
            let req = Request::new(Method::GET, url.clone());
            black_box(fallback.clone().oneshot(req).await.unwrap())
        })
    });
    group.finish();
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots().nresamples(20_000);
    targets = fleet
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
