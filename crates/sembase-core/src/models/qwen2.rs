//! Qwen2 (gte-Qwen2 embedders): the shared decoder stack with a bias on the
//! q, k and v projections (none on the output projection).

use super::decoder::{DecoderModel, DecoderOptions};
use super::decoder_config::DecoderConfig;
use crate::error::Result;
use crate::weights::DecoderWeights;

/// Qwen2's options.
pub fn options(_cfg: &DecoderConfig) -> DecoderOptions {
    DecoderOptions { qkv_bias: true, output_bias: false, qk_norm: false }
}

/// Loads a Qwen2 decoder.
pub fn load(w: &DecoderWeights, cfg: &DecoderConfig, with_lm_head: bool) -> Result<DecoderModel> {
    DecoderModel::load(w, cfg, options(cfg), with_lm_head)
}
