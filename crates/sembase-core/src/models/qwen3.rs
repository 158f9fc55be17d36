//! Qwen3 (Qwen3-Embedding 0.6B/4B/8B): the shared decoder stack with a per-head
//! RMSNorm on q and k before RoPE, and no q/k/v bias unless `attention_bias`.

use super::decoder::{DecoderModel, DecoderOptions};
use super::decoder_config::DecoderConfig;
use crate::error::Result;
use crate::weights::DecoderWeights;

/// Qwen3's options.
pub fn options(cfg: &DecoderConfig) -> DecoderOptions {
    DecoderOptions { qkv_bias: cfg.attention_bias, output_bias: cfg.attention_bias, qk_norm: true }
}

/// Loads a Qwen3 decoder.
pub fn load(w: &DecoderWeights, cfg: &DecoderConfig, with_lm_head: bool) -> Result<DecoderModel> {
    DecoderModel::load(w, cfg, options(cfg), with_lm_head)
}
