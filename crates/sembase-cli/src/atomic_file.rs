//! Files that appear whole or not at all: written beside the target, then renamed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A buffered writer to a temporary file that replaces `target` on [`commit`](Self::commit).
/// Dropped without commit, the temporary file is removed and `target` is untouched.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing; the temporary file sits in the target's directory.
    pub fn create(target: &Path) -> Result<Self> {
        let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = target.file_name().context("output path has no file name")?.to_string_lossy();
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let file = File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
        Ok(Self { target: target.to_path_buf(), temp, writer: Some(BufWriter::new(file)) })
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer.into_inner().map_err(|e| e.into_error()).context("flushing output")?;
        file.sync_all().context("syncing output")?;
        std::fs::rename(&self.temp, &self.target).with_context(|| format!("renaming into {}", self.target.display()))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().expect("writer present until commit").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("writer present until commit").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
