//! Qwen3 (Qwen3-Embedding 0.6B/4B/8B): the shared decoder stack with a per-head
//! RMSNorm on q and k before RoPE, and no q/k/v bias unless `attention_bias`.

use super::decoder::DecoderOptions;
use super::decoder_config::DecoderConfig;

/// Qwen3's options.
pub fn options(cfg: &DecoderConfig) -> DecoderOptions {
    DecoderOptions { qkv_bias: cfg.attention_bias, output_bias: cfg.attention_bias, qk_norm: true }
}
