//! Training a cross-encoder (a reranker): each (query, document) pair read jointly,
//! binary cross-entropy on its logit or a softmax over a query's group, evaluation by
//! scoring pairs, export as a sentence-transformers `CrossEncoder` directory.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::Var;
use sembase_core::{Mode, Truncation};
use sembase_embed::Reranker;
use sembase_eval::evaluate::{pair_metrics, sts_metrics};
use sembase_eval::tasks::{Task, TaskData, TaskKind, TaskSpec};

use crate::bi_encoder::SEED_SPREAD;
use crate::cross_export::export_cross_encoder;
use crate::cross_model::TrainableCrossEncoder;
use crate::data::{epoch_batches, CrossObjective, Example};
use crate::error::{Result, TrainError};
use crate::export::ModelCard;
use crate::losses::{binary_cross_entropy, listwise_softmax};
use crate::trainer::{headline_score, Evaluation, TrainState, Trainee};

/// A cross-encoder with its examples (from [`crate::data::load_cross_examples`]).
pub struct CrossEncoderTraining<'a> {
    model: &'a TrainableCrossEncoder,
    objective: CrossObjective,
    examples: Vec<Example>,
    eval_task: Option<Task>,
    card: ModelCard,
}

impl<'a> CrossEncoderTraining<'a> {
    /// Loads the evaluation task: scored or labelled pairs (`sts:` or `pairs:`).
    pub fn new(
        model: &'a TrainableCrossEncoder,
        objective: CrossObjective,
        examples: Vec<Example>,
        eval: Option<&TaskSpec>,
        card: ModelCard,
    ) -> Result<Self> {
        if let Some(spec) = eval.filter(|s| s.kind == TaskKind::Retrieval) {
            return Err(TrainError::Config(format!(
                "--eval {}: a cross-encoder is evaluated on sts: or pairs: files during training (rerank retrieval with `sembase eval --rerank`)",
                spec.name
            )));
        }
        let eval_task = eval.map(Task::load).transpose()?;
        Ok(Self { model, objective, examples, eval_task, card })
    }
}

/// The (query, document) pairs of a batch's rows in row order: one per binary row, one
/// per document of a listwise group.
fn batch_pairs<'e>(examples: &'e [Example], rows: &[usize]) -> Vec<(&'e str, &'e str)> {
    let mut pairs = Vec::new();
    for &i in rows {
        let (query, documents) = examples[i].texts.split_first().expect("a query");
        pairs.extend(documents.iter().map(|d| (query.as_str(), d.as_str())));
    }
    pairs
}

impl Trainee for CrossEncoderTraining<'_> {
    fn named_vars(&self) -> Vec<(String, Var)> {
        self.model.named_vars()
    }

    fn batches(&self, size: usize, seed: u64) -> Vec<Vec<usize>> {
        epoch_batches(&self.examples, size, seed, false)
    }

    fn gradients(&self, rows: &[usize], dropout_seed: u64) -> Result<(f32, GradStore)> {
        let pairs = batch_pairs(&self.examples, rows);
        let logits =
            self.model.score(&pairs, &Mode::training(dropout_seed.wrapping_mul(SEED_SPREAD)))?;
        let loss = match self.objective {
            CrossObjective::Binary => {
                let targets: Vec<f32> = rows.iter().map(|&i| self.examples[i].score).collect();
                binary_cross_entropy(&logits, &targets)?
            }
            CrossObjective::Listwise => {
                let sizes: Vec<usize> =
                    rows.iter().map(|&i| self.examples[i].texts.len() - 1).collect();
                listwise_softmax(&logits, &sizes)?
            }
        };
        let grads = loss.backward()?;
        Ok((loss.to_scalar::<f32>()?, grads))
    }

    fn evaluates(&self) -> bool {
        self.eval_task.is_some()
    }

    /// Relevance scores (the activation of the logits, what users are served) of the
    /// task's pairs against its gold scores or labels.
    fn evaluate(&self) -> Result<Evaluation> {
        let task = self.eval_task.as_ref().expect("called only with an evaluation task");
        let model = self.model.snapshot("training")?;
        let score = |pairs: Vec<(&str, &str)>| -> Result<Vec<f64>> {
            let encoded = pairs
                .iter()
                .map(|(q, d)| model.encode_pair(q, d, Truncation::Truncate))
                .collect::<sembase_core::Result<Vec<_>>>()?;
            let activation = model.activation();
            let logits = model.score_pairs(&encoded)?;
            Ok(logits.into_iter().map(|x| f64::from(activation.apply(x))).collect())
        };
        let metrics = match &task.data {
            TaskData::Sts(rows) => {
                let scores = score(rows.iter().map(|r| (&*r.sentence1, &*r.sentence2)).collect())?;
                sts_metrics(&scores, &rows.iter().map(|r| r.score).collect::<Vec<_>>())
            }
            TaskData::Pairs(rows) => {
                let scores = score(rows.iter().map(|r| (&*r.sentence1, &*r.sentence2)).collect())?;
                pair_metrics(&scores, &rows.iter().map(|r| r.label).collect::<Vec<_>>())
            }
            TaskData::Retrieval(_) => {
                return Err(TrainError::Config("retrieval evaluation of a cross-encoder".into()))
            }
        };
        let headline = headline_score(task.spec.kind.as_str(), &metrics);
        Ok(Evaluation { metrics, headline })
    }

    fn export(&self, out: &Path, state: &TrainState) -> Result<()> {
        export_cross_encoder(self.model, out, &self.card.with_state(state))
    }
}
