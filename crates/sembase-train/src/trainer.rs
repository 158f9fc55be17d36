//! The training loop: batches, loss, gradients (optionally through cached
//! in-batch negatives), AdamW with warm-up and decay, clipping, evaluation
//! with best-model export, checkpoints and exact resume.

use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use sembase_core::Mode;
use sembase_eval::encode::{Encoder, EvalModel, Silent};
use sembase_eval::evaluate::{evaluate, Settings};
use sembase_eval::results::Metrics;
use sembase_eval::tasks::{Task, TaskSpec};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::data::{epoch_batches, Example, Objective};
use crate::error::{Result, TrainError};
use crate::export::{export_model, ModelCard};
use crate::losses::{cosent, in_batch_negatives, matryoshka};
use crate::optim::{linear_schedule, AdamW, AdamWConfig};
use crate::trainable::TrainableModel;

/// Settings of a run (defaults follow the SimCSE paper and sentence-transformers).
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub objective: Objective,
    pub batch_size: usize,
    /// Texts per forward pass with cached in-batch negatives (GradCache); `None`
    /// computes the whole batch in one pass.
    pub mini_batch: Option<usize>,
    pub lr: f64,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Logit scale of the contrastive losses (1 / temperature).
    pub scale: f64,
    /// Pairs: also make each positive pick its anchor.
    pub symmetric: bool,
    /// Matryoshka widths; empty trains the full width only.
    pub dims: Vec<usize>,
    /// Evaluated every `eval_steps` steps (and at the end); the best is exported.
    pub eval: Option<TaskSpec>,
    pub eval_steps: usize,
    /// Steps between checkpoints (0: only on interruption).
    pub checkpoint_steps: usize,
}

impl TrainConfig {
    /// The settings a caller gets without choosing: the SimCSE paper's for `simcse`
    /// (learning rate 3e-5), sentence-transformers' for the supervised objectives (2e-5);
    /// batches of 64, one epoch, 10% warm-up, gradients clipped at norm 1, temperature
    /// 0.05 (logit scale 20), seed 42.
    pub fn for_objective(objective: Objective) -> Self {
        Self {
            objective,
            batch_size: 64,
            mini_batch: None,
            lr: if objective == Objective::SimCse { 3e-5 } else { 2e-5 },
            epochs: 1,
            max_steps: None,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            seed: 42,
            scale: 20.0,
            symmetric: false,
            dims: Vec::new(),
            eval: None,
            eval_steps: 0,
            checkpoint_steps: 0,
        }
    }
}

/// What a run has done so far; saved in checkpoints and returned at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub epoch: usize,
    /// Batches of `epoch` already trained on.
    pub batch_in_epoch: usize,
    pub loss: Vec<(usize, f32)>,
    pub eval: Vec<(usize, serde_json::Value)>,
    /// Step and headline score of the best evaluation.
    pub best: Option<(usize, f64)>,
}

/// Hooks for progress display and interruption.
pub trait TrainObserver {
    /// After each optimiser step.
    fn on_step(&self, _step: usize, _total: usize, _loss: f32) {}
    /// After each evaluation.
    fn on_eval(&self, _step: usize, _metrics: &Metrics) {}
    /// Polled after each step: true stops the run with a checkpoint.
    fn interrupted(&self) -> bool {
        false
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Completed,
    /// Stopped early; the checkpoint directory allows `--resume`.
    Interrupted {
        checkpoint: PathBuf,
    },
}

/// A configured run over loaded examples, writing into `output`.
pub struct Trainer<'a> {
    model: &'a TrainableModel,
    config: TrainConfig,
    examples: Vec<Example>,
    vars: Vec<(String, Var)>,
    optimizer: AdamW,
    eval_task: Option<Task>,
    output: PathBuf,
    card: ModelCard,
    pub state: TrainState,
}

impl<'a> Trainer<'a> {
    /// Checks the settings and prepares the optimiser.
    pub fn new(
        model: &'a TrainableModel,
        config: TrainConfig,
        examples: Vec<Example>,
        output: &Path,
        card: ModelCard,
    ) -> Result<Self> {
        if config.batch_size < 2 {
            return Err(TrainError::Config(
                "--batch-size must be at least 2 (in-batch negatives)".into(),
            ));
        }
        if config.mini_batch == Some(0) {
            return Err(TrainError::Config("--mini-batch must be at least 1".into()));
        }
        if let Some(&d) = config.dims.iter().find(|&&d| d == 0 || d > model.dimension()) {
            return Err(TrainError::Config(format!(
                "--dims {d} is outside 1..={}",
                model.dimension()
            )));
        }
        if !(config.lr > 0.0 && config.lr.is_finite()) {
            return Err(TrainError::Config("--lr must be positive".into()));
        }
        let eval_task = config.eval.as_ref().map(Task::load).transpose()?;
        let vars = model.named_vars();
        let optimizer = AdamW::new(vars.clone(), AdamWConfig::default())?;
        Ok(Self {
            model,
            config,
            examples,
            vars,
            optimizer,
            eval_task,
            output: output.to_path_buf(),
            card,
            state: TrainState::default(),
        })
    }

