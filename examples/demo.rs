//! palisade against a flaky server, every stage at work, in about fourteen seconds.
//!
//! The example starts a small HTTP/1.1 server on a random loopback port. Its `200 OK` answers
//! carry `Cache-Control: max-age=1, stale-if-error=30`, so the fallback cache may keep them and
//! serve them for 30 s after they go stale. The server goes through seven phases, by the time
//! since the start:
//!
//! 1. **healthy** (0–2 s): every request gets `200 OK`;
//! 2. **scattered** (2–4 s): 30 % get `503 Service Unavailable`, 10 % have their connection
//!    reset (TCP RST);
//! 3. **slow** (4–6 s): a third are answered only after 1 s, past the client's 300 ms attempt
//!    timeout;
//! 4. **outage** (6–9 s): every request gets a 503 or a reset;
//! 5. **back** (9–10 s): every request gets `200 OK` again;
//! 6. **throttling** (10–12 s): every request gets `429 Too Many Requests` with
//!    `Retry-After: 1`;
//! 7. **recovered** (12–14 s): every request gets `200 OK`.
//!
//! The throttling comes once the outage is over, not straight after it: a 429 says nothing of
//! the host's health, so the circuit breaker ignores it, and a breaker still waiting for a
//! probe to succeed while the server throttles would blur the two stages.
//!
//! A palisade client sends 40 GET requests a second to it, spread over five URLs
//! (`/items/1` to `/items/5`), each on its own task, whatever happened to the earlier ones
//! (open-loop load, as from many independent users). It runs the standard pipeline with the
//! rate limiter and the fallback cache switched on, and shorter times so that each phase shows
//! within a second or two: total timeout 1.5 s, attempt timeout 300 ms, 3 attempts with a 50 ms
//! backoff base, a retry budget of 20 % plus 3 retries a second (a reserve of 30), a circuit
//! breaker that opens after 5 failures in a row, for 1.2 s, and a rate limit of 60 attempts a
//! second (bursts of 10).
//!
//! What to look for:
//!
//! - **scattered**: retries turn the 503s and resets into successes (the stale column stays
//!   near zero);
//! - **slow**: attempt timeouts fire after 300 ms and the retries that follow mostly succeed.
//!   By the end of the phase the retries have spent the budget's reserve, and it refuses some:
//!   those requests, and those whose attempts all timed out, are answered with the copy the
//!   fallback cache stored;
//! - **outage**: the breaker opens after 5 failures in a row, within the outage's first tenth
//!   of a second; from then on the server sees only its probes, one per break, which fail,
//!   and every request is answered from the cache (stale);
//! - **back**: the next probe succeeds, the breaker closes and traffic is back within a break;
//! - **throttling**: the first 429 pauses the host for the second it asks, and the server sees
//!   nothing more that second: the rate limiter holds every call. When the pause ends the
//!   limiter lets the held calls go at its own pace; the first of them get 429s again, which
//!   pause the host for another second, so that the others would wait past their 1 s
//!   `max_wait`: they are refused and answered from the cache. A 429 that ends a request is
//!   returned as it is (fail): it is an answer, not a failure the cache stands in for;
//! - **recovered**: traffic is back as soon as the last pause ends, the limiter pacing the
//!   calls it held.
//!
//! The demo installs a recorder of its own for the `metrics` facade (it keeps totals in memory)
//! and builds the client with [`palisade::metrics::Metrics`]. Every line it prints about
//! palisade, one a second and the summary per stage at the end, is drawn from palisade's
//! metrics and from the client's handles (`Client::circuit_breaker`, `Client::fallback_cache`);
//! the demo itself counts only what the server saw. At the end it writes a timeline of the run
//! to `docs/demo/timeline.svg` and prints where.
//!
//! Set `RUST_LOG` to see palisade's own `tracing` events, one per attempt, retry and timeout:
//!
//! ```text
//! RUST_LOG=palisade=debug cargo run --example demo
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerHandle};
use palisade::fallback::FallbackCache;
use palisade::metrics::{names, Metrics};
use palisade::rate_limit::RateLimit;
use palisade::retry::{Backoff, Retry, RetryBudget};
use palisade::CircuitState;
use plotters::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Requests the client starts per second.
const RATE: u32 = 40;
/// How many distinct URLs the requests go to, so that the fallback cache has them stored.
const URLS: u32 = 5;
/// For how long the client sends: to the end of the last phase.
const SEND: Duration = Duration::from_secs(14);
/// How long a slow answer takes: longer than the attempt timeout.
const SLOW_ANSWER: Duration = Duration::from_secs(1);
const TOTAL_TIMEOUT: Duration = Duration::from_millis(1500);
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the breaker stays open. With the outage from 6 to 9 s, the breaker opens just
/// after 6 s and its probes come at about 7.3 and 8.5 s (failed) and 9.7 s (succeeds), each
/// at least 0.4 s away from the outage's ends, so that a loaded machine does not change that.
const BREAK: Duration = Duration::from_millis(1200);
/// How often the reporter samples the breaker's state for the timeline.
const SAMPLE: Duration = Duration::from_millis(50);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // palisade logs through `tracing`; show it only when asked, to keep the demo's output short.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    // Before the client is built: palisade describes its instruments to the recorder then.
    let totals = Arc::new(Totals::default());
    metrics::set_global_recorder(totals.clone()).map_err(|_| "a recorder was installed already")?;

    let start = Instant::now();
    let server = Arc::new(ServerStats::default());
    let addr = start_server(start, server.clone()).await?;
    let host = addr.to_string();

    let client = palisade::Client::builder()
        .total_timeout(TOTAL_TIMEOUT)
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .retry(
            Retry::default()
                .backoff(Backoff::new(
                    Duration::from_millis(50),
                    Duration::from_millis(500),
                ))
                .budget(RetryBudget::default().min_per_second(2)),
        )
        .circuit_breaker(
            CircuitBreaker::default()
                .consecutive_failures(5)
                .no_failure_ratio()
                .break_duration(BREAK),
        )
        .rate_limit(RateLimit::per_second(60).burst(10))
        .fallback_cache(FallbackCache::default())
        .metrics(Metrics::new())
        .build()?;

    println!("flaky server on http://{addr}");
    println!("client: {client:?}");
    println!(
        "sending {RATE} requests/s to /items/1..{URLS} for {} s\n",
        SEND.as_secs()
    );
    println!("Each second, from palisade's metrics (but the server column: what the server saw):");
    println!("  ok, stale, fail: requests that ended with the server's 2xx, with a copy the");
    println!("    fallback cache served, or otherwise (a 429, an error);");
    println!("  retries, refused: retries made, and retries the retry budget refused;");
    println!("  t/o: attempt timeouts; held: calls the rate limiter held, then let go;");
    println!("  paused: server pushbacks (429 with Retry-After) that paused the host;");
    println!("  breaker: the circuit breaker's state at the end of the second, and what it did.\n");
    println!(
        "{:>6}  {:<10}  {:>6}  {:>4}  {:>5}  {:>4}  {:>7}  {:>7}  {:>3}  {:>4}  {:>6}  breaker",
        "time",
        "phase",
        "server",
        "ok",
        "stale",
        "fail",
        "retries",
        "refused",
        "t/o",
        "held",
        "paused"
    );

    let breaker = client
        .circuit_breaker()
        .cloned()
        .ok_or("the client has a circuit breaker")?;
    let (stop, stopped) = oneshot::channel();
    let reporter = tokio::spawn(report(Reporter {
        start,
        totals: totals.clone(),
        server: server.clone(),
        breaker,
        host: host.clone(),
        stop: stopped,
    }));

    // Open-loop load: start a request every 1/RATE s, without waiting for earlier ones.
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / RATE);
    for n in 0..RATE * SEND.as_secs() as u32 {
        ticker.tick().await;
        let url = format!("http://{addr}/items/{}", n % URLS + 1);
        tasks.spawn(one_request(client.clone(), url));
    }
    // Each request ends by its total timeout (1.5 s) once its body is read; the bodies are
    // small and come with their heads. The bound is there so that the demo cannot hang.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        println!("(requests still running after 5 s were dropped)");
        tasks.abort_all();
    }
    let _ = stop.send(());
    let timeline = reporter.await?;
    let took = start.elapsed();

    print_summary(&totals, &server, &client, &host, took);

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/demo/timeline.svg");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    plot(&path, &timeline)?;
    println!("\ntimeline written to {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------------

/// Sends one GET through palisade and reads the body: the fallback cache stores a response once
/// its body has been read to the end. How it went is for palisade's metrics to say.
async fn one_request(client: palisade::Client, url: String) {
    if let Ok(resp) = client.get(&url).send().await {
        let _ = resp.bytes().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The recorder: totals in memory
// ---------------------------------------------------------------------------------------------

/// A `metrics` recorder that keeps every series' total since the start (counters and gauges as
/// atomics, histograms as every value recorded), for the demo to read at any time. An exporter
/// (`metrics-exporter-prometheus`, an OpenTelemetry bridge) takes its place in an application.
struct Totals {
    registry: Registry<Key, AtomicStorage>,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            registry: Registry::atomic(),
        }
    }
}

impl Recorder for Totals {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// The value of label `name` on `key`.
fn label<'k>(key: &'k Key, name: &str) -> Option<&'k str> {
    key.labels().find(|l| l.key() == name).map(|l| l.value())
}

