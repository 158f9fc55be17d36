//! The pre-norm decoder stack shared by LLaMA/Mistral, Qwen2 and Qwen3:
//! RMSNorm, rotary positions, grouped-query causal attention and a SwiGLU MLP.
//! The architectures differ only in [`DecoderOptions`] (q/k/v bias, Qwen3's
//! per-head q/k norm); their files under `models/` choose the options.
//!
//! Weights come from a [`DecoderWeights`]: a `VarBuilder` (memory-mapped safetensors,
//! whose bf16/f16 matrices and word table are read in place on the CPU, or a `VarMap`
//! for training) or a memory-mapped GGUF file whose quantised matrices are multiplied
//! as they are (see `gguf_linear`), or dequantised to f32 on request; its word table
//! stays in the file either way. Names are the Hugging Face ones; the GGUF source maps
//! them.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use super::decoder_config::DecoderConfig;
use super::TextEncoder;
use crate::error::{Error, Result};
use crate::kernels::train_attention::{self, TrainAttention};
use crate::kernels::train_rope::{self, RopeAngles};
use crate::layers::{softmax_last_dim, Activation, AdaptedLinear, DecoderLinear, RmsNorm};
use crate::mode::Mode;
use crate::packed::PackedBatch;
use crate::weights::token_table::TokenTable;
use crate::weights::DecoderWeights;

/// How the two halves of a rotary pair are laid out in a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pair `(i, i + d/2)`: the Hugging Face layout (`rotate_half`).
    Half,
    /// Pair `(2i, 2i + 1)`: llama-architecture GGUF files store q/k rows
    /// permuted for this layout. Attention scores are invariant to a shared
    /// permutation of q and k, so rotating in this layout is the same model.
    Interleaved,
}

/// What distinguishes the architectures sharing this stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderOptions {
    /// Bias on the q, k and v projections (Qwen2; LLaMA's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (LLaMA's `attention_bias`).
    pub output_bias: bool,
    /// RMSNorm over each head of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
}

/// The rotary cos/sin tables of one forward pass, `(seq, head_width / 2)`.
struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    layout: RopeLayout,
}

impl RopeTables {
    /// Tables for positions `0..seq`, shared by every row.
    fn new(inv_freq: &[f64], seq: usize, layout: RopeLayout, device: &Device) -> Result<Self> {
        let positions: Vec<usize> = (0..seq).collect();
        Self::from_positions(inv_freq, &positions, &[seq], layout, device)
    }

    /// Tables for a padded batch: a token's position counts the real tokens before it,
    /// so a left-padded row rotates exactly as it would unpadded. Rows that are all
    /// right-padded share one `(seq, half)` table; otherwise each row gets its own.
    fn for_mask(inv_freq: &[f64], mask: &Tensor, layout: RopeLayout) -> Result<Self> {
        let (batch, seq) = mask.dims2()?;
        let rows = mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let right_padded = rows.iter().all(|row| row.windows(2).all(|w| w[0] >= w[1]));
        if right_padded {
            return Self::new(inv_freq, seq, layout, mask.device());
        }
        let positions: Vec<usize> = rows
            .iter()
            .flat_map(|row| {
                row.iter().scan(0usize, |real_before, &m| {
                    let position = *real_before;
                    *real_before += usize::from(m != 0);
                    Some(position)
                })
            })
            .collect();
        Self::from_positions(inv_freq, &positions, &[batch, seq], layout, mask.device())
    }

