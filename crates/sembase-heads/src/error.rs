//! Typed errors of the heads crate.

use std::path::PathBuf;

/// Everything that can go wrong loading data, training, saving or loading a head.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}:{line}: {message}")]
    Data { path: PathBuf, line: usize, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("embedding failed: {0}")]
    Embed(#[from] sembase_embed::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<sembase_embed::durable::FileError> for Error {
    fn from(e: sembase_embed::durable::FileError) -> Self {
        Error::Io { path: e.path, source: e.source }
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
