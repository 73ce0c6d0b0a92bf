//! HAR 1.2: the entries palisade writes, and the reading of any HAR (palisade's or a
//! browser's) into what replay needs.
//!
//! Reading walks the JSON by hand, with the path of each value, so that an error names its
//! place (`log.entries[3].response.status`). Every field replay reads is checked (its type,
//! its range); every other field is ignored, so that what browsers add (`_initiator`,
//! `_priority`, `serverIPAddress`, `connection`, `pages`) or leave out (`cache`, `timings`,
//! `cookies`, `queryString`) does not matter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use serde::Serialize;
use serde_json::{Map, Value};
use url::Url;

use super::error::{CassetteError, CassetteErrorKind};
use crate::error::ErrorKind;

/// The base64 palisade writes (standard, padded), and reads leniently about padding.
pub(crate) const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------
// Writing

/// One exchange as palisade writes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry {
    pub(crate) started_date_time: String,
    pub(crate) time: f64,
    pub(crate) request: Request,
    pub(crate) response: Response,
    pub(crate) cache: Map<String, Value>,
    pub(crate) timings: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) comment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) url: String,
    pub(crate) http_version: String,
    pub(crate) cookies: Vec<Value>,
    pub(crate) headers: Vec<Pair>,
    pub(crate) query_string: Vec<Pair>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) post_data: Option<PostData>,
    pub(crate) headers_size: i64,
    pub(crate) body_size: i64,
}

#[derive(Serialize)]
pub(crate) struct Pair {
    pub(crate) name: String,
    pub(crate) value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PostData {
    pub(crate) mime_type: String,
    pub(crate) text: String,
    /// HAR 1.2 has no encoding for `postData`: palisade marks a base64 one as custom fields
    /// are marked, and reads `encoding` too.
    #[serde(rename = "_encoding", skip_serializing_if = "Option::is_none")]
    pub(crate) encoding: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) status_text: String,
    pub(crate) http_version: String,
    pub(crate) cookies: Vec<Value>,
    pub(crate) headers: Vec<Pair>,
    pub(crate) content: Content,
    #[serde(rename = "redirectURL")]
    pub(crate) redirect_url: String,
    pub(crate) headers_size: i64,
    pub(crate) body_size: i64,
    /// What failed: the exchange (with status 0) or the body (after its `text`). Chrome
    /// writes `_error` here too.
    #[serde(rename = "_error", skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// The [`ErrorKind`] of what failed, as [`kind_name`] writes it.
    #[serde(rename = "_errorKind", skip_serializing_if = "Option::is_none")]
    pub(crate) error_kind: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Content {
    pub(crate) size: i64,
    pub(crate) mime_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encoding: Option<&'static str>,
    /// The body is as the server sent it, still in its `Content-Encoding` (HAR's `text` is
    /// decoded otherwise; see [`read_entry`]).
    #[serde(rename = "_encoded", skip_serializing_if = "Option::is_none")]
    pub(crate) encoded: Option<bool>,
}

#[derive(Serialize)]
pub(crate) struct Timings {
    pub(crate) blocked: f64,
    pub(crate) dns: f64,
    pub(crate) connect: f64,
    pub(crate) send: f64,
    pub(crate) wait: f64,
    pub(crate) receive: f64,
    pub(crate) ssl: f64,
}

impl Timings {
    /// Time to the response's head (`wait`) and reading its body (`receive`), in
    /// milliseconds; what palisade cannot see (DNS, connect, TLS) is -1, as HAR says.
    pub(crate) fn new(wait: Duration, receive: Duration) -> Self {
        Timings {
            blocked: -1.0,
            dns: -1.0,
            connect: -1.0,
            send: 0.0,
            wait: millis(wait),
            receive: millis(receive),
            ssl: -1.0,
        }
    }
}

/// A duration in milliseconds, to the microsecond.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A body as HAR holds it: text when it is UTF-8, else base64.
pub(crate) fn body_text(body: &[u8]) -> (String, Option<&'static str>) {
    match std::str::from_utf8(body) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (BASE64.encode(body), Some("base64")),
    }
}

