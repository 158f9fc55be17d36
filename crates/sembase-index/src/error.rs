//! Typed errors of the index crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while building, opening, writing or searching an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file of the index is not what it should be (damaged or from another version).
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    /// Another process holds the index's write lock.
    #[error("index {} is locked by another writer (lock file {}); wait for it to finish", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },
    /// Queries or documents embedded by another model than the index's.
    #[error("{0}")]
    ModelMismatch(String),
    /// Input that cannot be used as given (wrong width, bad filter, bad corpus row).
    #[error("{0}")]
    Invalid(String),
    /// The ANN library failed.
    #[error("ann: {0}")]
    Ann(String),
    /// A database backend failed.
    #[error("database: {0}")]
    Database(String),
    /// The model failed while embedding.
    #[error(transparent)]
    Embed(#[from] sembase_embed::Error),
}

/// Result with [`IndexError`].
pub type Result<T, E = IndexError> = std::result::Result<T, E>;

impl From<sembase_embed::durable::FileError> for IndexError {
    fn from(e: sembase_embed::durable::FileError) -> Self {
        IndexError::Io { path: e.path, source: e.source }
    }
}

impl IndexError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        IndexError::Io { path: path.into(), source }
    }
}
