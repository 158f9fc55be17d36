//! Route handlers and middleware.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sembase_core::{Embedder, Embeddings, Truncation};
use sembase_embed::prompts::resolve_prompt;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::api::{
    parse_json, EmbeddingInput, EmbeddingObject, EmbeddingValue, EmbeddingsRequest,
    EmbeddingsResponse, EncodingFormat, Health, ModelKind, ModelList, ModelObject, SchemaStatus,
    TokenizeInputs, TokenizeRequest, Usage,
};
use crate::batcher::{Batcher, Job, JobError, Queued, Refused};
use crate::budget::TokenBudget;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::request_log;
use crate::rerank::ServedReranker;
use crate::{AppState, Models, ServedModel};

pub(crate) type AppResult<T> = Result<T, ApiError>;

/// Texts longer than this (bytes, all inputs together) are tokenized on the blocking
/// pool instead of the runtime's threads.
const INLINE_TOKENIZE_BYTES: usize = 16 << 10;

impl AppState {
    /// The models, or 503 while they are still loading.
    pub(crate) fn ready(&self) -> AppResult<&Models> {
        self.models
            .get()
            .ok_or_else(|| ApiError::unavailable("models are still loading", "model_loading"))
    }
}

/// Where a served model is: its kind, and its place in that kind's list of [`Models`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub kind: ModelKind,
    pub index: usize,
}

impl Models {
    /// The embedding model a request names; the first one when it names none.
    pub(crate) fn find(&self, name: Option<&str>) -> AppResult<&ServedModel> {
        self.locate(name, ModelKind::Embedding).map(|i| &self.list[i])
    }

    /// The reranker a request names; the first one when it names none.
    pub(crate) fn reranker(&self, name: Option<&str>) -> AppResult<&ServedReranker> {
        self.locate(name, ModelKind::Reranker).map(|i| &self.rerankers[i])
    }

    /// The place of the model named `name` (or of the first model of `kind`) in its list;
    /// 404 when there is none, 400 when it is of the other kind.
    fn locate(&self, name: Option<&str>, kind: ModelKind) -> AppResult<usize> {
        let Some(name) = name else {
            if self.names_of(kind).is_empty() {
                let message = match kind {
                    ModelKind::Embedding => {
                        "this server serves no embedding model (start it with --model MODEL)"
                    }
                    ModelKind::Reranker => {
                        "this server serves no reranker (start it with --model CROSS_ENCODER_DIR)"
                    }
                };
                return Err(ApiError::not_found(message).param("model").code("model_not_found"));
            }
            return Ok(0);
        };
        match self.by_name.get(name) {
            None => Err(ApiError::model_not_found(name, &self.names())),
            Some(entry) if entry.kind == kind => Ok(entry.index),
            Some(_) => {
                let known = self.names_of(kind);
                let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                let message = match kind {
                    ModelKind::Embedding => format!(
                        "The model `{name}` is a reranker (a cross-encoder): it scores (query, document) pairs and makes no embeddings; use POST /v1/rerank. Embedding models here: {known}"
                    ),
                    ModelKind::Reranker => format!(
                        "The model `{name}` is an embedding model, not a reranker; use POST /v1/embeddings. Rerankers here: {known}"
                    ),
                };
                Err(ApiError::bad_request(message).param("model").code("wrong_model_kind"))
            }
        }
    }

    /// The names of the served models of one kind, in the order given.
    fn names_of(&self, kind: ModelKind) -> Vec<&str> {
        match kind {
            ModelKind::Embedding => self.list.iter().map(|m| m.embedder.name()).collect(),
            ModelKind::Reranker => self.rerankers.iter().map(|r| r.reranker.name()).collect(),
        }
    }

    /// 503 naming the models whose worker thread has stopped, if any.
    pub(crate) fn check_workers(&self) -> AppResult<()> {
        let embedders =
            self.list.iter().filter(|m| !m.batcher.is_alive()).map(|m| m.embedder.name());
        let rerankers =
            self.rerankers.iter().filter(|r| !r.batcher.is_alive()).map(|r| r.reranker.name());
        let dead: Vec<&str> = embedders.chain(rerankers).collect();
        if dead.is_empty() {
            return Ok(());
        }
        Err(ApiError::unavailable(
            format!("the worker of model(s) {} has stopped", dead.join(", ")),
            "model_unavailable",
        ))
    }

