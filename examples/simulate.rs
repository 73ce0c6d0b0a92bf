//! Behaviour under failure: a deterministic simulation in paused time, with CSV results and
//! SVG plots.
//!
//! ```text
//! cargo run --release --example simulate            # about 10 s; writes docs/simulate/
//! cargo run --release --example simulate -- OUT_DIR # writes OUT_DIR instead
//! ```
//!
//! It also runs unoptimised (`cargo run --example simulate`), in a few minutes, with the same
//! results. Two runs print the same tables and write byte-identical files: every random draw
//! comes from a seeded generator (palisade's jitter from fastrand's thread-local one, seeded
//! here) and time is tokio's paused clock, which jumps from one timer to the next, on a
//! single-threaded runtime.
//!
//! # Part 1: scenarios
//!
//! An in-memory transport (a `tower::Service` given to `ClientBuilder::transport`) plays a
//! server whose health follows a script. Every answer takes 5–15 ms (uniform) unless the
//! scenario says otherwise. Load is open-loop: one GET every 10 ms (100 requests per second),
//! each on its own task, whatever happened to the earlier ones.
//!
//! | scenario | length | what the server does |
//! |---|---|---|
//! | `steady10` | 120 s | each attempt gets `503` (no `Retry-After`) with probability 0.10 |
//! | `steady30` | 120 s | the same with probability 0.30 |
//! | `outage` | 150 s | healthy; from 30 s to 90 s every attempt gets `503` (no `Retry-After`); healthy again |
//! | `ratelimit` | 120 s | admits 80 attempts per second (token bucket: 80 tokens a second, at most 80 stored); an attempt without a token gets `429` with `Retry-After: 1` |
//! | `slow` | 120 s | healthy; from 30 s to 60 s every answer takes 15 s, past the 10 s attempt timeout; healthy again |
//!
//! Each scenario is run with three clients, all with palisade's default timeouts (30 s in all,
//! 10 s per attempt):
//!
//! - **standard**: `Client::builder()` as it comes: retry (3 attempts, exponential backoff from
//!   100 ms with full jitter, `Retry-After`, retry budget of 20 % plus 10 a second over 10 s)
//!   and a circuit breaker per host (opens at a failure ratio of 0.5 over 30 s with at least
//!   20 calls, or at 12 failures in a row; 5 s break; one probe, cut at 1 s, doubled for each
//!   probe in a row it cut, relieved by the next call once out for 1 s; a retry it turns away
//!   waits for it within the deadline);
//! - **retry only**: `.retry(Retry::default().no_budget()).no_circuit_breaker()` (3 attempts);
//! - **none**: `.no_retry().no_circuit_breaker()` (the timeouts only).
//!
//! Reported per scenario and client:
//!
//! - **success**: the share of requests whose final answer was a 2xx;
//! - **amplification**: attempts the server received / requests offered;
//! - **detect** (outage and slow scenarios): from the start of the failure to the end of the
//!   first 100 ms interval in which the server received at most 10 % as many attempts as
//!   requests were offered in it (a client that sheds load); `never` if no interval before
//!   the failure ends qualifies;
//! - **recover** (outage and slow scenarios): from the end of the failure to the end of the
//!   first 100 ms interval whose requests (by the time they were sent) succeeded at least
//!   95 % of the time;
//! - **p50 / p99**: the caller's latency, from `send()` to its result, over all requests,
//!   failed ones included (a rejection by an open circuit takes no time at all);
//! - **429s**: answered by the server (downstream) and returned to the caller.
//!
//! # Part 2: the contention experiment of "Exponential Backoff And Jitter"
//!
//! The AWS Architecture Blog's experiment, as a discrete-event simulation: N clients each want
//! to write one row once, with optimistic concurrency. A client reads the row's version, then
//! writes it conditionally on that version; the write fails if another client wrote in
//! between, and the client backs off, reads again and retries until its write succeeds. Every
//! message takes `|N(10 ms, 2 ms)|` over the network. The backoff is palisade's own
//! [`Backoff`] (base 5 ms, cap 2 s) with each [`Jitter`], drawn through its public
//! `Backoff::delay`, plus a reference without any backoff. N = 10, 20, …, 190, each the mean of
//! 100 runs with different seeds. Reported: the calls (conditional writes, as the post counts
//! them; each comes with one read) until every client has written, and the time until then.
//! One difference from the post's simulator: there the n-th backoff's ceiling is
//! `base · 2^n`, in palisade it is `base · 2^(n-1)` (the first retry waits at most 5 ms, not
//! 10 ms).
//!
//! # Part 3: hedging against a heavy tail
//!
//! The same open-loop load (100 GET/s, each on its own task) against a server whose answers
//! take 5–15 ms (uniform), except for a heavy tail: in `tail1`, 1 % of the answers are 50×
//! slower (250–750 ms); in `tail2`, 2 % are; in `slow_spell`, every answer is 50× slower from
//! 30 s to 60 s of a 120 s run (the tail scenarios last 200 s: 20,000 requests). Each is run
//! with `Client::builder()` as it comes (**standard**: no hedging) and with
//! `.hedging(Hedging::at_quantile(0.95))` (**hedged at p95**: one hedge after the host's
//! recent 95th percentile, as "The Tail at Scale" proposes). Every attempt, hedges included,
//! draws its own answer. Reported: the caller's latency at p50, p95, p99, p99.9 and its
//! maximum, the attempts the server received per request offered (the extra load), the
//! hedges sent, and which attempt won the hedged races (from the events). At 1 % the 99th
//! percentile is the knee of the distribution itself (the slowest fast answer, or the fastest
//! slow one, by chance): the tail shows in p99.9 there, and in p99 at 2 %.
//!
//! # Outputs
//!
//! In `docs/simulate/` (or the directory given as the first argument):
//!
//! - `scenarios.csv`: one row per scenario and client, every metric above and a few counts
//!   that explain them (budget refusals, circuit rejections, the breaker's transitions);
//! - `outage_timeseries.csv`: per second of the outage scenario and per client: requests
//!   offered (by send time), attempts received by the server, caller successes and failures
//!   (by the time the caller got them);
//! - `contention.csv`: per backoff variant and N: mean calls and mean completion time;
//! - `slow_sweep.csv`: the slow scenario again, its spell ending anywhere from 55 s to 65 s
//!   (41 runs, 250 ms apart), standard and none: each run's successes and the standard
//!   pipeline's recovery (where the breaker's probes fall when the server recovers decides
//!   it, so one run says little); a summary line is printed;
//! - `outage_load.svg`: attempts per second at the server and caller successes per second
//!   through the outage, one line per client, the outage shaded;
//! - `contention_calls.svg` and `contention_time.svg`: calls and completion time against N,
//!   one line per backoff variant;
//! - `hedging.csv`: one row per heavy-tail scenario and client, with the measures of part 3;
//! - `hedging.svg`: the share of requests slower than each latency (log–log) in `tail1` and
//!   `tail2` with and without hedging, and the attempts per second at the server through the
//!   slow spell.
//!
//! The tables are printed to stdout as Markdown.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::hedge::Hedging;
use palisade::retry::{Backoff, Jitter, Retry};
use palisade::{CircuitState, ErrorKind, Event, GiveUpReason};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use reqwest::ResponseBuilderExt;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error>;

