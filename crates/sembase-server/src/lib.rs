//! sembase-server: an OpenAI-compatible HTTP API over [`sembase_core::Embedder`]s.
//!
//! Routes: `POST /v1/embeddings`, `POST /v1/rerank` and TEI's `POST /rerank`
//! (cross-encoders, see [`Attachments::rerankers`]), `POST /v1/classify` (task heads, see [`HeadSpec`]),
//! `POST /v1/search` and `POST|DELETE /v1/indexes/{name}/documents` (corpus indexes, see [`IndexSpec`]),
//! `GET /v1/indexes`, `GET /v1/models`, `GET /v1/models/{model}`, `POST /tokenize`,
//! `GET /health`, `GET /metrics` (Prometheus), `GET /openapi.json`; evaluation reports
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
mod classify;
pub mod error;
mod handlers;
pub mod metrics;
mod openapi;
mod reports;
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

pub use classify::HeadSpec;
pub use error::{ApiError, ErrorBody, ErrorResponse, ServerError};
pub use openapi::openapi_json;
pub use search::IndexSpec;

use batcher::{Batcher, Linger};

/// A batch waiting for more requests runs once none has arrived for this long.
const BATCH_ARRIVAL_GAP: Duration = Duration::from_millis(1);
use metrics::Metrics;

/// Limits and settings of a server.
#[derive(Clone)]
pub struct ServerConfig {
    /// When set, `/v1/*` and `/tokenize` need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
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
            max_batch_tokens: 16384,
            max_batch_wait: Duration::from_millis(5),
            max_concurrent_requests: 512,
            max_inputs: 2048,
            max_body_bytes: 8 << 20,
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
            .field("max_batch_tokens", &self.max_batch_tokens)
            .field("max_batch_wait", &self.max_batch_wait)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_inputs", &self.max_inputs)
            .field("max_body_bytes", &self.max_body_bytes)
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
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ServerError::Config(format!("{name} must be at least 1")));
            }
        }
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(ServerError::Config("the API key is empty".into()));
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
        let linger = Linger { max: config.max_batch_wait, gap: BATCH_ARRIVAL_GAP };
        let metrics = self.state.metrics.model(model.name());
        Ok(Batcher::start(model, config.max_batch_tokens, linger, metrics)?)
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
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                handlers::limit_concurrency,
            ));
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
            .route("/metrics", get(handlers::metrics))
            .route("/openapi.json", get(handlers::openapi));
        // The page loads without a key; the API calls it makes still need one.
        let open = if self.state.config.ui { open.merge(ui::routes()) } else { open };
        protected
            .merge(open)
            .fallback(handlers::not_found)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(state.clone(), handlers::track))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting,
    /// finishes the requests in flight and returns.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let app = self.router();
        drop(self);
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
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