    /// 503 naming the models whose worker has been on one batch for longer than `limit`
    /// (the request timeout): alive, but stuck, since no request waits that long.
    pub(crate) fn check_progress(&self, limit: Duration) -> AppResult<()> {
        let embedders = self.list.iter().map(|m| (m.embedder.name(), m.batcher.busy_for()));
        let rerankers = self.rerankers.iter().map(|r| (r.name(), r.batcher.busy_for()));
        let stuck: Vec<String> = embedders
            .chain(rerankers)
            .filter_map(|(name, busy)| {
                let busy = busy.filter(|busy| *busy > limit)?;
                Some(format!(
                    "model `{name}`: worker busy on one batch for {:.1}s",
                    busy.as_secs_f64()
                ))
            })
            .collect();
        if stuck.is_empty() {
            return Ok(());
        }
        Err(ApiError::unavailable(
            format!(
                "{}, longer than the request timeout of {:.1}s",
                stuck.join("; "),
                limit.as_secs_f64()
            ),
            "worker_stuck",
        ))
    }

    /// Every served model's name: the embedding models, then the rerankers.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names = self.names_of(ModelKind::Embedding);
        names.extend(self.names_of(ModelKind::Reranker));
        names
    }
}

impl ServedModel {
    /// The text put before each input: the named prompt, or the model's default.
    fn prefix(&self, prompt_name: Option<&str>) -> AppResult<Option<String>> {
        resolve_prompt(&self.prompts, self.default_prompt.as_deref(), prompt_name)
            .map(|prefix| prefix.map(str::to_string))
            .map_err(|e| {
                ApiError::bad_request(format!("model `{}` {e}", self.embedder.name()))
                    .param("prompt_name")
            })
    }

    /// Queues the job of the request field `field` and waits for its vectors.
    pub(crate) async fn run(
        &self,
        pieces: Vec<Vec<u32>>,
        tokens: usize,
        dimensions: Option<usize>,
        budget: &mut TokenBudget,
        field: &str,
    ) -> AppResult<Embeddings> {
        let outputs = queue(&self.batcher, pieces, tokens, dimensions, budget, field).await?;
        let (vectors, token_counts) = outputs.into_iter().unzip();
        Ok(Embeddings { vectors, token_counts })
    }
}

/// Queues a job on a model's batcher, once its tokens fit the request's `budget`, and
/// waits for its outputs. Dropping the future (the client went away) closes the reply
/// channel and the worker skips the job. An input the model refuses (or tokens past the
/// budget) are the fault of the request field `param`.
pub(crate) async fn queue<M: Queued>(
    batcher: &Batcher<M>,
    inputs: Vec<M::Input>,
    tokens: usize,
    options: M::Options,
    budget: &mut TokenBudget,
    param: &str,
) -> AppResult<Vec<M::Output>> {
    budget.spend(tokens, param)?;
    let count = inputs.len();
    let (reply, answer) = oneshot::channel();
    let job = Job { inputs, options, tokens, reply, enqueued: Instant::now() };
    match batcher.submit(job) {
        Ok(()) => {}
        Err(Refused::Full(_)) => return Err(ApiError::queue_full(batcher.name())),
        Err(Refused::Stopped(_)) => {
            return Err(ApiError::unavailable(
                "the model's worker has stopped",
                "model_unavailable",
            ))
        }
    }
    let finished = match answer.await {
        Ok(Ok(finished)) => finished,
        Ok(Err(JobError::BadInput(message))) => {
            return Err(ApiError::bad_request(message).param(param))
        }
        Ok(Err(JobError::Internal(message))) => return Err(ApiError::internal(message)),
        Ok(Err(JobError::QueueTimeout(waited))) => {
            return Err(ApiError::queue_timeout(batcher.name(), waited))
        }
        Err(_) => return Err(ApiError::internal("the model's worker stopped before answering")),
    };
    request_log::record_work(batcher.name(), count, tokens, finished.waited, finished.computed);
    Ok(finished.outputs)
}

