//! The store: stored responses in a moka cache weighed by bytes, keyed by method, URL (or the
//! user's key) and the request's values of the headers the response's `Vary` names.
//!
//! One moka cache holds two kinds of slots, so that a single byte bound covers both:
//!
//! - an *index* per primary key (method + URL), kept only when it says something: the header
//!   names the last stored response's `Vary` gave, and the sequence number up to which stored
//!   responses are void (set when an unsafe request to the URL succeeded, RFC 9111 §4.4);
//! - an *entry* per variant: the primary key plus each `Vary` header's request value.
//!
//! A response whose request was still in flight when an unsafe request voided its URL is
//! refused at insert by a void mark, kept outside moka (see [`Store::invalidate`]).
//!
//! A lookup reads the index to learn which request headers pick the variant. An entry records
//! the values it was stored under and the lookup compares them again, so a variant is never
//! served to a request with other values. If the index is evicted first, its variants are
//! unreachable until evicted in turn: the safe side.
//!
//! moka expires entries on its own clock when their allowance is over, to free the memory;
//! whether an entry may be served is decided here, on tokio's clock, so tests in paused time
//! are exact.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use moka::policy::EvictionPolicy;
use tokio::time::Instant;
use url::{Position, Url};

const INDEX: u8 = b'I';
const ENTRY: u8 = b'E';
/// The value a request header takes in a key when the request does not carry it: a byte no
/// header value can hold, so it differs from every value, the empty one included.
const ABSENT: u8 = 0x01;
/// What a slot costs besides the bytes counted one by one: moka's node and deque entries, the
/// `Arc`, the header map's tables, allocator rounding. Measured by `tests/fallback_memory.rs`
/// at about 750 bytes for a response with a few headers; rounded up.
const SLOT_OVERHEAD: usize = 1024;
/// What a header costs besides its name and value (the map's entry and index).
const HEADER_OVERHEAD: usize = 32;
/// How many void marks a store keeps (8 bytes each, 32 KiB in all), outside moka: see
/// [`Store::invalidate`].
const VOID_MARKS: usize = 4096;
/// moka refuses expirations over 1,000 years; entries never need a year.
const LONGEST_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A stored response and what decides how long it may be served.
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) url: Url,
    /// When it was stored, on tokio's clock.
    pub(crate) stored_at: Instant,
    /// Its age when stored (RFC 9111 §4.2.3 `corrected_initial_age`).
    pub(crate) initial_age: Duration,
    /// How long it is fresh, counted from its age 0.
    pub(crate) freshness: Duration,
    /// How long past its freshness it may be served after a failure; `None` when it may not be
    /// served stale at all (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub(crate) stale_allowance: Option<Duration>,
    /// The sequence number its request took when it started ([`Store::next_seq`]): an unsafe
    /// request that succeeds after that voids it, even if it is stored later.
    pub(crate) seq: u64,
    /// The request values of the `Vary` headers it was stored under, in the index's order.
    vary_values: Box<[Option<HeaderValue>]>,
    weight: u32,
}