/// Time between two requests of the open-loop load: 100 requests per second.
const TICK: Duration = Duration::from_millis(10);
/// The resolution of the detection and recovery measures.
const BUCKET: Duration = Duration::from_millis(100);
/// The timeouts of all three clients: palisade's defaults.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// When the outage (503 to everything) and the slow spell (answers past the attempt timeout)
/// begin and end.
const FAILURE_START: Duration = Duration::from_secs(30);
const OUTAGE_END: Duration = Duration::from_secs(90);
const SLOW_END: Duration = Duration::from_secs(60);
const SLOW_ANSWER: Duration = Duration::from_secs(15);
/// The rate-limited server's capacity: tokens per second, and the most it stores.
const CAPACITY: f64 = 80.0;
const BURST: f64 = 80.0;
/// The seed of every run's generators.
const SEED: u64 = 2026;
/// Runs per backoff variant and N in the contention experiment.
const CONTENTION_RUNS: u64 = 100;

fn main() -> Result<(), BoxError> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/simulate"));
    std::fs::create_dir_all(&out)?;
    let wall = std::time::Instant::now();

    // Part 1.
    let mut summaries = Vec::new();
    let mut outage_series = Vec::new();
    for scenario in Scenario::ALL {
        for config in Config::ALL {
            let run = simulate(scenario, config)?;
            if scenario == Scenario::Outage {
                outage_series.push((config, run.per_second()));
            }
            summaries.push(run.summary());
        }
    }
    print_scenarios(&summaries);
    write_scenarios_csv(&out.join("scenarios.csv"), &summaries)?;
    write_timeseries_csv(&out.join("outage_timeseries.csv"), &outage_series)?;
    plot_outage(&out.join("outage_load.svg"), &outage_series)?;
    slow_sweep(&out.join("slow_sweep.csv"))?;

    // Part 2.
    let contention = contention_experiment();
    print_contention(&contention);
    write_contention_csv(&out.join("contention.csv"), &contention)?;
    plot_contention(
        &out.join("contention_calls.svg"),
        &contention,
        Measure::Calls,
    )?;
    plot_contention(&out.join("contention_time.svg"), &contention, Measure::Time)?;

    // Part 3.
    hedging_experiment(&out)?;

    println!("\nwrote {}", out.display());
    eprintln!("(took {:.1} s of wall time)", wall.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Part 1: the scripted server
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Steady10,
    Steady30,
    Outage,
    RateLimited,
    Slow,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Steady10,
        Scenario::Steady30,
        Scenario::Outage,
        Scenario::RateLimited,
        Scenario::Slow,
    ];

    fn key(self) -> &'static str {
        match self {
            Scenario::Steady10 => "steady10",
            Scenario::Steady30 => "steady30",
            Scenario::Outage => "outage",
            Scenario::RateLimited => "ratelimit",
            Scenario::Slow => "slow",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::Steady10 => "10 % of attempts get 503",
            Scenario::Steady30 => "30 % of attempts get 503",
            Scenario::Outage => "every attempt gets 503 from 30 s to 90 s",
            Scenario::RateLimited => "80 attempts/s admitted, the rest get 429 + Retry-After: 1",
            Scenario::Slow => "answers take 15 s from 30 s to 60 s (attempt timeout 10 s)",
        }
    }

    /// How long the load is offered.
    fn length(self) -> Duration {
        match self {
            Scenario::Outage => Duration::from_secs(150),
            _ => Duration::from_secs(120),
        }
    }

    /// The failure whose detection and recovery are measured.
    fn failure_window(self) -> Option<(Duration, Duration)> {
        match self {
            Scenario::Outage => Some((FAILURE_START, OUTAGE_END)),
            Scenario::Slow => Some((FAILURE_START, SLOW_END)),
            _ => None,
        }
    }
}

/// What the server decided for one attempt.
struct Answer {
    status: u16,
    retry_after: bool,
    latency: Duration,
}

/// The server's state, shared by the transport's clones.
struct Server {
    scenario: Scenario,
    start: Instant,
    rng: fastrand::Rng,
    /// When the slow spell ends (`SLOW_END`, unless the sweep moves it).
    slow_end: Duration,
    tokens: f64,
    refilled: Duration,
    /// Attempts received per 100 ms since the start.
    attempts: Vec<u32>,
    sent_429: u64,
}

impl Server {
    fn new(scenario: Scenario, start: Instant, slow_end: Duration) -> Self {
        Server {
            scenario,
            start,
            slow_end,
            rng: fastrand::Rng::with_seed(SEED),
            tokens: BURST,
            refilled: Duration::ZERO,
            attempts: Vec::new(),
            sent_429: 0,
        }
    }

    fn answer(&mut self) -> Answer {
        let t = Instant::now().saturating_duration_since(self.start);
        let slot = bucket_of(t);
        if self.attempts.len() <= slot {
            self.attempts.resize(slot + 1, 0);
        }
        self.attempts[slot] += 1;

        let latency = Duration::from_micros(self.rng.u64(5_000..=15_000));
        let ok = Answer {
            status: 200,
            retry_after: false,
            latency,
        };
        let unavailable = Answer { status: 503, ..ok };
        match self.scenario {
            Scenario::Steady10 if self.rng.f64() < 0.10 => unavailable,
            Scenario::Steady30 if self.rng.f64() < 0.30 => unavailable,
            Scenario::Outage if (FAILURE_START..OUTAGE_END).contains(&t) => unavailable,
            Scenario::RateLimited => {
                let elapsed = (t - self.refilled).as_secs_f64();
                self.refilled = t;
                self.tokens = (self.tokens + elapsed * CAPACITY).min(BURST);
                if self.tokens >= 1.0 {
                    self.tokens -= 1.0;
                    ok
                } else {
                    self.sent_429 += 1;
                    Answer {
                        status: 429,
                        retry_after: true,
                        latency,
                    }
                }
            }
            Scenario::Slow if (FAILURE_START..self.slow_end).contains(&t) => Answer {
                latency: SLOW_ANSWER,
                ..ok
            },
            _ => ok,
        }
    }
}

/// The in-memory transport: every attempt asks the [`Server`], waits (in tokio time) for the
/// answer's latency, and answers.
#[derive(Clone)]
struct Transport(Arc<Mutex<Server>>);

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<reqwest::Response, palisade::Error>> + Send>>;

