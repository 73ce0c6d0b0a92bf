//! Fleet mode (feature `redis`): the rate limiter's quota and server pushback shared by every
//! instance of an application, on Redis, with a local fallback when Redis fails.
//!
//! See [`Redis`] for the settings and the [module docs](super#fleet-mode) for the guarantees.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script, Value};
use tokio::time::Instant;

use super::key::HostKey;
use super::limiter::Denied;
use super::{RemoteCheck, Verdict};
use crate::error::ConfigError;
use crate::event::{Event, FleetMode, Hook};

/// The GCRA of the shared bucket, and the pause of its host, in one atomic step on Redis's
/// clock (`TIME`), so that instances whose clocks differ agree.
///
/// `KEYS[1]`: the bucket (its theoretical arrival time, in µs); `KEYS[2]`: the host's pause
/// (a key whose time to live is the pause left). `ARGV[1]`: the token interval in µs;
/// `ARGV[2]`: the burst; `ARGV[3]`: the tokens wanted (the lease). Returns `{n, 0, 0}` for `n`
/// tokens taken (1 to the tokens wanted: as many as are free), `{0, wait_µs, 0}` when no token
/// is free, `{0, wait_µs, 1}` when the host is paused. A bucket key of another type, or a
/// value that is not a number, makes the script fail: the limiter falls back.
const CHECK: &str = r"
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then
  return {0, pause * 1000, 1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = interval * (tonumber(ARGV[2]) - 1)
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  tat = tonumber(stored)
  if tat == nil then
    return redis.error_reply('palisade: the bucket is not a number')
  end
  if tat < now then
    tat = now
  end
end
local over = tat - now
if over > tau then
  return {0, over - tau, 0}
end
local taken = math.min(tonumber(ARGV[3]), math.floor((tau - over) / interval) + 1)
local new = tat + taken * interval
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000) + 1)
return {taken, 0, 0}
";

/// A pause that only ever grows: `KEYS[1]` is set to expire in `ARGV[1]` ms unless it already
/// expires later. Returns 1 when it set it.
const PUSHBACK: &str = r"
local left = redis.call('PTTL', KEYS[1])
local ms = tonumber(ARGV[1])
if left < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  return 1
end
return 0
";

/// Fleet mode's settings, for [`RateLimit::redis`](super::RateLimit::redis).
///
/// ```
/// use std::time::Duration;
/// use palisade::rate_limit::{RateLimit, Redis};
///
/// // 100 calls a second to each host for the whole fleet of 8 instances; while Redis fails,
/// // each instance allows an eighth of it.
/// let limit = RateLimit::per_second(100).burst(20).per_host().redis(
///     Redis::new("redis://:secret@redis.internal:6379/0")
///         .prefix("billing-api")
///         .timeout(Duration::from_millis(50))
///         .local_share(1.0 / 8.0),
/// );
/// // The password is never shown.
/// assert!(!format!("{limit:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[must_use = "settings do nothing until given to a rate limit"]
pub struct Redis {
    url: String,
    prefix: String,
    timeout: Duration,
    local_share: f64,
    unlimited_fallback: bool,
    reconnect_every: Duration,
    lease: u32,
}

impl Redis {
    /// The Redis (or Valkey) at `url`: `redis://[user:password@]host[:port][/db]`,
    /// `redis+unix:///path`. The URL is checked when the client or layer is built, and never
    /// logged or shown whole: its password and user are left out of `Debug`, of events and of
    /// errors.
    pub fn new(url: impl Into<String>) -> Self {
        Redis {
            url: url.into(),
            prefix: "palisade".to_owned(),
            timeout: Duration::from_millis(50),
            local_share: 1.0,
            unlimited_fallback: false,
            reconnect_every: Duration::from_millis(250),
            lease: 1,
        }
    }

