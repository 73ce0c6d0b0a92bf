//! Bad configuration is a `ConfigError` naming the field, never a panic.

use std::time::Duration;

use palisade::layer::{AttemptTimeoutLayer, RetryLayer, TotalTimeoutLayer};
use palisade::retry::{Backoff, Retry, RetryBudget};
use palisade::{Client, ClientBuilder, ConfigError};

fn err(b: ClientBuilder) -> ConfigError {
    b.build().expect_err("the configuration is invalid")
}

#[test]
fn zero_attempts() {
    let e = err(Client::builder().retry(Retry::default().max_attempts(0)));
    assert_eq!(e.field(), "retry.max_attempts");
    assert!(e.to_string().contains("`retry.max_attempts`"), "{e}");
    assert_eq!(
        RetryLayer::new(Retry::default().max_attempts(0))
            .unwrap_err()
            .field(),
        "retry.max_attempts"
    );
}

#[test]
fn max_delay_below_base() {
    let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
    let e = err(Client::builder().retry(Retry::default().backoff(backoff)));
    assert_eq!(e.field(), "retry.backoff.max");
    assert!(e.rule().contains("2s"), "{e}");
}

#[test]
fn zero_base_delay() {
    let backoff = Backoff::new(Duration::ZERO, Duration::from_secs(1));
    let e = err(Client::builder().retry(Retry::default().backoff(backoff)));
    assert_eq!(e.field(), "retry.backoff.base");
}

#[test]
fn nan_negative_and_infinite_budget_ratios() {
    for ratio in [f64::NAN, -0.2, f64::INFINITY, f64::NEG_INFINITY, 1e6] {
        let retry = Retry::default().budget(RetryBudget::default().retry_ratio(ratio));
        let e = err(Client::builder().retry(retry.clone()));
        assert_eq!(e.field(), "retry.budget.retry_ratio", "{ratio}");
        assert_eq!(
            RetryLayer::new(retry).unwrap_err().field(),
            "retry.budget.retry_ratio"
        );
    }
    // Zero is allowed: retries only from the per-second minimum.
    let retry = Retry::default().budget(RetryBudget::default().retry_ratio(0.0));
    assert!(Client::builder().retry(retry).build().is_ok());
}

#[test]
fn budget_window_too_short() {
    let retry = Retry::default().budget(RetryBudget::default().window(Duration::ZERO));
    assert_eq!(
        err(Client::builder().retry(retry)).field(),
        "retry.budget.window"
    );
}

#[test]
fn attempt_timeout_above_total() {
    let e = err(Client::builder()
        .total_timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(6)));
    assert_eq!(e.field(), "attempt_timeout");
    // Equal is fine, and so is any attempt timeout without a total one.
    assert!(Client::builder()
        .total_timeout(Duration::from_secs(5))
        .attempt_timeout(Duration::from_secs(5))
        .build()
        .is_ok());
    assert!(Client::builder()
        .no_total_timeout()
        .attempt_timeout(Duration::from_secs(600))
        .build()
        .is_ok());
}

#[test]
fn zero_timeouts() {
    let e = err(Client::builder().total_timeout(Duration::ZERO));
    assert_eq!(e.field(), "total_timeout");
    let e = err(Client::builder().attempt_timeout(Duration::ZERO));
    assert_eq!(e.field(), "attempt_timeout");
    assert_eq!(
        TotalTimeoutLayer::new(Duration::ZERO).unwrap_err().field(),
        "total_timeout"
    );
    assert_eq!(
        AttemptTimeoutLayer::new(Duration::ZERO)
            .unwrap_err()
            .field(),
        "attempt_timeout"
    );
}

#[test]
fn extreme_but_valid_values_build() {
    let client = Client::builder()
        .total_timeout(Duration::MAX)
        .attempt_timeout(Duration::MAX)
        .retry(
            Retry::default()
                .max_attempts(u32::MAX)
                .backoff(Backoff::new(Duration::from_nanos(1), Duration::MAX))
                .max_retry_after(Duration::MAX)
                .budget(
                    RetryBudget::default()
                        .min_per_second(u32::MAX)
                        .window(Duration::MAX),
                ),
        )
        .build();
    assert!(client.is_ok());
}

#[tokio::test(start_paused = true)]
async fn extreme_values_do_not_panic_at_run_time() {
    let client = Client::builder()
        .total_timeout(Duration::MAX)
        .attempt_timeout(Duration::MAX)
        .retry(
            Retry::default()
                .max_attempts(3)
                .backoff(Backoff::new(Duration::MAX / 2, Duration::MAX))
                .budget(
                    RetryBudget::default()
                        .min_per_second(u32::MAX)
                        .window(Duration::MAX),
                ),
        )
        .transport(tower::service_fn(|_req: reqwest::Request| async {
            Ok::<_, palisade::Error>(reqwest::Response::from(
                http::Response::builder()
                    .status(503)
                    .body(Vec::<u8>::new())
                    .unwrap(),
            ))
        }))
        .build()
        .unwrap();
    // The first retry would sleep for ~292 years: cancel while it sleeps.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        client.get("http://api.test/").send(),
    )
    .await;
    assert!(r.is_err());
}

#[test]
fn a_bad_header_is_an_error_not_a_panic() {
    let client = Client::new();
    let e = client
        .get("http://api.test/")
        .header("bad header name", "v")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), palisade::ErrorKind::Request);
    let e = client.get("not a url").build().unwrap_err();
    assert_eq!(e.kind(), palisade::ErrorKind::Request);
}

#[tokio::test]
async fn an_invalid_request_fails_at_send_without_a_panic() {
    let client = Client::new();
    let e = client.get("not a url").send().await.unwrap_err();
    assert_eq!(e.kind(), palisade::ErrorKind::Request);
    assert_eq!(e.attempts(), 1);
}

#[test]
fn bad_stage_configuration_is_reported_by_the_client_builder() {
    use palisade::bulkhead::Bulkhead;
    use palisade::circuit_breaker::CircuitBreaker;
    use palisade::rate_limit::RateLimit;
    for (ratio, why) in [
        (0.0, "zero"),
        (1.5, "above 1"),
        (f64::NAN, "NaN"),
        (-0.5, "negative"),
    ] {
        let e =
            err(Client::builder().circuit_breaker(CircuitBreaker::default().failure_ratio(ratio)));
        assert_eq!(e.field(), "circuit_breaker.failure_ratio", "{why}");
    }
    let e = err(Client::builder().circuit_breaker(CircuitBreaker::default().half_open_permits(0)));
    assert_eq!(e.field(), "circuit_breaker.half_open_permits");
    let e = err(Client::builder().rate_limit(RateLimit::per_second(0)));
    assert_eq!(e.field(), "rate_limit.rate");
    let e = err(Client::builder().rate_limit(RateLimit::per_second(10).burst(0)));
    assert_eq!(e.field(), "rate_limit.burst");
    let e = err(Client::builder().bulkhead(Bulkhead::new(0)));
    assert_eq!(e.field(), "bulkhead.max_concurrent");
    // A ratio of exactly 1 is allowed: open only when every call failed.
    assert!(Client::builder()
        .circuit_breaker(CircuitBreaker::default().failure_ratio(1.0))
        .build()
        .is_ok());
}