/// Whether `key` has every label of `want`.
fn has(key: &Key, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| label(key, k) == Some(*v))
}

impl Totals {
    /// The sum of counter `name` over its series with the labels `want`.
    fn counter(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        let mut sum = 0;
        self.registry.visit_counters(|key, c| {
            if key.name() == name && has(key, want) {
                sum += c.load(Ordering::Relaxed);
            }
        });
        sum
    }

    /// Counter `name` summed by the values of its label `by`.
    fn counter_by(&self, name: &str, by: &str) -> BTreeMap<String, u64> {
        let mut sums = BTreeMap::new();
        self.registry.visit_counters(|key, c| {
            if key.name() == name {
                let value = label(key, by).unwrap_or("-").to_owned();
                *sums.entry(value).or_default() += c.load(Ordering::Relaxed);
            }
        });
        sums
    }

    /// The last value of gauge `name` with the labels `want`.
    fn gauge(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let mut value = None;
        self.registry.visit_gauges(|key, g| {
            if key.name() == name && has(key, want) {
                value = Some(f64::from_bits(g.load(Ordering::Relaxed)));
            }
        });
        value
    }

    /// Every value histogram `name` recorded in the series that `keep` picks.
    fn values(&self, name: &str, keep: impl Fn(&Key) -> bool) -> Vec<f64> {
        let mut values = Vec::new();
        self.registry.visit_histograms(|key, h| {
            if key.name() == name && keep(key) {
                h.data_with(|block| values.extend_from_slice(block));
            }
        });
        values
    }

