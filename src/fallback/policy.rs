//! What may be stored, for how long it may be served, and how old it is: RFC 9111 (HTTP
//! caching) and RFC 5861 (`stale-if-error`) as they apply to a shared cache that serves only
//! after a failure.

use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::cache_control::{Age, CacheControl};
use super::store::vary_names;
use super::FallbackCache;

/// What the request says about storing its response and serving a stored one, read before it
/// is sent.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestFacts {
    /// GET or HEAD, without a `Range`: only their responses are stored.
    pub(crate) cacheable: bool,
    /// It carries `Authorization` or `Cookie`.
    pub(crate) credentials: bool,
    /// Its `Cache-Control` says `no-store`: nothing of the exchange may be stored.
    pub(crate) no_store: bool,
    /// Its `Cache-Control` says `no-cache`: the caller wants no stored response.
    pub(crate) no_cache: bool,
}

impl RequestFacts {
    pub(crate) fn of(method: &Method, headers: &HeaderMap) -> RequestFacts {
        let cacheable = (method == Method::GET || method == Method::HEAD)
            && !headers.contains_key(header::RANGE);
        let cc = if headers.contains_key(header::CACHE_CONTROL) {
            CacheControl::from_headers(headers)
        } else {
            CacheControl::default()
        };
        RequestFacts {
            cacheable,
            credentials: headers.contains_key(header::AUTHORIZATION)
                || headers.contains_key(header::COOKIE),
            no_store: cc.no_store,
            no_cache: cc.no_cache,
        }
    }
}

/// How a storable response is to be stored.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) vary: Box<[HeaderName]>,
    pub(crate) freshness: Duration,
    pub(crate) stale_allowance: Option<Duration>,
}

/// Whether a response to a request with `facts` may be stored, and how; `None` when not.
/// The caller has checked that the classifier calls it a success.
pub(crate) fn plan(
    cfg: &FallbackCache,
    facts: &RequestFacts,
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<Plan> {
    if !facts.cacheable || facts.no_store {
        return None;
    }
    // 2xx, but not a partial response to a range.
    if !status.is_success() || status == StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let cc = CacheControl::from_headers(headers);
    // `no-cache` forbids serving without revalidation, which a fallback never does: nothing
    // stored could ever be served, so nothing is stored.
    if cc.no_store || cc.no_cache {
        return None;
    }
    // A response for one user: `private`, or one that sets a cookie.
    if (cc.private || headers.contains_key(header::SET_COOKIE)) && !cfg.store_private {
        return None;
    }
    if facts.credentials && !cfg.store_with_credentials && !cc.public {
        return None;
    }
    // RFC 9111 §3: a response is stored only when something allows it, explicit freshness or
    // `public` (or `private` where private responses are stored), or else a status a cache may
    // give a heuristic freshness (§4.2.2): a `202 Accepted` says nothing lasting about the
    // resource and must not be replayed.
    let allowed = cc.max_age.is_some()
        || cc.s_maxage.is_some()
        || headers.contains_key(header::EXPIRES)
        || cc.public
        || (cc.private && cfg.store_private)
        || heuristically_cacheable(status);
    if !allowed {
        return None;
    }
    let vary = vary_names(headers)?;
    let freshness = freshness(&cc, headers);
    let stale_allowance = if cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() {
        // RFC 9111 §5.2.2.2, §5.2.2.8, and §5.2.2.10 (s-maxage implies proxy-revalidate).
        None
    } else {
        Some(match cc.stale_if_error {
            Some(Age::Secs(n)) => Duration::from_secs(u64::from(n)),
            // The server meant a window but its size is unreadable: none.
            Some(Age::Invalid) => Duration::ZERO,
            None => cfg.max_staleness,
        })
    };
    let window = freshness.saturating_add(stale_allowance.unwrap_or(Duration::ZERO));
    if window.is_zero() {
        return None;
    }
    Some(Plan {
        vary,
        freshness,
        stale_allowance,
    })
}

/// The statuses RFC 9110 §15.1 defines as heuristically cacheable (RFC 9111 §4.2.2).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The freshness lifetime (RFC 9111 §4.2.1) for a shared cache: `s-maxage`, else `max-age`,
/// else `Expires` minus `Date`; none (zero) otherwise, since a fallback uses no heuristic. An
/// invalid value means already stale.
fn freshness(cc: &CacheControl, headers: &HeaderMap) -> Duration {
    if let Some(age) = cc.s_maxage.or(cc.max_age) {
        return age.duration().unwrap_or(Duration::ZERO);
    }
    let Some(expires) = single_date(headers, &header::EXPIRES) else {
        return Duration::ZERO;
    };
    let base = single_date(headers, &header::DATE)
        .flatten()
        .unwrap_or_else(SystemTime::now);
    match expires {
        Some(e) => e.duration_since(base).unwrap_or(Duration::ZERO),
        // An invalid date, `0` included, is in the past (RFC 9111 §5.3).
        None => Duration::ZERO,
    }
}

/// A date header: `None` when absent, `Some(None)` when invalid or given twice with different
/// values.
fn single_date(headers: &HeaderMap, name: &HeaderName) -> Option<Option<SystemTime>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.any(|v| v != first) {
        return Some(None);
    }
    Some(
        first
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok()),
    )
}

