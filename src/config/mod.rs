//! Configuration from a file (feature `serde`; a parser per format: `config-toml`,
//! `config-yaml`, `config-json`): the whole [`ClientBuilder`] — timeouts, retry, circuit
//! breaker, rate limit, bulkhead, fallback cache and per-host policies — as data.
//!
//! ```
//! use palisade::config::{Config, Format};
//!
//! let text = r#"
//! total_timeout = "20s"
//! attempt_timeout = "5s"
//!
//! [retry]
//! max_attempts = 4
//! backoff = { base = "50ms", max = "2s", jitter = "equal" }
//!
//! [rate_limit]
//! per_second = 50
//! burst = 10
//! scope = "per_host"
//!
//! [hosts."api.payments.example"]
//! retry = "off"
//! rate_limit = { per_second = 25 }
//! "#;
//! let client = Config::parse(text, Format::Toml)?
//!     .into_builder()?
//!     // What a file cannot say is still set in code.
//!     .on_event(|event| tracing::debug!(?event))
//!     .build()?;
//! # let _ = client;
//!
//! // A bad value is named by its path.
//! let err = Config::parse(
//!     "[hosts.\"api.example.com\".retry]\nmax_attempts = -1\n",
//!     Format::Toml,
//! )
//! .unwrap_err();
//! assert_eq!(err.field(), Some(r#"hosts."api.example.com".retry.max_attempts"#));
//! assert_eq!(err.line(), Some(2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Config::from_path`] reads a file and picks its format by its extension (`.toml`,
//! `.yaml`/`.yml`, `.json`); [`Config::parse`] reads text. [`Config::into_builder`] gives the
//! [`ClientBuilder`] the file describes, to adjust in code (a transport, an event hook, a
//! classifier, metrics: what only code can give) and build. The example file
//! `examples/palisade.toml`, shown [below](#every-setting), has every setting, with its
//! default and its meaning; `cargo run --example config` loads it.
//!
//! # How a file reads
//!
//! - **Keys mirror the builder's setters**: `retry.max_attempts` is
//!   [`Retry::max_attempts`](crate::retry::Retry::max_attempts), `rate_limit.burst` is
//!   [`RateLimit::burst`](crate::rate_limit::RateLimit::burst). A key left out keeps the
//!   builder's default. An unknown key is an error, at any depth: a typo never goes unseen.
//! - **Durations are strings with a unit**: `"250ms"`, `"30s"`, `"1m 30s"`, `"2h"` (units `ns`,
//!   `us`, `ms`, `s`, `m`, `h`, `d`, `w`, and `M` for months, `y` for years). A bare number is
//!   refused: `30` could be seconds or milliseconds, and a file should not make anyone guess.
//! - **`"off"` switches a setting off**: `total_timeout = "off"` is
//!   [`no_total_timeout`](ClientBuilder::no_total_timeout), `retry = "off"` is
//!   [`no_retry`](ClientBuilder::no_retry), `retry.budget = "off"` is
//!   [`no_budget`](crate::retry::Retry::no_budget), `circuit_breaker.consecutive_failures =
//!   "off"` is [`no_consecutive_failures`](CircuitBreaker::no_consecutive_failures) (and so
//!   for `failure_ratio` and `probe_timeout`). It is the one way: `false` and `null` are
//!   refused with a message that says so, since `null` could mean "off" as well as "the
//!   default". Leave a key out for its default.
//! - **Either-or settings** take one key: a rate is `per_second = n` or `per_minute = n`;
//!   `scope` is `"per_host"` or `"global"`; `fail_fast = true` is `max_wait = "0s"`. Giving
//!   both keys of a pair is an error rather than a silent choice. (A breaker's two rules,
//!   `failure_ratio` and `consecutive_failures`, are no such pair: both are on by default,
//!   and either may be set, or switched off, alone.)
//! - **Host policies** are `hosts."<pattern>"`, each with the settings a
//!   [`HostPolicy`] overrides: `total_timeout`, `attempt_timeout`,
//!   `retry`, `hedging`, `circuit_breaker`, `rate_limit`, `bulkhead`. A key left out inherits the client's
//!   (see [`hosts`](crate::hosts) for what that shares); `"off"` switches the stage off for
//!   those hosts; a table is the policy's own stage, **whole**: the keys it leaves out take
//!   palisade's defaults, not the client's section's. Of two patterns that name the same hosts
//!   the later wins, as with [`ClientBuilder::host`]. At most 1,000 policies.
//!
//! # Errors
//!
//! Loading fails with a [`ConfigFileError`] that names the path of the bad key as the issue
//! tracker and TOML write it — `hosts."api.example.com".retry.max_attempts`, `[3]` for the
//! fourth item of a list — and its line and column where the format's parser gives them (TOML
//! and JSON, for every error; YAML for syntax errors). Then [`into_builder`](Config::into_builder)
//! checks what only a file can get wrong (two keys of a pair, a rate of zero) and
//! [`build`](ClientBuilder::build) runs the builder's own validation: both are a
//! [`ConfigError`] named by the same path (`hosts."api.example.com".attempt_timeout` for an
//! attempt timeout above the policy's total timeout).
//!
//! No error and no `Debug` shows a secret: a Redis URL's user and password are shown as
//! `REDACTED` wherever a message would quote them (a parser's message may quote a value it
//! refused), and values refused by palisade's own checks are not quoted at all.
//!
//! # Limits
//!
//! A file or text over [`MAX_BYTES`] (1 MiB) is refused before it is parsed, and each parser
//! bounds nesting (TOML, JSON and YAML alike refuse a document nested deeper than about 128
//! levels; YAML also bounds what its aliases expand to), so no input can take unbounded
//! memory or time, or make loading panic.
//!
//! # Inside your own configuration
//!
//! [`Config`] implements `serde::Deserialize`, so it can be one section of an application's
//! own configuration (`#[derive(Deserialize)] struct App { http: palisade::config::Config }`),
//! read by any serde format. The rules above hold; the size bound, the path in errors
//! (`serde_path_to_error`) and the line numbers are then the application's loader's to give.
//!
//! # Why these crates
//!
//! - Durations: [`humantime`](https://docs.rs/humantime), maintained under the `chronotope`
//!   organisation (of `chrono`), with no dependencies; palisade reads its strings through a
//!   visitor of its own rather than `humantime-serde`, to refuse bare numbers, `false` and
//!   `null` with a message that says what to write, and never to quote a refused value.
//!   `jiff`'s friendly format would bring a date-time library for one parser, and
//!   `serde_with` a macro framework.
//! - TOML: [`toml`](https://docs.rs/toml), the reference implementation for Rust (Cargo's),
//!   without its writer. Its errors carry a span, which gives every error its line.
//! - YAML: [`yaml_serde`](https://docs.rs/yaml_serde), the continuation of `serde_yaml` by
//!   the YAML organisation itself, with `serde_yaml`'s API and its limits on recursion and
//!   alias expansion (billion laughs). `serde_yaml` is deprecated and archived; `serde_yml`
//!   was archived after unsound changes; `serde-saphyr` needs Rust 1.89, above palisade's
//!   MSRV. The file is read into a YAML value first, so syntax errors come with their line and
//!   data errors with their path.
//! - JSON: [`serde_json`](https://docs.rs/serde_json).
//! - Paths: [`serde_path_to_error`](https://docs.rs/serde_path_to_error), by serde's author,
//!   made for this; palisade writes the path itself, quoting the keys that are not bare words.
//!
//! # Every setting
//!
//! `examples/palisade.toml`, every section with its defaults:
//!
#![doc = "```toml"]
#![doc = include_str!("../../examples/palisade.toml")]
#![doc = "```"]

