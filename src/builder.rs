//! [`ClientBuilder`]: validates the configuration and assembles the pipeline.

use std::fmt;
use std::time::Duration;

use reqwest::{Request, Response};
use tower::util::{BoxCloneSyncService, Either};
use tower_layer::Layer;
use tower_service::Service;

use crate::bulkhead::{Bulkhead, BulkheadLayer};
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use crate::classify::{Classifier, FailureClass, Outcome};
use crate::client::Pipeline;
use crate::client::{Client, ClientRef, Core};
use crate::error::{ConfigError, Error};
use crate::event::{Event, Hook};
use crate::fallback::{FallbackCache, FallbackCacheLayer};
use crate::hedge::{HedgeLayer, Hedging};
use crate::hosts::{HostPolicy, Pattern, Setting};
use crate::rate_limit::{RateLimit, RateLimitLayer};
use crate::retry::{Retry, RetryLayer};
use crate::timeout::{AttemptTimeoutLayer, TotalTimeoutLayer};
use crate::transport::{Boxed, Transport};

pub(crate) enum Http {
    Default,
    Client(reqwest::Client),
    Builder(Box<reqwest::ClientBuilder>),
}

/// Configures a [`Client`]. Starts from the standard pipeline; each setter's doc gives its
/// default.
///
/// ```
/// use std::time::Duration;
/// use palisade::retry::Retry;
///
/// let client = palisade::Client::builder()
///     .total_timeout(Duration::from_secs(20))
///     .attempt_timeout(Duration::from_secs(5))
///     .retry(Retry::default().max_attempts(4))
///     .build()?;
/// # let _ = client;
/// # Ok::<(), palisade::ConfigError>(())
/// ```
///
/// Bad values are kept and reported by [`build`](ClientBuilder::build) as a [`ConfigError`]
/// naming the field; no setter panics.
#[must_use = "a builder does nothing until built"]
pub struct ClientBuilder {
    http: Http,
    transport: Option<BoxCloneSyncService<Request, Response, Error>>,
    total_timeout: Option<Duration>,
    attempt_timeout: Option<Duration>,
    retry: Option<Retry>,
    hedging: Option<Hedging>,
    breaker: Option<CircuitBreaker>,
    rate_limit: Option<RateLimit>,
    bulkhead: Option<Bulkhead>,
    fallback: Option<FallbackCache>,
    hosts: Vec<(String, HostPolicy)>,
    classifier: Classifier,
    hook: Hook,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder::new()
    }
}

impl ClientBuilder {
    /// The standard pipeline: total timeout 30 s, attempt timeout 10 s, [`Retry::default`], a
    /// circuit breaker per host ([`CircuitBreaker::default`]). Rate limit and bulkhead are
    /// opt-in: they need numbers only you know.
    pub fn new() -> Self {
        ClientBuilder {
            http: Http::Default,
            transport: None,
            total_timeout: Some(Duration::from_secs(30)),
            attempt_timeout: Some(Duration::from_secs(10)),
            retry: Some(Retry::default()),
            hedging: None,
            breaker: Some(CircuitBreaker::default()),
            rate_limit: None,
            bulkhead: None,
            fallback: None,
            hosts: Vec::new(),
            classifier: Classifier::default(),
            hook: Hook::default(),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Sends through this `reqwest::Client`. Default: one palisade builds with
    /// `reqwest::retry::never()`.
    ///
    /// **Retries and timeouts of the client you pass still apply.** reqwest 0.13 retries on its
    /// own: by default only HTTP/2 protocol NACKs (refused streams, which the server never
    /// processed), but a client built with a `reqwest::retry` policy of its own would multiply
    /// palisade's attempts. Build it with `.retry(reqwest::retry::never())`, or pass the
    /// builder to [`http_client_builder`](Self::http_client_builder) and palisade will.
    /// reqwest's `timeout`, `connect_timeout` and `read_timeout` fire as transport timeouts
    /// ([`TimeoutKind::Transport`](crate::TimeoutKind::Transport)), which the retry stage
    /// retries like an attempt timeout.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Http::Client(client);
        self
    }

    /// Builds the `reqwest::Client` from this builder, after setting
    /// `.retry(reqwest::retry::never())` on it so that only palisade retries. Default: a
    /// default `reqwest::ClientBuilder`.
    pub fn http_client_builder(mut self, builder: reqwest::ClientBuilder) -> Self {
        self.http = Http::Builder(Box::new(builder));
        self
    }

    /// Sends attempts through `transport` instead of reqwest: an in-memory service in tests, a
    /// mock, a custom connector. Requests are still built with the `reqwest::Client`.
    ///
    /// Errors of the transport convert into [`Error`]; build them from an `io::Error` (its kind
    /// classes them) or with [`Error::from_source`].
    pub fn transport<S>(mut self, transport: S) -> Self
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<Error>,
        S::Future: Send + 'static,
    {
        let svc = tower::ServiceExt::map_err(transport, Into::into);
        self.transport = Some(BoxCloneSyncService::new(svc));
        self
    }

    /// The deadline for the whole request, until the response's head arrives: every attempt
    /// and every backoff sleep. Default 30 s; must be above zero and at least the attempt
    /// timeout. To bound reading the body too, set reqwest's `timeout` or `read_timeout` on the
    /// `reqwest::Client`, or [`RequestBuilder::timeout`](crate::RequestBuilder::timeout) on a
    /// request.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = Some(timeout);
        self
    }