/// The header fields a stored copy leaves out: those specific to the proxy that forwarded the
/// request, which a shared cache MUST NOT store (RFC 9111 §3.1), and the hop-by-hop ones, which
/// are removed before a message is forwarded (RFC 9110 §7.6.1) and so never replayed.
/// `Connection` also names hop-by-hop fields of its own: those go too.
fn is_unstored(name: &HeaderName) -> bool {
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_AUTHENTICATION_INFO: HeaderName =
        HeaderName::from_static("proxy-authentication-info");
    [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        PROXY_CONNECTION,
        KEEP_ALIVE,
        PROXY_AUTHENTICATION_INFO,
    ]
    .contains(name)
}

/// The headers a stored copy of a response with `headers` keeps: all of them but those
/// [`is_unstored`] names and those its `Connection` lists.
///
/// The values are copied into one buffer of their own: those hyper parses are slices of the
/// connection's read buffer (8 KiB and up), which an entry would otherwise keep whole while
/// the store weighs only the slices.
pub(crate) fn stored_headers(headers: &HeaderMap) -> HeaderMap {
    let hop_by_hop = headers.keys().any(is_unstored);
    let named: Vec<HeaderName> = if hop_by_hop {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
            .collect()
    } else {
        Vec::new()
    };
    let kept = |name: &HeaderName| !hop_by_hop || !(is_unstored(name) || named.contains(name));
    let total: usize = headers
        .iter()
        .filter(|(n, _)| kept(n))
        .map(|(_, v)| v.len())
        .sum();
    let mut values = BytesMut::with_capacity(total);
    for (_, v) in headers.iter().filter(|(n, _)| kept(n)) {
        values.extend_from_slice(v.as_bytes());
    }
    let values = values.freeze();
    let mut out = HeaderMap::with_capacity(headers.len());
    let mut at = 0;
    for (name, v) in headers.iter().filter(|(n, _)| kept(n)) {
        let end = at + v.len();
        // The bytes of a valid value are valid.
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(values.slice(at..end)) {
            copy.set_sensitive(v.is_sensitive());
            out.append(name.clone(), copy);
        }
        at = end;
    }
    out
}

/// The response's age when it arrived (RFC 9111 §4.2.3 `corrected_initial_age`): the larger of
/// its `Age` plus the time the request took, and its `Date` against this machine's clock.
pub(crate) fn initial_age(headers: &HeaderMap, response_delay: Duration) -> Duration {
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| crate::retry_after::delta_seconds(s.trim()))
        .unwrap_or(Duration::ZERO);
    let corrected = age_value.saturating_add(response_delay);
    let apparent = single_date(headers, &header::DATE)
        .flatten()
        .and_then(|d| SystemTime::now().duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    corrected.max(apparent)
}