    /// How many values histogram `name` recorded in the series that `keep` picks.
    fn count(&self, name: &str, keep: impl Fn(&Key) -> bool) -> u64 {
        let mut n = 0;
        self.registry.visit_histograms(|key, h| {
            if key.name() == name && keep(key) {
                h.data_with(|block| n += block.len() as u64);
            }
        });
        n
    }
}

/// How a call through the pipeline ended, from the labels of its `palisade.request.duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The server's own 2xx.
    Ok,
    /// A copy the fallback cache served.
    Stale,
    /// Another status, or an error.
    Failed,
}

fn ending(key: &Key) -> Ending {
    if label(key, "palisade.fallback").is_some() {
        Ending::Stale
    } else if label(key, "http.response.status_code").is_some_and(|s| s.starts_with('2')) {
        Ending::Ok
    } else {
        Ending::Failed
    }
}

const FROM: &str = "palisade.circuit_breaker.from";
const TO: &str = "palisade.circuit_breaker.to";

/// The totals a progress line shows, at one moment; a line shows the change since the last.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    server: u64,
    ok: u64,
    stale: u64,
    failed: u64,
    retries: u64,
    refused: u64,
    attempt_timeouts: u64,
    held: u64,
    limiter_refused: u64,
    paused: u64,
    opened: u64,
    probes_failed: u64,
    closed: u64,
    rejected: u64,
}

impl Tally {
    fn now(totals: &Totals, server: &ServerStats) -> Tally {
        let calls = |e| totals.count(names::REQUEST_DURATION, |k| ending(k) == e);
        let moves =
            |from, to| totals.counter(names::CIRCUIT_TRANSITIONS, &[(FROM, from), (TO, to)]);
        Tally {
            server: server.seen(),
            ok: calls(Ending::Ok),
            stale: calls(Ending::Stale),
            failed: calls(Ending::Failed),
            retries: totals.counter(names::RETRIES, &[]),
            refused: totals.counter(names::BUDGET_EXHAUSTED, &[]),
            attempt_timeouts: totals
                .counter(names::TIMEOUTS, &[("palisade.timeout.kind", "attempt")]),
            held: totals.counter(names::RATE_LIMIT_WAITS, &[]),
            limiter_refused: totals.counter(names::RATE_LIMIT_REJECTIONS, &[]),
            paused: totals.counter(names::PUSHBACKS, &[]),
            opened: moves("closed", "open"),
            probes_failed: moves("half_open", "open"),
            closed: moves("half_open", "closed"),
            rejected: totals.counter(names::CIRCUIT_REJECTIONS, &[]),
        }
    }

