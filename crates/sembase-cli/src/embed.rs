//! `sembase embed`: texts in, vectors out, in input order.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sembase_core::{EmbedOptions, Embedder, LocalEmbedder, Truncation};

use crate::embed_input::{read_inputs, InputFormat};
use crate::embed_output::{write_jsonl, write_npy_header, write_npy_rows, OutputFormat};
use crate::models::{load_local, ComputeArgs, Quantize};
use sembase_embed::durable::AtomicFile;
use sembase_embed::prompts::resolve_prompt;

/// Inputs embedded per call into the model; batches are length-sorted within it.
const CHUNK: usize = 4096;

#[derive(Args)]
pub struct EmbedArgs {
    /// A store name (see `sembase model list`) or a model directory.
    #[arg(long)]
    model: String,
    /// Input file: one text per line, or `.jsonl` with "text" (and optional "id"). Default: stdin.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output file: `.npy` for a float32 matrix, anything else JSONL. Default: stdout (JSONL).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Input layout, when the file name does not tell.
    #[arg(long, value_enum)]
    input_format: Option<InputFormat>,
    /// Output layout, when the file name does not tell.
    #[arg(long, value_enum)]
    output_format: Option<OutputFormat>,
    /// Keep the first N dimensions and re-normalise (Matryoshka).
    #[arg(long)]
    dimensions: Option<usize>,
    /// Text put before every input, e.g. "query: ".
    #[arg(long, conflicts_with = "prompt")]
    prefix: Option<String>,
    /// A prompt named in the model's config_sentence_transformers.json, e.g. "query".
    #[arg(long)]
    prompt: Option<String>,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Override the model's token limit per input.
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Refuse inputs over the token limit instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
    /// Quantise the model's weights (int8: encoders on the CPU).
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    args.compute.apply_threads();
    let inputs = read_inputs(
        args.input.as_deref(),
        args.input_format.unwrap_or(InputFormat::guess(args.input.as_deref())),
    )?;
    let model =
        load_local(&args.model, args.max_seq_length, args.compute.batch_tokens, args.quantize)?;
    if model.device().is_cpu() {
        // One line, so that timings of embed runs on different machines can be told apart.
        eprintln!("{}", sembase_core::kernels::cpu_features::report()?);
    }
    let options = EmbedOptions {
        prefix: prefix(&model, &args)?,
        dimensions: args.dimensions,
        truncate: if args.no_truncate { Truncation::Refuse } else { Truncation::Truncate },
    };
    let format = args.output_format.unwrap_or(OutputFormat::guess(args.output.as_deref()));
    let mut file = args.output.as_deref().map(AtomicFile::create).transpose()?;
    let mut stdout = std::io::stdout().lock();
    let out: &mut dyn Write = match file.as_mut() {
        Some(f) => f,
        None => &mut stdout,
    };
    if format == OutputFormat::Npy {
        write_npy_header(out, inputs.len(), args.dimensions.unwrap_or(model.dimension()))?;
    }
    let progress = progress_bar(inputs.len());
    for (chunk_no, chunk) in inputs.chunks(CHUNK).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|i| i.text.as_str()).collect();
        let embeddings = model.embed(&texts, &options).map_err(|e| locate(e, chunk_no * CHUNK))?;
        match format {
            OutputFormat::Jsonl => write_jsonl(out, chunk_no * CHUNK, chunk, &embeddings.vectors)?,
            OutputFormat::Npy => write_npy_rows(out, &embeddings.vectors)?,
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    out.flush()?;
    if let Some(f) = file {
        f.commit()?;
    }
    // The process ends next; freeing a large vocabulary's tables one by one would take
    // a noticeable part of a short run (0.3 s of multilingual-e5-small's start-up).
    std::mem::forget(model);
    Ok(())
}

/// The prefix from `--prefix`, a named `--prompt`, or the model's default prompt.
fn prefix(model: &LocalEmbedder, args: &EmbedArgs) -> Result<Option<String>> {
    if let Some(p) = &args.prefix {
        return Ok(Some(p.clone()));
    }
    let prefix = resolve_prompt(model.prompts(), model.default_prompt(), args.prompt.as_deref())
        .map_err(|e| anyhow::anyhow!("model {e}"))?;
    Ok(prefix.map(str::to_string))
}

/// Makes an input index in a core error refer to the whole input (1-based line).
fn locate(error: sembase_core::Error, offset: usize) -> anyhow::Error {
    match error {
        sembase_core::Error::InputTooLong { index, tokens, limit } => {
            anyhow::anyhow!("input {} has {tokens} tokens, over the limit of {limit} (drop --no-truncate to cut it)", offset + index + 1)
        }
        other => other.into(),
    }
}

/// A progress bar on a terminal; nothing when stderr is piped.
pub(crate) fn progress_bar(total: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} texts {per_sec} eta {eta}")
            .expect("valid template"),
    );
    bar
}
