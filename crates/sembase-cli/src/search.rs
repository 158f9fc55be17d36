//! `sembase search`: the nearest documents of an index for query texts (or vectors),
//! optionally reordered by a cross-encoder (`--rerank`).

use std::io::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use sembase_index::index::embed_queries;
use sembase_index::npy::read_npy_f32;
use sembase_index::{Access, Filter, Index, Metadata};
use serde::Serialize;

use crate::index_model::IndexModelArgs;
use crate::models::load_reranker;
use crate::search_rerank::{rerank_all, rerank_depth, Shown};
use sembase_embed::durable::AtomicFile;
use sembase_eval::results::RerankInfo;

#[derive(Args)]
pub struct SearchArgs {
    /// The index directory.
    #[arg(long)]
    index: PathBuf,
    /// One query.
    #[arg(long, conflicts_with_all = ["queries", "query_vectors"])]
    query: Option<String>,
    /// Queries: one per line, or `.jsonl` with "text".
    #[arg(long, conflicts_with = "query_vectors")]
    queries: Option<PathBuf>,
    /// Query vectors made beforehand (`sembase embed` with the index's query prefix), `.npy`.
    #[arg(long, value_name = "FILE.npy")]
    query_vectors: Option<PathBuf>,
    /// Hits per query.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Only documents whose metadata has these values, e.g. '{"lang": "en"}'.
    #[arg(long, value_name = "JSON")]
    filter: Option<String>,
    /// Write {"results": [{"query", "hits": [{"id", "score", "text", "metadata"}]}], "search_seconds"}.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    /// Queries per call into the store (default: all at once); 1 measures one
    /// query at a time, as a server sees them.
    #[arg(long)]
    batch: Option<usize>,
    /// ann and postgres: candidates searched per query (HNSW ef) instead of the default.
    #[arg(long)]
    expansion_search: Option<usize>,
    /// A cross-encoder (store name or directory) that reorders each query's top
    /// candidates; hits' "score" is then its relevance.
    #[arg(long, value_name = "MODEL", conflicts_with = "query_vectors")]
    rerank: Option<String>,
    /// Candidates retrieved per query for --rerank (default: the larger of --top-k and 50).
    #[arg(long, value_name = "K", requires = "rerank")]
    rerank_depth: Option<NonZeroUsize>,
    #[command(flatten)]
    model: IndexModelArgs,
}

#[derive(Serialize)]
struct QueryResult<'a> {
    query: &'a str,
    hits: Vec<JsonHit<'a>>,
}

#[derive(Serialize)]
struct JsonHit<'a> {
    id: &'a str,
    score: f32,
    /// Reranked: the cosine similarity of retrieval, and its 1-based rank there.
    #[serde(skip_serializing_if = "Option::is_none")]
    retrieval_score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retrieval_rank: Option<usize>,
    text: &'a str,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    metadata: &'a Metadata,
}

pub fn run(args: SearchArgs) -> Result<()> {
    args.model.apply_threads();
    let index = Index::open_tuned(&args.index, Access::Read, args.expansion_search)
        .with_context(|| format!("opening {}", args.index.display()))?;
    let filter = args.filter.as_deref().map(parse_filter).transpose()?;
    let reranker = args
        .rerank
        .as_deref()
        .map(|spec| load_reranker(spec, args.model.batch_tokens()))
        .transpose()?;
    let depth = match &reranker {
        None => args.top_k,
        Some(_) => rerank_depth(args.rerank_depth, args.top_k)?,
    };
    let (labels, vectors) = match (&args.query, &args.queries, &args.query_vectors) {
        (_, _, Some(path)) => {
            let vectors = read_npy_f32(path)?;
            ((0..vectors.len()).map(|i| format!("#{i}")).collect(), vectors)
        }
        (Some(q), _, _) => embed(&index, &args, vec![q.clone()])?,
        (_, Some(path), _) => embed(&index, &args, read_queries(path)?)?,
        _ => bail!("give --query TEXT, --queries FILE or --query-vectors FILE.npy"),
    };
    let vectors: Vec<Vec<f32>> = vectors.into_iter().map(unit).collect();
    let started = Instant::now();
    let mut results = Vec::with_capacity(vectors.len());
    for chunk in vectors.chunks(args.batch.unwrap_or(vectors.len()).max(1)) {
        results.extend(index.store().search(chunk, depth, filter.as_ref())?);
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} queries searched in {seconds:.3}s ({:.0} queries/s)",
        vectors.len(),
        vectors.len() as f64 / seconds.max(1e-9)
    );
    let (results, rerank) = match &reranker {
        None => (
            results.into_iter().map(|h| h.into_iter().map(Shown::retrieved).collect()).collect(),
            None,
        ),
        Some(model) => {
            let (results, info) = rerank_all(model, depth, &labels, results, args.top_k)?;
            (results, Some(info))
        }
    };
    if let Some(path) = &args.json {
        write_json(path, &labels, &results, seconds, rerank.as_ref())?;
    } else {
        print_results(&labels, &results)?;
    }
    Ok(())
}

