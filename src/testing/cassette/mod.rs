//! Record and replay: HAR 1.2 cassettes.
//!
//! A [`Cassette`] builds one transport, [`CassetteTransport`], for
//! [`ClientBuilder::transport`](crate::ClientBuilder::transport) (or any tower stack), that
//! does what its [`Mode`] says:
//!
//! - [`Mode::Record`]: every exchange goes through the real transport (a `reqwest::Client`,
//!   or any `tower::Service<reqwest::Request, Response = reqwest::Response>`) and is written
//!   to the cassette, scrubbed of its secrets;
//! - [`Mode::Replay`]: every request is answered from the cassette, never from the network;
//!   a request with no recorded answer fails with a [`NoMatch`];
//! - [`Mode::ReplayOrRecord`]: answered from the cassette when it has an answer, recorded
//!   otherwise.
//!
//! [`Cassette::from_env`] reads the mode from `PALISADE_CASSETTE` (`record`, `replay` or
//! `auto`; unset means `replay`), so CI replays what a developer recorded with
//! `PALISADE_CASSETTE=record cargo test`.
//!
//! ```
//! use palisade::testing::cassette::Cassette;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A cassette as palisade records it (or a browser exports it): a HAR 1.2 document.
//! let har = r#"{"log": {"version": "1.2", "entries": [{
//!     "request": {"method": "GET", "url": "https://api.example.com/users/1?token=REDACTED"},
//!     "response": {
//!         "status": 200,
//!         "headers": [{"name": "content-type", "value": "application/json"}],
//!         "content": {"size": 8, "mimeType": "application/json", "text": "{\"id\":1}"}
//!     }
//! }]}}"#;
//! let transport = Cassette::from_json(har).build_replay()?;
//! let client = palisade::Client::builder().transport(transport.clone()).build()?;
//!
//! // `token` was scrubbed when it was recorded: any value matches.
//! let resp = client.get("https://api.example.com/users/1?token=abc").send().await?;
//! assert_eq!(resp.status(), 200);
//! assert_eq!(resp.url().as_str(), "https://api.example.com/users/1?token=abc");
//! assert_eq!(resp.text().await?, r#"{"id":1}"#);
//!
//! // One recorded answer, used: the next identical request has none.
//! let err = client.get("https://api.example.com/users/1").send().await.unwrap_err();
//! assert_eq!(err.kind(), palisade::ErrorKind::Request);
//! assert!(transport.unused().is_empty());
//! # Ok(()) }
//! ```
//!
//! Recording, in a test that replays unless told otherwise:
//!
//! ```no_run
//! use palisade::testing::cassette::Cassette;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = Cassette::new("tests/cassettes/users.har")
//!     .mode_from_env()
//!     .scrub_header("x-api-key")
//!     .build(reqwest::Client::new())?;
//! let client = palisade::Client::builder().transport(transport).build()?;
//! let resp = client.get("https://api.example.com/users/1").send().await?;
//! # let _ = resp; Ok(()) }
//! ```
//!
//! # The file
//!
//! A cassette is a HAR 1.2 document (JSON, pretty-printed), the format browsers' developer
//! tools export and HAR viewers read. Each entry has `startedDateTime`, `time` and `timings`
//! (`wait` until the response's head, `receive` for its body, in milliseconds; what palisade
//! cannot see, DNS, connect, TLS, is -1), the request (method, URL, headers, `queryString`,
//! `postData`) and the response (status, headers, `content`). A body that is UTF-8 is
//! written as text, any other as base64 (`"encoding": "base64"`).
//!
//! - **When it is written**: after each exchange, the whole cassette, atomically (a
//!   temporary file in the same directory, synced, then renamed over the cassette), before the
//!   response is handed on. A crash or a failed test leaves the previous cassette or one with
//!   every exchange finished so far, always complete JSON. There is no `flush` to forget. A
//!   write that fails fails the call with a [`palisade::Error`](crate::Error) of kind `Request`, whose
//!   source is the [`CassetteError`].
//! - **Order**: the order in which the requests were sent, whatever order they finished in.
//! - **One transport per file**: clones of a [`CassetteTransport`] share its cassette, but
//!   two transports built on one file (two tests recording at once) would each write their
//!   own entries over the other's. Give each test its own cassette.
//! - **Record** starts a new cassette: the previous file is replaced at the first exchange.
//!   **ReplayOrRecord** keeps the file's entries as they are (a browser's extra fields too)
//!   and adds the new ones after them.
//! - **Bodies** are read whole to be recorded, up to [`Cassette::max_body_bytes`] (16 MiB by
//!   default); the response handed on has the same status, version, headers, extensions, URL
//!   (`Response::url()`, after reqwest's redirects; the request's when the real transport
//!   set none) and body. A larger body is handed on as it
//!   streams, after the part read, and its entry has no `text` and a `comment` that says so:
//!   it replays empty. A body that fails is handed on as far as it came, then the error; its
//!   entry keeps that part and the error (`_error`), and replays the same way. A request
//!   body that is a stream cannot be read without taking it: its entry has no `postData`,
//!   and a `comment`.
//! - **Failures**: an exchange that produced no response (refused, reset, reqwest's timeout)
//!   is recorded with status 0, as browsers write it, `response._error` (the error's
//!   message, scrubbed; where Chrome writes its own) and `response._errorKind` (`connect`,
//!   `timeout`, `transport`…), and replays as an error of that kind, so palisade's retry sees
//!   on replay what it saw live.
//! - **Timing**: recording reads the body inside the transport's call, so palisade's attempt
//!   timeout covers the body too while recording. Replay answers at once, or after the
//!   recorded `wait` with [`Cassette::simulate_latency`] (in tokio's time, so paused-time
//!   tests see it exactly).
//! - **Content-Encoding**: HAR's `text` is the decoded body. A body recorded still encoded
//!   (from a reqwest client without its decompression features) is marked `_encoded` and
//!   replays as it came; a response whose `Content-Encoding` is not marked so (a browser's)
//!   replays without its `Content-Encoding` and `Content-Length`.
//!
//! # Secrets
//!
//! Nothing is written before it is scrubbed, by palisade's redaction rules: secret values
//! become `REDACTED`. A cassette keeps the query values that are not credentials, so that
//! replay can tell `?page=1` from `?page=2`. In order:
//!
//! 1. the URL loses its userinfo and fragment; the values of the query parameters whose
//!    names look like credentials become `REDACTED`: names holding (case-insensitively,
//!    anywhere in the name) `token`, `key`, `secret`, `signature`, `sig`, `password`,
//!    `passwd`, `pwd`, `auth`, `session`, `code`, `credential` or `jwt` (so `access_token`,
//!    `api_key`, `apikey`, `X-Amz-Signature`, `client_secret`), and those added with
//!    [`Cassette::scrub_query`]; not those kept with [`Cassette::keep_query`]. A parameter
//!    without a value (`?eyJhbGciOi…`) is replaced whole, as palisade's rules say;
//! 2. the values of `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` and the
//!    headers added with [`Cassette::scrub_header`] become `REDACTED` (the header stays, so
//!    a matcher can see it is there); URLs in `Location`, `Content-Location` and `Referer` are
//!    scrubbed as in 1;
//! 3. the bodies go through the closures of [`Cassette::scrub_request_body`] and
//!    [`Cassette::scrub_response_body`];
//! 4. each secret value that 1 and 2 removed (a query value, the password, a header's
//!    credentials, a Basic password, a cookie's value) is replaced wherever else it shows: in
//!    the URL's path, in other header values, in text bodies, in a recorded error's message
//!    (a server that echoes the request, a redirect that repeats a code). Values shorter than
//!    4 bytes are not looked for, those shorter than 8 only as words of their own.
//!
//! # Replay
//!
//! A request matches an entry when their methods are the same and their URLs, both
//! scrubbed by the rules above, have the same scheme, host, port, path and query pairs (in
//! any order; the fragment is never sent), and when every matcher added agrees:
//! [`Cassette::match_header`], [`Cassette::match_body`], [`Cassette::match_with`]. Since
//! both sides are scrubbed, a recorded `token=REDACTED` matches any `token`, and a cassette
//! exported by a browser, secrets and all, is scrubbed as it is read.
//!
//! Identical requests are answered in order: the n-th gets the n-th matching entry. Past the
//! last, [`AfterLast::Fail`] (the default) fails with a [`NoMatch`] that says the answers
//! were all used, and [`AfterLast::RepeatLast`] repeats the last. Under palisade's whole
//! pipeline, each retry is a request of its own: a recorded 503 then 200 replays as a retried
//! success. [`CassetteTransport::unused`] lists the entries never replayed.
//!
//! A request with no match fails with a [`palisade::Error`](crate::Error) of kind
//! [`Request`](crate::ErrorKind::Request), which palisade's classifier takes as a client
//! error: not retried, not a failure for the circuit breaker, never served from the fallback
//! cache. Its `source()` is a [`NoMatch`], which names the request and the closest recorded
//! one with what differs (see [`NoMatch`]); neither shows a query or header value.
//!
//! # Cassettes from browsers
//!
//! A HAR exported by Chrome, Firefox or Safari replays: only what replay needs is required
//! (`log.entries[].request.method` and `.url`; `response.status`, `.headers` and `.content`),
//! and every field replay reads is checked (its type, its range). Everything else is
//! ignored: `pages`, `cache`, `timings`, `cookies`, `queryString` (the URL is what counts),
//! `_initiator`, `_priority`, `serverIPAddress`, `connection`. HTTP/2 pseudo-headers
//! (`:authority`) are left out; an entry with status 0 (blocked, refused) replays as a
//! transport error.
//!
//! # Malformed cassettes
//!
//! A cassette that cannot be replayed is refused when the transport is built, with a
//! [`CassetteError`] that names the file, the place (`log.entries[3].response.status`, or a
//! line and column for a truncated or invalid JSON) and what is wrong: a value of the wrong
//! type, a missing field, a status out of range, an invalid method, URL, header name or
//! value, invalid base64, a body larger than [`Cassette::max_body_bytes`]. A file larger than
//! [`Cassette::max_file_bytes`] (256 MiB by default) is not read. Nothing in a cassette
//! makes it panic.
//!
//! No `Debug` of this module's types shows a header value, a query value or a body.

