//! Policies per host: one client, several APIs, each with its own rules.
//!
//! [`ClientBuilder::host`](crate::ClientBuilder::host) gives the hosts a pattern names a
//! [`HostPolicy`], which overrides any of the client's timeouts, retry, hedging, circuit
//! breaker, rate limiter and bulkhead and inherits the rest:
//!
//! ```
//! use std::time::Duration;
//! use palisade::hosts::HostPolicy;
//! use palisade::rate_limit::RateLimit;
//! use palisade::retry::Retry;
//!
//! let client = palisade::Client::builder()
//!     // Payments: 25 requests a second, never a retry.
//!     .host("api.payments.example", HostPolicy::new()
//!         .no_retry()
//!         .rate_limit(RateLimit::per_second(25)))
//!     // Every internal service: retried hard, answers fast.
//!     .host("*.internal.example", HostPolicy::new()
//!         .retry(Retry::default().max_attempts(5))
//!         .attempt_timeout(Duration::from_secs(2)))
//!     // One of them is slower.
//!     .host("reports.internal.example:8443", HostPolicy::new()
//!         .attempt_timeout(Duration::from_secs(20)))
//!     .build()?;
//! # let _ = client;
//! # Ok::<(), palisade::ConfigError>(())
//! ```
//!
//! # Patterns
//!
//! - `api.example.com`: that host, on any port and either scheme;
//! - `api.example.com:8443`: that host on that port (`:443` is what an `https` URL without a
//!   port uses, `:80` an `http` one);
//! - `*.example.com`: any host under `example.com` (`a.example.com`, `a.b.example.com`), not
//!   `example.com` itself, as in TLS certificates; `*.example.com:8443` on that port only;
//! - IP addresses (`127.0.0.1`, `[::1]:8080`) as hosts.
//!
//! Host names are normalised the way URLs are: case folded, IDNA (`bücher.example` is
//! `xn--bcher-kva.example`), a trailing dot dropped (`api.example.com.` is
//! `api.example.com`), IPv6 in its shortest form. The same is done to every request's host
//! and to the hosts named to the circuit breaker's handle, so a pattern, a request and a call
//! to [`isolate`](crate::circuit_breaker::CircuitBreakerHandle::isolate) agree however each is
//! spelt.
//!
//! **The most specific pattern wins**: an exact host with a port, then an exact host, then the
//! longest wildcard (with a port before without). A request whose host no pattern names goes
//! through the client's own policy.
//!
//! # What is shared
//!
//! A stage a policy inherits is the client's own, state and all: with the client's
//! [global](crate::rate_limit::RateLimit::global) rate limit inherited, the policy's hosts
//! take tokens from the same bucket as every other host, and the client's retry budget is
//! theirs too. A stage a policy sets is its own, shared by the hosts the policy covers (a
//! global limiter set in a `*.partner.example` policy is one bucket for all of them; a per-host
//! one is a bucket each). The fallback cache, the classifier, the event hook and the metrics
//! are the client's, for every host (the fallback cache bounds its copy of a body by the
//! client's total timeout).
//!
//! A policy's own rate limit in fleet mode (feature `redis`, `RateLimit::redis`) shares its
//! quota on Redis with every limiter of the same prefix: give it a `Redis::prefix` of its own
//! unless it is meant to draw on the client's quota.
//!
//! Hedging spends the retry budget of the pipeline it is in: a policy that inherits the
//! client's hedging but sets a retry policy of its own hedges (with the client's latency
//! estimates) on its own budget, and a policy that sets hedging but inherits the client's
//! retry spends the client's budget.
//!
//! # Cost
//!
//! A client without policies pays nothing for them: the pipeline is picked by one branch. With
//! policies, each call looks its host up: one hash lookup for an exact host, one more per label
//! of the host for wildcards.

use std::fmt;
use std::time::Duration;

use url::{Host, Url};

use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;
use crate::hedge::Hedging;
use crate::rate_limit::RateLimit;
use crate::retry::Retry;

