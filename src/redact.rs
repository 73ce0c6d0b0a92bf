//! Redaction: one set of rules for everything palisade prints or records about a request.
//!
//! Errors (`Display`, `Debug` and every error in their `source()` chain), tracing fields, and
//! whatever else palisade shows of a request go through these functions, so they cannot
//! disagree about what is secret:
//!
//! - a URL is shown without its userinfo (`user:password@`) and its fragment, and with every
//!   query value replaced by [`REDACTED`]; a query parameter without `=` (a bare token, as in
//!   `?eyJhbGciOi…`) is replaced whole, since a key without a value is as secret as a value.
//!   Query keys with a value are kept, as OpenTelemetry's `url.full` convention does, so
//!   `?page=2&token=abc` shows as `?page=REDACTED&token=REDACTED`.
//! - text written by another library (a transport's error message) is scrubbed of the parts of
//!   the request's URL that the rules above hide: the raw query string, the userinfo.
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

/// `?` and the query with its values replaced; nothing for an empty query.
fn write_query(f: &mut impl fmt::Write, query: &str) -> fmt::Result {
    let mut first = true;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        f.write_char(if first { '?' } else { '&' })?;
        first = false;
        match part.split_once('=') {
            Some((key, "")) => {
                f.write_str(key)?;
                f.write_char('=')?;
            }
            Some((key, _)) => {
                f.write_str(key)?;
                f.write_char('=')?;
                f.write_str(REDACTED)?;
            }
            None => f.write_str(REDACTED)?,
        }
    }
    Ok(())
}

/// The parts of `url` that [`url`] hides and that a library's text may show as they are: the
/// raw query string, the userinfo, the password and the username.
fn secrets(url: &Url) -> impl Iterator<Item = Cow<'_, str>> {
    let query = url.query().filter(|q| !q.is_empty()).map(Cow::Borrowed);
    let userinfo = (!url.username().is_empty() || url.password().is_some()).then(|| {
        let mut s = String::from(url.username());
        if let Some(p) = url.password() {
            s.push(':');
            s.push_str(p);
        }
        s.push('@');
        Cow::Owned(s)
    });
    // A password or username alone, as a message may quote them: only when long enough not to
    // be mistaken for any word of the text.
    let password = url.password().filter(|p| p.len() >= 4).map(Cow::Borrowed);
    let username = Some(url.username())
        .filter(|u| u.len() >= 4)
        .map(Cow::Borrowed);
    [query, userinfo, password, username].into_iter().flatten()
}

/// Whether `text` shows a part of `url` that the rules hide.
pub(crate) fn leaks(text: &str, url: &Url) -> bool {
    secrets(url).any(|s| text.contains(s.as_ref()))
}

/// `text` with the parts of `url` that the rules hide replaced: the whole URL by its shown
/// form, then any query string, userinfo, password or username left.
pub(crate) fn scrub<'t>(text: &'t str, url: &Url) -> Cow<'t, str> {
    if !leaks(text, url) {
        return Cow::Borrowed(text);
    }
    let mut out = text.replace(url.as_str(), &self::url(url));
    for s in secrets(url) {
        let with = match s {
            // The query string as it follows a `?`: its shown form without the `?`.
            Cow::Borrowed(q) if Some(q) == url.query() => {
                let mut r = String::new();
                let _ = write_query(&mut r, q);
                r.split_off(r.len().min(1))
            }
            Cow::Owned(ref u) if u.ends_with('@') => String::new(),
            _ => REDACTED.to_owned(),
        };
        if out.contains(s.as_ref()) {
            out = out.replace(s.as_ref(), &with);
        }
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
            "http://h/p?empty=&x=REDACTED"
        );
        assert_eq!(url(&u("http://tok@h/")), "http://h/");
        assert_eq!(
            url(&u("mailto:a@b.c?subject=x")),
            "mailto:a@b.c?subject=REDACTED"
        );
    }

    // Regression: `redacted()` kept a bare query token (`?eyJhbGci…`, no `=`) whole.
    #[test]
    fn a_bare_query_token_is_redacted_whole() {
        let shown = url(&u("https://h/cb?eyJhbGciOiJIUzI1NiJ9.e30.sig&state=abc"));
        assert_eq!(shown, "https://h/cb?REDACTED&state=REDACTED");
        assert!(!shown.contains("eyJ"));
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