mod body;
mod error;
mod file;
mod har;
mod record;
mod replay;
mod scrub;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method};
use reqwest::{Request, Response};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use tower_service::Service;
use url::Url;

pub use self::error::{CassetteError, CassetteErrorKind, NoMatch};

use self::har::Answer;
use self::replay::{Incoming, Matcher, Recorded, UrlKey};
use self::scrub::{BodyFn, Scrub};
use crate::error::{Error, ErrorKind};
use crate::redact::DisplayUrl;

/// What a [`CassetteTransport`] does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Send it through the real transport and record the exchange. The cassette starts
    /// empty: the previous file is replaced at the first exchange.
    Record,
    /// Answer from the cassette; never touch the network.
    Replay,
    /// Answer from the cassette when it has an answer, else send and record.
    ReplayOrRecord,
}

impl Mode {
    /// The environment variable [`Mode::from_env`] reads: `PALISADE_CASSETTE`.
    pub const ENV: &'static str = "PALISADE_CASSETTE";

    /// The mode `PALISADE_CASSETTE` names: `record`, `replay`, or `auto` for
    /// [`ReplayOrRecord`](Mode::ReplayOrRecord) (also `replay_or_record`), in any case;
    /// unset or empty means [`Replay`](Mode::Replay), so that CI replays.
    ///
    /// # Errors
    ///
    /// Any other value, or one that is not Unicode: a [`CassetteError`] of kind `Config`.
    pub fn from_env() -> Result<Mode, CassetteError> {
        match std::env::var(Self::ENV) {
            Ok(v) => v.parse(),
            Err(std::env::VarError::NotPresent) => Ok(Mode::Replay),
            Err(std::env::VarError::NotUnicode(_)) => Err(CassetteError::new(
                CassetteErrorKind::Config,
                format!("`{}` is not Unicode", Self::ENV),
            )),
        }
    }
}

