//! Record: one exchange through the real transport, scrubbed into an entry and written.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, Method, Version};
use http_body::Body as _;
use reqwest::{Request, Response, ResponseBuilderExt};
use tokio::time::Instant;
use tower_service::Service;
use url::Url;

use super::body::{Chained, Tail};
use super::har::{self, Content, Entry, Pair, PostData, Timings};
use super::scrub::{Found, Scrub};
use super::Shared;
use crate::error::{Error, ErrorKind};
use crate::redact::Secrets;

/// The request as it was sent, kept for its entry.
struct Sent {
    method: Method,
    url: Url,
    version: Version,
    headers: HeaderMap,
    body: SentBody,
}

enum SentBody {
    None,
    Bytes(Vec<u8>),
    /// A stream, which cannot be read without taking it from the request.
    Stream,
    TooLarge,
}

/// How reading the response's body ended.
enum Read {
    Whole,
    /// Larger than `max_body_bytes`: handed on as it streams, not recorded.
    TooLarge,
    /// Failed after the bytes read.
    Failed(String),
}

/// Sends `req` through `inner`, reads the response's body (up to `max_body_bytes`), records
/// the exchange as entry `seq` and writes the cassette, then hands on the response: the same
/// status, version, headers, extensions, URL and body.
///
/// A write that fails fails the call (with an [`Error`] of kind `Request` whose source is
/// the [`CassetteError`](super::CassetteError)): a recording that silently records nothing
/// would be found out only at replay.
pub(crate) async fn record<S>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request,
    seq: u64,
) -> Result<Response, Error>
where
    S: Service<Request, Response = Response> + Send,
    S::Error: Into<Error>,
    S::Future: Send,
{
    let max = shared.max_body_bytes;
    let sent = Sent {
        method: req.method().clone(),
        url: req.url().clone(),
        version: req.version(),
        headers: req.headers().clone(),
        body: match req.body() {
            None => SentBody::None,
            Some(b) => match b.as_bytes() {
                Some(b) if b.len() > max => SentBody::TooLarge,
                Some(b) => SentBody::Bytes(b.to_vec()),
                None => SentBody::Stream,
            },
        },
    };
    let started = SystemTime::now();
    let t0 = Instant::now();
    let ready: Result<&mut S, Error> = tower::ServiceExt::ready(&mut inner)
        .await
        .map_err(Into::into);
    let result = match ready {
        Ok(svc) => svc.call(req).await.map_err(Into::into),
        Err(e) => Err(e),
    };
    let head = Instant::now();
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            let entry = failure_entry(&shared, &sent, &e, started, head - t0);
            shared.store(seq, entry).await?;
            return Err(e);
        }
    };

    // The URL reqwest gave (after its redirects); a transport of another kind may have set
    // none, and reqwest's placeholder is no URL: the request's stands in for it.
    let url = if resp.url().host_str() == Some("no.url.provided.local") {
        sent.url.clone()
    } else {
        resp.url().clone()
    };
    let (parts, mut body) = http::Response::<reqwest::Body>::from(resp).into_parts();
    let mut buf = Vec::new();
    let read = if body.size_hint().exact().is_some_and(|n| n > max as u64) {
        Read::TooLarge
    } else {
        loop {
            match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break Read::Whole,
                Some(Ok(frame)) => {
                    // Trailers are not recorded.
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                        if buf.len() > max {
                            break Read::TooLarge;
                        }
                    }
                }
                Some(Err(e)) => {
                    let text = error_chain(&e, &sent.url);
                    let rest = Tail::Error(Some(Box::new(e)));
                    let entry = response_entry(
                        &shared,
                        &sent,
                        &parts,
                        &buf,
                        Read::Failed(text),
                        started,
                        (head - t0, head.elapsed()),
                    );
                    shared.store(seq, entry).await?;
                    return Ok(with_url(parts, url, Chained::new(buf.into(), rest)));
                }
            }
        }
    };
    let receive = head.elapsed();
    let too_large = matches!(read, Read::TooLarge);
    let entry = response_entry(
        &shared,
        &sent,
        &parts,
        &buf,
        read,
        started,
        (head - t0, receive),
    );
    shared.store(seq, entry).await?;
    let body = if too_large {
        reqwest::Body::wrap(Chained::new(Bytes::from(buf), Tail::Body(body)))
    } else {
        reqwest::Body::from(Bytes::from(buf))
    };
    Ok(with_url_body(parts, url, body))
}

/// A reqwest response from parts and a body, with `url` as its URL (reqwest keeps it in an
/// extension only its own builder can set).
fn with_url(parts: http::response::Parts, url: Url, body: Chained) -> Response {
    with_url_body(parts, url, reqwest::Body::wrap(body))
}

fn with_url_body(mut parts: http::response::Parts, url: Url, body: reqwest::Body) -> Response {
    if let Ok(carrier) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(carrier.into_parts().0.extensions);
    }
    Response::from(http::Response::from_parts(parts, body))
}

/// An error's text and the texts of its sources, scrubbed of the request URL's secrets by
/// palisade's rules (palisade's own errors are already).
fn error_chain(err: &(dyn std::error::Error + 'static), url: &Url) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = e.source();
    }
    Secrets::of(url).scrub(&text).into_owned()
}

/// The request part of an entry, scrubbed, and the secrets found (with those of the response
/// headers, scrubbed in place into `resp_headers`).
struct Scrubbed {
    request: har::Request,
    secrets: Secrets,
    comments: Vec<String>,
}

