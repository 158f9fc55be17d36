//! The post-norm transformer encoder stack shared by BERT, XLM-RoBERTa and MPNet.
//! Architectures differ in their embeddings, their weight names and whether an
//! attention bias other than the padding mask is added; the layers are the same.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::config::TransformerConfig;
use super::cpu_attention::{self, CpuAttention};
use super::layers::{softmax_last_dim, Activation, Dropout, LayerNorm, Linear};
use crate::error::{Error, Result};

/// Where each weight of one encoder layer lives, relative to `encoder.layer.N`.
#[derive(Debug, Clone, Copy)]
pub struct LayerWeightNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    pub intermediate: &'static str,
    pub output: &'static str,
    pub output_norm: &'static str,
}

/// One encoder layer: self-attention and a feed-forward block, each followed
/// by dropout, a residual connection and layer norm.
#[derive(Debug, Clone)]
struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
    activation: Activation,
    attention_dropout: Dropout,
    hidden_dropout: Dropout,
}

impl EncoderLayer {
    fn load(vb: VarBuilder, cfg: &TransformerConfig, names: &LayerWeightNames) -> Result<Self> {
        let h = cfg.hidden_size;
        let ff = cfg.intermediate_size;
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            query: Linear::load(vb.pp(names.query), h, h, true)?,
            key: Linear::load(vb.pp(names.key), h, h, true)?,
            value: Linear::load(vb.pp(names.value), h, h, true)?,
            attention_output: Linear::load(vb.pp(names.attention_output), h, h, true)?,
            attention_norm: LayerNorm::load(vb.pp(names.attention_norm), h, eps)?,
            intermediate: Linear::load(vb.pp(names.intermediate), h, ff, true)?,
            output: Linear::load(vb.pp(names.output), ff, h, true)?,
            output_norm: LayerNorm::load(vb.pp(names.output_norm), h, eps)?,
            heads: cfg.num_attention_heads,
            activation: cfg.activation()?,
            attention_dropout: Dropout::new(cfg.attention_probs_dropout_prob),
            hidden_dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    /// `(batch, seq, hidden)` -> `(batch, heads, seq, head_dim)`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        Ok(x.reshape((b, s, self.heads, h / self.heads))?.transpose(1, 2)?.contiguous()?)
    }

    fn forward(&self, x: &Tensor, plan: &AttentionPlan, train: bool) -> Result<Tensor> {
        let context = match plan {
            AttentionPlan::Ops { bias } => self.attend_with_ops(x, bias, train)?,
            AttentionPlan::CpuKernel { lengths, bias } => self.attend_with_kernel(x, lengths, bias.as_deref())?,
        };
        let attended = self.hidden_dropout.forward(&self.attention_output.forward(&context)?, train)?;
        let x = self.attention_norm.forward(&(attended + x)?)?;
        let inner = self.intermediate.forward_then(&x, Some(self.activation))?;
        let out = self.hidden_dropout.forward(&self.output.forward(&inner)?, train)?;
        self.output_norm.forward(&(out + x)?)
    }

    fn scale(&self, hidden: usize) -> f64 {
        1.0 / ((hidden / self.heads) as f64).sqrt()
    }

    /// Attention from differentiable candle ops; `bias` broadcasts to `(batch, heads, seq, seq)`.
    fn attend_with_ops(&self, x: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let q = self.split_heads(&(self.query.forward(x)? * self.scale(h))?)?;
        let k = self.split_heads(&self.key.forward(x)?)?;
        let v = self.split_heads(&self.value.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let probs = self.attention_dropout.forward(&softmax_last_dim(&scores)?, train)?;
        Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?)
    }

    /// Attention through the CPU inference kernel (no padding work, no transposes).
    fn attend_with_kernel(&self, x: &Tensor, lengths: &[usize], bias: Option<&[f32]>) -> Result<Tensor> {
        let (_, _, h) = x.dims3()?;
        let op = CpuAttention { heads: self.heads, lengths, bias, scale: self.scale(h) as f32 };
        Ok(cpu_attention::attention(&self.query.forward(x)?, &self.key.forward(x)?, &self.value.forward(x)?, op)?)
    }
}

/// How the layers compute attention for one forward pass, decided once.
enum AttentionPlan {
    /// Composed candle ops (training, or devices other than the CPU).
    Ops { bias: Tensor },
    /// The CPU kernel, with each row's real length and the architecture's bias as host values.
    CpuKernel { lengths: Vec<usize>, bias: Option<Vec<f32>> },
}

impl AttentionPlan {
    fn new(x: &Tensor, mask: &Tensor, extra_bias: Option<&Tensor>, train: bool) -> Result<Self> {
        if train || x.track_op() || !x.device().is_cpu() {
            let bias = padding_bias(mask)?;
            let bias = match extra_bias {
                Some(extra) => bias.broadcast_add(extra)?,
                None => bias,
            };
            return Ok(Self::Ops { bias });
        }
        let lengths = mask.to_dtype(DType::F32)?.sum(1)?.to_vec1::<f32>()?.into_iter().map(|l| l as usize).collect();
        let bias = extra_bias.map(|b| b.flatten_all()?.to_vec1::<f32>()).transpose()?;
        Ok(Self::CpuKernel { lengths, bias })
    }
}

/// A stack of encoder layers loaded from `<prefix>.layer.N`.
#[derive(Debug, Clone)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Loads `cfg.num_hidden_layers` layers from `vb` (which points at `encoder`).
    pub fn load(vb: VarBuilder, cfg: &TransformerConfig, names: &LayerWeightNames) -> Result<Self> {
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::Unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(vb.pp(format!("layer.{i}")), cfg, names))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Runs every layer over right-padded `x` with `mask` (1 real, 0 padding).
    /// `extra_bias`, of shape `(1, heads, seq, seq)`, is added to the attention
    /// scores (MPNet's relative positions).
    pub fn forward(&self, x: &Tensor, mask: &Tensor, extra_bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let plan = AttentionPlan::new(x, mask, extra_bias, train)?;
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &plan, train)?;
        }
        Ok(x)
    }
}

/// The additive padding mask: `(batch, seq)` of 1/0 -> `(batch, 1, 1, seq)` of 0 / a large negative.
fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let mask = mask.to_dtype(DType::F32)?;
    let bias = ((mask - 1.0)? * -(f32::MIN as f64))?;
    Ok(bias.reshape((b, 1, 1, s))?)
}