impl FromStr for Mode {
    type Err = CassetteError;

    /// `record`, `replay`, `auto` or `replay_or_record` (also with `-`), in any case; the
    /// empty string is `replay`.
    fn from_str(s: &str) -> Result<Mode, CassetteError> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "" | "replay" => Ok(Mode::Replay),
            "record" => Ok(Mode::Record),
            "auto" | "replay_or_record" => Ok(Mode::ReplayOrRecord),
            _ => {
                let shown: String = s.chars().take(32).collect();
                Err(CassetteError::new(
                    CassetteErrorKind::Config,
                    format!(
                        "`{}` is {shown:?}: expected `record`, `replay` or `auto`",
                        Mode::ENV
                    ),
                ))
            }
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Record => "record",
            Mode::Replay => "replay",
            Mode::ReplayOrRecord => "auto",
        })
    }
}

/// What replay does for a request whose matching entries were all replayed already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AfterLast {
    /// Fail with a [`NoMatch`] (in [`Mode::ReplayOrRecord`]: record a new exchange). The
    /// default: an application that makes more calls than were recorded is found out.
    #[default]
    Fail,
    /// Answer with the last matching entry again (for a poll that may run any number of
    /// times).
    RepeatLast,
}

/// A request as replay compares it, scrubbed as a cassette is (see the
/// [module docs](self#secrets)): the request being sent and a recorded one, for
/// [`Cassette::match_with`].
#[derive(Clone)]
pub struct RecordedRequest {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
}