mod error;
mod load;
mod value;

use std::fmt;

use serde::Deserialize;

pub use self::error::{ConfigFileError, ConfigFileErrorKind};
pub use self::load::{Format, MAX_BYTES};
use self::value::{section, Count, Hosts, Human, JitterName, Scope, Share, Status, Table, Toggle};
use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;
use crate::error::ConfigError;
use crate::fallback::FallbackCache;
use crate::hedge::Hedging;
use crate::hosts::{config_prefix, HostPolicy, Pattern};
use crate::rate_limit::RateLimit;
use crate::retry::{Backoff, Retry, RetryBudget};
use crate::ClientBuilder;

/// The whole builder as data, read from a file ([`from_path`](Config::from_path)), from text
/// ([`parse`](Config::parse)), or as a part of an application's own configuration through
/// `serde::Deserialize`. See the [module docs](self) for how a file reads.
///
/// `Default` is an empty file: the standard pipeline of [`ClientBuilder::new`]. `Debug` shows
/// every setting, with a Redis URL's user and password left out.
#[derive(Clone, Default)]
pub struct Config(Settings);

/// The top level of a configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    total_timeout: Toggle<Human>,
    attempt_timeout: Toggle<Human>,
    retry: Toggle<RetryConfig>,
    hedging: Toggle<HedgingConfig>,
    circuit_breaker: Toggle<BreakerConfig>,
    rate_limit: Toggle<RateLimitConfig>,
    bulkhead: Toggle<BulkheadConfig>,
    fallback_cache: Toggle<FallbackConfig>,
    hosts: Hosts<HostConfig>,
}

