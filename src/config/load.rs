//! Reading a configuration: the size bound, the format, its parser, and errors named by path.

use std::fmt;
use std::io::Read;
use std::path::Path;

use super::error::{ConfigFileError, ConfigFileErrorKind};
use super::Config;

/// The largest configuration [`Config::from_path`] and [`Config::parse`] read: 1 MiB. A larger
/// one is refused before it is parsed ([`ConfigFileErrorKind::TooLarge`]).
pub const MAX_BYTES: usize = 1 << 20;

/// The format of a configuration. Each needs its parser's feature: `config-toml`,
/// `config-yaml`, `config-json`; without it, parsing fails with
/// [`ConfigFileErrorKind::Format`], saying which feature to turn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// TOML 1.1, read by `toml`. Feature `config-toml`.
    Toml,
    /// YAML 1.2, read by `yaml_serde`. Feature `config-yaml`.
    Yaml,
    /// JSON, read by `serde_json`. Feature `config-json`.
    Json,
}

impl Format {
    /// The format a file's extension names: `.toml`, `.yaml` or `.yml`, `.json` (in any case).
    ///
    /// ```
    /// use palisade::config::Format;
    /// assert_eq!(Format::from_path("etc/palisade.yml"), Some(Format::Yaml));
    /// assert_eq!(Format::from_path("palisade.conf"), None);
    /// ```
    pub fn from_path(path: impl AsRef<Path>) -> Option<Format> {
        let ext = path.as_ref().extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    fn feature(self) -> &'static str {
        match self {
            Format::Toml => "config-toml",
            Format::Yaml => "config-yaml",
            Format::Json => "config-json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        })
    }
}

impl Config {
    /// Reads the configuration in the file at `path`, in the format its extension names (see
    /// [`Format::from_path`]).
    ///
    /// ```
    /// use palisade::config::Config;
    ///
    /// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/palisade.toml");
    /// let client = Config::from_path(path)?.into_builder()?.build()?;
    /// # let _ = client;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigFileError`] that names the file: it cannot be read, is larger than
    /// [`MAX_BYTES`], has an extension that names no format (or a format whose feature is
    /// off), or its content is refused as by [`parse`](Config::parse).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Config, ConfigFileError> {
        let path = path.as_ref();
        read(path).map_err(|e| e.in_file(path))
    }

    /// Reads a configuration from `text` in `format`.
    ///
    /// ```
    /// use palisade::config::{Config, ConfigFileErrorKind, Format};
    ///
    /// let yaml = "hosts:\n  api.example.com:\n    retry:\n      max_attempts: 5\n";
    /// let config = Config::parse(yaml, Format::Yaml)?;
    /// # let _ = config;
    ///
    /// let err = Config::parse("attempt_timeout: 5\n", Format::Yaml).unwrap_err();
    /// assert_eq!(err.kind(), ConfigFileErrorKind::Field);
    /// assert_eq!(err.field(), Some("attempt_timeout"));
    /// assert!(err.message().contains("no unit"), "{err}");
    /// # Ok::<(), palisade::config::ConfigFileError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigFileError`] when `text` is larger than [`MAX_BYTES`], `format`'s feature is
    /// off, the syntax is bad (with its line and column), or a key is unknown or a value bad
    /// (with the key's path, and its line and column in TOML and JSON).
    pub fn parse(text: &str, format: Format) -> Result<Config, ConfigFileError> {
        if text.len() > MAX_BYTES {
            return Err(too_large(text.len() as u64));
        }
        // A byte-order mark is not part of the document (JSON's parser would refuse it).
        #[cfg_attr(
            not(any(
                feature = "config-toml",
                feature = "config-yaml",
                feature = "config-json"
            )),
            allow(unused_variables)
        )]
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        match format {
            #[cfg(feature = "config-toml")]
            Format::Toml => toml_format::parse(text),
            #[cfg(feature = "config-yaml")]
            Format::Yaml => yaml_format::parse(text),
            #[cfg(feature = "config-json")]
            Format::Json => json_format::parse(text),
            #[allow(unreachable_patterns)]
            other => Err(ConfigFileError::new(
                ConfigFileErrorKind::Format,
                format_args!(
                    "{other} needs palisade's `{}` feature: build palisade with `features = [\"{}\"]`",
                    other.feature(),
                    other.feature()
                ),
            )),
        }
    }
}

fn read(path: &Path) -> Result<Config, ConfigFileError> {
    let Some(format) = Format::from_path(path) else {
        return Err(ConfigFileError::new(
            ConfigFileErrorKind::Format,
            "names no format: give the file the extension .toml, .yaml, .yml or .json, or read \
             it yourself and call Config::parse",
        ));
    };
    let file = std::fs::File::open(path).map_err(ConfigFileError::io)?;
    if let Ok(meta) = file.metadata() {
        if meta.is_file() && meta.len() > MAX_BYTES as u64 {
            return Err(too_large(meta.len()));
        }
    }
    // Read one byte more than allowed, whatever the metadata said (a file that grows, a pipe).
    let mut bytes = Vec::new();
    file.take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(ConfigFileError::io)?;
    if bytes.len() > MAX_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let before = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            return Err(
                ConfigFileError::new(ConfigFileErrorKind::Syntax, "is not UTF-8 text")
                    .at(Some(line_column(before, before.len()))),
            );
        }
    };
    Config::parse(&text, format)
}

fn too_large(size: u64) -> ConfigFileError {
    let more = if size > MAX_BYTES as u64 {
        format!("{size} bytes or more")
    } else {
        format!("{size} bytes")
    };
    ConfigFileError::new(
        ConfigFileErrorKind::TooLarge,
        format_args!(
            "is too large: {more}, where a configuration may hold at most {MAX_BYTES} bytes"
        ),
    )
}