impl Entry {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
        url: Url,
        stored_at: Instant,
        initial_age: Duration,
        freshness: Duration,
        stale_allowance: Option<Duration>,
        seq: u64,
    ) -> Entry {
        Entry {
            status,
            version,
            headers,
            body,
            url,
            stored_at,
            initial_age,
            freshness,
            stale_allowance,
            seq,
            vary_values: Box::new([]),
            weight: 0,
        }
    }

    /// Its current age (RFC 9111 §4.2.3 `current_age`).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.stored_at))
    }

    /// The longest age at which it may be served after a failure.
    fn servable_until(&self) -> Duration {
        match self.stale_allowance {
            Some(a) => self.freshness.saturating_add(a),
            None => self.freshness,
        }
    }

    /// Its age if it may be served at `now`: while fresh (RFC 9111 §4.2: fresh while its age is
    /// below its freshness lifetime), or stale within its allowance (RFC 5861 §4: "up to N
    /// seconds after it becomes stale", bounds included).
    pub(crate) fn servable_age(&self, now: Instant) -> Option<Duration> {
        let age = self.age(now);
        let ok = age < self.freshness
            || (self.stale_allowance.is_some() && age <= self.servable_until());
        ok.then_some(age)
    }

    /// How long, from now, it may still be served: what moka keeps it for.
    fn time_to_live(&self) -> Duration {
        self.servable_until()
            .saturating_sub(self.initial_age)
            .min(LONGEST_TTL)
    }

    /// Bytes it holds: body, headers, URL, key and a fixed overhead.
    fn weigh(&mut self, key_len: usize) {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + HEADER_OVERHEAD)
            .sum();
        let values: usize = self
            .vary_values
            .iter()
            .map(|v| v.as_ref().map_or(0, HeaderValue::len) + HEADER_OVERHEAD)
            .sum();
        let total = self
            .body
            .len()
            .saturating_add(headers)
            .saturating_add(values)
            .saturating_add(self.url.as_str().len())
            .saturating_add(key_len)
            .saturating_add(SLOT_OVERHEAD);
        self.weight = u32::try_from(total).unwrap_or(u32::MAX);
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("initial_age", &self.initial_age)
            .field("freshness", &self.freshness)
            .field("stale_allowance", &self.stale_allowance)
            .finish_non_exhaustive()
    }
}

/// What the store knows of a primary key besides its entries.
#[derive(Debug, Default)]
struct Index {
    /// The header names of the last stored response's `Vary`, lowercase, sorted, deduplicated.
    vary: Box<[HeaderName]>,
    /// Entries whose request started at or before this sequence number are void: an unsafe
    /// request to the URL succeeded since (0: none).
    void_through: u64,
}

impl Index {
    fn weight(&self, key_len: usize) -> u32 {
        let names: usize = self
            .vary
            .iter()
            .map(|n| n.as_str().len() + HEADER_OVERHEAD)
            .sum();
        u32::try_from(names + key_len + SLOT_OVERHEAD).unwrap_or(u32::MAX)
    }
}

#[derive(Clone)]
enum Slot {
    Index(Arc<Index>),
    Entry(Arc<Entry>),
}

struct Expiry;

impl moka::Expiry<Box<[u8]>, Slot> for Expiry {
    fn expire_after_create(
        &self,
        _key: &Box<[u8]>,
        value: &Slot,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        match value {
            // An index lives as long as the variants it leads to, which moka bounds.
            Slot::Index(_) => None,
            Slot::Entry(e) => Some(e.time_to_live()),
        }
    }

    fn expire_after_update(
        &self,
        key: &Box<[u8]>,
        value: &Slot,
        updated_at: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// The bounded store of one fallback cache; clones share it.
#[derive(Clone)]
pub(crate) struct Store {
    cache: moka::sync::Cache<Box<[u8]>, Slot>,
    /// The bytes the copies of bodies in flight (not yet stored) hold, in all; at most
    /// `copy_budget`.
    copying: Arc<AtomicU64>,
    copy_budget: u64,
    seq: Arc<AtomicU64>,
    /// For each hash of a primary key, the sequence number of the last unsafe request that
    /// voided a key with that hash: a response whose request started before it is not
    /// stored.
    voids: Arc<[AtomicU64]>,
    hasher: RandomState,
}

impl Store {
    /// A store that holds at most `max_bytes` as entries weigh them. Least recently used
    /// entries go first: for a fallback the last good answers are the ones worth keeping, and
    /// each URL is typically seen once between failures, which is where moka's default
    /// frequency-based admission would turn new entries away.
    pub(crate) fn new(max_bytes: u64) -> Store {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weigh)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(Expiry)
            .build();
        Store {
            cache,
            copying: Arc::new(AtomicU64::new(0)),
            copy_budget: max_bytes,
            seq: Arc::new(AtomicU64::new(0)),
            voids: (0..VOID_MARKS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Takes `bytes` from the budget for copies of bodies in flight; false (and nothing taken)
    /// when that would take the copies past `max_bytes` in all.
    pub(crate) fn take_copy_budget(&self, bytes: usize) -> bool {
        let bytes = bytes as u64;
        self.copying
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(bytes).filter(|&n| n <= self.copy_budget)
            })
            .is_ok()
    }

    /// Gives back what [`take_copy_budget`](Self::take_copy_budget) took.
    pub(crate) fn give_copy_budget(&self, bytes: usize) {
        let bytes = bytes as u64;
        let _ = self
            .copying
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some(cur.saturating_sub(bytes))
            });
    }

