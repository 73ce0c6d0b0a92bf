//! Redaction: one set of rules for everything palisade prints or records about a request.
//!
//! Errors (`Display`, `Debug` and every error in their `source()` chain), tracing fields, and
//! whatever else palisade shows of a request go through these functions, so they cannot
//! disagree about what is secret:
//!
//! - a URL is shown without its userinfo (`user:password@`) and its fragment, and with every
//!   query value replaced by [`REDACTED`]; a query parameter without a value (a bare token,
//!   as in `?eyJhbGciOi…`, or one whose "value" is only base64 padding, as in `?c2VjcmV0=`) is
//!   replaced whole, since a key without a value is as secret as a value. Query keys with a
//!   value are kept, as OpenTelemetry's `url.full` convention does, so `?page=2&token=abc`
//!   shows as `?page=REDACTED&token=REDACTED`.
//! - text written by another library (a transport's error message) is scrubbed of the parts of
//!   the request's URL that the rules above hide: the URL itself, the raw query string, the
//!   userinfo, and each query value (the first 64), password and username quoted alone: raw,
//!   percent-decoded, form-decoded, and as `Debug` escapes them inside a string. A part
//!   shorter than 8 bytes is replaced only where it stands as a word of its own, so that it
//!   does not garble the words that contain it, and a query value or username shorter than 4
//!   bytes is not looked for (`page=2` is no secret). A URL of more than 64 parameters has the
//!   rest found only where the URL or its query string is quoted whole.
//! - header values are never shown at all; header names are.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt::{self, Write as _};

use url::{Position, Url};

/// What stands in for a hidden value.
pub(crate) const REDACTED: &str = "REDACTED";

/// The URL as palisade shows it: no userinfo, no fragment, query values replaced. See the
/// [module docs](self).
pub(crate) fn url(url: &Url) -> String {
    let mut out = String::with_capacity(url.as_str().len());
    write_url(&mut out, url);
    out
}

/// A URL shown by the rules of [`url`], written where it is displayed, without an allocation.
pub(crate) struct DisplayUrl<'a>(pub(crate) &'a Url);

impl fmt::Display for DisplayUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        if url.has_host() {
            f.write_str(url.scheme())?;
            f.write_str("://")?;
            f.write_str(&url[Position::BeforeHost..Position::AfterPath])?;
        } else {
            f.write_str(&url[..Position::AfterPath])?;
        }
        if let Some(q) = url.query() {
            write_query(f, q)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DisplayUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        fmt::Display::fmt(self, f)?;
        f.write_char('"')
    }
}

fn write_url(out: &mut String, url: &Url) {
    let _ = write!(out, "{}", DisplayUrl(url));
}

/// `?` and the query with its values replaced; nothing for an empty query. A parameter whose
/// value is empty or only `=` (a bare token, or one that ends in base64 padding, as
/// `?c2VjcmV0=`) is replaced whole.
fn write_query(f: &mut impl fmt::Write, query: &str) -> fmt::Result {
    write_query_where(f, query, |_| true)
}

/// [`write_query`] for the values of the keys that `secret` picks only (it gets the key as it
/// stands in the URL, percent-encoded): the others are written as they are. A bare parameter
/// is replaced whole whatever its name, as in [`write_query`].
pub(crate) fn write_query_where(
    f: &mut impl fmt::Write,
    query: &str,
    secret: impl Fn(&str) -> bool,
) -> fmt::Result {
    let mut first = true;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        f.write_char(if first { '?' } else { '&' })?;
        first = false;
        match part.split_once('=') {
            Some((key, value)) if !value.bytes().all(|b| b == b'=') => {
                if secret(key) {
                    f.write_str(key)?;
                    f.write_char('=')?;
                    f.write_str(REDACTED)?;
                } else {
                    f.write_str(part)?;
                }
            }
            _ => f.write_str(REDACTED)?,
        }
    }
    Ok(())
}