    /// Removes the total timeout. Attempts are still bounded by the attempt timeout, and a
    /// request with a timeout of its own ([`RequestBuilder::timeout`](crate::RequestBuilder::timeout))
    /// still gets a deadline.
    pub fn no_total_timeout(mut self) -> Self {
        self.total_timeout = None;
        self
    }

    /// The bound on each attempt, until the response's head arrives. Default 10 s; must be
    /// above zero and at most the total timeout.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Removes the attempt timeout.
    pub fn no_attempt_timeout(mut self) -> Self {
        self.attempt_timeout = None;
        self
    }

    /// The retry policy. Default [`Retry::default`]: 3 attempts, exponential backoff with full
    /// jitter, `Retry-After`, retry budget.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Removes the retry stage: every request is sent once.
    pub fn no_retry(mut self) -> Self {
        self.retry = None;
        self
    }

    /// Hedges slow attempts of idempotent requests: after a delay, a copy races the attempt,
    /// and the first good answer wins (see [`hedge`](crate::hedge)). The stage sits between
    /// the retry stage and the circuit breaker, so each copy is an attempt that the breaker
    /// admits and the rate limiter charges, and each hedge spends the retry budget. Default:
    /// none.
    ///
    /// ```
    /// use palisade::hedge::Hedging;
    ///
    /// let client = palisade::Client::builder()
    ///     .hedging(Hedging::at_quantile(0.95))
    ///     .build()?;
    /// # let _ = client;
    /// # Ok::<(), palisade::ConfigError>(())
    /// ```
    pub fn hedging(mut self, hedging: Hedging) -> Self {
        self.hedging = Some(hedging);
        self
    }

    /// Removes the hedging stage (the default).
    pub fn no_hedging(mut self) -> Self {
        self.hedging = None;
        self
    }

    /// The circuit breaker. Default [`CircuitBreaker::default`]: one per host, opening at a
    /// failure ratio of 0.5 over 30 s with at least 20 calls or at 12 failures in a row, for
    /// 5 s, then one probe, cut at 1 s.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Removes the circuit breaker.
    pub fn no_circuit_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// Adds a rate limiter below the circuit breaker, so every attempt (retries too) takes a
    /// token and a rejected call takes none. Default: none.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Adds a bulkhead outside the retry stage, so a request holds one place across all its
    /// attempts. Default: none.
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Adds a fallback cache outside every other stage: it keeps the last good response of
    /// each cacheable request and serves it when the request fails (see
    /// [`fallback`](crate::fallback)). Default: none.
    pub fn fallback_cache(mut self, cache: FallbackCache) -> Self {
        self.fallback = Some(cache);
        self
    }

    /// A policy for the hosts `pattern` names: `api.example.com` (any port),
    /// `api.example.com:8443`, or `*.example.com` (its subdomains). The policy overrides any of
    /// the client's timeouts, retry, hedging, circuit breaker, rate limit and bulkhead for them, and
    /// inherits the rest; the most specific pattern wins, and of two equal patterns the later.
    /// See [`hosts`](crate::hosts) for the rules, and what is shared.
    ///
    /// A bad pattern or value is reported by [`build`](Self::build), named with the host:
    /// `hosts."api.example.com".retry.max_attempts`.
    pub fn host(mut self, pattern: impl Into<String>, policy: HostPolicy) -> Self {
        self.hosts.push((pattern.into(), policy));
        self
    }

