//! The rerank routes: `POST /v1/rerank` in the shape Jina, Cohere-style clients, vLLM
//! and llama.cpp share, and `POST /rerank` in TEI's. Both score one query against its
//! documents and answer them best first; they differ only in field names, defaults and
//! the status of an invalid request (400 and 422, as each family answers).

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use sembase_embed::reranker::ranked;
use sembase_embed::ScoreActivation;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Group, Scored, ServedReranker, TooLong};
use crate::api::{SchemaStatus, Usage};
use crate::budget::TokenBudget;
use crate::handlers::{json, read_json, AppResult};
use crate::integral;
use crate::{AppState, Models};

/// `POST /v1/rerank` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RerankRequest {
    /// Which served reranker; the first one given to the server when omitted.
    #[serde(default)]
    pub model: Option<String>,
    /// The text every document is scored against (non-empty).
    pub query: String,
    /// The documents to score (1 to the server's `max_inputs`, 2048 by default; none empty).
    pub documents: Vec<RerankDocument>,
    /// Answer only the N most relevant documents; every document when omitted or 0.
    #[serde(default, deserialize_with = "integral::option")]
    pub top_n: Option<usize>,
    /// Give each result its document (default true, as Jina and vLLM do).
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// Cut a (query, document) pair over the model's token limit (the longer text first),
    /// or refuse it with a 400 (false). Default: the server's setting, on unless it was
    /// started with `--no-truncate`.
    #[serde(default)]
    pub truncate: Option<bool>,
}

/// A document: a string, or an object whose `text` is the string (other fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RerankDocument {
    Text(String),
    Object(DocumentText),
}

/// A document's text.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct DocumentText {
    pub text: String,
}

impl RerankDocument {
    fn into_text(self) -> String {
        match self {
            RerankDocument::Text(text) | RerankDocument::Object(DocumentText { text }) => text,
        }
    }
}

/// By hand, so that a wrong document says what is expected (an untagged enum only says
/// that nothing matched).
impl<'de> Deserialize<'de> for RerankDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DocumentVisitor;
        impl<'de> Visitor<'de> for DocumentVisitor {
            type Value = RerankDocument;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an object with a string `text`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RerankDocument, E> {
                Ok(RerankDocument::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RerankDocument, E> {
                Ok(RerankDocument::Text(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RerankDocument, A::Error> {
                DocumentText::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RerankDocument::Object)
            }
        }
        deserializer.deserialize_any(DocumentVisitor)
    }
}

/// `POST /v1/rerank` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResponse {
    /// The reranker that answered.
    pub model: String,
    /// The documents from the most relevant down (`top_n` of them, when given).
    pub results: Vec<RerankResult>,
    /// Tokens the model read in all pairs (after truncation, special tokens included).
    pub usage: Usage,
}

/// One document's relevance.
#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResult {
    /// Position of the document in the request.
    pub index: usize,
    /// The model's score after its activation (a sigmoid for most cross-encoders: 0 to 1).
    pub relevance_score: f32,
    /// The document, unless `return_documents` was false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentText>,
}

/// `POST /rerank` body (TEI's shape; `model` is an extension).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiRerankRequest {
    /// The text every text is scored against (non-empty).
    pub query: String,
    /// The texts to score (1 to the server's `max_inputs`; none empty).
    pub texts: Vec<String>,
    /// Give each rank its text (default false).
    #[serde(default)]
    pub return_text: Option<bool>,
    /// Scores as the model's raw logits instead of after its activation (default false).
    #[serde(default)]
    pub raw_scores: Option<bool>,
    /// Cut over-long pairs, or refuse them with a 422 (false); default: the server's setting.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which served reranker; the first one when omitted.
    #[serde(default)]
    pub model: Option<String>,
}