/// What a policy does with one of the client's settings.
#[derive(Debug, Clone, Default)]
pub(crate) enum Setting<T> {
    /// The client's, shared.
    #[default]
    Inherit,
    /// The policy's own.
    Set(T),
    /// Switched off for these hosts.
    Off,
}

/// The rules for the hosts a pattern names: each setting the policy makes overrides the
/// client's, each it leaves is inherited (see [the module docs](self) for what that shares).
///
/// Values are checked by [`ClientBuilder::build`](crate::ClientBuilder::build), which names
/// a bad one with its host: `hosts."api.example.com".retry.max_attempts`.
#[derive(Clone, Default)]
#[must_use = "a policy does nothing until given to `ClientBuilder::host`"]
pub struct HostPolicy {
    pub(crate) total_timeout: Setting<Duration>,
    pub(crate) attempt_timeout: Setting<Duration>,
    pub(crate) retry: Setting<Retry>,
    pub(crate) breaker: Setting<CircuitBreaker>,
    pub(crate) rate_limit: Setting<RateLimit>,
    pub(crate) bulkhead: Setting<Bulkhead>,
    pub(crate) hedging: Setting<Hedging>,
}

impl HostPolicy {
    /// A policy that inherits everything from the client.
    pub fn new() -> Self {
        HostPolicy::default()
    }

    /// The total timeout for these hosts (see
    /// [`ClientBuilder::total_timeout`](crate::ClientBuilder::total_timeout)).
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = Setting::Set(timeout);
        self
    }

    /// No total timeout for these hosts.
    pub fn no_total_timeout(mut self) -> Self {
        self.total_timeout = Setting::Off;
        self
    }

    /// The attempt timeout for these hosts; it must not exceed their total timeout, the
    /// policy's or the client's.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Setting::Set(timeout);
        self
    }

    /// No attempt timeout for these hosts.
    pub fn no_attempt_timeout(mut self) -> Self {
        self.attempt_timeout = Setting::Off;
        self
    }

    /// The retry policy for these hosts, with a retry budget of its own.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Setting::Set(retry);
        self
    }

    /// No retry for these hosts: every request to them is sent once.
    pub fn no_retry(mut self) -> Self {
        self.retry = Setting::Off;
        self
    }

    /// The circuit breaker for these hosts (its breakers are its own).
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Setting::Set(breaker);
        self
    }

    /// No circuit breaker for these hosts.
    pub fn no_circuit_breaker(mut self) -> Self {
        self.breaker = Setting::Off;
        self
    }

    /// The rate limit for these hosts (its buckets are its own).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Setting::Set(limit);
        self
    }

    /// No rate limit for these hosts, whatever the client's.
    pub fn no_rate_limit(mut self) -> Self {
        self.rate_limit = Setting::Off;
        self
    }

    /// The bulkhead for these hosts (its places are its own).
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Setting::Set(bulkhead);
        self
    }

    /// No bulkhead for these hosts, whatever the client's.
    pub fn no_bulkhead(mut self) -> Self {
        self.bulkhead = Setting::Off;
        self
    }

    /// Hedging for these hosts (see [`hedge`](crate::hedge)), with latency estimates of its
    /// own. Its hedges spend the retry budget these hosts' retry stage spends (the client's,
    /// unless the policy sets a retry policy of its own).
    pub fn hedging(mut self, hedging: Hedging) -> Self {
        self.hedging = Setting::Set(hedging);
        self
    }

    /// No hedging for these hosts, whatever the client's.
    pub fn no_hedging(mut self) -> Self {
        self.hedging = Setting::Off;
        self
    }
}