/// Reads and parses a JSON body, once the models are ready.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: Request,
    schema: SchemaStatus,
) -> AppResult<(T, &Models)> {
    let (parts, body) = request.into_parts();
    let body =
        crate::body::read(&parts.headers, body, state.config.max_body_bytes, state.config.body)
            .await?;
    let parsed = parse_json(&body, schema)?;
    Ok((parsed, state.ready()?))
}

/// A JSON answer with status 200.
pub(crate) fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
            .into_response(),
        Err(e) => ApiError::internal(format!("could not write the answer: {e}")).into_response(),
    }
}

/// Runs CPU work on the blocking pool when it is large, inline otherwise.
pub(crate) async fn cpu<T: Send + 'static>(
    large: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> AppResult<T> {
    if large {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| ApiError::internal("a worker task failed"))
    } else {
        Ok(work())
    }
}

/// Whether the texts of `input` are large enough to tokenize on the blocking pool.
pub(crate) fn tokenize_off_runtime(input: &EmbeddingInput) -> bool {
    match input {
        EmbeddingInput::Text(t) => large_text(t.len()),
        EmbeddingInput::Texts(v) => large_text(v.iter().map(String::len).sum()),
        _ => false,
    }
}

/// Whether this many bytes of text are worth tokenizing on the blocking pool.
pub(crate) fn large_text(bytes: usize) -> bool {
    bytes > INLINE_TOKENIZE_BYTES
}

/// The request's inputs (its field `field`) as queue pieces: texts tokenized (with the
/// prompt), over-long inputs cut or refused. Returns the pieces and the tokens they will cost.
pub(crate) fn prepare(
    embedder: &dyn Embedder,
    input: EmbeddingInput,
    prefix: Option<&str>,
    truncate: bool,
    field: &str,
) -> AppResult<(Vec<Vec<u32>>, usize)> {
    let limit = embedder.max_tokens();
    let too_long = |index: usize, tokens: usize| {
        ApiError::bad_request(format!(
            "{field}[{index}] has {tokens} tokens, more than the model's limit of {limit} (the server refuses over-long inputs instead of truncating them)"
        ))
        .param(field)
        .code("input_too_long")
    };
    let from_ids = |index: usize, mut ids: Vec<u32>| -> AppResult<(Vec<u32>, usize)> {
        if ids.len() > limit {
            if !truncate {
                return Err(too_long(index, ids.len()));
            }
            ids.truncate(limit);
        }
        let n = ids.len();
        Ok((ids, n))
    };
    let mut pieces = Vec::with_capacity(input.len());
    let mut tokens = 0;
    let mut push = |(piece, n): (Vec<u32>, usize)| {
        pieces.push(piece);
        tokens += n;
    };
    match input {
        EmbeddingInput::Text(text) => {
            push(prepare_text(embedder, 0, text, prefix, truncate, &too_long)?)
        }
        EmbeddingInput::Texts(texts) => {
            for (index, text) in texts.into_iter().enumerate() {
                push(prepare_text(embedder, index, text, prefix, truncate, &too_long)?);
            }
        }
        EmbeddingInput::Tokens(ids) => push(from_ids(0, ids)?),
        EmbeddingInput::TokenArrays(arrays) => {
            for (index, ids) in arrays.into_iter().enumerate() {
                push(from_ids(index, ids)?);
            }
        }
    }
    Ok((pieces, tokens))
}

fn prepare_text(
    embedder: &dyn Embedder,
    index: usize,
    text: String,
    prefix: Option<&str>,
    truncate: bool,
    too_long: &dyn Fn(usize, usize) -> ApiError,
) -> AppResult<(Vec<u32>, usize)> {
    let text = match prefix {
        Some(p) => format!("{p}{text}"),
        None => text,
    };
    // Tokenized once, here: an over-long text is cut the way `embed` cuts it (keeping
    // its closing special token), and the model gets the ids.
    let truncation = if truncate { Truncation::Truncate } else { Truncation::Refuse };
    let ids = embedder.encode(&text, truncation).map_err(|e| match e {
        sembase_core::Error::InputTooLong { tokens, .. } => too_long(index, tokens),
        e => ApiError::internal(format!("could not tokenize input {index}: {e}")),
    })?;
    let n = ids.len();
    Ok((ids, n))
}

