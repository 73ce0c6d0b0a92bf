//! Metrics through the [`metrics`] facade (feature `metrics`), named after OpenTelemetry's HTTP
//! client conventions where one exists.
//!
//! Switch them on with [`ClientBuilder::metrics`](crate::ClientBuilder::metrics); they go to
//! whatever recorder the application installs (`metrics::set_global_recorder`, or an
//! exporter's `install`): Prometheus through `metrics-exporter-prometheus`, OpenTelemetry
//! through a bridge such as `metrics-exporter-opentelemetry`, StatsD, or an in-memory recorder
//! in tests. Install the recorder before building the client: the instruments' units and
//! descriptions are given to the recorder when the client is built.
//!
//! ```
//! # fn main() -> Result<(), palisade::ConfigError> {
//! let client = palisade::Client::builder()
//!     .metrics(palisade::metrics::Metrics::new().max_hosts(500))
//!     .build()?;
//! # let _ = client;
//! # Ok(()) }
//! ```
//!
//! # Why the `metrics` facade
//!
//! It is the one a Rust service most often has an exporter for already (as tower-resilience
//! does), its API has been stable since 0.24, and it costs a library nothing when no recorder is
//! installed. The `opentelemetry` API breaks with every minor release, and a library built on
//! one version makes its users match it; a bridge from `metrics` to an OpenTelemetry exporter
//! keeps that choice with the application.
//!
//! # Instruments
//!
//! Durations are histograms in seconds (set their buckets in the exporter; OpenTelemetry's
//! advice for `http.client.request.duration` is 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
//! 0.75, 1, 2.5, 5, 7.5, 10). The names are in [`names`].
//!
//! | name | kind | what | labels |
//! |---|---|---|---|
//! | `http.client.request.duration` | histogram, s | each attempt on the wire, from when it left the rate limiter to its response's headers or its error (OpenTelemetry counts a retry as a new request) | H, R |
//! | `palisade.request.duration` | histogram, s | the whole call through the pipeline: retries, sleeps and fallbacks included | H, R, `palisade.fallback` (the reason, only on a response the fallback cache served) |
//! | `palisade.retry.retries` | counter | retries decided, by the class of the attempt that failed | `server.address`, `palisade.retry.reason` |
//! | `palisade.retry.give_ups` | counter | failed outcomes returned that could have been retried | `server.address`, `palisade.retry.give_up_reason` |
//! | `palisade.retry.budget_exhausted` | counter | retries the retry budget refused | `server.address` |
//! | `palisade.hedge.sent` | counter | hedges sent (see [`hedge`](crate::hedge)) | `server.address` |
//! | `palisade.hedge.budget_refused` | counter | hedges the retry budget refused, so not sent (the race sends no more: at most one per race) | `server.address` |
//! | `palisade.hedge.wins` | counter | hedged races (at least one hedge sent) won, by the winner's number: 1 the first attempt (the hedges did not help), 2 the first hedge, … | `server.address`, `palisade.hedge.attempt` |
//! | `palisade.circuit_breaker.transitions` | counter | state changes | `server.address`, `palisade.circuit_breaker.from`, `palisade.circuit_breaker.to` |
//! | `palisade.circuit_breaker.state` | gauge | the state a breaker entered last: 0 closed, 1 half-open, 2 open (no series: never left closed) | `server.address` |
//! | `palisade.circuit_breaker.rejections` | counter | calls an open breaker refused | `server.address` |
//! | `palisade.rate_limit.waits` | counter | calls the limiter held for a token or a pause, once each, when they took their token (a call held, then refused, is a rejection only) | `server.address` |
//! | `palisade.rate_limit.wait.duration` | histogram, s | how long they were held, from their arrival at the limiter to their token | `server.address` |
//! | `palisade.rate_limit.rejections` | counter | calls the limiter refused | `server.address` |
//! | `palisade.rate_limit.pushbacks` | counter | 429s and 503s with `Retry-After` that paused a host | `server.address` |
//! | `palisade.rate_limit.pushback.duration` | histogram, s | the pauses they set | `server.address` |
//! | `palisade.bulkhead.in_flight` | gauge | calls holding a bulkhead permit | `server.address` (per-host bulkhead) |
//! | `palisade.bulkhead.rejections` | counter | calls the bulkhead refused | `server.address` |
//! | `palisade.fallback.served` | counter | failed requests answered by the fallback cache | `server.address`, `palisade.fallback.reason`, `palisade.fallback.source` (`stored` or `static`) |
//! | `palisade.timeouts` | counter | palisade's own timeouts that fired | `palisade.timeout.kind` (`attempt`, `total` or `probe`) |
//! | `palisade.rate_limit.fleet.shared` | gauge | fleet mode: 1 on the quota shared on Redis, 0 on the local fallback | none |
//! | `palisade.rate_limit.fleet.fallbacks` | counter | fleet mode: switches to the local fallback | `palisade.fleet.reason` (`timeout`, `unreachable`, `error reply`, `bad reply`) |
//!
//! H: `http.request.method` (one of the nine methods of RFC 9110 and PATCH, else `_OTHER`),
//! `server.address`, `server.port`. R: `http.response.status_code` when there was a response;
//! `error.type` when the outcome is a failure: the status code for a response of 400 or more,
//! else the error's kind (`timeout`, `connect`, `transport`, `request`, `body`,
//! `circuit_open`, `rate_limited`, `bulkhead_full`), or `cancelled` for a call dropped before
//! it ended.
//!
//! # Bounded cardinality
//!
//! No label holds a path, a query, a header value or userinfo. `server.address` takes the first
//! [`Metrics::max_hosts`] distinct hosts a client sees (1,000 by default); later hosts share
//! the value `_OTHER`, without `server.port`, so a client that calls a hundred thousand hosts
//! makes a bounded number of series. A stage shared by all hosts (a global breaker, limiter or
//! bulkhead) records without `server.address`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use std::{fmt, future::Future, pin::Pin};

