//! The cassette's errors: [`CassetteError`] for a cassette that cannot be read, parsed or
//! written, [`NoMatch`] for a request that replay has no answer to.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};

/// What kind of problem a [`CassetteError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CassetteErrorKind {
    /// The cassette file does not exist, and the mode needs one ([`Mode::Replay`](super::Mode::Replay)).
    NotFound,
    /// Reading or writing the file failed.
    Io,
    /// The file is larger than [`Cassette::max_file_bytes`](super::Cassette::max_file_bytes),
    /// or a body in it larger than [`Cassette::max_body_bytes`](super::Cassette::max_body_bytes).
    TooLarge,
    /// The file is not a HAR that replay can use: not JSON, a value of the wrong type, a
    /// missing field, an invalid status, header, method, URL or base64 body.
    Malformed,
    /// The settings cannot work: an unknown mode in the environment variable, a cassette made
    /// from a string asked to record.
    Config,
}

/// A cassette that cannot be read, parsed or written.
///
/// It names the file, the place in it (a JSON path such as `log.entries[3].response.status`,
/// or `line 12, column 5` for a syntax error) and what is wrong. It never shows a header value
/// or a query value of the cassette.
pub struct CassetteError {
    kind: CassetteErrorKind,
    file: Option<PathBuf>,
    place: Option<String>,
    message: String,
}

impl CassetteError {
    pub(crate) fn new(kind: CassetteErrorKind, message: impl Into<String>) -> Self {
        CassetteError {
            kind,
            file: None,
            place: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(mut self, place: impl Into<String>) -> Self {
        self.place = Some(place.into());
        self
    }

    pub(crate) fn in_file(mut self, file: Option<&Path>) -> Self {
        if self.file.is_none() {
            self.file = file.map(Path::to_path_buf);
        }
        self
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> CassetteErrorKind {
        self.kind
    }

    /// The cassette file, when the cassette has one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Where in the file: a JSON path (`log.entries[3].response.status`), or a line and column
    /// for a syntax error; `None` when the problem is the file as a whole.
    pub fn place(&self) -> Option<&str> {
        self.place.as_deref()
    }

    /// What is wrong, in words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CassetteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cassette")?;
        if let Some(file) = &self.file {
            write!(f, " {}", file.display())?;
        }
        if let Some(place) = &self.place {
            write!(f, ": {place}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl fmt::Debug for CassetteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CassetteError");
        d.field("kind", &self.kind);
        if let Some(file) = &self.file {
            d.field("file", file);
        }
        if let Some(place) = &self.place {
            d.field("place", place);
        }
        d.field("message", &self.message).finish()
    }
}

impl StdError for CassetteError {}

/// Replay has no answer to a request: the `source()` of the [`palisade::Error`](crate::Error)
/// (of kind [`Request`](crate::ErrorKind::Request), so no stage retries it) that the
/// transport returns.
///
/// Its `Display` names the request (method and URL, shown as palisade shows URLs: no
/// userinfo, every query value `REDACTED`) and the closest recorded request, with what
/// differs (the path, a query parameter's name, a matched header's name, the body), never a
/// value.
#[derive(Clone)]
pub struct NoMatch {
    pub(crate) cassette: String,
    pub(crate) request: String,
    pub(crate) closest: Option<String>,
    /// The entries that matched, all replayed already.
    pub(crate) exhausted: Vec<usize>,
}

impl NoMatch {
    /// The request: its method and URL, as palisade shows URLs.
    pub fn request(&self) -> &str {
        &self.request
    }

    /// The closest recorded request, with its entry's index and what differs, if the cassette
    /// has any entry; for a request whose answers were all replayed, the last of them.
    pub fn closest(&self) -> Option<&str> {
        self.closest.as_deref()
    }

    /// Whether the request matched entries that were all replayed already (with
    /// [`AfterLast::Fail`](super::AfterLast::Fail)).
    pub fn is_exhausted(&self) -> bool {
        !self.exhausted.is_empty()
    }
}

impl fmt::Display for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exhausted.is_empty() {
            write!(
                f,
                "no recorded answer in cassette {} for {}",
                self.cassette, self.request
            )?;
            match &self.closest {
                Some(c) => write!(f, "; closest recorded: {c}"),
                None => f.write_str("; the cassette has no entry"),
            }
        } else {
            let n = self.exhausted.len();
            let list: Vec<String> = self.exhausted.iter().map(usize::to_string).collect();
            write!(
                f,
                "the {n} recorded answer{} in cassette {} to {} (entr{} {}) {} replayed already; \
                 `AfterLast::RepeatLast` repeats the last",
                if n == 1 { "" } else { "s" },
                self.cassette,
                self.request,
                if n == 1 { "y" } else { "ies" },
                list.join(", "),
                if n == 1 { "was" } else { "were all" },
            )
        }
    }
}

impl fmt::Debug for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoMatch({self})")
    }
}

impl StdError for NoMatch {}

/// A failure the cassette recorded in place of a response (an entry with status 0 and an
/// `_error`), or a body that failed after some bytes, replayed.
#[derive(Debug)]
pub(crate) struct RecordedFailure(pub(crate) String);

impl fmt::Display for RecordedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "recorded failure: {}", self.0)
    }
}

impl StdError for RecordedFailure {}