/// An HTTP version as HAR writes it.
pub(crate) fn version_name(v: Version) -> String {
    format!("{v:?}")
}

/// The name `_errorKind` holds for an [`ErrorKind`].
pub(crate) fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Timeout => "timeout",
        ErrorKind::Connect => "connect",
        ErrorKind::Transport => "transport",
        ErrorKind::Request => "request",
        ErrorKind::Body => "body",
        ErrorKind::CircuitOpen => "circuit_open",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::BulkheadFull => "bulkhead_full",
    }
}

fn kind_of(name: &str) -> Option<ErrorKind> {
    Some(match name {
        "timeout" => ErrorKind::Timeout,
        "connect" => ErrorKind::Connect,
        "transport" => ErrorKind::Transport,
        "request" => ErrorKind::Request,
        "body" => ErrorKind::Body,
        "circuit_open" => ErrorKind::CircuitOpen,
        "rate_limited" => ErrorKind::RateLimited,
        "bulkhead_full" => ErrorKind::BulkheadFull,
        _ => return None,
    })
}

/// The `log` of a new cassette, without its entries.
pub(crate) fn new_log() -> Map<String, Value> {
    let mut log = Map::new();
    log.insert("version".into(), Value::from("1.2"));
    log.insert(
        "creator".into(),
        serde_json::json!({"name": "palisade", "version": env!("CARGO_PKG_VERSION")}),
    );
    log
}

/// `startedDateTime`: ISO 8601 in UTC, to the millisecond.
pub(crate) fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ---------------------------------------------------------------------------------------
// Reading

/// A HAR as replay holds it.
pub(crate) struct Har {
    /// The `log` object without its `entries`, written back as it was.
    pub(crate) log: Map<String, Value>,
    /// Each entry as it stands in the file, written back as it was.
    pub(crate) raw: Vec<Value>,
}

/// One entry read for replay.
#[derive(Clone)]
pub(crate) struct ReadEntry {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Bytes>,
    pub(crate) answer: Answer,
}

/// What replay answers with.
#[derive(Clone)]
pub(crate) enum Answer {
    Response(Reply),
    /// No response: the exchange failed, as recorded.
    Failure {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Clone)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The body failed after `body`, as recorded.
    pub(crate) body_error: Option<String>,
    /// How long the server took to answer (`timings.wait`, else `time`).
    pub(crate) wait: Duration,
}

/// A problem at a place of the JSON.
fn bad(place: &str, message: impl Into<String>) -> CassetteError {
    CassetteError::new(CassetteErrorKind::Malformed, message).at(place)
}

fn too_large(place: &str, message: impl Into<String>) -> CassetteError {
    CassetteError::new(CassetteErrorKind::TooLarge, message).at(place)
}

/// A JSON value and its path from the document's root.
struct At<'a> {
    v: &'a Value,
    path: String,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> At<'a> {
    fn child(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn expected(&self, what: &str) -> CassetteError {
        bad(
            &self.path,
            format!("expected {what}, found {}", type_name(self.v)),
        )
    }

    fn object(&self) -> Result<&'a Map<String, Value>, CassetteError> {
        self.v.as_object().ok_or_else(|| self.expected("an object"))
    }

    /// An optional field: `None` when absent or `null`.
    fn get(&self, name: &str) -> Result<Option<At<'a>>, CassetteError> {
        Ok(self
            .object()?
            .get(name)
            .filter(|v| !v.is_null())
            .map(|v| At {
                v,
                path: self.child(name),
            }))
    }

    /// A field replay needs.
    fn req(&self, name: &str) -> Result<At<'a>, CassetteError> {
        self.get(name)?
            .ok_or_else(|| bad(&self.child(name), "missing (replay needs it)"))
    }

    fn str(&self) -> Result<&'a str, CassetteError> {
        self.v.as_str().ok_or_else(|| self.expected("a string"))
    }

    fn f64(&self) -> Result<f64, CassetteError> {
        self.v.as_f64().ok_or_else(|| self.expected("a number"))
    }

    fn bool(&self) -> Result<bool, CassetteError> {
        self.v.as_bool().ok_or_else(|| self.expected("a boolean"))
    }

    fn array(&self) -> Result<impl Iterator<Item = At<'a>> + '_, CassetteError> {
        let a = self.v.as_array().ok_or_else(|| self.expected("an array"))?;
        Ok(a.iter().enumerate().map(move |(i, v)| At {
            v,
            path: format!("{}[{i}]", self.path),
        }))
    }
}