    /// The classifier every stage asks. Default [`Classifier::default`].
    pub fn classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Classifies outcomes with a closure (see [`Classifier::from_fn`]).
    pub fn classify_fn<F>(self, f: F) -> Self
    where
        F: Fn(Outcome<'_>) -> FailureClass + Send + Sync + 'static,
    {
        self.classifier(Classifier::from_fn(f))
    }

    /// Calls `hook` for every [`Event`]: attempts, retries, give-ups, timeouts. It runs on the
    /// request's task: keep it quick. Default: none.
    pub fn on_event<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.hook = Hook::new(hook);
        self
    }

    /// Records metrics (feature `metrics`) to the recorder the application installs: each
    /// attempt's and each call's duration under OpenTelemetry's names, and every stage's
    /// decisions. See [`crate::metrics`] for the instruments and their labels. Default: off,
    /// and then the pipeline records nothing and costs nothing for it.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Validates the configuration and builds the client.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when a timeout is zero, the attempt timeout exceeds
    /// the total timeout, a stage's policy is invalid (see [`RetryLayer::new`] and the other
    /// layers' `new`), or the `reqwest::Client` cannot be built (`http_client`).
    pub fn build(self) -> Result<Client, ConfigError> {
        let (http, core) = self.build_core(|http, custom| {
            let http = match http {
                Http::Client(c) => c,
                Http::Builder(b) => build_http(*b)?,
                Http::Default => build_http(reqwest::Client::builder())?,
            };
            let (transport, label) = match custom {
                Some(t) => (Transport::Custom(t), "custom transport"),
                None => (Transport::Reqwest(http.clone()), "reqwest"),
            };
            Ok((http, transport, label))
        })?;
        Ok(Client::from_ref(ClientRef { http, core }))
    }