/// What a query parameter's name holds when its value is a credential (the testing kit's
/// cassettes scrub these values; everything palisade prints hides every query value anyway).
/// A name matches when it holds one of these, case-insensitively (`X-Amz-Signature`,
/// `client_secret`, `refresh_token`, `sessionid`). Broad on purpose: a value scrubbed for
/// nothing costs little, one kept by mistake is a leak.
#[cfg(feature = "testing")]
pub(crate) const CREDENTIAL_NAMES: &[&str] = &[
    "token",
    "access_token",
    "key",
    "api_key",
    "apikey",
    "secret",
    "signature",
    "sig",
    "password",
    "passwd",
    "pwd",
    "auth",
    "session",
    "code",
    "credential",
    "jwt",
];

/// Whether a query parameter's name (percent-decoded) is a credential's, by
/// [`CREDENTIAL_NAMES`].
#[cfg(feature = "testing")]
pub(crate) fn is_credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_NAMES.iter().any(|c| name.contains(c))
}

/// The headers whose values are credentials: never shown by palisade, scrubbed from cassettes.
#[cfg(feature = "testing")]
pub(crate) const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// A secret shorter than this is replaced only where it stands as a word of its own (not
/// inside a longer run of letters and digits): a short one could be any word of the text.
const ANYWHERE: usize = 8;
/// A query value or a username shorter than this is not looked for in text at all: `page=2`
/// is no secret, and a `2` is in many messages.
const MIN_VALUE: usize = 4;

/// At most this many query values are looked for one by one in a text (the raw query string
/// and the URL always are): a URL of many thousand parameters must not make scrubbing an error
/// cost seconds.
const MAX_VALUES: usize = 64;

/// A part of a URL that the rules hide, as a library's text may show it, and what stands in
/// for it there.
struct Secret {
    text: String,
    with: Cow<'static, str>,
}

/// The parts of a URL that [`url`] hides, in every form a library's text may show them, built
/// once for a whole error chain.
///
/// - the URL itself, then the raw query string, the userinfo;
/// - each query value (and bare parameter), raw, percent-decoded and form-decoded (`+` as a
///   space); the password and the username, raw and percent-decoded;
/// - each of these also as `Debug` writes it inside a string (`\` for `\`, `\"` for `"`).
///
/// The longest first, so that a part is replaced before the parts it holds.
pub(crate) struct Secrets {
    list: Vec<Secret>,
}

/// The list of a [`Secrets`] as it is built: each text once.
#[derive(Default)]
struct Collect {
    list: Vec<Secret>,
    seen: std::collections::HashSet<String>,
}

impl Collect {
    fn add(&mut self, text: &str, with: Cow<'static, str>, min: usize) {
        if text.len() < min.max(1) {
            return;
        }
        // As `Debug` of a string writes it, too.
        let escaped: String = text.escape_debug().collect();
        for t in [text.to_owned(), escaped] {
            if self.seen.insert(t.clone()) {
                self.list.push(Secret {
                    text: t,
                    with: with.clone(),
                });
            }
        }
    }

    fn done(mut self) -> Secrets {
        self.list.sort_by_key(|s| std::cmp::Reverse(s.text.len()));
        Secrets { list: self.list }
    }
}

