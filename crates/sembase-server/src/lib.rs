//! sembase-server: an OpenAI-compatible HTTP API over [`sembase_core::Embedder`]s.
//!
//! Routes: `POST /v1/embeddings`, `POST /v1/rerank` and TEI's `POST /rerank`
//! (cross-encoders, see [`Attachments::rerankers`]), `POST /v1/classify` (task heads, see [`HeadSpec`]),
//! `POST /v1/search` and `POST|DELETE /v1/indexes/{name}/documents` (corpus indexes, see [`IndexSpec`]),
//! `GET /v1/indexes`, `GET /v1/models`, `GET /v1/models/{model}`, `POST /tokenize`,
//! `GET /health` (liveness), `GET /ready` (readiness), `GET /metrics` (Prometheus), `GET /openapi.json`; evaluation reports
//! at `GET /v1/reports` and `GET /reports/{name}` (see [`ServerConfig::reports`]); and
//! the page at `GET /` (see [`ServerConfig::ui`]).
//!
//! Each model (embedder or reranker) gets a worker thread fed by a queue (see
//! [`batcher`](crate::batcher)): requests are tokenized in the handler, then merged
//! with other waiting requests into batches of at most `max_batch_tokens` tokens, so a
//! burst of small requests shares forward passes while the async runtime stays free for I/O.
//!
//! ```no_run
//! # async fn run(model: std::sync::Arc<dyn sembase_core::Embedder>) -> Result<(), sembase_server::ServerError> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! sembase_server::serve(
//!     sembase_server::ServerConfig::default(),
//!     vec![sembase_server::ModelSpec::new(model)],
//!     listener,
//!     sembase_server::shutdown_signal(),
//! )
//! .await
//! # }
//! ```

pub mod api;
mod batcher;
mod body;
mod budget;
mod classify;
mod connections;
pub mod error;
mod handlers;
mod integral;
pub mod metrics;
mod openapi;
mod reports;
mod request_log;
mod rerank;
mod search;
mod ui;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::{get, post};
use axum::Router;
use sembase_core::Embedder;
use sembase_embed::Reranker;

use crate::api::ModelKind;

pub use body::BodyTimeouts;
pub use classify::HeadSpec;
pub use error::{ApiError, ErrorBody, ErrorResponse, ServerError};
pub use openapi::openapi_json;
pub use search::IndexSpec;

use batcher::{Batcher, Linger, QueueSettings};

/// A batch waiting for more requests runs once none has arrived for this long.
const BATCH_ARRIVAL_GAP: Duration = Duration::from_millis(1);
use metrics::Metrics;

