//! palisade against a flaky server, in about seven seconds.
//!
//! The example starts a small HTTP/1.1 server on a random loopback port. The server goes
//! through four phases, by the time since the start:
//!
//! 1. **healthy** (0–1.5 s): every request gets `200 OK`;
//! 2. **degraded** (1.5–4 s): 30 % of requests get `503 Service Unavailable`, 10 % have their
//!    connection reset (TCP RST) and 5 % are answered only after 1.5 s, past the client's 1 s
//!    attempt timeout;
//! 3. **throttling** (4–5.5 s): every request gets `429 Too Many Requests` with
//!    `Retry-After: 1`;
//! 4. **recovered** (from 5.5 s): every request gets `200 OK` again.
//!
//! A palisade client sends 50 GET requests a second to it for 7 s, each on its own task,
//! whatever happened to the earlier ones (open-loop load, as from many independent users). It
//! uses a 5 s total timeout, a 1 s attempt timeout and the default retry policy (3 attempts,
//! exponential backoff with full jitter, `Retry-After`, retry budget) with a shorter backoff.
//!
//! What to look for:
//!
//! - while degraded, retries turn most 503s, resets and slow answers into successes;
//! - while throttling, the client waits the full second the server asks for before retrying;
//! - the retry budget (retries may add 20 % to the load, plus 10 a second) refuses some of
//!   those retries, so the server sees a bounded amount of extra load rather than three
//!   attempts for every request;
//! - the attempts the server counted match the attempts palisade reports through
//!   `ResponseExt::attempts` and `Error::attempts`.
//!
//! It prints a progress line every second and a summary at the end. Set `RUST_LOG` to see
//! palisade's own `tracing` events, one per attempt, retry and timeout:
//!
//! ```text
//! RUST_LOG=palisade=debug cargo run --example demo
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade::retry::{Backoff, Retry};
use palisade::{Event, GiveUpReason, ResponseExt, TimeoutKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Requests the client starts per second.
const RATE: u32 = 50;
/// For how many seconds the client sends.
const SEND_SECS: u32 = 7;
/// How long a slow answer of the degraded phase takes: longer than the attempt timeout.
const SLOW_ANSWER: Duration = Duration::from_millis(1500);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // palisade logs through `tracing`; show it only when asked, to keep the demo's output short.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }

    let start = Instant::now();
    let server = Arc::new(ServerStats::default());
    let addr = start_server(start, server.clone()).await?;

    // Count what the pipeline does through the event hook: plain atomics, no tracing needed.
    let events = Arc::new(EventCounts::default());
    let hook_counts = events.clone();
    let client = palisade::Client::builder()
        .total_timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(1))
        .retry(Retry::default().backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(1),
        )))
        .on_event(move |event| hook_counts.record(event))
        .build()?;

    println!("flaky server on http://{addr}");
    println!("client: {client:?}");
    println!("sending {RATE} requests/s for {SEND_SECS} s");
    println!("(attempts: requests the server received; refused: retries the budget refused)\n");
    println!(
        "{:>6}  {:<10}  {:>5}  {:>5}  {:>5}  {:>5}  {:>8}  {:>7}  {:>7}",
        "time", "phase", "sent", "done", "ok", "fail", "attempts", "retries", "refused"
    );

    let progress = Arc::new(Progress::default());
    let reporter = tokio::spawn(report(
        start,
        progress.clone(),
        server.clone(),
        events.clone(),
    ));

    // Open-loop load: start a request every 1/RATE s, without waiting for earlier ones.
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / RATE);
    for id in 1..=RATE * SEND_SECS {
        ticker.tick().await;
        progress.sent.fetch_add(1, Ordering::Relaxed);
        let url = format!("http://{addr}/items/{id}");
        tasks.spawn(one_request(client.clone(), url, progress.clone()));
    }

    // Let the requests still in flight finish (each is bounded by the 5 s total timeout).
    let mut records = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        records.push(joined?);
    }
    reporter.abort();
    print_line(start, "all done", &progress, &server, &events);

    print_summary(&records, &server, &events, start.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------------

/// How one request ended, as its caller saw it.
#[derive(Debug)]
enum Ending {
    /// A 2xx response, body read.
    Success,
    /// A final response with another status: not retryable, or retries spent or refused.
    Status(u16),
    /// No response: a palisade error, by kind (timeout, transport error, ...).
    Error(String),
}

/// One request's record, for the summary.
#[derive(Debug)]
struct Record {
    latency: Duration,
    attempts: u32,
    ending: Ending,
}

/// Caller-side counters for the progress lines.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
    done: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Sends one GET through palisade, reads the body, and records how it went.
async fn one_request(client: palisade::Client, url: String, progress: Arc<Progress>) -> Record {
    let started = Instant::now();
    let (attempts, ending) = match client.get(&url).send().await {
        Ok(resp) => {
            // What palisade did for this response: 1 when it came at the first try.
            let attempts = resp.attempts();
            let status = resp.status();
            match resp.bytes().await {
                Ok(_) if status.is_success() => (attempts, Ending::Success),
                Ok(_) => (attempts, Ending::Status(status.as_u16())),
                Err(_) => (attempts, Ending::Error("body error".to_owned())),
            }
        }
        Err(e) => {
            let kind = match e.timeout_kind() {
                Some(TimeoutKind::Total) => "total timeout".to_owned(),
                Some(TimeoutKind::Attempt) => "attempt timeout".to_owned(),
                _ => e.kind().to_string(),
            };
            (e.attempts(), Ending::Error(kind))
        }
    };
    let counter = match ending {
        Ending::Success => &progress.ok,
        _ => &progress.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    progress.done.fetch_add(1, Ordering::Relaxed);
    Record {
        latency: started.elapsed(),
        attempts,
        ending,
    }
}

/// What the pipeline reported through `on_event`.
#[derive(Debug, Default)]
struct EventCounts {
    retries: AtomicU64,
    retry_after_waits: AtomicU64,
    budget_refusals: AtomicU64,
    max_attempts: AtomicU64,
    other_give_ups: AtomicU64,
    attempt_timeouts: AtomicU64,
    total_timeouts: AtomicU64,
}

impl EventCounts {
    /// The event hook: it runs on the request's task, so it only counts.
    fn record(&self, event: &Event<'_>) {
        let counter = match event {
            Event::Retry {
                from_retry_after: true,
                ..
            } => {
                self.retry_after_waits.fetch_add(1, Ordering::Relaxed);
                &self.retries
            }
            Event::Retry { .. } => &self.retries,
            Event::GaveUp {
                reason: GiveUpReason::BudgetExhausted,
                ..
            } => &self.budget_refusals,
            Event::GaveUp {
                reason: GiveUpReason::MaxAttempts,
                ..
            } => &self.max_attempts,
            Event::GaveUp { .. } => &self.other_give_ups,
            Event::Timeout {
                kind: TimeoutKind::Attempt,
                ..
            } => &self.attempt_timeouts,
            Event::Timeout {
                kind: TimeoutKind::Total,
                ..
            } => &self.total_timeouts,
            // `Event::Attempt`, and whatever later versions add (`Event` is non-exhaustive).
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints a line when the server enters a phase, and a progress line every second.
async fn report(
    start: Instant,
    progress: Arc<Progress>,
    server: Arc<ServerStats>,
    events: Arc<EventCounts>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut phase = None;
    let mut next_line = Duration::from_secs(1);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        let now = Phase::at(elapsed);
        if phase != Some(now) {
            println!(
                "{:>5.1}s  -- {}: {}",
                now.starts_at().as_secs_f64(),
                now.name(),
                now.describe()
            );
            phase = Some(now);
        }
        if elapsed >= next_line {
            print_line(start, now.name(), &progress, &server, &events);
            next_line += Duration::from_secs(1);
        }
    }
}

fn print_line(
    start: Instant,
    label: &str,
    progress: &Progress,
    server: &ServerStats,
    events: &EventCounts,
) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "{:>5.1}s  {:<10}  {:>5}  {:>5}  {:>5}  {:>5}  {:>8}  {:>7}  {:>7}",
        start.elapsed().as_secs_f64(),
        label,
        get(&progress.sent),
        get(&progress.done),
        get(&progress.ok),
        get(&progress.failed),
        server.seen(),
        get(&events.retries),
        get(&events.budget_refusals),
    );
}

fn print_summary(records: &[Record], server: &ServerStats, events: &EventCounts, took: Duration) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let requests = records.len();
    let successes = records
        .iter()
        .filter(|r| matches!(r.ending, Ending::Success))
        .count();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for r in records {
        match &r.ending {
            Ending::Success => {}
            Ending::Status(code) => *failures.entry(format!("HTTP {code}")).or_default() += 1,
            Ending::Error(kind) => *failures.entry(kind.clone()).or_default() += 1,
        }
    }
    let client_attempts: u64 = records.iter().map(|r| u64::from(r.attempts)).sum();
    let mut by_attempts: BTreeMap<u32, usize> = BTreeMap::new();
    for r in records {
        *by_attempts.entry(r.attempts).or_default() += 1;
    }
    let mut latencies: Vec<Duration> = records.iter().map(|r| r.latency).collect();
    latencies.sort_unstable();

    let extra = server.seen() as f64 / requests.max(1) as f64 - 1.0;
    println!("\nsummary after {:.1}s", took.as_secs_f64());
    println!("  requests sent by the caller      {requests:>6}");
    println!(
        "  attempts seen by the server      {:>6}   ({:+.0} % over the requests)",
        server.seen(),
        extra * 100.0
    );
    println!("  attempts reported by palisade    {client_attempts:>6}   (ResponseExt::attempts, Error::attempts)");
    let spread: Vec<String> = by_attempts
        .iter()
        .map(|(n, count)| format!("{count} in {n}"))
        .collect();
    println!(
        "    requests by attempts              {}",
        spread.join(", ")
    );
    println!("  successes (2xx)                  {successes:>6}");
    println!(
        "  failures                         {:>6}",
        requests - successes
    );
    for (kind, count) in &failures {
        println!("    {kind:<30} {count:>6}");
    }
    println!(
        "  retries                          {:>6}",
        get(&events.retries)
    );
    println!(
        "    after a Retry-After wait       {:>6}",
        get(&events.retry_after_waits)
    );
    println!(
        "  retries refused by the budget    {:>6}",
        get(&events.budget_refusals)
    );
    println!(
        "  gave up at max attempts          {:>6}",
        get(&events.max_attempts)
    );
    println!(
        "  gave up for another reason       {:>6}",
        get(&events.other_give_ups)
    );
    println!(
        "  attempt timeouts                 {:>6}",
        get(&events.attempt_timeouts)
    );
    println!(
        "  total timeouts                   {:>6}",
        get(&events.total_timeouts)
    );
    println!(
        "  caller latency p50 / p99 / max   {} / {} / {}",
        fmt_ms(percentile(&latencies, 50)),
        fmt_ms(percentile(&latencies, 99)),
        fmt_ms(latencies.last().copied()),
    );
    println!("\nserver answers");
    for (answer, count) in server.answers() {
        println!("  {answer:<30} {count:>8}");
    }
}

/// The nearest-rank `p`-th percentile (`p` from 1 to 100) of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
    )
}