impl fmt::Debug for HostPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HostPolicy");
        fn field<T: fmt::Debug>(d: &mut fmt::DebugStruct<'_, '_>, name: &str, s: &Setting<T>) {
            match s {
                Setting::Inherit => {}
                Setting::Set(t) => {
                    d.field(name, t);
                }
                Setting::Off => {
                    d.field(name, &"off");
                }
            }
        }
        field(&mut d, "total_timeout", &self.total_timeout);
        field(&mut d, "attempt_timeout", &self.attempt_timeout);
        field(&mut d, "retry", &self.retry);
        field(&mut d, "circuit_breaker", &self.breaker);
        field(&mut d, "rate_limit", &self.rate_limit);
        field(&mut d, "bulkhead", &self.bulkhead);
        field(&mut d, "hedging", &self.hedging);
        d.finish()
    }
}

/// A host pattern, parsed and normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Pattern {
    /// `*.` before the domain.
    pub(crate) wildcard: bool,
    /// The normalised host (the domain after `*.` for a wildcard).
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
}

impl Pattern {
    /// Parses `text`, or says what is wrong with it (the rule of a [`ConfigError`]).
    pub(crate) fn parse(text: &str) -> Result<Pattern, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("is empty: name a host (`api.example.com`, `*.example.com`)".into());
        }
        if t.contains("://") || t.contains(['/', '?', '#', '@']) {
            return Err(
                "must be a host, `host:port` or `*.domain`, without a scheme, path or userinfo"
                    .into(),
            );
        }
        let (wildcard, rest) = match t.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        if rest.contains('*') {
            return Err("may hold one `*`, as its first label (`*.example.com`)".into());
        }
        let (host, port) =
            normalise(rest).ok_or_else(|| "is not a valid host (or `host:port`)".to_owned())?;
        if wildcard && !host.contains('.') {
            return Err(
                "names a whole top-level domain: a wildcard needs a domain of two labels or more (`*.example.com`)"
                    .into(),
            );
        }
        if wildcard && (host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()) {
            return Err("is a wildcard over an IP address".into());
        }
        Ok(Pattern {
            wildcard,
            host,
            port,
        })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// `host` or `host:port` normalised as a URL's authority is: the host as [`url`] writes it