impl Secrets {
    /// Secret values found elsewhere than in a URL (a header's credentials, a query value the
    /// testing kit scrubbed), to be replaced by [`REDACTED`] wherever a text shows them, raw or
    /// percent-decoded, by the rules of the [module docs](self) for a query value: one shorter
    /// than 4 bytes is not looked for, one shorter than 8 only as a word of its own.
    #[cfg(feature = "testing")]
    pub(crate) fn of_values<'a>(values: impl IntoIterator<Item = &'a str>) -> Secrets {
        let mut c = Collect::default();
        for v in values {
            if v == REDACTED {
                continue;
            }
            c.add(v, Cow::Borrowed(REDACTED), MIN_VALUE);
            c.add(&percent_decoded(v), Cow::Borrowed(REDACTED), MIN_VALUE);
        }
        c.done()
    }

    pub(crate) fn of(url: &Url) -> Secrets {
        let mut c = Collect::default();
        let mut add = |text: &str, with: Cow<'static, str>, min: usize| c.add(text, with, min);
        let shown = self::url(url);
        if shown != url.as_str() {
            add(url.as_str(), Cow::Owned(shown), 1);
        }
        if let Some(q) = url.query() {
            let mut shown = String::new();
            let _ = write_query(&mut shown, q);
            // Without the `?`: the text shows the query after its own.
            let shown = shown.split_off(shown.len().min(1));
            add(q, Cow::Owned(shown), MIN_VALUE);
            for part in q.split('&').filter(|p| !p.is_empty()).take(MAX_VALUES) {
                let value = match part.split_once('=') {
                    Some((key, v)) if v.bytes().all(|b| b == b'=') => key,
                    Some((_, v)) => v,
                    None => part,
                };
                add(value, Cow::Borrowed(REDACTED), MIN_VALUE);
                add(&percent_decoded(value), Cow::Borrowed(REDACTED), MIN_VALUE);
                add(
                    &percent_decoded(&value.replace('+', " ")),
                    Cow::Borrowed(REDACTED),
                    MIN_VALUE,
                );
            }
        }
        let (user, password) = (url.username(), url.password());
        if !user.is_empty() || password.is_some() {
            let mut info = String::from(user);
            if let Some(p) = password {
                info.push(':');
                info.push_str(p);
            }
            info.push('@');
            add(&info, Cow::Borrowed(""), 1);
        }
        if let Some(p) = password {
            add(p, Cow::Borrowed(REDACTED), 1);
            add(&percent_decoded(p), Cow::Borrowed(REDACTED), 1);
        }
        add(user, Cow::Borrowed(REDACTED), MIN_VALUE);
        add(&percent_decoded(user), Cow::Borrowed(REDACTED), MIN_VALUE);
        c.done()
    }

    /// Whether `text` shows one of the secrets.
    pub(crate) fn leak_in(&self, text: &str) -> bool {
        self.list
            .iter()
            .any(|s| occurrences(text, &s.text).next().is_some())
    }

    /// `text` with every secret replaced by what stands in for it.
    pub(crate) fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if !self.leak_in(text) {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_owned();
        for s in &self.list {
            let at: Vec<usize> = occurrences(&out, &s.text).collect();
            if at.is_empty() {
                continue;
            }
            let mut next = String::with_capacity(out.len());
            let mut from = 0;
            for i in at {
                // Occurrences may overlap: skip one that starts inside the last replaced.
                if i < from {
                    continue;
                }
                next.push_str(&out[from..i]);
                next.push_str(&s.with);
                from = i + s.text.len();
            }
            next.push_str(&out[from..]);
            out = next;
        }
        Cow::Owned(out)
    }
}

/// `s` with its percent-encodings decoded (invalid UTF-8 replaced); `s` itself when it has none.
pub(crate) fn percent_decoded(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where `secret` stands in `text`, as [`ANYWHERE`] says: anywhere when it is long, else only
/// between characters that are not letters or digits. Overlapping places are all found: a
/// place refused for its neighbours does not hide one that starts inside it.
fn occurrences<'t>(text: &'t str, secret: &'t str) -> impl Iterator<Item = usize> + 't {
    let anywhere = secret.len() >= ANYWHERE;
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let mut from = 0;
    std::iter::from_fn(move || {
        while from <= text.len() {
            let at = from + text.get(from..)?.find(secret)?;
            // The next search starts one character in, so that overlaps are seen.
            from = at + text[at..].chars().next().map_or(1, char::len_utf8);
            let before = text[..at].chars().next_back();
            let after = text[at + secret.len()..].chars().next();
            if anywhere || !(word(before) || word(after)) {
                return Some(at);
            }
        }
        None
    })
}

/// Whether `text` shows a part of `url` that the rules hide.
#[cfg(test)]
pub(crate) fn leaks(text: &str, url: &Url) -> bool {
    Secrets::of(url).leak_in(text)
}

/// `text` with the parts of `url` that the rules hide replaced: the whole URL by its shown
/// form, then any query string, userinfo, query value, password or username left.
#[cfg(test)]
pub(crate) fn scrub<'t>(text: &'t str, url: &Url) -> Cow<'t, str> {
    Secrets::of(url).scrub(text)
}