impl RecordedRequest {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URL, scrubbed: no userinfo or fragment, credentials' query values `REDACTED`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The headers, scrubbed: credentials' values `REDACTED`.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body, scrubbed (after [`Cassette::scrub_request_body`]); `None` when there is
    /// none or it is a stream.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }
}

/// Shows the method, the URL as palisade shows URLs, the header names and the body's length.
impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordedRequest")
            .field("method", &self.method)
            .field("url", &DisplayUrl(&self.url))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.as_ref().map(Bytes::len))
            .finish()
    }
}

#[derive(Clone)]
enum Source {
    File(PathBuf),
    Json(Arc<str>),
}

/// Builds a [`CassetteTransport`]: where the cassette is, the [`Mode`], what is scrubbed,
/// how requests are matched.
///
/// ```
/// use palisade::testing::cassette::{AfterLast, Cassette, Mode};
///
/// let cassette = Cassette::new("tests/cassettes/users.har")
///     .mode(Mode::ReplayOrRecord)
///     .scrub_header("x-api-key")
///     .scrub_query("tenant")
///     .scrub_response_body(|body, _headers| {
///         let text = String::from_utf8_lossy(body).replace("alice@example.com", "REDACTED");
///         *body = text.into_bytes();
///     })
///     .match_header("accept")
///     .match_body()
///     .after_last(AfterLast::RepeatLast);
/// # let _ = cassette;
/// ```
#[must_use]
#[derive(Clone)]
pub struct Cassette {
    source: Source,
    /// `None`: read from the environment when built.
    mode: Option<Mode>,
    scrub: Scrub,
    matchers: Vec<Matcher>,
    after_last: AfterLast,
    max_body_bytes: usize,
    max_file_bytes: u64,
    simulate_latency: bool,
}

