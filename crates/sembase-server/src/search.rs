//! Corpus indexes (sembase-index) served beside the models: `POST /v1/search`,
//! `GET /v1/indexes` (what a client, such as the page, can search), and document
//! upserts and deletes on `/v1/indexes/{name}/documents`.
//!
//! A search may add a second stage (`rerank`): the index retrieves `depth` candidates
//! per query with the bi-encoder, a served cross-encoder reads each with the query and
//! the best `top_k` by its score are answered, each with its score and rank from the
//! first stage, so that a client can show what reranking changed.
//!
//! Queries and documents go through the index's model's batching queue with the
//! prefixes and width the index recorded; searches share a read lock, writes take
//! the write lock, and both run on the blocking pool (writes flush to disk).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, Request, State};
use axum::response::Response;
use sembase_core::Embeddings;
use sembase_embed::reranker::ranked;
use sembase_index::{CorpusDoc, Document, Filter, Index, IndexError, Metadata};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{EmbeddingInput, SchemaStatus, Usage};
use crate::budget::TokenBudget;
use crate::error::{ApiError, ServerError};
use crate::handlers::{
    check_inputs, cpu, json, prepare, read_json, tokenize_off_runtime, AppResult,
};
use crate::integral;
use crate::rerank::{Group, ServedReranker};
use crate::{AppState, ModelSpec, Models};

/// Hits per query a request may ask for (and candidates a rerank stage may read).
const MAX_TOP_K: usize = 1000;
/// Candidates per query a rerank stage reads when the request does not say (or `top_k`,
/// when that is more).
const DEFAULT_RERANK_DEPTH: usize = 50;

/// An index to serve under a name (what `--index NAME=DIR` gives), opened for writing.
pub struct IndexSpec {
    pub name: String,
    pub index: Index,
    /// Name of the served model that made its vectors (the caller checked the
    /// model's fingerprint against the index's).
    pub model: String,
}

/// An index bound to its served model.
pub(crate) struct ServedIndex {
    name: String,
    index: Arc<RwLock<Index>>,
    model: usize,
    query_prefix: Option<String>,
    document_prefix: Option<String>,
    dimensions: usize,
}

/// The served indexes.
#[derive(Default)]
pub(crate) struct Indexes {
    list: Vec<ServedIndex>,
    by_name: HashMap<String, usize>,
}

impl Indexes {
    /// The served indexes' names, in the order given.
    pub(crate) fn names(&self) -> Vec<String> {
        self.list.iter().map(|served| served.name.clone()).collect()
    }

    /// The indexes whose store cannot answer now (a database that is down), with why. An
    /// index busy with a write is taken as reachable rather than waited for.
    pub(crate) fn unreachable(&self) -> Vec<(String, String)> {
        self.list
            .iter()
            .filter_map(|served| {
                let index = served.index.try_read().ok()?;
                index.store().ping().err().map(|e| (served.name.clone(), e.to_string()))
            })
            .collect()
    }

    /// Binds every index to its model among `models`, refusing unknown models,
    /// widths the model cannot give and repeated names.
    pub(crate) fn bind(specs: Vec<IndexSpec>, models: &[ModelSpec]) -> Result<Self, ServerError> {
        let mut indexes = Indexes::default();
        for spec in specs {
            let refuse =
                |message: String| ServerError::Config(format!("index `{}`: {message}", spec.name));
            if spec.name.is_empty() || indexes.by_name.contains_key(&spec.name) {
                return Err(refuse("index names must be non-empty and unique".into()));
            }
            let served: Vec<&str> = models.iter().map(|m| m.embedder.name()).collect();
            let model = served.iter().position(|&n| n == spec.model).ok_or_else(|| {
                refuse(format!(
                    "its model `{}` is not served (served: {})",
                    spec.model,
                    served.join(", ")
                ))
            })?;
            let settings = spec.index.settings().clone();
            if settings.dimensions > models[model].embedder.dimension() {
                return Err(refuse(format!(
                    "it holds {}-dimensional vectors; model `{}` gives {}",
                    settings.dimensions,
                    spec.model,
                    models[model].embedder.dimension()
                )));
            }
            indexes.by_name.insert(spec.name.clone(), indexes.list.len());
            indexes.list.push(ServedIndex {
                name: spec.name,
                index: Arc::new(RwLock::new(spec.index)),
                model,
                query_prefix: settings.query_prefix,
                document_prefix: settings.document_prefix,
                dimensions: settings.dimensions,
            });
        }
        Ok(indexes)
    }

