//! The advisory write lock of an index directory: one writer at a time.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{IndexError, Result};

/// The lock file's name inside an index directory.
pub const LOCK_FILE: &str = "LOCK";

/// Holds the exclusive lock until dropped (the OS releases it if the process dies).
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
}

impl WriteLock {
    /// Takes the lock of `dir` without waiting; another holder is an
    /// [`IndexError::Locked`] error.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path: PathBuf = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| IndexError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => {
                Err(IndexError::Locked { dir: dir.to_path_buf(), lock: path })
            }
            Err(TryLockError::Error(e)) => Err(IndexError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("sembase-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = WriteLock::acquire(&dir).unwrap();
        let err = WriteLock::acquire(&dir).unwrap_err();
        assert!(matches!(err, IndexError::Locked { .. }), "{err}");
        drop(first);
        WriteLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