/// An error chain whose text was scrubbed of a URL's secrets: each link keeps its `Display`
/// and `Debug`, scrubbed, and its place in the chain. It stands in for an error whose text
/// showed them (the original cannot be kept, since walking `source()` would reach it).
pub(crate) struct Scrubbed {
    display: String,
    debug: String,
    source: Option<Box<Scrubbed>>,
}

impl Scrubbed {
    /// The scrubbed copy of `err` and every error below it.
    pub(crate) fn chain(err: &(dyn StdError + 'static), secrets: &Secrets) -> Scrubbed {
        Scrubbed {
            display: secrets.scrub(&err.to_string()).into_owned(),
            debug: secrets.scrub(&format!("{err:?}")).into_owned(),
            source: err.source().map(|s| Box::new(Scrubbed::chain(s, secrets))),
        }
    }

    /// Whether any error of the chain from `err` shows a secret in its `Display` or `Debug`,
    /// plain or alternate.
    pub(crate) fn needed(err: &(dyn StdError + 'static), secrets: &Secrets) -> bool {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if secrets.leak_in(&format!("{e} {e:#} {e:?} {e:#?}")) {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

impl fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl fmt::Debug for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.debug)
    }
}

impl StdError for Scrubbed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn urls_lose_credentials_fragments_and_query_values() {
        assert_eq!(
            url(&u(
                "https://user:pw@api.example.com/v1/x?token=secret&page=2#frag"
            )),
            "https://api.example.com/v1/x?token=REDACTED&page=REDACTED"
        );
        assert_eq!(url(&u("http://h/p")), "http://h/p");
        assert_eq!(url(&u("http://h:8080/p?")), "http://h:8080/p");
        assert_eq!(
            url(&u("http://h/p?empty=&&x=1")),
            "http://h/p?REDACTED&x=REDACTED"
        );
        assert_eq!(url(&u("http://tok@h/")), "http://h/");
        assert_eq!(
            url(&u("mailto:a@b.c?subject=x")),
            "mailto:a@b.c?subject=REDACTED"
        );
    }

    // Regression: `redacted()` kept a bare query token (`?eyJhbGci…`, no `=`) whole. And (review
    // of issue 9) one that ends in base64 padding was taken for a key with an empty value.
    #[test]
    fn a_bare_query_token_is_redacted_whole() {
        let shown = url(&u("https://h/cb?eyJhbGciOiJIUzI1NiJ9.e30.sig&state=abc"));
        assert_eq!(shown, "https://h/cb?REDACTED&state=REDACTED");
        assert!(!shown.contains("eyJ"));
        assert_eq!(
            url(&u("http://h/cb?c2VjcmV0dG9rZW4=")),
            "http://h/cb?REDACTED"
        );
        assert_eq!(
            url(&u("http://h/cb?dG9rZW5zZWNyZXQ==&a=1")),
            "http://h/cb?REDACTED&a=REDACTED"
        );
    }

    // Review of issue 9: a transport's message may quote one value alone, or a short password
    // in `Url`'s own `Debug`; and a short secret must not garble the words it is part of.
    #[test]
    fn values_quoted_alone_are_scrubbed_and_short_ones_only_as_words() {
        let url = u("http://ab:pw1@h/p?token=SECRETVALUE&page=2&k=caf%C3%A9s");
        let s = scrub("upstream rejected token SECRETVALUE (page 2)", &url);
        assert_eq!(s, "upstream rejected token REDACTED (page 2)");
        let debug = format!("{url:?}");
        let s = scrub(&debug, &url);
        assert!(!s.contains("pw1") && !s.contains("SECRETVALUE"), "{s}");
        // Percent-decoded too.
        assert_eq!(scrub("bad key cafés", &url), "bad key REDACTED");
        // A short query does not garble the words that hold it.
        let url = u("http://h/p?a");
        assert_eq!(
            scrub("invalid data at a place", &url),
            "invalid data at a place"
        );
        assert!(matches!(scrub("invalid data", &url), Cow::Borrowed(_)));
        // A long secret is found inside a longer word too.
        let url = u("http://h/p?t=abcdefghijkl");
        assert_eq!(scrub("xxabcdefghijklxx", &url), "xxREDACTEDxx");
    }