    fn get(&self, name: &str) -> AppResult<&ServedIndex> {
        self.by_name.get(name).map(|&i| &self.list[i]).ok_or_else(|| {
            let mut names: Vec<&str> = self.list.iter().map(|i| i.name.as_str()).collect();
            names.sort_unstable();
            let known = if names.is_empty() {
                "none; start the server with --index NAME=DIR".to_string()
            } else {
                names.join(", ")
            };
            ApiError::not_found(format!(
                "The index `{name}` does not exist on this server; it serves: {known}"
            ))
            .param("index")
            .code("index_not_found")
        })
    }
}

impl ServedIndex {
    /// Unit vectors of `texts` (the request's field `field`) with `prefix`, at the index's
    /// width, through the model's queue, counted against the request's `budget`.
    async fn embed(
        &self,
        state: &AppState,
        models: &Models,
        texts: Vec<String>,
        prefix: Option<String>,
        budget: &mut TokenBudget,
        field: &'static str,
    ) -> AppResult<Embeddings> {
        let model = &models.list[self.model];
        let input = EmbeddingInput::Texts(texts);
        check_inputs(&input, state.config.max_inputs, field)?;
        let large = tokenize_off_runtime(&input);
        let (embedder, truncate) = (model.embedder.clone(), state.config.truncate);
        let (pieces, cost) = cpu(large, move || {
            prepare(embedder.as_ref(), input, prefix.as_deref(), truncate, field)
        })
        .await??;
        let dimensions = (self.dimensions < model.embedder.dimension()).then_some(self.dimensions);
        let mut embeddings = model.run(pieces, cost, dimensions, budget, field).await?;
        embeddings.vectors.iter_mut().for_each(|v| sembase_core::vectors::normalize(v));
        Ok(embeddings)
    }
}

/// A store error as an API error: bad input is the client's, the rest the server's.
fn store_error(e: IndexError) -> ApiError {
    match e {
        IndexError::Invalid(message) => ApiError::bad_request(message),
        other => ApiError::internal(other.to_string()),
    }
}

/// `POST /v1/search` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SearchRequest {
    /// Name of a served index.
    pub index: String,
    /// One query text (or give `queries`).
    #[serde(default)]
    pub query: Option<String>,
    /// Several query texts.
    #[serde(default)]
    pub queries: Option<Vec<String>>,
    /// Hits per query (1..=1000).
    #[serde(default = "default_top_k", deserialize_with = "integral::value")]
    pub top_k: usize,
    /// Only documents whose metadata has these values (strings, numbers, booleans or null).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Metadata>,
    /// Reorder the candidates with a cross-encoder before answering.
    #[serde(default)]
    pub rerank: Option<RerankStage>,
}

/// The rerank stage of a search.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RerankStage {
    /// A served reranker; the first one given to the server when omitted.
    #[serde(default)]
    pub model: Option<String>,
    /// Candidates per query the index retrieves for the reranker: from `top_k` to 1000
    /// (and at most the server's `max_inputs`); default the larger of 50 and `top_k`.
    #[serde(default, deserialize_with = "integral::option")]
    #[schema(minimum = 1)]
    pub depth: Option<usize>,
}