    /// Tables of shape `leading x half` for the given flattened positions.
    fn from_positions(
        inv_freq: &[f64],
        positions: &[usize],
        leading: &[usize],
        layout: RopeLayout,
        device: &Device,
    ) -> Result<Self> {
        let half = inv_freq.len();
        let angles: Vec<f64> =
            positions.iter().flat_map(|&p| inv_freq.iter().map(move |f| p as f64 * f)).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos() as f32).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin() as f32).collect();
        let mut shape = leading.to_vec();
        shape.push(half);
        Ok(Self {
            cos: Tensor::from_vec(cos, shape.clone(), device)?,
            sin: Tensor::from_vec(sin, shape, device)?,
            layout,
        })
    }

    /// The angles of every token of a `(batch, seq)` batch, `(batch x seq, half)`, for
    /// the training kernels' packed rows.
    fn per_token(&self, batch: usize) -> Result<RopeAngles> {
        let (cos, sin) = match self.cos.rank() {
            2 => (self.cos.unsqueeze(0)?, self.sin.unsqueeze(0)?),
            _ => (self.cos.clone(), self.sin.clone()),
        };
        let (_, seq, half) = cos.dims3()?;
        let flat = |t: Tensor| -> Result<Arc<[f32]>> {
            Ok(t.broadcast_as((batch, seq, half))?.flatten_all()?.to_vec1::<f32>()?.into())
        };
        Ok(RopeAngles {
            cos: flat(cos)?,
            sin: flat(sin)?,
            interleaved: self.layout == RopeLayout::Interleaved,
        })
    }

    /// Rotates `(batch, heads, seq, head_width)`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        if !x.track_op() {
            return Ok(match self.layout {
                RopeLayout::Half => candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin)?,
                RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x, &self.cos, &self.sin)?,
            });
        }
        let (b, h, s, d) = x.dims4()?;
        // Per-row tables `(batch, seq, half)` broadcast over the heads.
        let (cos, sin) = match self.cos.rank() {
            3 => (self.cos.unsqueeze(1)?, self.sin.unsqueeze(1)?),
            _ => (self.cos.clone(), self.sin.clone()),
        };
        match self.layout {
            RopeLayout::Half => {
                let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?;
                let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;
                let (x1, x2) = (x.narrow(D::Minus1, 0, d / 2)?, x.narrow(D::Minus1, d / 2, d / 2)?);
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
            }
            RopeLayout::Interleaved => {
                let pairs = x.reshape((b, h, s, d / 2, 2))?;
                let (x0, x1) =
                    (pairs.narrow(4, 0, 1)?.squeeze(4)?, pairs.narrow(4, 1, 1)?.squeeze(4)?);
                let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                Ok(Tensor::stack(&[&y0, &y1], 4)?.reshape((b, h, s, d))?)
            }
        }
    }
}

/// A padded training batch as the CPU training kernels read it: each row's real tokens
/// as one packed sequence of the `(batch x seq)` rows, and every token's RoPE angles.
struct PackedRows {
    sequences: Arc<[(usize, usize)]>,
    angles: RopeAngles,
    causal: bool,
}

impl PackedRows {
    /// The packing of `mask` `(batch, seq)`, or `None` when a row's real tokens are not
    /// one run (the composed ops handle any mask).
    fn for_mask(mask: &Tensor, rope: &RopeTables, causal: bool) -> Result<Option<Self>> {
        let (batch, seq) = mask.dims2()?;
        let rows = mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut sequences = Vec::with_capacity(batch);
        for (r, row) in rows.iter().enumerate() {
            let first = row.iter().position(|&m| m != 0).unwrap_or(0);
            let len = row[first..].iter().take_while(|&&m| m != 0).count();
            if row[first + len..].iter().any(|&m| m != 0) {
                return Ok(None);
            }
            sequences.push((r * seq + first, len));
        }
        Ok(Some(Self { sequences: sequences.into(), angles: rope.per_token(batch)?, causal }))
    }
}

/// What every layer's attention needs of one forward pass, made once.
enum PassInputs {
    /// For the composed ops: the rotary tables and the additive attention bias.
    Composed { rope: RopeTables, bias: Tensor },
    /// In training on the CPU in f32: the training kernels' packing.
    Packed(PackedRows),
}

/// Grouped-query self-attention (causal unless the model was made bidirectional).
#[derive(Debug, Clone)]
struct Attention {
    q: AdaptedLinear,
    k: AdaptedLinear,
    v: AdaptedLinear,
    o: AdaptedLinear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: usize,
    kv_heads: usize,
    head_width: usize,
}

