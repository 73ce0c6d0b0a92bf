//! Configuration files (`palisade::config`): every part applies, the three formats agree, and
//! bad input is an error naming its path, never a panic, a secret or unbounded memory.

mod support;

use std::time::Duration;

use palisade::bulkhead::Bulkhead;
use palisade::circuit_breaker::CircuitBreaker;
use palisade::config::{Config, ConfigFileError, ConfigFileErrorKind, Format, MAX_BYTES};
use palisade::fallback::FallbackCache;
use palisade::hosts::HostPolicy;
use palisade::rate_limit::{RateLimit, Redis};
use palisade::retry::{Backoff, Jitter, Retry, RetryBudget};
use palisade::{Client, ClientBuilder, ConfigError, ErrorKind, ResponseExt};
use proptest::prelude::*;
use support::{ms, secs, Mock, Step};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/palisade.toml");

fn toml(text: &str) -> Result<Config, ConfigFileError> {
    Config::parse(text, Format::Toml)
}

fn builder(text: &str, format: Format) -> ClientBuilder {
    Config::parse(text, format)
        .unwrap_or_else(|e| panic!("{format}: {e}"))
        .into_builder()
        .unwrap_or_else(|e| panic!("{format}: {e}"))
}

/// The error of `text` in `format`, which must be a `Field` error.
fn field_error(text: &str, format: Format) -> ConfigFileError {
    let e = Config::parse(text, format).expect_err(text);
    assert_eq!(e.kind(), ConfigFileErrorKind::Field, "{format}: {e}");
    e
}

