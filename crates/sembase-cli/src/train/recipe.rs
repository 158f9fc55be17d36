//! `sembase train recipe`: from a team's labelled pairs to a trained model in one
//! command. The steps are the commands a user would run by hand, run by this binary:
//! 1. carve a held-out split from the first scored or paired dataset (seeded; a tenth
//!    of its rows, at most 1000), so checkpoints are chosen on data never trained on;
//! 2. score the base model on it;
//! 3. mine hard negatives for every scored or paired training file with the base model
//!    (`sembase mine`, ranks 10-50, the 95%-of-positive guard);
//! 4. time ten steps of the final mix, and fit the number of steps to the budget;
//! 5. train on every file at once (`train sts`: CoSENT on the scored rows, in-batch and
//!    mined negatives on the triplets, one dataset per batch, the datasets drawn in
//!    proportion to their size as sentence-transformers does by default, so the team's
//!    own file, usually the largest, gets most steps), evaluating on the held-out split
//!    five times and keeping the best checkpoint;
//! 6. score the result, and record every step and figure in `recipe.json` and the
//!    model card.
//!
//! Intermediate files go to `OUTPUT.recipe/`; `--prefix` becomes the model's default
//! prompt (see `export`), so the output embeds as it was trained without flags.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sembase_core::files::read_json;
use sembase_train::{DataSpec, Objective, Sampling};
use serde_json::{json, Value};

use super::TrainArgs;

/// Held-out rows: this share of the first scored or paired dataset...
const HELD_OUT_SHARE: usize = 10;
/// ... and at most this many.
const HELD_OUT_MAX: usize = 1000;
/// Steps timed before the budget is divided; their mean step time is used. Batches of
/// different files cost up to twice as much as each other: the median of 3 steps
/// missed the run's step time by 0.7x-1.5x (`bench/en_recipe.sh`, `bench/zh_recipe.sh`).
const PROBE_STEPS: usize = 10;
/// Evaluations on the held-out split during training.
const EVALUATIONS: usize = 5;
/// Default budget for the whole recipe, in minutes.
const DEFAULT_BUDGET_MINUTES: f64 = 60.0;
/// How the training files share the batches. Round-robin gave the main file a seventh
/// of the steps with six files beside it, and it lost to the plain command on its own
/// task (ATEC dev 36.42 vs 40.30, `bench/zh_recipe.sh` at 15 minutes).
const SAMPLING: Sampling = Sampling::Proportional;

/// One training file of the recipe, with the objective it trains.
#[derive(Clone)]
struct Part {
    objective: Objective,
    path: PathBuf,
}

impl Part {
    fn spec(&self) -> String {
        format!("{}:{}", self.objective.name(), self.path.display())
    }
}