#[cfg(test)]
mod tests {
    use super::super::cache_control::tests as cc_tests;
    use super::*;

    fn h(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(*n, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn get() -> RequestFacts {
        RequestFacts::of(&Method::GET, &HeaderMap::new())
    }

    fn plan_of(pairs: &[(&'static str, String)]) -> Option<Plan> {
        plan(&FallbackCache::default(), &get(), StatusCode::OK, &h(pairs))
    }

    #[test]
    fn request_facts() {
        assert!(get().cacheable);
        assert!(RequestFacts::of(&Method::HEAD, &HeaderMap::new()).cacheable);
        assert!(!RequestFacts::of(&Method::POST, &HeaderMap::new()).cacheable);
        let r = RequestFacts::of(&Method::GET, &h(&[("range", "bytes=0-9".into())]));
        assert!(!r.cacheable);
        let r = RequestFacts::of(&Method::GET, &h(&[("cookie", "a=b".into())]));
        assert!(r.credentials);
        let r = RequestFacts::of(
            &Method::GET,
            &h(&[("cache-control", "No-Store, no-cache".into())]),
        );
        assert!(r.no_store && r.no_cache);
    }

    #[test]
    fn statuses() {
        let cfg = FallbackCache::default();
        let hs = HeaderMap::new();
        for s in [200, 203, 204] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(plan(&cfg, &get(), s, &hs).is_some(), "{s}");
        }
        for s in [201, 202, 205, 206, 207, 226, 301, 304, 404, 500] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(plan(&cfg, &get(), s, &hs).is_none(), "{s}");
        }
    }

    // Issue 9, defect 12: a 2xx that is not heuristically cacheable is stored only when
    // something else allows it (RFC 9111 §3).
    #[test]
    fn other_2xx_need_explicit_freshness_or_public() {
        let accepted = StatusCode::ACCEPTED;
        let cfg = FallbackCache::default();
        for allows in ["max-age=60", "s-maxage=60", "public", "max-age=x"] {
            let hs = h(&[("cache-control", allows.into())]);
            assert!(plan(&cfg, &get(), accepted, &hs).is_some(), "{allows}");
        }
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let expires = h(&[
            ("date", httpdate::fmt_http_date(date)),
            (
                "expires",
                httpdate::fmt_http_date(date + Duration::from_secs(60)),
            ),
        ]);
        assert!(plan(&cfg, &get(), accepted, &expires).is_some());
        let private = h(&[("cache-control", "private".into())]);
        assert!(plan(&cfg, &get(), accepted, &private).is_none());
        let one_user = FallbackCache::default().store_private(true);
        assert!(plan(&one_user, &get(), accepted, &private).is_some());
        let unrelated = h(&[("cache-control", "stale-if-error=60".into())]);
        assert!(plan(&cfg, &get(), accepted, &unrelated).is_none());
    }

    #[test]
    fn stored_headers_drop_proxy_and_hop_by_hop_fields() {
        let all = h(&[
            ("connection", "close, X-Hop,, bad name".into()),
            ("connection", "x-other".into()),
            ("x-hop", "1".into()),
            ("x-other", "2".into()),
            ("keep-alive", "timeout=5".into()),
            ("proxy-connection", "keep-alive".into()),
            ("te", "trailers".into()),
            ("transfer-encoding", "chunked".into()),
            ("upgrade", "h2c".into()),
            ("proxy-authenticate", "Basic".into()),
            ("proxy-authentication-info", "x".into()),
            ("proxy-authorization", "Basic x".into()),
            ("content-type", "text/plain".into()),
            ("set-cookie", "a=1".into()),
            ("set-cookie", "b=2".into()),
        ]);
        let kept = stored_headers(&all);
        let names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "set-cookie"]);
        assert_eq!(kept.get_all("set-cookie").iter().count(), 2);
        // Without any of them: the same map, sensitive values still marked.
        let mut plain = h(&[("content-type", "text/plain".into()), ("x-hop", "1".into())]);
        let mut secret = HeaderValue::from_static("s");
        secret.set_sensitive(true);
        plain.insert("x-key", secret);
        let copy = stored_headers(&plain);
        assert_eq!(copy, plain);
        assert!(copy["x-key"].is_sensitive());
    }