/// The error `build` gives for `text` in TOML.
fn build_error(text: &str) -> ConfigError {
    toml(text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_builder()
        .and_then(ClientBuilder::build)
        .expect_err(text)
}

/// The builder `examples/palisade.toml` describes, written in code.
fn example_in_code() -> ClientBuilder {
    let retry = Retry::default()
        .max_attempts(3)
        .max_retry_after(secs(60))
        .server_error_statuses([500, 502, 503, 504].map(|s| s.try_into().unwrap()))
        .backoff(Backoff::new(ms(100), secs(10)).jitter(Jitter::Full))
        .budget(
            RetryBudget::default()
                .retry_ratio(0.2)
                .min_per_second(10)
                .window(secs(10)),
        );
    Client::builder()
        .total_timeout(secs(30))
        .attempt_timeout(secs(10))
        .retry(retry)
        .circuit_breaker(
            CircuitBreaker::default()
                .failure_ratio(0.5)
                .window(secs(30))
                .min_calls(20)
                .consecutive_failures(12)
                .probe_timeout(secs(1))
                .break_duration(secs(5))
                .half_open_permits(1)
                .per_host()
                .max_hosts(10_000),
        )
        .rate_limit(
            RateLimit::per_second(50)
                .burst(10)
                .per_host()
                .max_wait(ms(250))
                .max_pushback(secs(30))
                .max_hosts(10_000),
        )
        .bulkhead(
            Bulkhead::new(64)
                .max_queue(16)
                .queue_timeout(ms(500))
                .max_hosts(10_000),
        )
        .fallback_cache(
            FallbackCache::default()
                .max_bytes(32 << 20)
                .max_entry_bytes(1 << 20)
                .max_staleness(secs(300))
                .max_body_time(secs(30))
                .store_private(false)
                .store_with_credentials(false),
        )
        .host(
            "api.payments.example",
            HostPolicy::new()
                .no_retry()
                .rate_limit(RateLimit::per_second(25).burst(5)),
        )
        .host(
            "*.internal.example",
            HostPolicy::new().attempt_timeout(secs(2)).retry(
                Retry::default()
                    .max_attempts(5)
                    .backoff(Backoff::new(ms(20), ms(500))),
            ),
        )
        .host(
            "reports.internal.example:8443",
            HostPolicy::new()
                .total_timeout(secs(60))
                .attempt_timeout(secs(20))
                .no_rate_limit(),
        )
}

#[test]
fn the_example_file_is_the_builder_it_documents() {
    let from_file = Config::from_path(EXAMPLE)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_builder()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{from_file:?}"), format!("{:?}", example_in_code()));
    let client = from_file.build().unwrap_or_else(|e| panic!("{e}"));
    let pipeline = format!("{client:?}");
    for stage in [
        "fallback_cache",
        "total_timeout(30s)",
        "bulkhead",
        "retry(max_attempts=3)",
        "circuit_breaker",
        "rate_limit",
        "attempt_timeout(10s)",
        "own policies for api.payments.example, *.internal.example, reports.internal.example:8443",
    ] {
        assert!(pipeline.contains(stage), "{stage} missing from {pipeline}");
    }
}

#[test]
fn an_empty_file_is_the_standard_pipeline() {
    let standard = format!("{:?}", Client::builder());
    assert_eq!(format!("{:?}", builder("", Format::Toml)), standard);
    assert_eq!(
        format!("{:?}", builder("# nothing\n", Format::Yaml)),
        standard
    );
    assert_eq!(format!("{:?}", builder("", Format::Yaml)), standard);
    assert_eq!(format!("{:?}", builder("{}", Format::Json)), standard);
    assert_eq!(
        format!("{:?}", Config::default().into_builder().unwrap()),
        standard
    );
}

const FULL_TOML: &str = r#"
total_timeout = "off"
attempt_timeout = "1m 30s"

[retry]
max_attempts = 4
max_retry_after = "2s"
circuit_wait = false
budget = "off"
server_error_statuses = [502, 503]
backoff = { base = "20ms", max = "1s", jitter = "decorrelated" }

[circuit_breaker]
failure_ratio = "off"
consecutive_failures = 3
probe_timeout = "250ms"
window = "10s"
min_calls = 5
slow_call = "2s"
break_duration = "1s"
break_growth = { factor = 2.5, max = "1m" }
half_open_permits = 2
scope = "global"
max_hosts = 100

[rate_limit]
per_minute = 600
burst = 20
scope = "global"
fail_fast = true
max_pushback = "0s"
max_hosts = 50

[rate_limit.redis]
url = "redis://:hunter2@redis.internal:6379/0"
prefix = "billing"
timeout = "20ms"
local_share = 0.25
unlimited_fallback = true
reconnect_every = "1s"
lease = 4

[bulkhead]
max_concurrent = 8
max_queue = 2
queue_timeout = "100ms"
scope = "per_host"
max_hosts = 30

[fallback_cache]
max_bytes = 1000000
max_entry_bytes = 1000
max_staleness = "0s"
max_body_time = "5s"
store_private = true
store_with_credentials = true
serve_on_server_error = false
serve_on_timeout = false
serve_on_network_error = false
serve_on_circuit_open = false
serve_on_rate_limited = false
serve_on_bulkhead_full = false

[hosts."api.example.com"]
total_timeout = "5s"
attempt_timeout = "off"
retry = { max_attempts = 2, budget = { retry_ratio = 0.5, min_per_second = 1, window = "1s" } }
circuit_breaker = "off"
rate_limit = { per_second = 5 }
bulkhead = "off"

[hosts."*.example.org:8443"]
retry = "off"
circuit_breaker = { failure_ratio = 0.25 }
rate_limit = "off"
bulkhead = { max_concurrent = 1 }
"#;

const FULL_YAML: &str = r#"
total_timeout: "off"
attempt_timeout: 1m 30s
retry:
  max_attempts: 4
  max_retry_after: 2s
  circuit_wait: false
  budget: off
  server_error_statuses: [502, 503]
  backoff: { base: 20ms, max: 1s, jitter: decorrelated }
circuit_breaker:
  failure_ratio: off
  consecutive_failures: 3
  probe_timeout: 250ms
  window: 10s
  min_calls: 5
  slow_call: 2s
  break_duration: 1s
  break_growth: { factor: 2.5, max: 1m }
  half_open_permits: 2
  scope: global
  max_hosts: 100
rate_limit:
  per_minute: 600
  burst: 20
  scope: global
  fail_fast: true
  max_pushback: 0s
  max_hosts: 50
  redis:
    url: "redis://:hunter2@redis.internal:6379/0"
    prefix: billing
    timeout: 20ms
    local_share: 0.25
    unlimited_fallback: true
    reconnect_every: 1s
    lease: 4
bulkhead:
  max_concurrent: 8
  max_queue: 2
  queue_timeout: 100ms
  scope: per_host
  max_hosts: 30
fallback_cache:
  max_bytes: 1000000
  max_entry_bytes: 1000
  max_staleness: 0s
  max_body_time: 5s
  store_private: true
  store_with_credentials: true
  serve_on_server_error: false
  serve_on_timeout: false
  serve_on_network_error: false
  serve_on_circuit_open: false
  serve_on_rate_limited: false
  serve_on_bulkhead_full: false
hosts:
  api.example.com:
    total_timeout: 5s
    attempt_timeout: "off"
    retry:
      max_attempts: 2
      budget: { retry_ratio: 0.5, min_per_second: 1, window: 1s }
    circuit_breaker: "off"
    rate_limit: { per_second: 5 }
    bulkhead: "off"
  "*.example.org:8443":
    retry: "off"
    circuit_breaker: { failure_ratio: 0.25 }
    rate_limit: "off"
    bulkhead: { max_concurrent: 1 }
"#;

const FULL_JSON: &str = r#"{
  "total_timeout": "off",
  "attempt_timeout": "1m 30s",
  "retry": {
    "max_attempts": 4,
    "max_retry_after": "2s",
    "circuit_wait": false,
    "budget": "off",
    "server_error_statuses": [502, 503],
    "backoff": { "base": "20ms", "max": "1s", "jitter": "decorrelated" }
  },
  "circuit_breaker": {
    "failure_ratio": "off", "consecutive_failures": 3, "probe_timeout": "250ms",
    "window": "10s", "min_calls": 5, "slow_call": "2s",
    "break_duration": "1s", "break_growth": { "factor": 2.5, "max": "1m" },
    "half_open_permits": 2, "scope": "global", "max_hosts": 100
  },
  "rate_limit": {
    "per_minute": 600, "burst": 20, "scope": "global", "fail_fast": true,
    "max_pushback": "0s", "max_hosts": 50,
    "redis": {
      "url": "redis://:hunter2@redis.internal:6379/0", "prefix": "billing", "timeout": "20ms",
      "local_share": 0.25, "unlimited_fallback": true, "reconnect_every": "1s", "lease": 4
    }
  },
  "bulkhead": {
    "max_concurrent": 8, "max_queue": 2, "queue_timeout": "100ms", "scope": "per_host",
    "max_hosts": 30
  },
  "fallback_cache": {
    "max_bytes": 1000000, "max_entry_bytes": 1000, "max_staleness": "0s", "max_body_time": "5s",
    "store_private": true, "store_with_credentials": true,
    "serve_on_server_error": false, "serve_on_timeout": false, "serve_on_network_error": false,
    "serve_on_circuit_open": false, "serve_on_rate_limited": false, "serve_on_bulkhead_full": false
  },
  "hosts": {
    "api.example.com": {
      "total_timeout": "5s",
      "attempt_timeout": "off",
      "retry": { "max_attempts": 2, "budget": { "retry_ratio": 0.5, "min_per_second": 1, "window": "1s" } },
      "circuit_breaker": "off",
      "rate_limit": { "per_second": 5 },
      "bulkhead": "off"
    },
    "*.example.org:8443": {
      "retry": "off",
      "circuit_breaker": { "failure_ratio": 0.25 },
      "rate_limit": "off",
      "bulkhead": { "max_concurrent": 1 }
    }
  }
}"#;

