//! File-system helpers: tree copies, sizes, unique names, timestamps (atomic writes
//! are `sembase_embed::durable`'s).

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sembase_embed::durable;

use crate::error::{HubError, Result};

/// A name that no other call in this or another process will produce:
/// `<stem>.<pid>.<nanos>.<counter>`.
pub(crate) fn unique_name(stem: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{stem}.{}.{nanos}.{n}", std::process::id())
}

/// `name` with every character a store name cannot hold (anything but ASCII
/// letters, digits, `-`, `_` and `.`) replaced by `-`.
pub(crate) fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .collect()
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| HubError::io("create", dir, e))
}

/// Removes `path` (a file or a whole tree) if it exists, ignoring failures:
/// used for clean-up after an error, where the first error is the one to report.
pub(crate) fn remove_quietly(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Reads `path` as JSON.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = fs::read(path).map_err(|e| HubError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| HubError::invalid(path.display().to_string(), e))
}

/// Copies one file atomically, following symlinks at the source.
pub(crate) fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let mut src = fs::File::open(from).map_err(|e| HubError::io("open", from, e))?;
    Ok(durable::write_with(to, |w| io::copy(&mut src, w).map(|_| ()))?)
}

/// Every regular file below `dir` (symlinks followed), as paths relative to `dir`
/// with `/` separators, sorted. Directories named in `skip_dirs` are not entered.
pub(crate) fn list_files(dir: &Path, skip_dirs: &[&str]) -> Result<Vec<String>> {
    fn walk(base: &Path, rel: &str, skip: &[&str], out: &mut Vec<String>) -> Result<()> {
        let dir = if rel.is_empty() { base.to_path_buf() } else { base.join(rel) };
        let entries = fs::read_dir(&dir).map_err(|e| HubError::io("read directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| HubError::io("read directory", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            // `metadata` follows symlinks, as the HF cache's snapshots need.
            let meta =
                fs::metadata(entry.path()).map_err(|e| HubError::io("read", entry.path(), e))?;
            if meta.is_dir() {
                if !skip.contains(&name.as_str()) {
                    walk(base, &child, skip, out)?;
                }
            } else if meta.is_file() {
                out.push(child);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", skip_dirs, &mut out)?;
    out.sort();
    Ok(out)
}

/// Copies the files `rel_paths` (relative, `/`-separated) from `from` into `to`,
/// creating subdirectories and following symlinks.
pub(crate) fn copy_files(from: &Path, to: &Path, rel_paths: &[String]) -> Result<()> {
    for rel in rel_paths {
        let dest = to.join(rel);
        if let Some(parent) = dest.parent() {
            create_dir_all(parent)?;
        }
        copy_file(&from.join(rel), &dest)?;
    }
    Ok(())
}

/// The total size in bytes of the regular files below `dir`.
pub(crate) fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Feeds everything `reader` yields to `sink` in 1 MiB pieces; returns the byte count.
pub(crate) fn pump(
    reader: &mut impl Read,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sink(&buf[..n])?;
        total += n as u64;
    }
}

/// The current time as an RFC 3339 UTC timestamp, e.g. `2025-01-31T12:00:00Z`.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs)
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC timestamp.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from a day count (proleptic Gregorian), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }
}