impl RerankStage {
    /// The reranker and the depth, checked against `top_k` and the server's limits.
    fn resolve<'m>(
        &self,
        models: &'m Models,
        top_k: usize,
        max_inputs: usize,
    ) -> AppResult<(&'m ServedReranker, usize)> {
        let served = models.reranker(self.model.as_deref()).map_err(|e| e.param("rerank"))?;
        let most = MAX_TOP_K.min(max_inputs);
        let depth = self.depth.unwrap_or(DEFAULT_RERANK_DEPTH.max(top_k).min(most));
        if depth < top_k || depth > most {
            return Err(ApiError::bad_request(format!(
                "'rerank.depth' must be within top_k..={most} ({top_k}..={most} here), got {depth}"
            ))
            .param("rerank"));
        }
        Ok((served, depth))
    }
}

fn default_top_k() -> usize {
    10
}

/// `POST /v1/search` answer: one entry per query, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub results: Vec<QueryHits>,
    /// Tokens the models read: the queries embedded, plus the pairs a rerank stage scored.
    pub usage: Usage,
}

/// The hits of one query, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueryHits {
    pub query: String,
    pub hits: Vec<SearchHit>,
}

/// One document found.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    pub id: String,
    /// Cosine similarity to the query; with a rerank stage, the reranker's relevance score.
    pub score: f32,
    /// With a rerank stage: the cosine similarity the index found it with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval_score: Option<f32>,
    /// With a rerank stage: its rank among the index's candidates (1 is the nearest),
    /// before reranking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval_rank: Option<usize>,
    pub text: String,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    #[schema(value_type = Object)]
    pub metadata: Metadata,
}

/// Find the documents of an index nearest to query texts.
#[utoipa::path(
    post,
    path = "/v1/search",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Hits per query, in query order", body = SearchResponse),
        (status = 400, description = "Malformed request (no query, bad top_k, filter or rerank depth; an embedding model named as the reranker)", body = crate::error::ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown index (`index_not_found`) or reranker (`model_not_found`)", body = crate::error::ErrorResponse),
        (status = 503, description = "Models still loading", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn search(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> AppResult<Response> {
    let (request, models): (SearchRequest, _) =
        read_json(&state, request, SchemaStatus::BadRequest).await?;
    let served = models.indexes.get(&request.index)?;
    let (field, queries) = match (request.query, request.queries) {
        (Some(q), None) => ("query", vec![q]),
        (None, Some(qs)) if !qs.is_empty() => ("queries", qs),
        (None, Some(_)) => return Err(ApiError::bad_request("'queries' is empty").param("queries")),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give 'query' or 'queries', not both").param("query"))
        }
        (None, None) => {
            return Err(
                ApiError::bad_request("give 'query' (a text) or 'queries' (texts)").param("query")
            )
        }
    };
    if request.top_k == 0 || request.top_k > MAX_TOP_K {
        return Err(
            ApiError::bad_request(format!("'top_k' must be within 1..={MAX_TOP_K}")).param("top_k")
        );
    }
    let stage = match &request.rerank {
        Some(stage) => Some(stage.resolve(models, request.top_k, state.config.max_inputs)?),
        None => None,
    };
    // What the index retrieves: the rerank depth (given or default) when reranking.
    let candidates = stage.map_or(request.top_k, |(_, depth)| depth);
    check_hits(queries.len(), candidates, stage.is_some(), state.config.max_search_hits)?;
    let filter = request
        .filter
        .map(Filter::new)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()).param("filter"))?;
    let mut budget = TokenBudget::new(state.config.max_request_tokens);
    let prefix = served.query_prefix.clone();
    let embeddings =
        served.embed(&state, models, queries.clone(), prefix, &mut budget, field).await?;
    let mut tokens = embeddings.total_tokens();
    let index = served.index.clone();
    let found = cpu(true, move || {
        let index = index.read().unwrap_or_else(|p| p.into_inner());
        index.store().search(&embeddings.vectors, candidates, filter.as_ref())
    })
    .await?
    .map_err(store_error)?;
    let mut results: Vec<QueryHits> = queries
        .into_iter()
        .zip(found)
        .map(|(query, hits)| QueryHits {
            query,
            hits: hits
                .into_iter()
                .map(|h| SearchHit {
                    id: h.id,
                    score: h.score,
                    retrieval_score: None,
                    retrieval_rank: None,
                    text: h.text,
                    metadata: h.metadata,
                })
                .collect(),
        })
        .collect();
    if let Some((reranker, _)) = stage {
        let truncate = state.config.truncate;
        tokens += rerank_hits(reranker, &mut results, request.top_k, truncate, &mut budget).await?;
    }
    Ok(json(&SearchResponse {
        results,
        usage: Usage { prompt_tokens: tokens, total_tokens: tokens },
    }))
}

