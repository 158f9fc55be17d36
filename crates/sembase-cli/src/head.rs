//! `sembase head train|eval|predict`: classifiers on frozen embeddings (sembase-heads).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sembase_core::{EmbedOptions, Embedder, LocalEmbedder};
use sembase_heads::head::{config_hash, TrainingInfo};
use sembase_heads::{
    embed_cached, load_tsv, train_head, BaseModel, ClassWeight, EmbeddingCache, Head, Kind,
    Metrics, TrainConfig,
};
use serde_json::{json, Map, Value};

use crate::embed_input::{read_inputs, InputFormat};
use crate::models::{load_local, ComputeArgs};
use sembase_embed::durable::AtomicFile;

#[derive(Subcommand)]
pub enum HeadCommand {
    /// Train a classifier on a model's embeddings of `text<TAB>label` data (k-fold CV, then a final fit).
    Train(TrainArgs),
    /// Score a saved head on labelled `text<TAB>label` data.
    Eval(EvalArgs),
    /// Classify texts (one per line, or JSONL with "text") into JSONL: label and probabilities.
    Predict(PredictArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Logistic,
    Mlp,
}

#[derive(Clone, Copy, ValueEnum)]
enum WeightArg {
    Balanced,
    None,
}

/// Model loading settings shared by the subcommands.
#[derive(Args)]
struct Engine {
    #[command(flatten)]
    compute: ComputeArgs,
    /// Do not read or write the embedding cache ($SEMBASE_HOME/cache/heads).
    #[arg(long)]
    no_cache: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    /// A store name (see `sembase model list`) or a model directory.
    #[arg(long)]
    model: String,
    /// `text<TAB>label` TSV with a header line.
    #[arg(long)]
    data: PathBuf,
    /// Directory to write the head into (replaced atomically).
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "logistic")]
    kind: KindArg,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Keep the first N dimensions of the embeddings (Matryoshka).
    #[arg(long)]
    dimensions: Option<usize>,
    #[arg(long, default_value_t = 10)]
    folds: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Text put before every input, e.g. "query: " (default: the model's default prompt).
    #[arg(long)]
    prefix: Option<String>,
    /// Comma-separated candidate C values (inverse L2 strength); default 0.1,1,10,100 (MLP: 1,10).
    #[arg(long, value_delimiter = ',')]
    c_grid: Option<Vec<f64>>,
    /// Class weights in the loss.
    #[arg(long, value_enum, default_value = "balanced")]
    class_weight: WeightArg,
    /// Write the report (folds, metrics, per-class figures, fold ids) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    engine: Engine,
}

#[derive(Args)]
pub struct EvalArgs {
    /// A head directory written by `sembase head train`.
    #[arg(long)]
    head: PathBuf,
    /// `text<TAB>label` TSV with a header line.
    #[arg(long)]
    data: PathBuf,
    /// Model to embed with (default: the head's base model by name).
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    engine: Engine,
}

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long)]
    head: PathBuf,
    /// One text per line, or `.jsonl` with "text" (and optional "id"). Default: stdin.
    #[arg(long)]
    input: Option<PathBuf>,
    /// JSONL output file (default: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Model to embed with (default: the head's base model by name).
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    engine: Engine,
}

pub fn run(cmd: HeadCommand) -> Result<()> {
    match cmd {
        HeadCommand::Train(args) => train(args),
        HeadCommand::Eval(args) => eval(args),
        HeadCommand::Predict(args) => predict(args),
    }
}