/// `FULL_TOML` written in code.
fn full_in_code() -> ClientBuilder {
    Client::builder()
        .no_total_timeout()
        .attempt_timeout(secs(90))
        .retry(
            Retry::default()
                .max_attempts(4)
                .max_retry_after(secs(2))
                .no_circuit_wait()
                .no_budget()
                .server_error_statuses([502, 503].map(|s| s.try_into().unwrap()))
                .backoff(Backoff::new(ms(20), secs(1)).jitter(Jitter::Decorrelated)),
        )
        .circuit_breaker(
            CircuitBreaker::default()
                .no_failure_ratio()
                .consecutive_failures(3)
                .probe_timeout(ms(250))
                .window(secs(10))
                .min_calls(5)
                .slow_call(secs(2))
                .break_duration(secs(1))
                .break_growth(2.5, secs(60))
                .half_open_permits(2)
                .global()
                .max_hosts(100),
        )
        .rate_limit(
            RateLimit::per_minute(600)
                .burst(20)
                .global()
                .fail_fast()
                .max_pushback(Duration::ZERO)
                .max_hosts(50)
                .redis(
                    Redis::new("redis://:hunter2@redis.internal:6379/0")
                        .prefix("billing")
                        .timeout(ms(20))
                        .local_share(0.25)
                        .unlimited_fallback()
                        .reconnect_every(secs(1))
                        .lease(4),
                ),
        )
        .bulkhead(
            Bulkhead::new(8)
                .max_queue(2)
                .queue_timeout(ms(100))
                .per_host()
                .max_hosts(30),
        )
        .fallback_cache(
            FallbackCache::default()
                .max_bytes(1_000_000)
                .max_entry_bytes(1000)
                .max_staleness(Duration::ZERO)
                .max_body_time(secs(5))
                .store_private(true)
                .store_with_credentials(true)
                .serve_on_server_error(false)
                .serve_on_timeout(false)
                .serve_on_network_error(false)
                .serve_on_circuit_open(false)
                .serve_on_rate_limited(false)
                .serve_on_bulkhead_full(false),
        )
        .host(
            "api.example.com",
            HostPolicy::new()
                .total_timeout(secs(5))
                .no_attempt_timeout()
                .retry(
                    Retry::default().max_attempts(2).budget(
                        RetryBudget::default()
                            .retry_ratio(0.5)
                            .min_per_second(1)
                            .window(secs(1)),
                    ),
                )
                .no_circuit_breaker()
                .rate_limit(RateLimit::per_second(5))
                .no_bulkhead(),
        )
        .host(
            "*.example.org:8443",
            HostPolicy::new()
                .no_retry()
                .circuit_breaker(CircuitBreaker::default().failure_ratio(0.25))
                .no_rate_limit()
                .bulkhead(Bulkhead::new(1)),
        )
}