/// Runs the recipe for `args` (`train recipe ...`).
pub fn run(args: &TrainArgs) -> Result<()> {
    refuse_chosen_flags(args)?;
    let started = Instant::now();
    let budget = args.budget_minutes.unwrap_or(DEFAULT_BUDGET_MINUTES);
    if !(budget.is_finite() && budget > 0.0) {
        bail!("--budget-minutes must be positive");
    }
    let work = PathBuf::from(format!("{}.recipe", args.output.display()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut steps = Vec::new();

    let parts = datasets(args)?;
    let (parts, held_out) = carve_held_out(&parts, &work, args.seed.unwrap_or(42))?;
    steps.push(json!({"step": "held-out split", "file": held_out.path, "rows": held_out.rows}));
    let task = format!("sts:{}", held_out.path.display());

    let base_start = Instant::now();
    let base = evaluate(args, &args.model, &task, &work.join("base-eval.json"))?;
    let eval_seconds = base_start.elapsed().as_secs_f64();
    steps.push(json!({"step": "base model on the held-out split", "spearman": base}));
    eprintln!("recipe: base model, held-out Spearman {base:.2}");

    let mut mix: Vec<Part> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        mix.push(part.clone());
        if matches!(part.objective, Objective::Sts | Objective::Pairs) {
            let triplets = work.join(format!("mined-{i}.tsv"));
            let report = mine(args, &part.path, &triplets, &work.join(format!("mine-{i}.json")))?;
            let written = report["triplets"].as_u64().unwrap_or(0);
            steps.push(json!({"step": "hard negatives", "data": part.path, "report": report}));
            eprintln!("recipe: {written} triplets mined from {}", part.path.display());
            if written > 0 {
                mix.push(Part { objective: Objective::Triplets, path: triplets });
            }
        }
    }

    let probe = train(args, &mix, &work.join("probe"), &work.join("probe.json"), Schedule::Probe)?;
    let step_seconds = probe["step_seconds_mean"].as_f64().unwrap_or(f64::NAN);
    let max_steps = match args.max_steps {
        Some(steps) => steps,
        None => {
            let left = budget * 60.0 - started.elapsed().as_secs_f64();
            // The final evaluation and the evaluations during training come out of it too.
            let training = left - (EVALUATIONS + 1) as f64 * eval_seconds;
            if step_seconds.is_nan() || step_seconds <= 0.0 || training < step_seconds * 10.0 {
                bail!(
                    "--budget-minutes {budget} leaves {left:.0} s after mining, too little for \
                     10 steps of {step_seconds:.1} s; give more minutes or --max-steps"
                );
            }
            (training / step_seconds) as usize
        }
    };
    steps.push(json!({"step": "timing", "seconds_per_step": step_seconds, "steps": max_steps}));
    eprintln!("recipe: {max_steps} steps of {step_seconds:.2} s fit the budget");

    // Enough passes over the data for the steps: the budget, not one epoch, decides.
    let rows: u64 =
        probe["datasets"].as_array().into_iter().flatten().filter_map(|d| d["rows"].as_u64()).sum();
    let batch = args.batch_size.unwrap_or(sembase_train::LoopConfig::default().batch_size);
    let epochs = args.epochs.unwrap_or((max_steps * batch).div_ceil(rows.max(1) as usize) + 1);
    let schedule = Schedule::Final { max_steps, epochs, task: &task };
    let report = train(args, &mix, &args.output, &work.join("train.json"), schedule)?;
    let tuned = evaluate(args, &args.output.display().to_string(), &task, &work.join("eval.json"))?;
    steps.push(json!({
        "step": "training", "data": mix.iter().map(Part::spec).collect::<Vec<_>>(),
        "sampling": SAMPLING.name(),
        "steps": report["steps"], "best": report["best"], "eval": report["eval"],
        "step_seconds_median": report["step_seconds_median"], "peak_rss_mib": report["peak_rss_mib"],
    }));
    steps.push(json!({"step": "trained model on the held-out split", "spearman": tuned}));
    eprintln!("recipe: held-out Spearman {base:.2} -> {tuned:.2}");
    let summary = json!({
        "base": args.model, "output": args.output, "budget_minutes": budget,
        "minutes": started.elapsed().as_secs_f64() / 60.0, "steps": steps,
    });
    sembase_embed::durable::write_json(&args.output.join("recipe.json"), &summary)?;
    append_to_card(&args.output, &summary)?;
    println!("{}", args.output.display());
    Ok(())
}

/// Flags whose value the recipe chooses itself.
fn refuse_chosen_flags(args: &TrainArgs) -> Result<()> {
    let chosen = [
        ("--loss", args.loss.is_some()),
        ("--sampling", args.sampling.is_some()),
        ("--eval", args.eval.is_some()),
        ("--eval-steps", args.eval_steps != 0),
        ("--resume", args.resume.is_some()),
        ("--teacher", args.teacher.is_some()),
        ("--lora", args.decoder.lora.is_some()),
        ("--project", args.project.is_some()),
        ("--mini-batch", args.mini_batch.is_some()),
        ("--json", args.json.is_some()),
        ("--report", args.report.is_some()),
    ];
    match chosen.iter().find(|(_, given)| *given) {
        Some((flag, _)) => bail!("{flag}: train recipe chooses it (see recipe.json)"),
        None => Ok(()),
    }
}

/// The `--data` files with their objectives (a bare path is scored pairs).
fn datasets(args: &TrainArgs) -> Result<Vec<Part>> {
    args.data
        .iter()
        .map(|spec| {
            let spec = spec.parse::<DataSpec>()?;
            Ok(Part { objective: spec.objective.unwrap_or(Objective::Sts), path: spec.path })
        })
        .collect()
}

/// The held-out split's file and size.
struct HeldOut {
    path: PathBuf,
    rows: usize,
}

/// Splits the first scored or paired dataset into a training file and a held-out file
/// (seeded shuffle); the other parts are kept as they are.
fn carve_held_out(parts: &[Part], work: &Path, seed: u64) -> Result<(Vec<Part>, HeldOut)> {
    let Some(first) =
        parts.iter().position(|p| matches!(p.objective, Objective::Sts | Objective::Pairs))
    else {
        bail!("train recipe needs scored or labelled pairs (an sts: or pairs: --data) to hold out from");
    };
    let source = &parts[first].path;
    let text =
        std::fs::read_to_string(source).with_context(|| format!("reading {}", source.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().with_context(|| format!("{}: empty file", source.display()))?;
    let mut rows: Vec<&str> = lines.collect();
    let held = (rows.len() / HELD_OUT_SHARE).clamp(1, HELD_OUT_MAX);
    if rows.len() < 2 * held + 1 {
        bail!("{}: {} rows are too few to hold some out", source.display(), rows.len());
    }
    rows.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let (held_rows, train_rows) = rows.split_at(held);
    let write = |name: &str, rows: &[&str]| -> Result<PathBuf> {
        let path = work.join(name);
        let body =
            std::iter::once(header).chain(rows.iter().copied()).collect::<Vec<_>>().join("\n");
        sembase_embed::durable::write_bytes(&path, format!("{body}\n").as_bytes())?;
        Ok(path)
    };
    let held_out = HeldOut { path: write("held-out.tsv", held_rows)?, rows: held };
    let train_path = write("train.tsv", train_rows)?;
    let mut kept = parts.to_vec();
    kept[first].path = train_path;
    Ok((kept, held_out))
}

/// The binary itself, with the compute flags of the recipe.
fn sembase(args: &TrainArgs) -> Result<Command> {
    let mut command = Command::new(own_binary()?);
    if let Some(threads) = args.threads {
        command.env("RAYON_NUM_THREADS", threads.to_string());
    }
    Ok(command)
}

/// This very binary. On Linux `/proc/self/exe`, which still runs it after its file was
/// replaced (an upgrade or a rebuild during an hour-long recipe: the path
/// `current_exe` gives then names a deleted file, and every later step failed to start).
fn own_binary() -> Result<PathBuf> {
    let running = Path::new("/proc/self/exe");
    if running.exists() {
        return Ok(running.to_path_buf());
    }
    std::env::current_exe().context("finding the sembase binary")
}

/// Runs `command`, failing with its name when it fails (its own messages went to stderr).
fn checked(mut command: Command, what: &str) -> Result<()> {
    let status = command.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("train recipe: {what} failed ({status})");
    }
    Ok(())
}

/// Spearman of `model` on the sts `task`, with the recipe's prefix on both sides.
fn evaluate(args: &TrainArgs, model: &str, task: &str, json: &Path) -> Result<f64> {
    let mut command = sembase(args)?;
    command.args(["eval", "--model", model, "--task", task, "--no-cache", "--json"]).arg(json);
    if let Some(prefix) = &args.prefix {
        command.args(["--query-prefix", prefix]);
    }
    checked(command, &format!("evaluating {model}"))?;
    let report: Value = read_json(json)?;
    report["results"][0]["metrics"]["spearman"]
        .as_f64()
        .with_context(|| format!("{}: no Spearman", json.display()))
}

/// Mines hard negatives for `data` with the base model; returns mine's JSON report.
fn mine(args: &TrainArgs, data: &Path, output: &Path, json: &Path) -> Result<Value> {
    let mut command = sembase(args)?;
    command.args(["mine", "--model", &args.model, "--data"]).arg(data);
    command.arg("--output").arg(output).arg("--json").arg(json);
    if let Some(corpus) = &args.corpus {
        command.arg("--corpus").arg(corpus);
    }
    if let Some(prefix) = &args.prefix {
        command.args(["--prefix", prefix]);
    }
    checked(command, &format!("mining hard negatives for {}", data.display()))?;
    Ok(read_json(json)?)
}

/// A timing run, or the final run with evaluations on the held-out `task`.
enum Schedule<'a> {
    Probe,
    Final { max_steps: usize, epochs: usize, task: &'a str },
}

/// `train sts` on the whole mix into `output`; returns its JSON report, kept as `json`.
fn train(
    args: &TrainArgs,
    mix: &[Part],
    output: &Path,
    json: &Path,
    schedule: Schedule,
) -> Result<Value> {
    let mut command = sembase(args)?;
    command.args(["train", "sts", "--model", &args.model, "--sampling", SAMPLING.name()]);
    for part in mix {
        command.arg("--data").arg(part.spec());
    }
    command.arg("--output").arg(output).arg("--json").arg(json);
    let optional = [
        ("--prefix", args.prefix.clone()),
        ("--batch-size", args.batch_size.map(|v| v.to_string())),
        ("--lr", args.lr.map(|v| v.to_string())),
        ("--max-length", args.max_length.map(|v| v.to_string())),
        ("--seed", args.seed.map(|v| v.to_string())),
        ("--temperature", args.temperature.map(|v| v.to_string())),
        ("--warmup-ratio", args.warmup_ratio.map(|v| v.to_string())),
    ];
    for (flag, value) in optional {
        if let Some(value) = value {
            command.args([flag, &value]);
        }
    }
    if !args.dims.is_empty() {
        let dims: Vec<String> = args.dims.iter().map(usize::to_string).collect();
        command.args(["--dims", &dims.join(",")]);
    }
    match schedule {
        Schedule::Probe => {
            let _ = std::fs::remove_dir_all(output);
            command.args(["--max-steps", &PROBE_STEPS.to_string()]);
            checked(command, "timing a few training steps")?;
            let _ = std::fs::remove_dir_all(output);
        }
        Schedule::Final { max_steps, epochs, task } => {
            let every = (max_steps / EVALUATIONS).max(1);
            command.args(["--max-steps", &max_steps.to_string(), "--eval", task]);
            command.args(["--eval-steps", &every.to_string(), "--epochs", &epochs.to_string()]);
            checked(command, "training")?;
        }
    }
    Ok(read_json(json)?)
}

/// Adds the recipe's steps and figures to the output's model card.
fn append_to_card(output: &Path, summary: &Value) -> Result<()> {
    let card = output.join("README.md");
    let mut text = std::fs::read_to_string(&card).unwrap_or_default();
    text.push_str("\n## Recipe (`sembase train recipe`)\n\n");
    for step in summary["steps"].as_array().into_iter().flatten() {
        let name = step["step"].as_str().unwrap_or("step");
        let mut details = step.clone();
        if let Some(map) = details.as_object_mut() {
            map.remove("step");
            map.remove("eval");
        }
        text.push_str(&format!("- {name}: `{details}`\n"));
    }
    text.push_str(&format!(
        "\n{:.1} minutes in all; every figure is in `recipe.json`.\n",
        summary["minutes"].as_f64().unwrap_or(f64::NAN)
    ));
    Ok(sembase_embed::durable::write_bytes(&card, text.as_bytes())?)
}