/// (lower case, IDNA, IPv6 compressed and bracketed), without a trailing dot, and the port if
/// one is given. `None` if it is not a valid authority.
pub(crate) fn normalise(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = split_port(authority)?;
    // Parse as the host of an `http` URL: what every request's host went through.
    let url = Url::parse(&format!("http://{host}/")).ok()?;
    if url.port().is_some() || !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    let host = match url.host()? {
        Host::Domain(d) => trim_dot(d).to_owned(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

/// `text` split at a final `:port`, the port parsed. An IPv6 address keeps its brackets.
fn split_port(text: &str) -> Option<(&str, Option<u16>)> {
    let after_bracket = text.rfind(']').map_or(0, |i| i + 1);
    match text[after_bracket..].rfind(':') {
        Some(i) => {
            let i = after_bracket + i;
            let digits = &text[i + 1..];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((&text[..i], Some(digits.parse().ok()?)))
        }
        None => {
            // An unbracketed IPv6 address (`::1`) is not a host here.
            if after_bracket == 0 && text.contains(':') {
                return None;
            }
            Some((text, None))
        }
    }
}

/// A host without its trailing dot (`example.com.` is `example.com`).
pub(crate) fn trim_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// The keys of per-host state that a host named by a user stands for, normalised: a URL
/// (`https://API.example.com/`) or `host:port` gives one (`api.example.com:443`); a bare host
/// gives its keys on the default ports of `https` and `http` (`api.example.com:443` and
/// `api.example.com:80`). Nothing for text that is not a host.
pub(crate) fn keys_named(text: &str) -> Vec<String> {
    let text = text.trim();
    if text.contains("://") {
        return match Url::parse(text) {
            Ok(url) if url.host_str().is_some() => vec![crate::host::host_key(&url)],
            _ => Vec::new(),
        };
    }
    match normalise(text) {
        Some((host, Some(port))) => vec![crate::host::cut(format!("{host}:{port}"))],
        Some((host, None)) => vec![
            crate::host::cut(format!("{host}:443")),
            crate::host::cut(format!("{host}:80")),
        ],
        None => Vec::new(),
    }
}

/// The hosts of a client's policies, to pick the policy of a request's host.
///
/// `T` is what a policy gives (its pipeline; a stage's handle). Exact hosts are looked up in
/// one map; wildcards by each suffix of the host at a dot, longest first.
pub(crate) struct Table<T> {
    exact: hashbrown::HashMap<Box<str>, Ports, foldhash::fast::RandomState>,
    wildcard: hashbrown::HashMap<Box<str>, Ports, foldhash::fast::RandomState>,
    pub(crate) entries: Vec<(Pattern, T)>,
}

/// The policies for one host (or domain): on any port, and on given ports.
#[derive(Default)]
struct Ports {
    any: Option<usize>,
    on: Vec<(u16, usize)>,
}

impl Ports {
    fn get(&self, port: Option<u16>) -> Option<usize> {
        port.and_then(|p| self.on.iter().find(|(q, _)| *q == p).map(|&(_, i)| i))
            .or(self.any)
    }
}

impl<T> Table<T> {
    /// A table of `entries`; for two equal patterns, the later wins.
    pub(crate) fn new(entries: Vec<(Pattern, T)>) -> Table<T> {
        let mut exact: hashbrown::HashMap<Box<str>, Ports, _> = Default::default();
        let mut wildcard: hashbrown::HashMap<Box<str>, Ports, _> = Default::default();
        for (i, (p, _)) in entries.iter().enumerate() {
            let map = if p.wildcard {
                &mut wildcard
            } else {
                &mut exact
            };
            let ports = map.entry(p.host.as_str().into()).or_default();
            match p.port {
                None => ports.any = Some(i),
                Some(port) => match ports.on.iter_mut().find(|(q, _)| *q == port) {
                    Some(slot) => slot.1 = i,
                    None => ports.on.push((port, i)),
                },
            }
        }
        Table {
            exact,
            wildcard,
            entries,
        }
    }

    /// The policy for `host` (normalised, as a URL gives it) on `port`.
    pub(crate) fn get(&self, host: &str, port: Option<u16>) -> Option<&(Pattern, T)> {
        let host = trim_dot(host);
        if let Some(i) = self.exact.get(host).and_then(|p| p.get(port)) {
            return self.entries.get(i);
        }
        if self.wildcard.is_empty() || host.starts_with('[') {
            return None;
        }
        // `a.b.example.com` under `b.example.com`, then `example.com` (then `com`, which no
        // pattern is).
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(i) = self.wildcard.get(rest).and_then(|p| p.get(port)) {
                return self.entries.get(i);
            }
        }
        None
    }

    /// The policy for `url`'s host and port (the scheme's default when it gives none).
    pub(crate) fn for_url(&self, url: &Url) -> Option<&(Pattern, T)> {
        self.get(url.host_str()?, url.port_or_known_default())
    }

    /// The policy for a per-host key, `host:port` as [`crate::host::host_key`] makes it.
    pub(crate) fn for_key(&self, key: &str) -> Option<&(Pattern, T)> {
        let (host, port) = split_port(key)?;
        self.get(host, port)
    }
}

impl<T> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(p, _)| p.to_string()))
            .finish()
    }
}