use http::{Method, StatusCode};
use metrics::{Key, Label, Level, Metadata, SharedString, Unit};
use pin_project_lite::pin_project;
use reqwest::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;
use url::Url;

use crate::error::{Error, ErrorKind, TimeoutKind};
use crate::event::{CircuitState, Event, GiveUpReason};
use crate::fallback::FallbackReason;
use crate::host::with_host_key;

/// The instruments' names.
pub mod names {
    /// Each attempt on the wire (OpenTelemetry's name), seconds.
    pub const HTTP_CLIENT_REQUEST_DURATION: &str = "http.client.request.duration";
    /// The whole call through the pipeline, seconds.
    pub const REQUEST_DURATION: &str = "palisade.request.duration";
    /// Retries decided.
    pub const RETRIES: &str = "palisade.retry.retries";
    /// Failed outcomes returned that could have been retried.
    pub const GIVE_UPS: &str = "palisade.retry.give_ups";
    /// Retries the retry budget refused.
    pub const BUDGET_EXHAUSTED: &str = "palisade.retry.budget_exhausted";
    /// Hedges sent.
    pub const HEDGES_SENT: &str = "palisade.hedge.sent";
    /// Hedges the retry budget refused (not sent).
    pub const HEDGE_BUDGET_REFUSED: &str = "palisade.hedge.budget_refused";
    /// Hedged races won, by the number of the attempt that won.
    pub const HEDGE_WINS: &str = "palisade.hedge.wins";
    /// Circuit breaker state changes.
    pub const CIRCUIT_TRANSITIONS: &str = "palisade.circuit_breaker.transitions";
    /// The state a circuit breaker entered last: 0 closed, 1 half-open, 2 open.
    pub const CIRCUIT_STATE: &str = "palisade.circuit_breaker.state";
    /// Calls an open circuit breaker refused.
    pub const CIRCUIT_REJECTIONS: &str = "palisade.circuit_breaker.rejections";
    /// Calls the rate limiter held.
    pub const RATE_LIMIT_WAITS: &str = "palisade.rate_limit.waits";
    /// How long the rate limiter held calls, seconds.
    pub const RATE_LIMIT_WAIT_DURATION: &str = "palisade.rate_limit.wait.duration";
    /// Calls the rate limiter refused.
    pub const RATE_LIMIT_REJECTIONS: &str = "palisade.rate_limit.rejections";
    /// Server pushbacks (429, or 503 with `Retry-After`) that paused a host.
    pub const PUSHBACKS: &str = "palisade.rate_limit.pushbacks";
    /// The pauses server pushbacks set, seconds.
    pub const PUSHBACK_DURATION: &str = "palisade.rate_limit.pushback.duration";
    /// Calls holding a bulkhead permit.
    pub const BULKHEAD_IN_FLIGHT: &str = "palisade.bulkhead.in_flight";
    /// Calls the bulkhead refused.
    pub const BULKHEAD_REJECTIONS: &str = "palisade.bulkhead.rejections";
    /// Failed requests answered by the fallback cache.
    pub const FALLBACKS_SERVED: &str = "palisade.fallback.served";
    /// palisade's own timeouts that fired.
    pub const TIMEOUTS: &str = "palisade.timeouts";
    /// Fleet mode: 1 while the rate limiter uses the quota shared on Redis, 0 while it falls
    /// back to its local share.
    pub const FLEET_SHARED: &str = "palisade.rate_limit.fleet.shared";
    /// Fleet mode: switches to the local fallback, by how Redis failed.
    pub const FLEET_FALLBACKS: &str = "palisade.rate_limit.fleet.fallbacks";
}