    /// The bytes the copies of bodies in flight hold now.
    pub(crate) fn copying(&self) -> u64 {
        self.copying.load(Ordering::Acquire)
    }

    /// The void mark of `primary`.
    fn void_mark(&self, primary: &[u8]) -> &AtomicU64 {
        let h = self.hasher.hash_one(primary);
        // The remainder is below VOID_MARKS, so it fits a usize.
        &self.voids[(h % VOID_MARKS as u64) as usize]
    }

    /// Whether an unsafe request voided `primary` (or a key with the same mark) after a
    /// request that took `seq` started.
    fn voided_since(&self, primary: &[u8], seq: u64) -> bool {
        seq <= self.void_mark(primary).load(Ordering::SeqCst)
    }

    /// A number above every one given before: orders requests that read the store against the
    /// unsafe requests that void it, whatever the clock says.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The entry `req_headers` picks under `primary`, if one is stored and not void; whether
    /// it may be served is the caller's question.
    pub(crate) fn lookup(&self, primary: &[u8], req_headers: &HeaderMap) -> Option<Arc<Entry>> {
        let index = self.index(primary);
        let names: &[HeaderName] = index.as_ref().map_or(&[], |i| &i.vary);
        let key = entry_key(primary, names, req_headers);
        let Some(Slot::Entry(entry)) = self.cache.get(&key[..]) else {
            return None;
        };
        if entry.seq <= index.as_ref().map_or(0, |i| i.void_through) {
            return None;
        }
        // The key already holds the values; compare them again so a variant can never reach a
        // request that sent other ones.
        let same = entry.vary_values.len() == names.len()
            && names
                .iter()
                .zip(entry.vary_values.iter())
                .all(|(n, v)| combined(req_headers, n).as_ref() == v.as_ref());
        same.then_some(entry)
    }

    /// Stores `entry` under `primary` and the request's values of `vary` (lowercase, sorted,
    /// deduplicated names).
    pub(crate) fn insert(
        &self,
        primary: &[u8],
        vary: Box<[HeaderName]>,
        req_headers: &HeaderMap,
        mut entry: Entry,
    ) {
        // An unsafe request to the URL succeeded while this one was in flight: what it got may
        // be out of date already.
        if self.voided_since(primary, entry.seq) {
            return;
        }
        let seq = entry.seq;
        // The key's mark as the index is written: an invalidation that marks the key after this
        // may find no index yet, so this insert makes up for it below.
        let mark = self.void_mark(primary).load(Ordering::SeqCst);
        let index = self.index(primary);
        let known: &[HeaderName] = index.as_ref().map_or(&[], |i| &i.vary);
        if known != &vary[..] {
            // The index is rewritten: it keeps what it voided, and what the key's mark says was
            // voided since (an invalidation that found no index to write, while variants of an
            // earlier `Vary` were still stored, unreachable until an index names their headers
            // again). The mark may come from another key of the same hash: then older entries
            // of this key are voided too, a serve missed, never a stale one.
            self.update_index(primary, |old| {
                let void_through = old.map_or(0, |i| i.void_through).max(mark);
                (!vary.is_empty() || void_through > 0).then(|| Index {
                    vary: vary.clone(),
                    void_through,
                })
            });
        }
        let key = entry_key(primary, &vary, req_headers);
        entry.vary_values = vary.iter().map(|n| combined(req_headers, n)).collect();
        entry.weigh(key.len());
        self.cache.insert(key, Slot::Entry(Arc::new(entry)));
        // An invalidation that marked the key after the check above and looked for entries
        // before this insert landed saw nothing to void: look again, and take it back. (It
        // marks, then looks; this inserts, then looks: one of the two sees the other.)
        fence(Ordering::SeqCst);
        if self.voided_since(primary, seq) {
            self.cache
                .invalidate(&entry_key(primary, &vary, req_headers)[..]);
        }
        // The same for the index: an invalidation that marked the key after the index above was
        // written, and found no index to void when it looked (it had been evicted, and this
        // insert had not written it yet), left the index with a `void_through` below it, and
        // older variants reachable. Whatever its sequence number against this insert's.
        let now = self.void_mark(primary).load(Ordering::SeqCst);
        if now > mark {
            self.update_index(primary, |old| {
                old.map(|i| Index {
                    vary: i.vary.clone(),
                    void_through: i.void_through.max(now),
                })
            });
        }
    }

