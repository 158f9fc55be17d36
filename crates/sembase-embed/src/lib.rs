//! sembase-embed: what every consumer of embeddings shares, without the engine.
//!
//! The index, the heads, evaluation and training need the [`Embedder`] trait, its
//! error type, a few vector operations and files that are written whole or not at
//! all; keeping them here lets those crates build without candle, gemm and the
//! tokenizers, which only `sembase-core` (the engine) needs.

pub mod durable;
pub mod embedder;
pub mod error;
pub mod gguf;
pub mod prompts;
pub mod reranker;
pub mod vectors;

pub use embedder::{EmbedOptions, Embedder, Embeddings, Truncation};
pub use error::{Error, Result};
pub use reranker::{PairTokens, Reranker, ScoreActivation};