impl tower::Service<reqwest::Request> for Transport {
    type Response = reqwest::Response;
    type Error = palisade::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: reqwest::Request) -> Self::Future {
        let answer = self.0.lock().expect("server lock").answer();
        let url = req.url().clone();
        Box::pin(async move {
            tokio::time::sleep(answer.latency).await;
            let mut resp = http::Response::builder().status(answer.status).url(url);
            if answer.retry_after {
                resp = resp.header("retry-after", "1");
            }
            let resp = resp
                .body(Vec::<u8>::new())
                .map_err(|e| palisade::Error::from_source(ErrorKind::Transport, e))?;
            Ok(reqwest::Response::from(resp))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Part 1: the clients and the load
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Standard,
    RetryOnly,
    NoResilience,
}

impl Config {
    const ALL: [Config; 3] = [Config::Standard, Config::RetryOnly, Config::NoResilience];

    fn name(self) -> &'static str {
        match self {
            Config::Standard => "standard",
            Config::RetryOnly => "retry only",
            Config::NoResilience => "none",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Config::Standard => RGBColor(31, 119, 180),
            Config::RetryOnly => RGBColor(230, 110, 0),
            Config::NoResilience => RGBColor(44, 160, 44),
        }
    }

    fn client(self, transport: Transport, log: Arc<Mutex<EventLog>>) -> palisade::Client {
        let start = Instant::now();
        let builder = palisade::Client::builder()
            .transport(transport)
            .total_timeout(TOTAL_TIMEOUT)
            .attempt_timeout(ATTEMPT_TIMEOUT)
            .on_event(move |e| log.lock().expect("event log").record(start, e));
        let builder = match self {
            Config::Standard => builder,
            Config::RetryOnly => builder
                .retry(Retry::default().no_budget())
                .no_circuit_breaker(),
            Config::NoResilience => builder.no_retry().no_circuit_breaker(),
        };
        builder.build().expect("a valid configuration")
    }
}

/// What the client's event hook counted.
#[derive(Default)]
struct EventLog {
    retries: u64,
    budget_refusals: u64,
    circuit_rejections: u64,
    /// The breaker's transitions: when, and the state entered.
    transitions: Vec<(Duration, CircuitState)>,
}

impl EventLog {
    fn record(&mut self, start: Instant, event: &Event<'_>) {
        match event {
            Event::Retry { .. } => self.retries += 1,
            Event::GaveUp { reason, .. } if *reason == GiveUpReason::BudgetExhausted => {
                self.budget_refusals += 1;
            }
            Event::Rejected { kind, .. } if *kind == ErrorKind::CircuitOpen => {
                self.circuit_rejections += 1;
            }
            Event::CircuitStateChanged { to, .. } => {
                self.transitions.push((start.elapsed(), *to));
            }
            _ => {}
        }
    }
}

/// How a request ended, for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    Status(u16),
    CircuitOpen,
    Timeout,
    OtherError,
}

struct Record {
    sent: Duration,
    done: Duration,
    outcome: Outcome,
}

struct Run {
    scenario: Scenario,
    config: Config,
    records: Vec<Record>,
    server: Server,
    log: EventLog,
}

/// Runs one scenario with one client on a fresh paused runtime.
fn simulate(scenario: Scenario, config: Config) -> Result<Run, BoxError> {
    simulate_until(scenario, config, SLOW_END)
}

/// [`simulate`], with the slow spell ending at `slow_end`.
fn simulate_until(scenario: Scenario, config: Config, slow_end: Duration) -> Result<Run, BoxError> {
    // palisade draws its jitter from generators forked from fastrand's thread-local one, and
    // the runtime runs every task on this thread: seeding it makes the run repeatable.
    fastrand::seed(SEED);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(async move {
        let start = Instant::now();
        let server = Arc::new(Mutex::new(Server::new(scenario, start, slow_end)));
        let log = Arc::new(Mutex::new(EventLog::default()));
        let client = config.client(Transport(server.clone()), log.clone());

        let requests = (scenario.length().as_nanos() / TICK.as_nanos()) as u32;
        let mut tasks = Vec::with_capacity(requests as usize);
        for i in 0..requests {
            tokio::time::sleep_until(start + TICK * i).await;
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let sent = start.elapsed();
                let result = client.get(format!("http://api.sim/items/{i}")).send().await;
                let outcome = match result {
                    Ok(r) if r.status().is_success() => Outcome::Success,
                    Ok(r) => Outcome::Status(r.status().as_u16()),
                    Err(e) if e.is_circuit_open() => Outcome::CircuitOpen,
                    Err(e) if e.is_timeout() => Outcome::Timeout,
                    Err(_) => Outcome::OtherError,
                };
                Record {
                    sent,
                    done: start.elapsed(),
                    outcome,
                }
            }));
        }
        let mut records = Vec::with_capacity(tasks.len());
        for task in tasks {
            records.push(task.await?);
        }
        drop(client);
        let server = take(server);
        let log = take(log);
        Ok(Run {
            scenario,
            config,
            records,
            server,
            log,
        })
    })
}

fn take<T>(shared: Arc<Mutex<T>>) -> T {
    match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().expect("lock"),
        Err(_) => panic!("the run still holds a reference"),
    }
}

fn bucket_of(t: Duration) -> usize {
    (t.as_nanos() / BUCKET.as_nanos()) as usize
}

// ---------------------------------------------------------------------------------------------
// Part 1: the measures
// ---------------------------------------------------------------------------------------------

struct Summary {
    scenario: Scenario,
    config: Config,
    offered: usize,
    successes: usize,
    attempts: u64,
    detect: Option<Option<Duration>>,
    recover: Option<Option<Duration>>,
    p50: Duration,
    p99: Duration,
    max: Duration,
    downstream_429: u64,
    caller_429: usize,
    caller_5xx: usize,
    caller_timeouts: usize,
    caller_circuit_open: usize,
    retries: u64,
    budget_refusals: u64,
    first_open: Option<Duration>,
    transitions: usize,
}

/// One second of a run.
struct Second {
    offered: u32,
    attempts: u32,
    successes: u32,
    failures: u32,
}

impl Run {
    fn summary(&self) -> Summary {
        let mut latencies: Vec<Duration> = self.records.iter().map(|r| r.done - r.sent).collect();
        latencies.sort_unstable();
        let count =
            |f: &dyn Fn(Outcome) -> bool| self.records.iter().filter(|r| f(r.outcome)).count();
        let window = self
            .scenario
            .failure_window()
            .map(|(from, to)| match self.scenario {
                Scenario::Slow => (from, self.server.slow_end),
                _ => (from, to),
            });
        Summary {
            scenario: self.scenario,
            config: self.config,
            offered: self.records.len(),
            successes: count(&|o| o == Outcome::Success),
            attempts: self.server.attempts.iter().map(|&a| u64::from(a)).sum(),
            detect: window.map(|(from, to)| self.detect(from, to)),
            recover: window.map(|(_, to)| self.recover(to)),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or_default(),
            downstream_429: self.server.sent_429,
            caller_429: count(&|o| o == Outcome::Status(429)),
            caller_5xx: count(&|o| matches!(o, Outcome::Status(s) if s >= 500)),
            caller_timeouts: count(&|o| o == Outcome::Timeout),
            caller_circuit_open: count(&|o| o == Outcome::CircuitOpen),
            retries: self.log.retries,
            budget_refusals: self.log.budget_refusals,
            first_open: self
                .log
                .transitions
                .iter()
                .find(|(_, s)| *s == CircuitState::Open)
                .map(|(t, _)| *t),
            transitions: self.log.transitions.len(),
        }
    }

    /// Requests sent per 100 ms.
    fn offered_per_bucket(&self) -> Vec<u32> {
        let mut v = vec![0u32; bucket_of(self.scenario.length()) + 1];
        for r in &self.records {
            v[bucket_of(r.sent)] += 1;
        }
        v
    }

