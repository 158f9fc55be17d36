//! Qwen2 (gte-Qwen2 embedders): the shared decoder stack with a bias on the
//! q, k and v projections (none on the output projection).

use super::decoder::DecoderOptions;
use super::decoder_config::DecoderConfig;

/// Qwen2's options.
pub fn options(_cfg: &DecoderConfig) -> DecoderOptions {
    DecoderOptions { qkv_bias: true, output_bias: false, qk_norm: false }
}
