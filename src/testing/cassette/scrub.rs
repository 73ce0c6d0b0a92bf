//! Scrubbing: what of an exchange never reaches a cassette file.
//!
//! The rules are palisade's own ([`crate::redact`]), with one difference: a cassette keeps
//! the query values that are not credentials, so that replay can tell `?page=1` from
//! `?page=2`. In order:
//!
//! 1. the URL loses its userinfo and fragment; the values of the query parameters whose
//!    names look like credentials ([`redact::CREDENTIAL_NAMES`] and the names added with
//!    [`Cassette::scrub_query`](super::Cassette::scrub_query), case-insensitive, anywhere in
//!    the name; not those kept with [`Cassette::keep_query`](super::Cassette::keep_query))
//!    become `REDACTED`, and a bare parameter (`?eyJhbGciOi…`) is replaced whole;
//! 2. the values of `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` and the
//!    headers added with [`Cassette::scrub_header`](super::Cassette::scrub_header) become
//!    `REDACTED`; URLs in `Location`, `Content-Location` and `Referer` are scrubbed as in 1;
//! 3. the bodies go through the closures of
//!    [`Cassette::scrub_request_body`](super::Cassette::scrub_request_body) and
//!    [`Cassette::scrub_response_body`](super::Cassette::scrub_response_body);
//! 4. every secret value that 1 and 2 removed (the query value, the password, the header's
//!    credentials, a cookie's value) is replaced wherever else it shows: in the URL's path,
//!    in the other header values, in text bodies and in a recorded error's message (a server
//!    that echoes the request, an OAuth redirect that repeats its code). Values shorter than
//!    4 bytes are not looked for, those shorter than 8 only as words of their own, as
//!    palisade's rules for error texts say.
//!
//! Replay applies the same rules to each request before it looks for a match, and to the
//! recorded requests of a cassette it reads (a browser's HAR holds its secrets), so the two
//! sides compare as they were scrubbed: a recorded `token=REDACTED` matches any `token`.

use std::fmt;
use std::sync::Arc;

use http::header::{CONTENT_LOCATION, LOCATION, REFERER};
use http::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::redact::{self, Secrets, REDACTED};

/// A closure that rewrites a body before it is recorded (and before a request's body is
/// matched), given the headers that came with it.
pub(crate) type BodyFn = Arc<dyn Fn(&mut Vec<u8>, &HeaderMap) + Send + Sync>;

/// The scrubbing settings of a cassette.
#[derive(Clone, Default)]
pub(crate) struct Scrub {
    /// Header names added by the user, lowercase.
    pub(crate) headers: Vec<String>,
    /// Query names added by the user, lowercase: a name holding one is a credential's.
    pub(crate) query: Vec<String>,
    /// Query names kept whatever they hold, lowercase, exact.
    pub(crate) keep_query: Vec<String>,
    pub(crate) request_body: Option<BodyFn>,
    pub(crate) response_body: Option<BodyFn>,
}

impl fmt::Debug for Scrub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrub")
            .field("headers", &self.headers)
            .field("query", &self.query)
            .field("keep_query", &self.keep_query)
            .field("request_body", &self.request_body.is_some())
            .field("response_body", &self.response_body.is_some())
            .finish()
    }
}

/// The secret values found while scrubbing an exchange, to be looked for everywhere else.
#[derive(Default)]
pub(crate) struct Found(Vec<String>);

impl Found {
    fn add(&mut self, v: &str) {
        if !v.is_empty() && v != REDACTED {
            self.0.push(v.to_owned());
        }
    }

    pub(crate) fn secrets(&self) -> Secrets {
        Secrets::of_values(self.0.iter().map(String::as_str))
    }
}

impl Scrub {
    /// Whether a header's value is a credential.
    pub(crate) fn secret_header(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        redact::SECRET_HEADERS.contains(&name) || self.headers.iter().any(|h| h == name)
    }

    /// Whether a query parameter's value is a credential, by its name as it stands in the URL.
    fn secret_query(&self, raw: &str) -> bool {
        let name = redact::percent_decoded(&raw.replace('+', " ")).to_ascii_lowercase();
        if self.keep_query.contains(&name) {
            return false;
        }
        redact::is_credential_name(&name) || self.query.iter().any(|q| name.contains(q.as_str()))
    }