impl Attention {
    fn load(w: &DecoderWeights, cfg: &DecoderConfig, opts: DecoderOptions) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_width());
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.kv_heads());
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            opts.qk_norm.then(|| w.pp(name).rms_norm(d, cfg.rms_norm_eps)).transpose()
        };
        Ok(Self {
            q: w.pp("q_proj").projection(h, heads * d, opts.qkv_bias)?,
            k: w.pp("k_proj").projection(h, kv_heads * d, opts.qkv_bias)?,
            v: w.pp("v_proj").projection(h, kv_heads * d, opts.qkv_bias)?,
            o: w.pp("o_proj").projection(heads * d, h, opts.output_bias)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            heads,
            kv_heads,
            head_width: d,
        })
    }

    /// `(batch, seq, hidden)` -> `(batch, heads, seq, head_width)`, q/k-normed if configured.
    fn heads_of(&self, y: Tensor, heads: usize, norm: Option<&RmsNorm>) -> Result<Tensor> {
        let (b, s, _) = y.dims3()?;
        let y = y.reshape((b, s, heads, self.head_width))?;
        let y = match norm {
            Some(n) => n.forward(&y)?,
            None => y,
        };
        Ok(y.transpose(1, 2)?.contiguous()?)
    }

    /// Attention in training on the CPU through the training kernels over packed rows
    /// (no head transposes; each kernel keeps only its output for the backward pass).
    fn forward_packed(&self, x: &Tensor, packed: &PackedRows, mode: &Mode) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (heads, kv, d) = (self.heads, self.kv_heads, self.head_width);
        let rotated = |projection: &AdaptedLinear, heads: usize, norm: Option<&RmsNorm>| {
            let y = projection.forward(x, mode)?;
            let y = match norm {
                Some(n) => n.forward(&y.reshape((b * s, heads, d))?)?,
                None => y,
            };
            Ok::<_, Error>(train_rope::rope(&y.reshape((b * s, heads * d))?, &packed.angles, d)?)
        };
        let q = rotated(&self.q, heads, self.q_norm.as_ref())?;
        let k = rotated(&self.k, kv, self.k_norm.as_ref())?;
        let v = self.v.forward(x, mode)?.reshape((b * s, kv * d))?;
        let op = TrainAttention {
            heads,
            kv_heads: kv,
            sequences: packed.sequences.clone(),
            scale: 1.0 / (d as f32).sqrt(),
            causal: packed.causal,
            dropout: 0.0,
            seed: 0,
        };
        let context = train_attention::attention(&q, &k, &v, op)?;
        self.o.forward(&context.reshape((b, s, heads * d))?, mode)
    }

    fn forward(&self, x: &Tensor, pass: &PassInputs, mode: &Mode) -> Result<Tensor> {
        let (rope, bias) = match pass {
            PassInputs::Packed(packed) => return self.forward_packed(x, packed, mode),
            PassInputs::Composed { rope, bias } => (rope, bias),
        };
        let (b, s, _) = x.dims3()?;
        let (heads, kv, d) = (self.heads, self.kv_heads, self.head_width);
        let q =
            rope.apply(&self.heads_of(self.q.forward(x, mode)?, heads, self.q_norm.as_ref())?)?;
        let k =
            rope.apply(&self.heads_of(self.k.forward(x, mode)?, kv, self.k_norm.as_ref())?)?;
        let v = self.heads_of(self.v.forward(x, mode)?, kv, None)?;
        // Query head i uses key/value head i / group: fold each group into the
        // row dimension instead of repeating k and v.
        let group = heads / kv;
        let q = (q * (1.0 / (d as f64).sqrt()))?.reshape((b, kv, group * s, d))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, heads, s, s))?.broadcast_add(bias)?;
        let probs = softmax_last_dim(&scores)?.reshape((b, kv, group * s, s))?;
        let context = probs.matmul(&v)?.reshape((b, heads, s, d))?.transpose(1, 2)?.reshape((
            b,
            s,
            heads * d,
        ))?;
        self.o.forward(&context, mode)
    }

    /// The same attention with its adapters out of any gradient graph.
    fn detached(&self) -> Self {
        Self {
            q: self.q.detached(),
            k: self.k.detached(),
            v: self.v.detached(),
            o: self.o.detached(),
            ..self.clone()
        }
    }
}

/// One pre-norm decoder layer.
#[derive(Debug, Clone)]
struct DecoderLayer {
    input_norm: RmsNorm,
    attention: Attention,
    post_attention_norm: RmsNorm,
    gate: AdaptedLinear,
    up: AdaptedLinear,
    down: AdaptedLinear,
}