    /// The end of the first 100 ms interval of the failure in which the server got at most
    /// 10 % as many attempts as requests were offered, from the failure's start.
    fn detect(&self, from: Duration, to: Duration) -> Option<Duration> {
        let offered = self.offered_per_bucket();
        (bucket_of(from)..bucket_of(to))
            .find(|&b| {
                let attempts = self.server.attempts.get(b).copied().unwrap_or(0);
                offered[b] > 0 && attempts * 10 <= offered[b]
            })
            .map(|b| BUCKET * (b as u32 + 1) - from)
    }

    /// The end of the first 100 ms interval after the failure whose requests succeeded at
    /// least 95 % of the time, from the failure's end.
    fn recover(&self, to: Duration) -> Option<Duration> {
        let buckets = bucket_of(self.scenario.length()) + 1;
        let mut sent = vec![0u32; buckets];
        let mut ok = vec![0u32; buckets];
        for r in &self.records {
            sent[bucket_of(r.sent)] += 1;
            if r.outcome == Outcome::Success {
                ok[bucket_of(r.sent)] += 1;
            }
        }
        (bucket_of(to)..buckets)
            .find(|&b| sent[b] > 0 && ok[b] * 100 >= sent[b] * 95)
            .map(|b| BUCKET * (b as u32 + 1) - to)
    }

