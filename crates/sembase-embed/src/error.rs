//! The error type of embedding: what loading a model or embedding text can fail with.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or embedding text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the model directory is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file of the model directory does not parse or lacks a field.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The model's architecture or a module is not one sembase implements.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The compute device could not be set up.
    #[error("device: {0}")]
    Device(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Tensor computation failed (shapes, missing weights); the engine's own error
    /// is kept as the source.
    #[error("model computation: {0}")]
    Tensor(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An input is longer than the model's limit and truncation is off.
    #[error("input {index} has {tokens} tokens, more than the model's limit of {limit}")]
    InputTooLong { index: usize, tokens: usize, limit: usize },
    /// `dimensions` is zero or larger than the model's width.
    #[error("dimensions must be between 1 and {max}, got {requested}")]
    InvalidDimensions { requested: usize, max: usize },
    /// A token id is not in the model's vocabulary.
    #[error("input {index} has token id {id}, outside the vocabulary of {vocab} entries")]
    InvalidTokenId { index: usize, id: u32, vocab: usize },
}

/// Result with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A computation failure described only by a message.
    pub fn tensor(message: impl Into<String>) -> Self {
        Error::Tensor(message.into().into())
    }
}

#[cfg(feature = "candle")]
impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Tensor(Box::new(e))
    }
}