    /// Validates the configuration and builds the pipeline (and the host policies' pipelines)
    /// over the transport `bottom` makes (from the builder's `http_client` and `transport`)
    /// once every stage is valid; `bottom` also gives the transport's name in the pipeline's
    /// summary, and anything else the caller wants made at that point (the `reqwest::Client`).
    pub(crate) fn build_core<B>(
        self,
        bottom: impl FnOnce(
            Http,
            Option<BoxCloneSyncService<Request, Response, Error>>,
        ) -> Result<(B, Transport, &'static str), ConfigError>,
    ) -> Result<(B, Core), ConfigError> {
        let retry_summary = self.retry_summary();
        #[cfg(feature = "metrics")]
        let sink = self
            .metrics
            .as_ref()
            .map(|m| std::sync::Arc::new(crate::metrics::Sink::new(m)));
        let hook = self.hook.clone();
        #[cfg(feature = "metrics")]
        let hook = hook.with_metrics(sink.clone());
        let stages = Stages::client(&self, &self.classifier, &hook)?;
        let total_timeout = self.total_timeout;
        let (classifier, hook) = (&self.classifier, &hook);
        let fallback = self
            .fallback
            .map(|f| {
                f.validate().map(|()| {
                    let f = f.with_total_timeout(total_timeout);
                    FallbackCacheLayer::from_parts(f, classifier.clone(), hook.clone())
                })
            })
            .transpose()?;
        let mut policies = Vec::with_capacity(self.hosts.len());
        for (text, policy) in &self.hosts {
            let prefix = crate::hosts::config_prefix(text);
            let pattern =
                Pattern::parse(text).map_err(|rule| ConfigError::new(prefix.clone(), rule))?;
            let own =
                Stages::policy(&stages, policy, classifier, hook).map_err(|e| e.within(&prefix))?;
            policies.push((pattern, own));
        }

        let (made, transport, label) = bottom(self.http, self.transport)?;

        let mut summary = Vec::new();
        if fallback.is_some() {
            summary.push("fallback_cache".to_owned());
        }
        if let Some(t) = stages.total_timeout {
            summary.push(format!("total_timeout({t:?})"));
        }
        if stages.bulkhead.is_some() {
            summary.push("bulkhead".to_owned());
        }
        if let Some(r) = retry_summary {
            summary.push(r);
        }
        if let Some(h) = &stages.hedge {
            summary.push(h.summary());
        }
        if stages.breaker.is_some() {
            summary.push("circuit_breaker".to_owned());
        }
        if stages.limiter.is_some() {
            summary.push("rate_limit".to_owned());
        }
        if let Some(a) = stages.attempt_timeout {
            summary.push(format!("attempt_timeout({a:?})"));
        }
        summary.push(label.to_owned());
        let mut summary = summary.join(" → ");
        if !policies.is_empty() {
            let names: Vec<String> = policies.iter().map(|(p, _)| p.to_string()).collect();
            summary.push_str(&format!("; own policies for {}", names.join(", ")));
        }

        // What `Client::health` reads: a handle on each stage's state, the policies' own.
        let mut health = stages.sources();
        health.fallback = fallback.as_ref().map(FallbackCacheLayer::handle);
        health.policies = policies
            .iter()
            .map(|(p, own)| crate::health::PolicySources {
                pattern: p.to_string(),
                stages: own.sources(),
                own: own.own,
            })
            .collect();
        if !policies.is_empty() {
            let routes = policies
                .iter()
                .enumerate()
                .map(|(i, (p, _))| (p.clone(), i));
            health.routes = Some(std::sync::Arc::new(crate::hosts::Table::new(
                routes.collect(),
            )));
        }
        let breakers = crate::circuit_breaker::CircuitBreakerHandle::routed(
            stages.breaker.as_ref().map(CircuitBreakerLayer::handle),
            policies
                .iter()
                .map(|(p, own)| {
                    (
                        p.clone(),
                        own.breaker.as_ref().map(CircuitBreakerLayer::handle),
                    )
                })
                .collect(),
        );
        #[cfg(not(feature = "metrics"))]
        let sink = ();
        let pipeline = stages.assemble(transport.clone(), fallback.as_ref(), &sink);
        let hosts = if policies.is_empty() {
            None
        } else {
            let entries = policies
                .into_iter()
                .map(|(p, own)| {
                    let pipeline = own.assemble(transport.clone(), fallback.as_ref(), &sink);
                    (p, pipeline)
                })
                .collect();
            Some(Box::new(crate::hosts::Table::new(entries)))
        };
        let fallback_handle = fallback.as_ref().map(FallbackCacheLayer::handle);
        Ok((
            made,
            Core {
                pipeline,
                hosts,
                breakers,
                fallback: fallback_handle,
                health,
                summary,
                #[cfg(feature = "metrics")]
                metrics: sink,
            },
        ))
    }

    fn retry_summary(&self) -> Option<String> {
        self.retry
            .as_ref()
            .map(|r| format!("retry(max_attempts={})", r.max_attempts))
    }
}

#[cfg(feature = "metrics")]
type SinkRef = Option<std::sync::Arc<crate::metrics::Sink>>;
#[cfg(not(feature = "metrics"))]
type SinkRef = ();

/// The stages of one pipeline, validated: the client's, or a host policy's (its own stages and
/// the client's it inherits, which share the client's state).
pub(crate) struct Stages {
    total_timeout: Option<Duration>,
    attempt_timeout: Option<Duration>,
    total: TotalTimeoutLayer,
    attempt: Option<AttemptTimeoutLayer>,
    pub(crate) retry: Option<RetryLayer>,
    /// Spending `retry`'s budget (or its own, without `retry`).
    pub(crate) hedge: Option<HedgeLayer>,
    pub(crate) breaker: Option<CircuitBreakerLayer>,
    pub(crate) limiter: Option<RateLimitLayer>,
    pub(crate) bulkhead: Option<BulkheadLayer>,
    /// Which of retry, breaker, limiter, bulkhead and hedge are this pipeline's own (a
    /// policy's inherited ones are not).
    own: [bool; 5],
}

impl Stages {
    /// The client's stages, validated.
    fn client(
        b: &ClientBuilder,
        classifier: &Classifier,
        hook: &Hook,
    ) -> Result<Self, ConfigError> {
        let (total_timeout, attempt_timeout) = timeouts(b.total_timeout, b.attempt_timeout)?;
        let total = total_layer(total_timeout, hook)?;
        let attempt = attempt_layer(attempt_timeout, hook)?;
        let retry = b
            .retry
            .clone()
            .map(|r| retry_layer(r, classifier, hook))
            .transpose()?;
        let hedge = b
            .hedging
            .clone()
            .map(|h| hedge_layer(h, classifier, hook).map(|l| l.under(retry.as_ref())))
            .transpose()?;
        Ok(Stages {
            total_timeout,
            attempt_timeout,
            total,
            attempt,
            retry,
            hedge,
            breaker: b
                .breaker
                .clone()
                .map(|c| breaker_layer(c, classifier, hook))
                .transpose()?,
            limiter: b
                .rate_limit
                .clone()
                .map(|r| limiter_layer(r, classifier, hook))
                .transpose()?,
            bulkhead: b
                .bulkhead
                .clone()
                .map(|c| bulkhead_layer(c, hook))
                .transpose()?,
            own: [true; 5],
        })
    }