    /// The run second by second, until the last attempt or answer.
    fn per_second(&self) -> Vec<Second> {
        let per = (Duration::from_secs(1).as_nanos() / BUCKET.as_nanos()) as usize;
        let last_done = self
            .records
            .iter()
            .map(|r| r.done)
            .max()
            .unwrap_or_default();
        let seconds = (self.server.attempts.len().div_ceil(per))
            .max(last_done.as_secs() as usize + 1)
            .max(self.scenario.length().as_secs() as usize);
        let mut v: Vec<Second> = (0..seconds)
            .map(|s| Second {
                offered: 0,
                attempts: self.server.attempts.iter().skip(s * per).take(per).sum(),
                successes: 0,
                failures: 0,
            })
            .collect();
        for r in &self.records {
            v[r.sent.as_secs() as usize].offered += 1;
            let done = &mut v[r.done.as_secs() as usize];
            if r.outcome == Outcome::Success {
                done.successes += 1;
            } else {
                done.failures += 1;
            }
        }
        v
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn fmt_latency(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn fmt_window(m: Option<Option<Duration>>) -> String {
    match m {
        None => "–".to_owned(),
        Some(None) => "never".to_owned(),
        Some(Some(d)) => format!("{:.1} s", d.as_secs_f64()),
    }
}

fn csv_window(m: Option<Option<Duration>>) -> String {
    match m {
        None => String::new(),
        Some(None) => "never".to_owned(),
        Some(Some(d)) => format!("{:.1}", d.as_secs_f64()),
    }
}

fn print_scenarios(summaries: &[Summary]) {
    println!("# Behaviour under failure (paused time, 100 requests/s offered)\n");
    println!(
        "timeouts for every client: total {} s, attempt {} s. standard = Client::builder() \
         (retry 3 attempts + budget, circuit breaker); retry only = 3 attempts, no budget, \
         no breaker; none = no retry, no breaker.\n",
        TOTAL_TIMEOUT.as_secs(),
        ATTEMPT_TIMEOUT.as_secs()
    );
    for scenario in Scenario::ALL {
        println!("- {}: {}", scenario.key(), scenario.describe());
    }
    println!();
    println!(
        "| scenario | client | success | amplification | detect | recover | p50 | p99 | 429s down / to caller |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in summaries {
        println!(
            "| {} | {} | {:.1} % | {:.2}× | {} | {} | {} | {} | {} / {} |",
            s.scenario.key(),
            s.config.name(),
            100.0 * s.successes as f64 / s.offered as f64,
            s.attempts as f64 / s.offered as f64,
            fmt_window(s.detect),
            fmt_window(s.recover),
            fmt_latency(s.p50),
            fmt_latency(s.p99),
            s.downstream_429,
            s.caller_429,
        );
    }
    println!();
    println!("What the clients did (from palisade's event hook) and how the failures ended:\n");
    println!(
        "| scenario | client | requests | attempts | retries | budget refusals | breaker opened | breaker transitions | failed: 5xx / 429 / timeout / circuit open |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in summaries {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} / {} |",
            s.scenario.key(),
            s.config.name(),
            s.offered,
            s.attempts,
            s.retries,
            s.budget_refusals,
            s.first_open
                .map(|t| format!("at {:.1} s", t.as_secs_f64()))
                .unwrap_or_else(|| "–".to_owned()),
            s.transitions,
            s.caller_5xx,
            s.caller_429,
            s.caller_timeouts,
            s.caller_circuit_open,
        );
    }
}

fn write_scenarios_csv(path: &Path, summaries: &[Summary]) -> Result<(), BoxError> {
    let mut csv = String::from(
        "scenario,client,offered,successes,success_rate,downstream_attempts,amplification,\
         detect_s,recover_s,p50_ms,p99_ms,max_ms,downstream_429,caller_429,caller_5xx,\
         caller_timeouts,caller_circuit_open,retries,budget_refusals,breaker_first_open_s,\
         breaker_transitions\n",
    );
    for s in summaries {
        writeln!(
            csv,
            "{},{},{},{},{:.4},{},{:.4},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.scenario.key(),
            s.config.name(),
            s.offered,
            s.successes,
            s.successes as f64 / s.offered as f64,
            s.attempts,
            s.attempts as f64 / s.offered as f64,
            csv_window(s.detect),
            csv_window(s.recover),
            s.p50.as_millis(),
            s.p99.as_millis(),
            s.max.as_millis(),
            s.downstream_429,
            s.caller_429,
            s.caller_5xx,
            s.caller_timeouts,
            s.caller_circuit_open,
            s.retries,
            s.budget_refusals,
            s.first_open
                .map(|t| format!("{:.3}", t.as_secs_f64()))
                .unwrap_or_default(),
            s.transitions,
        )?;
    }
    std::fs::write(path, csv)?;
    Ok(())
}

fn write_timeseries_csv(path: &Path, series: &[(Config, Vec<Second>)]) -> Result<(), BoxError> {
    let mut csv = String::from(
        "client,second,offered,downstream_attempts,caller_successes,caller_failures\n",
    );
    for (config, seconds) in series {
        for (i, s) in seconds.iter().enumerate() {
            writeln!(
                csv,
                "{},{},{},{},{},{}",
                config.name(),
                i,
                s.offered,
                s.attempts,
                s.successes,
                s.failures
            )?;
        }
    }
    std::fs::write(path, csv)?;
    Ok(())
}

fn plot_outage(path: &Path, series: &[(Config, Vec<Second>)]) -> Result<(), BoxError> {
    let root = SVGBackend::new(path, (960, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let x_max = Scenario::Outage.length().as_secs_f64();
    let shade = RGBColor(214, 39, 40).mix(0.10).filled();
    type Panel<'a, 'b> = (
        &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
        &'static str,
        &'static str,
        fn(&Second) -> u32,
        SeriesLabelPosition,
    );
    let panels: [Panel<'_, '_>; 2] = [
        (
            &top,
            "Attempts reaching the server through a 60 s outage (100 requests/s offered)",
            "attempts per second",
            |s| s.attempts,
            SeriesLabelPosition::UpperRight,
        ),
        (
            &bottom,
            "Successes seen by the caller (by the time they got them)",
            "successes per second",
            |s| s.successes,
            // In the outage, where every line is at zero.
            SeriesLabelPosition::MiddleMiddle,
        ),
    ];
    for (area, caption, y_desc, value, legend) in panels {
        let y_top = series
            .iter()
            .flat_map(|(_, v)| v.iter().take(x_max as usize).map(value))
            .max()
            .unwrap_or(1);
        let y_max = (f64::from(y_top) * 1.12 / 50.0).ceil() * 50.0;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 20))
            .margin(14)
            .margin_right(30)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc(y_desc)
            .x_labels(16)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(RGBColor(240, 240, 240))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        let (from, to) = (FAILURE_START.as_secs_f64(), OUTAGE_END.as_secs_f64());
        chart.draw_series(std::iter::once(Rectangle::new(
            [(from, 0.0), (to, y_max)],
            shade,
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            "outage: every attempt gets 503",
            (from + 1.0, y_max * 0.97),
            ("sans-serif", 14).into_font().color(&RGBColor(150, 30, 30)),
        )))?;
        for (config, seconds) in series {
            let color = config.color();
            chart
                .draw_series(LineSeries::new(
                    seconds
                        .iter()
                        .enumerate()
                        .take(x_max as usize)
                        .map(|(i, s)| (i as f64 + 0.5, f64::from(value(s)))),
                    color.stroke_width(2),
                ))?
                .label(config.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        let offered = RGBColor(70, 70, 70);
        if let Some((_, seconds)) = series.first() {
            chart
                .draw_series(DashedLineSeries::new(
                    seconds
                        .iter()
                        .enumerate()
                        .take(x_max as usize)
                        .map(|(i, s)| (i as f64 + 0.5, f64::from(s.offered))),
                    6,
                    4,
                    offered.stroke_width(1),
                ))?
                .label("offered")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], offered));
        }
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The slow scenario with its spell ending anywhere from 55 s to 65 s (41 runs, 250 ms apart):
/// where the breaker's probes fall when the host recovers decides how soon traffic returns,
/// so one run says little. Standard and none only.
fn slow_sweep(path: &Path) -> Result<(), BoxError> {
    let break_duration = Duration::from_secs(5);
    let mut csv = String::from("slow_end_s,standard_success,none_success,standard_recover_s\n");
    let (mut within, mut at_least_none, mut n) = (0, 0, 0u32);
    let (mut sum_recover, mut worst) = (Duration::ZERO, Duration::ZERO);
    let mut sum_diff = 0i64;
    for k in 0..=40u32 {
        let end = Duration::from_secs(55) + Duration::from_millis(250) * k;
        let standard = simulate_until(Scenario::Slow, Config::Standard, end)?.summary();
        let none = simulate_until(Scenario::Slow, Config::NoResilience, end)?.summary();
        let recover = standard.recover.flatten().unwrap_or(Duration::MAX);
        writeln!(
            csv,
            "{:.2},{},{},{}",
            end.as_secs_f64(),
            standard.successes,
            none.successes,
            csv_window(standard.recover)
        )?;
        n += 1;
        // The measure's resolution is its 100 ms interval.
        within += u32::from(recover <= break_duration + BUCKET);
        at_least_none += u32::from(standard.successes >= none.successes);
        sum_diff += standard.successes as i64 - none.successes as i64;
        sum_recover = sum_recover.saturating_add(recover);
        worst = worst.max(recover);
    }
    std::fs::write(path, csv)?;
    println!(
        "\nslow, spell ending anywhere from 55 s to 65 s ({n} runs, 250 ms apart), standard: \
         recovery mean {:.1} s, worst {:.1} s, within one break (5 s, + 0.1 s of the measure's resolution) in {within} of {n}; \
         successes at least none's in {at_least_none} of {n}, {:+.0} requests on average",
        sum_recover.as_secs_f64() / f64::from(n),
        worst.as_secs_f64(),
        sum_diff as f64 / f64::from(n),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Part 2: the contention experiment
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// Retry at once: the post's first, worst case.
    NoBackoff,
    /// palisade's backoff with this jitter.
    Backoff(Jitter),
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Backoff(Jitter::None),
        Variant::Backoff(Jitter::Full),
        Variant::Backoff(Jitter::Equal),
        Variant::Backoff(Jitter::Decorrelated),
        Variant::NoBackoff,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::NoBackoff => "no backoff",
            Variant::Backoff(Jitter::None) => "no jitter",
            Variant::Backoff(Jitter::Full) => "full jitter",
            Variant::Backoff(Jitter::Equal) => "equal jitter",
            Variant::Backoff(Jitter::Decorrelated) => "decorrelated",
            Variant::Backoff(_) => "other jitter",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Variant::NoBackoff => RGBColor(150, 150, 150),
            Variant::Backoff(Jitter::None) => RGBColor(214, 39, 40),
            Variant::Backoff(Jitter::Full) => RGBColor(31, 119, 180),
            Variant::Backoff(Jitter::Equal) => RGBColor(44, 160, 44),
            Variant::Backoff(_) => RGBColor(148, 103, 189),
        }
    }

    /// The delay before retry `n` (from 1), given the previous one.
    fn delay(self, n: u32, prev: Duration, rng: &mut fastrand::Rng) -> Duration {
        match self {
            Variant::NoBackoff => Duration::ZERO,
            Variant::Backoff(jitter) => {
                Backoff::new(Duration::from_millis(5), Duration::from_secs(2))
                    .jitter(jitter)
                    .delay(n, prev, rng)
            }
        }
    }
}

/// The clients in the contention experiment.
const CLIENTS: [u32; 19] = [
    10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190,
];

struct ContentionRow {
    variant: Variant,
    clients: u32,
    calls: f64,
    time_ms: f64,
}

fn contention_experiment() -> Vec<ContentionRow> {
    let mut rows = Vec::new();
    for (v, variant) in Variant::ALL.into_iter().enumerate() {
        for clients in CLIENTS {
            let (mut calls, mut time) = (0u64, Duration::ZERO);
            for run in 0..CONTENTION_RUNS {
                let seed = SEED ^ ((v as u64) << 48) ^ (u64::from(clients) << 24) ^ run;
                let (c, t) = contend(clients, variant, seed);
                calls += c;
                time += t;
            }
            rows.push(ContentionRow {
                variant,
                clients,
                calls: calls as f64 / CONTENTION_RUNS as f64,
                time_ms: time.as_secs_f64() * 1e3 / CONTENTION_RUNS as f64,
            });
        }
    }
    rows
}

/// A message that reaches the server.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Msg {
    /// A read of the row's version.
    Read,
    /// A write conditional on this version.
    Write(u64),
}

/// One run of the experiment: `clients` clients each write the row once. Returns the write
/// calls and the time until the last client learnt that its write succeeded.
///
/// Only arrivals at the server are events: a client acts on an answer as soon as it gets it
/// (it writes right after its read, backs off right after a failed write), so the hop back
/// to the client and the next hop out are drawn when the server answers.
fn contend(clients: u32, variant: Variant, seed: u64) -> (u64, Duration) {
    let mut rng = fastrand::Rng::with_seed(seed);
    // (arrival in ns, a sequence number for a stable order, client, message), earliest first.
    let mut queue: BinaryHeap<Reverse<(u64, u64, u32, Msg)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut send = |queue: &mut BinaryHeap<_>, at: u64, client: u32, msg: Msg| {
        seq += 1;
        queue.push(Reverse((at, seq, client, msg)));
    };
    let base = Duration::from_millis(5);
    let mut attempt = vec![0u32; clients as usize];
    let mut prev = vec![base; clients as usize];
    for c in 0..clients {
        let at = network_delay(&mut rng);
        send(&mut queue, at, c, Msg::Read);
    }
    let (mut version, mut calls, mut done) = (0u64, 0u64, 0u64);
    while let Some(Reverse((now, _, c, msg))) = queue.pop() {
        match msg {
            Msg::Read => {
                // The version goes back to the client, whose write comes at once.
                let at = now + network_delay(&mut rng) + network_delay(&mut rng);
                send(&mut queue, at, c, Msg::Write(version));
            }
            Msg::Write(v) => {
                calls += 1;
                let answered = now + network_delay(&mut rng);
                if v == version {
                    version += 1;
                    done = done.max(answered);
                } else {
                    let i = c as usize;
                    attempt[i] += 1;
                    let d = variant.delay(attempt[i], prev[i], &mut rng);
                    prev[i] = d;
                    let at = answered + d.as_nanos() as u64 + network_delay(&mut rng);
                    send(&mut queue, at, c, Msg::Read);
                }
            }
        }
    }
    (calls, Duration::from_nanos(done))
}

/// A network hop: `|N(10 ms, 2 ms)|`, in nanoseconds (Box–Muller).
fn network_delay(rng: &mut fastrand::Rng) -> u64 {
    let u1 = 1.0 - rng.f64(); // in (0, 1]
    let u2 = rng.f64();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    ((10.0 + 2.0 * z).abs() * 1e6) as u64
}

fn find(rows: &[ContentionRow], variant: Variant, clients: u32) -> &ContentionRow {
    rows.iter()
        .find(|r| r.variant == variant && r.clients == clients)
        .expect("every variant and N was run")
}

fn print_contention(rows: &[ContentionRow]) {
    println!(
        "\n# Contention (AWS \"Exponential Backoff And Jitter\"): N clients, one row, OCC writes, \
         network |N(10 ms, 2 ms)|, backoff base 5 ms, cap 2 s, mean of {CONTENTION_RUNS} runs\n"
    );
    for (title, unit, get) in [
        (
            "Calls (conditional writes) until every client has written",
            "",
            (|r: &ContentionRow| r.calls) as fn(&ContentionRow) -> f64,
        ),
        ("Time until every client has written", " ms", |r| r.time_ms),
    ] {
        println!("{title} (in brackets: relative to no jitter)\n");
        let mut head = String::from("| N |");
        let mut rule = String::from("|---:|");
        for v in Variant::ALL {
            write!(head, " {} |", v.name()).expect("a String");
            rule.push_str("---:|");
        }
        println!("{head}\n{rule}");
        for clients in CLIENTS {
            let reference = get(find(rows, Variant::Backoff(Jitter::None), clients));
            let mut line = format!("| {clients} |");
            for v in Variant::ALL {
                let x = get(find(rows, v, clients));
                if v == Variant::Backoff(Jitter::None) {
                    write!(line, " {x:.0}{unit} |")
                } else {
                    write!(line, " {x:.0}{unit} ({:.2}) |", x / reference)
                }
                .expect("a String");
            }
            println!("{line}");
        }
        println!();
    }
}

fn write_contention_csv(path: &Path, rows: &[ContentionRow]) -> Result<(), BoxError> {
    let mut csv = String::from("variant,clients,runs,mean_calls,mean_time_ms\n");
    for r in rows {
        writeln!(
            csv,
            "{},{},{},{:.2},{:.2}",
            r.variant.name(),
            r.clients,
            CONTENTION_RUNS,
            r.calls,
            r.time_ms
        )?;
    }
    std::fs::write(path, csv)?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    Calls,
    Time,
}

fn plot_contention(path: &Path, rows: &[ContentionRow], measure: Measure) -> Result<(), BoxError> {
    match measure {
        // Linear, as in the post: the work saved by jitter is the gap between the lines.
        Measure::Calls => {
            let top = rows.iter().map(|r| r.calls).fold(0.0, f64::max);
            let y_max = (top * 1.05 / 1000.0).ceil() * 1000.0;
            contention_chart(
                path,
                0f64..y_max,
                &format!(
                    "Calls until N contending clients have all written (mean of {CONTENTION_RUNS} runs)"
                ),
                "calls (conditional writes)",
                rows,
                |r| r.calls,
            )
        }
        // Logarithmic: without jitter it takes ten times longer than with any.
        Measure::Time => {
            let lo = rows.iter().map(|r| r.time_ms).fold(f64::INFINITY, f64::min);
            let hi = rows.iter().map(|r| r.time_ms).fold(0.0, f64::max);
            let range = 10f64.powf(lo.log10().floor())..10f64.powf(hi.log10().ceil());
            contention_chart(
                path,
                range.log_scale(),
                &format!(
                    "Time until N contending clients have all written (mean of {CONTENTION_RUNS} runs)"
                ),
                "completion time (ms), log scale",
                rows,
                |r| r.time_ms,
            )
        }
    }
}

fn contention_chart<Y>(
    path: &Path,
    y_spec: Y,
    caption: &str,
    y_desc: &str,
    rows: &[ContentionRow],
    get: fn(&ContentionRow) -> f64,
) -> Result<(), BoxError>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(14)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..200f64, y_spec)?;
    chart
        .configure_mesh()
        .x_desc("clients (N)")
        .y_desc(y_desc)
        .x_labels(20)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(RGBColor(240, 240, 240))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    for variant in Variant::ALL {
        let color = variant.color();
        let points: Vec<(f64, f64)> = CLIENTS
            .iter()
            .map(|&n| (f64::from(n), get(find(rows, variant, n))))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(variant.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Part 3: hedging against a heavy tail
// ---------------------------------------------------------------------------------------------

/// How much slower than the rest a slow answer is.
const TAIL_FACTOR: u32 = 50;
/// The slow spell of the `slow_spell` scenario: every answer slow.
const SPELL_START: Duration = Duration::from_secs(30);
const SPELL_END: Duration = Duration::from_secs(60);

/// What the heavy-tailed server does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    /// 1 % of answers are 50× slower.
    OnePercent,
    /// 2 % of answers are 50× slower.
    TwoPercent,
    /// Every answer is 50× slower from 30 s to 60 s.
    SlowSpell,
}

impl Tail {
    const ALL: [Tail; 3] = [Tail::OnePercent, Tail::TwoPercent, Tail::SlowSpell];

    fn key(self) -> &'static str {
        match self {
            Tail::OnePercent => "tail1",
            Tail::TwoPercent => "tail2",
            Tail::SlowSpell => "slow_spell",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Tail::OnePercent => "1 % of answers 50× slower (250–750 ms instead of 5–15 ms)",
            Tail::TwoPercent => "2 % of answers 50× slower",
            Tail::SlowSpell => "every answer 50× slower from 30 s to 60 s",
        }
    }

    fn length(self) -> Duration {
        match self {
            Tail::SlowSpell => Duration::from_secs(120),
            _ => Duration::from_secs(200),
        }
    }

    /// Whether an answer at `t` is slow.
    fn slow(self, t: Duration, rng: &mut fastrand::Rng) -> bool {
        match self {
            Tail::OnePercent => rng.f64() < 0.01,
            Tail::TwoPercent => rng.f64() < 0.02,
            Tail::SlowSpell => (SPELL_START..SPELL_END).contains(&t),
        }
    }
}