    fn since(&self, before: &Tally) -> Tally {
        Tally {
            server: self.server - before.server,
            ok: self.ok - before.ok,
            stale: self.stale - before.stale,
            failed: self.failed - before.failed,
            retries: self.retries - before.retries,
            refused: self.refused - before.refused,
            attempt_timeouts: self.attempt_timeouts - before.attempt_timeouts,
            held: self.held - before.held,
            limiter_refused: self.limiter_refused - before.limiter_refused,
            paused: self.paused - before.paused,
            opened: self.opened - before.opened,
            probes_failed: self.probes_failed - before.probes_failed,
            closed: self.closed - before.closed,
            rejected: self.rejected - before.rejected,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Progress lines and the timeline
// ---------------------------------------------------------------------------------------------

struct Reporter {
    start: Instant,
    totals: Arc<Totals>,
    server: Arc<ServerStats>,
    breaker: CircuitBreakerHandle,
    host: String,
    stop: oneshot::Receiver<()>,
}

/// What the picture shows: a row per second, the breaker's state sampled every [`SAMPLE`],
/// when its probes ended, and when server pushback paused the host.
#[derive(Debug, Default)]
struct Timeline {
    seconds: Vec<Tally>,
    states: Vec<(f64, CircuitState)>,
    /// When a probe ended, and whether it closed the breaker.
    probes: Vec<(f64, bool)>,
    pushbacks: Vec<f64>,
}

/// Prints a progress line every second and a line when the server enters a phase, until told
/// to stop; then a last line for the rest, and returns the timeline.
///
/// The line for second `k` is taken 50 ms before `k + 1` s: what the server's phases set off
/// at a whole second (a pause that ends a second after the 429 that set it at the start of
/// the throttling, the calls it held going at once) happens just after it, and is counted in
/// the line for the second it starts, not in the one before by the chance of who runs first.
async fn report(mut r: Reporter) -> Timeline {
    let mut timeline = Timeline::default();
    let mut tick = tokio::time::interval(SAMPLE);
    let mut second = 0;
    let mut last_line = Tally::default();
    let mut last_sample = Tally::default();
    print_phase(Phase::at(Duration::ZERO));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut r.stop => true,
        };
        let elapsed = r.start.elapsed();
        let now = Tally::now(&r.totals, &r.server);
        let state = r.breaker.state(&r.host);
        let t = elapsed.as_secs_f64();
        timeline.states.push((t, state));
        let change = now.since(&last_sample);
        let probes = (0..change.probes_failed)
            .map(|_| (t, false))
            .chain((0..change.closed).map(|_| (t, true)));
        timeline.probes.extend(probes);
        timeline.pushbacks.extend((0..change.paused).map(|_| t));
        last_sample = now;

        if stopping {
            // The requests still running when the load stopped.
            let label = format!("{second}s–");
            print_line(&label, "drain", &now.since(&last_line), state);
            return timeline;
        }
        let line_at = Duration::from_secs(second + 1) - SAMPLE;
        if elapsed >= line_at {
            let phase = Phase::at(Duration::from_secs(second));
            let label = format!("{second}–{}s", second + 1);
            let row = now.since(&last_line);
            print_line(&label, phase.name(), &row, state);
            timeline.seconds.push(row);
            last_line = now;
            second += 1;
            let next = Phase::at(Duration::from_secs(second));
            if next != phase && elapsed < SEND {
                print_phase(next);
            }
        }
    }
}

fn print_phase(phase: Phase) {
    println!(
        "{:>6}  -- {} from {} s: {}",
        "",
        phase.name(),
        phase.starts_at().as_secs(),
        phase.describe()
    );
}

fn print_line(time: &str, phase: &str, row: &Tally, state: CircuitState) {
    let mut notes = Vec::new();
    if row.opened > 0 {
        notes.push("opened".to_owned());
    }
    match row.probes_failed {
        0 => {}
        1 => notes.push("a probe failed".to_owned()),
        n => notes.push(format!("{n} probes failed")),
    }
    if row.closed > 0 {
        notes.push("a probe succeeded: closed".to_owned());
    }
    if row.rejected > 0 {
        notes.push(format!("{} calls rejected", row.rejected));
    }
    if row.limiter_refused > 0 {
        notes.push(format!("{} refused by the limiter", row.limiter_refused));
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join(", "))
    };
    println!(
        "{time:>6}  {phase:<10}  {:>6}  {:>4}  {:>5}  {:>4}  {:>7}  {:>7}  {:>3}  {:>4}  {:>6}  {}{notes}",
        row.server,
        row.ok,
        row.stale,
        row.failed,
        row.retries,
        row.refused,
        row.attempt_timeouts,
        row.held,
        row.paused,
        state_name(state),
    );
}