/// Refuses a search that would retrieve more than `limit` hits: `queries` times the
/// `candidates` per query (the rerank depth when `reranked`, else `top_k`).
fn check_hits(queries: usize, candidates: usize, reranked: bool, limit: usize) -> AppResult<()> {
    let hits = queries.saturating_mul(candidates);
    if hits <= limit {
        return Ok(());
    }
    let (field, smaller) = if reranked { ("rerank", "rerank.depth") } else { ("top_k", "top_k") };
    Err(ApiError::bad_request(format!(
        "{queries} queries x {candidates} hits each make {hits} hits, more than the limit of {limit} per request; send fewer queries or a smaller {smaller}"
    ))
    .param(field)
    .code("too_many_hits"))
}

/// Reorders each query's hits by the reranker's relevance and keeps the first `top_k`;
/// a hit keeps its first-stage score and rank beside. The pairs' tokens count against
/// the request's `budget`, after its queries'. Returns the tokens the reranker read.
async fn rerank_hits(
    reranker: &ServedReranker,
    results: &mut [QueryHits],
    top_k: usize,
    truncate: bool,
    budget: &mut TokenBudget,
) -> AppResult<usize> {
    let groups = results
        .iter()
        .map(|r| Group {
            query: r.query.clone(),
            documents: r.hits.iter().map(|h| h.text.clone()).collect(),
        })
        .collect();
    let refuse = |too_long: crate::rerank::TooLong| {
        let id = &results[too_long.group].hits[too_long.document].id;
        ApiError::bad_request(format!(
            "document `{id}` and query {} make {} tokens together, more than the reranker's limit of {} (the server refuses over-long inputs instead of truncating them)",
            too_long.group, too_long.tokens, too_long.limit
        ))
        .param("rerank")
        .code("input_too_long")
    };
    let scored = reranker.score(groups, truncate, budget, "rerank", refuse).await?;
    let activation = reranker.reranker.activation();
    for (result, logits) in results.iter_mut().zip(&scored.logits) {
        let mut hits: Vec<Option<SearchHit>> =
            std::mem::take(&mut result.hits).into_iter().map(Some).collect();
        result.hits = ranked(logits)
            .into_iter()
            .take(top_k)
            .filter_map(|i| {
                let mut hit = hits[i].take()?;
                hit.retrieval_score = Some(hit.score);
                hit.retrieval_rank = Some(i + 1);
                hit.score = activation.apply(logits[i]);
                Some(hit)
            })
            .collect();
    }
    Ok(scored.tokens)
}

/// `GET /v1/indexes` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct IndexList {
    /// Always `list`.
    pub object: &'static str,
    /// The served indexes, in the order the server was given them.
    pub data: Vec<IndexObject>,
}

/// A served index.
#[derive(Debug, Serialize, ToSchema)]
pub struct IndexObject {
    /// The name to put in `index`.
    pub name: String,
    /// The served model that embeds its queries.
    pub model: String,
    /// Width of its vectors.
    pub dimensions: usize,
    /// Documents it holds now.
    pub documents: usize,
}