    /// A host policy's stages over the `client`'s, validated (errors name the field within
    /// the policy; the caller adds the host).
    fn policy(
        client: &Stages,
        p: &HostPolicy,
        classifier: &Classifier,
        hook: &Hook,
    ) -> Result<Self, ConfigError> {
        fn pick<C: Clone, L: Clone>(
            setting: &Setting<C>,
            client: Option<&L>,
            make: impl FnOnce(C) -> Result<L, ConfigError>,
        ) -> Result<(Option<L>, bool), ConfigError> {
            Ok(match setting {
                Setting::Inherit => (client.cloned(), false),
                Setting::Set(c) => (Some(make(c.clone())?), true),
                Setting::Off => (None, true),
            })
        }
        let over = |s: &Setting<Duration>, c: Option<Duration>| match s {
            Setting::Inherit => c,
            Setting::Set(d) => Some(*d),
            Setting::Off => None,
        };
        let (total_timeout, attempt_timeout) = timeouts(
            over(&p.total_timeout, client.total_timeout),
            over(&p.attempt_timeout, client.attempt_timeout),
        )
        .map_err(|e| {
            if matches!(p.attempt_timeout, Setting::Inherit) {
                ConfigError::new(
                    e.field().to_owned(),
                    format!(
                        "{}: the client's, inherited; set one for this host",
                        e.rule()
                    ),
                )
            } else {
                e
            }
        })?;
        let total = total_layer(total_timeout, hook)?;
        let attempt = attempt_layer(attempt_timeout, hook)?;
        let (retry, own_retry) = pick(&p.retry, client.retry.as_ref(), |r| {
            retry_layer(r, classifier, hook)
        })?;
        // The hedges of this pipeline spend its retry stage's budget, whether the hedging
        // stage is the client's or the policy's.
        let (hedge, own_hedge) = pick(&p.hedging, client.hedge.as_ref(), |h| {
            hedge_layer(h, classifier, hook)
        })?;
        let hedge = hedge.map(|h| h.under(retry.as_ref()));
        let (breaker, own_breaker) = pick(&p.breaker, client.breaker.as_ref(), |c| {
            breaker_layer(c, classifier, hook)
        })?;
        let (limiter, own_limiter) = pick(&p.rate_limit, client.limiter.as_ref(), |r| {
            limiter_layer(r, classifier, hook)
        })?;
        let (bulkhead, own_bulkhead) = pick(&p.bulkhead, client.bulkhead.as_ref(), |c| {
            bulkhead_layer(c, hook)
        })?;
        Ok(Stages {
            total_timeout,
            attempt_timeout,
            total,
            attempt,
            retry,
            hedge,
            breaker,
            limiter,
            bulkhead,
            own: [own_retry, own_breaker, own_limiter, own_bulkhead, own_hedge],
        })
    }

    /// What `Client::health` reads of these stages.
    fn sources(&self) -> crate::health::Sources {
        crate::health::Sources {
            breakers: self.breaker.as_ref().map(CircuitBreakerLayer::handle),
            limiter: self.limiter.as_ref().map(RateLimitLayer::view),
            bulkhead: self.bulkhead.as_ref().map(BulkheadLayer::view),
            budget: self.retry.as_ref().and_then(RetryLayer::budget_view),
            hedge: self.hedge.as_ref().map(HedgeLayer::view),
            ..Default::default()
        }
    }

