//! `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date.
//!
//! A date is measured against the response's own `Date` header when it has a valid one, so the
//! delay is what the server meant whatever the skew between its clock and ours (and exact in
//! tests with paused time); without `Date`, against the system clock. A date in the past means
//! "now". A value that is neither form is ignored (the backoff schedule applies), and a number
//! too large for a `Duration` saturates rather than overflowing.

use std::time::{Duration, SystemTime};

use http::header::{DATE, RETRY_AFTER};
use http::HeaderMap;

/// The delay a response's `Retry-After` asks for, if it has a valid one.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse(value, || {
        headers
            .get(DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
            .unwrap_or_else(SystemTime::now)
    })
}

/// Parses a `Retry-After` value; `now` is only called for the date form.
pub(crate) fn parse(value: &str, now: impl FnOnce() -> SystemTime) -> Option<Duration> {
    if value.is_empty() {
        return None;
    }
    if let Some(d) = delta_seconds(value) {
        return Some(d);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now()).unwrap_or(Duration::ZERO))
}

/// A delta-seconds value (RFC 9110 §1.2: one or more digits), saturating on absurd lengths
/// instead of failing; `None` for anything else, the empty string included.
pub(crate) fn delta_seconds(value: &str) -> Option<Duration> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(
        value.parse::<u64>().unwrap_or(u64::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn epoch(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn delta_seconds() {
        assert_eq!(parse("0", || unreachable!()), Some(Duration::ZERO));
        assert_eq!(
            parse("120", || unreachable!()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse("99999999999999999999999999", || unreachable!()),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        let now = epoch(784_111_770); // Sun, 06 Nov 1994 08:49:30 GMT
        for v in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse(v, || now), Some(Duration::from_secs(7)), "{v}");
        }
    }

    #[test]
    fn past_dates_mean_now() {
        let now = epoch(784_111_800);
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", || now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_is_ignored() {
        for v in [
            "",
            "-1",
            "1.5",
            "soon",
            "12 ",
            " 12",
            "0x10",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "+5",
        ] {
            assert_eq!(parse(v, || epoch(0)), None, "{v:?}");
        }
    }

    #[test]
    fn date_is_measured_against_the_date_header() {
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:40 GMT".parse().unwrap(),
        );
        h.insert(DATE, "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, " 5 ".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(5)));
        h.insert(
            RETRY_AFTER,
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse(&s, || epoch(1_000_000_000));
        }

        #[test]
        fn any_number_parses(n in any::<u64>()) {
            prop_assert_eq!(parse(&n.to_string(), || epoch(0)), Some(Duration::from_secs(n)));
        }
    }
}
