//! `sembase eval`: models side by side on sts, pairs and retrieval tasks.

use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sembase_core::Embedder;
use sembase_eval::cache::EmbeddingCache;
use sembase_eval::encode::{Encoder, EvalModel, Progress};
use sembase_eval::evaluate::{evaluate_with, Search, Settings};
use sembase_eval::remote::{is_remote, RemoteEmbedder, RemoteOptions};
use sembase_eval::report::write_report;
use sembase_eval::rerank::Rerank;
use sembase_eval::results::{format_value, short_task, EvalResult, EvalResults, Metrics};
use sembase_eval::tasks::{Task, TaskKind, TaskSpec};
use sembase_index::AnnParams;

use crate::models::{load_local, load_reranker, ComputeArgs, Quantize};

/// Documents per query a cross-encoder reranks when `--rerank-depth` is not given:
/// BEIR's reranking protocol (top 100), which is also the deepest cut-off measured
/// (map@100, recall@100), so every figure sees the reranked order.
const RERANK_DEPTH: usize = 100;

#[derive(Args)]
pub struct EvalArgs {
    /// A store name, a model directory, or a remote `openai:BASE_URL#MODEL` (key from
    /// SEMBASE_EVAL_API_KEY or OPENAI_API_KEY). Repeat to compare models.
    #[arg(long = "model", value_name = "M")]
    models: Vec<String>,
    /// `sts:FILE.tsv`, `pairs:FILE.tsv` or `retrieval:DIR` (BEIR layout). Repeatable.
    #[arg(long = "task", value_name = "KIND:PATH")]
    tasks: Vec<String>,
    /// Widths to evaluate at, comma separated (Matryoshka truncation); default: the model's.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    dimensions: Vec<usize>,
    /// Put before queries, and before both sentences of sts and pairs (e.g. "query: ");
    /// default: a local model's default prompt, if its directory names one.
    #[arg(long)]
    query_prefix: Option<String>,
    /// Put before retrieval corpus documents (e.g. "passage: "); default as --query-prefix.
    #[arg(long)]
    doc_prefix: Option<String>,
    /// Write every figure as JSON.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report.
    #[arg(long, value_name = "OUT.html")]
    report: Option<PathBuf>,
    /// Write the tables as markdown.
    #[arg(long, value_name = "OUT.md")]
    markdown: Option<PathBuf>,
    /// Results of earlier runs (their --json) to put beside this run's in the
    /// table, --json, --report and --markdown. Repeatable.
    #[arg(long = "from-json", value_name = "FILE")]
    from_json: Vec<PathBuf>,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Quantise local models' weights (int8: encoders on the CPU).
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
    /// Inputs per request to a remote endpoint.
    #[arg(long, default_value_t = 64)]
    remote_batch: usize,
    /// How retrieval tasks search: `flat` (exact) or `ann` (the index's usearch
    /// HNSW graph, reporting its recall against exact search on the same vectors).
    #[arg(long, default_value = "flat", value_parser = ["flat", "ann"])]
    store: String,
    /// ann: candidates searched per query (HNSW ef).
    #[arg(long, default_value_t = AnnParams::default().expansion_search)]
    expansion_search: usize,
    /// Do not read or write the embedding cache ($SEMBASE_HOME/cache).
    #[arg(long)]
    no_cache: bool,
    /// A cross-encoder (store name or directory) that reranks each model's top
    /// documents per query on retrieval tasks; "metrics" are then the reranked
    /// figures and "before" the model's own.
    #[arg(long, value_name = "MODEL")]
    rerank: Option<String>,
    /// Documents per query the cross-encoder reranks (default 100); the ones below
    /// keep the model's order after them.
    #[arg(long, value_name = "K", requires = "rerank")]
    rerank_depth: Option<NonZeroUsize>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    args.compute.apply_threads();
    if args.models.is_empty() && args.from_json.is_empty() {
        bail!("give at least one --model (or --from-json with earlier results)");
    }
    if !args.models.is_empty() && args.tasks.is_empty() {
        bail!("give at least one --task KIND:PATH (sts:FILE.tsv, pairs:FILE.tsv or retrieval:DIR)");
    }
    if args.models.is_empty() && !args.tasks.is_empty() {
        bail!("--task needs at least one --model");
    }

    let search = match args.store.as_str() {
        "ann" => Search::Ann(AnnParams {
            expansion_search: args.expansion_search,
            ..AnnParams::default()
        }),
        _ => Search::Exact,
    };
    let mut results = EvalResults::default();
    for path in &args.from_json {
        results.results.extend(EvalResults::read_json(path)?.results);
    }

    // Load every task first, so that data problems show before any model work.
    let mut tasks = Vec::new();
    let mut notes = Vec::new();
    for spec in &args.tasks {
        let spec: TaskSpec = spec.parse()?;
        let task = Task::load(&spec)?;
        for note in task.notes() {
            eprintln!("note: {}: {note}", spec.name);
            notes.push(format!("{}: {note}", short_task(&spec.name)));
        }
        if args.rerank.is_some() && spec.kind != TaskKind::Retrieval {
            bail!("--rerank applies to retrieval tasks only, not {}", spec.name);
        }
        tasks.push(task);
    }
    let reranker =
        args.rerank.as_deref().map(|m| load_reranker(m, args.compute.batch_tokens)).transpose()?;
    let rerank = reranker.as_ref().map(|r| Rerank {
        reranker: r,
        depth: args.rerank_depth.map_or(RERANK_DEPTH, NonZeroUsize::get),
    });