/// The served indexes, so that a client can offer them without being told the names.
#[utoipa::path(
    get,
    path = "/v1/indexes",
    responses(
        (status = 200, body = IndexList),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 503, description = "Models still loading", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_indexes(State(state): State<Arc<AppState>>) -> AppResult<Response> {
    let models = state.ready()?;
    let mut data = Vec::with_capacity(models.indexes.list.len());
    for served in &models.indexes.list {
        let index = served.index.clone();
        // A PostgreSQL store counts with a query: keep it off the runtime's threads.
        let documents =
            cpu(true, move || index.read().unwrap_or_else(|p| p.into_inner()).store().count())
                .await?
                .map_err(store_error)?;
        data.push(IndexObject {
            name: served.name.clone(),
            model: models.list[served.model].embedder.name().to_string(),
            dimensions: served.dimensions,
            documents,
        });
    }
    Ok(json(&IndexList { object: "list", data }))
}

/// `POST /v1/indexes/{name}/documents` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpsertRequest {
    /// Documents as in a JSONL corpus: `id` (or `_id`), `text`, optional `title` and `metadata`.
    #[schema(value_type = Vec<Object>)]
    pub documents: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// `DELETE /v1/indexes/{name}/documents` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteRequest {
    pub ids: Vec<String>,
}

/// What a write did.
#[derive(Debug, Serialize, ToSchema)]
pub struct WriteResponse {
    /// Documents added or replaced (upsert), or removed (delete).
    pub changed: usize,
    /// Documents in the index afterwards.
    pub count: usize,
}

/// Add or replace documents (by id) in an index, as one committed write.
#[utoipa::path(
    post,
    path = "/v1/indexes/{name}/documents",
    params(("name" = String, Path, description = "A served index")),
    request_body = UpsertRequest,
    responses(
        (status = 200, description = "Committed", body = WriteResponse),
        (status = 400, description = "A malformed document or repeated id", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown index (`index_not_found`)", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn upsert_documents(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: Request,
) -> AppResult<Response> {
    let (request, models): (UpsertRequest, _) =
        read_json(&state, request, SchemaStatus::BadRequest).await?;
    let served = models.indexes.get(&name)?;
    if request.documents.is_empty() {
        return Err(ApiError::bad_request("'documents' is empty").param("documents"));
    }
    let docs: Vec<CorpusDoc> = request
        .documents
        .iter()
        .enumerate()
        .map(|(i, d)| {
            CorpusDoc::from_json(d).map_err(|m| {
                ApiError::bad_request(format!("documents[{i}]: {m}")).param("documents")
            })
        })
        .collect::<AppResult<_>>()?;
    let texts = docs.iter().map(CorpusDoc::embed_text).collect();
    let prefix = served.document_prefix.clone();
    let mut budget = TokenBudget::new(state.config.max_request_tokens);
    let embeddings = served.embed(&state, models, texts, prefix, &mut budget, "documents").await?;
    let docs: Vec<Document> =
        docs.into_iter().zip(embeddings.vectors).map(|(d, v)| d.into_document(v)).collect();
    let changed = docs.len();
    write(served, move |index| index.store_mut().upsert(&docs).map(|()| changed)).await
}

/// Runs a write on the blocking pool under the index's write lock.
async fn write(
    served: &ServedIndex,
    change: impl FnOnce(&mut Index) -> sembase_index::Result<usize> + Send + 'static,
) -> AppResult<Response> {
    let index = served.index.clone();
    let answer = cpu(true, move || {
        let mut index = index.write().unwrap_or_else(|p| p.into_inner());
        let changed = change(&mut index)?;
        index.store().count().map(|count| WriteResponse { changed, count })
    })
    .await?
    .map_err(store_error)?;
    Ok(json(&answer))
}

/// Remove documents by id from an index, as one committed write (unknown ids are ignored).
#[utoipa::path(
    delete,
    path = "/v1/indexes/{name}/documents",
    params(("name" = String, Path, description = "A served index")),
    request_body = DeleteRequest,
    responses(
        (status = 200, description = "Committed; `changed` counts the ids that existed", body = WriteResponse),
        (status = 404, description = "Unknown index (`index_not_found`)", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_documents(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: Request,
) -> AppResult<Response> {
    let (request, models): (DeleteRequest, _) =
        read_json(&state, request, SchemaStatus::BadRequest).await?;
    write(models.indexes.get(&name)?, move |index| index.store_mut().delete(&request.ids)).await
}