impl DecoderLayer {
    fn load(w: &DecoderWeights, cfg: &DecoderConfig, opts: DecoderOptions) -> Result<Self> {
        let (h, ff, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        Ok(Self {
            input_norm: w.pp("input_layernorm").rms_norm(h, eps)?,
            attention: Attention::load(&w.pp("self_attn"), cfg, opts)?,
            post_attention_norm: w.pp("post_attention_layernorm").rms_norm(h, eps)?,
            gate: w.pp("mlp.gate_proj").projection(h, ff, false)?,
            up: w.pp("mlp.up_proj").projection(h, ff, false)?,
            down: w.pp("mlp.down_proj").projection(ff, h, false)?,
        })
    }

    fn forward(&self, x: &Tensor, pass: &PassInputs, mode: &Mode) -> Result<Tensor> {
        let x = (x + self.attention.forward(&self.input_norm.forward(x)?, pass, mode)?)?;
        let h = self.post_attention_norm.forward(&x)?;
        let gate = self.gate.forward_then(&h, Some(Activation::Silu), mode)?;
        let inner = (gate * self.up.forward(&h, mode)?)?;
        Ok((&x + self.down.forward(&inner, mode)?)?)
    }

    /// The same layer with its adapters out of any gradient graph.
    fn detached(&self) -> Self {
        Self {
            attention: self.attention.detached(),
            gate: self.gate.detached(),
            up: self.up.detached(),
            down: self.down.detached(),
            ..self.clone()
        }
    }
}

/// A decoder-only transformer: token states after the final norm, and
/// optionally the language-model head (tied to the embeddings when configured).
#[derive(Debug, Clone)]
pub struct DecoderModel {
    embed: TokenTable,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<DecoderLinear>,
    inv_freq: Vec<f64>,
    layout: RopeLayout,
    hidden_size: usize,
    vocab_size: usize,
    max_tokens: usize,
    /// Whether a token sees only those before it; `false` is the bidirectional
    /// conversion of LLM2Vec (`is_causal: false` in `config.json`).
    causal: bool,
}

/// The additive attention bias `(batch, 1, seq, seq)`: padded keys masked and, when
/// `causal`, the keys after each query.
fn attention_bias(mask: &Tensor, causal: bool) -> Result<Tensor> {
    const MASKED: f32 = -1e30;
    let (b, s) = mask.dims2()?;
    let hidden = |i: usize, j: usize| causal && j > i;
    let causal: Vec<f32> =
        (0..s).flat_map(|i| (0..s).map(move |j| if hidden(i, j) { MASKED } else { 0.0 })).collect();
    let causal = Tensor::from_vec(causal, (1, 1, s, s), mask.device())?;
    let padding =
        ((mask.to_dtype(DType::F32)? - 1.0)? * -(MASKED as f64))?.reshape((b, 1, 1, s))?;
    Ok(causal.broadcast_add(&padding)?)
}

impl DecoderModel {
    /// Loads the stack from `w` (model body already located) with `opts`; the
    /// language-model head only when `with_lm_head`. `layout` is the RoPE pairing.
    pub fn load(
        w: &DecoderWeights,
        cfg: &DecoderConfig,
        opts: DecoderOptions,
        with_lm_head: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let layout = if w.is_gguf() && cfg.model_type != "qwen2" && cfg.model_type != "qwen3" {
            RopeLayout::Interleaved
        } else {
            RopeLayout::Half
        };
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let embed_w = w.pp("embed_tokens");
        let embed = embed_w.table(vocab, h)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(&w.pp(&format!("layers.{i}")), cfg, opts))
            .collect::<Result<Vec<_>>>()?;
        let head_w = w.root().pp("lm_head");
        let lm_head = if !with_lm_head {
            None
        } else if !cfg.tie_word_embeddings && head_w.contains("weight") {
            Some(head_w.linear(h, vocab, false)?)
        } else {
            Some(embed_w.linear(h, vocab, false)?)
        };
        Ok(Self {
            embed,
            layers,
            norm: w.pp("norm").rms_norm(h, cfg.rms_norm_eps)?,
            lm_head,
            inv_freq: cfg.rope_inv_freq()?,
            layout,
            hidden_size: h,
            vocab_size: vocab,
            max_tokens: cfg.max_position_embeddings,
            causal: cfg.is_causal,
        })
    }