/// The value of `server.address` shared by the hosts past [`Metrics::max_hosts`], and of
/// `http.request.method` for a method outside RFC 9110's (as OpenTelemetry names it).
pub const OTHER: &str = "_OTHER";

/// The metrics' settings, for [`ClientBuilder::metrics`](crate::ClientBuilder::metrics).
#[derive(Debug, Clone)]
#[must_use]
pub struct Metrics {
    max_hosts: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The defaults: up to 1,000 hosts labelled by name.
    pub fn new() -> Self {
        Metrics { max_hosts: 1_000 }
    }

    /// How many distinct hosts get a `server.address` of their own; the hosts seen after them
    /// are labelled [`OTHER`]. A host keeps its label for the client's life, so the series a
    /// client makes stay bounded whatever hosts it calls. 0 labels every host [`OTHER`].
    /// Default 1,000.
    pub fn max_hosts(mut self, n: usize) -> Self {
        self.max_hosts = n;
        self
    }
}

/// Where the stages' metrics go: the recorder installed when they record, through the host
/// labels of one client.
pub(crate) struct Sink {
    hosts: HostLabels,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("max_hosts", &self.hosts.max)
            .finish_non_exhaustive()
    }
}

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

impl Sink {
    pub(crate) fn new(cfg: &Metrics) -> Sink {
        describe();
        Sink {
            hosts: HostLabels::new(cfg.max_hosts),
        }
    }

    /// The labels of the host of `url`.
    pub(crate) fn host_of(&self, url: &Url) -> Arc<HostLabel> {
        with_host_key(url, |key| self.hosts.get(key))
    }

    /// Records an attempt (`http.client.request.duration`) or a whole call
    /// (`palisade.request.duration`).
    pub(crate) fn record_duration(
        &self,
        name: &'static str,
        call: &CallLabels,
        outcome: Outcome<'_>,
        elapsed: Duration,
    ) {
        let mut labels = Vec::with_capacity(6);
        labels.push(Label::from_static_parts(
            "http.request.method",
            METHODS[usize::from(call.method)],
        ));
        call.host.push(&mut labels);
        match outcome {
            Outcome::Response(resp) => {
                let status = resp.status();
                labels.push(Label::new("http.response.status_code", status_str(status)));
                if status.as_u16() >= 400 {
                    labels.push(Label::new("error.type", status_str(status)));
                }
                if name == names::REQUEST_DURATION {
                    if let Some(info) = crate::ResponseExt::fallback(resp) {
                        labels.push(Label::from_static_parts(
                            "palisade.fallback",
                            fallback_reason(info.reason()),
                        ));
                    }
                }
            }
            Outcome::Error(e) => {
                labels.push(Label::from_static_parts("error.type", error_type(e.kind())));
            }
            Outcome::Cancelled => {
                labels.push(Label::from_static_parts("error.type", "cancelled"));
            }
        }
        histogram(name, labels, elapsed.as_secs_f64());
    }