    let widths: Vec<Option<usize>> = if args.dimensions.is_empty() {
        vec![None]
    } else {
        args.dimensions.iter().map(|&d| Some(d)).collect()
    };
    let cache = if args.no_cache { None } else { EmbeddingCache::from_env() };
    let progress = CliProgress::new();
    for spec in &args.models {
        let (model, default_prompt) = open_model(spec, &args)?;
        if let Some(prompt) = &default_prompt {
            if args.query_prefix.is_none() || args.doc_prefix.is_none() {
                eprintln!("{spec}: its default prompt {prompt:?} goes where no prefix is given");
            }
        }
        let encoder = Encoder::new(&model, cache.as_ref(), &progress);
        for &width in &widths {
            encoder.check_dimensions(width)?;
        }
        for task in &tasks {
            for &dimensions in &widths {
                let settings = Settings {
                    query_prefix: args.query_prefix.clone().or(default_prompt.clone()),
                    doc_prefix: args.doc_prefix.clone().or(default_prompt.clone()),
                    dimensions,
                };
                let result = evaluate_with(&encoder, task, &settings, search, rerank.as_ref())
                    .with_context(|| format!("{} on {}", model.name(), task.spec.name))?;
                log_result(&result);
                results.results.push(result);
            }
        }
        let (embedded, cached) = encoder.counts();
        eprintln!("{}: {embedded} texts embedded, {cached} from the cache", model.name());
    }

    print!("{}", results.terminal_table());
    if let Some(path) = &args.json {
        results.write_json(path)?;
    }
    if let Some(path) = &args.report {
        write_report(path, &results, &notes)?;
    }
    if let Some(path) = &args.markdown {
        write_markdown(path, &results.markdown_table())?;
    }
    Ok(())
}

/// One line of figures per result, and for a reranked one a line with the
/// figures before and what reranking cost.
fn log_result(result: &EvalResult) {
    let figures = |m: &Metrics| -> String {
        m.0.iter().map(|(n, v)| format!("{n} {}", format_value(*v))).collect::<Vec<_>>().join(", ")
    };
    eprintln!(
        "{} {} @{}: {} ({:.1}s)",
        result.model,
        short_task(&result.task),
        result.dimensions,
        figures(&result.metrics),
        result.seconds
    );
    if let (Some(before), Some(info)) = (&result.before, &result.rerank) {
        eprintln!(
            "  reranked by {} (top {}: {} pairs in {:.1}s, {:.0} pairs/s); before: {}",
            info.model,
            info.depth,
            info.pairs,
            info.seconds,
            info.pairs as f64 / info.seconds.max(1e-9),
            figures(before)
        );
    }
}

/// Loads a local model or connects to a remote one.
/// The model, and the prompt a local model's directory names as its default (which,
/// as in sentence-transformers, goes before every text no prefix flag covers).
fn open_model(spec: &str, args: &EvalArgs) -> Result<(EvalModel, Option<String>)> {
    if is_remote(spec) {
        let options =
            RemoteOptions { batch_size: args.remote_batch.max(1), ..RemoteOptions::default() };
        let embedder = RemoteEmbedder::connect(spec, options)?;
        let model = EvalModel {
            embedder: Box::new(embedder),
            cache_id: spec.to_string(),
            truncate_locally: false,
        };
        return Ok((model, None));
    }
    let dir = sembase_hub::Store::from_env()?.resolve(spec)?;
    let embedder = load_local(spec, None, args.compute.batch_tokens, args.quantize)?;
    // Quantised weights give other vectors: they are cached apart.
    let quantised = if args.quantize.is_some() { ":int8" } else { "" };
    let cache_id = format!(
        "local:{}:{}:{}{quantised}",
        dir.display(),
        fingerprint(&dir),
        embedder.dimension()
    );
    let default_prompt = embedder.default_prompt().map(str::to_string);
    Ok((
        EvalModel { embedder: Box::new(embedder), cache_id, truncate_locally: true },
        default_prompt,
    ))
}

/// Sizes and modification times of a model directory's files (two levels), so
/// the cache forgets vectors of a model whose files changed.
fn fingerprint(dir: &Path) -> String {
    let mut entries = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&d) else { continue };
        for entry in read.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() && depth < 1 {
                stack.push((path, depth + 1));
            } else if meta.is_file() {
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
                entries.push(format!("{name}={}@{mtime}", meta.len()));
            }
        }
    }
    entries.sort();
    entries.join(";")
}

/// Writes the markdown tables atomically (through the results writer's helper).
fn write_markdown(path: &Path, text: &str) -> Result<()> {
    sembase_embed::durable::write_bytes(path, text.as_bytes())?;
    Ok(())
}

/// A progress bar on a terminal; a log line per stage otherwise.
struct CliProgress {
    terminal: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl CliProgress {
    fn new() -> Self {
        Self { terminal: std::io::stderr().is_terminal(), bar: Mutex::new(None) }
    }
}

impl Progress for CliProgress {
    fn start(&self, what: &str, total: usize) {
        if !self.terminal {
            eprintln!("{}: {total} to do", short_task(what));
            return;
        }
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} {per_sec} eta {eta}")
                .expect("valid template"),
        );
        bar.set_message(short_task(what));
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }

    fn advance(&self, n: usize) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            bar.inc(n as u64);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}