    /// Whether attention is causal (`false`: bidirectional).
    pub fn is_causal(&self) -> bool {
        self.causal
    }

    /// A copy whose LoRA adapters are out of any gradient graph, sharing the base
    /// weights (an inference snapshot of a model in training).
    pub fn detached(&self) -> Self {
        Self { layers: self.layers.iter().map(DecoderLayer::detached).collect(), ..self.clone() }
    }

    /// The precision the weights are kept in (f32, or bf16/f16 as the checkpoint had them).
    pub fn weight_dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// Logits `(batch, vocab)` at each row's last real token (left or right padding).
    pub fn next_token_logits(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let head = self
            .lm_head
            .as_ref()
            .ok_or_else(|| Error::Unsupported("model loaded without its lm_head".into()))?;
        let states = self.forward_states(ids, mask, &Mode::Inference)?;
        let last = crate::pooling::Pooling::new(crate::pooling::PoolingMode::LastToken)
            .forward(&states, mask)?;
        head.forward(&last)
    }

    fn forward_states(&self, ids: &Tensor, mask: &Tensor, mode: &Mode) -> Result<Tensor> {
        let (_, s) = ids.dims2()?;
        if s > self.max_tokens {
            return Err(Error::InputTooLong { index: 0, tokens: s, limit: self.max_tokens });
        }
        let mut x = self.embed.lookup(ids)?;
        let rope = RopeTables::for_mask(&self.inv_freq, mask, self.layout)?;
        let training_on_cpu = mode.is_training() && x.device().is_cpu() && x.dtype() == DType::F32;
        let packed = match training_on_cpu {
            true => PackedRows::for_mask(mask, &rope, self.causal)?,
            false => None,
        };
        let pass = match packed {
            Some(packed) => PassInputs::Packed(packed),
            None => PassInputs::Composed { rope, bias: attention_bias(mask, self.causal)? },
        };
        for layer in &self.layers {
            x = layer.forward(&x, &pass, mode)?;
        }
        self.norm.forward(&x)
    }
}

impl TextEncoder for DecoderModel {
    fn forward(&self, batch: &PackedBatch, mode: &Mode) -> Result<Tensor> {
        // Decoder configs set attention/hidden dropout to 0: only LoRA's dropout uses `mode`.
        self.forward_states(batch.ids(), batch.mask(), mode)
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

#[cfg(test)]
#[path = "decoder_in_place_tests.rs"]
mod in_place_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// Both RoPE layouts: the composed (differentiable) ops equal candle's kernels.
    #[test]
    fn rope_ops_match_kernels() {
        let dev = Device::Cpu;
        let inv: Vec<f64> = (0..4).map(|i| 1.0 / 100f64.powf(i as f64 / 4.0)).collect();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let var = candle_core::Var::from_tensor(&x).unwrap();
        for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
            let tables = RopeTables::new(&inv, 5, layout, &dev).unwrap();
            let fast = tables.apply(&x).unwrap();
            let slow = tables.apply(var.as_tensor()).unwrap();
            let diff = (fast - slow)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{layout:?}: {diff}");
        }
    }

    /// The `(seq, seq)` bias of a one-row mask.
    fn bias_rows(mask: &Tensor, causal: bool) -> Vec<Vec<f32>> {
        attention_bias(mask, causal)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn bias_is_causal_unless_bidirectional_and_masks_padding() {
        let mask = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu).unwrap();
        let bias = bias_rows(&mask, true);
        assert_eq!(bias[0][0], 0.0);
        assert!(bias[0][1] < -1e29);
        assert_eq!(bias[2][1], 0.0);
        assert!(bias[2][2] < -1e29);
        let open = bias_rows(&mask, false);
        assert_eq!(open[0][1], 0.0, "bidirectional: a query sees later real tokens");
        assert!(open[0][2] < -1e29, "bidirectional: padding stays masked");
    }
}
