//! `Cache-Control` (RFC 9111 §5.2, and `stale-if-error` from RFC 5861): a tolerant parser.
//!
//! The fallback cache asks this module whether a response may be stored and for how long it may
//! be served stale. The value is a comma-separated list of directives, `name` or `name=value`,
//! where a value is a token or a quoted-string; names are case-insensitive, unknown directives
//! are ignored, and the directives of every `Cache-Control` field line of a message combine.
//!
//! Header values are raw bytes (they may hold obs-text), so the parser works on `&[u8]`, never
//! allocates, and runs in time linear in the input. It never panics, and malformed input never
//! makes a response look more storable or servable than a strict reading would:
//!
//! - A comma inside a quoted-string does not separate directives, and text inside a quoted
//!   argument is never a directive. An unterminated quote runs to the end of its field line (it
//!   does not swallow the next `Cache-Control` line: each line is parsed on its own).
//! - The restrictive directives (`no-store`, `no-cache`, `private`, `must-revalidate`,
//!   `proxy-revalidate`) count whatever follows their name: an argument (`no-store=1`), the
//!   field-name list of the qualified forms (`no-cache="Set-Cookie"` is taken as a plain
//!   `no-cache`), or even junk (`no-store"x"`).
//! - `public`, which widens what may be stored, counts only when its directive is well formed
//!   (no argument, a token or a valid quoted-string): `public"x"` or `public=` are ignored.
//! - A delta-seconds argument (`max-age`, `s-maxage`, `stale-if-error`) that is missing, empty,
//!   signed, fractional or otherwise not digits is [`Age::Invalid`], which the cache reads as
//!   "stale"; so is a directive repeated with conflicting values (RFC 9111 §4.2.1). A value too
//!   large saturates at 2^31 seconds (RFC 9111 §1.2.2).

use std::time::Duration;

use http::header::CACHE_CONTROL;
use http::HeaderMap;

/// The value an overflowing delta-seconds is taken as (RFC 9111 §1.2.2): 2^31 seconds.
const MAX_DELTA_SECONDS: u32 = 1 << 31;

/// Directives of all `Cache-Control` field lines of a header map, combined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    /// `no-store`: the response must not be stored.
    pub(crate) no_store: bool,
    /// `no-cache`: a stored response must be revalidated before use. Also set by the qualified
    /// form (`no-cache="Set-Cookie"`), which is treated as unqualified (conservative).
    pub(crate) no_cache: bool,
    /// `private`: a shared cache must not store the response. Also set by the qualified form
    /// (`private="x"`), which is treated as unqualified (conservative).
    pub(crate) private: bool,
    /// `public`: a shared cache may store the response even when it would not otherwise. Only
    /// set by a well-formed directive.
    pub(crate) public: bool,
    /// `must-revalidate`: once stale, the response must not be used without revalidation.
    pub(crate) must_revalidate: bool,
    /// `proxy-revalidate`: `must-revalidate` for shared caches only.
    pub(crate) proxy_revalidate: bool,
    /// `max-age`: the freshness lifetime.
    pub(crate) max_age: Option<Age>,
    /// `s-maxage`: the freshness lifetime for shared caches.
    pub(crate) s_maxage: Option<Age>,
    /// `stale-if-error` (RFC 5861): how long past freshness the response may be served when
    /// revalidation fails.
    pub(crate) stale_if_error: Option<Age>,
}

/// A delta-seconds directive argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Age {
    /// A valid value (saturated at 2^31 s as RFC 9111 §1.2.2 says for overflow).
    Secs(u32),
    /// Present but malformed (missing value, not digits, negative, repeated with different
    /// values).
    Invalid,
}

impl CacheControl {
    /// Parses every `Cache-Control` line in `headers` (there may be several; they combine as one
    /// comma list).
    pub(crate) fn from_headers(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(CACHE_CONTROL) {
            cc.parse_into(value.as_bytes());
        }
        cc
    }

    /// Parses one field value (raw bytes: header values may hold obs-text bytes 0x80-0xFF, so
    /// UTF-8 is not required).
    #[cfg(test)]
    pub(crate) fn parse(value: &[u8]) -> CacheControl {
        let mut cc = CacheControl::default();
        cc.parse_into(value);
        cc
    }