/// Parses a HAR document: syntax, `log` and `entries`, not the entries themselves (see
/// [`read_entry`]).
pub(crate) fn parse(text: &str) -> Result<Har, CassetteError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "the JSON ends too early (a truncated file?)",
            _ => "not valid JSON",
        };
        bad(
            &format!("line {}, column {}", e.line(), e.column()),
            format!("{what}: {e}"),
        )
    })?;
    let root = At {
        v: &doc,
        path: String::new(),
    };
    let log = root.req("log")?;
    let entries = log.req("entries")?;
    let raw: Vec<Value> = entries.array()?.map(|a| a.v.clone()).collect();
    let mut log = log.object()?.clone();
    log.remove("entries");
    Ok(Har { log, raw })
}

/// Reads entry `index` for replay. Bodies larger than `max_body` are refused.
///
/// A response's `content.text` is decoded in HAR (browsers write the body after its
/// `Content-Encoding` was undone), so a response with a `Content-Encoding` other than
/// `identity` loses that header and its `Content-Length` on replay, unless palisade marked the
/// body as still encoded (`_encoded`), as it does when it records a body it got encoded. A
/// `Content-Length` that does not match a non-empty body is set to the body's length.
pub(crate) fn read_entry(
    v: &Value,
    index: usize,
    max_body: usize,
) -> Result<ReadEntry, CassetteError> {
    let entry = At {
        v,
        path: format!("log.entries[{index}]"),
    };
    entry.object()?;
    let request = entry.req("request")?;
    let method_at = request.req("method")?;
    let method = Method::from_bytes(method_at.str()?.as_bytes())
        .map_err(|_| bad(&method_at.path, "not an HTTP method"))?;
    let url_at = request.req("url")?;
    let url = Url::parse(url_at.str()?)
        .map_err(|e| bad(&url_at.path, format!("not an absolute URL: {e}")))?;
    let headers = match request.get("headers")? {
        Some(h) => read_headers(&h)?,
        None => HeaderMap::new(),
    };
    let response = entry.req("response")?;
    let body = match request.get("postData")? {
        Some(p) => {
            let encoding = match p.get("_encoding")? {
                Some(e) => Some(e),
                None => p.get("encoding")?,
            };
            match p.get("text")? {
                Some(text) => Some(read_body(&text, encoding.as_ref(), max_body)?),
                None => None,
            }
        }
        None => None,
    };

    let status_at = response.req("status")?;
    let status = status_at
        .v
        .as_u64()
        .ok_or_else(|| status_at.expected("an integer status"))?;
    // In the response, as palisade and Chrome write it; on the entry, leniently. An empty
    // one (as some exporters write for none) is none.
    let error = match response.get("_error")? {
        Some(e) => Some(e.str()?.to_owned()),
        None => match entry.get("_error")? {
            Some(e) => Some(e.str()?.to_owned()),
            None => None,
        },
    }
    .filter(|e| !e.is_empty());
    let kind = match response.get("_errorKind")? {
        Some(k) => {
            let name = k.str()?;
            Some(kind_of(name).ok_or_else(|| {
                bad(
                    &k.path,
                    "unknown error kind (timeout, connect, transport, request, body, \
                     circuit_open, rate_limited or bulkhead_full)",
                )
            })?)
        }
        None => None,
    };
    if status == 0 {
        // No response: what the exchange failed with. Browsers write status 0 for a request
        // that got no answer (blocked, refused, cancelled), with `_error` or without.
        return Ok(ReadEntry {
            method,
            url,
            headers,
            body,
            answer: Answer::Failure {
                kind: kind.unwrap_or(ErrorKind::Transport),
                message: error.unwrap_or_else(|| "no response (status 0)".to_owned()),
            },
        });
    }
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            bad(
                &status_at.path,
                format!("{status} is not an HTTP status (100 to 999, or 0 for no response)"),
            )
        })?;
    let version = match response.get("httpVersion")? {
        Some(v) => parse_version(v.str()?),
        None => Version::HTTP_11,
    };
    let mut resp_headers = read_headers(&response.req("headers")?)?;
    let content = response.req("content")?;
    content.object()?;
    let encoding = content.get("encoding")?;
    let reply_body = match content.get("text")? {
        Some(text) => read_body(&text, encoding.as_ref(), max_body)?,
        None => Bytes::new(),
    };
    let encoded = match content.get("_encoded")? {
        Some(b) => b.bool()?,
        None => false,
    };
    let content_encoded = resp_headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if content_encoded && !encoded {
        resp_headers.remove(CONTENT_ENCODING);
        resp_headers.remove(CONTENT_LENGTH);
    }
    if !reply_body.is_empty() && resp_headers.contains_key(CONTENT_LENGTH) {
        resp_headers.insert(CONTENT_LENGTH, HeaderValue::from(reply_body.len()));
    }
    let wait = match entry.get("timings")? {
        Some(t) => match t.get("wait")? {
            Some(w) => w.f64()?,
            None => -1.0,
        },
        None => -1.0,
    };
    let wait = if wait >= 0.0 {
        wait
    } else {
        match entry.get("time")? {
            Some(t) => t.f64()?,
            None => 0.0,
        }
    };
    let wait = Duration::try_from_secs_f64(wait.max(0.0) / 1e3).unwrap_or(Duration::ZERO);
    Ok(ReadEntry {
        method,
        url,
        headers,
        body,
        answer: Answer::Response(Reply {
            status,
            version,
            headers: resp_headers,
            body: reply_body,
            body_error: error,
            wait,
        }),
    })
}