    /// The query with its credentials' values replaced, without the `?`; `None` for none.
    fn query(&self, query: &str, found: &mut Found) -> Option<String> {
        for part in query.split('&').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((key, value)) if !value.bytes().all(|b| b == b'=') => {
                    if self.secret_query(key) {
                        found.add(value);
                    }
                }
                _ => found.add(part),
            }
        }
        let mut out = String::with_capacity(query.len());
        let _ = redact::write_query_where(&mut out, query, |k| self.secret_query(k));
        (!out.is_empty()).then(|| out.split_off(1))
    }

    /// Step 1 of the [module docs](self): the URL without userinfo, fragment and credentials'
    /// query values.
    pub(crate) fn url(&self, url: &Url, found: &mut Found) -> Url {
        let mut out = url.clone();
        found.add(url.username());
        if let Some(p) = url.password() {
            found.add(p);
        }
        // A URL that cannot have userinfo (`mailto:`) has none to remove.
        let _ = out.set_username("");
        let _ = out.set_password(None);
        out.set_fragment(None);
        if let Some(q) = url.query() {
            let q = self.query(q, found);
            out.set_query(q.as_deref());
        }
        out
    }

    /// A header's text that may be a URL, absolute or not.
    fn url_text(&self, text: &str, found: &mut Found) -> String {
        if let Ok(u) = Url::parse(text) {
            return self.url(&u, found).to_string();
        }
        match text.split_once('?') {
            Some((before, q)) => {
                // The fragment goes, as from a URL.
                let q = q.split('#').next().unwrap_or(q);
                match self.query(q, found) {
                    Some(q) => format!("{before}?{q}"),
                    None => before.to_owned(),
                }
            }
            None => text.to_owned(),
        }
    }

    /// Step 2 of the [module docs](self), in place.
    pub(crate) fn headers(&self, headers: &mut HeaderMap, found: &mut Found) {
        for (name, value) in headers.iter_mut() {
            if self.secret_header(name) {
                if let Ok(v) = value.to_str() {
                    credentials(name, v, found);
                } else {
                    found.add(&String::from_utf8_lossy(value.as_bytes()));
                }
                *value = HeaderValue::from_static(REDACTED);
            } else if name == LOCATION || name == CONTENT_LOCATION || name == REFERER {
                if let Ok(v) = value.to_str() {
                    let shown = self.url_text(v, found);
                    *value = HeaderValue::from_str(&shown)
                        .unwrap_or_else(|_| HeaderValue::from_static(REDACTED));
                }
            }
        }
    }

    /// Step 4 of the [module docs](self) for the header values left.
    pub(crate) fn headers_pass(&self, headers: &mut HeaderMap, secrets: &Secrets) {
        for (_, value) in headers.iter_mut() {
            if let Ok(v) = value.to_str() {
                if secrets.leak_in(v) {
                    let shown = secrets.scrub(v);
                    *value = HeaderValue::from_str(&shown)
                        .unwrap_or_else(|_| HeaderValue::from_static(REDACTED));
                }
            }
        }
    }

    /// Step 4 of the [module docs](self) for a URL's path.
    pub(crate) fn path_pass(url: &mut Url, secrets: &Secrets) {
        if url.cannot_be_a_base() {
            return;
        }
        let path = url.path().to_owned();
        if secrets.leak_in(&path) {
            url.set_path(&secrets.scrub(&path));
        }
    }

    /// Steps 3 and 4 of the [module docs](self) for a body: the closure, then the secrets in
    /// a body that is text.
    pub(crate) fn body(
        f: Option<&BodyFn>,
        body: &mut Vec<u8>,
        headers: &HeaderMap,
        secrets: &Secrets,
    ) {
        if let Some(f) = f {
            f(body, headers);
        }
        if let Ok(text) = std::str::from_utf8(body) {
            if secrets.leak_in(text) {
                *body = secrets.scrub(text).into_owned().into_bytes();
            }
        }
    }
}

