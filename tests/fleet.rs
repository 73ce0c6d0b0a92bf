//! Fleet mode (feature `redis`) against a real Redis: the local limiter's semantics on the
//! shared bucket, several clients sharing one quota and one pushback, and the local fallback
//! when Redis is unreachable, slow, down or answers garbage.
//!
//! The shared server comes from `PALISADE_REDIS_URL` (`scripts/test` starts one); the tests
//! that kill, restart or stall Redis start a private `redis-server` of their own.
#![cfg(feature = "redis")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::rate_limit::{RateLimit, Redis};
use palisade::{Client, ErrorKind, Event, FleetMode};
use support::redis::{shared_url, unique_prefix, RedisServer};
use support::{ms, Mock, Step};
use tokio::time::Instant;

const A: &str = "http://a.test/x";
const B: &str = "http://b.test/x";

/// A client over `mock` whose limiter is `limit` on the Redis at `url` under `prefix`.
fn client(mock: &Mock, limit: RateLimit, redis: Redis) -> Client {
    mock.client(|b| {
        b.no_retry()
            .no_circuit_breaker()
            .rate_limit(limit.redis(redis))
    })
}

/// [`client`] with `modes` watching its limiter's switches.
fn watched(mock: &Mock, limit: RateLimit, redis: Redis, modes: &Modes) -> Client {
    mock.client(|b| {
        b.no_retry()
            .no_circuit_breaker()
            .on_event(modes.hook())
            .rate_limit(limit.redis(redis))
    })
}

/// Waits until the limiter is back on the shared quota (its second switch), at most `within`
/// after `since`; returns when it was, after `since`.
async fn back_to_shared(modes: &Modes, since: Instant, within: Duration) -> Duration {
    while modes.all().len() < 2 {
        assert!(
            since.elapsed() < within,
            "not back within {within:?}: {:?}",
            modes.all()
        );
        tokio::time::sleep(ms(10)).await;
    }
    assert_eq!(
        modes.all()[1],
        (FleetMode::Shared, "reconnected".to_owned())
    );
    since.elapsed()
}

fn shared(prefix: &str) -> Redis {
    // Generous: CI machines are loaded, and a spurious fallback would break the counts.
    Redis::new(shared_url()).prefix(prefix).timeout(ms(500))
}

/// Fleet-mode events, as `(mode, reason)`.
#[derive(Clone, Default)]
struct Modes(Arc<Mutex<Vec<(FleetMode, String)>>>);

impl Modes {
    fn hook(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let m = self.0.clone();
        move |e| {
            if let Event::FleetModeChanged { mode, reason, .. } = e {
                m.lock().unwrap().push((*mode, (*reason).to_owned()));
            }
        }
    }
    fn all(&self) -> Vec<(FleetMode, String)> {
        self.0.lock().unwrap().clone()
    }
}

async fn status(c: &Client, url: &str) -> Result<u16, palisade::Error> {
    c.get(url).send().await.map(|r| r.status().as_u16())
}

#[tokio::test]
async fn the_shared_bucket_gives_its_burst_then_a_hint() {
    let prefix = unique_prefix("burst");
    let mock = Mock::default();
    let c = client(
        &mock,
        RateLimit::per_second(10).burst(3).per_host().fail_fast(),
        shared(&prefix),
    );
    for _ in 0..3 {
        assert_eq!(status(&c, A).await.unwrap(), 200);
    }
    let e = status(&c, A).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    let hint = e.retry_after().expect("a hint");
    assert!(hint > ms(0) && hint <= ms(100), "{hint:?}");
    // Another host has a bucket of its own.
    assert_eq!(status(&c, B).await.unwrap(), 200);
    assert_eq!(mock.calls(), 4);
}