/// Embeds query texts with the index's model and query prefix.
fn embed(
    index: &Index,
    args: &SearchArgs,
    queries: Vec<String>,
) -> Result<(Vec<String>, Vec<Vec<f32>>)> {
    let model = args.model.load(index.settings())?;
    let vectors = embed_queries(&model, index.settings(), &queries)?;
    Ok((queries, vectors))
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    sembase_core::vectors::normalize(&mut v);
    v
}

/// Query texts: one per line, or JSONL objects with "text".
fn read_queries(path: &std::path::Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let jsonl = sembase_index::corpus::is_jsonl(path);
    let mut queries = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if !jsonl {
            queries.push(line.to_string());
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        match value.get("text").and_then(|t| t.as_str()) {
            Some(t) => queries.push(t.to_string()),
            None => bail!("{} line {}: no \"text\" string", path.display(), i + 1),
        }
    }
    Ok(queries)
}

fn parse_filter(json: &str) -> Result<Filter> {
    let value: serde_json::Value = serde_json::from_str(json).context("--filter is not JSON")?;
    let Some(object) = value.as_object() else { bail!("--filter must be a JSON object") };
    Ok(Filter::new(object.clone())?)
}

/// The `--json` document; reranked, with `"rerank": {"model", "depth", "pairs", "seconds"}`.
fn write_json(
    path: &std::path::Path,
    labels: &[String],
    results: &[Vec<Shown>],
    seconds: f64,
    rerank: Option<&RerankInfo>,
) -> Result<()> {
    let results: Vec<QueryResult> = labels
        .iter()
        .zip(results)
        .map(|(q, hits)| QueryResult {
            query: q,
            hits: hits
                .iter()
                .map(|s| JsonHit {
                    id: &s.hit.id,
                    score: s.score,
                    retrieval_score: s.retrieval_rank.map(|_| s.hit.score),
                    retrieval_rank: s.retrieval_rank,
                    text: &s.hit.text,
                    metadata: &s.hit.metadata,
                })
                .collect(),
        })
        .collect();
    let mut document = serde_json::json!({"results": results, "search_seconds": seconds});
    if let Some(info) = rerank {
        document["rerank"] = serde_json::to_value(info)?;
    }
    let mut file = AtomicFile::create(path)?;
    serde_json::to_writer(&mut file, &document)?;
    writeln!(file)?;
    Ok(file.commit()?)
}

/// Each query, then its hits; a reranked hit also shows `(#R COSINE)`, where retrieval had it.
fn print_results(labels: &[String], results: &[Vec<Shown>]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for (q, hits) in labels.iter().zip(results) {
        writeln!(out, "{q}")?;
        for (rank, s) in hits.iter().enumerate() {
            let retrieval = match s.retrieval_rank {
                Some(r) => format!("(#{r} {:.4})  ", s.hit.score),
                None => String::new(),
            };
            writeln!(
                out,
                "  {:>3}. {:.4}  {retrieval}{}  {}",
                rank + 1,
                s.score,
                s.hit.id,
                s.hit.text
            )?;
        }
    }
    Ok(())
}
