//! Replay: finding the recorded answer to a request, and answering with it.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use reqwest::{Request, Response, ResponseBuilderExt};
use url::Url;

use super::body::{Chained, Tail};
use super::error::{NoMatch, RecordedFailure};
use super::har::{Answer, ReadEntry, Reply};
use super::scrub::{Found, Scrub};
use super::RecordedRequest;
use crate::error::{Error, ErrorKind};
use crate::redact::DisplayUrl;

/// A matcher added to the default (method and URL).
#[derive(Clone)]
pub(crate) enum Matcher {
    /// The values of this header (lowercase), in order.
    Header(String),
    /// The body, byte for byte.
    Body,
    Custom(Arc<MatchFn>),
}

pub(crate) type MatchFn = dyn Fn(&RecordedRequest, &RecordedRequest) -> bool + Send + Sync;

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Header(h) => write!(f, "Header({h:?})"),
            Matcher::Body => f.write_str("Body"),
            Matcher::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// What a URL is compared by: scheme, host and port; path; the query's pairs, sorted (so the
/// order of parameters does not matter), percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct UrlKey {
    origin: String,
    path: String,
    query: Vec<(String, String)>,
}

impl UrlKey {
    pub(crate) fn of(url: &Url) -> Self {
        let mut query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        query.sort();
        UrlKey {
            origin: format!(
                "{}://{}:{}",
                url.scheme(),
                url.host_str().unwrap_or(""),
                url.port_or_known_default().unwrap_or(0)
            ),
            path: url.path().to_owned(),
            query,
        }
    }
}

/// A recorded request, scrubbed, with its answer.
#[derive(Clone)]
pub(crate) struct Recorded {
    pub(crate) request: RecordedRequest,
    pub(crate) key: UrlKey,
    pub(crate) answer: Answer,
}

impl Recorded {
    /// An entry read from a cassette, scrubbed by the same rules as a request (see
    /// [`scrub`](super::scrub)).
    pub(crate) fn new(e: ReadEntry, scrub: &Scrub) -> Self {
        let request = RecordedRequest::scrubbed(
            e.method,
            &e.url,
            e.headers,
            e.body.map(|b| b.to_vec()),
            scrub,
        );
        Recorded {
            key: UrlKey::of(&request.url),
            request,
            answer: e.answer,
        }
    }
}

impl RecordedRequest {
    /// A request as replay compares it: scrubbed by steps 1 to 4 of [`scrub`](super::scrub).
    pub(crate) fn scrubbed(
        method: http::Method,
        url: &Url,
        mut headers: HeaderMap,
        body: Option<Vec<u8>>,
        scrub: &Scrub,
    ) -> Self {
        let mut found = Found::default();
        let mut url = scrub.url(url, &mut found);
        scrub.headers(&mut headers, &mut found);
        let secrets = found.secrets();
        Scrub::path_pass(&mut url, &secrets);
        scrub.headers_pass(&mut headers, &secrets);
        let body = body.map(|mut b| {
            Scrub::body(scrub.request_body.as_ref(), &mut b, &headers, &secrets);
            Bytes::from(b)
        });
        RecordedRequest {
            method,
            url,
            headers,
            body,
        }
    }
}

/// The request with its key, as it is compared with each entry.
pub(crate) struct Incoming {
    pub(crate) request: RecordedRequest,
    pub(crate) key: UrlKey,
}