    /// Continues from a checkpoint written by an earlier run with the same settings.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        self.state = checkpoint::load(dir, self.model, &mut self.optimizer)?;
        Ok(())
    }

    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let distinct = matches!(self.config.objective, Objective::Pairs | Objective::Triplets);
        epoch_batches(
            &self.examples,
            self.config.batch_size,
            self.config.seed.wrapping_add(epoch as u64),
            distinct,
        )
    }

    /// Optimiser steps the whole run takes.
    pub fn total_steps(&self) -> usize {
        let all: usize = (0..self.config.epochs).map(|e| self.batches(e).len()).sum();
        self.config.max_steps.map_or(all, |m| m.min(all))
    }

    /// Trains to the end (or until interrupted), evaluating and exporting on the way.
    pub fn run(&mut self, observer: &dyn TrainObserver) -> Result<Finish> {
        let total = self.total_steps();
        let warmup = (total as f64 * self.config.warmup_ratio).round() as usize;
        while self.state.epoch < self.config.epochs && self.state.step < total {
            let batches = self.batches(self.state.epoch);
            while self.state.batch_in_epoch < batches.len() && self.state.step < total {
                let batch = &batches[self.state.batch_in_epoch];
                let lr = linear_schedule(self.state.step, warmup, total, self.config.lr);
                let loss = self.train_step(batch, lr)?;
                self.state.step += 1;
                self.state.batch_in_epoch += 1;
                self.state.loss.push((self.state.step, loss));
                observer.on_step(self.state.step, total, loss);
                let eval_due = self.config.eval_steps > 0
                    && self.state.step.is_multiple_of(self.config.eval_steps);
                if eval_due && self.eval_task.is_some() {
                    self.evaluate_and_keep_best(observer)?;
                }
                if self.config.checkpoint_steps > 0
                    && self.state.step.is_multiple_of(self.config.checkpoint_steps)
                {
                    checkpoint::save(
                        &self.checkpoint_dir(),
                        self.model,
                        &self.optimizer,
                        &self.state,
                    )?;
                }
                if observer.interrupted() {
                    let dir = self.checkpoint_dir();
                    checkpoint::save(&dir, self.model, &self.optimizer, &self.state)?;
                    return Ok(Finish::Interrupted { checkpoint: dir });
                }
            }
            if self.state.batch_in_epoch >= batches.len() {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
            }
        }
        let last_evaluated = self.state.eval.last().map(|(s, _)| *s) == Some(self.state.step);
        if self.eval_task.is_some() && !last_evaluated {
            self.evaluate_and_keep_best(observer)?;
        }
        if self.eval_task.is_none() {
            export_model(self.model, &self.output, &self.card.with_state(&self.state))?;
        }
        Ok(Finish::Completed)
    }

    /// Where checkpoints go.
    pub fn checkpoint_dir(&self) -> PathBuf {
        let name = self
            .output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        self.output.with_file_name(format!("{name}.checkpoint"))
    }

    /// One optimiser step on the rows `batch`; returns the loss.
    fn train_step(&mut self, batch: &[usize], lr: f64) -> Result<f32> {
        let columns = self.columns(batch);
        let scores: Vec<f32> = batch.iter().map(|&i| self.examples[i].score).collect();
        let chunk = self.config.mini_batch.unwrap_or(batch.len()).min(batch.len());
        let (loss, grads) = if chunk >= batch.len() {
            let reps = columns
                .iter()
                .enumerate()
                .map(|(c, texts)| self.embed(texts, c, 0))
                .collect::<Result<Vec<_>>>()?;
            let loss = self.loss(&reps, &scores)?;
            let grads = loss.backward()?;
            (loss, grads)
        } else {
            self.cached_step(&columns, &scores, chunk)?
        };
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss { step: self.state.step + 1, value });
        }
        self.optimizer.step(&grads, lr, self.config.max_grad_norm)?;
        Ok(value)
    }

    /// The text columns of a batch; SimCSE passes each sentence twice.
    fn columns(&self, batch: &[usize]) -> Vec<Vec<&str>> {
        let width = self.examples[batch[0]].texts.len();
        let mut columns: Vec<Vec<&str>> = (0..width)
            .map(|c| batch.iter().map(|&i| self.examples[i].texts[c].as_str()).collect())
            .collect();
        if self.config.objective == Objective::SimCse {
            columns.push(columns[0].clone());
        }
        columns
    }

    /// Vectors of one column chunk, with dropout masks fixed by (seed, step, column, chunk).
    fn embed(&self, texts: &[&str], column: usize, chunk: usize) -> Result<Tensor> {
        let mix = (self.config.seed << 20)
            ^ ((self.state.step as u64) << 8)
            ^ ((column as u64) << 4)
            ^ chunk as u64;
        self.model.embed(texts, &Mode::training(mix.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// GradCache: vectors without a graph first, the loss's gradient with respect
    /// to them, then each chunk again with a graph, back-propagating that gradient.
    fn cached_step(
        &self,
        columns: &[Vec<&str>],
        scores: &[f32],
        chunk: usize,
    ) -> Result<(Tensor, GradStore)> {
        let mut rep_vars = Vec::with_capacity(columns.len());
        for (c, texts) in columns.iter().enumerate() {
            let parts = texts
                .chunks(chunk)
                .enumerate()
                .map(|(k, t)| Ok(self.embed(t, c, k)?.detach()))
                .collect::<Result<Vec<_>>>()?;
            rep_vars.push(Var::from_tensor(&Tensor::cat(&parts, 0)?)?);
        }
        let reps: Vec<Tensor> = rep_vars.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = self.loss(&reps, scores)?;
        let rep_grads = loss.backward()?;
        let mut total: Option<GradStore> = None;
        for (c, texts) in columns.iter().enumerate() {
            let g = rep_grads
                .get(rep_vars[c].as_tensor())
                .ok_or_else(|| TrainError::Config("no gradient reached the vectors".into()))?;
            for (k, t) in texts.chunks(chunk).enumerate() {
                let part = self.embed(t, c, k)?;
                let surrogate = (part * g.narrow(0, k * chunk, t.len())?)?.sum_all()?;
                let grads = surrogate.backward()?;
                total = Some(match total {
                    None => grads,
                    Some(mut acc) => {
                        for (_, var) in &self.vars {
                            if let Some(new) = grads.get(var.as_tensor()) {
                                let sum = match acc.get(var.as_tensor()) {
                                    Some(old) => (old + new)?,
                                    None => new.clone(),
                                };
                                acc.insert(var.as_tensor(), sum);
                            }
                        }
                        acc
                    }
                });
            }
        }
        Ok((loss.detach(), total.expect("at least one chunk")))
    }

    /// The objective's loss on column vectors (Matryoshka over `dims` when set).
    fn loss(&self, reps: &[Tensor], scores: &[f32]) -> Result<Tensor> {
        let refs: Vec<&Tensor> = reps.iter().collect();
        let scale = self.config.scale;
        let symmetric = self.config.symmetric;
        matryoshka(&refs, &self.config.dims, |r| match self.config.objective {
            Objective::SimCse | Objective::Pairs => {
                in_batch_negatives(&r[0], &r[1], scale, symmetric)
            }
            Objective::Triplets => {
                in_batch_negatives(&r[0], &Tensor::cat(&[&r[1], &r[2]], 0)?, scale, false)
            }
            Objective::Sts => cosent(&r[0], &r[1], scores, scale),
        })
    }

    /// Evaluates the current weights; exports the model when the headline score improves.
    fn evaluate_and_keep_best(&mut self, observer: &dyn TrainObserver) -> Result<()> {
        let Some(task) = &self.eval_task else { return Ok(()) };
        let embedder = self.model.snapshot("training")?;
        let eval_model = EvalModel {
            embedder: Box::new(embedder),
            cache_id: String::new(),
            truncate_locally: true,
        };
        let encoder = Encoder::new(&eval_model, None, &Silent);
        let settings = Settings {
            query_prefix: self.card.prefix.clone(),
            doc_prefix: self.card.doc_prefix.clone(),
            dimensions: None,
        };
        let result = evaluate(&encoder, task, &settings)?;
        observer.on_eval(self.state.step, &result.metrics);
        let headline = headline_score(&result.kind, &result.metrics);
        self.state
            .eval
            .push((self.state.step, serde_json::to_value(&result.metrics).unwrap_or_default()));
        if self.state.best.is_none_or(|(_, best)| headline > best) {
            self.state.best = Some((self.state.step, headline));
            export_model(self.model, &self.output, &self.card.with_state(&self.state))?;
        }
        Ok(())
    }
}

/// The score that decides the best checkpoint: Spearman for sts and pairs, nDCG@10 for retrieval.
fn headline_score(kind: &str, metrics: &Metrics) -> f64 {
    let name = if kind == "retrieval" { "ndcg@10" } else { "spearman" };
    metrics.get(name).filter(|v| v.is_finite()).unwrap_or(f64::NEG_INFINITY)
}
