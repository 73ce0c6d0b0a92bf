//! Health: a snapshot of the pipeline's state, for a service's health endpoint.
//!
//! [`Client::health`](crate::Client::health) reads, per host, the circuit breaker's state and
//! recent failure ratio, the rate limiter's free tokens and server-pushback pause, the
//! bulkhead's load and the hedging delay, and, for the whole client, the retry budget's balance
//! and the fallback store's size. The types are plain data with public fields; with the `serde` feature they
//! implement `serde::Serialize`, so a service can serve a snapshot as JSON as it is:
//!
//! ```json
//! {
//!   "hosts": [
//!     {
//!       "host": "127.0.0.1:44695",
//!       "policy": null,
//!       "circuit": {
//!         "state": "open",
//!         "failure_ratio": 1.0,
//!         "calls": 3,
//!         "failures": 3,
//!         "consecutive_failures": 3,
//!         "half_open_in_secs": 29.798,
//!         "isolated": false
//!       },
//!       "rate_limit": { "tokens": 10, "burst": 10 },
//!       "paused_for_secs": null,
//!       "bulkhead": { "in_flight": 0, "queued": 0 },
//!       "hedge": null
//!     }
//!   ],
//!   "circuit": null,
//!   "rate_limit": null,
//!   "bulkhead": null,
//!   "budget": { "retries_available": 100, "balance": 100.0, "reserve": 100.0 },
//!   "fallback": { "entries": 1, "stored_bytes": 1338, "copying_bytes": 0, "max_bytes": 33554432 },
//!   "fleet": null,
//!   "policies": []
//! }
//! ```
//!
//! (one host of the output of `cargo run --example health`, which shows three).
//!
//! **Durations are seconds**, as a number to the millisecond (rounded up: a time left is never
//! shown shorter than it is), in fields whose names end in `_secs` (`half_open_in_secs`,
//! `paused_for_secs`, `delay_secs`), as OpenTelemetry measures durations. The Rust fields hold
//! the exact [`Duration`]s.
//! A state the client does not keep is `null`: a stage switched off, or a per-host part of a
//! stage shared by all hosts (whose state is then at the top level).
//!
//! # What is listed
//!
//! A host is listed when a stage holds live state for it: a circuit breaker (per host; kept
//! until it is evicted when idle), a token bucket not full again or a pause not over (a
//! bucket full again or a pause that is over holds nothing, and the limiter drops it at its
//! next sweep), calls in flight or queued in a per-host bulkhead, or a latency estimate of the
//! hedging stage ([`Hedging::at_quantile`](crate::hedge::Hedging::at_quantile): kept until a
//! new host takes its place at the stage's `max_hosts`). Every stage that keeps state per host
//! gives its part for every host listed, the state of a host it holds nothing for being a new
//! host's (closed with no calls, a full bucket, no load, a latency estimate with no sample); a
//! fixed hedging delay is given for every host listed whose calls are hedged. So the list is
//! bounded by the stages' `max_hosts` (an isolated breaker excepted, which is kept beyond it),
//! and sorted by host. Hosts are keys, `host:port`: never a path, a query, userinfo or
//! a header value.
//!
//! # What reading costs, and what it does not change
//!
//! Reading takes the shards of each per-host map one at a time, never two at once, long
//! enough to copy out what they hold: the breaker's and the limiter's for reading (a call to a
//! known host reads them too and does not wait; only a call to a new host, which must write,
//! waits for the copy), the bulkhead's, which are mutexes that every call takes, for a moment,
//! and the hedging estimates', mutexes that every hedged call takes to read and to record its
//! host's latency, for a walk over each host's buckets, both into buffers sized beforehand so
//! that nothing is allocated under them. It changes nothing: no host is evicted or swept, no
//! breaker moves from open to half-open (that move is lazy: a breaker whose break is over reads
//! `open` with `half_open_in` zero until the next call), no last-use mark is touched, the
//! budget's window is not moved, no latency estimate is decayed (its counts are read as they
//! would be once decayed, as a call's lookup decays them first). Each stage is read on its own
//! clock (tokio's, so paused time reads exactly); each figure is read atomically, but a
//! snapshot taken while calls run is not one instant of the whole pipeline.
//!
//! The fallback store's figures are moka's, which applies inserts and evictions in batches:
//! [`FallbackCacheHandle::sync`](crate::fallback::FallbackCacheHandle::sync) first for the
//! figures after every insert so far (the snapshot does not call it: it would evict).

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use crate::bulkhead::Load;
use crate::circuit_breaker::CircuitBreakerHandle;
use crate::event::CircuitState;
use crate::fallback::FallbackCacheHandle;
use crate::hosts::Table;