impl<'de> Deserialize<'de> for Config {
    /// A table (a document, or a value within one) of the settings the [module docs](self)
    /// describe.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Table::<Settings>::deserialize(d).map(|t| Config(t.0))
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.0;
        f.debug_struct("Config")
            .field("total_timeout", &s.total_timeout)
            .field("attempt_timeout", &s.attempt_timeout)
            .field("retry", &s.retry)
            .field("hedging", &s.hedging)
            .field("circuit_breaker", &s.circuit_breaker)
            .field("rate_limit", &s.rate_limit)
            .field("bulkhead", &s.bulkhead)
            .field("fallback_cache", &s.fallback_cache)
            .field("hosts", &s.hosts)
            .finish()
    }
}

impl Config {
    /// The [`ClientBuilder`] this configuration describes, to adjust in code and build.
    ///
    /// ```
    /// use palisade::config::{Config, Format};
    ///
    /// let builder = Config::parse(r#"{ "retry": { "max_attempts": 0 } }"#, Format::Json)?
    ///     .into_builder()?;
    /// // The builder's own validation names the field.
    /// let err = builder.build().unwrap_err();
    /// assert_eq!(err.field(), "retry.max_attempts");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] named by the key's path when the configuration says two things at
    /// once (`per_second` and `per_minute`; `max_wait` and `fail_fast = true`), a rate limit has no rate or a rate of zero, or a
    /// host pattern is not one (see [`ClientBuilder::host`]). Every other value is checked by
    /// [`ClientBuilder::build`], which names it the same way.
    pub fn into_builder(self) -> Result<ClientBuilder, ConfigError> {
        let s = self.0;
        let mut b = ClientBuilder::new();
        b = match s.total_timeout {
            Toggle::Unset => b,
            Toggle::Off => b.no_total_timeout(),
            Toggle::On(t) => b.total_timeout(t.0),
        };
        b = match s.attempt_timeout {
            Toggle::Unset => b,
            Toggle::Off => b.no_attempt_timeout(),
            Toggle::On(t) => b.attempt_timeout(t.0),
        };
        b = match s.retry {
            Toggle::Unset => b,
            Toggle::Off => b.no_retry(),
            Toggle::On(r) => b.retry(r.build()),
        };
        b = match s.hedging {
            Toggle::Unset => b,
            Toggle::Off => b.no_hedging(),
            Toggle::On(h) => b.hedging(h.build("hedging")?),
        };
        b = match s.circuit_breaker {
            Toggle::Unset => b,
            Toggle::Off => b.no_circuit_breaker(),
            Toggle::On(c) => b.circuit_breaker(c.build()?),
        };
        if let Toggle::On(r) = s.rate_limit {
            b = b.rate_limit(r.build()?);
        }
        if let Toggle::On(c) = s.bulkhead {
            b = b.bulkhead(c.build());
        }
        if let Toggle::On(f) = s.fallback_cache {
            b = b.fallback_cache(f.build());
        }
        for (pattern, policy) in s.hosts.0 {
            let prefix = config_prefix(&pattern);
            if let Err(rule) = Pattern::parse(&pattern) {
                return Err(ConfigError::new(error::scrub(&prefix).into_owned(), rule));
            }
            let policy = policy.build().map_err(|e| e.within(&prefix))?;
            b = b.host(pattern, policy);
        }
        Ok(b)
    }
}

