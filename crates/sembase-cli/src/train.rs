//! `sembase train simcse|pairs|triplets|sts|cross-encoder|recipe`: fine-tune a model and export it.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sembase_core::layers::{LoraSpec, LORA_TARGETS};
use sembase_core::models::decoder_config::is_decoder;
use sembase_core::models::DecoderConfig;
use sembase_core::pooling::PoolingMode;
use sembase_core::{CrossEncoder, LoadOptions};
use sembase_eval::results::Metrics;
use sembase_eval::training_report::{write_training_report, TrainingRun};
use sembase_train::{
    load_cross_examples, BiEncoderConfig, BiEncoderTraining, CrossEncoderTraining, DataSpec,
    Dataset, DecoderTraining, Finish, LoopConfig, ModelCard, Objective, StsLoss, TrainObserver,
    TrainableCrossEncoder, TrainableModel, Trainee, Trainer,
};

use crate::models::{keep_elementwise_ops_on_one_thread, set_threads};

mod recipe;

#[derive(Clone, Copy, ValueEnum)]
pub enum ObjectiveArg {
    /// Unsupervised SimCSE on a corpus (one sentence per line).
    Simcse,
    /// Positive pairs (TSV sentence1, sentence2, label; label-1 rows), in-batch negatives.
    Pairs,
    /// Anchor, positive, hard negative (TSV), in-batch negatives.
    Triplets,
    /// CoSENT on scored pairs (TSV sentence1, sentence2, score or 0/1 label).
    Sts,
    /// A cross-encoder (reranker): binary cross-entropy on pairs (label 0/1) or sts
    /// (score / 5) TSV, a listwise softmax over triplets TSV; the header tells which.
    CrossEncoder,
    /// The matching recipe: held-out split, hard-negative mining, every dataset at once
    /// for as many steps as --budget-minutes allows, the best checkpoint kept.
    Recipe,
}

#[derive(Args)]
pub struct TrainArgs {
    /// What to optimise.
    #[arg(value_enum)]
    objective: ObjectiveArg,
    /// Base model: a store name or a directory.
    #[arg(long)]
    model: String,
    /// Training data: PATH, or OBJECTIVE:PATH (simcse, pairs, triplets, sts) for a file
    /// with its own objective; repeat to mix datasets (each batch from one of them).
    #[arg(long, required = true, value_name = "[OBJECTIVE:]PATH")]
    data: Vec<String>,
    /// Loss on sts rows: cosent, angle or cosent+mnrl (default cosent).
    #[arg(long)]
    loss: Option<String>,
    /// Interleaving of several --data files: proportional or round-robin (default proportional).
    #[arg(long)]
    sampling: Option<String>,
    /// Where the trained model goes (sentence-transformers layout).
    #[arg(long)]
    output: PathBuf,
    /// Evaluate on KIND:PATH during training and keep the best model.
    #[arg(long)]
    eval: Option<String>,
    /// Steps between evaluations (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_steps: usize,
    /// Matryoshka widths to train for, e.g. 384,256,128,64.
    #[arg(long, value_delimiter = ',')]
    dims: Vec<usize>,
    /// Add a learned linear projection to N dimensions (a Dense module).
    #[arg(long)]
    project: Option<usize>,
    /// Rows per batch (default 64; 16 for cross-encoder).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Texts per forward pass with cached in-batch negatives (GradCache), for large batches in bounded memory.
    #[arg(long)]
    mini_batch: Option<usize>,
    /// Peak learning rate (default 3e-5 for simcse, 2e-5 otherwise).
    #[arg(long)]
    lr: Option<f64>,
    /// Passes over the data (default 1).
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    max_steps: Option<usize>,
    /// Token limit per input, or per pair for cross-encoder (default 32 for simcse, the model's limit otherwise).
    #[arg(long)]
    max_length: Option<usize>,
    /// Share of the steps spent warming the learning rate up (default 0.1).
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Gradient norm clipping (default 1.0).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Seed of the batch order and the dropout masks (default 42).
    #[arg(long)]
    seed: Option<u64>,
    /// Temperature of the contrastive losses, logit scale = 1 / temperature (default 0.05).
    #[arg(long)]
    temperature: Option<f64>,
    /// Pairs: also train each positive to pick its anchor.
    #[arg(long)]
    symmetric: bool,
    /// Prefix for every training text and for eval queries (e.g. "query: " for e5).
    #[arg(long)]
    prefix: Option<String>,
    /// Prefix for retrieval documents during evaluation.
    #[arg(long)]
    doc_prefix: Option<String>,
    /// Steps between checkpoints (0: only when interrupted).
    #[arg(long, default_value_t = 0)]
    checkpoint_steps: usize,
    /// Distil this cross-encoder (store name or directory) into the model: MarginMSE on
    /// triplets, KL divergence over in-batch candidates on pairs and sts (labels unused).
    #[arg(long)]
    teacher: Option<String>,
    /// Continue from a checkpoint directory (OUTPUT.checkpoint) of an earlier run.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write steps, loss curve and evaluations as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the loss curve, evaluations and settings as a self-contained HTML page.
    #[arg(long, value_name = "OUT.html")]
    report: Option<PathBuf>,
    #[arg(long)]
    threads: Option<usize>,
    /// Recipe: minutes for the whole run, mining and evaluations included (default 60).
    #[arg(long)]
    budget_minutes: Option<f64>,
    /// Recipe: candidate negatives to mine from, one text per line (default: the data's texts).
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[command(flatten)]
    decoder: DecoderArgs,
}