/// The two clients of the experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HedgeConfig {
    /// `Client::builder()` as it comes: no hedging.
    Off,
    /// The same with `.hedging(Hedging::at_quantile(0.95))`.
    P95,
}

impl HedgeConfig {
    const ALL: [HedgeConfig; 2] = [HedgeConfig::Off, HedgeConfig::P95];

    fn name(self) -> &'static str {
        match self {
            HedgeConfig::Off => "standard",
            HedgeConfig::P95 => "hedged at p95",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            HedgeConfig::Off => RGBColor(230, 110, 0),
            HedgeConfig::P95 => RGBColor(31, 119, 180),
        }
    }
}

/// The heavy-tailed server: attempts received per second, and how long each answer takes.
struct TailServer {
    tail: Tail,
    start: Instant,
    rng: fastrand::Rng,
    attempts: Vec<u32>,
}

impl TailServer {
    fn answer(&mut self) -> Duration {
        let t = Instant::now().saturating_duration_since(self.start);
        let second = t.as_secs() as usize;
        if self.attempts.len() <= second {
            self.attempts.resize(second + 1, 0);
        }
        self.attempts[second] += 1;
        let latency = Duration::from_micros(self.rng.u64(5_000..=15_000));
        if self.tail.slow(t, &mut self.rng) {
            latency * TAIL_FACTOR
        } else {
            latency
        }
    }
}

