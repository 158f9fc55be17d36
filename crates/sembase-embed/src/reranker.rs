//! The `Reranker` trait: a cross-encoder that reads a query and a document together
//! and scores how well the document answers the query (the second stage of matching).

use crate::embedder::Truncation;
use crate::error::Result;

/// A (query, document) pair as the model reads it: one sequence of token ids with the
/// special tokens of a pair, and the segment (token type) id of each token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairTokens {
    pub ids: Vec<u32>,
    pub segments: Vec<u32>,
}

impl PairTokens {
    /// Tokens the model reads for this pair, special tokens included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the pair has no tokens at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// How a raw score (logit) becomes the relevance score a user sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ScoreActivation {
    /// `1 / (1 + e^-x)`: sentence-transformers' default for one label, TEI's `/rerank`.
    #[default]
    Sigmoid,
    /// The logit itself.
    Identity,
}

impl ScoreActivation {
    /// The relevance score of `logit`.
    pub fn apply(self, logit: f32) -> f32 {
        match self {
            Self::Sigmoid => 1.0 / (1.0 + (-logit).exp()),
            Self::Identity => logit,
        }
    }
}

/// Anything that scores (query, document) pairs: a local cross-encoder.
pub trait Reranker: Send + Sync {
    /// The name clients use for this model.
    fn name(&self) -> &str;
    /// Token limit of a pair, special tokens included.
    fn max_tokens(&self) -> usize;
    /// How [`score_pairs`](Self::score_pairs)' logits become relevance scores.
    fn activation(&self) -> ScoreActivation;
    /// The pair as the model reads it: cut to the limit as sentence-transformers cuts
    /// pairs (the longer text first), or refused with [`crate::Error::InputTooLong`]
    /// under [`Truncation::Refuse`].
    fn encode_pair(&self, query: &str, document: &str, truncate: Truncation) -> Result<PairTokens>;
    /// Raw scores (logits) of encoded pairs, in order.
    fn score_pairs(&self, pairs: &[PairTokens]) -> Result<Vec<f32>>;

    /// Relevance scores of `documents` for `query`, in document order.
    fn rerank(&self, query: &str, documents: &[&str], truncate: Truncation) -> Result<Vec<f32>> {
        let pairs = documents
            .iter()
            .map(|d| self.encode_pair(query, d, truncate))
            .collect::<Result<Vec<_>>>()?;
        let activation = self.activation();
        Ok(self.score_pairs(&pairs)?.into_iter().map(|x| activation.apply(x)).collect())
    }
}

/// Indices of `scores` from the highest score to the lowest (ties keep input order).
pub fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_maps_logits_into_zero_one() {
        let s = ScoreActivation::Sigmoid;
        assert!((s.apply(0.0) - 0.5).abs() < 1e-7);
        assert!(s.apply(10.0) > 0.9999 && s.apply(-10.0) < 1e-4);
        assert_eq!(ScoreActivation::Identity.apply(-3.5), -3.5);
    }

    #[test]
    fn ranking_is_by_descending_score_and_stable() {
        assert_eq!(ranked(&[0.1, 0.9, 0.5, 0.9]), [1, 3, 2, 0]);
    }
}