    #[test]
    fn freshness_and_allowance() {
        let p = plan_of(&[("cache-control", "max-age=60, stale-if-error=30".into())]).unwrap();
        assert_eq!(p.freshness, Duration::from_secs(60));
        assert_eq!(p.stale_allowance, Some(Duration::from_secs(30)));
        let p = plan_of(&[]).unwrap();
        assert_eq!(p.freshness, Duration::ZERO);
        assert_eq!(p.stale_allowance, Some(Duration::from_secs(300)));
        let p = plan_of(&[("cache-control", "s-maxage=10, max-age=60".into())]).unwrap();
        assert_eq!(p.freshness, Duration::from_secs(10));
        assert_eq!(p.stale_allowance, None);
        // must-revalidate with no freshness: never servable, so not stored.
        assert!(plan_of(&[("cache-control", "must-revalidate".into())]).is_none());
        assert!(plan_of(&[("cache-control", "proxy-revalidate, max-age=0".into())]).is_none());
        // An unreadable stale-if-error gives no window.
        assert!(plan_of(&[("cache-control", "stale-if-error=soon".into())]).is_none());
        // An invalid max-age means stale, and stale may still be served within the default.
        let p = plan_of(&[("cache-control", "max-age=x".into())]).unwrap();
        assert_eq!(p.freshness, Duration::ZERO);
    }

    #[test]
    fn expires_against_date() {
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let exp = date + Duration::from_secs(120);
        let p = plan_of(&[
            ("date", httpdate::fmt_http_date(date)),
            ("expires", httpdate::fmt_http_date(exp)),
        ])
        .unwrap();
        assert_eq!(p.freshness, Duration::from_secs(120));
        let p = plan_of(&[
            ("date", httpdate::fmt_http_date(date)),
            ("expires", "0".into()),
        ])
        .unwrap();
        assert_eq!(p.freshness, Duration::ZERO);
        // max-age wins over Expires.
        let p = plan_of(&[
            ("cache-control", "max-age=5".into()),
            ("date", httpdate::fmt_http_date(date)),
            ("expires", httpdate::fmt_http_date(exp)),
        ])
        .unwrap();
        assert_eq!(p.freshness, Duration::from_secs(5));
        // Two different Expires: stale.
        let p = plan_of(&[
            ("date", httpdate::fmt_http_date(date)),
            ("expires", httpdate::fmt_http_date(exp)),
            ("expires", httpdate::fmt_http_date(date)),
        ])
        .unwrap();
        assert_eq!(p.freshness, Duration::ZERO);
    }

    #[test]
    fn ages() {
        let now = SystemTime::now();
        assert_eq!(
            initial_age(&HeaderMap::new(), Duration::ZERO),
            Duration::ZERO
        );
        let a = initial_age(&h(&[("age", "30".into())]), Duration::from_millis(500));
        assert_eq!(a, Duration::from_millis(30_500));
        for bad in ["-1", "1.5", "", "abc"] {
            assert_eq!(
                initial_age(&h(&[("age", bad.into())]), Duration::ZERO),
                Duration::ZERO
            );
        }
        let huge = initial_age(
            &h(&[("age", "99999999999999999999999".into())]),
            Duration::ZERO,
        );
        assert!(huge > Duration::from_secs(1 << 40));
        // A Date 100 s old makes the response at least that old.
        let old = now - Duration::from_secs(100);
        let a = initial_age(
            &h(&[("date", httpdate::fmt_http_date(old))]),
            Duration::ZERO,
        );
        assert!(
            a >= Duration::from_secs(99) && a <= Duration::from_secs(102),
            "{a:?}"
        );
        // A Date in the future (skew) counts as 0.
        let fut = now + Duration::from_secs(100);
        let a = initial_age(
            &h(&[("date", httpdate::fmt_http_date(fut))]),
            Duration::ZERO,
        );
        assert_eq!(a, Duration::ZERO);
    }

