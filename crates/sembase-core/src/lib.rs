//! sembase-core: load a sentence-transformers model directory and turn text into vectors.
//!
//! The data path: text -> [`tokenize`] -> ids -> [`models`] (encoder) -> token
//! states -> [`pooling`] -> [`dense`] / normalise -> vector, driven by
//! [`LocalEmbedder`] in length-sorted, token-budget [`batching`].

pub mod batching;
pub mod dense;
pub mod device;
pub mod embedder;
pub mod error;
mod files;
pub mod local;
pub mod model_dir;
pub mod models;
pub mod pooling;
pub mod tokenize;
mod unigram;
pub mod vectors;

pub use batching::BatchLimits;
pub use embedder::{EmbedOptions, Embedder, Embeddings, Truncation};
pub use error::{Error, Result};
pub use local::{LoadOptions, LocalEmbedder};
pub use model_dir::ModelDir;