/// `[retry]`: [`Retry`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RetryConfig {
    max_attempts: Option<u32>,
    backoff: Option<Table<BackoffConfig>>,
    max_retry_after: Option<Human>,
    budget: Toggle<BudgetConfig>,
    server_error_statuses: Option<Vec<Status>>,
    circuit_wait: Option<bool>,
}

/// `[retry.backoff]`: [`Backoff`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BackoffConfig {
    base: Option<Human>,
    max: Option<Human>,
    jitter: Option<JitterName>,
}

/// `[retry.budget]`: [`RetryBudget`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BudgetConfig {
    retry_ratio: Option<f64>,
    min_per_second: Option<u32>,
    window: Option<Human>,
}

/// `[circuit_breaker]`: [`CircuitBreaker`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BreakerConfig {
    failure_ratio: Toggle<Share>,
    window: Option<Human>,
    min_calls: Option<u32>,
    consecutive_failures: Toggle<Count>,
    probe_timeout: Toggle<Human>,
    slow_call: Option<Human>,
    break_duration: Option<Human>,
    break_growth: Option<Table<GrowthConfig>>,
    half_open_permits: Option<u32>,
    scope: Option<Scope>,
    max_hosts: Option<usize>,
}

/// `circuit_breaker.break_growth`: both halves of
/// [`CircuitBreaker::break_growth`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrowthConfig {
    factor: f64,
    max: Human,
}

/// `[rate_limit]`: [`RateLimit`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RateLimitConfig {
    per_second: Option<u32>,
    per_minute: Option<u32>,
    burst: Option<u32>,
    scope: Option<Scope>,
    max_wait: Option<Human>,
    fail_fast: Option<bool>,
    max_pushback: Option<Human>,
    max_hosts: Option<usize>,
    #[cfg(feature = "redis")]
    redis: Option<Table<RedisConfig>>,
    #[cfg(not(feature = "redis"))]
    redis: Option<value::NeedsRedisFeature>,
}

/// `[rate_limit.redis]`: [`Redis`](crate::rate_limit::Redis) (feature `redis`).
#[cfg(feature = "redis")]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisConfig {
    url: value::RedisUrl,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    timeout: Option<Human>,
    #[serde(default)]
    local_share: Option<f64>,
    #[serde(default)]
    unlimited_fallback: Option<bool>,
    #[serde(default)]
    reconnect_every: Option<Human>,
    #[serde(default)]
    lease: Option<u32>,
}

/// `[hedging]`: [`Hedging`], with its delay as `after = "<duration>"` or `quantile = q`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HedgingConfig {
    after: Option<Human>,
    quantile: Option<f64>,
    max_hedged_attempts: Option<u32>,
    min_delay: Option<Human>,
    max_delay: Option<Human>,
    fallback_delay: Option<Human>,
    min_samples: Option<u32>,
    half_life: Option<Human>,
    max_hosts: Option<usize>,
}

/// `[bulkhead]`: [`Bulkhead`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkheadConfig {
    max_concurrent: usize,
    #[serde(default)]
    max_queue: Option<usize>,
    #[serde(default)]
    queue_timeout: Option<Human>,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    max_hosts: Option<usize>,
}

