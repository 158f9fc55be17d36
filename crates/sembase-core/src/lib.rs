//! sembase-core: load a sentence-transformers model directory and turn text into vectors.
//!
//! The data path: text -> [`tokenize`] -> ids -> [`packed`] batch -> [`models`]
//! (encoder) -> token states -> [`pooling`] -> [`dense`] / normalise -> vector: one
//! [`pipeline`] that inference ([`LocalEmbedder`], in length-sorted, token-budget
//! [`batching`]) and training share, with the [`mode`] passed down as a value.
//! Architectures (`models/`) are built from [`layers`], which call the CPU [`kernels`];
//! [`weights`] says where tensors are read from.

pub mod adapter_dir;
pub mod batching;
pub mod cross_encoder;
pub mod dense;
pub mod device;
pub mod files;
pub mod kernels;
pub mod layers;
pub mod local;
pub mod mode;
pub mod model_dir;
pub mod models;
pub mod packed;
pub mod pipeline;
pub mod pooling;
pub mod tokenize;
mod unigram;
pub mod weights;

// The trait, errors and vector helpers live in the light crate that consumers
// depend on; they are re-exported so the engine's own paths stay short.
pub use sembase_embed::{embedder, error, vectors};

pub use batching::BatchLimits;
pub use cross_encoder::{is_cross_encoder, CrossEncoder, CrossEncoderDir};
pub use embedder::{EmbedOptions, Embedder, Embeddings, Truncation};
pub use error::{Error, Result};
pub use local::{LoadOptions, LocalEmbedder};
pub use mode::Mode;
pub use model_dir::ModelDir;
pub use packed::PackedBatch;
pub use pipeline::{PostModule, SentencePipeline};