impl Cassette {
    /// A cassette in the file at `path`, in [`Mode::Replay`] unless told otherwise
    /// ([`mode`](Self::mode), [`mode_from_env`](Self::mode_from_env)).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Cassette::with(Source::File(path.into()))
    }

    /// A cassette given as a HAR document (`include_str!` of a fixture, say). It replays
    /// only: building it in another mode is an error.
    pub fn from_json(har: impl Into<String>) -> Self {
        Cassette::with(Source::Json(har.into().into()))
    }

    fn with(source: Source) -> Self {
        Cassette {
            source,
            mode: Some(Mode::Replay),
            scrub: Scrub::default(),
            matchers: Vec::new(),
            after_last: AfterLast::Fail,
            max_body_bytes: 16 << 20,
            max_file_bytes: 256 << 20,
            simulate_latency: false,
        }
    }

    /// The transport for the cassette at `path` in the mode `PALISADE_CASSETTE` names (see
    /// [`Mode::from_env`]), recording through `inner`: `Cassette::new(path).mode_from_env()
    /// .build(inner)`.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn from_env<S>(
        path: impl Into<PathBuf>,
        inner: S,
    ) -> Result<CassetteTransport<S>, CassetteError> {
        Cassette::new(path).mode_from_env().build(inner)
    }

    /// The mode. Default [`Mode::Replay`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Takes the mode from `PALISADE_CASSETTE` when the transport is built (see
    /// [`Mode::from_env`]).
    pub fn mode_from_env(mut self) -> Self {
        self.mode = None;
        self
    }

    /// Scrubs this header's values too (any case), besides `Authorization`,
    /// `Proxy-Authorization`, `Cookie` and `Set-Cookie`, in requests and responses.
    pub fn scrub_header(mut self, name: impl AsRef<str>) -> Self {
        self.scrub.headers.push(name.as_ref().to_ascii_lowercase());
        self
    }

    /// Scrubs the values of the query parameters whose names hold `name` (any case), besides
    /// those that look like credentials (see the [module docs](self#secrets)).
    pub fn scrub_query(mut self, name: impl AsRef<str>) -> Self {
        self.scrub.query.push(name.as_ref().to_ascii_lowercase());
        self
    }

    /// Keeps the values of the query parameter named exactly `name` (any case), though its
    /// name looks like a credential's (`country_code`, `keyword`). Default: none kept.
    pub fn keep_query(mut self, name: impl AsRef<str>) -> Self {
        self.scrub
            .keep_query
            .push(name.as_ref().to_ascii_lowercase());
        self
    }

    /// Rewrites each request body before it is recorded, and before a request's body is
    /// matched (so the two compare as they were scrubbed), given the request's headers
    /// (scrubbed). It should give the same result when run twice: a cassette's recorded
    /// bodies go through it again when the cassette is read. Default: none (the secrets of
    /// step 4 of the [module docs](self#secrets) are still replaced).
    pub fn scrub_request_body<F>(mut self, f: F) -> Self
    where
        F: Fn(&mut Vec<u8>, &HeaderMap) + Send + Sync + 'static,
    {
        self.scrub.request_body = Some(Arc::new(f) as BodyFn);
        self
    }

    /// Rewrites each response body before it is recorded, given the response's headers
    /// (scrubbed). The caller still gets the body as the server sent it. Default: none.
    pub fn scrub_response_body<F>(mut self, f: F) -> Self
    where
        F: Fn(&mut Vec<u8>, &HeaderMap) + Send + Sync + 'static,
    {
        self.scrub.response_body = Some(Arc::new(f) as BodyFn);
        self
    }

    /// A request matches an entry only if it has the same values of this header (in order;
    /// both scrubbed, so a credential header's value is `REDACTED` on both sides: this
    /// checks it is there). Default: headers are not compared.
    pub fn match_header(mut self, name: impl AsRef<str>) -> Self {
        self.matchers
            .push(Matcher::Header(name.as_ref().to_ascii_lowercase()));
        self
    }

    /// A request matches an entry only if it has the same body, byte for byte (both
    /// scrubbed). Default: bodies are not compared.
    pub fn match_body(mut self) -> Self {
        self.matchers.push(Matcher::Body);
        self
    }

    /// A request matches an entry only if `f(request, recorded)` is true (both scrubbed).
    pub fn match_with<F>(mut self, f: F) -> Self
    where
        F: Fn(&RecordedRequest, &RecordedRequest) -> bool + Send + Sync + 'static,
    {
        self.matchers.push(Matcher::Custom(Arc::new(f)));
        self
    }

    /// What replay does once a request's matching entries were all replayed. Default
    /// [`AfterLast::Fail`].
    pub fn after_last(mut self, after_last: AfterLast) -> Self {
        self.after_last = after_last;
        self
    }

    /// The largest body recorded, and the largest read from a cassette (a larger one there
    /// is an error). A larger response body is handed on unrecorded (see the
    /// [module docs](self#the-file)). Default 16 MiB.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// The largest cassette file read; a larger one is refused. Default 256 MiB.
    pub fn max_file_bytes(mut self, max: u64) -> Self {
        self.max_file_bytes = max;
        self
    }

    /// Replay waits as long as the server took to answer (`timings.wait`, else `time`) before
    /// answering, in tokio's time. Default false: replay answers at once.
    pub fn simulate_latency(mut self, on: bool) -> Self {
        self.simulate_latency = on;
        self
    }

    /// The transport, recording through `inner` in the modes that record.
    ///
    /// # Errors
    ///
    /// A [`CassetteError`]: the mode in `PALISADE_CASSETTE` is unknown
    /// ([`mode_from_env`](Self::mode_from_env)); a cassette from [`from_json`](Self::from_json)
    /// is asked to record; the file is missing in [`Mode::Replay`], cannot be read, is larger
    /// than [`max_file_bytes`](Self::max_file_bytes), or is malformed (the error names the
    /// place). In [`Mode::Record`] the file is not read.
    pub fn build<S>(self, inner: S) -> Result<CassetteTransport<S>, CassetteError> {
        let mode = match self.mode {
            Some(m) => m,
            None => Mode::from_env()?,
        };
        let (file, name, text) = match &self.source {
            Source::File(p) => {
                let text = match mode {
                    Mode::Record => None,
                    Mode::Replay => Some(file::read(p, self.max_file_bytes).map_err(|e| {
                        if e.kind() == CassetteErrorKind::NotFound {
                            CassetteError::new(
                                CassetteErrorKind::NotFound,
                                format!(
                                    "{}; record it first (`{}=record`, or `Mode::Record`)",
                                    e.message(),
                                    Mode::ENV
                                ),
                            )
                            .in_file(Some(p))
                        } else {
                            e
                        }
                    })?),
                    Mode::ReplayOrRecord => match file::read(p, self.max_file_bytes) {
                        Ok(t) => Some(t),
                        Err(e) if e.kind() == CassetteErrorKind::NotFound => None,
                        Err(e) => return Err(e),
                    },
                };
                (Some(p.clone()), format!("`{}`", p.display()), text)
            }
            Source::Json(s) => {
                if mode != Mode::Replay {
                    return Err(CassetteError::new(
                        CassetteErrorKind::Config,
                        format!(
                            "a cassette given as a string replays only, and the mode is {mode}: \
                             give it a file to record"
                        ),
                    ));
                }
                (None, "given as a string".to_owned(), Some(s.to_string()))
            }
        };
        let mut log = har::new_log();
        let mut slots = Vec::new();
        if let Some(text) = text {
            let parsed = har::parse(&text).map_err(|e| e.in_file(file.as_deref()))?;
            log = parsed.log;
            for (i, raw) in parsed.raw.into_iter().enumerate() {
                let entry = har::read_entry(&raw, i, self.max_body_bytes)
                    .map_err(|e| e.in_file(file.as_deref()))?;
                slots.push(Slot {
                    seq: i as u64,
                    recorded: Some(Recorded::new(entry, &self.scrub)),
                    raw,
                    used: false,
                });
            }
        }
        let next_seq = slots.len() as u64;
        Ok(CassetteTransport {
            inner,
            shared: Arc::new(Shared {
                mode,
                file,
                name,
                scrub: self.scrub,
                matchers: self.matchers,
                after_last: self.after_last,
                max_body_bytes: self.max_body_bytes,
                simulate_latency: self.simulate_latency,
                state: Mutex::new(State {
                    log,
                    slots,
                    next_seq,
                }),
                writing: Mutex::new(()),
            }),
        })
    }

    /// The transport in [`Mode::Replay`], whatever the mode set, with no real transport
    /// behind it.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_replay(self) -> Result<CassetteTransport<Offline>, CassetteError> {
        self.mode(Mode::Replay).build(Offline)
    }
}