    proptest::proptest! {
        /// Whatever else the header says, around it, and whoever asks: a response with a valid
        /// `no-store` directive is never stored.
        #[test]
        fn no_store_anywhere_is_never_stored(
            mut elements in proptest::collection::vec(cc_tests::element(), 0..8),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            no_store in cc_tests::directive(cc_tests::random_case("no-store")),
            second_line in proptest::prelude::any::<bool>(),
            private in proptest::prelude::any::<bool>(),
            credentials in proptest::prelude::any::<bool>(),
        ) {
            let at = at.index(elements.len() + 1);
            elements.insert(at, no_store);
            let mut headers = HeaderMap::new();
            if second_line {
                // The directive on a line of its own, after the others.
                let last = elements.remove(at);
                headers.append("cache-control", HeaderValue::from_str(&elements.join(",")).unwrap());
                headers.append("cache-control", HeaderValue::from_str(&last).unwrap());
            } else {
                headers.append("cache-control", HeaderValue::from_str(&elements.join(",")).unwrap());
            }
            let cfg = FallbackCache::default()
                .store_private(private)
                .store_with_credentials(credentials);
            proptest::prop_assert!(plan(&cfg, &get(), StatusCode::OK, &headers).is_none(), "{:?}", headers);
        }

        /// Any bytes in the headers that decide: no panic.
        #[test]
        fn any_header_bytes_never_panic(
            cc in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
            other in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let mut headers = HeaderMap::new();
            for name in ["cache-control", "vary", "age", "date", "expires"] {
                let bytes = if name == "cache-control" { &cc } else { &other };
                if let Ok(v) = HeaderValue::from_bytes(bytes) {
                    headers.append(name, v);
                }
            }
            let _ = plan(&FallbackCache::default(), &get(), StatusCode::OK, &headers);
            let _ = initial_age(&headers, Duration::from_secs(1));
            let _ = RequestFacts::of(&Method::GET, &headers);
        }
    }

    #[test]
    fn what_is_never_stored() {
        let cfg = FallbackCache::default();
        for cc in [
            "no-store",
            "no-cache",
            "private",
            "max-age=60, No-Store",
            "no-cache=\"x\"",
        ] {
            assert!(plan_of(&[("cache-control", cc.into())]).is_none(), "{cc}");
        }
        assert!(plan_of(&[("vary", "*".into())]).is_none());
        assert!(plan_of(&[("set-cookie", "s=1".into())]).is_none());
        let authed = RequestFacts::of(&Method::GET, &h(&[("authorization", "Bearer t".into())]));
        assert!(plan(&cfg, &authed, StatusCode::OK, &HeaderMap::new()).is_none());
        let public = h(&[("cache-control", "public".into())]);
        assert!(plan(&cfg, &authed, StatusCode::OK, &public).is_some());
        let opted = FallbackCache::default().store_with_credentials(true);
        assert!(plan(&opted, &authed, StatusCode::OK, &HeaderMap::new()).is_some());
        let private = FallbackCache::default().store_private(true);
        let p = h(&[("cache-control", "private".into())]);
        assert!(plan(&private, &get(), StatusCode::OK, &p).is_some());
        let no_store_req =
            RequestFacts::of(&Method::GET, &h(&[("cache-control", "no-store".into())]));
        assert!(plan(&cfg, &no_store_req, StatusCode::OK, &HeaderMap::new()).is_none());
    }
}