/// A snapshot of a [`Client`](crate::Client)'s pipeline, from
/// [`Client::health`](crate::Client::health). See the [module docs](self) for what it holds
/// and how it serializes.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Health {
    /// The hosts some stage holds state for, sorted by host.
    pub hosts: Vec<HostHealth>,
    /// The circuit breaker shared by all hosts ([`global`](crate::circuit_breaker::CircuitBreaker::global));
    /// `None` without a breaker or with one per host (the default: see [`HostHealth::circuit`]).
    pub circuit: Option<CircuitHealth>,
    /// The token bucket of a rate limiter shared by all hosts (the default scope of
    /// [`RateLimit`](crate::rate_limit::RateLimit)); `None` without a limiter or with one per
    /// host (see [`HostHealth::rate_limit`]). Pauses are per host whatever the scope: see
    /// [`HostHealth::paused_for`].
    pub rate_limit: Option<LimiterHealth>,
    /// The load of a bulkhead shared by all hosts (the default scope of
    /// [`Bulkhead`](crate::bulkhead::Bulkhead)); `None` without a bulkhead or with one per
    /// host (see [`HostHealth::bulkhead`]).
    pub bulkhead: Option<Load>,
    /// The retry budget, shared by all hosts; `None` without retries or without a budget.
    pub budget: Option<BudgetHealth>,
    /// The fallback cache's store; `None` without a fallback cache (the default).
    pub fallback: Option<FallbackHealth>,
    /// Fleet mode (feature `redis`): whether the rate limiter takes its tokens from the quota
    /// shared on Redis or, while Redis fails, from its local share; `None` without fleet
    /// mode. The buckets above are the local limiter's (the fallback's), not the shared one.
    pub fleet: Option<crate::FleetMode>,
    /// The host policies' own stages shared by all the hosts a policy covers
    /// ([`ClientBuilder::host`](crate::ClientBuilder::host)), in the order they were given;
    /// their per-host parts are in [`hosts`](Self::hosts), and the stages a policy inherits
    /// are the client's, above.
    pub policies: Vec<PolicyHealth>,
}

/// What a host policy holds for all its hosts at once: those of its own stages that are
/// shared by all its hosts, and its retry budget. A stage it inherits from the client, or
/// keeps per host, is `None` here.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PolicyHealth {
    /// The policy's pattern, normalised (`"*.example.com"`, `"api.example.com:8443"`).
    pub pattern: String,
    /// Its own circuit breaker, shared by its hosts.
    pub circuit: Option<CircuitHealth>,
    /// Its own rate limiter's bucket, shared by its hosts.
    pub rate_limit: Option<LimiterHealth>,
    /// Its own bulkhead's load, shared by its hosts.
    pub bulkhead: Option<Load>,
    /// Its own retry policy's budget.
    pub budget: Option<BudgetHealth>,
    /// Its own rate limiter's fleet mode (feature `redis`).
    pub fleet: Option<crate::FleetMode>,
}

