//! MPNet: BERT-style embeddings without token types, and a learned relative
//! position bias (T5-style buckets) added to the attention scores of every layer.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::bert::{PositionScheme, TokenEmbeddings};
use super::config::TransformerConfig;
use super::encoder::{Encoder, LayerWeightNames};
use super::{CpuInference, TextEncoder};
use crate::error::Result;
use crate::layers::Embedding;
use crate::mode::Mode;
use crate::packed::PackedBatch;

/// MPNet's weight names inside `encoder.layer.N`.
const MPNET_LAYER_NAMES: LayerWeightNames = LayerWeightNames {
    query: "attention.attn.q",
    key: "attention.attn.k",
    value: "attention.attn.v",
    attention_output: "attention.attn.o",
    attention_norm: "attention.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

/// Distances beyond this share the last bucket.
const MAX_DISTANCE: usize = 128;

/// The MPNet encoder.
#[derive(Debug, Clone)]
pub struct MpnetModel {
    embeddings: TokenEmbeddings,
    encoder: Encoder,
    relative_bias: Embedding,
    buckets: usize,
    hidden_size: usize,
}

impl MpnetModel {
    /// Loads an MPNet whose weights sit under `vb`.
    /// Prepared for CPU inference as `cpu` says.
    pub fn load(vb: VarBuilder, cfg: &TransformerConfig, cpu: &CpuInference) -> Result<Self> {
        let pad = cfg.pad_token_id.unwrap_or(1);
        let buckets = cfg.relative_attention_num_buckets;
        Ok(Self {
            embeddings: TokenEmbeddings::load(
                vb.pp("embeddings"),
                cfg,
                PositionScheme::AfterPadding { pad },
                false,
                cpu.mapped.as_ref(),
            )?,
            encoder: Encoder::load(vb.pp("encoder"), cfg, &MPNET_LAYER_NAMES, cpu.int8)?,
            relative_bias: Embedding::load(
                vb.pp("encoder.relative_attention_bias"),
                buckets,
                cfg.num_attention_heads,
            )?,
            buckets,
            hidden_size: cfg.hidden_size,
        })
    }

    /// `(1, heads, seq, seq)` bias from the bucketed key-minus-query distance.
    fn position_bias(&self, seq: usize, device: &Device) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..seq)
            .flat_map(|q| (0..seq).map(move |k| (q, k)))
            .map(|(q, k)| {
                relative_position_bucket(k as i64 - q as i64, self.buckets, MAX_DISTANCE) as u32
            })
            .collect();
        let ids = Tensor::from_vec(buckets, (seq, seq), device)?;
        let bias = self.relative_bias.forward(&ids)?; // (seq, seq, heads)
        Ok(bias.permute((2, 0, 1))?.unsqueeze(0)?)
    }
}

/// The bucket of a relative distance: half the buckets for each direction,
/// exact for short distances, logarithmic up to `max_distance`. Computed in
/// f32 as the reference implementation does, so truncation agrees.
fn relative_position_bucket(relative: i64, buckets: usize, max_distance: usize) -> usize {
    let half = buckets / 2;
    let n = -relative;
    let base = if n < 0 { half } else { 0 };
    let n = n.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return base + n;
    }
    let log_ratio =
        (n as f32 / max_exact as f32).ln() / ((max_distance as f64 / max_exact as f64).ln() as f32);
    let large = max_exact + (log_ratio * (half - max_exact) as f32) as usize;
    base + large.min(half - 1)
}

impl TextEncoder for MpnetModel {
    fn forward(&self, batch: &PackedBatch, mode: &Mode) -> Result<Tensor> {
        let ids = batch.ids();
        let x = self.embeddings.forward(ids, batch.mask(), None, mode)?;
        let bias = self.position_bias(batch.width(), ids.device())?;
        self.encoder.forward(&x, batch, Some(&bias), mode)
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

#[cfg(test)]
mod tests {
    use super::relative_position_bucket;

    #[test]
    fn buckets_match_the_reference_table() {
        // Values printed by transformers' MPNetEncoder.relative_position_bucket (32 buckets, max distance 128).
        let cases = [
            (0, 0),
            (-1, 1),
            (1, 17),
            (-7, 7),
            (-8, 8),
            (-12, 9),
            (-20, 10),
            (-127, 15),
            (-500, 15),
            (8, 24),
            (500, 31),
        ];
        for (relative, expected) in cases {
            assert_eq!(
                relative_position_bucket(relative, 32, 128),
                expected,
                "relative {relative}"
            );
        }
    }
}