#[derive(Clone)]
struct TailTransport(Arc<Mutex<TailServer>>);

impl tower::Service<reqwest::Request> for TailTransport {
    type Response = reqwest::Response;
    type Error = palisade::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: reqwest::Request) -> Self::Future {
        let latency = self.0.lock().expect("server lock").answer();
        let url = req.url().clone();
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            let resp = http::Response::builder()
                .status(200)
                .url(url)
                .body(Vec::<u8>::new())
                .map_err(|e| palisade::Error::from_source(ErrorKind::Transport, e))?;
            Ok(reqwest::Response::from(resp))
        })
    }
}

/// What the event hook counted of the hedges.
#[derive(Default)]
struct HedgeLog {
    sent: u64,
    /// Races won by the first attempt (the hedge did not help) and by the hedge.
    won_by_first: u64,
    won_by_hedge: u64,
}

struct TailRun {
    tail: Tail,
    config: HedgeConfig,
    /// Each request's latency, sorted.
    latencies: Vec<Duration>,
    failures: usize,
    attempts_per_second: Vec<u32>,
    log: HedgeLog,
}

/// Runs one heavy-tail scenario with one client on a fresh paused runtime.
fn simulate_tail(tail: Tail, config: HedgeConfig) -> Result<TailRun, BoxError> {
    fastrand::seed(SEED);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(async move {
        let start = Instant::now();
        let server = Arc::new(Mutex::new(TailServer {
            tail,
            start,
            rng: fastrand::Rng::with_seed(SEED),
            attempts: Vec::new(),
        }));
        let log = Arc::new(Mutex::new(HedgeLog::default()));
        let hook_log = log.clone();
        let builder = palisade::Client::builder()
            .transport(TailTransport(server.clone()))
            .on_event(move |e| {
                let mut log = hook_log.lock().expect("hedge log");
                match e {
                    Event::Hedge { .. } => log.sent += 1,
                    Event::HedgeWon { attempt: 1, .. } => log.won_by_first += 1,
                    Event::HedgeWon { .. } => log.won_by_hedge += 1,
                    _ => {}
                }
            });
        let client = match config {
            HedgeConfig::Off => builder,
            HedgeConfig::P95 => builder.hedging(Hedging::at_quantile(0.95)),
        }
        .build()?;

        let requests = (tail.length().as_nanos() / TICK.as_nanos()) as u32;
        let mut tasks = Vec::with_capacity(requests as usize);
        for i in 0..requests {
            tokio::time::sleep_until(start + TICK * i).await;
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let ok = client
                    .get(format!("http://api.sim/items/{i}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                (sent.elapsed(), ok)
            }));
        }
        let mut latencies = Vec::with_capacity(tasks.len());
        let mut failures = 0;
        for task in tasks {
            let (latency, ok) = task.await?;
            latencies.push(latency);
            failures += usize::from(!ok);
        }
        latencies.sort_unstable();
        drop(client);
        let server = take(server);
        Ok(TailRun {
            tail,
            config,
            latencies,
            failures,
            attempts_per_second: server.attempts,
            log: take(log),
        })
    })
}

impl TailRun {
    fn requests(&self) -> usize {
        self.latencies.len()
    }

    fn attempts(&self) -> u64 {
        self.attempts_per_second.iter().map(|&a| u64::from(a)).sum()
    }

    /// Attempts the server received per request offered, less one.
    fn extra_load(&self) -> f64 {
        self.attempts() as f64 / self.requests() as f64 - 1.0
    }

    fn p(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }
}

fn hedging_experiment(out: &Path) -> Result<(), BoxError> {
    let mut runs = Vec::new();
    for tail in Tail::ALL {
        for config in HedgeConfig::ALL {
            runs.push(simulate_tail(tail, config)?);
        }
    }
    print_hedging(&runs);
    write_hedging_csv(&out.join("hedging.csv"), &runs)?;
    plot_hedging(&out.join("hedging.svg"), &runs)?;
    Ok(())
}

fn find_run(runs: &[TailRun], tail: Tail, config: HedgeConfig) -> &TailRun {
    runs.iter()
        .find(|r| r.tail == tail && r.config == config)
        .expect("every scenario and client was run")
}