/// `[fallback_cache]`: [`FallbackCache`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FallbackConfig {
    max_bytes: Option<u64>,
    max_entry_bytes: Option<u64>,
    max_staleness: Option<Human>,
    max_body_time: Option<Human>,
    store_private: Option<bool>,
    store_with_credentials: Option<bool>,
    serve_on_server_error: Option<bool>,
    serve_on_timeout: Option<bool>,
    serve_on_network_error: Option<bool>,
    serve_on_circuit_open: Option<bool>,
    serve_on_rate_limited: Option<bool>,
    serve_on_bulkhead_full: Option<bool>,
}

/// `[hosts."<pattern>"]`: [`HostPolicy`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HostConfig {
    total_timeout: Toggle<Human>,
    attempt_timeout: Toggle<Human>,
    retry: Toggle<RetryConfig>,
    hedging: Toggle<HedgingConfig>,
    circuit_breaker: Toggle<BreakerConfig>,
    rate_limit: Toggle<RateLimitConfig>,
    bulkhead: Toggle<BulkheadConfig>,
    /// Refused with a message that says why: the fallback cache is the client's.
    fallback_cache: Option<value::ClientWide>,
}

section!(
    RetryConfig,
    HedgingConfig,
    BudgetConfig,
    BreakerConfig,
    RateLimitConfig,
    BulkheadConfig,
    FallbackConfig
);

impl RetryConfig {
    fn build(self) -> Retry {
        let mut r = Retry::default();
        if let Some(n) = self.max_attempts {
            r = r.max_attempts(n);
        }
        if let Some(Table(b)) = self.backoff {
            let d = Backoff::default();
            let backoff = Backoff::new(
                b.base.map_or(d.base(), |h| h.0),
                b.max.map_or(d.max(), |h| h.0),
            );
            r = r.backoff(match b.jitter {
                Some(j) => backoff.jitter(j.into()),
                None => backoff,
            });
        }
        if let Some(d) = self.max_retry_after {
            r = r.max_retry_after(d.0);
        }
        r = match self.budget {
            Toggle::Unset => r,
            Toggle::Off => r.no_budget(),
            Toggle::On(b) => r.budget(b.build()),
        };
        if let Some(statuses) = self.server_error_statuses {
            r = r.server_error_statuses(statuses.into_iter().map(|s| s.0));
        }
        if self.circuit_wait == Some(false) {
            r = r.no_circuit_wait();
        }
        r
    }
}

impl BudgetConfig {
    fn build(self) -> RetryBudget {
        let mut b = RetryBudget::default();
        if let Some(r) = self.retry_ratio {
            b = b.retry_ratio(r);
        }
        if let Some(n) = self.min_per_second {
            b = b.min_per_second(n);
        }
        if let Some(w) = self.window {
            b = b.window(w.0);
        }
        b
    }
}

impl BreakerConfig {
    fn build(self) -> Result<CircuitBreaker, ConfigError> {
        let mut c = CircuitBreaker::default();
        // Both rules may be given, or either switched off; both off is the builder's error.
        c = match self.failure_ratio {
            Toggle::Unset => c,
            Toggle::Off => c.no_failure_ratio(),
            Toggle::On(Share(r)) => c.failure_ratio(r),
        };
        c = match self.consecutive_failures {
            Toggle::Unset => c,
            Toggle::Off => c.no_consecutive_failures(),
            Toggle::On(Count(n)) => c.consecutive_failures(n),
        };
        c = match self.probe_timeout {
            Toggle::Unset => c,
            Toggle::Off => c.no_probe_timeout(),
            Toggle::On(d) => c.probe_timeout(d.0),
        };
        if let Some(w) = self.window {
            c = c.window(w.0);
        }
        if let Some(n) = self.min_calls {
            c = c.min_calls(n);
        }
        if let Some(d) = self.slow_call {
            c = c.slow_call(d.0);
        }
        if let Some(d) = self.break_duration {
            c = c.break_duration(d.0);
        }
        if let Some(Table(g)) = self.break_growth {
            c = c.break_growth(g.factor, g.max.0);
        }
        if let Some(n) = self.half_open_permits {
            c = c.half_open_permits(n);
        }
        c = match self.scope {
            None | Some(Scope::PerHost) => c.per_host(),
            Some(Scope::Global) => c.global(),
        };
        if let Some(n) = self.max_hosts {
            c = c.max_hosts(n);
        }
        Ok(c)
    }
}