    // Review of issue 9 (second pass): `Debug` escapes `\` and `"` in the strings it writes;
    // a plain percent-decode keeps `+`; userinfo is percent-encoded in the URL; a place refused
    // for its neighbours hid one that overlaps it.
    #[test]
    fn every_form_of_a_secret_is_found() {
        let url = u("http://h/p?path=C:\\Users\\TopSecretDir&q=%22abc%22defghijkl");
        let debug = format!("{:?}", format!("GET {url} failed"));
        assert!(leaks(&debug, &url), "{debug}");
        let s = scrub(&debug, &url);
        assert!(
            !s.contains("TopSecretDir") && !s.contains("defghijkl"),
            "{s}"
        );
        let url = u("http://h/p?token=s3cr3t+t0k3n%21");
        assert!(leaks("bad query token=s3cr3t+t0k3n!", &url));
        assert!(leaks("bad query token=s3cr3t t0k3n!", &url));
        let url = u("http://alice%40corp.example:p%40ss%3Aw0rd@h/");
        assert!(leaks("login alice@corp.example failed", &url));
        assert!(leaks("password p@ss:w0rd refused", &url));
        let url = u("http://h/p?k=x.x.");
        assert!(leaks("Ax.x.x. end", &url));
        // A URL with nothing hidden is no secret.
        assert!(!leaks("GET http://h/p failed", &u("http://h/p")));
    }

    // Review of issue 9 (second pass): scrubbing cost grew with the square of the parameters.
    #[test]
    fn a_url_of_many_parameters_is_scrubbed_in_bounded_work() {
        let q: Vec<String> = (0..40_000).map(|i| format!("k{i}=value{i}")).collect();
        let url = u(&format!("http://h/p?{}", q.join("&")));
        let secrets = Secrets::of(&url);
        assert!(
            secrets.list.len() <= 2 * (3 * MAX_VALUES + 8),
            "{}",
            secrets.list.len()
        );
        let text = format!("GET {url} failed with value7");
        let s = secrets.scrub(&text);
        assert!(
            !s.contains("value7") && !s.contains("value39999"),
            "{}",
            &s[..200]
        );
    }

    #[test]
    fn text_is_scrubbed_of_the_url_and_its_parts() {
        let url = u("https://bob:hunter22@h.test/x?token=SECRET#f");
        let text = format!("error sending request for url ({url}): refused");
        assert!(leaks(&text, &url));
        let s = scrub(&text, &url);
        assert_eq!(
            s,
            "error sending request for url (https://h.test/x?token=REDACTED): refused"
        );
        let s = scrub(
            "raw query token=SECRET and bob:hunter22@ and hunter22",
            &url,
        );
        assert!(!s.contains("SECRET") && !s.contains("hunter22"), "{s}");
        // Nothing to hide: the text is borrowed as it is.
        assert!(matches!(
            scrub("connection refused", &url),
            Cow::Borrowed(_)
        ));
        assert!(!leaks("anything", &u("http://h/p")));
    }

    #[test]
    fn a_scrubbed_chain_keeps_its_shape() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let url = u("http://h/?k=SECRET");
        let err = Outer(std::io::Error::other("GET http://h/?k=SECRET failed"));
        let secrets = Secrets::of(&url);
        assert!(Scrubbed::needed(&err, &secrets));
        let s = Scrubbed::chain(&err, &secrets);
        assert_eq!(s.to_string(), "outer");
        let inner = s.source().unwrap();
        assert_eq!(inner.to_string(), "GET http://h/?k=REDACTED failed");
        assert!(!format!("{s:?}").contains("SECRET"));
        assert!(inner.source().is_none());
    }
}