    /// Records what an event says.
    pub(crate) fn event(&self, event: &Event<'_>) {
        match event {
            Event::Attempt { .. } => {}
            Event::Retry { url, class, .. } => {
                let mut labels = self.url_labels(url);
                labels.push(Label::from_static_parts(
                    "palisade.retry.reason",
                    class.as_str(),
                ));
                counter(names::RETRIES, labels);
            }
            Event::GaveUp { url, reason, .. } => {
                let labels = self.url_labels(url);
                if *reason == GiveUpReason::BudgetExhausted {
                    counter(names::BUDGET_EXHAUSTED, labels.clone());
                }
                let mut labels = labels;
                labels.push(Label::from_static_parts(
                    "palisade.retry.give_up_reason",
                    give_up_reason(*reason),
                ));
                counter(names::GIVE_UPS, labels);
            }
            Event::Hedge { url, .. } => counter(names::HEDGES_SENT, self.url_labels(url)),
            Event::HedgeWon { url, attempt, .. } => {
                let mut labels = self.url_labels(url);
                labels.push(Label::from_static_parts(
                    "palisade.hedge.attempt",
                    attempt_label(*attempt),
                ));
                counter(names::HEDGE_WINS, labels);
            }
            Event::CircuitStateChanged { key, from, to } => {
                let labels = self.key_labels(key);
                gauge(names::CIRCUIT_STATE, labels.clone(), state_value(*to));
                let mut labels = labels;
                labels.push(Label::from_static_parts(
                    "palisade.circuit_breaker.from",
                    state_name(*from),
                ));
                labels.push(Label::from_static_parts(
                    "palisade.circuit_breaker.to",
                    state_name(*to),
                ));
                counter(names::CIRCUIT_TRANSITIONS, labels);
            }
            Event::RateLimitWait { key, wait } => {
                let labels = self.key_labels(key);
                counter(names::RATE_LIMIT_WAITS, labels.clone());
                histogram(names::RATE_LIMIT_WAIT_DURATION, labels, wait.as_secs_f64());
            }
            Event::ServerPushback { key, pause } => {
                let labels = self.key_labels(key);
                counter(names::PUSHBACKS, labels.clone());
                histogram(names::PUSHBACK_DURATION, labels, pause.as_secs_f64());
            }
            Event::Rejected { kind, key, .. } => {
                let name = match kind {
                    ErrorKind::CircuitOpen => names::CIRCUIT_REJECTIONS,
                    ErrorKind::RateLimited => names::RATE_LIMIT_REJECTIONS,
                    ErrorKind::BulkheadFull => names::BULKHEAD_REJECTIONS,
                    _ => return,
                };
                counter(name, self.key_labels(key));
            }
            Event::Fallback { url, reason, age } => {
                let mut labels = self.url_labels(url);
                labels.push(Label::from_static_parts(
                    "palisade.fallback.reason",
                    fallback_reason(*reason),
                ));
                labels.push(Label::from_static_parts(
                    "palisade.fallback.source",
                    if age.is_some() { "stored" } else { "static" },
                ));
                counter(names::FALLBACKS_SERVED, labels);
            }
            Event::FleetModeChanged { mode, reason } => {
                let shared = matches!(mode, crate::event::FleetMode::Shared);
                gauge(
                    names::FLEET_SHARED,
                    Vec::new(),
                    if shared { 1.0 } else { 0.0 },
                );
                if !shared {
                    counter(
                        names::FLEET_FALLBACKS,
                        vec![Label::new("palisade.fleet.reason", (*reason).to_owned())],
                    );
                }
            }
            Event::Timeout { kind, .. } => {
                let kind = match kind {
                    TimeoutKind::Attempt => "attempt",
                    TimeoutKind::Total => "total",
                    TimeoutKind::Transport => "transport",
                    TimeoutKind::Probe => "probe",
                };
                counter(
                    names::TIMEOUTS,
                    vec![Label::from_static_parts("palisade.timeout.kind", kind)],
                );
            }
        }
    }

