//! XLM-RoBERTa: a BERT whose position ids start after the padding index
//! (`pad_token_id + 1`), with a single token type.

use candle_nn::VarBuilder;

use super::bert::{BertModel, PositionScheme};
use super::config::TransformerConfig;
use super::CpuInference;
use crate::error::Result;

/// Loads an XLM-RoBERTa (or RoBERTa) encoder, prepared for CPU inference as `cpu`
/// says; it runs as a [`BertModel`].
pub fn load(vb: VarBuilder, cfg: &TransformerConfig, cpu: &CpuInference) -> Result<BertModel> {
    let pad = cfg.pad_token_id.unwrap_or(1);
    BertModel::load_with_positions(vb, cfg, PositionScheme::AfterPadding { pad }, cpu)
}