impl RateLimitConfig {
    fn build(self) -> Result<RateLimit, ConfigError> {
        let mut r = match (self.per_second, self.per_minute) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "rate_limit.per_minute",
                    "cannot be set with per_second: give the rate once",
                ))
            }
            (Some(0), None) => {
                return Err(ConfigError::new(
                    "rate_limit.per_second",
                    "must be at least 1",
                ))
            }
            (None, Some(0)) => {
                return Err(ConfigError::new(
                    "rate_limit.per_minute",
                    "must be at least 1",
                ))
            }
            (Some(n), None) => RateLimit::per_second(n),
            (None, Some(n)) => RateLimit::per_minute(n),
            (None, None) => {
                return Err(ConfigError::new(
                    "rate_limit",
                    "needs a rate: per_second = n or per_minute = n",
                ))
            }
        };
        if let Some(n) = self.burst {
            r = r.burst(n);
        }
        r = match self.scope {
            None | Some(Scope::Global) => r.global(),
            Some(Scope::PerHost) => r.per_host(),
        };
        match (self.max_wait, self.fail_fast) {
            (Some(_), Some(true)) => {
                return Err(ConfigError::new(
                    "rate_limit.fail_fast",
                    "cannot be set with max_wait: fail_fast = true is max_wait = \"0s\"",
                ))
            }
            (Some(w), _) => r = r.max_wait(w.0),
            (None, Some(true)) => r = r.fail_fast(),
            (None, _) => {}
        }
        if let Some(d) = self.max_pushback {
            r = r.max_pushback(d.0);
        }
        if let Some(n) = self.max_hosts {
            r = r.max_hosts(n);
        }
        #[cfg(feature = "redis")]
        if let Some(Table(redis)) = self.redis {
            r = r.redis(redis.build());
        }
        Ok(r)
    }
}

#[cfg(feature = "redis")]
impl RedisConfig {
    fn build(self) -> crate::rate_limit::Redis {
        let mut r = crate::rate_limit::Redis::new(self.url.0);
        if let Some(p) = self.prefix {
            r = r.prefix(p);
        }
        if let Some(t) = self.timeout {
            r = r.timeout(t.0);
        }
        if let Some(s) = self.local_share {
            r = r.local_share(s);
        }
        if self.unlimited_fallback == Some(true) {
            r = r.unlimited_fallback();
        }
        if let Some(e) = self.reconnect_every {
            r = r.reconnect_every(e.0);
        }
        if let Some(n) = self.lease {
            r = r.lease(n);
        }
        r
    }
}

impl HedgingConfig {
    /// The hedging policy; `at` is where the section is (`hedging`), for errors.
    fn build(self, at: &'static str) -> Result<Hedging, ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        let mut h = match (self.after, self.quantile) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field("quantile"),
                    "cannot be set with after: give the delay once",
                ))
            }
            (Some(d), None) => Hedging::after(d.0),
            (None, Some(q)) => Hedging::at_quantile(q),
            (None, None) => {
                return Err(ConfigError::new(
                    at,
                    "needs a delay: after = \"<duration>\" or quantile = q (0.95, say)",
                ))
            }
        };
        if let Some(n) = self.max_hedged_attempts {
            h = h.max_hedged_attempts(n);
        }
        if let Some(d) = self.min_delay {
            h = h.min_delay(d.0);
        }
        if let Some(d) = self.max_delay {
            h = h.max_delay(d.0);
        }
        if let Some(d) = self.fallback_delay {
            h = h.fallback_delay(d.0);
        }
        if let Some(n) = self.min_samples {
            h = h.min_samples(n);
        }
        if let Some(d) = self.half_life {
            h = h.half_life(d.0);
        }
        if let Some(n) = self.max_hosts {
            h = h.max_hosts(n);
        }
        Ok(h)
    }
}

