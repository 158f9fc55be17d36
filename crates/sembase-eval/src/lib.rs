//! sembase-eval: measure embedding models on a team's own data.
//!
//! - [`tasks`] and [`beir`] load the formats of `data/README.md` (sts, pairs,
//!   triplets, classify; retrieval in BEIR layout), reporting malformed rows by
//!   file and line.
//! - [`metrics`] holds the figures: Spearman/Pearson, best-threshold accuracy/F1
//!   and average precision for pairs, and the pytrec_eval retrieval measures.
//! - [`search`] is exact top-k retrieval over a corpus fed in blocks.
//! - [`cache`] keeps embeddings on disk per (model, text, prefix, dimensions);
//!   [`encode`] puts a model and the cache together.
//! - [`remote`] is an [`sembase_embed::Embedder`] for OpenAI-compatible endpoints.
//! - [`rerank`] reorders the top of retrieval rankings with a cross-encoder
//!   (any [`sembase_embed::Reranker`]), so a second stage is measured like the first.
//! - [`evaluate`] runs one task with one model; [`results`] and [`report`] turn
//!   the figures into JSON, terminal/markdown tables and a self-contained HTML page.

pub mod beir;
pub mod cache;
pub mod encode;
pub mod error;
pub mod evaluate;
pub mod metrics;
pub mod remote;
pub mod report;
pub mod rerank;
pub mod results;
pub mod search;
mod svg;
pub mod tasks;
pub mod training_report;
mod tsv;

pub use error::{EvalError, Result};