/// Refuses empty inputs and too many of them, naming the request's `field` (`input`,
/// or search's `query`, `queries`, `documents`) and the index.
pub(crate) fn check_inputs(
    input: &EmbeddingInput,
    max_inputs: usize,
    field: &str,
) -> AppResult<()> {
    let bad = |message: String| ApiError::bad_request(message).param(field);
    if input.is_empty() {
        return Err(bad(format!(
            "'{field}' is empty; send at least one non-empty string or token id"
        )));
    }
    if input.len() > max_inputs {
        return Err(bad(format!(
            "'{field}' has {} items, more than the limit of {max_inputs}",
            input.len()
        )));
    }
    match input {
        EmbeddingInput::Text(t) if t.is_empty() => {
            Err(bad(format!("'{field}' is an empty string")))
        }
        EmbeddingInput::Texts(v) => match v.iter().position(String::is_empty) {
            Some(i) => Err(bad(format!("{field}[{i}] is an empty string"))),
            None => Ok(()),
        },
        EmbeddingInput::TokenArrays(v) => match v.iter().position(Vec::is_empty) {
            Some(i) => Err(bad(format!("{field}[{i}] is an empty array of token ids"))),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Embed text or token ids.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    request_body = EmbeddingsRequest,
    responses(
        (status = 200, description = "One vector per input, in input order", body = EmbeddingsResponse),
        (status = 400, description = "Malformed or invalid request", body = crate::error::ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown model (`model_not_found`)", body = crate::error::ErrorResponse),
        (status = 413, description = "Body over the size limit", body = crate::error::ErrorResponse),
        (status = 429, description = "Too many concurrent requests; see Retry-After", body = crate::error::ErrorResponse),
        (status = 503, description = "Models still loading", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn embeddings(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> AppResult<Response> {
    let (request, models): (EmbeddingsRequest, _) =
        read_json(&state, request, SchemaStatus::BadRequest).await?;
    let model = models.find(request.model.as_deref())?;
    check_inputs(&request.input, state.config.max_inputs, "input")?;
    let width = model.embedder.dimension();
    let dimensions = match request.dimensions {
        None => None,
        Some(d) if d == 0 || d > width as u64 => {
            return Err(ApiError::bad_request(format!(
                "dimensions must be between 1 and {width} for model `{}`, got {d}",
                model.embedder.name()
            ))
            .param("dimensions"));
        }
        Some(d) => Some(d as usize),
    };
    let prefix = model.prefix(request.prompt_name.as_deref())?;
    let format = request.encoding_format.unwrap_or_default();
    let large = tokenize_off_runtime(&request.input);
    let embedder = model.embedder.clone();
    let truncate = state.config.truncate;
    let input = request.input;
    let (pieces, tokens) =
        cpu(large, move || prepare(embedder.as_ref(), input, prefix.as_deref(), truncate, "input"))
            .await??;
    let mut budget = TokenBudget::new(state.config.max_request_tokens);
    let embeddings = model.run(pieces, tokens, dimensions, &mut budget, "input").await?;
    let usage =
        Usage { prompt_tokens: embeddings.total_tokens(), total_tokens: embeddings.total_tokens() };
    let data = embeddings
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingObject {
            object: "embedding",
            index,
            embedding: match format {
                EncodingFormat::Float => EmbeddingValue::Float(vector),
                EncodingFormat::Base64 => EmbeddingValue::Base64(base64_f32(&vector)),
            },
        })
        .collect();
    Ok(json(&EmbeddingsResponse {
        object: "list",
        data,
        model: model.embedder.name().to_string(),
        usage,
    }))
}

/// Little-endian f32 bytes in standard base64, as OpenAI's clients decode them.
fn base64_f32(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Token ids of texts, as the model sees them (special tokens included, not truncated).
#[utoipa::path(
    post,
    path = "/tokenize",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "Token ids per input", body = Vec<Vec<u32>>),
        (status = 400, description = "Body is not valid JSON", body = crate::error::ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown model", body = crate::error::ErrorResponse),
        (status = 413, description = "Body over the size limit", body = crate::error::ErrorResponse),
        (status = 422, description = "Well-formed JSON that is not a valid request", body = crate::error::ErrorResponse),
        (status = 429, description = "Too many concurrent requests", body = crate::error::ErrorResponse),
        (status = 503, description = "Models still loading", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn tokenize(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> AppResult<Response> {
    let (request, models): (TokenizeRequest, _) =
        read_json(&state, request, SchemaStatus::Unprocessable).await?;
    let model = models.find(request.model.as_deref())?;
    let texts = match request.inputs {
        TokenizeInputs::One(t) => vec![t],
        TokenizeInputs::Many(v) => v,
    };
    let bad = |message: String| ApiError::unprocessable(message).param("inputs");
    if texts.is_empty() {
        return Err(bad("'inputs' is empty".into()));
    }
    if texts.len() > state.config.max_inputs {
        return Err(bad(format!(
            "'inputs' has {} items, more than the limit of {}",
            texts.len(),
            state.config.max_inputs
        )));
    }
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(bad(format!("inputs[{i}] is an empty string")));
    }
    let prefix = model.prefix(request.prompt_name.as_deref())?;
    let large = large_text(texts.iter().map(String::len).sum());
    let embedder = model.embedder.clone();
    let ids = cpu(large, move || {
        texts
            .iter()
            .map(|t| match &prefix {
                Some(p) => embedder.tokenize(&format!("{p}{t}")),
                None => embedder.tokenize(t),
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?
    .map_err(|e| ApiError::internal(format!("tokenizer: {e}")))?;
    Ok(json(&ids))
}

impl Models {
    /// The `/v1/models` entry of the model at `entry`.
    fn object(&self, state: &AppState, entry: Entry) -> ModelObject {
        let (id, dimension, max_tokens) = match entry.kind {
            ModelKind::Embedding => {
                let embedder = &self.list[entry.index].embedder;
                (embedder.name(), Some(embedder.dimension()), embedder.max_tokens())
            }
            ModelKind::Reranker => {
                let reranker = &self.rerankers[entry.index].reranker;
                (reranker.name(), None, reranker.max_tokens())
            }
        };
        ModelObject {
            id: id.to_string(),
            object: "model",
            created: state.started_unix,
            owned_by: "sembase",
            kind: entry.kind,
            dimension,
            max_tokens,
        }
    }
}

/// The served models.
#[utoipa::path(
    get,
    path = "/v1/models",
    responses(
        (status = 200, body = ModelList),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 503, description = "Models still loading", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_models(State(state): State<Arc<AppState>>) -> AppResult<Response> {
    let models = state.ready()?;
    let data = models
        .names()
        .into_iter()
        .map(|name| models.object(&state, models.by_name[name]))
        .collect();
    Ok(json(&ModelList { object: "list", data }))
}

/// One served model.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    params(("model" = String, Path, description = "A served model's name")),
    responses(
        (status = 200, body = ModelObject),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown model", body = crate::error::ErrorResponse),
        (status = 503, description = "Models still loading", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> AppResult<Response> {
    let models = state.ready()?;
    let entry = models
        .by_name
        .get(&name)
        .ok_or_else(|| ApiError::model_not_found(&name, &models.names()))?;
    Ok(json(&models.object(&state, *entry)))
}

/// Liveness: 200 once every model is loaded and while every model's worker runs; 503
/// while loading or once a worker has stopped (the process should be restarted).
#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "Models still loading, or a model's worker stopped", body = crate::error::ErrorResponse),
    )
)]
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> AppResult<Response> {
    let models = state.ready()?;
    models.check_workers()?;
    let names = models.names().into_iter().map(str::to_string).collect();
    Ok(json(&Health { status: "ok", models: names, indexes: None }))
}

/// How long `/ready` waits for the indexes' databases to answer.
const READY_PROBE: Duration = Duration::from_secs(3);

/// Readiness: what `/health` checks, plus every worker making progress (none on one
/// batch past the request timeout) and every index's store answering (a PostgreSQL
/// index's database reachable within 3 s). A load balancer stops sending work to a
/// replica whose model is stuck or whose database is gone, without restarting it.
#[utoipa::path(
    get,
    path = "/ready",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "Models still loading, a model's worker stopped or stuck on one batch, or an index's database unreachable", body = crate::error::ErrorResponse),
    )
)]
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> AppResult<Response> {
    let models = state.ready()?;
    models.check_workers()?;
    models.check_progress(state.config.request_timeout)?;
    let probe = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.ready().map(|m| m.indexes.unreachable()))
    };
    let unreachable = match tokio::time::timeout(READY_PROBE, probe).await {
        Ok(Ok(Ok(unreachable))) => unreachable,
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => return Err(ApiError::internal("the index probe failed")),
        Err(_) => {
            return Err(ApiError::unavailable(
                format!("the indexes' databases did not answer within {} s", READY_PROBE.as_secs()),
                "index_unreachable",
            ))
        }
    };
    if !unreachable.is_empty() {
        let why: Vec<String> =
            unreachable.iter().map(|(name, e)| format!("index `{name}`: {e}")).collect();
        tracing::warn!(target: "sembase::ready", "not ready: {}", why.join("; "));
        return Err(ApiError::unavailable(why.join("; "), "index_unreachable"));
    }
    let names = models.names().into_iter().map(str::to_string).collect();
    Ok(json(&Health { status: "ok", models: names, indexes: Some(models.indexes.names()) }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 description of the API", content_type = "application/json")))]
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        crate::openapi::openapi_json().to_string(),
    )
        .into_response()
}

pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// `Authorization: Bearer <key>` on the protected routes, when a key is set: the admin
/// key for index writes when one is set, the API key for everything else.
pub(crate) async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let config = &state.config;
    let (key, which) = match &config.admin_key {
        Some(admin) if is_index_write(&request) => (Some(admin), "admin key"),
        _ => (config.api_key.as_ref(), "API key"),
    };
    if let Some(key) = key {
        let given =
            request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(
                |v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                },
            );
        match given {
            None => {
                return ApiError::unauthorized(format!(
                    "no {which} given; send `Authorization: Bearer <key>`"
                ))
                .into_response();
            }
            Some(token) if !constant_time_eq(token.as_bytes(), key.as_bytes()) => {
                return ApiError::unauthorized(format!("incorrect {which}")).into_response();
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

/// Whether the request changes an index (adds or deletes documents).
fn is_index_write(request: &Request) -> bool {
    let path = request.uri().path();
    request.method() != Method::GET
        && path.starts_with("/v1/indexes/")
        && path.ends_with("/documents")
}

/// Compares without an early exit, so the time taken does not tell how much matched
/// (only whether the lengths differ).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Holds a slot of the concurrency limit until dropped.
struct Slot(Arc<Metrics>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Admission to the work routes: the body is read first (under the size limit and the
/// body timeouts, so a slow client holds no compute slot), then a slot of the concurrency
/// limit is taken (429 beyond it), and the handler runs under the request timeout (503
/// past it; dropping the handler drops its queued jobs).
pub(crate) async fn admit(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let config = &state.config;
    let (parts, body) = request.into_parts();
    let body =
        match crate::body::read(&parts.headers, body, config.max_body_bytes, config.body).await {
            Ok(body) => body,
            Err(e) => return e.into_response(),
        };
    let request = Request::from_parts(parts, Body::from(body));
    let limit = config.max_concurrent_requests;
    let before = state.metrics.in_flight.fetch_add(1, Ordering::AcqRel);
    let _slot = Slot(state.metrics.clone());
    if before >= limit {
        return ApiError::overloaded(limit).into_response();
    }
    match tokio::time::timeout(config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::request_timeout(config.request_timeout).into_response(),
    }
}
