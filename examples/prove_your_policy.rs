//! Prove your policy: record a session with the real API once, then replay it with faults on
//! top, in paused time, and check what your users would see.
//!
//! 1. **Record.** A small local server stands in for the real API (`/prices/1..=3`, cacheable
//!    answers). The client sends through a `Cassette` in `Mode::Record` wrapping a real
//!    `reqwest::Client`: every exchange lands, scrubbed, in `target/prove/prices.har`. Then the
//!    server is stopped.
//! 2. **Replay with chaos.** On a tokio runtime whose clock is paused (as in
//!    `#[tokio::test(start_paused = true)]`), a client with the standard pipeline and the
//!    fallback cache sends 1,000 requests to a transport that replays the cassette under a
//!    `ChaosLayer`: 20 % of attempts get a `503`, 5 % a connection reset, 2 % hang. No network:
//!    the server is gone.
//! 3. **Assert** what users see: every request answered (by the API, or by a stored copy), the
//!    attempts the retries cost, the stale answers served, and how long users waited, in
//!    virtual time (the run itself takes a moment).
//!
//! ```text
//! cargo run --example prove_your_policy
//! ```
//!
//! The same test, as a `#[tokio::test]` against a committed cassette, is `tests/guide.rs`.

use std::time::Duration;

use palisade::fallback::FallbackCache;
use palisade::testing::cassette::{AfterLast, Cassette, Mode};
use palisade::testing::chaos::{Chaos, ChaosLayer, Fault, Rule};
use palisade::ResponseExt;
use tower::Layer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/prove/prices.har");

    // 1. Record, against the stand-in for the real API.
    let (recorded, base) = tokio::runtime::Runtime::new()?.block_on(record(&path))?;
    println!(
        "recorded {recorded} exchanges from {base} to {}",
        path.display()
    );

    // 2. Replay with chaos on top, in paused time.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let seen = rt.block_on(replay_with_chaos(&path, &base))?;

    // 3. What users see.
    println!("{seen}");
    assert_eq!(seen.answered, seen.sent, "every request is answered");
    assert!(seen.stale * 10 < seen.sent, "stale answers stay rare");
    assert!(seen.p99 < Duration::from_secs(11), "p99 {:?}", seen.p99);
    println!("policy holds");
    Ok(())
}

/// Sends three GETs through a recording cassette to a local server, then stops the server.
/// Returns the exchanges recorded and the server's address (replay matches the host too).
async fn record(path: &std::path::Path) -> Result<(usize, String), BoxError> {
    let server = api::start().await?;
    let transport = Cassette::new(path)
        .mode(Mode::Record)
        .build(reqwest::Client::new())?;
    let client = palisade::Client::builder()
        .transport(transport.clone())
        .build()?;
    for id in 1..=3 {
        let resp = client
            .get(format!("{}/prices/{id}?api_key=s3cret", server.url))
            .send()
            .await?;
        assert_eq!(resp.status(), 200);
        resp.bytes().await?;
    }
    let base = server.url.clone();
    server.stop();
    Ok((transport.len(), base))
}

/// What users saw.
#[derive(Debug, Default)]
struct Seen {
    sent: u32,
    answered: u32,
    stale: u32,
    attempts: u32,
    failed: u32,
    p50: Duration,
    p99: Duration,
    injected: u64,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "requests sent              {:>6}", self.sent)?;
        writeln!(f, "  answered                 {:>6}", self.answered)?;
        writeln!(f, "    of which stale copies  {:>6}", self.stale)?;
        writeln!(f, "  failed                   {:>6}", self.failed)?;
        writeln!(f, "attempts                   {:>6}", self.attempts)?;
        writeln!(f, "faults injected            {:>6}", self.injected)?;
        write!(
            f,
            "latency p50 / p99 (virtual) {:?} / {:?}",
            self.p50, self.p99
        )
    }
}

/// 1,000 requests over the recorded cassette with faults injected under palisade's pipeline.
async fn replay_with_chaos(path: &std::path::Path, base: &str) -> Result<Seen, BoxError> {
    // Each URL was recorded once: let repeated requests get the last answer again.
    let replay = Cassette::new(path)
        .mode(Mode::Replay)
        .after_last(AfterLast::RepeatLast)
        .build_replay()?;
    let chaos = ChaosLayer::new(
        Chaos::new(7)
            .rule(Rule::new(Fault::Status(503)).rate(0.20))
            .rule(Rule::new(Fault::Reset).rate(0.05))
            .rule(Rule::new(Fault::Hang).rate(0.02)),
    )?;
    let handle = chaos.handle();
    let client = palisade::Client::builder()
        .transport(chaos.layer(replay))
        .attempt_timeout(Duration::from_secs(2))
        .fallback_cache(FallbackCache::default())
        .build()?;

    let mut seen = Seen::default();
    let mut latencies = Vec::new();
    for i in 0..1_000u32 {
        // The server is gone: only the cassette answers.
        let url = format!("{base}/prices/{}?api_key=any", i % 3 + 1);
        let start = tokio::time::Instant::now();
        seen.sent += 1;
        match client.get(url).send().await {
            Ok(resp) => {
                seen.attempts += resp.attempts();
                if resp.status().is_success() {
                    seen.answered += 1;
                    seen.stale += u32::from(resp.fallback().is_some());
                } else {
                    seen.failed += 1;
                }
                resp.bytes().await?;
            }
            Err(e) => {
                seen.attempts += e.attempts();
                seen.failed += 1;
            }
        }
        latencies.push(start.elapsed());
        // One request every 100 ms of virtual time: stored copies age as they would.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort();
    seen.p50 = latencies[latencies.len() / 2];
    seen.p99 = latencies[latencies.len() * 99 / 100];
    seen.injected = handle.injected_total();
    Ok(seen)
}

/// The stand-in for the real API: `GET /prices/<id>` answers a small JSON document that
/// shared caches may keep for a second, and serve stale for a minute if the origin fails.
mod api {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Server {
        pub url: String,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        pub fn stop(self) {
            self.task.abort();
        }
    }

    pub async fn start() -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let id = head
                                .split_whitespace()
                                .nth(1)
                                .and_then(|p| p.strip_prefix("/prices/"))
                                .and_then(|p| p.split('?').next())
                                .unwrap_or("0")
                                .to_owned();
                            let body = format!("{{\"id\":{id},\"price\":{}}}", 100 + id.len());
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                 cache-control: max-age=1, stale-if-error=60\r\n\
                                 content-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                });
            }
        });
        Ok(Server { url, task })
    }
}