/// `headers`: an array of `{name, value}`. HTTP/2 pseudo-headers (`:authority`, `:status`),
/// which browsers list, are left out.
fn read_headers(at: &At<'_>) -> Result<HeaderMap, CassetteError> {
    let mut out = HeaderMap::new();
    for h in at.array()? {
        let name_at = h.req("name")?;
        let name = name_at.str()?;
        let value_at = h.req("value")?;
        let value = value_at.str()?;
        if name.starts_with(':') {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            let shown: String = name.chars().take(64).collect();
            bad(
                &name_at.path,
                format!("{shown:?} is not a valid header name"),
            )
        })?;
        // The value is never shown: it may be a credential.
        let value = HeaderValue::from_str(value).map_err(|_| {
            bad(
                &value_at.path,
                "not a valid header value (control characters?)",
            )
        })?;
        out.append(name, value);
    }
    Ok(out)
}

/// A body's `text`, decoded by its `encoding` (none or `base64`), at most `max` bytes.
fn read_body(text: &At<'_>, encoding: Option<&At<'_>>, max: usize) -> Result<Bytes, CassetteError> {
    let s = text.str()?;
    let base64 = match encoding {
        None => false,
        Some(e) => match e.str()? {
            "" => false,
            e if e.eq_ignore_ascii_case("base64") => true,
            _ => return Err(bad(&e.path, "unknown encoding (only base64 is)")),
        },
    };
    let size = if base64 { s.len() / 4 * 3 } else { s.len() };
    if size > max {
        return Err(too_large(
            &text.path,
            format!("the body is {size} bytes, more than max_body_bytes ({max})"),
        ));
    }
    if base64 {
        // Browsers wrap nothing, but some tools break lines: whitespace is no error.
        let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        BASE64
            .decode(compact.as_bytes())
            .map(Bytes::from)
            .map_err(|e| bad(&text.path, format!("invalid base64: {e}")))
    } else {
        Ok(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// `httpVersion`, leniently: browsers write `HTTP/1.1`, `http/2.0`, `h2`, `h3` or nothing.
fn parse_version(s: &str) -> Version {
    match s.to_ascii_lowercase().as_str() {
        "http/0.9" => Version::HTTP_09,
        "http/1.0" => Version::HTTP_10,
        "http/2" | "http/2.0" | "h2" | "h2c" => Version::HTTP_2,
        "http/3" | "http/3.0" | "h3" => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso8601_in_utc() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_164_800_123); // 2024-02-29
        assert_eq!(iso8601(t), "2024-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399); // 2000-02-29
        assert_eq!(iso8601(t), "2000-02-29T23:59:59.000Z");
    }

    #[test]
    fn versions_are_read_leniently() {
        assert_eq!(parse_version("HTTP/1.1"), Version::HTTP_11);
        assert_eq!(parse_version("http/2.0"), Version::HTTP_2);
        assert_eq!(parse_version("h3"), Version::HTTP_3);
        assert_eq!(parse_version(""), Version::HTTP_11);
        assert_eq!(version_name(Version::HTTP_2), "HTTP/2.0");
    }

    #[test]
    fn bodies_are_text_or_base64() {
        assert_eq!(body_text(b"hello"), ("hello".to_owned(), None));
        assert_eq!(
            body_text(&[0xff, 0, 1]),
            ("/wAB".to_owned(), Some("base64"))
        );
    }

    fn entry(response: Value) -> Value {
        serde_json::json!({
            "request": {"method": "GET", "url": "http://h/p"},
            "response": response,
        })
    }

    #[test]
    fn a_decoded_body_loses_its_content_encoding() {
        let e = entry(serde_json::json!({
            "status": 200,
            "headers": [
                {"name": "content-encoding", "value": "gzip"},
                {"name": "content-length", "value": "20"},
                {"name": ":status", "value": "200"},
            ],
            "content": {"size": 5, "text": "hello"},
        }));
        let Answer::Response(r) = read_entry(&e, 0, 100).unwrap().answer else {
            panic!("a response")
        };
        assert!(r.headers.get(CONTENT_ENCODING).is_none());
        assert!(r.headers.get(CONTENT_LENGTH).is_none());
        assert_eq!(r.body, "hello");
        let e = entry(serde_json::json!({
            "status": 200,
            "headers": [
                {"name": "content-encoding", "value": "gzip"},
                {"name": "content-length", "value": "3"},
            ],
            "content": {"size": 3, "text": "H4sI", "encoding": "base64", "_encoded": true},
        }));
        let Answer::Response(r) = read_entry(&e, 0, 100).unwrap().answer else {
            panic!("a response")
        };
        assert_eq!(r.headers[CONTENT_ENCODING], "gzip");
        assert_eq!(r.headers[CONTENT_LENGTH], "3");
    }

    #[test]
    fn status_zero_is_a_recorded_failure() {
        let e = entry(serde_json::json!({
            "status": 0, "headers": [], "content": {},
            "_error": "connection refused", "_errorKind": "connect",
        }));
        match read_entry(&e, 0, 100).unwrap().answer {
            Answer::Failure { kind, message } => {
                assert_eq!(kind, ErrorKind::Connect);
                assert_eq!(message, "connection refused");
            }
            Answer::Response(_) => panic!("a failure"),
        }
    }
}