/// What the pipeline holds for one host.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct HostHealth {
    /// The host's key, `host:port` with the scheme's default port (`"api.example.com:443"`),
    /// as in events.
    pub host: String,
    /// The pattern of the host policy the host's calls go through
    /// ([`ClientBuilder::host`](crate::ClientBuilder::host)); `None` for the client's own.
    pub policy: Option<String>,
    /// The host's circuit breaker; `None` without a breaker or with one shared by all hosts.
    pub circuit: Option<CircuitHealth>,
    /// The host's token bucket; `None` without a rate limiter or with one shared by all hosts.
    pub rate_limit: Option<LimiterHealth>,
    /// How long the rate limiter still holds every call to this host because its server
    /// pushed back (a 429, or a 503 with `Retry-After`), whatever the limiter's scope; `None`
    /// when it is not paused or there is no limiter. Serialized in seconds, as
    /// `paused_for_secs`.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "paused_for_secs", serialize_with = "secs::option")
    )]
    pub paused_for: Option<Duration>,
    /// The calls in flight and queued for this host; `None` without a bulkhead or with one
    /// shared by all hosts.
    pub bulkhead: Option<Load>,
    /// The host's hedging ([`hedge`](crate::hedge)): the delay before a hedge and what it
    /// rests on; `None` without hedging (the client's off, or switched off by the host's
    /// policy, [`HostPolicy::no_hedging`](crate::HostPolicy::no_hedging)).
    pub hedge: Option<HedgeHealth>,
}

/// A host's hedging: after how long a call to it starting now would send its first hedge,
/// and, with a delay at a quantile of the host's latency
/// ([`Hedging::at_quantile`](crate::hedge::Hedging::at_quantile)), what the estimate rests on.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct HedgeHealth {
    /// The fixed delay ([`Hedging::after`](crate::hedge::Hedging::after)), or the host's
    /// estimate as the stage would use it now: its quantile, clamped to
    /// [`min_delay`](crate::hedge::Hedging::min_delay)..=[`max_delay`](crate::hedge::Hedging::max_delay).
    /// `None` while the estimate holds fewer than
    /// [`min_samples`](crate::hedge::Hedging::min_samples) answers: calls then wait
    /// [`fallback_delay`](crate::hedge::Hedging::fallback_delay). Serialized in seconds, as
    /// `delay_secs`.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "delay_secs", serialize_with = "secs::option")
    )]
    pub delay: Option<Duration>,
    /// The quantile of the host's latency the delay is read at (0.95: its p95); `None` with a
    /// fixed delay.
    pub quantile: Option<f64>,
    /// The answers the estimate holds now, as they count after decaying (each counts half as
    /// much every [`half_life`](crate::hedge::Hedging::half_life); see
    /// [`hedge`](crate::hedge)); `None` with a fixed delay, which keeps no estimate.
    pub samples: Option<u64>,
}

/// A circuit breaker's state.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CircuitHealth {
    /// The state (serialized as `"closed"`, `"open"` or `"half_open"`). The move from open to
    /// half-open is made by the next call: a breaker whose break is over is still `Open`, with
    /// [`half_open_in`](Self::half_open_in) zero.
    pub state: CircuitState,
    /// Failures over calls in the window ([`window`](crate::circuit_breaker::CircuitBreaker::window),
    /// 30 s by default); 0 when the window holds no call, and without the ratio rule
    /// ([`no_failure_ratio`](crate::circuit_breaker::CircuitBreaker::no_failure_ratio)),
    /// which keeps no window. The window is not cleared when the breaker opens: it tells what
    /// tripped it until it ages out.
    pub failure_ratio: f64,
    /// The calls counted in the window (outcomes the breaker ignores, such as a 429, are not
    /// counted); 0 without the ratio rule.
    pub calls: u64,
    /// The failures among [`calls`](Self::calls).
    pub failures: u64,
    /// The failures in a row so far, which open the breaker at
    /// [`consecutive_failures`](crate::circuit_breaker::CircuitBreaker::consecutive_failures)
    /// (12 by default; a success resets the run, and closing the breaker does); `None` without
    /// the run rule
    /// ([`no_consecutive_failures`](crate::circuit_breaker::CircuitBreaker::no_consecutive_failures)).
    pub consecutive_failures: Option<u32>,
    /// When open, how long until the break is over and the next call may probe the host
    /// (zero once it is); `None` when closed, half-open or isolated. Serialized in seconds, as
    /// `half_open_in_secs`.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "half_open_in_secs", serialize_with = "secs::option")
    )]
    pub half_open_in: Option<Duration>,
    /// Whether it is held open by hand
    /// ([`CircuitBreakerHandle::isolate`](crate::circuit_breaker::CircuitBreakerHandle::isolate))
    /// until a reset.
    pub isolated: bool,
}