/// Shows the settings: header and query names, whether there are closures; never a value.
impl fmt::Debug for Cassette {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Cassette");
        match &self.source {
            Source::File(p) => d.field("file", p),
            Source::Json(s) => d.field("json_bytes", &s.len()),
        };
        d.field(
            "mode",
            &self.mode.map_or("from_env".to_owned(), |m| m.to_string()),
        )
        .field("scrub", &self.scrub)
        .field("matchers", &self.matchers)
        .field("after_last", &self.after_last)
        .field("max_body_bytes", &self.max_body_bytes)
        .field("max_file_bytes", &self.max_file_bytes)
        .field("simulate_latency", &self.simulate_latency)
        .finish()
    }
}

/// The real transport of a [`CassetteTransport`] that only replays
/// ([`Cassette::build_replay`]): it is never called, and fails if it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offline;

impl Service<Request> for Offline {
    type Response = Response;
    type Error = Error;
    type Future = std::future::Ready<Result<Response, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let mut e = Error::from_source(
            ErrorKind::Request,
            "a replaying cassette has no network to send to",
        );
        e.set_url_if_missing(req.url());
        std::future::ready(Err(e))
    }
}

/// The transport a [`Cassette`] builds: records through `S`, or replays, as its [`Mode`]
/// says (see the [module docs](self)).
///
/// Cheap to clone: clones share the cassette (what was replayed, what was recorded). Use it
/// with [`ClientBuilder::transport`](crate::ClientBuilder::transport), or at the bottom of a
/// tower stack of your own. Its `Debug` shows the cassette, the mode and the entries' count,
/// not the real transport (a `reqwest::Client`'s own `Debug` shows its default headers'
/// values).
pub struct CassetteTransport<S = Offline> {
    inner: S,
    shared: Arc<Shared>,
}

crate::inner_accessors!(CassetteTransport);

impl<S: Clone> Clone for CassetteTransport<S> {
    fn clone(&self) -> Self {
        CassetteTransport {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> fmt::Debug for CassetteTransport<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("CassetteTransport")
            .field("cassette", &self.shared.name)
            .field("mode", &self.shared.mode)
            .field("entries", &st.slots.len())
            .finish_non_exhaustive()
    }
}

impl<S> CassetteTransport<S> {
    /// The mode it runs in.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// The cassette's file; `None` for one given as a string.
    pub fn file(&self) -> Option<&Path> {
        self.shared.file.as_deref()
    }

    /// How many entries the cassette holds (those read and those recorded).
    pub fn len(&self) -> usize {
        self.shared.lock().slots.len()
    }

    /// Whether the cassette holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries read from the cassette that no request was answered with yet, as
    /// `entry N: GET https://host/path?query=REDACTED` (by palisade's rules: no query value
    /// shown), for a test to assert that it used every recorded answer.
    pub fn unused(&self) -> Vec<String> {
        self.shared
            .lock()
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.used)
            .filter_map(|(i, s)| {
                let r = s.recorded.as_ref()?;
                Some(format!(
                    "entry {i}: {}",
                    replay::shown(&r.request.method, &r.request.url)
                ))
            })
            .collect()
    }
}

