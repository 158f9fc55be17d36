//! BERT (and the MiniLM checkpoints, which are BERTs): token, position and
//! segment embeddings, then the shared post-norm encoder.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::config::TransformerConfig;
use super::encoder::{Encoder, LayerWeightNames};
use super::{CpuInference, TextEncoder};
use crate::error::Result;
use crate::layers::{Dropout, Embedding, LayerNorm};
use crate::mode::Mode;
use crate::packed::PackedBatch;
use crate::weights::MappedWeights;

/// BERT's weight names inside `encoder.layer.N`.
pub const BERT_LAYER_NAMES: LayerWeightNames = LayerWeightNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

/// How position ids are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionScheme {
    /// 0, 1, 2, ... for every row (BERT).
    FromZero,
    /// Real tokens count from `pad + 1`, padding gets `pad` (RoBERTa family, MPNet).
    AfterPadding { pad: u32 },
}

impl PositionScheme {
    /// Position ids `(batch, seq)` for a right-padded batch with `mask` (1 real, 0 padding).
    pub fn ids(&self, mask: &Tensor) -> Result<Tensor> {
        let (b, s) = mask.dims2()?;
        match *self {
            Self::FromZero => {
                Ok(Tensor::arange(0u32, s as u32, mask.device())?.unsqueeze(0)?.repeat((b, 1))?)
            }
            Self::AfterPadding { pad } => {
                let mask = mask.to_dtype(DType::F32)?;
                let counted = (mask.cumsum(1)? * &mask)?;
                Ok((counted + pad as f64)?.to_dtype(DType::U32)?)
            }
        }
    }

    /// How many tokens a sequence may hold given the position table's rows.
    pub fn max_tokens(&self, position_rows: usize) -> usize {
        match *self {
            Self::FromZero => position_rows,
            Self::AfterPadding { pad } => position_rows.saturating_sub(pad as usize + 1),
        }
    }
}

/// Word + position (+ segment) embeddings, layer norm and dropout.
#[derive(Debug, Clone)]
pub struct TokenEmbeddings {
    word: Embedding,
    position: Embedding,
    segment: Option<Embedding>,
    norm: LayerNorm,
    dropout: Dropout,
    positions: PositionScheme,
}

impl TokenEmbeddings {
    /// Loads from `vb` (pointing at `embeddings`); `with_segments` adds the
    /// token-type table: type 0 for single texts, the batch's segment ids for pairs. Tables are read in
    /// place from `mapped` when given.
    pub fn load(
        vb: VarBuilder,
        cfg: &TransformerConfig,
        positions: PositionScheme,
        with_segments: bool,
        mapped: Option<&MappedWeights>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let segment = if with_segments {
            Some(Embedding::load_mapped(
                vb.pp("token_type_embeddings"),
                cfg.type_vocab_size,
                h,
                mapped,
            )?)
        } else {
            None
        };
        Ok(Self {
            word: Embedding::load_mapped(vb.pp("word_embeddings"), cfg.vocab_size, h, mapped)?,
            position: Embedding::load_mapped(
                vb.pp("position_embeddings"),
                cfg.max_position_embeddings,
                h,
                mapped,
            )?,
            segment,
            norm: LayerNorm::load(vb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            positions,
        })
    }

    /// Rows of the word table.
    pub fn vocab_size(&self) -> usize {
        self.word.rows()
    }

    /// Longest sequence the position table allows.
    pub fn max_tokens(&self) -> usize {
        self.positions.max_tokens(self.position.rows())
    }

    /// `(batch, seq)` ids -> `(batch, seq, hidden)`; `segments` are the token type ids
    /// of pairs (`None`: segment 0 everywhere).
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        segments: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<Tensor> {
        let positions = self.positions.ids(mask)?;
        let types = match (&self.segment, segments) {
            (None, _) => None,
            (Some(_), Some(given)) => Some(given.clone()),
            (Some(_), None) => Some(ids.zeros_like()?),
        };
        let mut lookups = vec![(&self.word, ids), (&self.position, &positions)];
        lookups.extend(self.segment.as_ref().zip(types.as_ref()));
        let x = Embedding::sum_of_lookups(&lookups)?;
        self.dropout.forward(&self.norm.forward(&x)?, mode)
    }
}

/// The BERT encoder (no pooler: sentence-transformers pools token states itself).
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: TokenEmbeddings,
    encoder: Encoder,
    hidden_size: usize,
}

impl BertModel {
    /// Loads a BERT whose weights sit under `vb` (the prefix already resolved),
    /// prepared for CPU inference as `cpu` says.
    pub fn load(vb: VarBuilder, cfg: &TransformerConfig, cpu: &CpuInference) -> Result<Self> {
        Self::load_with_positions(vb, cfg, PositionScheme::FromZero, cpu)
    }

    /// Loads a BERT-shaped model with the given position numbering (XLM-R reuses this).
    pub fn load_with_positions(
        vb: VarBuilder,
        cfg: &TransformerConfig,
        positions: PositionScheme,
        cpu: &CpuInference,
    ) -> Result<Self> {
        Ok(Self {
            embeddings: TokenEmbeddings::load(
                vb.pp("embeddings"),
                cfg,
                positions,
                true,
                cpu.mapped.as_ref(),
            )?,
            encoder: Encoder::load(vb.pp("encoder"), cfg, &BERT_LAYER_NAMES, cpu.int8)?,
            hidden_size: cfg.hidden_size,
        })
    }
}

impl TextEncoder for BertModel {
    fn forward(&self, batch: &PackedBatch, mode: &Mode) -> Result<Tensor> {
        let x = self.embeddings.forward(batch.ids(), batch.mask(), batch.segments(), mode)?;
        self.encoder.forward(&x, batch, None, mode)
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn max_tokens(&self) -> usize {
        self.embeddings.max_tokens()
    }

    fn vocab_size(&self) -> usize {
        self.embeddings.vocab_size()
    }
}
