//! [`ConfigFileError`]: why a configuration could not be loaded, named by the key's path.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::redact::REDACTED;

/// What went wrong in a [`ConfigFileError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigFileErrorKind {
    /// The file could not be read (its `source()` is the `io::Error`).
    Io,
    /// The file or text is larger than [`MAX_BYTES`](super::MAX_BYTES).
    TooLarge,
    /// The file's extension names no format, or palisade was built without the format's
    /// feature (`config-toml`, `config-yaml`, `config-json`).
    Format,
    /// The text is not UTF-8, or not valid TOML, YAML or JSON: the error has a line and a
    /// column where the parser gives them.
    Syntax,
    /// A key is unknown, or a value is of the wrong type or cannot be read (`"5 parsecs"`): the
    /// error names the key's [`field`](ConfigFileError::field).
    Field,
    /// A value that the configuration's own checks or the builder's validation refused, from a
    /// [`ConfigError`] (its `source()`).
    Invalid,
}

/// Why a configuration could not be loaded: a file that could not be read or is too large, bad
/// syntax (with its line and column), or a bad key or value, named by its path:
/// `hosts."api.example.com".retry.max_attempts`.
///
/// Its `Display` says all of it on one line:
///
/// ```text
/// palisade.toml: line 12, column 16: `hosts."api.example.com".retry.max_attempts`: invalid value: integer `-1`, expected u32
/// ```
///
/// Neither its `Display` nor its `Debug` shows the user or password of a URL (a Redis URL's):
/// they are replaced by `REDACTED` wherever the parser's message would quote them.
pub struct ConfigFileError {
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: ConfigFileErrorKind,
    file: Option<PathBuf>,
    field: Option<String>,
    message: String,
    at: Option<(usize, usize)>,
    source: Option<Source>,
}

#[derive(Debug)]
enum Source {
    Io(io::Error),
    Config(ConfigError),
}

impl ConfigFileError {
    pub(crate) fn new(kind: ConfigFileErrorKind, message: impl fmt::Display) -> Self {
        ConfigFileError {
            inner: Box::new(Inner {
                kind,
                file: None,
                field: None,
                message: scrub(&message.to_string()).into_owned(),
                at: None,
                source: None,
            }),
        }
    }

    pub(crate) fn io(err: io::Error) -> Self {
        let mut e = ConfigFileError::new(
            ConfigFileErrorKind::Io,
            format_args!("could not be read: {err}"),
        );
        e.inner.source = Some(Source::Io(err));
        e
    }

    pub(crate) fn with_field(mut self, field: String) -> Self {
        if !field.is_empty() {
            self.inner.field = Some(scrub(&field).into_owned());
        }
        self
    }

    pub(crate) fn at(mut self, at: Option<(usize, usize)>) -> Self {
        self.inner.at = at;
        self
    }

    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        self.inner.file = Some(file.to_owned());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ConfigFileErrorKind {
        self.inner.kind
    }

    /// The path of the key at fault, as TOML writes a dotted key:
    /// `hosts."api.example.com".retry.max_attempts`, `retry.server_error_statuses[2]`. `None`
    /// for an error of the whole file (it could not be read, its syntax is bad).
    pub fn field(&self) -> Option<&str> {
        self.inner.field.as_deref()
    }

    /// The line of the error, from 1, where the parser gives one.
    pub fn line(&self) -> Option<usize> {
        self.inner.at.map(|(l, _)| l)
    }

    /// The column of the error, from 1 (in characters), where the parser gives one.
    pub fn column(&self) -> Option<usize> {
        self.inner.at.map(|(_, c)| c)
    }

    /// The file, when the configuration was read from one.
    pub fn file(&self) -> Option<&Path> {
        self.inner.file.as_deref()
    }

    /// What is wrong, in words, without the file, the position or the path.
    pub fn message(&self) -> &str {
        &self.inner.message
    }
}

