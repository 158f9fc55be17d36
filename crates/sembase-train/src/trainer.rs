//! The training loop, shared by every kind of model sembase trains: the seeded
//! batch order, AdamW with warm-up and decay, clipping, evaluation with best-model
//! export, checkpoints and exact resume. What is trained (its variables, the loss of
//! a batch, its evaluation and export) is a [`Trainee`], so this code exists once.

use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::Var;
use sembase_eval::results::Metrics;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::error::{Result, TrainError};
use crate::optim::{linear_schedule, AdamW, AdamWConfig};

/// The loop's settings (defaults follow sentence-transformers' supervised training).
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Rows per batch (pairs, triplets, or a query's group).
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    /// Seeds the batch order and the dropout masks.
    pub seed: u64,
    /// Steps between evaluations (0: only at the end); the best is exported.
    pub eval_steps: usize,
    /// Steps between checkpoints (0: only on interruption).
    pub checkpoint_steps: usize,
}

impl Default for LoopConfig {
    /// Batches of 64, learning rate 2e-5, one epoch, 10% warm-up, gradients clipped at
    /// norm 1, seed 42.
    fn default() -> Self {
        Self {
            batch_size: 64,
            lr: 2e-5,
            epochs: 1,
            max_steps: None,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            seed: 42,
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

/// One evaluation of the current weights.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub metrics: Metrics,
    /// The score that decides the best export (higher is better).
    pub headline: f64,
}

/// The score that decides the best export: Spearman for sts and pairs, nDCG@10 for
/// retrieval; a missing or undefined value never wins.
pub fn headline_score(kind: &str, metrics: &Metrics) -> f64 {
    let name = if kind == "retrieval" { "ndcg@10" } else { "spearman" };
    metrics.get(name).filter(|v| v.is_finite()).unwrap_or(f64::NEG_INFINITY)
}

/// What a run trains: a model with its data, loss, evaluation and export. The loop
/// calls it and owns everything else.
pub trait Trainee {
    /// Every trainable variable under a unique, stable name: the optimiser's slots and
    /// the checkpoint's keys.
    fn named_vars(&self) -> Vec<(String, Var)>;
    /// Refuses a batch size its loss cannot use (the in-batch losses need two rows).
    fn check_batch_size(&self, _size: usize) -> Result<()> {
        Ok(())
    }
    /// The batches (row indices) of one epoch, shuffled by `seed`.
    fn batches(&self, size: usize, seed: u64) -> Vec<Vec<usize>>;
    /// The loss of `rows` and its gradients. Dropout masks come from `dropout_seed`, a
    /// function of the run's seed and the step only, so a resumed step replays exactly.
    fn gradients(&self, rows: &[usize], dropout_seed: u64) -> Result<(f32, GradStore)>;
    /// Whether an evaluation task is set.
    fn evaluates(&self) -> bool;
    /// Scores the current weights on the evaluation task (called only when [`Self::evaluates`]).
    fn evaluate(&self) -> Result<Evaluation>;
    /// Writes the model as it is now to `out`, atomically, recording `state` in its card.
    fn export(&self, out: &Path, state: &TrainState) -> Result<()>;
}

/// A configured run of a [`Trainee`], writing into `output`.
pub struct Trainer<'a> {
    trainee: &'a dyn Trainee,
    config: LoopConfig,
    optimizer: AdamW,
    output: PathBuf,
    pub state: TrainState,
}

impl<'a> Trainer<'a> {
    /// Checks the settings and prepares the optimiser over the trainee's variables.
    pub fn new(trainee: &'a dyn Trainee, config: LoopConfig, output: &Path) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(TrainError::Config("--batch-size must be at least 1".into()));
        }
        trainee.check_batch_size(config.batch_size)?;
        if !(config.lr > 0.0 && config.lr.is_finite()) {
            return Err(TrainError::Config("--lr must be positive".into()));
        }
        let optimizer = AdamW::new(trainee.named_vars(), AdamWConfig::default())?;
        Ok(Self {
            trainee,
            config,
            optimizer,
            output: output.to_path_buf(),
            state: TrainState::default(),
        })
    }

    /// Continues from a checkpoint written by an earlier run with the same settings.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        self.state = checkpoint::load(dir, &self.trainee.named_vars(), &mut self.optimizer)?;
        Ok(())
    }

    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        self.trainee.batches(self.config.batch_size, self.config.seed.wrapping_add(epoch as u64))
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
                if eval_due && self.trainee.evaluates() {
                    self.evaluate_and_keep_best(observer)?;
                }
                if self.config.checkpoint_steps > 0
                    && self.state.step.is_multiple_of(self.config.checkpoint_steps)
                {
                    self.save_checkpoint()?;
                }
                if observer.interrupted() {
                    return Ok(Finish::Interrupted { checkpoint: self.save_checkpoint()? });
                }
            }
            if self.state.batch_in_epoch >= batches.len() {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
            }
        }
        let last_evaluated = self.state.eval.last().map(|(s, _)| *s) == Some(self.state.step);
        if self.trainee.evaluates() && !last_evaluated {
            self.evaluate_and_keep_best(observer)?;
        }
        if !self.trainee.evaluates() {
            self.trainee.export(&self.output, &self.state)?;
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

    fn save_checkpoint(&self) -> Result<PathBuf> {
        let dir = self.checkpoint_dir();
        checkpoint::save(&dir, &self.trainee.named_vars(), &self.optimizer, &self.state)?;
        Ok(dir)
    }

    /// One optimiser step on the rows `batch`; returns the loss.
    fn train_step(&mut self, batch: &[usize], lr: f64) -> Result<f32> {
        let dropout_seed = (self.config.seed << 20) ^ ((self.state.step as u64) << 8);
        let (loss, grads) = self.trainee.gradients(batch, dropout_seed)?;
        if !loss.is_finite() {
            return Err(TrainError::NonFiniteLoss { step: self.state.step + 1, value: loss });
        }
        self.optimizer.step(&grads, lr, self.config.max_grad_norm)?;
        Ok(loss)
    }

    /// Evaluates the current weights; exports the model when the headline score improves.
    fn evaluate_and_keep_best(&mut self, observer: &dyn TrainObserver) -> Result<()> {
        let evaluation = self.trainee.evaluate()?;
        observer.on_eval(self.state.step, &evaluation.metrics);
        self.state
            .eval
            .push((self.state.step, serde_json::to_value(&evaluation.metrics).unwrap_or_default()));
        if self.state.best.is_none_or(|(_, best)| evaluation.headline > best) {
            self.state.best = Some((self.state.step, evaluation.headline));
            self.trainee.export(&self.output, &self.state)?;
        }
        Ok(())
    }
}