/// Training a decoder LLM (LLaMA, Qwen2, Qwen3) into an embedding model with LoRA.
#[derive(Args)]
pub struct DecoderArgs {
    /// Train LoRA adapters of this rank over the frozen decoder (decoder models only).
    #[arg(long, value_name = "RANK")]
    lora: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha / rank (default 2 x rank).
    #[arg(long, requires = "lora")]
    lora_alpha: Option<f64>,
    /// Dropout on the adapters' inputs (default 0.05).
    #[arg(long, requires = "lora")]
    lora_dropout: Option<f32>,
    /// The projections to adapt (default all: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, requires = "lora", value_delimiter = ',')]
    lora_targets: Vec<String>,
    /// Pooling of the token states (default: the model directory's, else last).
    #[arg(long, value_enum, requires = "lora")]
    pooling: Option<PoolingArg>,
    /// Attention without the causal mask (LLM2Vec); recorded so embedding uses it too.
    #[arg(long, requires = "lora")]
    bidirectional: bool,
    /// Instruction put before each query/anchor only, saved as the model's `query` prompt.
    #[arg(long, requires = "lora")]
    query_instruction: Option<String>,
    /// Export the base with the adapters folded in (a full f32 model) instead of the adapter.
    #[arg(long, requires = "lora")]
    merge: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PoolingArg {
    /// The last real token's state (E5-Mistral, Qwen3-Embedding).
    Last,
    /// The mean over the real tokens (LLM2Vec).
    Mean,
}

impl DecoderArgs {
    /// The LoRA training settings, when `--lora` is given.
    fn training(&self, seed: u64) -> Result<Option<DecoderTraining>> {
        let Some(rank) = self.lora else { return Ok(None) };
        let targets = if self.lora_targets.is_empty() {
            LORA_TARGETS.iter().map(|t| t.to_string()).collect()
        } else {
            self.lora_targets.clone()
        };
        let alpha = self.lora_alpha.unwrap_or(2.0 * rank as f64);
        let lora = LoraSpec::new(rank, alpha, self.lora_dropout.unwrap_or(0.05), targets)?;
        let pooling = self.pooling.map(|p| match p {
            PoolingArg::Last => PoolingMode::LastToken,
            PoolingArg::Mean => PoolingMode::Mean,
        });
        let (bidirectional, merge) = (self.bidirectional, self.merge);
        Ok(Some(DecoderTraining { lora, bidirectional, pooling, seed, merge }))
    }
}

impl ObjectiveArg {
    /// The bi-encoder objective; `None` for a cross-encoder.
    fn objective(self) -> Option<Objective> {
        match self {
            Self::Simcse => Some(Objective::SimCse),
            Self::Pairs => Some(Objective::Pairs),
            Self::Triplets => Some(Objective::Triplets),
            Self::Sts => Some(Objective::Sts),
            Self::CrossEncoder | Self::Recipe => None,
        }
    }
}

/// Progress bar (or log lines when not on a terminal), Ctrl-C, and step timing.
struct Console {
    bar: Option<ProgressBar>,
    started: Instant,
    stop: Arc<AtomicBool>,
    /// When the step now running began (reset after evaluations, so they do not count).
    step_started: Cell<Instant>,
    step_seconds: RefCell<Vec<f64>>,
}

impl Console {
    /// The median wall time of one optimisation step, evaluations excluded.
    fn median_step_seconds(&self) -> Option<f64> {
        let mut times = self.step_seconds.borrow().clone();
        times.sort_by(f64::total_cmp);
        times.get(times.len() / 2).copied()
    }