    /// The prefix of palisade's keys: `<prefix>:bucket:<host:port>` (or `<prefix>:bucket`
    /// for a global limiter) and `<prefix>:pause:<host:port>`. Give every limiter that must not
    /// share a quota a prefix of its own. Default `palisade`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one Redis call may take (connecting included) before the limiter gives up on
    /// it and falls back; also bounded by the request's deadline. Default 50 ms; must be more
    /// than zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The share of the quota each instance allows while Redis fails: with `n` instances,
    /// `1.0 / n` keeps the fleet within the quota. Rate and burst are scaled, and each is at
    /// least 1. Default 1.0 (each instance alone allows the whole quota, as without fleet
    /// mode); must be more than 0 and at most 1.
    pub fn local_share(mut self, share: f64) -> Self {
        self.local_share = share;
        self
    }

    /// While Redis fails, lets every call through instead of a local share of the quota
    /// (server pushback seen by this instance still pauses its host). Off by default.
    pub fn unlimited_fallback(mut self) -> Self {
        self.unlimited_fallback = true;
        self
    }

    /// While Redis fails, how often the limiter tries to reach it again in the background.
    /// Default 250 ms; must be more than zero.
    pub fn reconnect_every(mut self, every: Duration) -> Self {
        self.reconnect_every = every;
        self
    }

    /// Tokens an instance takes from the shared bucket per Redis round trip, and spends on its
    /// next calls to the same key without asking again: up to `n` times fewer round trips.
    /// Default 1 (every call asks Redis); must be from 1 to the burst.
    ///
    /// What it costs: a leased token was taken from the shared bucket when it was leased, so
    /// over time the fleet still sends no more than the quota, but an instance may spend
    /// tokens it leased a moment ago: in any span of time the fleet may send up to `n − 1`
    /// calls per instance more than the quota allows in that span. A lease is kept for one
    /// token interval times `n`, at least 100 ms and at most 1 s; then what is left of it is
    /// given up (the fleet then sends less than it could). A pause set by another instance's
    /// pushback is seen at the next round trip, so up to `n − 1` calls later.
    pub fn lease(mut self, n: u32) -> Self {
        self.lease = n;
        self
    }

    pub(crate) fn validate(&self, burst: u32) -> Result<(), ConfigError> {
        if self.lease == 0 || self.lease > burst {
            return Err(ConfigError::new(
                "rate_limit.redis.lease",
                format!("must be from 1 to the burst ({burst}), got {}", self.lease),
            ));
        }
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            // The error's text may quote the URL: only its kind is given.
            return Err(ConfigError::new(
                "rate_limit.redis.url",
                format!("is not a Redis URL ({:?})", e.kind()),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "rate_limit.redis.timeout",
                "must be more than zero",
            ));
        }
        if !(self.local_share > 0.0 && self.local_share <= 1.0) {
            return Err(ConfigError::new(
                "rate_limit.redis.local_share",
                format!(
                    "must be more than 0 and at most 1, got {}",
                    self.local_share
                ),
            ));
        }
        if self.reconnect_every.is_zero() {
            return Err(ConfigError::new(
                "rate_limit.redis.reconnect_every",
                "must be more than zero",
            ));
        }
        Ok(())
    }

    /// The local fallback's rate and burst for a quota of `rate` and `burst`.
    pub(crate) fn local_quota(&self, rate: u32, burst: u32) -> (u32, u32) {
        let scale = |n: u32| ((f64::from(n) * self.local_share).round() as u32).max(1);
        (scale(rate), scale(burst))
    }

    pub(crate) fn is_unlimited_fallback(&self) -> bool {
        self.unlimited_fallback
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("local_share", &self.local_share)
            .field("unlimited_fallback", &self.unlimited_fallback)
            .field("reconnect_every", &self.reconnect_every)
            .field("lease", &self.lease)
            .finish()
    }
}

/// `url` without its user and password (or `<not a URL>`).
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// Why a Redis call failed, for events, logs and metrics.
fn failure(e: &redis::RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        "unreachable"
    } else if matches!(
        e.kind(),
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
    ) {
        "bad reply"
    } else {
        "error reply"
    }
}