    /// Voids every entry under `primary` whose request started before now (RFC 9111 §4.4),
    /// including those still on their way to the store.
    ///
    /// Entries already stored are voided through the key's index, which the lookup reads.
    /// Those on their way are refused when they arrive, through the key's void mark: a fixed
    /// array outside moka, so that voiding a URL with nothing stored (a POST to a new
    /// resource, the common case) takes no room from stored responses. Keys share a mark when
    /// their hashes do: a response whose request was in flight while an unsafe request to
    /// another URL of the same mark succeeded is not stored either, which costs a store
    /// missed, never a stale copy served.
    pub(crate) fn invalidate(&self, primary: &[u8]) {
        let void_through = self.next_seq();
        self.void_mark(primary)
            .fetch_max(void_through, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let index = self.index(primary);
        let plain = entry_key(primary, &[], &HeaderMap::new());
        if index.is_none() && !self.cache.contains_key(&plain[..]) {
            return;
        }
        self.update_index(primary, |old| {
            Some(Index {
                vary: old.map(|i| i.vary.clone()).unwrap_or_default(),
                void_through: old.map_or(0, |i| i.void_through).max(void_through),
            })
        });
        self.cache.invalidate(&plain[..]);
    }

    /// Replaces `primary`'s index by what `f` makes of the current one (`None`: no index),
    /// atomically: concurrent updates of one index run one after the other, so that none
    /// writes a `void_through` below another's.
    fn update_index(&self, primary: &[u8], f: impl FnOnce(Option<&Index>) -> Option<Index>) {
        use moka::ops::compute::Op;
        self.cache
            .entry(index_key(primary))
            .and_compute_with(|cur| {
                let cur = cur.and_then(|e| match e.into_value() {
                    Slot::Index(i) => Some(i),
                    Slot::Entry(_) => None,
                });
                match (f(cur.as_deref()), cur.is_some()) {
                    (Some(i), _) => Op::Put(Slot::Index(Arc::new(i))),
                    (None, true) => Op::Remove,
                    (None, false) => Op::Nop,
                }
            });
    }

    fn index(&self, primary: &[u8]) -> Option<Arc<Index>> {
        match self.cache.get(&index_key(primary)[..]) {
            Some(Slot::Index(i)) => Some(i),
            _ => None,
        }
    }

    /// How many entries and indexes are held (moka counts lazily: call
    /// [`run_pending_tasks`](Self::run_pending_tasks) first for an exact figure).
    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The bytes held, as entries weigh them.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub(crate) fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }
}

/// The resource a URL names, as the key holds it: without its fragment (RFC 9110 §7.1: it is
/// not sent) or userinfo (which names a user, not a resource; a request sent with `execute`
/// keeps it in its URL), and with the percent-encodings RFC 3986 §6.2.2 makes equivalent
/// written one way (hex digits in upper case, unreserved characters decoded). The scheme and
/// host are lowercase and a default port is dropped by the URL parser already. Allocates only
/// for a URL with userinfo or a percent sign.
pub(crate) fn resource(url: &Url) -> Cow<'_, str> {
    let userinfo = !url.username().is_empty() || url.password().is_some();
    let base = if userinfo {
        Cow::Owned(format!(
            "{}{}",
            &url[..Position::BeforeUsername],
            &url[Position::BeforeHost..Position::AfterQuery]
        ))
    } else {
        Cow::Borrowed(&url[..Position::AfterQuery])
    };
    if base.contains('%') {
        Cow::Owned(normalise_percent_encoding(&base))
    } else {
        base
    }
}