    /// The gauge of calls in flight through the bulkhead slot of `key` (`""`: a global one).
    pub(crate) fn bulkhead_in_flight(&self, key: &str) -> metrics::Gauge {
        let key = Key::from_parts(names::BULKHEAD_IN_FLIGHT, self.key_labels(key));
        metrics::with_recorder(|r| r.register_gauge(&key, &META))
    }

    /// Counts a hedge of a request to `url` that the retry budget refused
    /// (`palisade.hedge.budget_refused`).
    pub(crate) fn hedge_budget_refused(&self, url: &Url) {
        counter(names::HEDGE_BUDGET_REFUSED, self.url_labels(url));
    }

    fn url_labels(&self, url: &Url) -> Vec<Label> {
        let mut labels = Vec::with_capacity(3);
        self.host_of(url).push_address(&mut labels);
        labels
    }

    fn key_labels(&self, key: &str) -> Vec<Label> {
        let mut labels = Vec::with_capacity(3);
        if !key.is_empty() {
            self.hosts.get(key).push_address(&mut labels);
        }
        labels
    }
}

/// How an attempt or a call ended, for its duration's labels.
pub(crate) enum Outcome<'a> {
    Response(&'a Response),
    Error(&'a Error),
    Cancelled,
}

impl<'a> Outcome<'a> {
    pub(crate) fn of(result: &'a Result<Response, Error>) -> Self {
        match result {
            Ok(r) => Outcome::Response(r),
            Err(e) => Outcome::Error(e),
        }
    }
}

fn histogram(name: &'static str, labels: Vec<Label>, value: f64) {
    let key = Key::from_parts(name, labels);
    metrics::with_recorder(|r| r.register_histogram(&key, &META).record(value));
}

fn counter(name: &'static str, labels: Vec<Label>) {
    let key = Key::from_parts(name, labels);
    metrics::with_recorder(|r| r.register_counter(&key, &META).increment(1));
}

fn gauge(name: &'static str, labels: Vec<Label>, value: f64) {
    let key = Key::from_parts(name, labels);
    metrics::with_recorder(|r| r.register_gauge(&key, &META).set(value));
}

/// Gives the installed recorder every instrument's unit and description.
fn describe() {
    let d = |name: &'static str, unit: Option<Unit>, text: &'static str, kind: u8| {
        metrics::with_recorder(|r| {
            let (name, text) = (name.into(), SharedString::const_str(text));
            match kind {
                0 => r.describe_histogram(name, unit, text),
                1 => r.describe_counter(name, unit, text),
                _ => r.describe_gauge(name, unit, text),
            }
        })
    };
    let s = Some(Unit::Seconds);
    let c = Some(Unit::Count);
    d(
        names::HTTP_CLIENT_REQUEST_DURATION,
        s,
        "Duration of HTTP client requests (each attempt).",
        0,
    );
    d(
        names::REQUEST_DURATION,
        s,
        "Duration of calls through palisade's pipeline, retries, sleeps and fallbacks included.",
        0,
    );
    d(names::RETRIES, c, "Retries decided.", 1);
    d(
        names::GIVE_UPS,
        c,
        "Failed outcomes returned that could have been retried.",
        1,
    );
    d(
        names::BUDGET_EXHAUSTED,
        c,
        "Retries the retry budget refused.",
        1,
    );
    d(names::HEDGES_SENT, c, "Hedges sent.", 1);
    d(
        names::HEDGE_BUDGET_REFUSED,
        c,
        "Hedges the retry budget refused (not sent).",
        1,
    );
    d(
        names::HEDGE_WINS,
        c,
        "Hedged races won, by the number of the attempt that won (1: the first).",
        1,
    );
    d(
        names::CIRCUIT_TRANSITIONS,
        c,
        "Circuit breaker state changes.",
        1,
    );
    d(
        names::CIRCUIT_STATE,
        None,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        2,
    );
    d(
        names::CIRCUIT_REJECTIONS,
        c,
        "Calls an open circuit breaker refused.",
        1,
    );
    d(
        names::RATE_LIMIT_WAITS,
        c,
        "Calls the rate limiter held.",
        1,
    );
    d(
        names::RATE_LIMIT_WAIT_DURATION,
        s,
        "How long the rate limiter held calls.",
        0,
    );
    d(
        names::RATE_LIMIT_REJECTIONS,
        c,
        "Calls the rate limiter refused.",
        1,
    );
    d(
        names::PUSHBACKS,
        c,
        "Server pushbacks (429, or 503 with Retry-After) that paused a host.",
        1,
    );
    d(
        names::PUSHBACK_DURATION,
        s,
        "Pauses set by server pushback.",
        0,
    );
    d(
        names::BULKHEAD_IN_FLIGHT,
        c,
        "Calls holding a bulkhead permit.",
        2,
    );
    d(
        names::BULKHEAD_REJECTIONS,
        c,
        "Calls the bulkhead refused.",
        1,
    );
    d(
        names::FALLBACKS_SERVED,
        c,
        "Failed requests answered by the fallback cache.",
        1,
    );
    d(names::TIMEOUTS, c, "palisade's own timeouts that fired.", 1);
    d(
        names::FLEET_SHARED,
        None,
        "Fleet rate limit: 1 on the quota shared on Redis, 0 on the local fallback.",
        2,
    );
    d(
        names::FLEET_FALLBACKS,
        c,
        "Fleet rate limit: switches to the local fallback, by how Redis failed.",
        1,
    );
}

// ---------------------------------------------------------------------------------------------
// Labels

/// The labels of one host: `server.address` and `server.port`, or [`OTHER`] alone.
#[derive(Debug)]
pub(crate) struct HostLabel {
    address: SharedString,
    port: Option<SharedString>,
}

impl HostLabel {
    fn of(key: &str) -> HostLabel {
        // Keys are `host:port` (the port always there for http and https), or a host alone,
        // or a long host cut with `#` and a hash (see `crate::host`).
        let (host, port) = match key.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
            _ => (key, None),
        };
        // OpenTelemetry's `server.address` is an IPv6 address without its brackets.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        HostLabel {
            address: SharedString::from_shared(Arc::<str>::from(host)),
            port: port.map(|p| SharedString::from_shared(Arc::<str>::from(p))),
        }
    }

    fn other() -> HostLabel {
        HostLabel {
            address: SharedString::const_str(OTHER),
            port: None,
        }
    }

    fn push(&self, labels: &mut Vec<Label>) {
        labels.push(Label::new("server.address", self.address.clone()));
        if let Some(port) = &self.port {
            labels.push(Label::new("server.port", port.clone()));
        }
    }

    fn push_address(&self, labels: &mut Vec<Label>) {
        labels.push(Label::new("server.address", self.address.clone()));
    }
}