impl<S> Service<Request> for CassetteTransport<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

    /// Always ready: replay needs nothing, and recording waits for the real transport's
    /// readiness in the call.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let shared = self.shared.clone();
        let lookup = match shared.mode {
            Mode::Record => None,
            Mode::Replay | Mode::ReplayOrRecord => Some(shared.find(&req)),
        };
        match lookup {
            Some(Lookup::Found {
                answer,
                wait,
                index,
            }) => {
                tracing::debug!(
                    http.request.method = %req.method(),
                    url.full = %DisplayUrl(req.url()),
                    entry = index,
                    "cassette: replayed"
                );
                let latency = shared.simulate_latency.then_some(wait);
                Box::pin(async move {
                    if let Some(d) = latency {
                        tokio::time::sleep(d).await;
                    }
                    replay::answer(&answer, req.url())
                })
            }
            Some(Lookup::Miss(m)) if shared.mode == Mode::Replay => {
                tracing::debug!(
                    http.request.method = %req.method(),
                    url.full = %DisplayUrl(req.url()),
                    "cassette: no recorded answer"
                );
                let e = replay::no_match(&req, *m);
                Box::pin(std::future::ready(Err(e)))
            }
            Some(Lookup::Miss(_)) | None => {
                let seq = shared.next_seq();
                let inner = self.inner.clone();
                Box::pin(record::record(shared, inner, req, seq))
            }
        }
    }
}

/// The state all clones of a transport share.
struct Shared {
    mode: Mode,
    file: Option<PathBuf>,
    /// The cassette as messages name it.
    name: String,
    scrub: Scrub,
    matchers: Vec<Matcher>,
    after_last: AfterLast,
    max_body_bytes: usize,
    simulate_latency: bool,
    state: Mutex<State>,
    /// Held while a snapshot is serialized and written, so writes happen one at a time and
    /// each has every entry stored before it started.
    writing: Mutex<()>,
}

struct State {
    /// The `log` object without its entries.
    log: Map<String, Value>,
    /// The entries in the order of the requests.
    slots: Vec<Slot>,
    next_seq: u64,
}

struct Slot {
    /// The order of the request: the entries are kept sorted by it.
    seq: u64,
    /// The entry as written.
    raw: Value,
    /// The entry for replay: `None` in [`Mode::Record`], which never replays.
    recorded: Option<Recorded>,
    used: bool,
}

enum Lookup {
    Found {
        answer: Answer,
        wait: std::time::Duration,
        index: usize,
    },
    Miss(Box<NoMatch>),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_seq(&self) -> u64 {
        let mut st = self.lock();
        st.next_seq += 1;
        st.next_seq - 1
    }