    /// Adds the directives of one field value to `self`, splitting it on the commas that are
    /// not inside a quoted-string.
    fn parse_into(&mut self, value: &[u8]) {
        let mut start = 0;
        let mut in_quote = false;
        let mut escaped = false;
        for (i, &b) in value.iter().enumerate() {
            if in_quote {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quote = false;
                }
            } else if b == b'"' {
                in_quote = true;
            } else if b == b',' {
                self.apply(&value[start..i]);
                start = i + 1;
            }
        }
        self.apply(&value[start..]);
    }

    /// Adds one list element (a directive, or nothing for an empty element) to `self`.
    fn apply(&mut self, element: &[u8]) {
        let element = trim_ows(element);
        let name_len = element
            .iter()
            .position(|&b| !is_tchar(b))
            .unwrap_or(element.len());
        if name_len == 0 {
            // Empty element, or one that does not start with a name: nothing to apply.
            return;
        }
        let (name, rest) = element.split_at(name_len);
        let arg = Arg::parse(rest);
        let is = |directive: &str| name.eq_ignore_ascii_case(directive.as_bytes());
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("private") {
            self.private = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("public") {
            if arg != Arg::Malformed {
                self.public = true;
            }
        } else if is("max-age") {
            merge(&mut self.max_age, arg.delta_seconds());
        } else if is("s-maxage") {
            merge(&mut self.s_maxage, arg.delta_seconds());
        } else if is("stale-if-error") {
            merge(&mut self.stale_if_error, arg.delta_seconds());
        }
    }
}

impl Age {
    /// The duration of a valid value; `None` for [`Age::Invalid`].
    pub(crate) fn duration(self) -> Option<Duration> {
        match self {
            Age::Secs(secs) => Some(Duration::from_secs(u64::from(secs))),
            Age::Invalid => None,
        }
    }
}

/// What follows a directive's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg<'a> {
    /// No argument.
    Absent,
    /// `=token`.
    Token(&'a [u8]),
    /// `="..."`: the bytes between the quotes, still escaped.
    Quoted(&'a [u8]),
    /// Anything else: an empty argument, junk after the name or the argument, an unterminated
    /// quote, a byte a quoted-string may not hold.
    Malformed,
}

impl<'a> Arg<'a> {
    /// Parses what follows a name in an element whose surrounding whitespace is trimmed.
    fn parse(rest: &'a [u8]) -> Arg<'a> {
        let rest = trim_start_ows(rest);
        let Some((&first, value)) = rest.split_first() else {
            return Arg::Absent;
        };
        if first != b'=' {
            return Arg::Malformed;
        }
        let value = trim_start_ows(value);
        match value.split_first() {
            None => Arg::Malformed,
            Some((&b'"', inner)) => match quoted_end(inner) {
                Some(end) if end + 1 == inner.len() => Arg::Quoted(&inner[..end]),
                _ => Arg::Malformed,
            },
            Some(_) if value.iter().all(|&b| is_tchar(b)) => Arg::Token(value),
            Some(_) => Arg::Malformed,
        }
    }

    /// The argument read as delta-seconds (`1*DIGIT`, possibly quoted), saturated at 2^31.
    fn delta_seconds(self) -> Age {
        match self {
            Arg::Token(token) => digits(token.iter().copied()),
            Arg::Quoted(inner) => {
                let mut escaped = false;
                digits(inner.iter().copied().filter(move |&b| {
                    if escaped {
                        escaped = false;
                        true
                    } else {
                        escaped = b == b'\\';
                        !escaped
                    }
                }))
            }
            Arg::Absent | Arg::Malformed => Age::Invalid,
        }
    }
}

/// Reads `1*DIGIT`, saturating at 2^31; anything else (including nothing) is invalid.
fn digits(bytes: impl Iterator<Item = u8>) -> Age {
    let mut secs: u32 = 0;
    let mut any = false;
    for b in bytes {
        if !b.is_ascii_digit() {
            return Age::Invalid;
        }
        any = true;
        secs = secs
            .saturating_mul(10)
            .saturating_add(u32::from(b - b'0'))
            .min(MAX_DELTA_SECONDS);
    }
    if any {
        Age::Secs(secs)
    } else {
        Age::Invalid
    }
}

/// Combines a repeated delta-seconds directive: the same value stays, a different one (or an
/// invalid one) makes it invalid for good.
fn merge(slot: &mut Option<Age>, new: Age) {
    *slot = Some(match *slot {
        None => new,
        Some(old) if old == new => old,
        Some(_) => Age::Invalid,
    });
}

/// The index of the quote closing a quoted-string whose opening quote is already consumed, or
/// `None` if it is unterminated or holds a byte that is neither qdtext nor a quoted-pair.
fn quoted_end(inner: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in inner.iter().enumerate() {
        if escaped {
            // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            if !(b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80) {
                return None;
            }
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i);
        } else if !is_qdtext(b) {
            return None;
        }
    }
    None
}