/// One text's score in TEI's answer (an array of these, best first).
#[derive(Debug, Serialize, ToSchema)]
pub struct Rank {
    /// Position of the text in the request.
    pub index: usize,
    pub score: f32,
    /// The text, when `return_text` was true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Score and rank documents against a query with a cross-encoder.
#[utoipa::path(
    post,
    path = "/v1/rerank",
    request_body = RerankRequest,
    responses(
        (status = 200, description = "The documents from the most relevant down", body = RerankResponse),
        (status = 400, description = "Malformed or invalid request: empty query, no documents, an empty document, too many documents, a pair over the limit while truncation is off (`input_too_long`), or an embedding model named (`wrong_model_kind`)", body = crate::error::ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown model, or no reranker served (`model_not_found`)", body = crate::error::ErrorResponse),
        (status = 413, description = "Body over the size limit", body = crate::error::ErrorResponse),
        (status = 429, description = "Too many concurrent requests; see Retry-After", body = crate::error::ErrorResponse),
        (status = 503, description = "Models still loading", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rerank(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> AppResult<Response> {
    let status = SchemaStatus::BadRequest;
    let (request, models): (RerankRequest, _) = read_json(&state, request, status).await?;
    let documents = request.documents.into_iter().map(RerankDocument::into_text).collect();
    let ask = Ask { query: request.query, documents, truncate: request.truncate };
    let (served, scored) =
        ask.score(&state, models, request.model.as_deref(), status, "documents").await?;
    let return_documents = request.return_documents.unwrap_or(true);
    let mut documents: Vec<Option<String>> =
        scored.groups.into_iter().flat_map(|g| g.documents).map(Some).collect();
    let results = best_first(&scored.logits[0], served.reranker.activation(), request.top_n)
        .map(|(index, relevance_score)| RerankResult {
            index,
            relevance_score,
            document: return_documents
                .then(|| documents[index].take().map(|text| DocumentText { text }))
                .flatten(),
        })
        .collect();
    let usage = Usage { prompt_tokens: scored.tokens, total_tokens: scored.tokens };
    Ok(json(&RerankResponse { model: served.name().to_string(), results, usage }))
}

/// Score and rank texts against a query (TEI's route).
#[utoipa::path(
    post,
    path = "/rerank",
    request_body = TeiRerankRequest,
    responses(
        (status = 200, description = "The texts from the most relevant down", body = Vec<Rank>),
        (status = 400, description = "Body is not valid JSON, or an embedding model named (`wrong_model_kind`)", body = crate::error::ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown model, or no reranker served (`model_not_found`)", body = crate::error::ErrorResponse),
        (status = 413, description = "Body over the size limit", body = crate::error::ErrorResponse),
        (status = 422, description = "Well-formed JSON that is not a valid request: wrong types, empty query, no texts, an empty text, too many texts, a pair over the limit while truncation is off (`input_too_long`)", body = crate::error::ErrorResponse),
        (status = 429, description = "Too many concurrent requests; see Retry-After", body = crate::error::ErrorResponse),
        (status = 503, description = "Models still loading", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn tei_rerank(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> AppResult<Response> {
    let status = SchemaStatus::Unprocessable;
    let (request, models): (TeiRerankRequest, _) = read_json(&state, request, status).await?;
    let ask = Ask { query: request.query, documents: request.texts, truncate: request.truncate };
    let (served, scored) =
        ask.score(&state, models, request.model.as_deref(), status, "texts").await?;
    let activation = match request.raw_scores {
        Some(true) => ScoreActivation::Identity,
        _ => served.reranker.activation(),
    };
    let return_text = request.return_text.unwrap_or(false);
    let mut texts: Vec<Option<String>> =
        scored.groups.into_iter().flat_map(|g| g.documents).map(Some).collect();
    let ranks: Vec<Rank> = best_first(&scored.logits[0], activation, None)
        .map(|(index, score)| Rank {
            index,
            score,
            text: return_text.then(|| texts[index].take()).flatten(),
        })
        .collect();
    Ok(json(&ranks))
}

/// What both routes ask of a reranker: one query, its documents, a truncation choice.
struct Ask {
    query: String,
    documents: Vec<String>,
    truncate: Option<bool>,
}

impl Ask {
    /// Checks the request (`param` names the documents' field, `status` is the route's
    /// status for an invalid request) and scores it with the reranker named `model`.
    async fn score<'m>(
        self,
        state: &AppState,
        models: &'m Models,
        model: Option<&str>,
        status: SchemaStatus,
        param: &str,
    ) -> AppResult<(&'m ServedReranker, Scored)> {
        let served = models.reranker(model)?;
        let invalid = |message: String, field: &str| status.error(message).param(field);
        if self.query.is_empty() {
            return Err(invalid("'query' is an empty string".into(), "query"));
        }
        if self.documents.is_empty() {
            return Err(invalid(
                format!("'{param}' is empty; send at least one text to score"),
                param,
            ));
        }
        let limit = state.config.max_inputs;
        if self.documents.len() > limit {
            return Err(invalid(
                format!(
                    "'{param}' has {} items, more than the limit of {limit}",
                    self.documents.len()
                ),
                param,
            ));
        }
        if let Some(i) = self.documents.iter().position(String::is_empty) {
            return Err(invalid(format!("{param}[{i}] is an empty string"), param));
        }
        let truncate = self.truncate.unwrap_or(state.config.truncate);
        let group = Group { query: self.query, documents: self.documents };
        let mut budget = TokenBudget::new(state.config.max_request_tokens);
        let refuse = |too_long: TooLong| too_long.refusal(status, param);
        let scored = served.score(vec![group], truncate, &mut budget, param, refuse).await?;
        Ok((served, scored))
    }
}

/// The documents' positions from the highest score down, with their scores after
/// `activation`, cut to `top_n` (0 or none: all).
fn best_first(
    logits: &[f32],
    activation: ScoreActivation,
    top_n: Option<usize>,
) -> impl Iterator<Item = (usize, f32)> + '_ {
    let keep = top_n.filter(|&n| n > 0).unwrap_or(logits.len());
    ranked(logits).into_iter().take(keep).map(move |i| (i, activation.apply(logits[i])))
}