/// What differs between a request and a recorded one, in words that show no value; empty when
/// they match.
pub(crate) fn differences(i: &Incoming, r: &Recorded, matchers: &[Matcher]) -> Vec<String> {
    let mut out = Vec::new();
    if i.request.method != r.request.method {
        out.push("the method".to_owned());
    }
    if i.key.origin != r.key.origin {
        out.push("the scheme, host or port".to_owned());
    }
    if i.key.path != r.key.path {
        out.push("the path".to_owned());
    }
    if i.key.query != r.key.query {
        let mut names: Vec<&str> = i
            .key
            .query
            .iter()
            .chain(&r.key.query)
            .map(|(k, _)| k.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let values = |q: &[(String, String)]| -> Vec<String> {
                q.iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            if values(&i.key.query) != values(&r.key.query) {
                out.push(format!("query `{name}`"));
            }
        }
    }
    for m in matchers {
        match m {
            Matcher::Header(name) => {
                let a: Vec<_> = i.request.headers.get_all(name.as_str()).iter().collect();
                let b: Vec<_> = r.request.headers.get_all(name.as_str()).iter().collect();
                if a != b {
                    out.push(format!("header `{name}`"));
                }
            }
            Matcher::Body => {
                let a = i.request.body.as_deref().unwrap_or_default();
                let b = r.request.body.as_deref().unwrap_or_default();
                if a != b {
                    out.push("the body".to_owned());
                }
            }
            Matcher::Custom(f) => {
                if !f(&i.request, &r.request) {
                    out.push("a custom matcher".to_owned());
                }
            }
        }
    }
    out
}

/// How a request and a recorded one are shown in a [`NoMatch`]: method and URL by palisade's
/// rules (no userinfo, every query value `REDACTED`).
pub(crate) fn shown(method: &http::Method, url: &Url) -> String {
    format!("{method} {}", DisplayUrl(url))
}

/// The recorded request closest to `i`, as `entry N: GET url (differs in …)`: among those of
/// the same method, origin and path, the one with the fewest differences; else the one whose
/// method and URL without its query (`GET https://h:443/p`) are the fewest edits away
/// (Levenshtein distance, on their first 200 characters). The first in the cassette wins a
/// tie.
pub(crate) fn closest<'a>(
    i: &Incoming,
    entries: impl Iterator<Item = (usize, &'a Recorded)>,
    matchers: &[Matcher],
) -> Option<String> {
    let short = |m: &http::Method, k: &UrlKey| -> Vec<char> {
        format!("{m} {}{}", k.origin, k.path)
            .chars()
            .take(200)
            .collect()
    };
    let mine = short(&i.request.method, &i.key);
    // (tier, score, index, entry): tier 0 is the same method, origin and path.
    let mut best: Option<(u8, usize, usize, &Recorded)> = None;
    for (index, r) in entries {
        let same = r.request.method == i.request.method
            && r.key.origin == i.key.origin
            && r.key.path == i.key.path;
        let candidate = if same {
            (0, differences(i, r, matchers).len(), index, r)
        } else {
            (
                1,
                levenshtein(&mine, &short(&r.request.method, &r.key)),
                index,
                r,
            )
        };
        if best.is_none_or(|b| (candidate.0, candidate.1) < (b.0, b.1)) {
            best = Some(candidate);
        }
    }
    best.map(|(_, _, index, r)| {
        let diffs = differences(i, r, matchers);
        let what = if diffs.is_empty() {
            String::new()
        } else {
            format!(" (differs in {})", diffs.join(", "))
        };
        format!(
            "entry {index}: {}{what}",
            shown(&r.request.method, &r.request.url)
        )
    })
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The error of a request replay has no answer to: kind `Request`, so no stage retries it
/// and the circuit breaker does not count it.
pub(crate) fn no_match(req: &Request, m: NoMatch) -> Error {
    let mut e = Error::from_source(ErrorKind::Request, m);
    e.set_url_if_missing(req.url());
    e
}

/// The answer, as the transport returns it, with the request's URL as the response's.
pub(crate) fn answer(a: &Answer, url: &Url) -> Result<Response, Error> {
    match a {
        Answer::Failure { kind, message } => {
            let mut e = match kind {
                ErrorKind::CircuitOpen | ErrorKind::RateLimited | ErrorKind::BulkheadFull => {
                    Error::rejected(*kind, None)
                }
                _ => Error::from_source(*kind, RecordedFailure(message.clone())),
            };
            e.set_url_if_missing(url);
            Err(e)
        }
        Answer::Response(r) => Ok(respond(r, url)),
    }
}

fn respond(r: &Reply, url: &Url) -> Response {
    let body = match &r.body_error {
        None => reqwest::Body::from(r.body.clone()),
        Some(message) => reqwest::Body::wrap(Chained::new(
            r.body.clone(),
            Tail::Error(Some(Box::new(RecordedFailure(message.clone())))),
        )),
    };
    let mut resp = http::Response::builder()
        .status(r.status)
        .version(r.version)
        .url(url.clone())
        .body(body)
        .unwrap_or_else(|_| http::Response::new(reqwest::Body::from(Bytes::new())));
    *resp.headers_mut() = r.headers.clone();
    Response::from(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(levenshtein(&c("kitten"), &c("sitting")), 3);
        assert_eq!(levenshtein(&c(""), &c("abc")), 3);
        assert_eq!(levenshtein(&c("same"), &c("same")), 0);
    }

    #[test]
    fn query_order_does_not_matter_but_values_do() {
        let a = UrlKey::of(&Url::parse("http://h:80/p?b=2&a=1").unwrap());
        let b = UrlKey::of(&Url::parse("http://h/p?a=1&b=2").unwrap());
        assert!(a == b);
        let c = UrlKey::of(&Url::parse("http://h/p?a=1&b=3").unwrap());
        assert!(a != c);
    }
}
