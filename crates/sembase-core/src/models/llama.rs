//! LLaMA (and Mistral, SmolLM2: the same layer with grouped-query attention):
//! the shared decoder stack with no q/k norm and LLaMA's optional `attention_bias`.

use super::decoder::DecoderOptions;
use super::decoder_config::DecoderConfig;

/// LLaMA's options: `attention_bias` puts a bias on q, k, v and o.
pub fn options(cfg: &DecoderConfig) -> DecoderOptions {
    DecoderOptions { qkv_bias: cfg.attention_bias, output_bias: cfg.attention_bias, qk_norm: false }
}