/// `s` with every percent-encoding of an unreserved character decoded and the hex digits of
/// the others in upper case (RFC 3986 §6.2.2.1, §6.2.2.2); anything else is kept as it is.
fn normalise_percent_encoding(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = hi * 16 + lo;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                } else {
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    // Only ASCII triples were replaced, by ASCII: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The URL a stored copy keeps and replays: the response's, without userinfo (another
/// request's credentials) or fragment.
pub(crate) fn stored_url(url: &Url) -> Url {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("");
        let _ = u.set_password(None);
    }
    if u.fragment().is_some() {
        u.set_fragment(None);
    }
    u
}

/// moka's weigher takes the key as stored.
#[allow(clippy::borrowed_box)]
fn weigh(key: &Box<[u8]>, slot: &Slot) -> u32 {
    match slot {
        Slot::Index(i) => i.weight(key.len()),
        Slot::Entry(e) => e.weight,
    }
}

fn index_key(primary: &[u8]) -> Box<[u8]> {
    let mut k = Vec::with_capacity(primary.len() + 1);
    k.push(INDEX);
    k.extend_from_slice(primary);
    k.into_boxed_slice()
}

/// `E`, the primary key, then `\0name\0value` for each `Vary` header. Neither a URL nor a
/// header value can hold a NUL byte, so the encoding is unambiguous.
fn entry_key(primary: &[u8], vary: &[HeaderName], req_headers: &HeaderMap) -> Box<[u8]> {
    let mut k = Vec::with_capacity(primary.len() + 1 + vary.len() * 24);
    k.push(ENTRY);
    k.extend_from_slice(primary);
    for name in vary {
        k.push(0);
        k.extend_from_slice(name.as_str().as_bytes());
        k.push(0);
        match combined(req_headers, name) {
            Some(v) => k.extend_from_slice(v.as_bytes()),
            None => k.push(ABSENT),
        }
    }
    k.into_boxed_slice()
}

/// A request header's field lines combined as one value (RFC 9110 §5.3), each trimmed, so that
/// `a, b` sent as one line or two selects the same variant.
fn combined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut out: Vec<u8> = first.as_bytes().trim_ascii().to_vec();
    for v in values {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes().trim_ascii());
    }
    // Trimmed bytes of valid values are valid.
    HeaderValue::from_bytes(&out).ok()
}