fn print_hedging(runs: &[TailRun]) {
    println!(
        "\n# Hedging against a heavy tail (paused time, 100 requests/s offered, answers 5–15 ms)\n"
    );
    println!(
        "standard = Client::builder(); hedged at p95 = the same with \
         .hedging(Hedging::at_quantile(0.95)) (one hedge after the host's recent p95).\n"
    );
    for tail in Tail::ALL {
        println!("- {}: {}", tail.key(), tail.describe());
    }
    println!();
    println!(
        "| scenario | client | p50 | p95 | p99 | p99.9 | max | attempts per request | hedges sent | won by the hedge / by the first |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {} | {} / {} |",
            r.tail.key(),
            r.config.name(),
            fmt_latency(r.p(0.50)),
            fmt_latency(r.p(0.95)),
            fmt_latency(r.p(0.99)),
            fmt_latency(r.p(0.999)),
            fmt_latency(r.latencies.last().copied().unwrap_or_default()),
            1.0 + r.extra_load(),
            r.log.sent,
            r.log.won_by_hedge,
            r.log.won_by_first,
        );
    }
    println!();
    for tail in Tail::ALL {
        let (off, on) = (
            find_run(runs, tail, HedgeConfig::Off),
            find_run(runs, tail, HedgeConfig::P95),
        );
        let cut = |q: f64| off.p(q).as_secs_f64() / on.p(q).as_secs_f64().max(1e-9);
        println!(
            "- {}: hedging cuts p99 {:.1}× and p99.9 {:.1}× for {:+.1} % load ({} failed requests without hedging, {} with)",
            tail.key(),
            cut(0.99),
            cut(0.999),
            100.0 * (on.attempts() as f64 / off.attempts() as f64 - 1.0),
            off.failures,
            on.failures,
        );
    }
    // The slow spell, second by second: how far hedges raise the load while every answer is
    // slow, before the estimate learns the host's new latency.
    let on = find_run(runs, Tail::SlowSpell, HedgeConfig::P95);
    let spell = SPELL_START.as_secs() as usize..SPELL_END.as_secs() as usize;
    let seconds = &on.attempts_per_second[spell.clone()];
    let offered = 1e9 / TICK.as_nanos() as f64;
    let sum: u32 = seconds.iter().sum();
    let peak = seconds.iter().copied().max().unwrap_or(0);
    let back = seconds
        .iter()
        .position(|&a| f64::from(a) <= offered * 1.1)
        .map_or("never".to_owned(), |i| format!("{i} s"));
    println!(
        "- slow_spell, hedged, during the spell: {:+.1} % load, {:+.0} % in its worst second; within 10 % of the offered load {back} after it began",
        100.0 * (f64::from(sum) / (offered * seconds.len() as f64) - 1.0),
        100.0 * (f64::from(peak) / offered - 1.0),
    );
}

fn write_hedging_csv(path: &Path, runs: &[TailRun]) -> Result<(), BoxError> {
    let mut csv = String::from(
        "scenario,client,requests,failures,downstream_attempts,attempts_per_request,\
         p50_ms,p95_ms,p99_ms,p999_ms,max_ms,hedges_sent,won_by_hedge,won_by_first\n",
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for r in runs {
        writeln!(
            csv,
            "{},{},{},{},{},{:.4},{:.1},{:.1},{:.1},{:.1},{:.1},{},{},{}",
            r.tail.key(),
            r.config.name(),
            r.requests(),
            r.failures,
            r.attempts(),
            1.0 + r.extra_load(),
            ms(r.p(0.50)),
            ms(r.p(0.95)),
            ms(r.p(0.99)),
            ms(r.p(0.999)),
            ms(r.latencies.last().copied().unwrap_or_default()),
            r.log.sent,
            r.log.won_by_hedge,
            r.log.won_by_first,
        )?;
    }
    std::fs::write(path, csv)?;
    Ok(())
}

/// Top: the share of requests slower than each latency (log–log), for the two tails, with and
/// without hedging. Bottom: attempts per second at the server through the slow spell.
fn plot_hedging(path: &Path, runs: &[TailRun]) -> Result<(), BoxError> {
    let root = SVGBackend::new(path, (960, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(520);

    let mut chart = ChartBuilder::on(&top)
        .caption(
            "Share of requests slower than x: 1 % and 2 % of answers 50× slower",
            ("sans-serif", 20),
        )
        .margin(14)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((4f64..1000f64).log_scale(), (1e-5f64..1f64).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("latency (ms), log scale")
        .y_desc("share of requests slower, log scale")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .light_line_style(RGBColor(240, 240, 240))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    for (tail, dashed) in [(Tail::OnePercent, false), (Tail::TwoPercent, true)] {
        for config in HedgeConfig::ALL {
            let run = find_run(runs, tail, config);
            let n = run.latencies.len() as f64;
            // One point per distinct latency: the share of requests slower than it.
            let mut points: Vec<(f64, f64)> = Vec::new();
            for (i, d) in run.latencies.iter().enumerate() {
                let x = d.as_secs_f64() * 1e3;
                let slower = (run.latencies.len() - i - 1) as f64 / n;
                match points.last_mut() {
                    Some(p) if p.0 == x => p.1 = slower,
                    _ => points.push((x, slower)),
                }
            }
            points.retain(|p| p.1 > 0.0);
            let color = config.color();
            let label = format!("{}, {}", tail.key(), config.name());
            let style = color.stroke_width(2);
            if dashed {
                chart
                    .draw_series(DashedLineSeries::new(points, 6, 4, style))?
                    .label(label)
                    .legend(move |(x, y)| {
                        EmptyElement::at((x, y))
                            + PathElement::new(vec![(0, 0), (7, 0)], color.stroke_width(2))
                            + PathElement::new(vec![(12, 0), (20, 0)], color.stroke_width(2))
                    });
            } else {
                chart
                    .draw_series(LineSeries::new(points, style))?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
        }
    }
    for (q, name) in [(0.01, "p99"), (0.001, "p99.9")] {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(4.0, q), (1000.0, q)],
            RGBColor(160, 160, 160),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            name,
            (4.3, q * 1.25),
            ("sans-serif", 13)
                .into_font()
                .color(&RGBColor(110, 110, 110)),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 14))
        .draw()?;

    let length = Tail::SlowSpell.length().as_secs_f64();
    // The hedged client first, so that the standard one's flat line shows on top of it.
    let series: Vec<(HedgeConfig, &[u32])> = HedgeConfig::ALL
        .iter()
        .rev()
        .map(|&c| {
            (
                c,
                &find_run(runs, Tail::SlowSpell, c).attempts_per_second[..],
            )
        })
        .collect();
    let y_top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(1);
    let y_max = (f64::from(y_top) * 1.15 / 50.0).ceil() * 50.0;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "Attempts reaching the server when every answer is 50× slower (30–60 s)",
            ("sans-serif", 20),
        )
        .margin(14)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..length, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("attempts per second")
        .x_labels(13)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(RGBColor(240, 240, 240))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    chart.draw_series(std::iter::once(Rectangle::new(
        [
            (SPELL_START.as_secs_f64(), 0.0),
            (SPELL_END.as_secs_f64(), y_max),
        ],
        RGBColor(214, 39, 40).mix(0.10).filled(),
    )))?;
    for (config, seconds) in series {
        let color = config.color();
        chart
            .draw_series(LineSeries::new(
                seconds
                    .iter()
                    .enumerate()
                    .take(length as usize)
                    .map(|(i, &a)| (i as f64 + 0.5, f64::from(a))),
                color.stroke_width(2),
            ))?
            .label(config.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