/// Over half a second of calls that never wait, the shared bucket admits its burst and then
/// one call per token interval, as the local limiter does.
#[tokio::test]
async fn admissions_over_time_follow_the_rate() {
    let prefix = unique_prefix("over-time");
    let mock = Mock::default();
    let c = client(
        &mock,
        RateLimit::per_second(20).burst(2).fail_fast(),
        shared(&prefix),
    );
    let start = Instant::now();
    let (mut admitted, mut refused) = (0u32, 0u32);
    while start.elapsed() < ms(500) {
        match status(&c, A).await {
            Ok(_) => admitted += 1,
            Err(e) if e.is_rate_limited() => {
                refused += 1;
                tokio::time::sleep(ms(2)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let span = start.elapsed().as_secs_f64();
    let expected = 2.0 + 20.0 * span;
    eprintln!("admitted {admitted} (expected {expected:.1}), refused {refused}, in {span:.3} s");
    assert!(
        (f64::from(admitted) - expected).abs() <= 1.5,
        "admitted {admitted}, expected {expected:.1}"
    );
    assert!(refused > 0);
}

#[tokio::test]
async fn a_call_waits_for_the_next_shared_token() {
    let prefix = unique_prefix("wait");
    let mock = Mock::default();
    let c = client(
        &mock,
        RateLimit::per_second(20).burst(1).max_wait(ms(500)),
        shared(&prefix),
    );
    assert_eq!(status(&c, A).await.unwrap(), 200);
    let start = Instant::now();
    assert_eq!(status(&c, A).await.unwrap(), 200);
    let waited = start.elapsed();
    assert!(waited >= ms(35) && waited < ms(400), "{waited:?}");
}

#[tokio::test]
async fn two_clients_share_one_quota_and_other_prefixes_do_not() {
    let prefix = unique_prefix("two");
    let mock = Mock::default();
    let limit = || RateLimit::per_minute(60).burst(3).fail_fast();
    let (a, b) = (
        client(&mock, limit(), shared(&prefix)),
        client(&mock, limit(), shared(&prefix)),
    );
    assert_eq!(status(&a, A).await.unwrap(), 200);
    assert_eq!(status(&b, A).await.unwrap(), 200);
    assert_eq!(
        status(&a, B).await.unwrap(),
        200,
        "one bucket for all hosts"
    );
    assert!(status(&b, A).await.unwrap_err().is_rate_limited());
    assert!(status(&a, A).await.unwrap_err().is_rate_limited());
    let other = client(&mock, limit(), shared(&unique_prefix("two-other")));
    assert_eq!(status(&other, A).await.unwrap(), 200);
}

#[tokio::test]
async fn a_pushback_seen_by_one_client_pauses_its_host_for_all() {
    let prefix = unique_prefix("pushback");
    let seen = Mock::script([Step::retry_after(429, "2")]);
    let other = Mock::default();
    let limit = || RateLimit::per_second(100).per_host().fail_fast();
    let a = client(&seen, limit(), shared(&prefix));
    let b = client(&other, limit(), shared(&prefix));
    assert_eq!(status(&a, A).await.unwrap(), 429);
    // The pause is written in the background: give it a moment.
    tokio::time::sleep(ms(100)).await;
    let e = status(&b, A).await.unwrap_err();
    assert!(e.is_rate_limited(), "{e}");
    let left = e.retry_after().expect("the pause left");
    assert!(left > ms(1_000) && left <= ms(2_000), "{left:?}");
    assert_eq!(
        status(&b, B).await.unwrap(),
        200,
        "other hosts are not paused"
    );
    assert_eq!(other.calls(), 1);
}

#[tokio::test]
async fn a_longer_pause_is_never_shortened() {
    let prefix = unique_prefix("longer");
    let mock = Mock::script([Step::retry_after(429, "3"), Step::retry_after(429, "1")]);
    let limit = RateLimit::per_second(100).per_host().fail_fast();
    let a = client(&mock, limit.clone(), shared(&prefix));
    let b = client(
        &mock,
        limit.clone().max_wait(Duration::ZERO),
        shared(&prefix),
    );
    assert_eq!(status(&a, A).await.unwrap(), 429);
    tokio::time::sleep(ms(100)).await;
    // A third client, fresh (no pause of its own), sees the fleet's.
    let c = client(&Mock::default(), limit, shared(&prefix));
    let left = status(&c, A).await.unwrap_err().retry_after().unwrap();
    assert!(left > ms(2_000), "{left:?}");
    drop(b);
}

#[tokio::test]
async fn a_wait_past_the_deadline_fails_at_once() {
    let prefix = unique_prefix("deadline");
    let mock = Mock::default();
    let c = mock.client(|b| {
        b.no_retry()
            .no_circuit_breaker()
            .total_timeout(ms(300))
            .attempt_timeout(ms(300))
            .rate_limit(RateLimit::per_second(1).burst(1).redis(shared(&prefix)))
    });
    assert_eq!(status(&c, A).await.unwrap(), 200);
    let start = Instant::now();
    let e = status(&c, A).await.unwrap_err();
    assert!(e.is_rate_limited(), "{e}");
    assert!(start.elapsed() < ms(250), "{:?}", start.elapsed());
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_the_local_share_at_once() {
    let port = support::net::closed_port().port();
    let modes = Modes::default();
    let mock = Mock::default();
    let c = watched(
        &mock,
        RateLimit::per_second(8).burst(8).fail_fast(),
        Redis::new(format!("redis://:s3cret@127.0.0.1:{port}/"))
            .timeout(ms(200))
            .local_share(0.25),
        &modes,
    );
    let start = Instant::now();
    // The local share: 2 of the burst of 8.
    assert_eq!(status(&c, A).await.unwrap(), 200);
    assert_eq!(status(&c, A).await.unwrap(), 200);
    assert!(status(&c, A).await.unwrap_err().is_rate_limited());
    assert!(start.elapsed() < ms(200), "{:?}", start.elapsed());
    assert_eq!(modes.all(), [(FleetMode::Local, "unreachable".to_owned())]);
    assert_eq!(c.health().fleet, Some(FleetMode::Local));
}

#[tokio::test]
async fn a_bucket_of_the_wrong_type_falls_back() {
    let server = RedisServer::start();
    let prefix = unique_prefix("garbage");
    server.command(&["HSET", &format!("{prefix}:bucket"), "f", "v"]);
    let modes = Modes::default();
    let mock = Mock::default();
    let c = watched(
        &mock,
        RateLimit::per_second(100),
        Redis::new(server.url()).prefix(&prefix).timeout(ms(500)),
        &modes,
    );
    assert_eq!(status(&c, A).await.unwrap(), 200);
    assert_eq!(modes.all(), [(FleetMode::Local, "error reply".to_owned())]);
    // A bucket that is a string but not a number is garbage too.
    server.command(&["DEL", &format!("{prefix}:bucket")]);
    server.command(&["SET", &format!("{prefix}:bucket"), "twelve"]);
    tokio::time::sleep(ms(600)).await;
    assert_eq!(status(&c, A).await.unwrap(), 200);
}

#[tokio::test]
async fn redis_dying_and_coming_back_is_survived() {
    let mut server = RedisServer::start();
    let modes = Modes::default();
    let mock = Mock::default();
    let c = watched(
        &mock,
        RateLimit::per_second(1_000),
        Redis::new(server.url())
            .prefix(unique_prefix("dies"))
            .timeout(ms(100))
            .reconnect_every(ms(50)),
        &modes,
    );
    assert_eq!(status(&c, A).await.unwrap(), 200);
    assert_eq!(c.health().fleet, Some(FleetMode::Shared));
    server.kill();
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(status(&c, A).await.unwrap(), 200);
        assert!(start.elapsed() < ms(150), "{:?}", start.elapsed());
    }
    assert_eq!(modes.all()[0].0, FleetMode::Local);
    server.restart();
    let back = back_to_shared(&modes, Instant::now(), ms(1_000)).await;
    eprintln!("shared again {back:?} after Redis came back");
    assert_eq!(status(&c, A).await.unwrap(), 200);
}

#[tokio::test]
async fn a_stalled_redis_costs_a_call_no_more_than_its_timeout() {
    let server = RedisServer::start();
    let modes = Modes::default();
    let mock = Mock::default();
    let c = watched(
        &mock,
        RateLimit::per_second(1_000),
        Redis::new(server.url())
            .prefix(unique_prefix("stall"))
            .timeout(ms(80))
            .reconnect_every(ms(50)),
        &modes,
    );
    assert_eq!(status(&c, A).await.unwrap(), 200);
    let stalled = Instant::now();
    server.stall(ms(700));
    tokio::time::sleep(ms(50)).await;
    let start = Instant::now();
    assert_eq!(status(&c, A).await.unwrap(), 200);
    let took = start.elapsed();
    eprintln!("the call that met the stall took {took:?} (timeout 80 ms)");
    assert!(took >= ms(60) && took < ms(200), "{took:?}");
    assert_eq!(modes.all()[0], (FleetMode::Local, "timeout".to_owned()));
    // Local now: no wait at all.
    let start = Instant::now();
    assert_eq!(status(&c, A).await.unwrap(), 200);
    assert!(start.elapsed() < ms(30), "{:?}", start.elapsed());
    // Back to shared once the stall is over.
    let back = back_to_shared(&modes, stalled, ms(1_700)).await;
    let over = back.saturating_sub(ms(700));
    eprintln!("shared again {over:?} after the 700 ms stall ended");
}

/// A fake "Redis" that answers `+OK` to everything: the limiter's script gets a reply it
/// cannot read.
#[tokio::test]
async fn a_reply_that_makes_no_sense_falls_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    // One `+OK` per command (each starts with `*`).
                    let commands = buf[..n].iter().filter(|&&b| b == b'*').count().max(1);
                    if s.write_all(&b"+OK\r\n".repeat(commands)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let modes = Modes::default();
    let mock = Mock::default();
    let c = watched(
        &mock,
        RateLimit::per_second(100),
        Redis::new(format!("redis://{addr}/")).timeout(ms(300)),
        &modes,
    );
    let start = Instant::now();
    assert_eq!(status(&c, A).await.unwrap(), 200);
    assert!(start.elapsed() < ms(300), "{:?}", start.elapsed());
    assert_eq!(modes.all(), [(FleetMode::Local, "bad reply".to_owned())]);
}

// ---------------------------------------------------------------------------------------------
// Several processes, one quota

/// The settings of a child process of [`four_processes_share_one_quota`], by environment.
const CHILD_TARGET: &str = "PALISADE_FLEET_CHILD_TARGET";
const CHILD_REDIS: &str = "PALISADE_FLEET_CHILD_REDIS";
const CHILD_PREFIX: &str = "PALISADE_FLEET_CHILD_PREFIX";
const CHILD_MILLIS: &str = "PALISADE_FLEET_CHILD_MILLIS";
/// A per-host rate instead of `RATE` and `BURST` for all hosts.
const CHILD_RATE: &str = "PALISADE_FLEET_CHILD_RATE";
/// How long the processes send: 10 s, or `PALISADE_FLEET_SECS`.
fn run_for() -> Duration {
    let secs = std::env::var("PALISADE_FLEET_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}

const RATE: u32 = 50;
const BURST: u32 = 10;

/// What the counting server saw: requests, and when the first and the last came.
#[derive(Default)]
struct Seen {
    count: std::sync::atomic::AtomicU64,
    /// Microseconds since `base`, plus one (0: none yet).
    first: std::sync::atomic::AtomicU64,
    last: std::sync::atomic::AtomicU64,
}

impl Seen {
    fn record(&self, base: Instant) {
        use std::sync::atomic::Ordering;
        let at = base.elapsed().as_micros() as u64 + 1;
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .first
            .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
        self.last.fetch_max(at, Ordering::Relaxed);
    }

    /// The requests and the seconds from the first to the last, since the last `take`.
    fn take(&self) -> (f64, f64) {
        use std::sync::atomic::Ordering;
        let n = self.count.swap(0, Ordering::Relaxed);
        let (first, last) = (
            self.first.swap(0, Ordering::Relaxed),
            self.last.swap(0, Ordering::Relaxed),
        );
        (n as f64, last.saturating_sub(first) as f64 / 1e6)
    }
}

/// An HTTP/1.1 server on loopback (keep-alive, bodiless requests) that answers each request
/// with what `answer` returns for its head (lowercased).
async fn http_server<F>(answer: F) -> std::net::SocketAddr
where
    F: Fn(&str) -> &'static [u8] + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        buf.drain(..end + 4);
                        if s.write_all(answer(&head)).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

/// A counting HTTP/1.1 server (`200 OK`, empty body).
async fn counting_server() -> (std::net::SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    let base = Instant::now();
    let addr = http_server(move |_| {
        counted.record(base);
        OK
    })
    .await;
    (addr, seen)
}

/// Starts 4 copies of this test binary, each running [`fleet_child`] against `target`.
fn start_children(target: &str, redis: Option<&str>, prefix: &str) -> Vec<std::process::Child> {
    start_children_with(target, redis, prefix, None, run_for())
}

fn start_children_with(
    target: &str,
    redis: Option<&str>,
    prefix: &str,
    per_host_rate: Option<u32>,
    time: Duration,
) -> Vec<std::process::Child> {
    let exe = std::env::current_exe().expect("the test binary");
    (0..4)
        .map(|_| {
            let mut cmd = std::process::Command::new(&exe);
            if let Some(r) = per_host_rate {
                cmd.env(CHILD_RATE, r.to_string());
            }
            cmd.args(["fleet_child", "--exact", "--ignored", "--nocapture"])
                .env(CHILD_TARGET, target)
                .env(CHILD_REDIS, redis.unwrap_or(""))
                .env(CHILD_PREFIX, prefix)
                .env(CHILD_MILLIS, time.as_millis().to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("a child process")
        })
        .collect()
}

/// One process of the fleet: 8 tasks send through one client, as fast as the limiter lets
/// them, for the time given, through a `RATE`/s burst `BURST` limiter (on Redis when given).
#[test]
#[ignore = "a child process of four_processes_share_one_quota, started by it"]
fn fleet_child() {
    let target = std::env::var(CHILD_TARGET).expect("started by four_processes_share_one_quota");
    let redis = std::env::var(CHILD_REDIS).unwrap_or_default();
    let prefix = std::env::var(CHILD_PREFIX).unwrap_or_default();
    let millis: u64 = std::env::var(CHILD_MILLIS).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut limit = match std::env::var(CHILD_RATE) {
            Ok(r) => RateLimit::per_second(r.parse().unwrap()).per_host(),
            Err(_) => RateLimit::per_second(RATE).burst(BURST),
        };
        if !redis.is_empty() {
            limit = limit.redis(Redis::new(redis).prefix(prefix).timeout(ms(500)));
        }
        let c = Client::builder()
            .no_retry()
            .no_circuit_breaker()
            .rate_limit(limit)
            .build()
            .unwrap();
        let end = Instant::now() + Duration::from_millis(millis);
        // One target or several (separated by spaces): the tasks take them in turn.
        let targets: Vec<String> = target.split(' ').map(str::to_owned).collect();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (c, target) = (c.clone(), targets[i % targets.len()].clone());
                tokio::spawn(async move {
                    while Instant::now() < end {
                        match c.get(&target).send().await {
                            Ok(_) => {}
                            Err(e) if e.is_rate_limited() => {
                                let hint = e.retry_after().unwrap_or(ms(5));
                                tokio::time::sleep(hint.min(end - Instant::now())).await;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Four processes share one quota on Redis: from its first request to its last, the server
/// sees at most what the quota allows over that span (`BURST`, plus `RATE` a second), plus a
/// slack of 1 % and 2 requests for Redis's and the server's clocks; without Redis, each
/// process has the whole quota, and together they send about four times as much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_quota() {
    let (addr, seen) = counting_server().await;
    let target = format!("http://{addr}/work");
    let url = shared_url();
    let prefix = unique_prefix("four");
    let quota = |secs: f64| f64::from(BURST) + f64::from(RATE) * secs;

    let run = |redis: Option<String>| {
        let children = start_children(&target, redis.as_deref(), &prefix);
        tokio::task::spawn_blocking(move || {
            for mut c in children {
                assert!(c.wait().unwrap().success(), "a child failed");
            }
        })
    };
    run(Some(url)).await.unwrap();
    let (shared, span) = seen.take();
    let most = quota(span) * 1.01 + 2.0;
    eprintln!(
        "4 processes on Redis: {shared} requests in {span:.2} s (the quota allows {:.0})",
        quota(span)
    );
    assert!(shared <= most, "{shared} requests, more than {most:.0}");
    assert!(
        shared >= quota(span) * 0.8,
        "{shared} requests: the quota was not used"
    );

    run(None).await.unwrap();
    let (alone, span) = seen.take();
    eprintln!(
        "4 processes without Redis: {alone} requests in {span:.2} s ({:.1}× the quota)",
        alone / quota(span)
    );
    assert!(alone > 3.0 * quota(span), "{alone} requests");
}

/// When each request came (since the server started), by its `Host`.
type Log = Arc<Mutex<Vec<(String, Duration)>>>;

/// A server that answers `429` with `Retry-After: 2` to the first request for `/x`, then
/// `200`, and logs each request.
async fn pushback_server() -> (std::net::SocketAddr, Log) {
    let log = Log::default();
    let logged = log.clone();
    let throttled = std::sync::atomic::AtomicBool::new(false);
    let base = Instant::now();
    let addr = http_server(move |head| {
        let host = head
            .lines()
            .find_map(|l| l.strip_prefix("host:"))
            .unwrap_or("")
            .trim()
            .to_owned();
        logged.lock().unwrap().push((host, base.elapsed()));
        let first_x = head.starts_with("get /x ")
            && !throttled.swap(true, std::sync::atomic::Ordering::SeqCst);
        if first_x {
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 0\r\n\r\n"
        } else {
            OK
        }
    })
    .await;
    (addr, log)
}

/// One process of four receives `429 Retry-After: 2` from a host: for 2 s no process sends
/// to that host (but what was in flight when the 429 came), while another host keeps
/// getting calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushback_seen_by_one_process_pauses_its_host_for_all() {
    let (addr, log) = pushback_server().await;
    let port = addr.port();
    // Two hosts, one server: `127.0.0.1:port` pushes back, `localhost:port` does not.
    let targets = format!("http://127.0.0.1:{port}/x http://localhost:{port}/y");
    let prefix = unique_prefix("pushback4");
    let children = start_children_with(
        &targets,
        Some(&shared_url()),
        &prefix,
        Some(200),
        Duration::from_secs(4),
    );
    tokio::task::spawn_blocking(move || {
        for mut c in children {
            assert!(c.wait().unwrap().success(), "a child failed");
        }
    })
    .await
    .unwrap();
    let log = log.lock().unwrap().clone();
    let paused_host = format!("127.0.0.1:{port}");
    let at = |host: &str| -> Vec<Duration> {
        log.iter()
            .filter(|(h, _)| h == host)
            .map(|(_, t)| *t)
            .collect()
    };
    let x = at(&paused_host);
    let y = at(&format!("localhost:{port}"));
    let t429 = x[0];
    // Calls already sent when the 429 came (at most the 8 tasks × 4 processes in flight)
    // may still arrive just after it.
    let grace = ms(100);
    let during: Vec<_> = x
        .iter()
        .filter(|t| **t > t429 + grace && **t < t429 + ms(1_950))
        .collect();
    eprintln!(
        "429 at {t429:?}; {} calls to the paused host in the 2 s after it (past {grace:?}), \
         {} to the other host",
        during.len(),
        y.iter()
            .filter(|t| **t > t429 && **t < t429 + ms(2_000))
            .count()
    );
    assert!(during.is_empty(), "calls during the pause: {during:?}");
    assert!(
        x.iter().any(|t| *t >= t429 + ms(1_950)),
        "the paused host is called again after the pause"
    );
    let other = y
        .iter()
        .filter(|t| **t > t429 + grace && **t < t429 + ms(1_950))
        .count();
    assert!(
        other > 100,
        "the other host got {other} calls during the pause"
    );
}
