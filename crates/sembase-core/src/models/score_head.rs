//! The scoring head of a `*ForSequenceClassification` checkpoint (a cross-encoder):
//! the first token's state -> dense -> tanh -> linear -> one logit per label. BERT
//! keeps the dense map as its pooler (`bert.pooler.dense`, then `classifier`);
//! RoBERTa, XLM-R and MPNet keep both maps in the classifier (`classifier.dense`,
//! `classifier.out_proj`) and drop out the first token's state before the dense map.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::layers::{Dropout, Linear};
use crate::mode::Mode;

/// Where an architecture keeps its encoder and its head, as transformers names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadNames {
    /// The encoder's prefix in the checkpoint (`bert`, `roberta`, `mpnet`).
    pub encoder: &'static str,
    /// The dense map after the first token.
    pub dense: &'static str,
    /// The map to the labels.
    pub out: &'static str,
    /// Whether dropout also runs before the dense map (RoBERTa's head).
    pub dropout_first: bool,
}

impl HeadNames {
    /// The names of `model_type`'s sequence-classification checkpoints.
    pub fn for_model_type(model_type: &str) -> Result<Self> {
        let classifier = |encoder| Self {
            encoder,
            dense: "classifier.dense",
            out: "classifier.out_proj",
            dropout_first: true,
        };
        Ok(match model_type {
            "bert" => Self {
                encoder: "bert",
                dense: "bert.pooler.dense",
                out: "classifier",
                dropout_first: false,
            },
            "xlm-roberta" | "roberta" | "camembert" => classifier("roberta"),
            "mpnet" => classifier("mpnet"),
            other => {
                return Err(Error::Unsupported(format!(
                    "cross-encoders of model_type {other:?} (supported: bert, xlm-roberta, roberta, mpnet)"
                )))
            }
        })
    }
}

/// The head's maps; plain tensors for inference, variables in training.
#[derive(Debug, Clone)]
pub struct ScoreHead {
    dense: Linear,
    out: Linear,
    dropout: Dropout,
    dropout_first: bool,
}

impl ScoreHead {
    /// Loads the head named by `names` from `vb` (the checkpoint's root) for `labels`
    /// outputs; in a `VarMap` the maps start as transformers initialises a new head
    /// (normal with deviation 0.02, zero bias).
    pub fn load(
        vb: &VarBuilder,
        names: &HeadNames,
        hidden: usize,
        labels: usize,
        dropout: f32,
    ) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(vb.pp(names.dense), hidden, hidden, true)?,
            out: Linear::load(vb.pp(names.out), hidden, labels, true)?,
            dropout: Dropout::new(dropout),
            dropout_first: names.dropout_first,
        })
    }

    /// `(batch, seq, hidden)` token states -> `(batch, labels)` logits, read from each
    /// sequence's first token.
    pub fn forward(&self, states: &Tensor, mode: &Mode) -> Result<Tensor> {
        let first = states.narrow(1, 0, 1)?.squeeze(1)?;
        let first = if self.dropout_first { self.dropout.forward(&first, mode)? } else { first };
        let pooled = self.dense.forward(&first)?.tanh()?;
        self.out.forward(&self.dropout.forward(&pooled, mode)?)
    }

    /// Number of labels.
    pub fn labels(&self) -> usize {
        self.out.out_dim()
    }
}
