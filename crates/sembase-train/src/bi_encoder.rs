//! Training a bi-encoder (a sentence embedding model): each text embedded on its own,
//! the contrastive or ranking loss on the vectors (optionally through cached in-batch
//! negatives) or, with a cross-encoder teacher, the distillation of its scores;
//! evaluation by embedding, export in sentence-transformers layout.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use sembase_core::Mode;
use sembase_embed::Reranker;
use sembase_eval::encode::{Encoder, EvalModel, Silent};
use sembase_eval::evaluate::{evaluate, Settings};
use sembase_eval::tasks::{Task, TaskSpec};

use crate::data::{Dataset, Example, Objective};
use crate::distill::{teacher_scores, DistillTarget};
use crate::error::{Result, TrainError};
use crate::export::{export_model, ModelCard};
use crate::losses::{
    angle, cosent, cosent_with_negatives, distill_kl, in_batch_negatives, margin_mse, matryoshka,
};
use crate::sampler::{Mixture, Sampling};
use crate::trainable::TrainableModel;
use crate::trainer::{headline_score, Evaluation, TrainState, Trainee};

/// Multiplier that spreads a step's dropout seed over the generator's state space.
pub(crate) const SEED_SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

/// Settings of a bi-encoder objective (defaults follow the SimCSE paper and
/// sentence-transformers).
#[derive(Debug, Clone)]
pub struct BiEncoderConfig {
    /// The objective of rows given without one (see [`BiEncoderTraining::new`]).
    pub objective: Objective,
    /// The loss on scored pairs (sts datasets).
    pub sts_loss: StsLoss,
    /// How the batches of several datasets interleave.
    pub sampling: Sampling,
    /// Texts per forward pass with cached in-batch negatives (GradCache); `None`
    /// computes the whole batch in one pass.
    pub mini_batch: Option<usize>,
    /// Logit scale of the contrastive losses (1 / temperature).
    pub scale: f64,
    /// Pairs: also make each positive pick its anchor.
    pub symmetric: bool,
    /// Matryoshka widths; empty trains the full width only.
    pub dims: Vec<usize>,
    /// Evaluated during training; the best is exported.
    pub eval: Option<TaskSpec>,
}

impl BiEncoderConfig {
    /// Full batches, temperature 0.05 (logit scale 20), full width, no evaluation.
    pub fn new(objective: Objective) -> Self {
        Self {
            objective,
            sts_loss: StsLoss::Cosent,
            sampling: Sampling::Proportional,
            mini_batch: None,
            scale: 20.0,
            symmetric: false,
            dims: Vec::new(),
            eval: None,
        }
    }
}

/// The loss on scored pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StsLoss {
    /// CoSENT on the cosine.
    Cosent,
    /// AnglE: CoSENT's ranking on the angle difference in complex space.
    Angle,
    /// CoSENT plus `weight` times in-batch negatives over the positive pairs (the top
    /// fifth of the file's score range, see [`Dataset::positive_threshold`]).
    CosentMnrl { weight: f64 },
}

impl StsLoss {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosent => "cosent",
            Self::Angle => "angle",
            Self::CosentMnrl { .. } => "cosent+mnrl",
        }
    }
}

impl FromStr for StsLoss {
    type Err = TrainError;

    /// `cosent+mnrl` weighs both terms alike.
    fn from_str(name: &str) -> Result<Self> {
        [Self::Cosent, Self::Angle, Self::CosentMnrl { weight: 1.0 }]
            .into_iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| {
                TrainError::Config(format!("--loss {name}: expected cosent, angle or cosent+mnrl"))
            })
    }
}

/// A sentence embedding model with its datasets, each with its objective.
pub struct BiEncoderTraining<'a> {
    model: &'a TrainableModel,
    config: BiEncoderConfig,
    data: Mixture,
    eval_task: Option<Task>,
    card: ModelCard,
    /// The cross-encoder whose scores the student learns instead of the data's labels.
    teacher: Option<&'a dyn Reranker>,
}

impl<'a> BiEncoderTraining<'a> {
    /// One set of rows trained by `config.objective`.
    pub fn new(
        model: &'a TrainableModel,
        config: BiEncoderConfig,
        examples: Vec<Example>,
        card: ModelCard,
    ) -> Result<Self> {
        let data = Dataset { objective: config.objective, path: PathBuf::new(), examples };
        Self::with_datasets(model, config, vec![data], card)
    }