/// The secret parts of a credential header's value: the whole value, and the parts a text
/// may quote alone (a token without its scheme, a Basic password, a cookie's value).
fn credentials(name: &HeaderName, value: &str, found: &mut Found) {
    found.add(value);
    match name.as_str() {
        "authorization" | "proxy-authorization" => {
            if let Some((scheme, creds)) = value.trim().split_once(' ') {
                let creds = creds.trim();
                found.add(creds);
                if scheme.eq_ignore_ascii_case("basic") {
                    use base64::Engine as _;
                    if let Ok(plain) = super::har::BASE64.decode(creds) {
                        let plain = String::from_utf8_lossy(&plain).into_owned();
                        if let Some((user, password)) = plain.split_once(':') {
                            found.add(user);
                            found.add(password);
                        }
                        found.add(&plain);
                    }
                }
                // Parameters (`Digest username="…", response="…"`).
                for p in creds.split(',') {
                    if let Some((_, v)) = p.split_once('=') {
                        found.add(v.trim().trim_matches('"'));
                    }
                }
            }
        }
        "cookie" => {
            for pair in value.split(';') {
                if let Some((_, v)) = pair.split_once('=') {
                    found.add(v.trim());
                }
            }
        }
        "set-cookie" => {
            // The cookie's value only: the attributes (`Path=/`, `HttpOnly`) are no secret.
            if let Some((_, v)) = value.split(';').next().unwrap_or("").split_once('=') {
                found.add(v.trim());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn credentials_values_go_and_the_rest_stays() {
        let s = Scrub {
            query: vec!["tenant".into()],
            keep_query: vec!["country_code".into()],
            ..Scrub::default()
        };
        let mut found = Found::default();
        let url = s.url(
            &u(
                "https://bob:hunter22@h/p?page=2&Access_Token=AAA&X-Amz-Signature=BBB\
                &my_tenant=CCC&country_code=fr&eyJhbGciOiJ9#frag",
            ),
            &mut found,
        );
        assert_eq!(
            url.as_str(),
            "https://h/p?page=2&Access_Token=REDACTED&X-Amz-Signature=REDACTED\
             &my_tenant=REDACTED&country_code=fr&REDACTED"
        );
        for v in ["bob", "hunter22", "AAA", "BBB", "CCC", "eyJhbGciOiJ9"] {
            assert!(found.0.iter().any(|f| f == v), "{v} in {:?}", found.0);
        }
        assert!(!found.0.iter().any(|f| f == "2" || f == "fr"));
    }

    #[test]
    fn credential_headers_are_redacted_and_their_parts_found() {
        let s = Scrub {
            headers: vec!["x-api-key".into()],
            ..Scrub::default()
        };
        let mut h = HeaderMap::new();
        // "alice:wonderland1"
        h.insert(
            "authorization",
            "Basic YWxpY2U6d29uZGVybGFuZDE=".parse().unwrap(),
        );
        h.insert("cookie", "a=cookievalue1; b=cookievalue2".parse().unwrap());
        h.append(
            "set-cookie",
            "sid=sessionvalue; Path=/; HttpOnly".parse().unwrap(),
        );
        h.append("set-cookie", "other=second; Secure".parse().unwrap());
        h.insert("x-api-key", "apikeyvalue".parse().unwrap());
        h.insert("location", "/next?code=oauthcode&x=1".parse().unwrap());
        h.insert(
            "x-echo",
            "you sent wonderland1 and apikeyvalue".parse().unwrap(),
        );
        let mut found = Found::default();
        s.headers(&mut h, &mut found);
        s.headers_pass(&mut h, &found.secrets());
        assert_eq!(h["authorization"], REDACTED);
        assert_eq!(h["cookie"], REDACTED);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        assert!(h.get_all("set-cookie").iter().all(|v| v == REDACTED));
        assert_eq!(h["x-api-key"], REDACTED);
        assert_eq!(h["location"], "/next?code=REDACTED&x=1");
        assert_eq!(h["x-echo"], "you sent REDACTED and REDACTED");
        for v in ["wonderland1", "cookievalue1", "sessionvalue", "oauthcode"] {
            assert!(found.0.iter().any(|f| f == v), "{v} in {:?}", found.0);
        }
        assert!(!found.0.iter().any(|f| f == "HttpOnly" || f == "/"));
    }

    #[test]
    fn text_bodies_lose_found_secrets_and_go_through_the_closure() {
        let mut found = Found::default();
        found.add("supersecrettoken");
        let f: BodyFn = Arc::new(|b: &mut Vec<u8>, _: &HeaderMap| {
            let s = String::from_utf8_lossy(b).replace("password1", REDACTED);
            *b = s.into_bytes();
        });
        let mut body = b"{\"t\":\"supersecrettoken\",\"p\":\"password1\"}".to_vec();
        Scrub::body(Some(&f), &mut body, &HeaderMap::new(), &found.secrets());
        assert_eq!(body, b"{\"t\":\"REDACTED\",\"p\":\"REDACTED\"}");
        let mut bin = vec![0xff, b's', b'u'];
        Scrub::body(None, &mut bin, &HeaderMap::new(), &found.secrets());
        assert_eq!(bin, [0xff, b's', b'u']);
    }
}