// ---------------------------------------------------------------------------------------------
// The flaky server
// ---------------------------------------------------------------------------------------------

/// The server's phases, by the time since the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Healthy,
    Degraded,
    Throttling,
    Recovered,
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::Healthy,
        Phase::Degraded,
        Phase::Throttling,
        Phase::Recovered,
    ];

    /// When the phase starts, from the start of the demo. It lasts until the next one starts.
    fn starts_at(self) -> Duration {
        Duration::from_millis(match self {
            Phase::Healthy => 0,
            Phase::Degraded => 1500,
            Phase::Throttling => 4000,
            Phase::Recovered => 5500,
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
            Phase::Degraded => "degraded",
            Phase::Throttling => "throttling",
            Phase::Recovered => "recovered",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Phase::Healthy => "every request gets 200",
            Phase::Degraded => "30 % get 503, 10 % are reset, 5 % take 1.5 s (attempt timeout 1 s)",
            Phase::Throttling => "every request gets 429 with Retry-After: 1",
            Phase::Recovered => "every request gets 200 again",
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

    /// The answer to the `n`-th request (from 0) the server sees in `phase`. The degraded mix
    /// is a fixed pattern over 20 requests, so that runs are alike.
    fn pick(phase: Phase, n: u64) -> Answer {
        match phase {
            Phase::Healthy | Phase::Recovered => Answer::Ok,
            Phase::Throttling => Answer::TooManyRequests,
            Phase::Degraded => match n % 20 {
                1 | 4 | 8 | 11 | 14 | 18 => Answer::Unavailable, // 30 %
                6 | 16 => Answer::Reset,                         // 10 %
                9 => Answer::Slow,                               // 5 %
                _ => Answer::Ok,
            },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Answer::Ok => "200 OK",
            Answer::Unavailable => "503 Service Unavailable",
            Answer::Reset => "connection reset",
            Answer::Slow => "200 OK after 1.5 s",
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

        let response = match answer {
            Answer::Reset => {
                // SO_LINGER 0: dropping the socket sends RST instead of FIN.
                let _ = stream.set_zero_linger();
                return;
            }
            Answer::Slow => {
                tokio::time::sleep(SLOW_ANSWER).await;
                response(200, "OK", "", close)
            }
            Answer::Ok => response(200, "OK", "", close),
            Answer::Unavailable => response(503, "Service Unavailable", "", close),
            Answer::TooManyRequests => {
                response(429, "Too Many Requests", "retry-after: 1\r\n", close)
            }
        };
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// A complete response with a short text body.
fn response(status: u16, reason: &str, extra_headers: &str, close: bool) -> String {
    let body = format!("{status} {reason}\n");
    let connection = if close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         {extra_headers}{connection}\r\n{body}",
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