impl BulkheadConfig {
    fn build(self) -> Bulkhead {
        let mut b = Bulkhead::new(self.max_concurrent);
        if let Some(n) = self.max_queue {
            b = b.max_queue(n);
        }
        if let Some(t) = self.queue_timeout {
            b = b.queue_timeout(t.0);
        }
        if self.scope == Some(Scope::PerHost) {
            b = b.per_host();
        }
        if let Some(n) = self.max_hosts {
            b = b.max_hosts(n);
        }
        b
    }
}

impl FallbackConfig {
    fn build(self) -> FallbackCache {
        let mut f = FallbackCache::default();
        if let Some(n) = self.max_bytes {
            f = f.max_bytes(n);
        }
        if let Some(n) = self.max_entry_bytes {
            f = f.max_entry_bytes(n);
        }
        if let Some(d) = self.max_staleness {
            f = f.max_staleness(d.0);
        }
        if let Some(d) = self.max_body_time {
            f = f.max_body_time(d.0);
        }
        type Set = fn(FallbackCache, bool) -> FallbackCache;
        let flags: [(Option<bool>, Set); 8] = [
            (self.store_private, FallbackCache::store_private),
            (
                self.store_with_credentials,
                FallbackCache::store_with_credentials,
            ),
            (
                self.serve_on_server_error,
                FallbackCache::serve_on_server_error,
            ),
            (self.serve_on_timeout, FallbackCache::serve_on_timeout),
            (
                self.serve_on_network_error,
                FallbackCache::serve_on_network_error,
            ),
            (
                self.serve_on_circuit_open,
                FallbackCache::serve_on_circuit_open,
            ),
            (
                self.serve_on_rate_limited,
                FallbackCache::serve_on_rate_limited,
            ),
            (
                self.serve_on_bulkhead_full,
                FallbackCache::serve_on_bulkhead_full,
            ),
        ];
        for (flag, set) in flags {
            if let Some(yes) = flag {
                f = set(f, yes);
            }
        }
        f
    }
}

impl HostConfig {
    /// The policy; errors name the field within it (the caller adds the host).
    fn build(self) -> Result<HostPolicy, ConfigError> {
        let mut p = HostPolicy::new();
        p = match self.total_timeout {
            Toggle::Unset => p,
            Toggle::Off => p.no_total_timeout(),
            Toggle::On(t) => p.total_timeout(t.0),
        };
        p = match self.attempt_timeout {
            Toggle::Unset => p,
            Toggle::Off => p.no_attempt_timeout(),
            Toggle::On(t) => p.attempt_timeout(t.0),
        };
        p = match self.retry {
            Toggle::Unset => p,
            Toggle::Off => p.no_retry(),
            Toggle::On(r) => p.retry(r.build()),
        };
        p = match self.hedging {
            Toggle::Unset => p,
            Toggle::Off => p.no_hedging(),
            Toggle::On(h) => p.hedging(h.build("hedging")?),
        };
        p = match self.circuit_breaker {
            Toggle::Unset => p,
            Toggle::Off => p.no_circuit_breaker(),
            Toggle::On(c) => p.circuit_breaker(c.build()?),
        };
        p = match self.rate_limit {
            Toggle::Unset => p,
            Toggle::Off => p.no_rate_limit(),
            Toggle::On(r) => p.rate_limit(r.build()?),
        };
        p = match self.bulkhead {
            Toggle::Unset => p,
            Toggle::Off => p.no_bulkhead(),
            Toggle::On(b) => p.bulkhead(b.build()),
        };
        Ok(p)
    }
}