fn state_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half-open",
    }
}

// ---------------------------------------------------------------------------------------------
// The summary, per stage
// ---------------------------------------------------------------------------------------------

fn print_summary(
    totals: &Totals,
    server: &ServerStats,
    client: &palisade::Client,
    host: &str,
    took: Duration,
) {
    let by = |name, label| join(&totals.counter_by(name, label));
    let calls = totals.values(names::REQUEST_DURATION, |_| true);
    let attempts = totals.values(names::HTTP_CLIENT_REQUEST_DURATION, |_| true);
    let ended = |e| totals.count(names::REQUEST_DURATION, |k| ending(k) == e);
    let failed: BTreeMap<String, u64> = {
        let mut m = BTreeMap::new();
        totals.registry.visit_histograms(|key, h| {
            if key.name() == names::REQUEST_DURATION && ending(key) == Ending::Failed {
                let kind = label(key, "error.type").unwrap_or("-").to_owned();
                let mut n = 0;
                h.data_with(|b| n += b.len() as u64);
                *m.entry(kind).or_default() += n;
            }
        });
        m
    };

    println!(
        "\nsummary after {:.1}s, from palisade's metrics and the client's handles",
        took.as_secs_f64()
    );
    println!("calls (palisade.request.duration)");
    println!(
        "  ended                          {:>5}   p50 {}, p99 {}",
        calls.len(),
        ms(&calls, 50),
        ms(&calls, 99)
    );
    println!("    with the server's 2xx        {:>5}", ended(Ending::Ok));
    println!(
        "    with a stored copy           {:>5}",
        ended(Ending::Stale)
    );
    println!(
        "    otherwise                    {:>5}   {}",
        ended(Ending::Failed),
        join(&failed)
    );
    println!("attempts (http.client.request.duration)");
    println!(
        "  on the wire                    {:>5}   p50 {}, p99 {}; the server saw {}",
        attempts.len(),
        ms(&attempts, 50),
        ms(&attempts, 99),
        server.seen()
    );
    println!("retry");
    println!(
        "  retries                        {:>5}   {}",
        totals.counter(names::RETRIES, &[]),
        by(names::RETRIES, "palisade.retry.reason")
    );
    println!(
        "  refused by the budget          {:>5}",
        totals.counter(names::BUDGET_EXHAUSTED, &[])
    );
    println!(
        "  gave up                        {:>5}   {}",
        totals.counter(names::GIVE_UPS, &[]),
        by(names::GIVE_UPS, "palisade.retry.give_up_reason")
    );
    println!("circuit breaker ({host})");
    let moves = |from, to| totals.counter(names::CIRCUIT_TRANSITIONS, &[(FROM, from), (TO, to)]);
    println!(
        "  opened                         {:>5}",
        moves("closed", "open")
    );
    println!(
        "  probes let through             {:>5}   failed {}, succeeded {}",
        moves("open", "half_open"),
        moves("half_open", "open"),
        moves("half_open", "closed")
    );
    println!(
        "  calls rejected while open      {:>5}",
        totals.counter(names::CIRCUIT_REJECTIONS, &[])
    );
    let address = host.rsplit_once(':').map_or(host, |(a, _)| a);
    let gauge = totals
        .gauge(names::CIRCUIT_STATE, &[("server.address", address)])
        .map_or("-", |v| match v as u8 {
            0 => "closed",
            1 => "half-open",
            _ => "open",
        });
    let handle = client
        .circuit_breaker()
        .map_or("-", |b| state_name(b.state(host)));
    println!("  state now                      {handle:>5}   (the state gauge says {gauge})");
    println!("rate limiter");
    let waits = totals.values(names::RATE_LIMIT_WAIT_DURATION, |_| true);
    println!(
        "  calls held                     {:>5}   p50 {}, p99 {}",
        waits.len(),
        ms(&waits, 50),
        ms(&waits, 99)
    );
    println!(
        "  calls refused                  {:>5}",
        totals.counter(names::RATE_LIMIT_REJECTIONS, &[])
    );
    let pauses = totals.values(names::PUSHBACK_DURATION, |_| true);
    println!(
        "  server pushbacks               {:>5}   pauses p50 {}, longest {}",
        pauses.len(),
        ms(&pauses, 50),
        ms(&pauses, 100)
    );
    println!("timeouts");
    println!(
        "  fired                          {:>5}   {}",
        totals.counter(names::TIMEOUTS, &[]),
        by(names::TIMEOUTS, "palisade.timeout.kind")
    );
    println!("fallback cache");
    println!(
        "  served                         {:>5}   {}",
        totals.counter(names::FALLBACKS_SERVED, &[]),
        by(names::FALLBACKS_SERVED, "palisade.fallback.reason")
    );
    if let Some(cache) = client.fallback_cache() {
        cache.sync();
        println!(
            "  entries stored now             {:>5}   {} bytes",
            cache.entry_count(),
            cache.stored_bytes()
        );
    }
    println!("server (its own count)");
    for (answer, count) in server.answers() {
        println!("  {answer:<30} {count:>5}");
    }
}