impl From<ConfigError> for ConfigFileError {
    /// A [`ConfigFileErrorKind::Invalid`] error naming the same field.
    fn from(err: ConfigError) -> Self {
        let mut e = ConfigFileError::new(ConfigFileErrorKind::Invalid, err.rule())
            .with_field(err.field().to_owned());
        e.inner.source = Some(Source::Config(err));
        e
    }
}

impl fmt::Debug for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let mut d = f.debug_struct("ConfigFileError");
        d.field("kind", &i.kind);
        if let Some(file) = &i.file {
            d.field("file", file);
        }
        if let Some(field) = &i.field {
            d.field("field", field);
        }
        if let Some((line, column)) = i.at {
            d.field("line", &line).field("column", &column);
        }
        d.field("message", &i.message);
        if let Some(source) = &i.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.inner.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some((line, column)) = self.inner.at {
            write!(f, "line {line}, column {column}: ")?;
        }
        match (&self.inner.field, self.inner.kind) {
            (Some(field), ConfigFileErrorKind::Invalid) => {
                write!(f, "invalid configuration: `{field}` {}", self.inner.message)
            }
            (Some(field), _) => write!(f, "`{field}`: {}", self.inner.message),
            (None, _) => f.write_str(&self.inner.message),
        }
    }
}

impl StdError for ConfigFileError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.inner.source {
            Some(Source::Io(e)) => Some(e),
            Some(Source::Config(e)) => Some(e),
            None => None,
        }
    }
}

/// `text` with the userinfo of every URL in it (`redis://user:password@host`) replaced by
/// `REDACTED`.
///
/// Parsers quote values they refuse (`invalid type: string "redis://:pw@host", expected u32`),
/// and a value's escaping depends on the parser, so what follows `://` is taken up to the end
/// of the line, and everything before its last `@` is hidden: a password with quotes, spaces
/// or `@` in it is hidden whole, at the price of hiding more than the userinfo now and then.
pub(crate) fn scrub(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let start = i + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after.find(['\n', '\r']).unwrap_or(after.len());
        let run = &after[..end];
        match run.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&run[at..]);
            }
            None => out.push_str(run),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_hides_userinfo_whatever_it_holds() {
        assert_eq!(scrub("no url here"), "no url here");
        assert_eq!(scrub("http://host/a"), "http://host/a");
        assert_eq!(
            scrub(r#"invalid type: string "redis://:s3cret@redis:6379/0", expected u32"#),
            r#"invalid type: string "redis://REDACTED@redis:6379/0", expected u32"#
        );
        for password in ["p@ss", "p a ss", "p\\\"ss", "p`ss", "p'ss", "p/ss", "p#ss"] {
            let text = format!("unknown field `redis://user:{password}@host`, expected `url`");
            let out = scrub(&text);
            assert!(!out.contains(password), "{out}");
            assert!(!out.contains("user"), "{out}");
        }
        let two = scrub("a redis://u:one@a and rediss://u:two@b\nthen redis://c/0");
        assert!(!two.contains("one") && !two.contains("two"), "{two}");
        assert!(two.ends_with("then redis://c/0"), "{two}");
    }

    #[test]
    fn display_names_file_position_and_path() {
        let e = ConfigFileError::new(ConfigFileErrorKind::Field, "invalid value")
            .with_field("hosts.\"a.test\".retry.max_attempts".into())
            .at(Some((12, 16)))
            .in_file(Path::new("palisade.toml"));
        assert_eq!(
            e.to_string(),
            "palisade.toml: line 12, column 16: `hosts.\"a.test\".retry.max_attempts`: invalid value"
        );
        let e = ConfigFileError::from(ConfigError::new("retry.max_attempts", "must be at least 1"));
        assert_eq!(e.kind(), ConfigFileErrorKind::Invalid);
        assert_eq!(
            e.to_string(),
            "invalid configuration: `retry.max_attempts` must be at least 1"
        );
        assert!(e.source().is_some());
    }
}