/// The header names a response's `Vary` lists, lowercase, sorted and deduplicated; `None` when
/// it may not be stored: `Vary: *`, or a name that is not a valid header name.
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Box<[HeaderName]>> {
    let mut names = Vec::new();
    for v in headers.get_all(http::header::VARY) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() {
                continue;
            }
            if part == b"*" {
                return None;
            }
            names.push(HeaderName::from_bytes(part).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8], freshness: u64, allowance: Option<u64>) -> Entry {
        entry_seq(1, body, freshness, allowance)
    }

    fn entry_seq(seq: u64, body: &'static [u8], freshness: u64, allowance: Option<u64>) -> Entry {
        Entry::new(
            StatusCode::OK,
            Version::HTTP_11,
            HeaderMap::new(),
            Bytes::from_static(body),
            Url::parse("http://h/x").unwrap(),
            Instant::now(),
            Duration::ZERO,
            Duration::from_secs(freshness),
            allowance.map(Duration::from_secs),
            seq,
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_resource_drops_fragment_and_userinfo_and_normalises_percent_encoding() {
        let r = |s: &str| resource(&Url::parse(s).unwrap()).into_owned();
        assert_eq!(r("http://h/a?b=c"), "http://h/a?b=c");
        assert_eq!(r("http://h/a?b#frag"), "http://h/a?b");
        assert_eq!(r("http://h/a#"), "http://h/a");
        assert_eq!(r("http://u:p@h:8080/a#x"), "http://h:8080/a");
        assert_eq!(r("http://u@h/a"), "http://h/a");
        assert_eq!(r("http://:p@h/a"), "http://h/a");
        assert_eq!(r("HTTP://H:80/a"), "http://h/a");
        assert_eq!(
            r("http://h/%7euser/%41%2f%2F?q=%7E%20"),
            "http://h/~user/A%2F%2F?q=~%20"
        );
        // Not an encoding: kept as it is.
        assert_eq!(r("http://h/100%25/%zz/%4"), "http://h/100%25/%zz/%4");
        assert_eq!(r("http://h/a%"), "http://h/a%");
        assert!(matches!(
            resource(&Url::parse("http://h/a?b").unwrap()),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn the_stored_url_drops_userinfo_and_fragment() {
        let u = stored_url(&Url::parse("https://user:pw@h/a?q=1#top").unwrap());
        assert_eq!(u.as_str(), "https://h/a?q=1");
    }

    #[test]
    fn vary_names_are_normalised_and_star_refuses() {
        let h = headers(&[("vary", "Accept-Language, accept"), ("vary", "ACCEPT")]);
        let names = vary_names(&h).unwrap();
        assert_eq!(
            names.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["accept", "accept-language"]
        );
        assert!(vary_names(&headers(&[("vary", "accept, *")])).is_none());
        assert!(vary_names(&headers(&[("vary", "bad name")])).is_none());
        assert_eq!(vary_names(&headers(&[("vary", " , ")])).unwrap().len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn variants_are_kept_apart_and_absent_differs_from_empty() {
        let s = Store::new(1 << 20);
        let vary = vary_names(&headers(&[("vary", "accept-language")])).unwrap();
        let en = headers(&[("accept-language", "en")]);
        let fr = headers(&[("accept-language", "fr")]);
        let empty = headers(&[("accept-language", "")]);
        s.insert(b"GET\0u", vary.clone(), &en, entry(b"en", 0, Some(60)));
        s.insert(
            b"GET\0u",
            vary.clone(),
            &HeaderMap::new(),
            entry(b"none", 0, Some(60)),
        );
        assert_eq!(&s.lookup(b"GET\0u", &en).unwrap().body[..], b"en");
        assert!(s.lookup(b"GET\0u", &fr).is_none());
        assert!(s.lookup(b"GET\0u", &empty).is_none());
        assert_eq!(
            &s.lookup(b"GET\0u", &HeaderMap::new()).unwrap().body[..],
            b"none"
        );
        // Two field lines select the same variant as one combined line.
        let two = headers(&[("accept-language", "en"), ("accept-language", "fr")]);
        let one = headers(&[("accept-language", "en,   fr")]);
        s.insert(b"GET\0u", vary, &two, entry(b"both", 0, Some(60)));
        assert!(s.lookup(b"GET\0u", &one).is_none(), "whitespace differs");
        let one = headers(&[("accept-language", "en, fr")]);
        assert_eq!(&s.lookup(b"GET\0u", &one).unwrap().body[..], b"both");
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_voids_older_entries_only() {
        let s = Store::new(1 << 20);
        let none = HeaderMap::new();
        let old = entry_seq(s.next_seq(), b"old", 0, Some(60));
        s.insert(b"GET\0u", Box::new([]), &none, old);
        // A request that started before the unsafe one succeeded, stored after it.
        let racing = s.next_seq();
        s.invalidate(b"GET\0u");
        assert!(s.lookup(b"GET\0u", &none).is_none());
        s.insert(
            b"GET\0u",
            Box::new([]),
            &none,
            entry_seq(racing, b"racing", 0, Some(60)),
        );
        assert!(
            s.lookup(b"GET\0u", &none).is_none(),
            "began before the void"
        );
        let new = entry_seq(s.next_seq(), b"new", 0, Some(60));
        s.insert(b"GET\0u", Box::new([]), &none, new);
        assert_eq!(&s.lookup(b"GET\0u", &none).unwrap().body[..], b"new");
        // Nothing stored: no slot is written.
        s.invalidate(b"GET\0other");
        s.run_pending_tasks();
        assert_eq!(s.entry_count(), 2);
    }

    // Issue 9, defect 12: voiding a key with nothing stored returned early, so a request that
    // started before it and ended after it was stored.
    #[tokio::test(start_paused = true)]
    async fn voiding_a_key_with_nothing_stored_refuses_what_was_in_flight() {
        let s = Store::new(1 << 20);
        let none = HeaderMap::new();
        let racing = s.next_seq();
        s.invalidate(b"GET\0u");
        s.insert(
            b"GET\0u",
            Box::new([]),
            &none,
            entry_seq(racing, b"racing", 0, Some(60)),
        );
        assert!(s.lookup(b"GET\0u", &none).is_none());
        // Another key keeps storing what started before.
        let other = entry_seq(racing, b"other", 0, Some(60));
        s.insert(b"GET\0v", Box::new([]), &none, other);
        // A mark may be shared by two keys; this one is not, or the check would be moot.
        if !std::ptr::eq(s.void_mark(b"GET\0u"), s.void_mark(b"GET\0v")) {
            assert!(s.lookup(b"GET\0v", &none).is_some());
        }
        let later = entry_seq(s.next_seq(), b"later", 0, Some(60));
        s.insert(b"GET\0u", Box::new([]), &none, later);
        assert_eq!(&s.lookup(b"GET\0u", &none).unwrap().body[..], b"later");
    }

    #[tokio::test(start_paused = true)]
    async fn servable_window_edges() {
        let e = entry(b"x", 10, Some(30));
        let t0 = e.stored_at;
        assert_eq!(e.servable_age(t0), Some(Duration::ZERO));
        assert!(e.servable_age(t0 + Duration::from_secs(40)).is_some());
        assert!(e
            .servable_age(t0 + Duration::from_secs(40) + Duration::from_millis(1))
            .is_none());
        let strict = entry(b"x", 10, None);
        assert!(strict
            .servable_age(t0 + Duration::from_secs(10) - Duration::from_millis(1))
            .is_some());
        assert!(strict.servable_age(t0 + Duration::from_secs(10)).is_none());
        assert_eq!(strict.time_to_live(), Duration::from_secs(10));
        assert_eq!(e.time_to_live(), Duration::from_secs(40));
        let huge = entry(b"x", u64::MAX / 4, Some(u64::MAX / 4));
        assert_eq!(huge.time_to_live(), LONGEST_TTL);
    }
    // Review of issue 9: an insert that writes the index races an invalidation that finds no
    // index (moka evicted it while a variant survived): the index must not be left with a
    // `void_through` below the invalidation.
    #[test]
    fn an_insert_racing_an_invalidation_leaves_no_voided_variant_reachable() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        let p: &[u8] = b"GET\0u";
        let vary: Box<[HeaderName]> = Box::new([HeaderName::from_static("accept-language")]);
        let mut en = HeaderMap::new();
        en.insert("accept-language", HeaderValue::from_static("en"));
        let mut fr = HeaderMap::new();
        fr.insert("accept-language", HeaderValue::from_static("fr"));
        let entry = |seq: u64, body: &'static [u8]| entry_seq(seq, body, 0, Some(3600));
        let mut stale = 0;
        for _ in 0..2_000 {
            let s = Store::new(1 << 20);
            s.insert(p, vary.clone(), &en, entry(s.next_seq(), b"en-old"));
            // The index goes first under memory pressure: it is read just before its variant.
            s.cache.invalidate(&index_key(p)[..]);
            let seq = s.next_seq();
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    barrier.wait();
                    s.insert(p, vary.clone(), &fr, entry(seq, b"fr"));
                });
                sc.spawn(|| {
                    barrier.wait();
                    s.invalidate(p);
                });
            });
            if s.lookup(p, &en).is_some() {
                stale += 1;
            }
        }
        assert_eq!(stale, 0, "a voided variant was reachable");
    }
}