/// Limits and settings of a server.
#[derive(Clone)]
pub struct ServerConfig {
    /// When set, `/v1/*` and `/tokenize` need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// When set, index writes (`POST|DELETE /v1/indexes/{name}/documents`) need this key
    /// instead of `api_key`, so that clients that search cannot change the corpus.
    pub admin_key: Option<String>,
    /// Tokens per merged batch handed to the model.
    pub max_batch_tokens: usize,
    /// The longest a batch below `max_batch_tokens` waits for more requests to join it
    /// (it stops waiting early once no request has arrived for a millisecond).
    pub max_batch_wait: Duration,
    /// Embedding and tokenize requests handled at once; more get 429.
    pub max_concurrent_requests: usize,
    /// Inputs per request (texts to embed, or documents to rerank).
    pub max_inputs: usize,
    /// Bytes per request body (413 above).
    pub max_body_bytes: usize,
    /// Tokens one request may have run, counted after truncation (413 above); OpenAI
    /// documents the same cap of 300,000 per embeddings request.
    pub max_request_tokens: usize,
    /// Tokens a model's queue may hold; a request that would go past it gets 503 with
    /// `Retry-After`.
    pub max_queue_tokens: usize,
    /// The longest a request may wait in a model's queue before its first batch (503 with
    /// `Retry-After` past it).
    pub queue_timeout: Duration,
    /// The longest a work request may take once its body is in (503 past it).
    pub request_timeout: Duration,
    /// How long a request body may take to arrive (408 past it).
    pub body: BodyTimeouts,
    /// How long a connection may take to send a request's headers (it is closed past it).
    pub header_timeout: Duration,
    /// How long a shutdown waits for requests in flight before closing their connections.
    pub drain_timeout: Duration,
    /// Hits one search request may ask for: queries times `top_k` (or the rerank depth).
    pub max_search_hits: usize,
    /// Cut inputs (and rerank pairs) over the model's token limit (true), or refuse them
    /// with a 400 (false). A rerank request's `truncate` overrides it.
    pub truncate: bool,
    /// Serve the page at `/` (and its files under `/ui/`); off, `/` answers 404.
    pub ui: bool,
    /// A directory of evaluation reports (`*.html`) to list and serve; none by default.
    pub reports: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            admin_key: None,
            max_batch_tokens: 16384,
            max_batch_wait: Duration::from_millis(5),
            max_concurrent_requests: 512,
            max_inputs: 2048,
            max_body_bytes: 8 << 20,
            max_request_tokens: 300_000,
            max_queue_tokens: 1_000_000,
            queue_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            body: BodyTimeouts::default(),
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_search_hits: 10_000,
            truncate: true,
            ui: true,
            reports: None,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<set>"))
            .field("max_batch_tokens", &self.max_batch_tokens)
            .field("max_batch_wait", &self.max_batch_wait)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_inputs", &self.max_inputs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_request_tokens", &self.max_request_tokens)
            .field("max_queue_tokens", &self.max_queue_tokens)
            .field("queue_timeout", &self.queue_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("body", &self.body)
            .field("header_timeout", &self.header_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("max_search_hits", &self.max_search_hits)
            .field("truncate", &self.truncate)
            .field("ui", &self.ui)
            .field("reports", &self.reports)
            .finish()
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ServerError> {
        let positive = [
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_inputs", self.max_inputs),
            ("max_body_bytes", self.max_body_bytes),
            ("max_request_tokens", self.max_request_tokens),
            ("max_queue_tokens", self.max_queue_tokens),
            ("max_search_hits", self.max_search_hits),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ServerError::Config(format!("{name} must be at least 1")));
            }
        }
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(ServerError::Config("the API key is empty".into()));
        }
        if self.admin_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(ServerError::Config("the admin key is empty".into()));
        }
        let durations = [
            ("queue_timeout", self.queue_timeout),
            ("request_timeout", self.request_timeout),
            ("body.total", self.body.total),
            ("header_timeout", self.header_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                return Err(ServerError::Config(format!("{name} must be longer than zero")));
            }
        }
        if let Some(dir) = &self.reports {
            if !dir.is_dir() {
                return Err(ServerError::Config(format!(
                    "the reports directory {} is not a directory",
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}

/// A model to serve: the embedder plus the named prompts a request may pick.
#[derive(Clone)]
pub struct ModelSpec {
    pub embedder: Arc<dyn Embedder>,
    /// Named prompts (`query` -> `query: `), selectable with `prompt_name`.
    pub prompts: HashMap<String, String>,
    /// Put before every text input when the request names no prompt.
    pub default_prompt: Option<String>,
}

impl ModelSpec {
    /// A model without prompts.
    pub fn new(embedder: Arc<dyn Embedder>) -> Self {
        Self { embedder, prompts: HashMap::new(), default_prompt: None }
    }
}

/// What is served beside the embedding models (see [`Server::set_models_with`]).
#[derive(Default)]
pub struct Attachments {
    /// Classification heads for `POST /v1/classify`; each one's base model must be served.
    pub heads: Vec<HeadSpec>,
    /// Corpus indexes for `POST /v1/search`; each one's model must be served.
    pub indexes: Vec<IndexSpec>,
    /// Cross-encoders for `POST /v1/rerank`, `POST /rerank` and the rerank stage of
    /// `POST /v1/search`, listed with the models; the first answers requests that name
    /// none. Their names share one namespace with the embedding models'.
    pub rerankers: Vec<Arc<dyn Reranker>>,
}

/// A loaded model with its queue.
pub(crate) struct ServedModel {
    pub embedder: Arc<dyn Embedder>,
    pub prompts: HashMap<String, String>,
    pub default_prompt: Option<String>,
    pub batcher: Batcher<batcher::Embedding>,
}

/// The served models, in the order given; the first embedder answers embedding
/// requests that name no model, the first reranker rerank requests.
pub(crate) struct Models {
    pub list: Vec<ServedModel>,
    pub rerankers: Vec<rerank::ServedReranker>,
    /// Every model's name, embedders and rerankers alike.
    pub by_name: HashMap<String, handlers::Entry>,
    pub heads: classify::Heads,
    pub indexes: search::Indexes,
}

/// What every handler shares.
pub(crate) struct AppState {
    pub config: ServerConfig,
    pub metrics: Arc<Metrics>,
    pub models: OnceLock<Models>,
    pub started_unix: u64,
}

/// A server: routes and shared state. Cheap to clone; models can be set after it
/// starts listening (`/health` answers 503 until then).
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// A server with no models yet.
    pub fn new(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        let started_unix =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(Self {
            state: Arc::new(AppState {
                config,
                metrics: Arc::new(Metrics::default()),
                models: OnceLock::new(),
                started_unix,
            }),
        })
    }

    /// Installs the models and starts one worker thread each; from then on the
    /// server is ready. Can be called once.
    pub fn set_models(&self, models: Vec<ModelSpec>) -> Result<(), ServerError> {
        self.set_models_with(models, Attachments::default())
    }

    /// [`set_models`](Self::set_models), plus what is served on top of the models;
    /// an attachment whose model is not among `models` is refused and nothing is installed.
    pub fn set_models_with(
        &self,
        models: Vec<ModelSpec>,
        attachments: Attachments,
    ) -> Result<(), ServerError> {
        if models.is_empty() && attachments.rerankers.is_empty() {
            return Err(ServerError::NoModels);
        }
        if self.state.models.get().is_some() {
            return Err(ServerError::AlreadyLoaded);
        }
        let entry = |kind, index| handlers::Entry { kind, index };
        let embedders = models
            .iter()
            .enumerate()
            .map(|(i, spec)| (spec.embedder.name(), entry(ModelKind::Embedding, i)));
        let rerankers = attachments
            .rerankers
            .iter()
            .enumerate()
            .map(|(i, reranker)| (reranker.name(), entry(ModelKind::Reranker, i)));
        let mut by_name = HashMap::new();
        for (name, entry) in embedders.chain(rerankers) {
            if by_name.insert(name.to_string(), entry).is_some() {
                return Err(ServerError::DuplicateModel(name.to_string()));
            }
        }
        let heads = classify::Heads::bind(attachments.heads, &models)?;
        let indexes = search::Indexes::bind(attachments.indexes, &models)?;
        let mut rerankers = Vec::with_capacity(attachments.rerankers.len());
        for reranker in attachments.rerankers {
            let batcher = self.start_batcher(batcher::Reranking(reranker.clone()))?;
            let metrics = self.state.metrics.model(reranker.name());
            rerankers.push(rerank::ServedReranker { reranker, batcher, metrics });
        }
        let mut list = Vec::with_capacity(models.len());
        for spec in models {
            let batcher = self.start_batcher(batcher::Embedding(spec.embedder.clone()))?;
            list.push(ServedModel {
                embedder: spec.embedder,
                prompts: spec.prompts,
                default_prompt: spec.default_prompt,
                batcher,
            });
        }
        self.state
            .models
            .set(Models { list, by_name, rerankers, heads, indexes })
            .map_err(|_| ServerError::AlreadyLoaded)
    }

    /// Starts the worker thread and queue of a model, under the server's batch settings.
    fn start_batcher<M: batcher::Queued>(&self, model: M) -> Result<Batcher<M>, ServerError> {
        let config = &self.state.config;
        let settings = QueueSettings {
            max_batch_tokens: config.max_batch_tokens,
            linger: Linger { max: config.max_batch_wait, gap: BATCH_ARRIVAL_GAP },
            max_queue_tokens: config.max_queue_tokens,
            queue_timeout: config.queue_timeout,
        };
        let metrics = self.state.metrics.model(model.name());
        Ok(Batcher::start(model, settings, metrics)?)
    }

    /// True once models are set.
    pub fn is_ready(&self) -> bool {
        self.state.models.get().is_some()
    }

    /// The Prometheus text `/metrics` would answer.
    pub fn metrics_text(&self) -> String {
        self.state.metrics.render()
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let work = Router::new()
            .route("/v1/embeddings", post(handlers::embeddings))
            .route("/v1/rerank", post(rerank::routes::rerank))
            .route("/rerank", post(rerank::routes::tei_rerank))
            .route("/v1/classify", post(classify::classify))
            .route("/v1/search", post(search::search))
            .route(
                "/v1/indexes/{name}/documents",
                post(search::upsert_documents).delete(search::delete_documents),
            )
            .route("/tokenize", post(handlers::tokenize))
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), handlers::admit));
        let listing = Router::new()
            .route("/v1/models", get(handlers::list_models))
            .route("/v1/models/{model}", get(handlers::get_model))
            .route("/v1/indexes", get(search::list_indexes))
            .route("/v1/reports", get(reports::list_reports))
            .route("/reports/{name}", get(reports::report));
        let protected = work.merge(listing).route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::require_api_key,
        ));
        let open = Router::new()
            .route("/health", get(handlers::health))
            .route("/ready", get(handlers::ready))
            .route("/metrics", get(handlers::metrics))
            .route("/openapi.json", get(handlers::openapi));
        // The page loads without a key; the API calls it makes still need one.
        let open = if self.state.config.ui { open.merge(ui::routes()) } else { open };
        protected
            .merge(open)
            .fallback(handlers::not_found)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(state.clone(), request_log::track))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting, gives the
    /// requests in flight up to `drain_timeout` to finish, and returns.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let app = self.router();
        let settings = connections::ConnectionSettings {
            header_timeout: self.state.config.header_timeout,
            drain_timeout: self.state.config.drain_timeout,
        };
        drop(self);
        connections::serve(listener, app, settings, shutdown).await;
        Ok(())
    }
}

/// The routes over already loaded models (for tests and embedding in other programs).
pub fn router(config: ServerConfig, models: Vec<ModelSpec>) -> Result<Router, ServerError> {
    let server = Server::new(config)?;
    server.set_models(models)?;
    Ok(server.router())
}

/// Serves already loaded models on `listener` until `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    models: Vec<ModelSpec>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let server = Server::new(config)?;
    server.set_models(models)?;
    server.serve(listener, shutdown).await
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