/// The line and column (both from 1; the column in characters) of byte `offset` of `text`.
#[cfg_attr(
    not(any(
        feature = "config-toml",
        feature = "config-yaml",
        feature = "config-json"
    )),
    allow(dead_code)
)]
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// The path of a key, as TOML writes a dotted key: bare keys as they are, others quoted
/// (`hosts."api.example.com".retry.max_attempts`), list items as `[i]`. The keys of `hosts`
/// are always quoted, as [`ClientBuilder::build`](crate::ClientBuilder::build) writes them.
#[cfg(any(
    feature = "config-toml",
    feature = "config-yaml",
    feature = "config-json"
))]
fn path_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    use std::fmt::Write;

    let mut out = String::new();
    for (depth, segment) in path.iter().enumerate() {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(out, "[{index}]");
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if depth > 0 {
                    out.push('.');
                }
                let bare = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                let host = depth == 1 && out == "hosts.";
                if bare && !host {
                    out.push_str(key);
                } else {
                    let _ = write!(out, "{key:?}");
                }
            }
            Segment::Unknown => {
                if depth > 0 {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// A data error (an unknown key, a bad value) named by its path.
#[cfg(any(
    feature = "config-toml",
    feature = "config-yaml",
    feature = "config-json"
))]
fn field_error(
    path: &serde_path_to_error::Path,
    message: &str,
    at: Option<(usize, usize)>,
) -> ConfigFileError {
    ConfigFileError::new(ConfigFileErrorKind::Field, message)
        .with_field(path_of(path))
        .at(at)
}

#[cfg(feature = "config-toml")]
mod toml_format {
    use super::*;

    pub(super) fn parse(text: &str) -> Result<Config, ConfigFileError> {
        let at = |span: Option<std::ops::Range<usize>>| span.map(|s| line_column(text, s.start));
        // The message alone: the error's `Display` would quote the line, and so a secret on it.
        let de = toml::Deserializer::parse(text).map_err(|e| {
            ConfigFileError::new(ConfigFileErrorKind::Syntax, e.message()).at(at(e.span()))
        })?;
        serde_path_to_error::deserialize(de)
            .map_err(|e| field_error(e.path(), e.inner().message(), at(e.inner().span())))
    }
}

#[cfg(feature = "config-yaml")]
mod yaml_format {
    use super::*;

    /// The most `[` and `{` a YAML document may hold. The YAML parser's time grows with the
    /// square of the nesting of flow collections (`[[[[…`): 16,000 levels take seconds, the
    /// 500,000 of a 1 MiB file hours, before its recursion limit (128) is ever reached. Their
    /// count bounds that nesting whatever the quoting, so no file can take more than a
    /// fraction of a second; a configuration written in YAML's indented style has few.
    pub(super) const MAX_FLOW_OPENERS: usize = 5_000;

    /// The document is read into a YAML value first: its syntax errors come with their line,
    /// and the value's own errors are plain messages (the deserializer's would carry a path
    /// of its own and a position in an unhelpful form).
    pub(super) fn parse(text: &str) -> Result<Config, ConfigFileError> {
        let mut openers = text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'[' || b == b'{');
        if let Some((at, _)) = openers.nth(MAX_FLOW_OPENERS) {
            return Err(ConfigFileError::new(
                ConfigFileErrorKind::Syntax,
                format_args!(
                    "holds more than {MAX_FLOW_OPENERS} `[` and `{{`, which YAML's parser reads \
                     slowly when they nest: write nested settings as indented blocks"
                ),
            )
            .at(Some(line_column(text, at))));
        }
        let value: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| {
            let at = e.location().map(|l| (l.line(), l.column()));
            let mut message = e.to_string();
            if let Some((line, column)) = at {
                message = message.replacen(&format!(" at line {line} column {column}"), "", 1);
            }
            ConfigFileError::new(ConfigFileErrorKind::Syntax, message).at(at)
        })?;
        if value.is_null() {
            // An empty document, or one of comments only.
            return Ok(Config::default());
        }
        serde_path_to_error::deserialize(value)
            .map_err(|e| field_error(e.path(), &e.inner().to_string(), None))
    }
}

#[cfg(feature = "config-json")]
mod json_format {
    use super::*;

    pub(super) fn parse(text: &str) -> Result<Config, ConfigFileError> {
        let error = |e: &serde_json::Error, path: Option<&serde_path_to_error::Path>| {
            let at = (e.line() > 0).then(|| (e.line(), e.column()));
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full);
            match (e.classify(), path) {
                (serde_json::error::Category::Data, Some(path)) => field_error(path, message, at),
                _ => ConfigFileError::new(ConfigFileErrorKind::Syntax, message).at(at),
            }
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let config = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| error(e.inner(), Some(e.path())))?;
        de.end().map_err(|e| error(&e, None))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters_from_one() {
        let text = "a = 1\nbé = x\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, text.find('=').unwrap()), (1, 3));
        let x = text.find('x').unwrap();
        assert_eq!(line_column(text, x), (2, 6));
        assert_eq!(line_column(text, 1_000), (3, 1));
    }

    #[test]
    fn formats_come_from_extensions() {
        assert_eq!(Format::from_path("a.TOML"), Some(Format::Toml));
        assert_eq!(Format::from_path("a.yaml"), Some(Format::Yaml));
        assert_eq!(Format::from_path("dir.json/a"), None);
        assert_eq!(Format::from_path("a.json"), Some(Format::Json));
        assert_eq!(Format::from_path("toml"), None);
    }
}
