//! `Client::health()` after a few calls to three local servers, in about a second.
//!
//! Three local servers (wiremock): one healthy, whose prices are stored by the fallback cache;
//! one that answers 503, which trips its host's breaker (half of at least 3 calls failed); one that answers 429 with
//! `Retry-After: 120`, which pauses its host's limiter (for 60 s, `max_pushback`). While three
//! slow calls to the healthy one are in flight, the example prints the client's health: as
//! JSON with the `serde` feature, with `{:#?}` without it.
//!
//! ```text
//! cargo run --example health
//! ```

use std::time::Duration;

use palisade::bulkhead::Bulkhead;
use palisade::circuit_breaker::CircuitBreaker;
use palisade::fallback::FallbackCache;
use palisade::rate_limit::RateLimit;
use palisade::ResponseExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let healthy = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/prices"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .set_body_string(r#"{"EUR":1.08,"GBP":0.79}"#),
        )
        .mount(&healthy)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/report"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .mount(&healthy)
        .await;
    let failing = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&failing)
        .await;
    let throttling = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "120"))
        .mount(&throttling)
        .await;

    let client = palisade::Client::builder()
        .circuit_breaker(
            CircuitBreaker::default()
                .min_calls(3)
                .break_duration(Duration::from_secs(30)),
        )
        .rate_limit(RateLimit::per_second(20).burst(10).per_host())
        .bulkhead(Bulkhead::new(8).max_queue(16).per_host())
        .fallback_cache(FallbackCache::default())
        .build()?;

    for _ in 0..5 {
        let resp = client
            .get(format!("{}/v1/prices", healthy.uri()))
            .send()
            .await?;
        // Read to its end, so that the fallback cache stores it.
        resp.bytes().await?;
    }
    // Three attempts, three 503s: the breaker opens.
    let resp = client
        .get(format!("{}/v1/orders", failing.uri()))
        .send()
        .await?;
    println!(
        "failing: {} after {} attempts",
        resp.status(),
        resp.attempts()
    );
    // A 429 whose Retry-After is past `max_retry_after`: returned at once, and the host paused.
    let resp = client
        .get(format!("{}/v1/quotes", throttling.uri()))
        .send()
        .await?;
    println!("throttling: {}", resp.status());

    let slow: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            let url = format!("{}/v1/report", healthy.uri());
            tokio::spawn(async move { client.get(url).send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Some(fallback) = client.fallback_cache() {
        // moka applies inserts in batches: this makes the figures exact.
        fallback.sync();
    }

    let health = client.health();
    #[cfg(feature = "serde")]
    println!("{}", serde_json::to_string_pretty(&health)?);
    #[cfg(not(feature = "serde"))]
    println!("{health:#?}");
    for task in slow {
        task.abort();
    }
    Ok(())
}