/// `a 3, b 5`, zeros left out.
fn join(counts: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    parts.join(", ")
}

/// The nearest-rank `p`-th percentile (1 to 100) of durations in seconds, in milliseconds.
fn ms(values: &[f64], p: usize) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted
        .get(rank - 1)
        .map_or_else(|| "-".to_owned(), |s| format!("{:.0} ms", s * 1000.0))
}

// ---------------------------------------------------------------------------------------------
// The picture
// ---------------------------------------------------------------------------------------------

fn plot(path: &Path, timeline: &Timeline) -> Result<(), BoxError> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, legend) = root.split_vertically(480);
    let x_max = timeline.seconds.len().max(1) as f64;
    let peak = timeline
        .seconds
        .iter()
        .map(|s| s.server.max(s.ok).max(s.stale).max(s.failed))
        .max()
        .unwrap_or(1);
    let y_max = (peak as f64 * 1.2 / 10.0).ceil() * 10.0;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("palisade against a flaky server, {RATE} requests/s: one run, per second"),
            ("sans-serif", 20),
        )
        .margin(14)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("per second")
        .x_labels(timeline.seconds.len() + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(RGBColor(240, 240, 240))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;

    let red = RGBColor(214, 39, 40);
    let green = RGBColor(44, 160, 44);
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let grey = RGBColor(120, 120, 120);
    let purple = RGBColor(148, 103, 189);
    let open_band = red.mix(0.14);
    let half_band = orange.mix(0.3);

    // The breaker's state: a band where it was open (or half-open), from the samples, each
    // run of one state drawn as one band.
    let mut runs: Vec<(f64, f64, CircuitState)> = Vec::new();
    for w in timeline.states.windows(2) {
        let ((t0, state), (t1, _)) = (w[0], w[1]);
        match runs.last_mut() {
            Some(run) if run.2 == state => run.1 = t1,
            _ => runs.push((t0, t1, state)),
        }
    }
    chart.draw_series(runs.into_iter().filter_map(|(t0, t1, state)| {
        let color = match state {
            CircuitState::Closed => return None,
            CircuitState::Open => open_band,
            CircuitState::HalfOpen => half_band,
        };
        Some(Rectangle::new(
            [(t0.min(x_max), 0.0), (t1.min(x_max), y_max)],
            color.filled(),
        ))
    }))?;

    // The phases: a line where each starts, and its name.
    for phase in Phase::ALL {
        let x = phase.starts_at().as_secs_f64();
        if x > 0.0 {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, y_max)],
                grey.stroke_width(1),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            phase.name(),
            (x + 0.08, y_max * 0.975),
            ("sans-serif", 14).into_font().color(&grey),
        )))?;
    }

    type Value = fn(&Tally) -> u64;
    let series: [(RGBColor, Value); 4] = [
        (blue, |s| s.server),
        (green, |s| s.ok),
        (orange, |s| s.stale),
        (grey, |s| s.failed),
    ];
    for (color, value) in series {
        let points: Vec<(f64, f64)> = timeline
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| (i as f64 + 0.5, value(s) as f64))
            .collect();
        chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }

    // The probes of a half-open breaker, where they ended, and the server's pushbacks.
    let probe_y = y_max * 0.88;
    chart.draw_series(timeline.probes.iter().map(|&(t, closed)| {
        let color = if closed { green } else { red };
        TriangleMarker::new((t, probe_y), 7, color.filled())
    }))?;
    let pushback_y = y_max * 0.8;
    chart.draw_series(
        timeline
            .pushbacks
            .iter()
            .map(|&t| Cross::new((t, pushback_y), 5, purple.stroke_width(2))),
    )?;

    // The legend, in a row below the chart.
    enum Mark {
        Line(RGBColor),
        Band(RGBAColor),
        Triangle(RGBColor),
        Cross(RGBColor),
    }
    let entries = [
        (Mark::Line(blue), "attempts the server saw"),
        (Mark::Line(green), "the server's 2xx"),
        (Mark::Line(orange), "served stale"),
        (Mark::Line(grey), "failed (429, errors)"),
        (Mark::Band(open_band), "breaker open"),
        (Mark::Triangle(red), "probe failed"),
        (Mark::Triangle(green), "probe closed it"),
        (Mark::Cross(purple), "pushback (host paused)"),
    ];
    // Two rows of four, in columns of a quarter of the width.
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    for (i, (mark, text)) in entries.into_iter().enumerate() {
        let (x, y) = (60 + 230 * (i % 4) as i32, 14 + 24 * (i / 4) as i32);
        match mark {
            Mark::Line(c) => legend.draw(&PathElement::new(
                vec![(x, y), (x + 18, y)],
                c.stroke_width(2),
            ))?,
            Mark::Band(c) => {
                legend.draw(&Rectangle::new([(x, y - 7), (x + 18, y + 7)], c.filled()))?
            }
            Mark::Triangle(c) => legend.draw(&TriangleMarker::new((x + 9, y), 6, c.filled()))?,
            Mark::Cross(c) => legend.draw(&Cross::new((x + 9, y), 5, c.stroke_width(2)))?,
        }
        legend.draw(&Text::new(text, (x + 26, y - 8), font.clone()))?;
    }
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The flaky server
// ---------------------------------------------------------------------------------------------

