//! The cassette file: read with a size cap, written atomically.
//!
//! A write goes to a temporary file in the cassette's own directory (so that the rename
//! stays on one file system), is synced to disk, then renamed over the cassette, and the
//! directory is synced so the rename is durable too. A crash at any point leaves either the
//! previous cassette or the complete new one, and at worst a stray `.*.tmp` file beside it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{CassetteError, CassetteErrorKind};

/// Reads the cassette at `path`, refusing one larger than `max` bytes.
pub(crate) fn read(path: &Path, max: u64) -> Result<String, CassetteError> {
    let io_err = |e: io::Error| {
        let kind = if e.kind() == io::ErrorKind::NotFound {
            CassetteErrorKind::NotFound
        } else {
            CassetteErrorKind::Io
        };
        CassetteError::new(kind, format!("cannot read it: {e}")).in_file(Some(path))
    };
    let file = File::open(path).map_err(io_err)?;
    let too_large = |size: u64| {
        CassetteError::new(
            CassetteErrorKind::TooLarge,
            format!("{size} bytes or more, above max_file_bytes ({max})"),
        )
        .in_file(Some(path))
    };
    if let Ok(meta) = file.metadata() {
        if meta.len() > max {
            return Err(too_large(meta.len()));
        }
    }
    // The length read is bounded too: the file may grow after `metadata`, or be a pipe.
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        CassetteError::new(
            CassetteErrorKind::Malformed,
            format!("not UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
        )
        .in_file(Some(path))
    })
}

/// Writes `bytes` to `path` atomically (see the [module docs](self)), creating its directory
/// if it is missing.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, |from, to| fs::rename(from, to))
}

/// [`write_atomic`] with the rename given, so tests can make it fail.
fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    rename: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let tmp = temp_path(path, &dir);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // The rename is durable once the directory is synced (best effort: not every platform
    // opens a directory as a file).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A temporary file beside `path`: `.{name}.{pid}.{n}.tmp`, unique in this process.
fn temp_path(path: &Path, dir: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cassette".to_owned());
    dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "palisade-cassette-file-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn listing(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_rename_leaves_the_previous_cassette_and_no_temp_file() {
        let d = dir("rename");
        let path = d.join("c.har");
        write_atomic(&path, b"{\"first\": true}").unwrap();
        let mut used = None;
        let err = write_atomic_with(&path, b"{\"second\": tr", |from, _| {
            // The temporary file is complete and beside the cassette when the rename runs.
            assert_eq!(from.parent(), Some(d.as_path()));
            assert_eq!(fs::read(from).unwrap(), b"{\"second\": tr");
            used = Some(from.to_path_buf());
            Err(io::Error::other("simulated crash before the rename"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "simulated crash before the rename");
        assert!(used
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(".tmp"));
        assert_eq!(fs::read(&path).unwrap(), b"{\"first\": true}");
        assert_eq!(listing(&d), ["c.har"]);
        write_atomic(&path, b"{\"third\": 3}").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"third\": 3}");
        assert_eq!(listing(&d), ["c.har"]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn the_directory_is_created_and_the_size_is_capped() {
        let d = dir("cap");
        let path = d.join("sub/dir/c.har");
        write_atomic(&path, &[b'x'; 100]).unwrap();
        assert_eq!(read(&path, 100).unwrap().len(), 100);
        let e = read(&path, 99).unwrap_err();
        assert_eq!(e.kind(), CassetteErrorKind::TooLarge);
        assert!(e.to_string().contains("max_file_bytes (99)"), "{e}");
        let e = read(&d.join("missing.har"), 99).unwrap_err();
        assert_eq!(e.kind(), CassetteErrorKind::NotFound);
        fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read(&path, 99).unwrap_err().kind(),
            CassetteErrorKind::Malformed
        );
        let _ = fs::remove_dir_all(&d);
    }
}