    /// Several datasets, each batch drawn from one of them and trained by its objective;
    /// checks the settings against the model and loads the evaluation task.
    pub fn with_datasets(
        model: &'a TrainableModel,
        config: BiEncoderConfig,
        datasets: Vec<Dataset>,
        card: ModelCard,
    ) -> Result<Self> {
        if datasets.is_empty() {
            return Err(TrainError::Config("no training data (--data)".into()));
        }
        let has_sts = datasets.iter().any(|d| d.objective == Objective::Sts);
        if config.sts_loss != StsLoss::Cosent && !has_sts {
            return Err(TrainError::Config(format!(
                "--loss {} applies to sts data, and this run has none",
                config.sts_loss.name()
            )));
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
        let eval_task = config.eval.as_ref().map(Task::load).transpose()?;
        let data = Mixture::new(datasets);
        Ok(Self { model, config, data, eval_task, card, teacher: None })
    }

    /// Trains the student to reproduce `teacher`'s scores: MarginMSE on triplets, KL
    /// divergence over in-batch candidates on pairs and scored pairs (their labels unused).
    pub fn with_teacher(mut self, teacher: &'a dyn Reranker) -> Result<Self> {
        if self.data.datasets().iter().any(|d| d.objective == Objective::SimCse) {
            return Err(TrainError::Config(
                "--teacher needs pairs, sts or triplets data (simcse has no pairs to score)".into(),
            ));
        }
        if self.config.sts_loss != StsLoss::Cosent {
            return Err(TrainError::Config(format!(
                "--loss {} does not apply with --teacher (the teacher's scores are the targets)",
                self.config.sts_loss.name()
            )));
        }
        self.teacher = Some(teacher);
        Ok(self)
    }

    /// What a teacher's scores are compared with, by the shape of the rows.
    fn distill_target(objective: Objective) -> DistillTarget {
        if objective == Objective::Triplets {
            DistillTarget::Margins
        } else {
            DistillTarget::InBatch
        }
    }

    /// The text columns of a batch; SimCSE passes each sentence twice.
    fn columns(&self, batch: &[usize], objective: Objective) -> Vec<Vec<&str>> {
        let width = self.data.row(batch[0]).texts.len();
        let mut columns: Vec<Vec<&str>> = (0..width)
            .map(|c| batch.iter().map(|&i| self.data.row(i).texts[c].as_str()).collect())
            .collect();
        if objective == Objective::SimCse {
            columns.push(columns[0].clone());
        }
        columns
    }

    /// Vectors of one column chunk, with dropout masks fixed by (step seed, column, chunk).
    fn embed(
        &self,
        texts: &[&str],
        dropout_seed: u64,
        column: usize,
        chunk: usize,
    ) -> Result<Tensor> {
        let mix = dropout_seed ^ ((column as u64) << 4) ^ chunk as u64;
        self.model.embed(texts, &Mode::training(mix.wrapping_mul(SEED_SPREAD)))
    }

    /// GradCache: vectors without a graph first, the loss's gradient with respect
    /// to them, then each chunk again with a graph, back-propagating that gradient.
    fn cached_step(
        &self,
        columns: &[Vec<&str>],
        targets: &Targets,
        chunk: usize,
        dropout_seed: u64,
    ) -> Result<(Tensor, GradStore)> {
        let mut rep_vars = Vec::with_capacity(columns.len());
        for (c, texts) in columns.iter().enumerate() {
            let parts = texts
                .chunks(chunk)
                .enumerate()
                .map(|(k, t)| Ok(self.embed(t, dropout_seed, c, k)?.detach()))
                .collect::<Result<Vec<_>>>()?;
            rep_vars.push(Var::from_tensor(&Tensor::cat(&parts, 0)?)?);
        }
        let reps: Vec<Tensor> = rep_vars.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = self.loss(&reps, targets)?;
        let rep_grads = loss.backward()?;
        let vars = self.model.named_vars();
        let mut total: Option<GradStore> = None;
        for (c, texts) in columns.iter().enumerate() {
            let g = rep_grads
                .get(rep_vars[c].as_tensor())
                .ok_or_else(|| TrainError::Config("no gradient reached the vectors".into()))?;
            for (k, t) in texts.chunks(chunk).enumerate() {
                let part = self.embed(t, dropout_seed, c, k)?;
                let surrogate = (part * g.narrow(0, k * chunk, t.len())?)?.sum_all()?;
                let grads = surrogate.backward()?;
                total = Some(match total {
                    None => grads,
                    Some(mut acc) => {
                        for (_, var) in &vars {
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

    /// What a batch's loss compares the vectors with: its dataset's objective, the rows'
    /// scores (and which mark positives), and the teacher's scores when distilling.
    fn targets(
        &self,
        batch: &[usize],
        dataset: &Dataset,
        columns: &[Vec<&str>],
    ) -> Result<Targets> {
        let objective = dataset.objective;
        let prefix = self.card.prefix.as_deref();
        let teacher = self
            .teacher
            .map(|t| teacher_scores(t, Self::distill_target(objective), columns, prefix))
            .transpose()?;
        let scores: Vec<f32> = batch.iter().map(|&i| self.data.row(i).score).collect();
        let threshold = dataset.positive_threshold();
        let positive = scores.iter().map(|&s| s >= threshold).collect();
        Ok(Targets { objective, scores, positive, teacher })
    }

    /// The objective's loss on column vectors (Matryoshka over `dims` when set).
    fn loss(&self, reps: &[Tensor], targets: &Targets) -> Result<Tensor> {
        let refs: Vec<&Tensor> = reps.iter().collect();
        let scale = self.config.scale;
        let symmetric = self.config.symmetric;
        let scores = &targets.scores;
        matryoshka(&refs, &self.config.dims, |r| match (&targets.teacher, targets.objective) {
            (Some(teacher), Objective::Triplets) => margin_mse(&r[0], &r[1], &r[2], teacher, scale),
            (Some(teacher), _) => distill_kl(&r[0], &r[1], teacher, scale),
            (None, Objective::SimCse | Objective::Pairs) => {
                in_batch_negatives(&r[0], &r[1], scale, symmetric)
            }
            (None, Objective::Triplets) => {
                in_batch_negatives(&r[0], &Tensor::cat(&[&r[1], &r[2]], 0)?, scale, false)
            }
            (None, Objective::Sts) => match self.config.sts_loss {
                StsLoss::Cosent => cosent(&r[0], &r[1], scores, scale),
                StsLoss::Angle => angle(&r[0], &r[1], scores, scale),
                StsLoss::CosentMnrl { weight } => {
                    cosent_with_negatives(&r[0], &r[1], scores, &targets.positive, scale, weight)
                }
            },
        })
    }
}

/// A batch's targets (see [`BiEncoderTraining::targets`]).
struct Targets {
    objective: Objective,
    scores: Vec<f32>,
    /// Rows whose score marks them positive (for in-batch negatives on scored pairs).
    positive: Vec<bool>,
    teacher: Option<Tensor>,
}

impl Trainee for BiEncoderTraining<'_> {
    fn named_vars(&self) -> Vec<(String, Var)> {
        self.model.named_vars()
    }

    fn check_batch_size(&self, size: usize) -> Result<()> {
        if size < 2 {
            return Err(TrainError::Config(
                "--batch-size must be at least 2 (in-batch negatives)".into(),
            ));
        }
        Ok(())
    }

    /// Distinct texts in a batch wherever its rows meet as in-batch negatives.
    fn batches(&self, size: usize, seed: u64) -> Vec<Vec<usize>> {
        let negatives_on_scores = matches!(self.config.sts_loss, StsLoss::CosentMnrl { .. });
        self.data.batches(size, seed, self.config.sampling, |d| match d.objective {
            Objective::Pairs | Objective::Triplets => true,
            Objective::Sts => negatives_on_scores,
            Objective::SimCse => false,
        })
    }

    fn gradients(&self, batch: &[usize], dropout_seed: u64) -> Result<(f32, GradStore)> {
        let dataset = self.data.dataset_of(batch[0]);
        let columns = self.columns(batch, dataset.objective);
        let targets = self.targets(batch, dataset, &columns)?;
        let chunk = self.config.mini_batch.unwrap_or(batch.len()).min(batch.len());
        let (loss, grads) = if chunk >= batch.len() {
            let reps = columns
                .iter()
                .enumerate()
                .map(|(c, texts)| self.embed(texts, dropout_seed, c, 0))
                .collect::<Result<Vec<_>>>()?;
            let loss = self.loss(&reps, &targets)?;
            let grads = loss.backward()?;
            (loss, grads)
        } else {
            self.cached_step(&columns, &targets, chunk, dropout_seed)?
        };
        Ok((loss.to_scalar::<f32>()?, grads))
    }

    fn evaluates(&self) -> bool {
        self.eval_task.is_some()
    }

    fn evaluate(&self) -> Result<Evaluation> {
        let task = self.eval_task.as_ref().expect("called only with an evaluation task");
        let eval_model = EvalModel {
            embedder: Box::new(self.model.snapshot("training")?),
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
        let headline = headline_score(&result.kind, &result.metrics);
        Ok(Evaluation { metrics: result.metrics, headline })
    }

    fn export(&self, out: &Path, state: &TrainState) -> Result<()> {
        export_model(self.model, out, &self.card.with_state(state))
    }
}