const SHARDS: usize = 16;

/// foldhash, seeded at random: hosts are chosen by remote parties.
type Hasher = foldhash::quality::RandomState;

type Shard = RwLock<HashMap<Box<str>, Arc<HostLabel>, Hasher>>;

/// The host labels of one client: the first `max` hosts get their own, the rest share
/// [`OTHER`]. Hosts are never removed, so the labels a client gives stay at `max + 1` values.
struct HostLabels {
    shards: Box<[Shard]>,
    hasher: Hasher,
    count: AtomicUsize,
    max: usize,
    other: Arc<HostLabel>,
}

impl HostLabels {
    fn new(max: usize) -> HostLabels {
        HostLabels {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: Hasher::default(),
            count: AtomicUsize::new(0),
            max,
            other: Arc::new(HostLabel::other()),
        }
    }

    fn get(&self, key: &str) -> Arc<HostLabel> {
        // `SHARDS` is small, so the cast back cannot truncate.
        let shard = &self.shards[(self.hasher.hash_one(key) % SHARDS as u64) as usize];
        // Nothing panics under these locks; a poisoned one is still consistent.
        if let Some(l) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return l.clone();
        }
        if self.count.load(Ordering::Acquire) >= self.max {
            return self.other.clone();
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = map.get(key) {
            return l.clone();
        }
        let room = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        if room.is_err() {
            return self.other.clone();
        }
        let label = Arc::new(HostLabel::of(key));
        map.insert(key.into(), label.clone());
        label
    }
}