fn train(args: TrainArgs) -> Result<()> {
    args.engine.compute.apply_threads();
    let start = Instant::now();
    let data = load_tsv(&args.data)?;
    if args.folds < 2 {
        bail!("--folds must be at least 2");
    }
    data.check_trainable(&args.data, args.folds)?;
    // Opened now, so that a report path that cannot be written fails before any work
    // and no head is left behind by a failed run.
    let report_file = args.json.as_deref().map(AtomicFile::create).transpose()?;
    let kind = match args.kind {
        KindArg::Logistic => Kind::Logistic,
        KindArg::Mlp => Kind::Mlp { hidden: args.hidden.max(1) },
    };
    let mut config = TrainConfig::new(kind);
    config.folds = args.folds;
    config.seed = args.seed;
    config.class_weight = match args.class_weight {
        WeightArg::Balanced => ClassWeight::Balanced,
        WeightArg::None => ClassWeight::None,
    };
    if let Some(grid) = args.c_grid.clone() {
        config.grid = grid;
    }
    let (model, dir) = open_model(&args.model, args.engine.compute.batch_tokens)?;
    let prefix = args.prefix.clone().or_else(|| model.default_prompt().map(str::to_string));
    let options = EmbedOptions {
        prefix: prefix.clone(),
        dimensions: args.dimensions,
        ..EmbedOptions::default()
    };
    let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
    let embed_start = Instant::now();
    let (x, dim) = embed(&model, &dir, &texts, &options, args.engine.no_cache)?;
    let embed_seconds = embed_start.elapsed().as_secs_f64();
    let normalized = x
        .chunks_exact(dim)
        .all(|v| (v.iter().map(|a| a * a).sum::<f32>().sqrt() - 1.0).abs() < 1e-3);
    log(&format!(
        "training {} head on {} rows, {} classes, {dim} dimensions, {}-fold CV over C in {:?}",
        kind.name(),
        texts.len(),
        data.classes.len(),
        config.folds,
        config.grid
    ));
    let train_start = Instant::now();
    let (classifier, report) = train_head(&x, dim, &data.labels, &data.classes, &config)?;
    let train_seconds = train_start.elapsed().as_secs_f64();
    let base = BaseModel::describe(model.name(), &dir, dim, args.dimensions, prefix, normalized);
    let training = TrainingInfo {
        rows: texts.len(),
        folds: config.folds,
        seed: config.seed,
        accuracy: report.metrics.accuracy,
        macro_f1: report.metrics.macro_f1,
        data: Some(args.data.display().to_string()),
    };
    let head = Head::new(
        classifier,
        data.classes.clone(),
        report.c,
        config.class_weight,
        base,
        Some(training),
    );
    head.save(&args.output)
        .with_context(|| format!("saving the head to {}", args.output.display()))?;
    log(&format!(
        "{}-fold CV: accuracy {:.2}, macro-F1 {:.2} (C = {}); training took {train_seconds:.2}s; head saved to {}",
        config.folds,
        report.metrics.accuracy,
        report.metrics.macro_f1,
        report.c,
        args.output.display()
    ));
    if let Some(file) = report_file {
        let value = json!({
            "folds": config.folds,
            "metrics": {"accuracy": report.metrics.accuracy, "macro_f1": report.metrics.macro_f1},
            "output": args.output.display().to_string(),
            "per_class": report.metrics.per_class,
            "kind": kind.name(),
            "model": model.name(),
            "rows": texts.len(),
            "dimensions": dim,
            "seed": config.seed,
            "class_weight": config.class_weight.name(),
            "c": report.c,
            "grid": report.grid,
            "grid_accuracy": report.grid_accuracy,
            "fold_ids": report.fold_ids,
            "embed_seconds": embed_seconds,
            "train_seconds": train_seconds,
            "seconds": start.elapsed().as_secs_f64(),
        });
        write_json(file, &value)?;
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    args.engine.compute.apply_threads();
    let head = Head::load(&args.head)?;
    let data = load_tsv(&args.data)?;
    // Map the file's labels onto the head's; an unknown label is an error naming its line.
    let mut truth = Vec::with_capacity(data.labels.len());
    for (row, &y) in data.labels.iter().enumerate() {
        let name = &data.classes[y];
        match head.labels().iter().position(|l| l == name) {
            Some(i) => truth.push(i),
            None => bail!(
                "{}:{}: label {name:?} is not one the head knows ({})",
                args.data.display(),
                data.lines[row],
                head.labels().join(", ")
            ),
        }
    }
    let (model, dir) =
        open_head_model(&head, args.model.as_deref(), args.engine.compute.batch_tokens)?;
    let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
    let (x, dim) = embed(&model, &dir, &texts, &head.embed_options(), args.engine.no_cache)?;
    let vectors: Vec<Vec<f32>> = x.chunks_exact(dim).map(<[f32]>::to_vec).collect();
    let predicted: Vec<usize> = head.predict(&vectors)?.iter().map(|p| p.index).collect();
    let metrics = Metrics::compute(&truth, &predicted, head.labels());
    log(&format!(
        "{} rows: accuracy {:.2}, macro-F1 {:.2}",
        texts.len(),
        metrics.accuracy,
        metrics.macro_f1
    ));
    for c in &metrics.per_class {
        log(&format!(
            "  {:<20} precision {:6.2} recall {:6.2} f1 {:6.2} support {}",
            c.label, c.precision, c.recall, c.f1, c.support
        ));
    }
    if let Some(path) = &args.json {
        let value = json!({
            "metrics": {"accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1},
            "per_class": metrics.per_class,
            "head": args.head.display().to_string(),
            "data": args.data.display().to_string(),
            "rows": texts.len(),
        });
        write_json(AtomicFile::create(path)?, &value)?;
    }
    Ok(())
}

fn predict(args: PredictArgs) -> Result<()> {
    args.engine.compute.apply_threads();
    let head = Head::load(&args.head)?;
    let inputs = read_inputs(args.input.as_deref(), InputFormat::guess(args.input.as_deref()))?;
    let (model, dir) =
        open_head_model(&head, args.model.as_deref(), args.engine.compute.batch_tokens)?;
    let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
    let (x, dim) = embed(&model, &dir, &texts, &head.embed_options(), args.engine.no_cache)?;
    let vectors: Vec<Vec<f32>> = x.chunks_exact(dim.max(1)).map(<[f32]>::to_vec).collect();
    let predictions = head.predict(&vectors)?;
    let mut file = args.output.as_deref().map(AtomicFile::create).transpose()?;
    let mut stdout = std::io::stdout().lock();
    let out: &mut dyn Write = match file.as_mut() {
        Some(f) => f,
        None => &mut stdout,
    };
    for (index, (input, p)) in inputs.iter().zip(&predictions).enumerate() {
        let mut line = Map::new();
        line.insert("index".into(), json!(index));
        if let Some(id) = &input.id {
            line.insert("id".into(), json!(id));
        }
        line.insert("label".into(), json!(p.label));
        let probs: Map<String, Value> = head
            .labels()
            .iter()
            .zip(&p.probabilities)
            .map(|(l, &v)| (l.clone(), json!(v)))
            .collect();
        line.insert("probabilities".into(), Value::Object(probs));
        serde_json::to_writer(&mut *out, &Value::Object(line))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if let Some(f) = file {
        f.commit()?;
    }
    Ok(())
}

/// Loads a model and returns it with its directory (for the identity hash).
fn open_model(spec: &str, batch_tokens: Option<usize>) -> Result<(LocalEmbedder, PathBuf)> {
    let dir = sembase_hub::Store::from_env()?.resolve(spec)?;
    Ok((load_local(spec, None, batch_tokens, None)?, dir))
}

/// The head's base model (or `--model`), refused when it is not the one the head was trained on.
fn open_head_model(
    head: &Head,
    spec: Option<&str>,
    batch_tokens: Option<usize>,
) -> Result<(LocalEmbedder, PathBuf)> {
    let base = head.base_model();
    let (model, dir) = open_model(spec.unwrap_or(&base.name), batch_tokens)?;
    let hash = config_hash(&dir);
    if hash != base.config_hash {
        bail!(
            "model {} (config {hash}) is not the head's base model {} (config {})",
            dir.display(),
            base.name,
            base.config_hash
        );
    }
    if model.dimension() < head.dimensions() {
        bail!(
            "head reads {}-dimensional vectors; model {} gives {}",
            head.dimensions(),
            model.name(),
            model.dimension()
        );
    }
    Ok((model, dir))
}

/// Embeds through the cache under $SEMBASE_HOME/cache/heads, with a progress bar on a terminal.
fn embed(
    model: &LocalEmbedder,
    dir: &Path,
    texts: &[&str],
    options: &EmbedOptions,
    no_cache: bool,
) -> Result<(Vec<f32>, usize)> {
    let mut cache = if no_cache {
        None
    } else {
        let root = sembase_hub::Store::from_env()?.root().join("cache").join("heads");
        let key = format!(
            "{}|{}|{:?}|{:?}|{}",
            model.name(),
            config_hash(dir),
            options.prefix,
            options.dimensions,
            model.max_tokens()
        );
        Some(EmbeddingCache::open(&root, &key)?)
    };
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(texts.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} texts {per_sec} eta {eta}")
                .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let mut first = None;
    let result = embed_cached(model, texts, options, cache.as_mut(), &mut |done| {
        first.get_or_insert(done);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    log(&format!(
        "embedded {} texts ({} from the cache) in {:.1}s",
        texts.len(),
        first.unwrap_or(0),
        start.elapsed().as_secs_f64()
    ));
    Ok(result)
}

fn write_json(mut f: AtomicFile, value: &Value) -> Result<()> {
    serde_json::to_writer(&mut f, value)?;
    f.write_all(b"\n")?;
    Ok(f.commit()?)
}

fn log(line: &str) {
    eprintln!("{line}");
}