impl CircuitHealth {
    /// A breaker with nothing recorded: closed, no calls, no run (`Some(0)` if it counts runs).
    pub(crate) fn closed(counts_runs: bool) -> Self {
        CircuitHealth {
            state: CircuitState::Closed,
            failure_ratio: 0.0,
            calls: 0,
            failures: 0,
            consecutive_failures: counts_runs.then_some(0),
            half_open_in: None,
            isolated: false,
        }
    }
}

/// A rate limiter's token bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LimiterHealth {
    /// The tokens free now: how many calls could go at once without waiting (a paused host's
    /// calls wait for its pause whatever this says).
    pub tokens: u32,
    /// The most tokens the bucket holds ([`burst`](crate::rate_limit::RateLimit::burst)).
    pub burst: u32,
}

/// The retry budget's balance, over its window
/// ([`RetryBudget::window`](crate::retry::RetryBudget::window), 10 s by default).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BudgetHealth {
    /// The retries the budget would allow now, one after the other, with no new request.
    pub retries_available: u64,
    /// What the window holds, in retries: [`reserve`](Self::reserve), plus the share of a
    /// retry each request in the window deposited
    /// ([`retry_ratio`](crate::retry::RetryBudget::retry_ratio)), less the retries made in
    /// it. A retry needs a whole one.
    pub balance: f64,
    /// The retries allowed whatever the request rate
    /// ([`min_per_second`](crate::retry::RetryBudget::min_per_second) × the window): the
    /// balance of a client with no recent traffic.
    pub reserve: f64,
}

/// The fallback cache's store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct FallbackHealth {
    /// The slots held: one per stored response, plus one per URL whose responses vary by
    /// request headers or were voided
    /// ([`FallbackCacheHandle::entry_count`](crate::fallback::FallbackCacheHandle::entry_count)).
    pub entries: u64,
    /// The bytes held, as entries are weighed
    /// ([`FallbackCacheHandle::stored_bytes`](crate::fallback::FallbackCacheHandle::stored_bytes)).
    pub stored_bytes: u64,
    /// The bytes the copies of bodies being read hold, to be stored once they end
    /// ([`FallbackCacheHandle::copying_bytes`](crate::fallback::FallbackCacheHandle::copying_bytes)).
    pub copying_bytes: u64,
    /// The most bytes the store holds ([`max_bytes`](crate::fallback::FallbackCache::max_bytes)).
    pub max_bytes: u64,
}

/// What a client reads its health from: a handle on each stage's state, `None` for a stage
/// switched off. Cheap to clone (each is an `Arc`).
#[derive(Clone, Default)]
pub(crate) struct Sources {
    pub(crate) breakers: Option<CircuitBreakerHandle>,
    pub(crate) limiter: Option<crate::rate_limit::LimiterView>,
    pub(crate) bulkhead: Option<crate::bulkhead::BulkheadView>,
    pub(crate) budget: Option<crate::retry::BudgetView>,
    pub(crate) hedge: Option<crate::hedge::HedgeView>,
    pub(crate) fallback: Option<FallbackCacheHandle>,
    /// The host policies, in the client's order, and the table that finds a host's.
    pub(crate) policies: Vec<PolicySources>,
    pub(crate) routes: Option<Arc<Table<usize>>>,
}

