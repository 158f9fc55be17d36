//! Cross-encoders (rerankers) served beside the embedding models: `POST /v1/rerank`,
//! TEI's `POST /rerank` (see [`routes`]) and the rerank stage of `POST /v1/search`.
//!
//! Every caller scores through [`ServedReranker::score`]: the (query, document) pairs
//! are tokenized once in the handler (cut to the model's limit, or refused), then go
//! through the reranker's own batching queue, so pairs from many requests share forward
//! passes under the same token budget as embeddings do.

pub(crate) mod routes;

use std::sync::Arc;

use sembase_core::Truncation;
use sembase_embed::{PairTokens, Reranker};

use crate::api::SchemaStatus;
use crate::batcher::{Batcher, Reranking};
use crate::budget::TokenBudget;
use crate::error::ApiError;
use crate::handlers::{cpu, large_text, queue, AppResult};
use crate::metrics::ModelMetrics;

/// A loaded reranker with its queue.
pub(crate) struct ServedReranker {
    pub reranker: Arc<dyn Reranker>,
    pub batcher: Batcher<Reranking>,
    pub metrics: Arc<ModelMetrics>,
}

/// A query and the documents to read with it.
pub(crate) struct Group {
    pub query: String,
    pub documents: Vec<String>,
}

/// A pair over the model's limit while truncation is off.
pub(crate) struct TooLong {
    /// Which group and which of its documents.
    pub group: usize,
    pub document: usize,
    /// Tokens of the whole pair, special tokens included.
    pub tokens: usize,
    pub limit: usize,
}

impl TooLong {
    /// The answer to a request whose document `{param}[i]` makes an over-long pair.
    pub(crate) fn refusal(&self, status: SchemaStatus, param: &str) -> ApiError {
        status
            .error(format!(
                "{param}[{}] and the query make {} tokens together, more than the model's limit of {}; send \"truncate\": true to cut the pair instead",
                self.document, self.tokens, self.limit
            ))
            .param(param)
            .code("input_too_long")
    }
}

/// What scoring gives back.
pub(crate) struct Scored {
    /// The groups, as given.
    pub groups: Vec<Group>,
    /// Raw scores (logits) per group, in document order.
    pub logits: Vec<Vec<f32>>,
    /// Tokens the model read, special tokens included.
    pub tokens: usize,
}

impl ServedReranker {
    /// The name requests use.
    pub(crate) fn name(&self) -> &str {
        self.reranker.name()
    }

    /// Raw scores of every document read with its group's query, through the model's
    /// queue, once the pairs' tokens fit the request's `budget` (else a 413 naming
    /// `param`). Pairs over the model's limit are cut when `truncate`, else refused
    /// through `too_long`.
    pub(crate) async fn score(
        &self,
        groups: Vec<Group>,
        truncate: bool,
        budget: &mut TokenBudget,
        param: &str,
        too_long: impl FnOnce(TooLong) -> ApiError,
    ) -> AppResult<Scored> {
        let bytes = groups
            .iter()
            .map(|g| g.documents.iter().map(|d| d.len() + g.query.len()).sum::<usize>())
            .sum();
        let reranker = self.reranker.clone();
        let (groups, encoded) = cpu(large_text(bytes), move || {
            let encoded = encode(reranker.as_ref(), &groups, truncate);
            (groups, encoded)
        })
        .await?;
        let (pairs, tokens) = encoded.map_err(|e| match e {
            EncodeError::TooLong(t) => too_long(t),
            EncodeError::Failed(message) => ApiError::internal(message),
        })?;
        self.metrics.record_rerank(pairs.len());
        let mut logits = queue(&self.batcher, pairs, tokens, (), budget, param).await?.into_iter();
        let logits =
            groups.iter().map(|g| logits.by_ref().take(g.documents.len()).collect()).collect();
        Ok(Scored { groups, logits, tokens })
    }
}

enum EncodeError {
    TooLong(TooLong),
    Failed(String),
}

/// Every pair as the model reads it, and their tokens in all.
fn encode(
    reranker: &dyn Reranker,
    groups: &[Group],
    truncate: bool,
) -> Result<(Vec<PairTokens>, usize), EncodeError> {
    let truncation = if truncate { Truncation::Truncate } else { Truncation::Refuse };
    let mut pairs = Vec::with_capacity(groups.iter().map(|g| g.documents.len()).sum());
    let mut tokens = 0;
    for (g, group) in groups.iter().enumerate() {
        for (d, document) in group.documents.iter().enumerate() {
            let pair =
                reranker.encode_pair(&group.query, document, truncation).map_err(|e| match e {
                    sembase_core::Error::InputTooLong { tokens, limit, .. } => {
                        EncodeError::TooLong(TooLong { group: g, document: d, tokens, limit })
                    }
                    e => EncodeError::Failed(format!("could not tokenize document {d}: {e}")),
                })?;
            tokens += pair.len();
            pairs.push(pair);
        }
    }
    Ok((pairs, tokens))
}