#[test]
fn toml_yaml_and_json_give_the_same_builder_as_code() {
    let code = format!("{:?}", full_in_code());
    for (text, format) in [
        (FULL_TOML, Format::Toml),
        (FULL_YAML, Format::Yaml),
        (FULL_JSON, Format::Json),
    ] {
        let b = builder(text, format);
        assert_eq!(format!("{b:?}"), code, "{format}");
        // The loaded builder builds, and can still be adjusted in code.
        let client = b.transport(Mock::always(Step::Status(200))).build();
        assert!(client.is_ok(), "{format}: {:?}", client.err());
    }
    // Debug never shows the Redis password, of the configuration or of the builder.
    let config = toml(FULL_TOML).unwrap();
    for shown in [
        format!("{config:?}"),
        format!("{:?}", config.into_builder().unwrap()),
    ] {
        assert!(shown.contains("redis.internal"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[test]
fn files_are_read_by_their_extension() {
    let dir = std::env::temp_dir().join(format!("palisade-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let code = format!("{:?}", full_in_code());
    for (name, text) in [
        ("a.toml", FULL_TOML),
        ("a.yaml", FULL_YAML),
        ("a.YML", FULL_YAML),
        ("a.json", FULL_JSON),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let b = Config::from_path(&path).unwrap().into_builder().unwrap();
        assert_eq!(format!("{b:?}"), code, "{name}");
    }
    let other = dir.join("a.conf");
    std::fs::write(&other, FULL_TOML).unwrap();
    let e = Config::from_path(&other).unwrap_err();
    assert_eq!(e.kind(), ConfigFileErrorKind::Format);
    assert!(
        e.to_string().starts_with(&format!("{}: ", other.display())),
        "{e}"
    );
    let e = Config::from_path(dir.join("missing.toml")).unwrap_err();
    assert_eq!(e.kind(), ConfigFileErrorKind::Io);
    assert!(std::error::Error::source(&e).is_some());
    std::fs::write(dir.join("bad.toml"), b"retry = \"off\"\n\xff\xfe\n").unwrap();
    let e = Config::from_path(dir.join("bad.toml")).unwrap_err();
    assert_eq!(e.kind(), ConfigFileErrorKind::Syntax);
    assert_eq!((e.line(), e.column()), (Some(2), Some(1)), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_host_policys_retry_applies_to_its_hosts_only() {
    let config = r#"
        [retry]
        max_attempts = 2
        budget = "off"
        backoff = { base = "1ms", max = "1ms", jitter = "none" }

        [hosts."a.test"]
        retry = { max_attempts = 4, budget = "off", backoff = { base = "1ms", max = "1ms" } }

        [hosts."*.c.test"]
        retry = "off"
    "#;
    let mock = Mock::always(Step::Status(503));
    let client = toml(config)
        .unwrap()
        .into_builder()
        .unwrap()
        .transport(mock.clone())
        .build()
        .unwrap();
    let attempts = |url: &'static str| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().attempts() }
    };
    assert_eq!(attempts("http://a.test/").await, 4);
    assert_eq!(attempts("http://b.test/").await, 2);
    assert_eq!(attempts("http://x.c.test/").await, 1);
    assert_eq!(mock.calls(), 7);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_limiter_and_timeouts_of_a_file_apply() {
    let config = r#"
        total_timeout = "off"
        attempt_timeout = "200ms"
        retry = "off"
        circuit_breaker = { consecutive_failures = 2, break_duration = "10s" }
        rate_limit = { per_second = 1, burst = 1, fail_fast = true, scope = "per_host" }
        [hosts."slow.test"]
        attempt_timeout = "off"
        total_timeout = "1s"
        circuit_breaker = "off"
    "#;
    let mock = Mock::always(Step::Status(503));
    let client = toml(config)
        .unwrap()
        .into_builder()
        .unwrap()
        .transport(mock.clone())
        .build()
        .unwrap();
    let pipeline = format!("{client:?}");
    assert!(!pipeline.contains("total_timeout("), "{pipeline}");
    assert!(pipeline.contains("attempt_timeout(200ms)"), "{pipeline}");

    // Two failures open a.test's circuit; the limiter allows one call a second per host.
    let get = |url: &'static str| client.get(url).send();
    assert_eq!(get("http://a.test/").await.unwrap().status(), 503);
    let e = get("http://a.test/").await.unwrap_err();
    assert!(e.is_rate_limited(), "{e}");
    tokio::time::advance(secs(1)).await;
    assert_eq!(get("http://a.test/").await.unwrap().status(), 503);
    tokio::time::advance(secs(1)).await;
    let e = get("http://a.test/").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");

    // slow.test: no attempt timeout, a total timeout of 1 s, no breaker.
    mock.set(Step::after(ms(500), Step::Status(503)));
    for _ in 0..3 {
        tokio::time::advance(secs(1)).await;
        assert_eq!(get("http://slow.test/").await.unwrap().status(), 503);
    }
    mock.set(Step::Hang);
    tokio::time::advance(secs(1)).await;
    let e = get("http://slow.test/").await.unwrap_err();
    assert_eq!(e.timeout_kind(), Some(palisade::TimeoutKind::Total), "{e}");
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_and_fallback_cache_of_a_file_apply() {
    let config = r#"
        retry = "off"
        bulkhead = { max_concurrent = 1 }
        fallback_cache = { serve_on_bulkhead_full = false }
    "#;
    let mock = Mock::always(Step::after(secs(1), Step::Status(200)));
    let client = toml(config)
        .unwrap()
        .into_builder()
        .unwrap()
        .transport(mock.clone())
        .build()
        .unwrap();
    let health = client.health();
    assert!(
        health.bulkhead.is_some() && health.fallback.is_some(),
        "{health:?}"
    );
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.get("http://a.test/").send().await }
    });
    tokio::task::yield_now().await;
    let e = client.get("http://a.test/").send().await.unwrap_err();
    assert!(e.is_bulkhead_full(), "{e}");
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
}

#[test]
fn unknown_keys_are_named_by_their_path_at_every_depth() {
    let cases: [(&str, &str, &str, &str); 6] = [
        (
            "retyr = \"off\"",
            "retyr: off",
            r#"{"retyr": "off"}"#,
            "retyr",
        ),
        (
            "[retry]\nbackof = {}",
            "retry:\n  backof: {}",
            r#"{"retry": {"backof": {}}}"#,
            "retry.backof",
        ),
        (
            "[retry.backoff]\nbse = \"1s\"",
            "retry:\n  backoff:\n    bse: 1s",
            r#"{"retry": {"backoff": {"bse": "1s"}}}"#,
            "retry.backoff.bse",
        ),
        (
            "[hosts.\"api.example.com\".retry]\nmax_attempt = 3",
            "hosts:\n  api.example.com:\n    retry:\n      max_attempt: 3",
            r#"{"hosts": {"api.example.com": {"retry": {"max_attempt": 3}}}}"#,
            "hosts.\"api.example.com\".retry.max_attempt",
        ),
        (
            "[hosts.localhost]\nretries = 3",
            "hosts:\n  localhost:\n    retries: 3",
            r#"{"hosts": {"localhost": {"retries": 3}}}"#,
            "hosts.\"localhost\".retries",
        ),
        (
            "[rate_limit]\nper_second = 1\n[rate_limit.redis]\nurl = \"redis://r\"\nurll = 1",
            "rate_limit:\n  per_second: 1\n  redis:\n    url: redis://r\n    urll: 1",
            r#"{"rate_limit": {"per_second": 1, "redis": {"url": "redis://r", "urll": 1}}}"#,
            "rate_limit.redis.urll",
        ),
    ];
    for (t, y, j, path) in cases {
        for (text, format) in [(t, Format::Toml), (y, Format::Yaml), (j, Format::Json)] {
            let e = field_error(text, format);
            assert_eq!(e.field(), Some(path), "{format}: {e}");
            assert!(e.message().contains("unknown field"), "{format}: {e}");
            assert!(e.to_string().contains(&format!("`{path}`")), "{e}");
        }
    }
    // TOML and JSON tell the line.
    let e = field_error(
        "total_timeout = \"1s\"\n\n[retry]\nmax_attempt = 3\n",
        Format::Toml,
    );
    assert_eq!(e.line(), Some(4), "{e}");
    let e = field_error("{\n\"retry\": {\n \"max_attempt\": 3}}", Format::Json);
    assert_eq!(e.line(), Some(3), "{e}");
    // The fallback cache is the client's: a host policy cannot set it, and says why.
    let e = field_error("[hosts.\"a.test\"]\nfallback_cache = {}", Format::Toml);
    assert_eq!(e.field(), Some("hosts.\"a.test\".fallback_cache"));
    assert!(e.message().contains("the client's"), "{e}");
}

#[test]
fn bad_values_are_named_by_their_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[circuit_breaker]\nconsecutive_failures = -1",
            "circuit_breaker.consecutive_failures",
            "below zero",
        ),
        (
            "[circuit_breaker]\nconsecutive_failures = 2.5",
            "circuit_breaker.consecutive_failures",
            "not a whole number",
        ),
        (
            "[circuit_breaker]\nconsecutive_failures = 4294967296",
            "circuit_breaker.consecutive_failures",
            "too large",
        ),
        (
            "[circuit_breaker]\nfailure_ratio = false",
            "circuit_breaker.failure_ratio",
            "write \"off\"",
        ),
        (
            "[circuit_breaker]\nprobe_timeout = 5",
            "circuit_breaker.probe_timeout",
            "has no unit",
        ),
        (
            "[hosts.\"api.example.com\".retry]\nmax_attempts = -1",
            "hosts.\"api.example.com\".retry.max_attempts",
            "-1",
        ),
        (
            "[retry]\nmax_attempts = \"three\"",
            "retry.max_attempts",
            "expected u32",
        ),
        (
            "[retry]\nmax_attempts = 1.5",
            "retry.max_attempts",
            "expected u32",
        ),
        (
            "attempt_timeout = \"5 parsecs\"",
            "attempt_timeout",
            "parsecs",
        ),
        ("attempt_timeout = 5", "attempt_timeout", "no unit"),
        ("attempt_timeout = -5", "attempt_timeout", "no unit"),
        (
            "attempt_timeout = \"-5s\"",
            "attempt_timeout",
            "not a duration",
        ),
        ("attempt_timeout = false", "attempt_timeout", "\"off\""),
        ("retry = false", "retry", "\"off\""),
        ("retry = \"no\"", "retry", "\"off\""),
        ("retry = 3", "retry", "\"off\""),
        ("[retry.backoff]\nmax = 10", "retry.backoff.max", "no unit"),
        (
            "[retry.backoff]\njitter = \"ful\"",
            "retry.backoff.jitter",
            "\"full\"",
        ),
        (
            "[retry]\nserver_error_statuses = [500, 503, 42]",
            "retry.server_error_statuses[2]",
            "status code",
        ),
        (
            "[retry]\nserver_error_statuses = [\"503\"]",
            "retry.server_error_statuses[0]",
            "number",
        ),
        (
            "[circuit_breaker]\nscope = \"everywhere\"",
            "circuit_breaker.scope",
            "\"per_host\"",
        ),
        (
            "[circuit_breaker]\nbreak_growth = { factor = 2.0 }",
            "circuit_breaker.break_growth",
            "max",
        ),
        ("[bulkhead]\nmax_queue = 3", "bulkhead", "max_concurrent"),
        (
            "[bulkhead]\nmax_concurrent = -3",
            "bulkhead.max_concurrent",
            "-3",
        ),
        (
            "[fallback_cache]\nstore_private = \"yes\"",
            "fallback_cache.store_private",
            "boolean",
        ),
        ("hosts = 3", "hosts", "host patterns"),
        (
            "[hosts.\"a.test\"]\nattempt_timeout = \"99999999999999999999s\"",
            "hosts.\"a.test\".attempt_timeout",
            "too large",
        ),
    ];
    for &(text, path, said) in cases {
        let e = field_error(text, Format::Toml);
        assert_eq!(e.field(), Some(path), "{text}: {e}");
        assert!(e.message().contains(said), "{text}: {e}");
        assert!(e.line().is_some(), "{text}: {e}");
    }
    // null is refused where it could mean "off" or "the default".
    let e = field_error(r#"{"total_timeout": null}"#, Format::Json);
    assert_eq!(e.field(), Some("total_timeout"));
    assert!(e.message().contains("null"), "{e}");
    let e = field_error("retry:\n", Format::Yaml);
    assert_eq!(e.field(), Some("retry"));
    // A host named twice (TOML's parser refuses it as a duplicate key).
    let e = field_error(r#"{"hosts": {"a.test": {}, "a.test": {}}}"#, Format::Json);
    assert_eq!(e.field(), Some("hosts"));
    assert!(e.message().contains("twice"), "{e}");
    let e = Config::parse("[hosts.\"a.test\"]\n[hosts.\"a.test\"]\n", Format::Toml).unwrap_err();
    assert_eq!(e.kind(), ConfigFileErrorKind::Syntax, "{e}");
}

#[test]
fn the_builders_validation_names_the_path_too() {
    let cases: &[(&str, &str)] = &[
        ("[retry]\nmax_attempts = 0", "retry.max_attempts"),
        ("[hosts.\"api.example.com\".retry]\nmax_attempts = 0", "hosts.\"api.example.com\".retry.max_attempts"),
        ("total_timeout = \"0s\"", "total_timeout"),
        ("total_timeout = \"1s\"\nattempt_timeout = \"2s\"", "attempt_timeout"),
        // The policy's attempt timeout above the client's total timeout.
        ("total_timeout = \"5s\"\nattempt_timeout = \"1s\"\n[hosts.\"a.test\"]\nattempt_timeout = \"10s\"", "hosts.\"a.test\".attempt_timeout"),
        // And above its own.
        ("[hosts.\"a.test\"]\ntotal_timeout = \"1s\"", "hosts.\"a.test\".attempt_timeout"),
        ("[retry.backoff]\nbase = \"2s\"\nmax = \"1s\"", "retry.backoff.max"),
        ("[retry.budget]\nretry_ratio = -1.0", "retry.budget.retry_ratio"),
        ("[circuit_breaker]\nfailure_ratio = 1.5", "circuit_breaker.failure_ratio"),
        ("[circuit_breaker]\nconsecutive_failures = 0", "circuit_breaker.consecutive_failures"),
        ("[circuit_breaker]\nprobe_timeout = \"0s\"", "circuit_breaker.probe_timeout"),
        // Both rules off: nothing would open it.
        ("[circuit_breaker]\nfailure_ratio = \"off\"\nconsecutive_failures = \"off\"", "circuit_breaker.consecutive_failures"),
        ("[circuit_breaker]\nbreak_growth = { factor = 0.5, max = \"1m\" }", "circuit_breaker.break_growth.factor"),
        ("[hosts.\"*.b.test\".circuit_breaker]\nmin_calls = 0", "hosts.\"*.b.test\".circuit_breaker.min_calls"),
        ("[rate_limit]\nper_second = 1\nburst = 0", "rate_limit.burst"),
        ("[rate_limit]\nper_second = 5\n[rate_limit.redis]\nurl = \"redis://r\"\nlease = 9", "rate_limit.redis.lease"),
        ("[bulkhead]\nmax_concurrent = 0", "bulkhead.max_concurrent"),
        ("[hosts.\"a.test\".bulkhead]\nmax_concurrent = 0", "hosts.\"a.test\".bulkhead.max_concurrent"),
        ("[fallback_cache]\nmax_entry_bytes = 0", "fallback_cache.max_entry_bytes"),
        ("[hosts.\"*.com\"]", "hosts.\"*.com\""),
    ];
    for &(text, path) in cases {
        let e = build_error(text);
        assert_eq!(e.field(), path, "{text}: {e}");
    }
}

#[test]
fn what_only_a_file_can_say_twice_is_refused() {
    let cases: &[(&str, &str)] = &[
        (
            "[rate_limit]\nper_second = 1\nper_minute = 60",
            "rate_limit.per_minute",
        ),
        ("[rate_limit]\nburst = 1", "rate_limit"),
        ("[rate_limit]\nper_second = 0", "rate_limit.per_second"),
        (
            "[hosts.\"a.test\".rate_limit]\nper_minute = 0",
            "hosts.\"a.test\".rate_limit.per_minute",
        ),
        (
            "[rate_limit]\nper_second = 1\nmax_wait = \"1s\"\nfail_fast = true",
            "rate_limit.fail_fast",
        ),
        ("[hosts.\"https://a.test/\"]", "hosts.\"https://a.test/\""),
    ];
    for &(text, path) in cases {
        let e = toml(text).unwrap().into_builder().expect_err(text);
        assert_eq!(e.field(), path, "{text}: {e}");
        // The same error through `?` into a `ConfigFileError`.
        let e = ConfigFileError::from(e);
        assert_eq!(
            (e.kind(), e.field()),
            (ConfigFileErrorKind::Invalid, Some(path))
        );
    }
    // fail_fast = false with a max_wait is no contradiction.
    let b = toml("[rate_limit]\nper_second = 1\nmax_wait = \"2s\"\nfail_fast = false")
        .unwrap()
        .into_builder()
        .unwrap();
    let code = Client::builder().rate_limit(RateLimit::per_second(1).max_wait(secs(2)));
    assert_eq!(format!("{b:?}"), format!("{code:?}"));
}

#[test]
fn syntax_errors_tell_the_line_and_column() {
    let cases: [(&str, Format, usize); 5] = [
        ("total_timeout = \"1s\"\nretry = {\n", Format::Toml, 2),
        ("a = 1\nb = [1,\n\nc", Format::Toml, 4),
        ("retry:\n  max_attempts: 3\n max: [", Format::Yaml, 3),
        (
            "{\n  \"retry\": {\n    \"max_attempts\": 3,\n  }\n}",
            Format::Json,
            4,
        ),
        ("{\"retry\": \"off\"} trailing", Format::Json, 1),
    ];
    for (text, format, line) in cases {
        let e = Config::parse(text, format).expect_err(text);
        assert_eq!(e.kind(), ConfigFileErrorKind::Syntax, "{format}: {e}");
        assert_eq!(e.line(), Some(line), "{format}: {e}");
        assert!(e.column().is_some(), "{format}: {e}");
        assert_eq!(e.field(), None, "{format}: {e}");
        assert!(
            e.to_string().starts_with(&format!("line {line}, column ")),
            "{e}"
        );
        assert!(
            !e.to_string().contains(" at line"),
            "the position once: {e}"
        );
    }
    let e = Config::parse("a: 1\n---\nb: 2\n", Format::Yaml).unwrap_err();
    assert_eq!(e.kind(), ConfigFileErrorKind::Syntax, "{e}");
}

#[test]
fn huge_or_deep_input_is_refused_without_harm() {
    // Over the bound: refused before it is parsed.
    let huge = format!("# {}\n", "x".repeat(MAX_BYTES));
    let e = toml(&huge).unwrap_err();
    assert_eq!(e.kind(), ConfigFileErrorKind::TooLarge, "{e}");
    let path = std::env::temp_dir().join(format!("palisade-huge-{}.yaml", std::process::id()));
    std::fs::write(&path, &huge).unwrap();
    let e = Config::from_path(&path).unwrap_err();
    assert_eq!(e.kind(), ConfigFileErrorKind::TooLarge, "{e}");
    assert!(e.to_string().contains(&MAX_BYTES.to_string()), "{e}");
    std::fs::remove_file(&path).unwrap();
    // Under it, deep nesting and alias bombs end in an error, soon, not in a stack overflow.
    let deep = MAX_BYTES / 2;
    for (text, format) in [
        (format!("a = {}", "[".repeat(deep)), Format::Toml),
        (format!("a = {}", "{a=".repeat(deep / 3)), Format::Toml),
        (format!("retry: {}", "[".repeat(deep)), Format::Yaml),
        (format!("retry: {}", "{a: ".repeat(deep / 4)), Format::Yaml),
        // Just under YAML's bound on brackets: its parser's recursion limit.
        (format!("retry: {}", "{a: ".repeat(4_999)), Format::Yaml),
    ] {
        let started = std::time::Instant::now();
        let e = Config::parse(&text, format).unwrap_err();
        assert_eq!(e.kind(), ConfigFileErrorKind::Syntax, "{format}: {e}");
        assert!(
            started.elapsed() < secs(20),
            "{format}: {:?}",
            started.elapsed()
        );
    }
    // JSON is read as it streams: a value of the wrong type is refused at once, however deep,
    // and so is a list where a table goes (serde would read one as a struct's fields in order).
    let e = Config::parse(&format!("{{\"retry\": {}", "[".repeat(deep)), Format::Json).unwrap_err();
    assert_eq!(e.field(), Some("retry"), "{e}");
    let e = Config::parse(&format!("[{}", "[".repeat(deep)), Format::Json).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ConfigFileErrorKind::Field, None),
        "{e}"
    );
    for (text, path) in [
        ("[\"1s\", \"2s\"]", None),
        (
            "{\"retry\": {\"backoff\": [\"1s\", \"2s\"]}}",
            Some("retry.backoff"),
        ),
        (
            "{\"hosts\": {\"a.test\": [\"1s\"]}}",
            Some("hosts.\"a.test\""),
        ),
        (
            "{\"circuit_breaker\": {\"break_growth\": [2.0, \"1m\"]}}",
            Some("circuit_breaker.break_growth"),
        ),
    ] {
        let e = Config::parse(text, Format::Json).unwrap_err();
        assert_eq!(e.field(), path, "{e}");
        assert!(e.message().contains("table"), "{e}");
    }
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (i, c) in "bcdefghij".chars().enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!(
            "{c}: &{c} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    let e = Config::parse(&bomb, Format::Yaml).unwrap_err();
    assert_eq!(e.kind(), ConfigFileErrorKind::Syntax, "{e}");
    // Many host policies: at most 1,000.
    let many: String = (0..1_001)
        .map(|i| format!("[hosts.\"h{i}.test\"]\n"))
        .collect();
    let e = toml(&many).unwrap_err();
    assert_eq!(e.field(), Some("hosts"), "{e}");
    assert!(e.message().contains("1000"), "{e}");
}

#[test]
fn no_error_shows_a_redis_password() {
    const SECRET: &str = "hunter2";
    let url = "redis://admin:hunter2@redis.internal:6379/0";
    let cases = [
        // A URL where a number goes, a duration, a word, a switch.
        (format!("[retry]\nmax_attempts = \"{url}\""), Format::Toml),
        (format!("attempt_timeout = \"{url}\""), Format::Toml),
        (format!("retry = \"{url}\""), Format::Toml),
        (format!("[retry.backoff]\njitter = \"{url}\""), Format::Toml),
        (
            format!("[rate_limit]\nper_second = 1\nscope = \"{url}\""),
            Format::Toml,
        ),
        (format!("[retry]\nmax_attempts: \"{url}\""), Format::Toml),
        // As a key, and as a host pattern.
        (format!("\"{url}\" = 1"), Format::Toml),
        (
            format!("[hosts.\"{url}\".retry]\nmax_attempts = -1"),
            Format::Toml,
        ),
        // Bad syntax on the URL's line.
        (
            format!("[rate_limit.redis]\nurl = \"{url}\nprefix = \"x\""),
            Format::Toml,
        ),
        (format!("[rate_limit.redis]\nurl = '{url}"), Format::Toml),
        (
            format!("rate_limit:\n  redis:\n    url: \"{url}\n"),
            Format::Yaml,
        ),
        (
            format!("rate_limit:\n  redis: {{url: {url}, [\n"),
            Format::Yaml,
        ),
        (
            format!("{{\"rate_limit\": {{\"redis\": {{\"url\": \"{url}}}}}"),
            Format::Json,
        ),
        (
            format!("{{\"retry\": {{\"max_attempts\": \"{url}\"}}}}"),
            Format::Json,
        ),
        (format!("retry:\n  max_attempts: {url}\n"), Format::Yaml),
        (format!("{url}: 1\n"), Format::Yaml),
        (format!("hosts:\n  \"{url}\": {{retry: 3}}\n"), Format::Yaml),
        // A password with quotes, spaces or an `@` of its own.
        (
            "[retry]\nmax_attempts = 'redis://u:hun\"ter2 x@h'".to_owned(),
            Format::Toml,
        ),
        (
            "[retry]\nmax_attempts = \"redis://u:hun@ter2@h\"".to_owned(),
            Format::Toml,
        ),
        (
            "{\"retry\": {\"max_attempts\": \"redis://u:hun`ter2'@h\"}}".to_owned(),
            Format::Json,
        ),
    ];
    for (text, format) in &cases {
        let e = Config::parse(text, *format).expect_err(text);
        let (shown, debug) = (e.to_string(), format!("{e:?}"));
        for word in [SECRET, "ter2", "admin"] {
            assert!(!shown.contains(word), "{format} {text:?}: {shown}");
            assert!(!debug.contains(word), "{format} {text:?}: {debug}");
        }
    }
    // The builder's own validation of a bad URL, and a host pattern with userinfo.
    let e = build_error(
        "[rate_limit]\nper_second = 1\n[rate_limit.redis]\nurl = \"redis://:hunter2@\"",
    );
    assert_eq!(e.field(), "rate_limit.redis.url");
    assert!(!e.to_string().contains(SECRET), "{e}");
    let e = toml(&format!("[hosts.\"{url}\"]"))
        .unwrap()
        .into_builder()
        .unwrap_err();
    assert!(!e.to_string().contains(SECRET), "{e}");
}

#[test]
fn yaml_reads_off_and_durations_as_plain_words() {
    let b = builder(
        "total_timeout: off\nretry: off\nattempt_timeout: 250ms\n",
        Format::Yaml,
    );
    let code = Client::builder()
        .no_total_timeout()
        .no_retry()
        .attempt_timeout(ms(250));
    assert_eq!(format!("{b:?}"), format!("{code:?}"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text, in any format, is a configuration or an error: never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        for format in [Format::Toml, Format::Yaml, Format::Json] {
            if let Ok(c) = Config::parse(&text, format) {
                let _ = c.into_builder().map(ClientBuilder::build);
            }
        }
    }

    /// Text made of the configuration's own words, which reaches deeper than random text.
    #[test]
    fn configuration_like_text_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("[retry]\n"), Just("[hosts.\"a.test\"]\n"), Just("[rate_limit]\n"),
                Just("[circuit_breaker]\n"), Just("[bulkhead]\n"), Just("[fallback_cache]\n"),
                Just("[retry.backoff]\n"), Just("[rate_limit.redis]\n"),
                Just("max_attempts = 0\n"), Just("max_attempts = 4294967296\n"),
                Just("per_second = 1\n"), Just("per_minute = 4294967295\n"), Just("burst = 0\n"),
                Just("max_concurrent = 18446744073709551615\n"), Just("url = \"redis://x\"\n"),
                Just("attempt_timeout = \"584942417355y\"\n"), Just("total_timeout = \"off\"\n"),
                Just("base = \"1ns\"\n"), Just("max = \"0s\"\n"), Just("failure_ratio = nan\n"),
                Just("retry_ratio = inf\n"), Just("factor = -inf\n"), Just("lease = 0\n"),
                Just("break_growth = { factor = 1e308, max = \"1y\" }\n"), Just("retry = \"off\"\n"),
                Just("scope = \"per_host\"\n"), Just("max_hosts = 0\n"), Just("window = \"1ns\"\n"),
            ],
            0..12,
        )
    ) {
        let text: String = parts.concat();
        if let Ok(c) = Config::parse(&text, Format::Toml) {
            let _ = c.into_builder().map(ClientBuilder::build);
        }
    }
}

#[test]
fn hedging_reads_from_a_file_for_the_client_and_a_host() {
    use palisade::hedge::Hedging;
    let text = r#"
[hedging]
quantile = 0.95
max_hedged_attempts = 3
min_delay = "2ms"
max_delay = "1s"
fallback_delay = "50ms"
min_samples = 10
half_life = "5s"
max_hosts = 100

[hosts."api.test"]
hedging = { after = "20ms" }

[hosts."pay.test"]
hedging = "off"
"#;
    let code = Client::builder()
        .hedging(
            Hedging::at_quantile(0.95)
                .max_hedged_attempts(3)
                .min_delay(ms(2))
                .max_delay(secs(1))
                .fallback_delay(ms(50))
                .min_samples(10)
                .half_life(secs(5))
                .max_hosts(100),
        )
        .host(
            "api.test",
            HostPolicy::new().hedging(Hedging::after(ms(20))),
        )
        .host("pay.test", HostPolicy::new().no_hedging());
    assert_eq!(
        format!("{:?}", builder(text, Format::Toml)),
        format!("{code:?}")
    );
    builder(text, Format::Toml).build().expect("valid");
    // The delay once, and not none.
    for (text, path) in [
        (
            "[hedging]\nafter = \"1s\"\nquantile = 0.9",
            "hedging.quantile",
        ),
        ("[hedging]\nmax_hedged_attempts = 2", "hedging"),
        (
            "[hosts.\"a.test\".hedging]\nafter = \"1s\"\nquantile = 0.9",
            "hosts.\"a.test\".hedging.quantile",
        ),
    ] {
        let e = toml(text).unwrap().into_builder().expect_err(text);
        assert_eq!(e.field(), path, "{text}: {e}");
    }
    // Then the builder's checks, by path.
    let e = build_error("[hedging]\nquantile = 1.5");
    assert!(e.field().starts_with("hedging."), "{e}");
    let e = build_error("[hosts.\"a.test\".hedging]\nafter = \"1s\"\nmax_hedged_attempts = 0");
    assert!(e.field().starts_with("hosts.\"a.test\".hedging."), "{e}");
    let e = field_error("[hedging]\nafter = 5", Format::Toml);
    assert_eq!(e.field(), Some("hedging.after"), "{e}");
}