    /// The pipeline, in the standard order, over `transport`.
    #[cfg_attr(not(feature = "metrics"), allow(clippy::let_unit_value))]
    fn assemble(
        &self,
        transport: Transport,
        fallback: Option<&FallbackCacheLayer>,
        sink: &SinkRef,
    ) -> Pipeline {
        let stage = match &self.attempt {
            Some(l) => Either::Left(l.layer(transport)),
            None => Either::Right(transport),
        };
        #[cfg(feature = "metrics")]
        let stage = crate::metrics::Measured::new(stage, sink.clone());
        #[cfg(not(feature = "metrics"))]
        let () = *sink;
        let stage = match &self.limiter {
            Some(l) => Either::Left(l.layer(stage)),
            None => Either::Right(stage),
        };
        let stage = match &self.breaker {
            Some(l) => Either::Left(l.layer(stage)),
            None => Either::Right(stage),
        };
        let stage = match &self.hedge {
            Some(l) => l.layer(stage),
            None => crate::hedge::HedgeService::off(stage),
        };
        let stage = match &self.retry {
            Some(l) => Either::Left(l.layer(stage)),
            None => Either::Right(Boxed(stage)),
        };
        let stage = match &self.bulkhead {
            Some(l) => Either::Left(l.layer(stage)),
            None => Either::Right(stage),
        };
        let stage = self.total.layer(stage);
        match fallback {
            Some(l) => Either::Left(l.layer(stage)),
            None => Either::Right(stage),
        }
    }
}

/// The two timeouts, checked against each other.
fn timeouts(
    total: Option<Duration>,
    attempt: Option<Duration>,
) -> Result<(Option<Duration>, Option<Duration>), ConfigError> {
    if let (Some(t), Some(a)) = (total, attempt) {
        if a > t && !t.is_zero() && !a.is_zero() {
            return Err(ConfigError::new(
                "attempt_timeout",
                format!("must not exceed total_timeout ({t:?}), got {a:?}"),
            ));
        }
    }
    Ok((total, attempt))
}

fn total_layer(t: Option<Duration>, hook: &Hook) -> Result<TotalTimeoutLayer, ConfigError> {
    // Without a total timeout the stage stays, for requests with a timeout of their own.
    Ok(match t {
        Some(t) => TotalTimeoutLayer::new(t)?,
        None => TotalTimeoutLayer::per_request_only(),
    }
    .with_hook(hook.clone()))
}

fn attempt_layer(
    t: Option<Duration>,
    hook: &Hook,
) -> Result<Option<AttemptTimeoutLayer>, ConfigError> {
    t.map(|t| AttemptTimeoutLayer::new(t).map(|l| l.with_hook(hook.clone())))
        .transpose()
}

fn retry_layer(r: Retry, classifier: &Classifier, hook: &Hook) -> Result<RetryLayer, ConfigError> {
    r.validate()?;
    Ok(RetryLayer::from_parts(r, classifier.clone(), hook.clone()))
}

fn hedge_layer(
    h: Hedging,
    classifier: &Classifier,
    hook: &Hook,
) -> Result<HedgeLayer, ConfigError> {
    h.validate()?;
    Ok(HedgeLayer::from_parts(h, classifier.clone(), hook.clone()))
}

fn breaker_layer(
    b: CircuitBreaker,
    classifier: &Classifier,
    hook: &Hook,
) -> Result<CircuitBreakerLayer, ConfigError> {
    b.validate()?;
    Ok(CircuitBreakerLayer::from_parts(
        b,
        classifier.clone(),
        hook.clone(),
    ))
}

fn limiter_layer(
    r: RateLimit,
    classifier: &Classifier,
    hook: &Hook,
) -> Result<RateLimitLayer, ConfigError> {
    r.validate()?;
    Ok(RateLimitLayer::from_parts(
        r,
        classifier.clone(),
        hook.clone(),
    ))
}

fn bulkhead_layer(b: Bulkhead, hook: &Hook) -> Result<BulkheadLayer, ConfigError> {
    b.validate()?;
    Ok(BulkheadLayer::from_parts(b, hook.clone()))
}

fn build_http(b: reqwest::ClientBuilder) -> Result<reqwest::Client, ConfigError> {
    b.retry(reqwest::retry::never())
        .build()
        .map_err(|e| ConfigError::new("http_client", format!("could not be built: {e}")))
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("total_timeout", &self.total_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("retry", &self.retry)
            .field("hedging", &self.hedging)
            .field("circuit_breaker", &self.breaker)
            .field("rate_limit", &self.rate_limit)
            .field("bulkhead", &self.bulkhead)
            .field("fallback_cache", &self.fallback)
            .field("hosts", &self.hosts)
            .field("classifier", &self.classifier)
            .field("custom_transport", &self.transport.is_some())
            .finish_non_exhaustive()
    }
}
