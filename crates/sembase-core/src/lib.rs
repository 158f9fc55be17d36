//! sembase-core: load a sentence-transformers model directory and turn text into vectors.

pub mod embedder;
pub mod error;

pub use embedder::{EmbedOptions, Embedder, Embeddings, Truncation};
pub use error::{Error, Result};
