//! `sembase rerank`: candidates ordered by a cross-encoder's relevance to one query.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use sembase_embed::durable::AtomicFile;
use sembase_embed::reranker::ranked;
use sembase_embed::{Reranker, Truncation};
use serde::Serialize;

use crate::embed_input::{read_inputs, InputFormat};
use crate::models::{load_reranker, ComputeArgs};

#[derive(Args)]
pub struct RerankArgs {
    /// A cross-encoder: a store name or a directory (a `*ForSequenceClassification` checkpoint).
    #[arg(long)]
    model: String,
    /// The query the candidates are scored against.
    #[arg(long)]
    query: String,
    /// Candidates: one per line, or `.jsonl` with "text" (and optional "id"); `-` is stdin.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Input layout, when the file name does not tell.
    #[arg(long, value_enum)]
    input_format: Option<InputFormat>,
    /// Keep the N most relevant candidates (default: all).
    #[arg(long, value_name = "N")]
    top_n: Option<usize>,
    /// Write {"model", "query", "results": [{"index", "score", "text"}], "pairs", "seconds"}
    /// instead of printing.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    #[command(flatten)]
    compute: ComputeArgs,
}

/// One ranked candidate: its 0-based position in the input and its relevance score.
#[derive(Serialize)]
struct Ranked<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    score: f32,
    text: &'a str,
}

pub fn run(args: RerankArgs) -> Result<()> {
    args.compute.apply_threads();
    if args.query.trim().is_empty() {
        bail!("--query is empty");
    }
    // `-` is stdin, as `read_inputs` reads it without a path.
    let path = (args.input != Path::new("-")).then_some(args.input.as_path());
    let format = args.input_format.unwrap_or(InputFormat::guess(path));
    let candidates = read_inputs(path, format)?;
    if candidates.is_empty() {
        bail!("no candidates in {}", path.map_or("stdin".into(), |p| p.display().to_string()));
    }
    // Created first, so that an unwritable --json fails before the model loads.
    let json = args.json.as_deref().map(AtomicFile::create).transpose()?;
    let model = load_reranker(&args.model, args.compute.batch_tokens)?;
    let started = Instant::now();
    let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
    let scores = model.rerank(&args.query, &texts, Truncation::Truncate)?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} pairs scored in {seconds:.3}s ({:.0} pairs/s)",
        texts.len(),
        texts.len() as f64 / seconds.max(1e-9)
    );
    let results: Vec<Ranked> = ranked(&scores)
        .into_iter()
        .take(args.top_n.unwrap_or(candidates.len()))
        .map(|index| {
            let c = &candidates[index];
            Ranked { index, id: c.id.as_deref(), score: scores[index], text: &c.text }
        })
        .collect();
    match json {
        Some(file) => {
            let pairs = candidates.len();
            let report =
                Report { model: model.name(), query: &args.query, results, pairs, seconds };
            write_json(file, &report)
        }
        None => print_lines(&results),
    }
}

/// The `--json` document; `pairs` and `seconds` are what scoring took (all candidates).
#[derive(Serialize)]
struct Report<'a> {
    model: &'a str,
    query: &'a str,
    results: Vec<Ranked<'a>>,
    pairs: usize,
    seconds: f64,
}

fn write_json(mut file: AtomicFile, report: &Report) -> Result<()> {
    serde_json::to_writer(&mut file, report)?;
    writeln!(file)?;
    Ok(file.commit()?)
}

/// `score<TAB>index<TAB>text`, best first; line breaks inside a (JSONL) text
/// print as spaces so that every candidate stays one line (--json keeps them).
fn print_lines(results: &[Ranked]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for r in results {
        let text = r.text.replace(['\r', '\n'], " ");
        writeln!(out, "{:.6}\t{}\t{text}", r.score, r.index)?;
    }
    Ok(())
}
