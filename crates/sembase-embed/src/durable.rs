//! Files and directories that appear whole or not at all, and survive a crash.
//!
//! A file is written under a temporary name beside its target, flushed to disk,
//! renamed over the target, and the directory is synced so the rename itself is on
//! disk. A directory is built beside its target and swapped in; when the swap fails
//! half way, the old directory is put back. Every sembase crate that writes results,
//! models or indexes goes through here.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file-system step that failed: what was being done, on which path, and why (the
/// message says all three, so the cause is not repeated as a separate source).
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl FileError {
    /// Wraps `source`, saying that `action` on `path` failed.
    pub fn new(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self { action, path: path.to_path_buf(), source }
    }
}

/// Result of a durable file operation.
pub type Result<T, E = FileError> = std::result::Result<T, E>;

/// Distinguishes the temporary names of concurrent writers in one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The directory `path` lives in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A hidden sibling of `target` that no other writer, in this process or another,
/// uses: `.<name>.<pid>.<n>.<tag>`.
fn sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent_of(target).join(format!(".{name}.{}.{n}.{tag}", std::process::id()))
}

/// A temporary name beside `target`, for a library that writes files itself; rename
/// it into place with [`rename`] after [`sync_file`].
pub fn temp_path(target: &Path) -> PathBuf {
    sibling(target, "tmp")
}

/// A buffered writer to a temporary file that replaces `target` on
/// [`commit`](Self::commit). Dropped without a commit, the temporary file is removed
/// and `target` is left as it was.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `target`; its directory must exist.
    pub fn create(target: &Path) -> Result<Self> {
        Self::create_with_mode(target, None)
    }

    /// [`create`](Self::create), the file getting Unix permission bits `mode`
    /// (e.g. `0o600`) when given. The temporary file is created with them, so the
    /// contents are never readable by others, not even before the rename.
    pub fn create_with_mode(target: &Path, mode: Option<u32>) -> Result<Self> {
        if target.file_name().is_none() {
            return Err(FileError::new(
                "creating",
                target,
                io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
            ));
        }
        let temp = sibling(target, "tmp");
        let file = create_file(&temp, mode).map_err(|e| FileError::new("creating", &temp, e))?;
        Ok(Self {
            target: target.to_path_buf(),
            temp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Flushes and syncs the file, renames it onto the target and syncs the directory.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("the writer is present until commit");
        let synced =
            writer.into_inner().map_err(|e| e.into_error()).and_then(|file| file.sync_all());
        if let Err(e) = synced {
            let _ = std::fs::remove_file(&self.temp);
            return Err(FileError::new("writing", &self.target, e));
        }
        rename(&self.temp, &self.target).inspect_err(|_| {
            let _ = std::fs::remove_file(&self.temp);
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("the writer is present until commit").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("the writer is present until commit").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Creates (truncating) `path`, with permission bits `mode` when given (Unix only;
/// elsewhere the platform's defaults apply).
fn create_file(path: &Path, mode: Option<u32>) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if let Some(mode) = mode {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

/// Writes `target` from whatever `fill` writes; on any error the target is left as
/// it was and no temporary file remains.
pub fn write_with(
    target: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    write_with_mode(target, None, fill)
}

/// [`write_with`], the file getting permission bits `mode` when given (see
/// [`AtomicFile::create_with_mode`]).
fn write_with_mode(
    target: &Path,
    mode: Option<u32>,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    let mut file = AtomicFile::create_with_mode(target, mode)?;
    fill(&mut file).map_err(|e| FileError::new("writing", target, e))?;
    file.commit()
}

/// Writes `bytes` to `target`.
pub fn write_bytes(target: &Path, bytes: &[u8]) -> Result<()> {
    write_with(target, |w| w.write_all(bytes))
}

/// Writes `bytes` to `target` readable and writable by its owner only (mode
/// 0600 on Unix): for files that hold secrets such as a database password.
pub fn write_private(target: &Path, bytes: &[u8]) -> Result<()> {
    write_with_mode(target, Some(0o600), |w| w.write_all(bytes))
}

/// Writes `value` as pretty JSON with a final newline to `target`.
pub fn write_json<T: serde::Serialize + ?Sized>(target: &Path, value: &T) -> Result<()> {
    write_with(target, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(io::Error::other)?;
        w.write_all(b"\n")
    })
}

/// Renames `from` onto `to` and syncs `to`'s directory, so the rename survives a crash.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| FileError::new("renaming into", to, e))?;
    sync_dir(parent_of(to))
}

/// Flushes a file that another library wrote to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| FileError::new("syncing", path, e))
}

/// Flushes a directory's entries (new names, renames) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| FileError::new("syncing", dir, e))
}

/// Builds a directory with `fill` beside `target`, then swaps it in: an existing
/// `target` is replaced, and on any failure (of `fill` or of the swap) `target` is left
/// as it was and nothing temporary remains.
pub fn replace_dir<E: From<FileError>>(
    target: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = parent_of(target);
    std::fs::create_dir_all(parent).map_err(|e| FileError::new("creating", parent, e))?;
    let temp = sibling(target, "tmp");
    std::fs::create_dir(&temp).map_err(|e| FileError::new("creating", &temp, e))?;
    let filled = fill(&temp).and_then(|()| sync_tree(&temp).map_err(E::from));
    if let Err(e) = filled {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    swap_in(&temp, target).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&temp);
    })?;
    Ok(())
}

/// Flushes every file and directory below `dir` (what other libraries wrote too).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| FileError::new("reading", dir, e))? {
        let path = entry.map_err(|e| FileError::new("reading", dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_file(&path)?;
        }
    }
    sync_dir(dir)
}