    /// The first unused entry that matches `req`, marked used; past the last, as
    /// [`AfterLast`] says.
    fn find(&self, req: &Request) -> Lookup {
        let body = req.body().and_then(|b| b.as_bytes()).map(<[u8]>::to_vec);
        let request = RecordedRequest::scrubbed(
            req.method().clone(),
            req.url(),
            req.headers().clone(),
            body,
            &self.scrub,
        );
        let incoming = Incoming {
            key: UrlKey::of(&request.url),
            request,
        };
        let mut st = self.lock();
        let mut matched = Vec::new();
        let mut found = None;
        for (i, slot) in st.slots.iter().enumerate() {
            let Some(r) = &slot.recorded else { continue };
            if replay::differences(&incoming, r, &self.matchers).is_empty() {
                if !slot.used {
                    found = Some(i);
                    break;
                }
                matched.push(i);
            }
        }
        let found = found.or_else(|| match self.after_last {
            AfterLast::RepeatLast => matched.last().copied(),
            AfterLast::Fail => None,
        });
        if let Some(i) = found {
            let slot = &mut st.slots[i];
            slot.used = true;
            let r = slot
                .recorded
                .as_ref()
                .expect("a matched entry is replayable");
            let wait = match &r.answer {
                Answer::Response(reply) => reply.wait,
                Answer::Failure { .. } => std::time::Duration::ZERO,
            };
            return Lookup::Found {
                answer: r.answer.clone(),
                wait,
                index: i,
            };
        }
        let shown = replay::shown(req.method(), req.url());
        let closest = if let Some(&last) = matched.last() {
            st.slots[last].recorded.as_ref().map(|r| {
                format!(
                    "entry {last}: {}",
                    replay::shown(&r.request.method, &r.request.url)
                )
            })
        } else {
            replay::closest(
                &incoming,
                st.slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.recorded.as_ref().map(|r| (i, r))),
                &self.matchers,
            )
        };
        Lookup::Miss(Box::new(NoMatch {
            cassette: self.name.clone(),
            request: shown,
            closest,
            exhausted: matched,
        }))
    }

    /// Stores a recorded entry in its place and writes the cassette.
    async fn store(self: &Arc<Self>, seq: u64, entry: har::Entry) -> Result<(), Error> {
        let fail = |e: CassetteError| Error::from_source(ErrorKind::Request, e);
        let raw = serde_json::to_value(&entry).map_err(|e| {
            fail(CassetteError::new(
                CassetteErrorKind::Io,
                format!("cannot serialize an entry: {e}"),
            ))
        })?;
        // In `ReplayOrRecord` a recorded exchange is an entry like the others, used already.
        let recorded = match self.mode {
            Mode::ReplayOrRecord => har::read_entry(&raw, 0, usize::MAX)
                .ok()
                .map(|e| Recorded::new(e, &self.scrub)),
            _ => None,
        };
        {
            let mut st = self.lock();
            let at = st.slots.partition_point(|s| s.seq < seq);
            st.slots.insert(
                at,
                Slot {
                    seq,
                    raw,
                    recorded,
                    used: true,
                },
            );
        }
        let shared = self.clone();
        match tokio::task::spawn_blocking(move || shared.write()).await {
            Ok(r) => r.map_err(fail),
            Err(e) => Err(fail(CassetteError::new(
                CassetteErrorKind::Io,
                format!("the write did not finish: {e}"),
            ))),
        }
    }

    /// Writes the whole cassette, atomically.
    fn write(&self) -> Result<(), CassetteError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let _one_at_a_time = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = {
            let st = self.lock();
            serde_json::to_vec_pretty(&Doc(&st)).map_err(|e| {
                CassetteError::new(CassetteErrorKind::Io, format!("cannot serialize it: {e}"))
            })?
        };
        file::write_atomic(path, &bytes).map_err(|e| {
            CassetteError::new(CassetteErrorKind::Io, format!("cannot write it: {e}"))
                .in_file(Some(path))
        })
    }
}

/// The HAR document of a state: `{"log": {…, "entries": […]}}`, serialized without copying
/// the entries.
struct Doc<'a>(&'a State);

struct Log<'a>(&'a State);

struct Entries<'a>(&'a [Slot]);

impl Serialize for Doc<'_> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("log", &Log(self.0))?;
        m.end()
    }
}

impl Serialize for Log<'_> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        let mut m = s.serialize_map(Some(self.0.log.len() + 1))?;
        for (k, v) in &self.0.log {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry("entries", &Entries(&self.0.slots))?;
        m.end()
    }
}

impl Serialize for Entries<'_> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        s.collect_seq(self.0.iter().map(|slot| &slot.raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_their_names() {
        assert_eq!("record".parse::<Mode>().unwrap(), Mode::Record);
        assert_eq!(" Replay ".parse::<Mode>().unwrap(), Mode::Replay);
        assert_eq!("".parse::<Mode>().unwrap(), Mode::Replay);
        assert_eq!("AUTO".parse::<Mode>().unwrap(), Mode::ReplayOrRecord);
        assert_eq!(
            "replay-or-record".parse::<Mode>().unwrap(),
            Mode::ReplayOrRecord
        );
        let e = "recrod".parse::<Mode>().unwrap_err();
        assert_eq!(e.kind(), CassetteErrorKind::Config);
        assert!(e.to_string().contains("PALISADE_CASSETTE"), "{e}");
        for m in [Mode::Record, Mode::Replay, Mode::ReplayOrRecord] {
            assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let c = Cassette::new("x.har")
            .scrub_header("x-api-key")
            .scrub_request_body(|_, _| {})
            .match_with(|_, _| true);
        let shown = format!("{c:?}");
        assert!(
            shown.contains("x-api-key") && shown.contains("Custom"),
            "{shown}"
        );
        let r = RecordedRequest::scrubbed(
            Method::GET,
            &Url::parse("http://u:pw@h/p?token=SECRET1&page=22").unwrap(),
            HeaderMap::new(),
            Some(b"BODYSECRET".to_vec()),
            &Scrub::default(),
        );
        let shown = format!("{r:?}");
        for s in ["SECRET1", "pw", "22", "BODYSECRET"] {
            assert!(!shown.contains(s), "{s}: {shown}");
        }
    }
}
