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
//!   userinfo, and each query value, password and username quoted alone (raw or
//!   percent-decoded). A part shorter than 8 bytes is replaced only where it stands as a word
//!   of its own, so that it does not garble the words that contain it, and a query value or
//!   username shorter than 4 bytes is not looked for (`page=2` is no secret).
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
    let mut first = true;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        f.write_char(if first { '?' } else { '&' })?;
        first = false;
        match part.split_once('=') {
            Some((key, value)) if !value.bytes().all(|b| b == b'=') => {
                f.write_str(key)?;
                f.write_char('=')?;
                f.write_str(REDACTED)?;
            }
            _ => f.write_str(REDACTED)?,
        }
    }
    Ok(())
}

/// A secret shorter than this is replaced only where it stands as a word of its own (not
/// inside a longer run of letters and digits): a short one could be any word of the text.
const ANYWHERE: usize = 8;
/// A query value or a username shorter than this is not looked for in text at all: `page=2`
/// is no secret, and a `2` is in many messages.
const MIN_VALUE: usize = 4;

/// A part of a URL that the rules hide, as a library's text may show it, and what stands in
/// for it there.
struct Secret<'a> {
    text: Cow<'a, str>,
    with: Cow<'static, str>,
}

/// The parts of `url` that [`url`] hides: the raw query string, the userinfo, each query value
/// (and bare parameter) raw and percent-decoded, the password and the username. The longest
/// first, so that a part is replaced before the parts it holds.
fn secrets(url: &Url) -> Vec<Secret<'_>> {
    let mut out = Vec::new();
    if let Some(q) = url.query().filter(|q| q.len() >= MIN_VALUE) {
        let mut shown = String::new();
        let _ = write_query(&mut shown, q);
        // Without the `?`: the text shows the query after its own.
        let shown = shown.split_off(shown.len().min(1));
        out.push(Secret {
            text: Cow::Borrowed(q),
            with: Cow::Owned(shown),
        });
        for part in q.split('&') {
            let value = match part.split_once('=') {
                Some((key, v)) if v.bytes().all(|b| b == b'=') => key,
                Some((_, v)) => v,
                None => part,
            };
            if value.len() >= MIN_VALUE {
                out.push(Secret {
                    text: Cow::Borrowed(value),
                    with: Cow::Borrowed(REDACTED),
                });
            }
        }
        // The same values percent-decoded, as a message may quote them.
        for (key, v) in url.query_pairs() {
            let value = if v.bytes().all(|b| b == b'=') { key } else { v };
            if value.len() >= MIN_VALUE && !out.iter().any(|s| s.text == value) {
                out.push(Secret {
                    text: Cow::Owned(value.into_owned()),
                    with: Cow::Borrowed(REDACTED),
                });
            }
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
        out.push(Secret {
            text: Cow::Owned(info),
            with: Cow::Borrowed(""),
        });
    }
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        out.push(Secret {
            text: Cow::Borrowed(p),
            with: Cow::Borrowed(REDACTED),
        });
    }
    if user.len() >= MIN_VALUE {
        out.push(Secret {
            text: Cow::Borrowed(user),
            with: Cow::Borrowed(REDACTED),
        });
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.text.len()));
    out
}

/// Where `secret` stands in `text`, as [`ANYWHERE`] says: anywhere when it is long, else only
/// between characters that are not letters or digits.
fn occurrences<'t>(text: &'t str, secret: &'t str) -> impl Iterator<Item = usize> + 't {
    let anywhere = secret.len() >= ANYWHERE;
    text.match_indices(secret).filter_map(move |(at, _)| {
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        let before = text[..at].chars().next_back();
        let after = text[at + secret.len()..].chars().next();
        (anywhere || !(word(before) || word(after))).then_some(at)
    })
}

/// Whether `text` shows a part of `url` that the rules hide.
pub(crate) fn leaks(text: &str, url: &Url) -> bool {
    secrets(url)
        .iter()
        .any(|s| occurrences(text, &s.text).next().is_some())
}

/// `text` with the parts of `url` that the rules hide replaced: the whole URL by its shown
/// form, then any query string, userinfo, query value, password or username left.
pub(crate) fn scrub<'t>(text: &'t str, url: &Url) -> Cow<'t, str> {
    let secrets = secrets(url);
    if !secrets
        .iter()
        .any(|s| occurrences(text, &s.text).next().is_some())
    {
        return Cow::Borrowed(text);
    }
    let mut out = text.replace(url.as_str(), &self::url(url));
    for s in &secrets {
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
    pub(crate) fn chain(err: &(dyn StdError + 'static), url: &Url) -> Scrubbed {
        Scrubbed {
            display: scrub(&err.to_string(), url).into_owned(),
            debug: scrub(&format!("{err:?}"), url).into_owned(),
            source: err.source().map(|s| Box::new(Scrubbed::chain(s, url))),
        }
    }

    /// Whether any error of the chain from `err` shows a secret of `url` in its `Display` or
    /// `Debug`, plain or alternate.
    pub(crate) fn needed(err: &(dyn StdError + 'static), url: &Url) -> bool {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if leaks(&format!("{e} {e:#} {e:?} {e:#?}"), url) {
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
        assert!(Scrubbed::needed(&err, &url));
        let s = Scrubbed::chain(&err, &url);
        assert_eq!(s.to_string(), "outer");
        let inner = s.source().unwrap();
        assert_eq!(inner.to_string(), "GET http://h/?k=REDACTED failed");
        assert!(!format!("{s:?}").contains("SECRET"));
        assert!(inner.source().is_none());
    }
}