    /// The mean wall time of one optimisation step, evaluations excluded.
    fn mean_step_seconds(&self) -> Option<f64> {
        let times = self.step_seconds.borrow();
        (!times.is_empty()).then(|| times.iter().sum::<f64>() / times.len() as f64)
    }
}

impl TrainObserver for Console {
    fn on_step(&self, step: usize, total: usize, loss: f32) {
        self.step_seconds.borrow_mut().push(self.step_started.get().elapsed().as_secs_f64());
        self.step_started.set(Instant::now());
        let rate = step as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        match &self.bar {
            Some(bar) => {
                bar.set_length(total as u64);
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4}  {rate:.2} steps/s"));
            }
            None if step.is_multiple_of(10) || step == total => {
                eprintln!("step {step}/{total} loss {loss:.4} ({rate:.2} steps/s)")
            }
            None => {}
        }
    }

    fn on_eval(&self, step: usize, metrics: &Metrics) {
        let line =
            metrics.0.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join("  ");
        match &self.bar {
            Some(bar) => bar.println(format!("eval at step {step}: {line}")),
            None => eprintln!("eval at step {step}: {line}"),
        }
        self.step_started.set(Instant::now());
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    set_threads(args.threads);
    keep_elementwise_ops_on_one_thread();
    if matches!(args.objective, ObjectiveArg::Recipe) {
        return recipe::run(&args);
    }
    if args.budget_minutes.is_some() || args.corpus.is_some() {
        bail!("--budget-minutes and --corpus apply to train recipe");
    }
    let store = sembase_hub::Store::from_env()?;
    let dir = store.resolve(&args.model)?;
    match args.objective.objective() {
        Some(objective) => run_bi_encoder(&args, &store, &dir, objective),
        None => run_cross_encoder(&args, &dir),
    }
}

/// The loop's settings from the flags, over the defaults given.
fn loop_config(args: &TrainArgs, defaults: LoopConfig) -> LoopConfig {
    LoopConfig {
        batch_size: args.batch_size.unwrap_or(defaults.batch_size),
        lr: args.lr.unwrap_or(defaults.lr),
        epochs: args.epochs.unwrap_or(defaults.epochs),
        max_steps: args.max_steps,
        warmup_ratio: args.warmup_ratio.unwrap_or(defaults.warmup_ratio),
        max_grad_norm: args.max_grad_norm.unwrap_or(defaults.max_grad_norm),
        seed: args.seed.unwrap_or(defaults.seed),
        eval_steps: args.eval_steps,
        checkpoint_steps: args.checkpoint_steps,
    }
}

/// The hyper-parameters every objective records.
fn loop_hyperparameters(config: &LoopConfig, max_length: usize) -> serde_json::Value {
    serde_json::json!({
        "batch_size": config.batch_size, "lr": config.lr, "epochs": config.epochs,
        "max_steps": config.max_steps, "max_length": max_length, "warmup_ratio": config.warmup_ratio,
        "max_grad_norm": config.max_grad_norm, "seed": config.seed,
    })
}

fn run_bi_encoder(
    args: &TrainArgs,
    store: &sembase_hub::Store,
    dir: &std::path::Path,
    objective: Objective,
) -> Result<()> {
    let max_length = match args.max_length.or(objective.default_max_length()) {
        Some(limit) => limit,
        None => model_limit(dir)?,
    };
    let decoder = args.decoder.training(args.seed.unwrap_or(LoopConfig::default().seed))?;
    let model = TrainableModel::load_with(dir, max_length, args.project, decoder.as_ref())
        .with_context(|| format!("loading {}", dir.display()))?;
    let mut datasets = args
        .data
        .iter()
        .map(|spec| Ok(Dataset::load(&spec.parse::<DataSpec>()?, objective)?))
        .collect::<Result<Vec<_>>>()?;
    if let Some(prefix) = &args.prefix {
        let texts =
            datasets.iter_mut().flat_map(|d| d.examples.iter_mut()).flat_map(|e| &mut e.texts);
        texts.for_each(|t| t.insert_str(0, prefix));
    }
    let instruction = &args.decoder.query_instruction;
    if let Some(instruction) = instruction {
        for dataset in &mut datasets {
            // SimCSE's two views are one text: both get the instruction.
            let queries = if dataset.objective == Objective::SimCse { usize::MAX } else { 1 };
            dataset
                .examples
                .iter_mut()
                .flat_map(|e| e.texts.iter_mut().take(queries))
                .for_each(|t| t.insert_str(0, instruction));
        }
    }
    if args.temperature.is_some_and(|t| t.is_nan() || t <= 0.0) {
        bail!("--temperature must be positive");
    }
    // LoRA trains few weights from zero: the published recipes use 1e-4 (E5-Mistral) to 2e-4.
    let lr = match objective {
        _ if decoder.is_some() => 1e-4,
        Objective::SimCse => 3e-5,
        _ => LoopConfig::default().lr,
    };
    let defaults = LoopConfig { lr, ..LoopConfig::default() };
    let config = loop_config(args, defaults);
    let bi = BiEncoderConfig {
        mini_batch: args.mini_batch,
        scale: args.temperature.map_or(BiEncoderConfig::new(objective).scale, |t| 1.0 / t),
        symmetric: args.symmetric,
        dims: args.dims.clone(),
        eval: args.eval.as_deref().map(str::parse).transpose()?,
        sts_loss: args.loss.as_deref().map_or(Ok(StsLoss::Cosent), str::parse)?,
        sampling: args.sampling.as_deref().map(str::parse).transpose()?.unwrap_or_default(),
        ..BiEncoderConfig::new(objective)
    };
    let mut hyperparameters = loop_hyperparameters(&config, max_length);
    for (key, value) in [
        ("mini_batch", serde_json::json!(bi.mini_batch)),
        ("temperature", serde_json::json!(1.0 / bi.scale)),
        ("symmetric", serde_json::json!(bi.symmetric)),
        ("dims", serde_json::json!(bi.dims)),
        ("project", serde_json::json!(args.project)),
        ("prefix", serde_json::json!(args.prefix)),
        ("teacher", serde_json::json!(args.teacher)),
        ("lora", lora_hyperparameters(decoder.as_ref())),
        ("query_instruction", serde_json::json!(instruction)),
        ("sampling", serde_json::json!(bi.sampling.name())),
        ("datasets", datasets.iter().map(Dataset::summary).collect()),
    ] {
        hyperparameters[key] = value;
    }
    if datasets.iter().any(|d| d.objective == Objective::Sts) {
        hyperparameters["loss"] = bi.sts_loss.name().into();
    }
    let load_teacher = |name: &String| -> Result<CrossEncoder> {
        let path = store.resolve(name)?;
        CrossEncoder::load(&path, name.as_str(), LoadOptions::default())
            .with_context(|| format!("loading the teacher {}", path.display()))
    };
    let teacher = args.teacher.as_ref().map(load_teacher).transpose()?;
    let describe = |objective: Objective| match &args.teacher {
        Some(name) if objective == Objective::Triplets => {
            format!("triplets, MarginMSE from {name}")
        }
        Some(name) => format!("{}, in-batch KL from {name}", objective.name()),
        None => objective.name().to_string(),
    };
    let mut objectives: Vec<String> = Vec::new();
    for description in datasets.iter().map(|d| describe(d.objective)) {
        if !objectives.contains(&description) {
            objectives.push(description);
        }
    }
    let objective_name = objectives.join(" + ");
    let card = ModelCard {
        base: args.model.clone(),
        objective: objective_name.clone(),
        data: args.data.join(", "),
        hyperparameters,
        prefix: match (&args.prefix, instruction) {
            (Some(prefix), Some(instruction)) => Some(format!("{prefix}{instruction}")),
            (prefix, instruction) => prefix.clone().or(instruction.clone()),
        },
        doc_prefix: args.doc_prefix.clone(),
        dims: args.dims.clone(),
        query_prompt: instruction.clone(),
        default_prompt: args.prefix.clone(),
        run: serde_json::Value::Null,
    };
    let mut trainee = BiEncoderTraining::with_datasets(&model, bi, datasets, card.clone())?;
    if let Some(teacher) = &teacher {
        trainee = trainee.with_teacher(teacher)?;
    }
    run_loop(args, &trainee, config, &card, &objective_name)
}

/// The adapter settings a decoder run records (null for an encoder).
fn lora_hyperparameters(decoder: Option<&DecoderTraining>) -> serde_json::Value {
    decoder.map_or(serde_json::Value::Null, |d| {
        serde_json::json!({
            "rank": d.lora.rank, "alpha": d.lora.alpha, "dropout": d.lora.dropout,
            "targets": d.lora.targets, "bidirectional": d.bidirectional, "merge": d.merge,
            "pooling": d.pooling.map(|p| format!("{p:?}")),
        })
    })
}

fn run_cross_encoder(args: &TrainArgs, dir: &std::path::Path) -> Result<()> {
    let bi_encoder_only = [
        ("--dims", !args.dims.is_empty()),
        ("--project", args.project.is_some()),
        ("--mini-batch", args.mini_batch.is_some()),
        ("--temperature", args.temperature.is_some()),
        ("--symmetric", args.symmetric),
        ("--prefix", args.prefix.is_some()),
        ("--doc-prefix", args.doc_prefix.is_some()),
        ("--teacher", args.teacher.is_some()),
        ("--lora", args.decoder.lora.is_some()),
        ("--loss", args.loss.is_some()),
        ("--sampling", args.sampling.is_some()),
    ];
    if let Some((flag, _)) = bi_encoder_only.iter().find(|(_, given)| *given) {
        bail!("{flag} applies to bi-encoder objectives, not cross-encoder");
    }
    let data = match args.data.as_slice() {
        [one] => one.parse::<DataSpec>()?,
        _ => bail!("cross-encoder trains on one --data file"),
    };
    let data = match data.objective {
        None => data.path,
        Some(_) => bail!("cross-encoder takes --data PATH (the file's header picks the loss)"),
    };
    let config = loop_config(args, LoopConfig { batch_size: 16, ..LoopConfig::default() });
    let model = TrainableCrossEncoder::load(dir, args.max_length, config.seed)
        .with_context(|| format!("loading {}", dir.display()))?;
    let (objective, examples) = load_cross_examples(&data)?;
    let mut hyperparameters = loop_hyperparameters(&config, model.max_length());
    hyperparameters["loss"] = objective.name().into();
    let card = ModelCard {
        base: args.model.clone(),
        objective: format!("cross-encoder ({})", objective.name()),
        data: data.display().to_string(),
        hyperparameters,
        ..ModelCard::default()
    };
    let eval = args.eval.as_deref().map(str::parse).transpose()?;
    let trainee =
        CrossEncoderTraining::new(&model, objective, examples, eval.as_ref(), card.clone())?;
    run_loop(args, &trainee, config, &card, "cross-encoder")
}

/// Runs the shared loop with progress, Ctrl-C and the `--json` / `--report` outputs.
fn run_loop(
    args: &TrainArgs,
    trainee: &dyn Trainee,
    config: LoopConfig,
    card: &ModelCard,
    objective: &str,
) -> Result<()> {
    let title = format!("{objective} on {} from {}", card.data, args.model);
    let mut trainer = Trainer::new(trainee, config, &args.output)?;
    if let Some(checkpoint) = &args.resume {
        trainer
            .resume(checkpoint)
            .with_context(|| format!("resuming from {}", checkpoint.display()))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    let now = Instant::now();
    let console = Console {
        bar: progress_bar(),
        started: now,
        stop,
        step_started: Cell::new(now),
        step_seconds: RefCell::default(),
    };
    let finish = trainer.run(&console)?;
    if let Some(bar) = &console.bar {
        bar.finish_and_clear();
    }
    if let Some(path) = &args.json {
        let state = &trainer.state;
        let report = serde_json::json!({
            "steps": state.step, "loss": state.loss, "eval": state.eval, "best": state.best,
            "output": args.output,
            "seconds": console.started.elapsed().as_secs_f64(),
            "step_seconds_median": console.median_step_seconds(),
            "step_seconds_mean": console.mean_step_seconds(),
            "peak_rss_mib": peak_rss_mib(),
            "datasets": card.hyperparameters.get("datasets"),
        });
        sembase_embed::durable::write_json(path, &report)?;
    }
    if let Some(path) = &args.report {
        let state = &trainer.state;
        let run = TrainingRun {
            title: &title,
            loss: &state.loss,
            eval: &state.eval,
            hyperparameters: &card.hyperparameters,
        };
        write_training_report(path, &run)?;
    }
    match finish {
        Finish::Completed => println!("{}", args.output.display()),
        Finish::Interrupted { checkpoint } => {
            bail!(
                "interrupted at step {}; continue with --resume {}",
                trainer.state.step,
                checkpoint.display()
            )
        }
    }
    Ok(())
}

/// This process's peak resident memory (VmHWM) in MiB, where /proc tells it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The model's own token limit (sentence_bert_config.json, else the position table).
/// The model's own token limit: `sentence_bert_config.json`'s, else a decoder's position
/// limit, else BERT's 512.
fn model_limit(dir: &std::path::Path) -> Result<usize> {
    let model = sembase_core::ModelDir::open(dir)?;
    if let Some(limit) = model.max_seq_length {
        return Ok(limit);
    }
    if is_decoder(&model.config.model_type) {
        return Ok(DecoderConfig::of(&model)?.max_position_embeddings);
    }
    Ok(512)
}

fn progress_bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {msg} eta {eta}")
            .expect("valid template"),
    );
    Some(bar)
}
