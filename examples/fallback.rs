//! The fallback cache against a server that goes down, in about four seconds.
//!
//! A local server (wiremock) answers `GET /v1/prices` with `200 OK` and
//! `Cache-Control: max-age=1, stale-if-error=2`: fresh for a second, then usable for two more
//! seconds if the server fails. Then it answers 503, then it hangs past the attempt timeout. The
//! client asks for the prices at each step and prints what it got: the server's answer, or the
//! stored copy with its age and why it was served; once the copy is past its `stale-if-error`
//! window, the failure itself. A static fallback answers `/v1/recommendations`, which was never
//! stored, with an empty list.
//!
//! ```text
//! cargo run --example fallback
//! ```

use std::time::{Duration, Instant};

use palisade::fallback::FallbackCache;
use palisade::ResponseExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/prices"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .insert_header("cache-control", "max-age=1, stale-if-error=2")
                .set_body_string(r#"{"EUR":1.08,"GBP":0.79}"#),
        )
        .mount(&server)
        .await;

    let client = palisade::Client::builder()
        .total_timeout(Duration::from_secs(2))
        .attempt_timeout(Duration::from_millis(500))
        .no_retry()
        .fallback_cache(FallbackCache::default().static_fallback(|req| {
            (req.url().path() == "/v1/recommendations")
                .then(|| http::Response::new(reqwest::Body::from("[]")))
        }))
        .build()?;
    let base = server.uri();
    let prices = format!("{base}/v1/prices");
    let start = Instant::now();

    println!("the server is up");
    show(&client, &prices, start).await;

    server.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    println!("the server answers 503");
    show(&client, &prices, start).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    show(&client, &prices, start).await;
    show(&client, &format!("{base}/v1/recommendations"), start).await;

    server.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(1)))
        .mount(&server)
        .await;
    println!("the server hangs (past the 500 ms attempt timeout)");
    show(&client, &prices, start).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    println!("past max-age + stale-if-error");
    show(&client, &prices, start).await;
    Ok(())
}

/// Sends a GET and prints what came back.
async fn show(client: &palisade::Client, url: &str, start: Instant) {
    let at = start.elapsed().as_secs_f64();
    let path = url.rsplit_once("/v1").map_or(url, |(_, p)| p);
    match client.get(url).send().await {
        Ok(resp) => {
            let status = resp.status();
            let served = resp.fallback();
            let age = resp
                .headers()
                .get("age")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp.text().await.unwrap_or_default();
            match served {
                Some(fb) if fb.is_static() => {
                    println!("  {at:>4.1}s  /v1{path:<16} {status}  {body}  (static fallback, after {})", fb.reason());
                }
                Some(fb) => println!(
                    "  {at:>4.1}s  /v1{path:<16} {status}  {body}  (stored copy, Age: {}, after {})",
                    age.unwrap_or_default(),
                    fb.reason()
                ),
                None => println!("  {at:>4.1}s  /v1{path:<16} {status}  {body}"),
            }
        }
        Err(e) => println!("  {at:>4.1}s  /v1{path:<16} error: {e}"),
    }
}