/// Moves the finished directory `new` onto `target`, putting the old `target` back if
/// the second rename fails.
fn swap_in(new: &Path, target: &Path) -> Result<()> {
    if !target.exists() {
        return rename(new, target);
    }
    let old = sibling(target, "old");
    std::fs::rename(target, &old).map_err(|e| FileError::new("moving aside", target, e))?;
    if let Err(e) = std::fs::rename(new, target) {
        // The old directory goes back where it was; if even that fails, say where it is.
        return Err(match std::fs::rename(&old, target) {
            Ok(()) => FileError::new("renaming into", target, e),
            Err(back) => FileError::new(
                "renaming into",
                target,
                io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; the previous directory could not be put back and is at {}: {back}",
                        old.display()
                    ),
                ),
            ),
        });
    }
    let _ = std::fs::remove_dir_all(&old);
    sync_dir(parent_of(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_write_leaves_the_target_untouched_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.json");
        write_bytes(&target, b"first").unwrap();
        let err = write_with(&target, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("out.json") && err.to_string().contains("boom"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "first");
        assert_eq!(entries(dir.path()), ["out.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_is_readable_by_its_owner_only_even_when_it_replaces_an_open_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret.json");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        write_bytes(&target, b"open").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&target, b"secret").unwrap();
        assert_eq!(mode(&target), 0o600);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret");
        assert_eq!(entries(dir.path()), ["secret.json"]);
        let fresh = dir.path().join("fresh.json");
        write_private(&fresh, b"x").unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }

    #[test]
    fn an_uncommitted_file_is_removed_and_a_committed_one_replaces_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v.jsonl");
        std::fs::write(&target, "old").unwrap();
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"new").unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(entries(dir.path()), ["v.jsonl"]);
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"new").unwrap();
        file.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(entries(dir.path()), ["v.jsonl"]);
    }

    #[test]
    fn json_is_pretty_with_a_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        write_json(&target, &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "{\n  \"a\": 1\n}\n");
    }

    #[test]
    fn a_directory_is_replaced_whole_or_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model");
        replace_dir(&target, |d| write_bytes(&d.join("a"), b"1")).unwrap();
        replace_dir(&target, |d| write_bytes(&d.join("b"), b"2")).unwrap();
        assert_eq!(entries(&target), ["b"]);
        let failed: Result<()> = replace_dir(&target, |d| {
            write_bytes(&d.join("c"), b"3")?;
            Err(FileError::new("filling", d, io::Error::other("fill failed")))
        });
        assert!(failed.is_err());
        assert_eq!(entries(&target), ["b"]);
        assert_eq!(entries(dir.path()), ["model"], "no temporary or old directory is left");
    }

    #[test]
    fn a_swap_that_cannot_rename_puts_the_old_directory_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("index");
        replace_dir(&target, |d| write_bytes(&d.join("kept"), b"1")).unwrap();
        // A "new" directory that does not exist makes the second rename fail after the
        // old one was moved aside.
        let err = swap_in(&dir.path().join("missing"), &target).unwrap_err();
        assert!(err.to_string().contains("index"), "{err}");
        assert_eq!(entries(&target), ["kept"]);
        assert_eq!(entries(dir.path()), ["index"]);
    }
}