/// The shared state of one limiter in fleet mode.
pub(crate) struct Fleet {
    cfg: Redis,
    client: redis::Client,
    conn: RwLock<Option<MultiplexedConnection>>,
    /// One connection attempt at a time, for the calls that find none.
    connecting: tokio::sync::Mutex<()>,
    /// The shared quota is in use (else the local fallback, while a background task tries to
    /// reach Redis again).
    shared: AtomicBool,
    check: Script,
    pushback: Script,
    bucket_global: String,
    interval_us: u64,
    burst: u32,
    per_host: bool,
    hook: Hook,
    /// Tokens leased and not yet spent, by key (see [`Redis::lease`]); empty without leases.
    leases: Mutex<HashMap<Vec<u8>, Lease>>,
    /// How long a lease is kept.
    lease_for: Duration,
    max_leases: usize,
}

/// Tokens taken from the shared bucket for calls to come.
#[derive(Debug, Clone, Copy)]
struct Lease {
    tokens: u32,
    until: Instant,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("redis", &self.cfg)
            .field("shared", &self.shared.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Fleet mode for a quota of one token per `interval` and `burst`, with settings the
    /// caller validated.
    pub(crate) fn new(
        cfg: Redis,
        interval: Duration,
        burst: u32,
        per_host: bool,
        max_hosts: usize,
        hook: Hook,
    ) -> Option<Fleet> {
        let client = redis::Client::open(cfg.url.as_str()).ok()?;
        let bucket_global = format!("{}:bucket", cfg.prefix);
        let lease_for = interval
            .saturating_mul(cfg.lease)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        Some(Fleet {
            leases: Mutex::new(HashMap::new()),
            lease_for,
            max_leases: max_hosts,
            client,
            conn: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            shared: AtomicBool::new(true),
            check: Script::new(CHECK),
            pushback: Script::new(PUSHBACK),
            bucket_global,
            interval_us: u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            burst,
            per_host,
            hook,
            cfg,
        })
    }

    /// Whether the shared quota is in use now (else the local fallback).
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Acquire)
    }

    pub(crate) fn cfg(&self) -> &Redis {
        &self.cfg
    }

    fn bucket_key(&self, host: &HostKey) -> String {
        if self.per_host {
            format!("{}:bucket:{}", self.cfg.prefix, host.as_str())
        } else {
            self.bucket_global.clone()
        }
    }

    fn pause_key(&self, host: &HostKey) -> String {
        format!("{}:pause:{}", self.cfg.prefix, host.as_str())
    }

    /// Asks Redis for a token for `host`, within the Redis timeout and before `deadline`.
    /// `None` (the caller uses the local fallback) when Redis failed, timed out, or the
    /// deadline left no time; a failure of Redis's own switches to the fallback.
    pub(crate) fn check(self: &Arc<Self>, host: &HostKey, deadline: Option<Instant>) -> CheckOr {
        let now = Instant::now();
        let mut budget = self.cfg.timeout;
        let mut by_deadline = false;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(now);
            if left <= budget {
                budget = left;
                by_deadline = true;
            }
        }
        if self.cfg.lease > 1 && self.spend_lease(host, now) {
            return CheckOr::Taken;
        }
        if budget.is_zero() {
            return CheckOr::Local;
        }
        let this = self.clone();
        let (bucket, pause) = (self.bucket_key(host), self.pause_key(host));
        let until = now + budget;
        let lease_key = (self.cfg.lease > 1).then(|| host.as_bytes().to_vec());
        CheckOr::Remote(
            Box::pin(async move {
                let run = async {
                    let mut conn = this.connection().await?;
                    let reply: Value = this
                        .check
                        .key(&bucket)
                        .key(&pause)
                        .arg(this.interval_us)
                        .arg(this.burst)
                        .arg(this.cfg.lease)
                        .invoke_async(&mut conn)
                        .await?;
                    parse(&reply, this.cfg.lease).ok_or_else(|| {
                        redis::RedisError::from((redis::ErrorKind::Parse, "unexpected reply"))
                    })
                };
                match tokio::time::timeout_at(until, run).await {
                    Ok(Ok(Taken(n))) => {
                        if let Some(key) = lease_key {
                            this.keep_lease(key, n - 1);
                        }
                        Some(Verdict::Taken)
                    }
                    Ok(Ok(Said(v))) => Some(v),
                    Ok(Err(e)) => {
                        this.fall_back(failure(&e));
                        None
                    }
                    // The request's deadline, not Redis, cut it short: no fallback for all.
                    Err(_) if by_deadline => None,
                    Err(_) => {
                        this.fall_back("timeout");
                        None
                    }
                }
            }),
            until,
        )
    }

    /// Spends a leased token for `host`, if one is left and its lease still holds.
    fn spend_lease(&self, host: &HostKey, now: Instant) -> bool {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        match leases.get_mut(host.as_bytes()) {
            Some(l) if l.tokens > 0 && l.until > now => {
                l.tokens -= 1;
                true
            }
            Some(_) => {
                leases.remove(host.as_bytes());
                false
            }
            None => false,
        }
    }

    /// Keeps `tokens` leased for `key`'s calls to come (none kept once `max_hosts` keys hold
    /// a live lease: those tokens are given up).
    fn keep_lease(&self, key: Vec<u8>, tokens: u32) {
        if tokens == 0 {
            return;
        }
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if leases.len() >= self.max_leases && !leases.contains_key(&key) {
            leases.retain(|_, l| l.tokens > 0 && l.until > now);
            if leases.len() >= self.max_leases {
                return;
            }
        }
        let until = now + self.lease_for;
        let l = leases.entry(key).or_insert(Lease { tokens: 0, until });
        l.tokens = l.tokens.saturating_add(tokens);
        l.until = until;
    }

    /// Sets the host's fleet-wide pause (fire and forget: the response is not held for it).
    pub(crate) fn push_back(self: &Arc<Self>, host: &HostKey, pause: Duration) {
        if !self.is_shared() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        let key = self.pause_key(host);
        let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX).max(1);
        rt.spawn(async move {
            let run = async {
                let mut conn = this.connection().await?;
                this.pushback
                    .key(&key)
                    .arg(ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            };
            match tokio::time::timeout(this.cfg.timeout, run).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => this.fall_back(failure(&e)),
                Err(_) => this.fall_back("timeout"),
            }
        });
    }

    /// The connection, made now if there is none (one attempt at a time; the others wait for
    /// it, within their own timeout).
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.cfg.timeout))
            .set_response_timeout(Some(self.cfg.timeout));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = Some(c.clone());
        Ok(c)
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Switches to the local fallback (once: the first failure does), drops the connection,
    /// and starts trying to reach Redis again in the background.
    fn fall_back(self: &Arc<Self>, reason: &'static str) {
        if self
            .shared
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = None;
        tracing::warn!(
            redis = %redacted(&self.cfg.url),
            reason,
            "fleet rate limit: Redis failed, using the local share of the quota"
        );
        self.hook.emit_ref(&Event::FleetModeChanged {
            mode: FleetMode::Local,
            reason,
        });
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime to reconnect from: the next call that finds one will.
            self.shared.store(true, Ordering::Release);
            return;
        };
        let this = self.clone();
        rt.spawn(async move { this.reconnect().await });
    }

    /// Tries to reach Redis every `reconnect_every` until a PING answers, then returns to the
    /// shared quota.
    async fn reconnect(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.cfg.reconnect_every).await;
            let ping = async {
                let mut c = self.connection().await?;
                redis::cmd("PING").query_async::<String>(&mut c).await
            };
            match tokio::time::timeout(self.cfg.timeout, ping).await {
                Ok(Ok(_)) => break,
                _ => {
                    *self.conn.write().unwrap_or_else(PoisonError::into_inner) = None;
                }
            }
        }
        self.shared.store(true, Ordering::Release);
        tracing::warn!(
            redis = %redacted(&self.cfg.url),
            "fleet rate limit: Redis answers again, using the shared quota"
        );
        self.hook.emit_ref(&Event::FleetModeChanged {
            mode: FleetMode::Shared,
            reason: "reconnected",
        });
    }
}