/// A host policy's stages, as its pipeline has them (its own, or the client's it inherits),
/// and which are its own: only those are read for it (the client's are read once, for all).
#[derive(Clone)]
pub(crate) struct PolicySources {
    pub(crate) pattern: String,
    pub(crate) stages: Sources,
    /// Retry (budget), breaker, limiter, bulkhead, hedging.
    pub(crate) own: [bool; 5],
}

/// The per-host parts, by host, as the stages are read one after the other. A host's key is
/// copied once, when it is first seen.
#[derive(Default)]
struct Hosts {
    table: hashbrown::HashTable<HostHealth>,
    hasher: foldhash::fast::RandomState,
}

impl Hosts {
    fn entry(&mut self, host: &str) -> &mut HostHealth {
        let hash = self.hasher.hash_one(host);
        let hasher = &self.hasher;
        self.table
            .entry(
                hash,
                |h| h.host == host,
                |h| hasher.hash_one(h.host.as_str()),
            )
            .or_insert_with(|| HostHealth {
                host: host.to_owned(),
                policy: None,
                circuit: None,
                rate_limit: None,
                paused_for: None,
                bulkhead: None,
                hedge: None,
            })
            .into_mut()
    }

    /// Reads the per-host parts of `s`'s breakers, limiter, bulkhead and hedging estimates,
    /// those `read` names.
    fn read(&mut self, s: &Sources, [breaker, limiter, bulkhead, hedge]: [bool; 4]) {
        if let Some(b) = s.breakers.as_ref().filter(|_| breaker) {
            b.health_hosts(|host, c| self.entry(host).circuit = Some(c));
        }
        if let Some(l) = s.limiter.as_ref().filter(|_| limiter) {
            l.buckets(|host, bucket| self.entry(host).rate_limit = Some(bucket));
            l.pauses(|host, pause| self.entry(host).paused_for = Some(pause));
        }
        if let Some(b) = s.bulkhead.as_ref().filter(|_| bulkhead) {
            b.hosts(|host, load| self.entry(host).bulkhead = Some(load));
        }
        if let Some(h) = s.hedge.as_ref().filter(|_| hedge) {
            h.hosts(|host, hedge| self.entry(host).hedge = Some(hedge));
        }
    }
}

/// What a host's stages give a host they hold nothing for: a new host's state, for a stage
/// that keeps state per host.
struct Defaults {
    /// Per-host breakers, and whether they count runs of failures.
    breakers_per_host: Option<bool>,
    full: Option<LimiterHealth>,
    bulkhead_per_host: bool,
    /// A host's hedging without an estimate held.
    hedge: Option<HedgeHealth>,
}

impl Defaults {
    fn of(s: &Sources) -> Defaults {
        Defaults {
            breakers_per_host: s
                .breakers
                .as_ref()
                .filter(|b| b.is_per_host())
                .map(|b| b.counts_runs()),
            full: s.limiter.as_ref().and_then(|l| l.full_bucket()),
            bulkhead_per_host: s.bulkhead.as_ref().is_some_and(|b| b.is_per_host()),
            hedge: s.hedge.as_ref().map(|h| h.unseen()),
        }
    }

    fn fill(&self, h: &mut HostHealth) {
        if let (Some(runs), None) = (self.breakers_per_host, &h.circuit) {
            h.circuit = Some(CircuitHealth::closed(runs));
        }
        if h.rate_limit.is_none() {
            h.rate_limit.clone_from(&self.full);
        }
        if self.bulkhead_per_host && h.bulkhead.is_none() {
            h.bulkhead = Some(Load::default());
        }
        if h.hedge.is_none() {
            h.hedge.clone_from(&self.hedge);
        }
    }
}