/// `qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text` (RFC 9110 §5.6.4).
fn is_qdtext(b: u8) -> bool {
    b == b'\t'
        || b == b' '
        || b == 0x21
        || (0x23..=0x5b).contains(&b)
        || (0x5d..=0x7e).contains(&b)
        || b >= 0x80
}

/// `tchar` (RFC 9110 §5.6.2): the bytes of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `b` is optional whitespace (space or horizontal tab).
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without leading optional whitespace.
fn trim_start_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_ows(b)).unwrap_or(s.len());
    &s[start..]
}

/// `s` without leading or trailing optional whitespace.
fn trim_ows(s: &[u8]) -> &[u8] {
    let s = trim_start_ows(s);
    let end = s.iter().rposition(|&b| !is_ows(b)).map_or(0, |i| i + 1);
    &s[..end]
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    /// Parses a `&str` value.
    fn cc(value: &str) -> CacheControl {
        CacheControl::parse(value.as_bytes())
    }

    /// The `max-age` of a value.
    fn max_age(value: &str) -> Option<Age> {
        cc(value).max_age
    }

    #[test]
    fn empty_and_blank_values_set_nothing() {
        for v in ["", " ", ",", " , ,, ", "\t,\t"] {
            assert_eq!(cc(v), CacheControl::default(), "{v:?}");
        }
    }

    #[test]
    fn every_directive() {
        let c = cc(
            "no-store, no-cache, private, public, must-revalidate, proxy-revalidate, \
             max-age=1, s-maxage=2, stale-if-error=3",
        );
        assert_eq!(
            c,
            CacheControl {
                no_store: true,
                no_cache: true,
                private: true,
                public: true,
                must_revalidate: true,
                proxy_revalidate: true,
                max_age: Some(Age::Secs(1)),
                s_maxage: Some(Age::Secs(2)),
                stale_if_error: Some(Age::Secs(3)),
            }
        );
    }

    #[test]
    fn stale_if_error() {
        let c = cc("max-age=60, stale-if-error=30");
        assert_eq!(c.stale_if_error, Some(Age::Secs(30)));
        assert_eq!(c.max_age, Some(Age::Secs(60)));
        assert_eq!(cc("stale-if-error").stale_if_error, Some(Age::Invalid));
    }

    #[test]
    fn names_are_case_insensitive() {
        let c = cc("No-Store, NO-CACHE, Private, PUBLIC, Must-Revalidate, MAX-AGE=5, S-MaxAge=6");
        assert!(c.no_store && c.no_cache && c.private && c.public && c.must_revalidate);
        assert_eq!(c.max_age, Some(Age::Secs(5)));
        assert_eq!(c.s_maxage, Some(Age::Secs(6)));
        assert_eq!(cc("Stale-If-Error=7").stale_if_error, Some(Age::Secs(7)));
    }

    #[test]
    fn whitespace_around_directives_names_and_equals() {
        let c = cc(" \tno-store\t ,  max-age = 60 ,s-maxage\t=\t\"7\" ");
        assert!(c.no_store);
        assert_eq!(c.max_age, Some(Age::Secs(60)));
        assert_eq!(c.s_maxage, Some(Age::Secs(7)));
    }

    #[test]
    fn empty_elements_are_skipped() {
        let c = cc(",,no-store,, ,max-age=3,");
        assert!(c.no_store);
        assert_eq!(c.max_age, Some(Age::Secs(3)));
    }

    #[test]
    fn unknown_directives_are_ignored() {
        let c = cc("immutable, stale-while-revalidate=30, x-foo=\"bar\", no-transform");
        assert_eq!(c, CacheControl::default());
        // A known name with a suffix is another name.
        assert!(!cc("no-stored, no-store-x").no_store);
    }

    #[test]
    fn several_lines_combine() {
        let mut headers = HeaderMap::new();
        headers.append(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        headers.append(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
        headers.append(CACHE_CONTROL, HeaderValue::from_static("stale-if-error=10"));
        let c = CacheControl::from_headers(&headers);
        assert_eq!(c.max_age, Some(Age::Secs(60)));
        assert!(c.private && c.no_cache && !c.no_store);
        assert_eq!(c.stale_if_error, Some(Age::Secs(10)));

        // Conflicting values across lines are a conflict too.
        headers.append(CACHE_CONTROL, HeaderValue::from_static("max-age=70"));
        assert_eq!(
            CacheControl::from_headers(&headers).max_age,
            Some(Age::Invalid)
        );

        assert_eq!(
            CacheControl::from_headers(&HeaderMap::new()),
            CacheControl::default()
        );
    }

    #[test]
    fn unterminated_quote_does_not_cross_lines() {
        let mut headers = HeaderMap::new();
        headers.append(
            CACHE_CONTROL,
            HeaderValue::from_static("foo=\"abc, max-age=5"),
        );
        headers.append(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let c = CacheControl::from_headers(&headers);
        assert!(c.no_store);
        assert_eq!(c.max_age, None);
    }

    #[test]
    fn quoted_commas_do_not_split() {
        assert_eq!(cc("foo=\"no-store, private\""), CacheControl::default());
        let c = cc("no-cache=\"set-cookie, no-store\", max-age=5");
        assert!(c.no_cache && !c.no_store);
        assert_eq!(c.max_age, Some(Age::Secs(5)));
    }

    #[test]
    fn escaped_quotes_stay_inside() {
        let c = cc(r#"foo="a\", no-store, \"b", max-age=9"#);
        assert!(!c.no_store);
        assert_eq!(c.max_age, Some(Age::Secs(9)));
        let c = cc(r#"foo="a\\", no-store"#);
        assert!(c.no_store, "an escaped backslash does not escape the quote");
    }

    #[test]
    fn unterminated_quote_runs_to_the_end() {
        let c = cc("max-age=5, foo=\"abc, no-store, private");
        assert!(!c.no_store && !c.private);
        assert_eq!(c.max_age, Some(Age::Secs(5)));
        assert_eq!(max_age("max-age=\"60"), Some(Age::Invalid));
        assert_eq!(cc("foo=\"abc\\"), CacheControl::default());
        assert!(cc("no-store=\"abc").no_store);
    }

    #[test]
    fn qualified_forms_count_as_unqualified() {
        assert!(cc("private=\"x\"").private);
        assert!(cc("private=\"set-cookie, authorization\"").private);
        assert!(cc("no-cache=\"Set-Cookie\"").no_cache);
        assert!(cc("no-cache=Set-Cookie").no_cache);
    }

    #[test]
    fn restrictive_directives_count_whatever_follows() {
        assert!(cc("no-store=1").no_store);
        assert!(cc("no-store=").no_store);
        assert!(cc("no-store\"x\"").no_store);
        assert!(cc("no-store junk").no_store);
        assert!(cc("must-revalidate=\u{1}").must_revalidate);
        assert!(cc("proxy-revalidate=a b").proxy_revalidate);
        assert!(cc("private/x").private);
    }

    #[test]
    fn public_needs_a_well_formed_directive() {
        assert!(cc("public").public);
        assert!(cc("public=1").public);
        assert!(cc("public=\"x, y\"").public);
        assert!(!cc("public=").public);
        assert!(!cc("public junk").public);
        assert!(!cc("public\"x\"").public);
        assert!(!cc("public=\"x").public);
        assert!(!cc("public=a b").public);
        assert!(!cc("public=\"\u{1}\"").public);
    }

    #[test]
    fn delta_seconds_values() {
        assert_eq!(max_age("max-age=0"), Some(Age::Secs(0)));
        assert_eq!(max_age("max-age=60"), Some(Age::Secs(60)));
        assert_eq!(max_age("max-age=0060"), Some(Age::Secs(60)));
        assert_eq!(max_age("max-age=\"60\""), Some(Age::Secs(60)));
        assert_eq!(max_age("max-age=\"\\6\\0\""), Some(Age::Secs(60)));
        assert_eq!(max_age("no-store"), None);
    }

    #[test]
    fn malformed_delta_seconds_are_invalid() {
        for v in [
            "max-age=abc",
            "max-age=",
            "max-age= ",
            "max-age",
            "max-age=-1",
            "max-age=+1",
            "max-age=1.5",
            "max-age=6 0",
            "max-age=60x",
            "max-age=\"\"",
            "max-age=\"6 0\"",
            "max-age=\"60\"x",
            "max-age=\"-1\"",
            "max-age 60",
            "max-age=\u{663}",
        ] {
            assert_eq!(max_age(v), Some(Age::Invalid), "{v:?}");
        }
    }

    #[test]
    fn huge_delta_seconds_saturate() {
        assert_eq!(
            max_age("max-age=99999999999999999999"),
            Some(Age::Secs(MAX_DELTA_SECONDS))
        );
        assert_eq!(
            max_age("max-age=2147483648"),
            Some(Age::Secs(2_147_483_648))
        );
        assert_eq!(
            max_age("max-age=2147483647"),
            Some(Age::Secs(2_147_483_647))
        );
        assert_eq!(
            max_age("max-age=4294967296"),
            Some(Age::Secs(MAX_DELTA_SECONDS))
        );
        let long = format!("max-age={}", "9".repeat(10_000));
        assert_eq!(max_age(&long), Some(Age::Secs(MAX_DELTA_SECONDS)));
    }

    #[test]
    fn repeated_delta_seconds() {
        assert_eq!(max_age("max-age=60, max-age=60"), Some(Age::Secs(60)));
        assert_eq!(max_age("max-age=60, max-age=060"), Some(Age::Secs(60)));
        assert_eq!(max_age("max-age=60, max-age=70"), Some(Age::Invalid));
        assert_eq!(max_age("max-age=x, max-age=60"), Some(Age::Invalid));
        assert_eq!(
            max_age("max-age=60, max-age=x, max-age=60"),
            Some(Age::Invalid)
        );
        assert_eq!(max_age("max-age=60, MAX-AGE=70"), Some(Age::Invalid));
    }

    #[test]
    fn non_utf8_bytes() {
        let c = CacheControl::parse(b"max-age=60, \xff\xfe, x=\"\x80\xff, no-store\", no-cache");
        assert_eq!(c.max_age, Some(Age::Secs(60)));
        assert!(c.no_cache && !c.no_store);
        assert!(CacheControl::parse(b"no-store\xff").no_store);
        assert_eq!(
            CacheControl::parse(b"max-age=6\xb0").max_age,
            Some(Age::Invalid)
        );

        let mut headers = HeaderMap::new();
        headers.append(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"private, x=\"\xe9\", max-age=\"1\xff\"").unwrap(),
        );
        let c = CacheControl::from_headers(&headers);
        assert!(c.private);
        assert_eq!(c.max_age, Some(Age::Invalid));
    }

    #[test]
    fn durations() {
        assert_eq!(Age::Secs(60).duration(), Some(Duration::from_secs(60)));
        assert_eq!(
            Age::Secs(MAX_DELTA_SECONDS).duration(),
            Some(Duration::from_secs(1 << 31))
        );
        assert_eq!(Age::Invalid.duration(), None);
    }

    #[test]
    fn long_inputs_are_linear() {
        // Would take far too long if any step were quadratic.
        let many = "no-cache=\"a, b\", ".repeat(100_000);
        assert!(cc(&many).no_cache);
        let open = format!("x=\"{}", "\\\", no-store, ".repeat(100_000));
        assert!(!cc(&open).no_store);
        let commas = ",".repeat(1_000_000);
        assert_eq!(cc(&commas), CacheControl::default());
    }

    /// The directive names the parser knows.
    static KNOWN: [&str; 9] = [
        "no-store",
        "no-cache",
        "private",
        "public",
        "must-revalidate",
        "proxy-revalidate",
        "max-age",
        "s-maxage",
        "stale-if-error",
    ];

    /// `name` with each letter's case chosen at random.
    pub(in crate::fallback) fn random_case(name: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
            name.chars()
                .zip(upper)
                .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                .collect()
        })
    }

    /// Optional whitespace.
    fn ows() -> impl Strategy<Value = String> {
        "[ \t]{0,2}"
    }

    /// A well-formed quoted-string holding commas, escapes, obs-text and directive look-alikes.
    fn quoted() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("\\\"".to_owned()),
                Just("\\\\".to_owned()),
                Just(",".to_owned()),
                Just(", ".to_owned()),
                Just("no-store".to_owned()),
                Just("é".to_owned()),
                Just("\t".to_owned()),
                "[a-zA-Z0-9=;-]{1,6}",
            ],
            0..8,
        )
        .prop_map(|pieces| format!("\"{}\"", pieces.concat()))
    }

    /// An argument: none, a token or a quoted-string.
    fn argument() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,8}".prop_map(Some),
            quoted().prop_map(Some),
        ]
    }

    /// A directive named by `name`, with random whitespace and argument.
    pub(in crate::fallback) fn directive(
        name: impl Strategy<Value = String>,
    ) -> impl Strategy<Value = String> {
        (ows(), name, ows(), argument(), ows(), ows()).prop_map(|(a, name, b, arg, c, d)| match arg
        {
            Some(arg) => format!("{a}{name}{b}={c}{arg}{d}"),
            None => format!("{a}{name}{b}"),
        })
    }

    /// A random list element: a known or unknown directive, or blank.
    pub(in crate::fallback) fn element() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => directive(proptest::sample::select(&KNOWN[..]).prop_flat_map(random_case)),
            4 => directive("[a-zA-Z][a-zA-Z0-9-]{0,10}"),
            1 => ows(),
        ]
    }

    /// A random list element that never is a `no-store` directive.
    fn element_without_no_store() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => directive(proptest::sample::select(&KNOWN[1..]).prop_flat_map(random_case)),
            4 => directive("x-[a-zA-Z0-9-]{0,10}"),
            1 => ows(),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let c = CacheControl::parse(&bytes);
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut headers = HeaderMap::new();
                headers.append(CACHE_CONTROL, value.clone());
                prop_assert_eq!(CacheControl::from_headers(&headers), c);
                headers.append(CACHE_CONTROL, value);
                let _ = CacheControl::from_headers(&headers);
            }
        }

        #[test]
        fn a_standalone_no_store_is_always_found(
            mut elements in proptest::collection::vec(element(), 0..8),
            at in any::<proptest::sample::Index>(),
            no_store in directive(random_case("no-store")),
        ) {
            let at = at.index(elements.len() + 1);
            elements.insert(at, no_store);
            let value = elements.join(",");
            prop_assert!(cc(&value).no_store, "{:?}", value);
        }

        #[test]
        fn no_store_inside_a_quoted_argument_is_not_a_directive(
            mut elements in proptest::collection::vec(element_without_no_store(), 0..8),
            at in any::<proptest::sample::Index>(),
            name in prop_oneof![
                proptest::sample::select(&KNOWN[1..]).prop_flat_map(random_case),
                "x-[a-z]{1,6}",
            ],
            before in quoted(),
            after in quoted(),
            (a, b, c) in (ows(), ows(), ows()),
        ) {
            // `name="…, no-store, …"`, its quotes and escapes drawn from `quoted()`.
            let inner = format!(
                "{}, no-store ,{}",
                &before[1..before.len() - 1],
                &after[1..after.len() - 1]
            );
            let at = at.index(elements.len() + 1);
            elements.insert(at, format!("{a}{name}{b}={c}\"{inner}\""));
            let value = elements.join(",");
            prop_assert!(!cc(&value).no_store, "{:?}", value);
        }

        #[test]
        fn valid_max_age_saturates(
            n in prop_oneof![any::<u64>(), 0..=u64::from(MAX_DELTA_SECONDS) + 1],
            name in random_case("max-age"),
            quote in any::<bool>(),
            (a, b, c, d) in (ows(), ows(), ows(), ows()),
        ) {
            let arg = if quote { format!("\"{n}\"") } else { n.to_string() };
            let value = format!("{a}{name}{b}={c}{arg}{d}");
            let expected = u32::try_from(n.min(u64::from(MAX_DELTA_SECONDS))).unwrap();
            prop_assert_eq!(cc(&value).max_age, Some(Age::Secs(expected)), "{:?}", value);
        }
    }
}
