//! Typed errors of the training crate.

use std::path::PathBuf;

/// What can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Core(#[from] sembase_core::Error),
    #[error("model computation: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Eval(#[from] sembase_eval::EvalError),
    /// The reason is in the message, not a `source`, so `{:#}` does not print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// The training data cannot be used (too few rows, malformed lines).
    #[error("{0}")]
    Data(String),
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The loss became NaN or infinite.
    #[error("the loss is {value} at step {step}: lower --lr, or check the data")]
    NonFiniteLoss { step: usize, value: f32 },
    /// The weights file lacks a parameter the architecture needs.
    #[error("{path}: no weight {name}")]
    MissingWeight { path: PathBuf, name: String },
}

impl From<sembase_embed::durable::FileError> for TrainError {
    fn from(e: sembase_embed::durable::FileError) -> Self {
        Self::Io { path: e.path, error: e.source }
    }
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), error: source }
    }
}

/// Result with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