/// The server's phases, by the time since the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Healthy,
    Scattered,
    Slow,
    Outage,
    Back,
    Throttling,
    Recovered,
}

impl Phase {
    const ALL: [Phase; 7] = [
        Phase::Healthy,
        Phase::Scattered,
        Phase::Slow,
        Phase::Outage,
        Phase::Back,
        Phase::Throttling,
        Phase::Recovered,
    ];

    /// When the phase starts, from the start of the demo. It lasts until the next one starts.
    fn starts_at(self) -> Duration {
        Duration::from_millis(match self {
            Phase::Healthy => 0,
            Phase::Scattered => 2000,
            Phase::Slow => 4000,
            Phase::Outage => 6000,
            Phase::Back => 9000,
            Phase::Throttling => 10_000,
            Phase::Recovered => 12_000,
        })
    }

    /// The phase `elapsed` after the start.
    fn at(elapsed: Duration) -> Phase {
        Phase::ALL
            .into_iter()
            .rev()
            .find(|p| elapsed >= p.starts_at())
            .unwrap_or(Phase::Healthy)
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Scattered => "scattered",
            Phase::Slow => "slow",
            Phase::Outage => "outage",
            Phase::Back => "back",
            Phase::Throttling => "throttling",
            Phase::Recovered => "recovered",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Phase::Healthy => "every request gets 200",
            Phase::Scattered => "30 % get 503, 10 % are reset",
            Phase::Slow => "a third take 1 s (attempt timeout 300 ms)",
            Phase::Outage => "every request gets 503 or is reset",
            Phase::Back => "every request gets 200 again",
            Phase::Throttling => "every request gets 429 with Retry-After: 1",
            Phase::Recovered => "every request gets 200",
        }
    }
}

/// What the server does with one request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Unavailable,
    Reset,
    Slow,
    TooManyRequests,
}

impl Answer {
    const ALL: [Answer; 5] = [
        Answer::Ok,
        Answer::Unavailable,
        Answer::Reset,
        Answer::Slow,
        Answer::TooManyRequests,
    ];