/// What a call's or an attempt's duration is labelled with besides its outcome.
#[derive(Debug)]
pub(crate) struct CallLabels {
    host: Arc<HostLabel>,
    /// An index in [`METHODS`] (a byte: a timer sits in every attempt's future).
    method: u8,
}

impl CallLabels {
    pub(crate) fn of(sink: &Sink, req: &Request) -> CallLabels {
        CallLabels {
            method: method_index(req.method()),
            host: sink.host_of(req.url()),
        }
    }
}

/// The values of `http.request.method`: RFC 9110's methods, PATCH, and [`OTHER`].
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", OTHER,
];

fn method_index(m: &Method) -> u8 {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::TRACE => 7,
        Method::CONNECT => 8,
        _ => 9,
    }
}

/// The three digits of every status code (100 to 999) in a row, so that labels borrow them.
static STATUS_DIGITS: &str = {
    const BYTES: [u8; 2700] = {
        let mut d = [0u8; 2700];
        let mut code = 100;
        while code < 1000 {
            let i = (code - 100) * 3;
            d[i] = b'0' + (code / 100) as u8;
            d[i + 1] = b'0' + (code / 10 % 10) as u8;
            d[i + 2] = b'0' + (code % 10) as u8;
            code += 1;
        }
        d
    };
    match std::str::from_utf8(&BYTES) {
        Ok(s) => s,
        Err(_) => panic!("digits are UTF-8"),
    }
};

fn status_str(status: StatusCode) -> SharedString {
    // `StatusCode` holds 100 to 999.
    let i = (usize::from(status.as_u16()).clamp(100, 999) - 100) * 3;
    SharedString::const_str(STATUS_DIGITS.get(i..i + 3).unwrap_or(OTHER))
}

fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Timeout => "timeout",
        ErrorKind::Connect => "connect",
        ErrorKind::Transport => "transport",
        ErrorKind::Request => "request",
        ErrorKind::Body => "body",
        ErrorKind::CircuitOpen => "circuit_open",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::BulkheadFull => "bulkhead_full",
    }
}

fn give_up_reason(reason: GiveUpReason) -> &'static str {
    match reason {
        GiveUpReason::MaxAttempts => "max_attempts",
        GiveUpReason::BudgetExhausted => "budget_exhausted",
        GiveUpReason::NotIdempotent => "not_idempotent",
        GiveUpReason::BodyNotCloneable => "body_not_cloneable",
        GiveUpReason::RetryAfterTooLong => "retry_after_too_long",
        GiveUpReason::RetryAfterPastDeadline => "retry_after_past_deadline",
    }
}

/// An attempt's number in a hedged race (at most 10), as a label.
fn attempt_label(attempt: u32) -> &'static str {
    const NUMBERS: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    attempt
        .checked_sub(1)
        .and_then(|i| NUMBERS.get(i as usize))
        .copied()
        .unwrap_or(OTHER)
}

fn state_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
    }
}

fn state_value(state: CircuitState) -> f64 {
    match state {
        CircuitState::Closed => 0.0,
        CircuitState::HalfOpen => 1.0,
        CircuitState::Open => 2.0,
    }
}

fn fallback_reason(reason: FallbackReason) -> &'static str {
    match reason {
        FallbackReason::ServerError(_) => "server_error",
        FallbackReason::Timeout => "timeout",
        FallbackReason::Network => "network",
        FallbackReason::CircuitOpen => "circuit_open",
        FallbackReason::RateLimited => "rate_limited",
        FallbackReason::BulkheadFull => "bulkhead_full",
    }
}

// ---------------------------------------------------------------------------------------------
// The attempt's stage

/// Times each attempt (`http.client.request.duration`): the stage between the rate limiter and
/// the attempt timeout, so that an attempt is timed from when it leaves for the host (not while
/// it waits for a token) and an attempt timeout ends it as a failure.
///
/// It is in every pipeline built with the `metrics` feature, metrics on or off (without a sink
/// it only passes calls through): an `Either` around it would make every request's boxed retry
/// loop larger than the allocator's per-thread cache takes (see the retry stage's
/// `the_boxed_loop_stays_small`), which cost more than the stage itself.
#[derive(Clone, Debug)]
pub(crate) struct Measured<S> {
    inner: S,
    sink: Option<Arc<Sink>>,
}