impl Sources {
    /// Reads every stage, as the [module docs](self) say.
    pub(crate) fn snapshot(&self) -> Health {
        let mut hosts = Hosts::default();
        let mut health = Health {
            hosts: Vec::new(),
            circuit: None,
            rate_limit: None,
            bulkhead: None,
            budget: self.budget.as_ref().map(|b| b.health()),
            fallback: self.fallback.as_ref().map(|f| FallbackHealth {
                entries: f.entry_count(),
                stored_bytes: f.stored_bytes(),
                copying_bytes: f.copying_bytes(),
                max_bytes: f.max_bytes(),
            }),
            fleet: self.limiter.as_ref().and_then(|l| l.fleet_mode()),
            policies: Vec::new(),
        };
        health.circuit = self.breakers.as_ref().and_then(|b| b.health_global());
        health.rate_limit = self.limiter.as_ref().and_then(|l| l.global());
        health.bulkhead = self.bulkhead.as_ref().and_then(|b| b.global());
        hosts.read(self, [true; 4]);
        // A host is in one pipeline's maps only: each host has one policy (or none).
        for p in &self.policies {
            let [retry, breaker, limiter, bulkhead, hedge] = p.own;
            hosts.read(&p.stages, [breaker, limiter, bulkhead, hedge]);
            let s = &p.stages;
            health.policies.push(PolicyHealth {
                pattern: p.pattern.clone(),
                circuit: s
                    .breakers
                    .as_ref()
                    .filter(|_| breaker)
                    .and_then(|b| b.health_global()),
                rate_limit: s
                    .limiter
                    .as_ref()
                    .filter(|_| limiter)
                    .and_then(|l| l.global()),
                bulkhead: s
                    .bulkhead
                    .as_ref()
                    .filter(|_| bulkhead)
                    .and_then(|b| b.global()),
                budget: s.budget.as_ref().filter(|_| retry).map(|b| b.health()),
                fleet: s
                    .limiter
                    .as_ref()
                    .filter(|_| limiter)
                    .and_then(|l| l.fleet_mode()),
            });
        }
        let client = Defaults::of(self);
        let policies: Vec<Defaults> = self
            .policies
            .iter()
            .map(|p| Defaults::of(&p.stages))
            .collect();
        let mut list: Vec<HostHealth> = hosts.table.into_iter().collect();
        list.sort_unstable_by(|a, b| a.host.cmp(&b.host));
        for h in &mut list {
            let policy = self
                .routes
                .as_ref()
                .and_then(|r| r.for_key(&h.host))
                .map(|&(_, i)| i);
            match policy {
                Some(i) => {
                    h.policy = Some(self.policies[i].pattern.clone());
                    policies[i].fill(h);
                }
                None => client.fill(h),
            }
        }
        health.hosts = list;
        health
    }
}

/// Durations as seconds, for serde.
#[cfg(feature = "serde")]
mod secs {
    use std::time::Duration;

    /// `d` in seconds, to the millisecond, rounded up: a time left is never shown shorter than
    /// it is (a breaker shown with zero left has ended its break), and `59.798` reads better
    /// than `59.79795712`.
    pub(super) fn of(d: Duration) -> f64 {
        // At most some 1.8e16 milliseconds: exact enough in an f64.
        d.as_nanos().div_ceil(1_000_000) as f64 / 1_000.0
    }

    pub(super) fn option<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&of(*d)),
            None => s.serialize_none(),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn seconds_to_the_millisecond_rounded_up() {
            assert_eq!(of(Duration::ZERO), 0.0);
            assert_eq!(of(Duration::from_nanos(1)), 0.001);
            assert_eq!(of(Duration::from_millis(1_500)), 1.5);
            assert_eq!(of(Duration::from_nanos(59_797_957_120)), 59.798);
            assert!(of(Duration::MAX).is_finite());
        }
    }
}
