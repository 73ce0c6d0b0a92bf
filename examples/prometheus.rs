//! palisade's metrics in Prometheus's text format, through `metrics-exporter-prometheus`.
//!
//! Installs the exporter's recorder, builds a client with `.metrics(..)`, sends a few requests
//! to a local server that fails now and then, and prints what a Prometheus scrape would read.
//! In a service, serve `handle.render()` on `/metrics` (or let the exporter's own HTTP listener
//! do it: `PrometheusBuilder::new().with_http_listener(..).install()`, its default features).
//!
//! ```text
//! cargo run --example prometheus
//! ```
//!
//! For OpenTelemetry, install a bridge from the `metrics` facade to an OpenTelemetry meter
//! provider instead (such as the `metrics-exporter-opentelemetry` crate); the instruments keep
//! their OpenTelemetry names and attributes.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use palisade::metrics::{names, Metrics};
use palisade::retry::{Backoff, Retry};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// OpenTelemetry's advice for `http.client.request.duration`, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: the client gives it the instruments' units and descriptions when
    // it is built.
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration".into()), BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;

    // A server that answers 503 to one request in three.
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;

    let client = palisade::Client::builder()
        .retry(Retry::default().backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
        )))
        .metrics(Metrics::new())
        .build()?;
    for i in 0..5 {
        let resp = client
            .get(format!("{}/items/{i}", server.uri()))
            .send()
            .await?;
        println!("GET /items/{i}: {}", resp.status());
    }

    println!();
    for line in handle.render().lines() {
        // The per-attempt and per-call histograms, and the retries; the rest is there too.
        let shown = [
            names::HTTP_CLIENT_REQUEST_DURATION,
            names::REQUEST_DURATION,
            names::RETRIES,
        ]
        .iter()
        .any(|n| line.contains(&n.replace('.', "_")));
        if shown && (line.starts_with('#') || line.contains("_count") || line.contains("retries")) {
            println!("{line}");
        }
    }
    Ok(())
}
