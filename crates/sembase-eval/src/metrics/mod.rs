//! The figures. Every function here is checked against an independent Python
//! reference (scipy, scikit-learn, pytrec_eval, sentence-transformers) on the
//! committed fixture `tests/fixtures/metrics.json`.
//!
//! Values are fractions (0..1); [`crate::evaluate`] multiplies by 100 for results.

pub mod correlation;
pub mod pairs;
pub mod retrieval;

pub use correlation::{average_ranks, pearson, spearman};
pub use pairs::{average_precision, best_accuracy, best_f1, BestF1};
pub use retrieval::{QueryScores, RetrievalScores, MAP_CUTOFF, MRR_CUTOFF, NDCG_CUTOFF, RECALL_AT};