fn scrub_exchange(shared: &Shared, sent: &Sent, resp_headers: Option<&mut HeaderMap>) -> Scrubbed {
    let scrub: &Scrub = &shared.scrub;
    let mut found = Found::default();
    let mut url = scrub.url(&sent.url, &mut found);
    let mut headers = sent.headers.clone();
    scrub.headers(&mut headers, &mut found);
    let mut resp_headers = resp_headers;
    if let Some(h) = resp_headers.as_deref_mut() {
        scrub.headers(h, &mut found);
    }
    let secrets = found.secrets();
    Scrub::path_pass(&mut url, &secrets);
    scrub.headers_pass(&mut headers, &secrets);
    if let Some(h) = resp_headers {
        scrub.headers_pass(h, &secrets);
    }
    let mut comments = Vec::new();
    let max = shared.max_body_bytes;
    let (post_data, body_size) = match &sent.body {
        SentBody::None => (None, 0),
        SentBody::Stream => {
            comments.push("the request body is a stream: not recorded".to_owned());
            (None, -1)
        }
        SentBody::TooLarge => {
            comments.push(format!(
                "the request body is larger than max_body_bytes ({max}): not recorded"
            ));
            (None, -1)
        }
        SentBody::Bytes(b) => {
            let mut b = b.clone();
            Scrub::body(scrub.request_body.as_ref(), &mut b, &headers, &secrets);
            let (text, encoding) = har::body_text(&b);
            let pd = PostData {
                mime_type: header_text(&headers, CONTENT_TYPE),
                text,
                encoding,
            };
            (Some(pd), b.len() as i64)
        }
    };
    let query_string = url
        .query_pairs()
        .map(|(k, v)| Pair {
            name: k.into_owned(),
            value: v.into_owned(),
        })
        .collect();
    Scrubbed {
        request: har::Request {
            method: sent.method.to_string(),
            url: url.to_string(),
            http_version: har::version_name(sent.version),
            cookies: Vec::new(),
            headers: pairs(&headers),
            query_string,
            post_data,
            headers_size: -1,
            body_size,
        },
        secrets,
        comments,
    }
}

fn pairs(h: &HeaderMap) -> Vec<Pair> {
    h.iter()
        .map(|(k, v)| Pair {
            name: k.as_str().to_owned(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
        .collect()
}

fn header_text(h: &HeaderMap, name: http::HeaderName) -> String {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

fn comment(comments: Vec<String>) -> Option<String> {
    (!comments.is_empty()).then(|| format!("palisade: {}", comments.join("; ")))
}

/// The entry of an exchange that got no response: status 0, `_error`, `_errorKind`.
fn failure_entry(
    shared: &Shared,
    sent: &Sent,
    err: &Error,
    started: SystemTime,
    took: Duration,
) -> Entry {
    let s = scrub_exchange(shared, sent, None);
    let text = s.secrets.scrub(&error_chain(err, &sent.url)).into_owned();
    Entry {
        started_date_time: har::iso8601(started),
        time: har::millis(took),
        request: s.request,
        response: har::Response {
            status: 0,
            status_text: String::new(),
            http_version: String::new(),
            cookies: Vec::new(),
            headers: Vec::new(),
            content: Content {
                size: 0,
                mime_type: String::new(),
                text: None,
                encoding: None,
                encoded: None,
            },
            redirect_url: String::new(),
            headers_size: -1,
            body_size: -1,
            error: Some(text),
            error_kind: Some(har::kind_name(err.kind())),
        },
        cache: Default::default(),
        timings: Timings::new(took, Duration::ZERO),
        comment: comment(s.comments),
    }
}

fn response_entry(
    shared: &Shared,
    sent: &Sent,
    parts: &http::response::Parts,
    body: &[u8],
    read: Read,
    started: SystemTime,
    (wait, receive): (Duration, Duration),
) -> Entry {
    let max = shared.max_body_bytes;
    let mut headers = parts.headers.clone();
    let s = scrub_exchange(shared, sent, Some(&mut headers));
    let mut comments = s.comments;
    let mut error = None;
    let (text, encoding, size) = match read {
        Read::TooLarge => {
            comments.push(format!(
                "the response body is larger than max_body_bytes ({max}): not recorded, \
                 it replays empty"
            ));
            (None, None, -1)
        }
        Read::Whole | Read::Failed(_) => {
            if let Read::Failed(e) = read {
                comments.push(format!(
                    "the response body failed after {} bytes",
                    body.len()
                ));
                error = Some(s.secrets.scrub(&e).into_owned());
            }
            let mut b = body.to_vec();
            Scrub::body(
                shared.scrub.response_body.as_ref(),
                &mut b,
                &headers,
                &s.secrets,
            );
            if b.len() > max {
                comments.push(format!(
                    "the response body is larger than max_body_bytes ({max}) once scrubbed: \
                     not recorded, it replays empty"
                ));
                (None, None, -1)
            } else {
                let (t, enc) = har::body_text(&b);
                (Some(t), enc, b.len() as i64)
            }
        }
    };
    let encoded = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        comments.push("the response body is as sent, still content-encoded".to_owned());
    }
    let redirect_url = header_text(&headers, http::header::LOCATION);
    Entry {
        started_date_time: har::iso8601(started),
        time: har::millis(wait + receive),
        request: s.request,
        response: har::Response {
            status: parts.status.as_u16(),
            status_text: parts.status.canonical_reason().unwrap_or("").to_owned(),
            http_version: har::version_name(parts.version),
            cookies: Vec::new(),
            headers: pairs(&headers),
            content: Content {
                size,
                mime_type: header_text(&headers, CONTENT_TYPE),
                text,
                encoding,
                encoded: encoded.then_some(true),
            },
            redirect_url,
            headers_size: -1,
            body_size: size,
            error_kind: error.is_some().then(|| har::kind_name(ErrorKind::Body)),
            error,
        },
        cache: Default::default(),
        timings: Timings::new(wait, receive),
        comment: comment(comments),
    }
}
