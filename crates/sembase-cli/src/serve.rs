//! `sembase serve`: the OpenAI-compatible HTTP API over one or more models (embedding
//! models, and cross-encoders served as rerankers).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Args;
use sembase_embed::Reranker;
use sembase_heads::Head;
use sembase_index::{Access, Index};
use sembase_server::{
    Attachments, BodyTimeouts, HeadSpec, IndexSpec, ModelSpec, Server, ServerConfig,
};

use crate::index_model::model_identity;
use crate::models::{load_any, set_threads, AnyModel, Quantize};

#[derive(Args)]
pub struct ServeArgs {
    /// A store name or model directory (`NAME=SPEC` serves it under NAME); repeat to
    /// serve several (the first answers requests that name no model). A cross-encoder (a *ForSequenceClassification
    /// checkpoint) is served as a reranker: POST /v1/rerank, POST /rerank, and the
    /// rerank stage of POST /v1/search (the first reranker answers requests that name none).
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// A classification head for POST /v1/classify, served under NAME: a directory
    /// written by `sembase head train`, whose base model is one of the --model's. Repeatable.
    #[arg(long = "head", value_name = "NAME=DIR", value_parser = parse_named_dir)]
    heads: Vec<(String, PathBuf)>,
    /// A corpus index for POST /v1/search and document writes, served under NAME: a
    /// directory written by `sembase index build` whose model is one of the --model's
    /// (checked by fingerprint). The server holds its write lock. Repeatable.
    #[arg(long = "index", value_name = "NAME=DIR", value_parser = parse_named_dir)]
    indexes: Vec<(String, PathBuf)>,
    /// A directory of evaluation reports (the `*.html` files `sembase eval --report`
    /// writes), listed at GET /v1/reports and on the page, served at GET /reports/NAME.
    #[arg(long, value_name = "DIR")]
    reports: Option<PathBuf>,
    /// Do not serve the page at / (the playground: compare, search, classify, reports).
    #[arg(long)]
    no_ui: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the ready line tells which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* and /tokenize.
    #[arg(long, env = "SEMBASE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Require this key (instead of --api-key) for index writes: POST and DELETE
    /// /v1/indexes/NAME/documents.
    #[arg(long, env = "SEMBASE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Tokens per merged batch: requests from many clients are merged up to this, then
    /// run in forward passes of the device's size (1024 padded tokens on the CPU, 16384 on a GPU).
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Milliseconds a batch below --max-batch-tokens may wait for more requests to join
    /// it (it runs as soon as none has arrived for 1 ms); 0 runs what is queued at once.
    #[arg(long, default_value_t = 5)]
    max_batch_wait_ms: u64,
    /// Embedding requests handled at once; more get 429 with Retry-After.
    #[arg(long, default_value_t = 512)]
    max_concurrent_requests: usize,
    /// Inputs per request.
    #[arg(long, default_value_t = 2048)]
    max_inputs: usize,
    /// Request body size limit in bytes (413 above).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Tokens one request may have run, counted after truncation (413 above; OpenAI's
    /// per-request cap).
    #[arg(long, default_value_t = 300_000)]
    max_request_tokens: usize,
    /// Tokens a model's queue may hold; more get 503 with Retry-After.
    #[arg(long, default_value_t = 1_000_000)]
    max_queue_tokens: usize,
    /// Seconds a request may wait in a model's queue before it starts (503 with Retry-After).
    #[arg(long, default_value_t = 30)]
    queue_timeout_secs: u64,
    /// Seconds a request may run once its body is in (503 past it).
    #[arg(long, default_value_t = 300)]
    request_timeout_secs: u64,
    /// Seconds a request body may take to arrive (408 past it).
    #[arg(long, default_value_t = 60)]
    body_timeout_secs: u64,
    /// Bytes per second a body must average after its first 5 seconds (408 below it).
    #[arg(long, default_value_t = 1024)]
    min_body_rate: u64,
    /// Seconds a connection may take to send a request's headers (then it is closed).
    #[arg(long, default_value_t = 10)]
    header_timeout_secs: u64,
    /// Seconds a shutdown (SIGTERM, Ctrl-C) waits for requests in flight.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Hits one search may ask for: queries times top_k (or the rerank depth).
    #[arg(long, default_value_t = 10_000)]
    max_search_hits: usize,
    /// Log lines as text or as JSON objects (one per line), on stderr; RUST_LOG filters
    /// them (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Refuse inputs over the model's token limit with a 400 instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Override the models' token limit per input.
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Quantise the models' weights (int8: encoders on the CPU).
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log lines on stderr, filtered by RUST_LOG (default `info`). They are written by a
/// thread of their own from a bounded queue, dropping lines when it is full: a stderr
/// that nobody reads (a pipe whose reader is gone or busy) must not stall requests.
/// The guard flushes what is queued when dropped.
fn start_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(false);
    // Another subscriber already set (a test harness) is left in place.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}

/// Whether `host` is a loopback address (or `localhost`).
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub fn run(args: ServeArgs) -> Result<()> {
    let _log_guard = start_logging(args.log_format);
    set_threads(args.threads);
    if args.api_key.is_none() && !is_loopback(&args.host) {
        tracing::warn!(
            target: "sembase::server",
            "listening on {} without --api-key: anyone who can reach this address can use and change the server",
            args.host
        );
    }
    let heads = load_heads(&args.heads)?;
    let indexes = open_indexes(&args.indexes, &args.models)?;
    let server = Server::new(ServerConfig {
        api_key: args.api_key.clone(),
        admin_key: args.admin_key.clone(),
        max_batch_tokens: args.max_batch_tokens,
        max_batch_wait: std::time::Duration::from_millis(args.max_batch_wait_ms),
        max_concurrent_requests: args.max_concurrent_requests,
        max_inputs: args.max_inputs,
        max_body_bytes: args.max_body_bytes,
        max_request_tokens: args.max_request_tokens,
        max_queue_tokens: args.max_queue_tokens,
        queue_timeout: secs(args.queue_timeout_secs),
        request_timeout: secs(args.request_timeout_secs),
        body: BodyTimeouts {
            total: secs(args.body_timeout_secs),
            min_rate: args.min_body_rate,
            ..BodyTimeouts::default()
        },
        header_timeout: secs(args.header_timeout_secs),
        drain_timeout: secs(args.drain_timeout_secs),
        max_search_hits: args.max_search_hits,
        truncate: !args.no_truncate,
        ui: !args.no_ui,
        reports: args.reports.clone(),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let address = listener.local_addr()?;
        // Models load beside the listener: /health answers 503 until they are in.
        let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
        let (done, on_done) = tokio::sync::oneshot::channel::<()>();
        let loader = server.clone();
        let failure_slot = failure.clone();
        let specs = args.models.clone();
        let (max_seq_length, quantize) = (args.max_seq_length, args.quantize);
        std::thread::spawn(move || {
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                install_models(&loader, &specs, max_seq_length, quantize, heads, indexes)
            }))
            .unwrap_or_else(|panic| Err(anyhow::anyhow!("loading the models panicked: {}", panic_text(&panic))));
            match loaded {
                Ok(()) => {
                    tracing::info!(target: "sembase::server", "ready: listening on http://{address}");
                    println!("listening on http://{address}");
                }
                Err(e) => {
                    tracing::error!(target: "sembase::server", "loading the models failed: {e:#}");
                    *failure_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
            // Dropping the sender wakes the shutdown future whether loading worked or not.
            drop(done);
        });
        let load_failed = failure.clone();
        let shutdown = async move {
            tokio::select! {
                _ = sembase_server::shutdown_signal() => {}
                _ = on_done => {
                    let failed = load_failed.lock().unwrap_or_else(|p| p.into_inner()).is_some();
                    if !failed {
                        sembase_server::shutdown_signal().await;
                    }
                }
            }
        };
        server.serve(listener, shutdown).await?;
        let failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// Loads the models and hands them, with the heads and indexes, to the server.
fn install_models(
    server: &Server,
    specs: &[String],
    max_seq_length: Option<usize>,
    quantize: Option<Quantize>,
    heads: Vec<HeadSpec>,
    indexes: Vec<(String, Index, usize)>,
) -> Result<()> {
    let loaded = load_models(specs, max_seq_length, quantize)?;
    let indexes = indexes
        .into_iter()
        .map(|(name, index, model)| IndexSpec {
            name,
            index,
            model: loaded[model].name().to_string(),
        })
        .collect();
    let mut models = Vec::new();
    let mut rerankers = Vec::new();
    for model in loaded {
        match model {
            Served::Embedder(spec) => models.push(spec),
            Served::Reranker(reranker) => rerankers.push(reranker),
        }
    }
    server.set_models_with(models, Attachments { heads, indexes, rerankers })?;
    Ok(())
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// Seconds as a duration.
fn secs(seconds: u64) -> std::time::Duration {
    std::time::Duration::from_secs(seconds)
}

/// A loaded `--model`, ready for the server.
enum Served {
    Embedder(ModelSpec),
    Reranker(Arc<dyn Reranker>),
}

impl Served {
    fn name(&self) -> &str {
        match self {
            Served::Embedder(spec) => spec.embedder.name(),
            Served::Reranker(reranker) => reranker.name(),
        }
    }
}

/// Loads every `--model`, in order: embedding models with their prompts, cross-encoders
/// as rerankers.
fn load_models(
    specs: &[String],
    max_seq_length: Option<usize>,
    quantize: Option<Quantize>,
) -> Result<Vec<Served>> {
    specs
        .iter()
        .map(|spec| {
            Ok(match load_any(spec, max_seq_length, quantize)? {
                AnyModel::Embedder(model) => Served::Embedder(ModelSpec {
                    prompts: model.prompts().clone(),
                    default_prompt: model.default_prompt().map(str::to_string),
                    embedder: Arc::new(model),
                }),
                AnyModel::Reranker(model) => Served::Reranker(Arc::new(model)),
            })
        })
        .collect()
}

/// A `NAME=DIR` argument (as `--head` takes).
fn parse_named_dir(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!("expected NAME=DIR, got {value:?}")),
    }
}

/// Reads the head directories (before any model loads, so a bad one fails fast).
fn load_heads(heads: &[(String, PathBuf)]) -> Result<Vec<HeadSpec>> {
    heads
        .iter()
        .map(|(name, dir)| {
            let head = Head::load(dir)
                .with_context(|| format!("loading head `{name}` from {}", dir.display()))?;
            Ok(HeadSpec::new(name.clone(), head))
        })
        .collect()
}

/// Opens the index directories for writing (before any model loads, so a bad one
/// fails fast) and finds, by fingerprint, which served model made each one.
fn open_indexes(
    indexes: &[(String, PathBuf)],
    models: &[String],
) -> Result<Vec<(String, Index, usize)>> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let fingerprints: Vec<String> =
        models.iter().map(|m| Ok(model_identity(m)?.1.fingerprint)).collect::<Result<_>>()?;
    indexes
        .iter()
        .map(|(name, dir)| {
            let index = Index::open(dir, Access::Write).with_context(|| format!("opening index `{name}` at {}", dir.display()))?;
            let recorded = &index.settings().model;
            let Some(model) = fingerprints.iter().position(|f| *f == recorded.fingerprint) else {
                anyhow::bail!(
                    "index `{name}` ({}) was built with model {:?} (fingerprint {}), which is not served (--model {}); add --model {}",
                    dir.display(),
                    recorded.name,
                    recorded.fingerprint,
                    models.join(" --model "),
                    recorded.name
                );
            };
            Ok((name.clone(), index, model))
        })
        .collect()
}