    /// The answer to the `n`-th request (from 0) the server sees. The mixes are fixed patterns
    /// over the requests' numbers, so that runs are alike.
    fn pick(phase: Phase, n: u64) -> Answer {
        match phase {
            Phase::Healthy | Phase::Back | Phase::Recovered => Answer::Ok,
            Phase::Throttling => Answer::TooManyRequests,
            Phase::Scattered => match n % 20 {
                1 | 4 | 8 | 11 | 14 | 18 => Answer::Unavailable, // 30 %
                6 | 16 => Answer::Reset,                         // 10 %
                _ => Answer::Ok,
            },
            Phase::Slow if n % 3 == 1 => Answer::Slow,
            Phase::Slow => Answer::Ok,
            Phase::Outage if n % 2 == 1 => Answer::Reset,
            Phase::Outage => Answer::Unavailable,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Answer::Ok => "200 OK",
            Answer::Unavailable => "503 Service Unavailable",
            Answer::Reset => "connection reset",
            Answer::Slow => "200 OK after 1 s",
            Answer::TooManyRequests => "429 Too Many Requests",
        }
    }
}

/// What the server saw: every request it read, by the answer it gave.
#[derive(Debug, Default)]
struct ServerStats {
    seen: AtomicU64,
    answers: [AtomicU64; Answer::ALL.len()],
}

impl ServerStats {
    fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    fn answers(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Answer::ALL
            .iter()
            .map(|&a| (a.label(), self.answers[a as usize].load(Ordering::Relaxed)))
    }
}

/// Binds a random loopback port and serves it on background tasks.
async fn start_server(start: Instant, stats: Arc<ServerStats>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, start, stats.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    eprintln!("server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(addr)
}

/// Serves the requests of one keep-alive connection until the client closes it. Errors end
/// the connection; the client sees them as transport errors, which is the point.
async fn serve_connection(mut stream: TcpStream, start: Instant, stats: Arc<ServerStats>) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Ok(Some(head)) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let n = stats.seen.fetch_add(1, Ordering::Relaxed);
        let answer = Answer::pick(Phase::at(start.elapsed()), n);
        stats.answers[answer as usize].fetch_add(1, Ordering::Relaxed);

        // The demo only sends GETs, but skip a request body so the next head is found.
        let chunked = header(&head, "transfer-encoding").is_some();
        let body_len = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok());
        if discard(&mut stream, &mut buf, body_len.unwrap_or(0))
            .await
            .is_err()
        {
            return;
        }
        // A chunked body is not parsed: answer, then close instead of misreading it.
        let close =
            chunked || header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let path = head.split(' ').nth(1).unwrap_or("/");

        let response = match answer {
            Answer::Reset => {
                // SO_LINGER 0: dropping the socket sends RST instead of FIN.
                let _ = stream.set_zero_linger();
                return;
            }
            Answer::Slow => {
                tokio::time::sleep(SLOW_ANSWER).await;
                ok(path, close)
            }
            Answer::Ok => ok(path, close),
            Answer::Unavailable => response(503, "Service Unavailable", "", "", close),
            Answer::TooManyRequests => {
                response(429, "Too Many Requests", "retry-after: 1\r\n", "", close)
            }
        };
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// A `200 OK` that a shared cache may store, fresh for a second and usable for 30 s more if
/// the server fails (RFC 5861's `stale-if-error`).
fn ok(path: &str, close: bool) -> String {
    let body = format!("{{\"item\":\"{path}\"}}\n");
    response(
        200,
        "OK",
        "cache-control: max-age=1, stale-if-error=30\r\ncontent-type: application/json\r\n",
        &body,
        close,
    )
}

/// A complete response; a short text body when `body` is empty.
fn response(status: u16, reason: &str, extra_headers: &str, body: &str, close: bool) -> String {
    let body = if body.is_empty() {
        format!("{status} {reason}\n")
    } else {
        body.to_owned()
    };
    let connection = if close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\n{extra_headers}{connection}\r\n{body}",
        body.len()
    )
}

/// Reads up to the end of the next request head (`\r\n\r\n`) and returns the head, keeping any
/// bytes after it in `buf`. `None` when the client closed the connection between requests.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<String>> {
    const MAX_HEAD: usize = 16 * 1024;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Drops `len` body bytes: first those already in `buf`, then from the stream.
async fn discard(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let from_buf = len.min(buf.len());
    buf.drain(..from_buf);
    let mut left = (len - from_buf) as u64;
    if left > 0 {
        let copied =
            tokio::io::copy(&mut (&mut *stream).take(left), &mut tokio::io::sink()).await?;
        left -= copied;
    }
    if left > 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The value of the first header named `name` in a request head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