/// What a call in fleet mode does for its token.
pub(crate) enum CheckOr {
    /// A leased token was spent: go.
    Taken,
    /// Ask Redis (the future resolves by the instant given; `None`: use the local fallback).
    Remote(RemoteCheck, Instant),
    /// Use the local fallback now.
    Local,
}

/// The check script's reply, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// This many tokens taken (1 to the lease).
    Taken(u32),
    /// No token.
    Said(Verdict),
}

use Reply::{Said, Taken};

/// Reads the check script's reply, `[taken, wait_µs, paused]`, strictly: anything else (or
/// more tokens than asked for) is garbage.
fn parse(v: &Value, asked: u32) -> Option<Reply> {
    let Value::Array(items) = v else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => Some(*n),
        _ => None,
    };
    match items.as_slice() {
        [taken, wait, paused] => {
            let (taken, wait, paused) = (int(taken)?, int(wait)?, int(paused)?);
            match (taken, wait, paused) {
                (n @ 1.., 0, 0) if n <= i64::from(asked) => Some(Taken(u32::try_from(n).ok()?)),
                (0, w @ 0.., p @ (0 | 1)) => Some(Said(Verdict::Denied(Denied {
                    wait: Duration::from_micros(u64::try_from(w).ok()?),
                    paused: p == 1,
                }))),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_strictly() {
        let arr = |a: i64, b: i64, c: i64| {
            Value::Array(vec![Value::Int(a), Value::Int(b), Value::Int(c)])
        };
        assert_eq!(parse(&arr(1, 0, 0), 1), Some(Taken(1)));
        assert_eq!(parse(&arr(3, 0, 0), 4), Some(Taken(3)));
        assert_eq!(
            parse(&arr(0, 1500, 0), 1),
            Some(Said(Verdict::Denied(Denied {
                wait: Duration::from_micros(1500),
                paused: false
            })))
        );
        assert_eq!(
            parse(&arr(0, 2_000_000, 1), 1),
            Some(Said(Verdict::Denied(Denied {
                wait: Duration::from_secs(2),
                paused: true
            })))
        );
        for bad in [
            arr(2, 0, 0),
            arr(1, 5, 0),
            arr(0, -1, 0),
            arr(0, 0, 2),
            arr(1, 0, 1),
            Value::Array(vec![Value::Int(1)]),
            Value::Int(1),
            Value::Nil,
            Value::Array(vec![Value::Int(1), Value::Nil, Value::Int(0)]),
        ] {
            assert_eq!(parse(&bad, 1), None, "{bad:?}");
        }
    }

    #[test]
    fn the_url_is_shown_without_credentials() {
        let r = Redis::new("redis://user:s3cret@redis.internal:6380/2");
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("user"),
            "{shown}"
        );
        assert!(shown.contains("redis.internal:6380/2"), "{shown}");
        assert_eq!(redacted("not a url"), "<not a URL>");
    }

    #[test]
    fn bad_settings_name_their_field() {
        let field = |r: Redis| r.validate(10).unwrap_err().field().to_owned();
        let ok = Redis::new("redis://127.0.0.1/");
        assert!(ok.validate(10).is_ok());
        assert!(ok.clone().lease(10).validate(10).is_ok());
        for lease in [0, 11] {
            assert_eq!(field(ok.clone().lease(lease)), "rate_limit.redis.lease");
        }
        assert_eq!(field(Redis::new("http://x/")), "rate_limit.redis.url");
        assert_eq!(
            field(Redis::new("redis://user:pw@[::1")),
            "rate_limit.redis.url"
        );
        let e = Redis::new("redis://user:pw@[::1").validate(10).unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
        assert_eq!(
            field(ok.clone().timeout(Duration::ZERO)),
            "rate_limit.redis.timeout"
        );
        for share in [0.0, -1.0, 1.5, f64::NAN] {
            assert_eq!(
                field(ok.clone().local_share(share)),
                "rate_limit.redis.local_share"
            );
        }
        assert_eq!(
            field(ok.reconnect_every(Duration::ZERO)),
            "rate_limit.redis.reconnect_every"
        );
    }

    #[test]
    fn the_local_share_scales_rate_and_burst_to_at_least_one() {
        let r = Redis::new("redis://127.0.0.1/").local_share(0.25);
        assert_eq!(r.local_quota(100, 20), (25, 5));
        assert_eq!(r.local_quota(2, 1), (1, 1));
    }
}