/// The name of a policy in a configuration error: `hosts."api.example.com"`.
pub(crate) fn config_prefix(pattern: &str) -> String {
    format!("hosts.{pattern:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn patterns_are_normalised() {
        assert_eq!(p("API.Example.COM").to_string(), "api.example.com");
        assert_eq!(p("api.example.com.").to_string(), "api.example.com");
        assert_eq!(
            p("api.example.com:8443").to_string(),
            "api.example.com:8443"
        );
        assert_eq!(p("*.Example.com").to_string(), "*.example.com");
        assert_eq!(p("*.example.com:443").to_string(), "*.example.com:443");
        assert_eq!(p("bücher.example").to_string(), "xn--bcher-kva.example");
        assert_eq!(p("[0:0::1]:8080").to_string(), "[::1]:8080");
        assert_eq!(p("127.0.0.1").to_string(), "127.0.0.1");
        assert_eq!(p(" api.example.com ").to_string(), "api.example.com");
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for bad in [
            "",
            "  ",
            "https://api.example.com",
            "api.example.com/path",
            "user@api.example.com",
            "api.example.com:",
            "api.example.com:99999",
            "api.example.com:x",
            "*",
            "*.com",
            "a.*.example.com",
            "**.example.com",
            "*.127.0.0.1",
            "*.[::1]",
            "::1",
            "exa mple.com",
            "api.example.com?x=1",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let t = Table::new(vec![
            (p("*.example.com"), "wild"),
            (p("*.api.example.com"), "wild-api"),
            (p("*.example.com:8443"), "wild-8443"),
            (p("api.example.com"), "exact"),
            (p("api.example.com:8443"), "exact-8443"),
        ]);
        let get = |h: &str, port: u16| t.get(h, Some(port)).map(|e| e.1);
        assert_eq!(get("api.example.com", 443), Some("exact"));
        assert_eq!(get("api.example.com", 8443), Some("exact-8443"));
        assert_eq!(get("api.example.com.", 443), Some("exact"));
        assert_eq!(get("v1.api.example.com", 443), Some("wild-api"));
        assert_eq!(get("a.b.api.example.com", 443), Some("wild-api"));
        assert_eq!(get("www.example.com", 443), Some("wild"));
        assert_eq!(get("www.example.com", 8443), Some("wild-8443"));
        assert_eq!(
            get("example.com", 443),
            None,
            "a wildcard does not cover its domain"
        );
        assert_eq!(get("notexample.com", 443), None);
        assert_eq!(get("example.org", 443), None);
        assert_eq!(get("[::1]", 443), None);
    }

    #[test]
    fn a_later_equal_pattern_wins() {
        let t = Table::new(vec![
            (p("api.example.com"), 1),
            (p("API.example.com."), 2),
            (p("a.test:80"), 3),
            (p("a.test:80"), 4),
        ]);
        assert_eq!(t.get("api.example.com", Some(443)).map(|e| e.1), Some(2));
        assert_eq!(t.get("a.test", Some(80)).map(|e| e.1), Some(4));
        assert_eq!(t.get("a.test", Some(81)), None);
    }

    #[test]
    fn urls_and_keys_find_their_policy() {
        let t = Table::new(vec![
            (p("api.example.com:443"), "https"),
            (p("a.test"), "any"),
        ]);
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            t.for_url(&url("https://API.example.com./x")).map(|e| e.1),
            Some("https")
        );
        assert_eq!(
            t.for_url(&url("http://api.example.com/")).map(|e| e.1),
            None
        );
        assert_eq!(
            t.for_url(&url("http://a.test:9/")).map(|e| e.1),
            Some("any")
        );
        assert_eq!(t.for_key("api.example.com:443").map(|e| e.1), Some("https"));
        assert_eq!(t.for_key("a.test:80").map(|e| e.1), Some("any"));
    }

    #[test]
    fn named_hosts_give_their_keys() {
        assert_eq!(keys_named("API.Example.com:443"), ["api.example.com:443"]);
        assert_eq!(
            keys_named("https://API.example.com./x"),
            ["api.example.com:443"]
        );
        assert_eq!(
            keys_named("api.example.com."),
            ["api.example.com:443", "api.example.com:80"]
        );
        assert_eq!(keys_named("[0::1]:9"), ["[::1]:9"]);
        assert!(keys_named("not a host").is_empty());
        assert!(keys_named("").is_empty());
    }

    #[test]
    fn config_prefixes_quote_the_pattern() {
        assert_eq!(
            config_prefix("api.example.com"),
            "hosts.\"api.example.com\""
        );
    }
}