impl<S> Measured<S> {
    pub(crate) fn new(inner: S, sink: Option<Arc<Sink>>) -> Self {
        Measured { inner, sink }
    }
}

impl<S> Service<Request> for Measured<S>
where
    S: Service<Request, Response = Response>,
    S::Error: Into<Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // Boxed: 8 bytes in every attempt's future, metrics on or off.
        let timer = self
            .sink
            .as_ref()
            .map(|sink| Box::new(Timer::attempt(sink, &req)));
        MeasuredFuture {
            inner: self.inner.call(req),
            timer,
        }
    }
}

/// A duration being measured: recorded when its call ends, or as `cancelled` when dropped
/// before.
#[derive(Debug)]
pub(crate) struct Timer {
    sink: Arc<Sink>,
    labels: CallLabels,
    start: Instant,
    /// The whole call's (`palisade.request.duration`), else an attempt's.
    call: bool,
    done: bool,
}

impl Timer {
    /// Times an attempt (`http.client.request.duration`).
    pub(crate) fn attempt(sink: &Arc<Sink>, req: &Request) -> Timer {
        Timer::start(sink, req, false)
    }

    /// Times a whole call (`palisade.request.duration`).
    pub(crate) fn call(sink: &Arc<Sink>, req: &Request) -> Timer {
        Timer::start(sink, req, true)
    }

    fn start(sink: &Arc<Sink>, req: &Request, call: bool) -> Timer {
        Timer {
            sink: sink.clone(),
            labels: CallLabels::of(sink, req),
            start: Instant::now(),
            call,
            done: false,
        }
    }

    /// Records the call's end.
    pub(crate) fn finish(mut self, result: &Result<Response, Error>) {
        self.done = true;
        self.record(Outcome::of(result));
    }

    fn record(&self, outcome: Outcome<'_>) {
        let elapsed = self.start.elapsed();
        let name = if self.call {
            names::REQUEST_DURATION
        } else {
            names::HTTP_CLIENT_REQUEST_DURATION
        };
        self.sink
            .record_duration(name, &self.labels, outcome, elapsed);
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !self.done {
            self.record(Outcome::Cancelled);
        }
    }
}

pin_project! {
    /// The future of [`Measured`].
    pub(crate) struct MeasuredFuture<F> {
        #[pin]
        inner: F,
        timer: Option<Box<Timer>>,
    }
}

impl<F, E> Future for MeasuredFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<Error>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(Into::into);
        if let Some(timer) = this.timer.take() {
            timer.finish(&result);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_labels_split_the_key() {
        let l = HostLabel::of("api.example.com:443");
        assert_eq!(&*l.address, "api.example.com");
        assert_eq!(l.port.as_deref(), Some("443"));
        let l = HostLabel::of("[::1]:8080");
        assert_eq!(&*l.address, "::1");
        assert_eq!(l.port.as_deref(), Some("8080"));
        let l = HostLabel::of("bare");
        assert_eq!(&*l.address, "bare");
        assert_eq!(l.port, None);
        let l = HostLabel::of("cut#0123456789abcdef");
        assert_eq!(&*l.address, "cut#0123456789abcdef");
        assert_eq!(l.port, None);
    }

    #[test]
    fn hosts_past_the_cap_share_other() {
        let labels = HostLabels::new(3);
        for i in 0..100 {
            labels.get(&format!("h{i}:80"));
        }
        let named: usize = labels.shards.iter().map(|s| s.read().unwrap().len()).sum();
        assert_eq!(named, 3);
        assert_eq!(&*labels.get("h0:80").address, "h0");
        assert_eq!(&*labels.get("h99:80").address, OTHER);
        assert_eq!(labels.get("h99:80").port, None);
        assert_eq!(&*HostLabels::new(0).get("a:1").address, OTHER);
    }

    #[test]
    fn status_digits_are_the_codes() {
        for code in [100u16, 200, 204, 404, 429, 503, 599, 999] {
            let s = StatusCode::from_u16(code).unwrap();
            assert_eq!(&*status_str(s), code.to_string());
        }
    }
}
