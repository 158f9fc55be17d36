//! The post-norm transformer encoder stack shared by BERT, XLM-RoBERTa and MPNet.
//! Architectures differ in their embeddings, their weight names and whether an
//! attention bias other than the padding mask is added; the layers are the same.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::config::TransformerConfig;
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

    fn forward(&self, x: &Tensor, attention_bias: &Tensor, train: bool) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let scale = 1.0 / ((h / self.heads) as f64).sqrt();
        let q = self.split_heads(&(self.query.forward(x)? * scale)?)?;
        let k = self.split_heads(&self.key.forward(x)?)?;
        let v = self.split_heads(&self.value.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(attention_bias)?;
        let probs = self.attention_dropout.forward(&softmax_last_dim(&scores)?, train)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
        let attended = self.hidden_dropout.forward(&self.attention_output.forward(&context)?, train)?;
        let x = self.attention_norm.forward(&(attended + x)?)?;
        let inner = self.activation.forward(&self.intermediate.forward(&x)?)?;
        let out = self.hidden_dropout.forward(&self.output.forward(&inner)?, train)?;
        self.output_norm.forward(&(out + x)?)
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
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
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

    /// Runs every layer; `attention_bias` is added to the attention scores and
    /// broadcasts to `(batch, heads, seq, seq)`.
    pub fn forward(&self, x: &Tensor, attention_bias: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, attention_bias, train)?;
        }
        Ok(x)
    }
}

/// The additive padding mask: `(batch, seq)` of 1/0 -> `(batch, 1, 1, seq)` of 0 / a large negative.
pub fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let mask = mask.to_dtype(DType::F32)?;
    let bias = ((mask - 1.0)? * -(f32::MIN as f64))?;
    Ok(bias.reshape((b, 1, 1, s))?)
}
