//! The post-norm transformer encoder stack shared by BERT, XLM-RoBERTa and MPNet.
//! Architectures differ in their embeddings, their weight names and whether an
//! attention bias other than the padding mask is added; the layers are the same.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::config::TransformerConfig;
use crate::error::{Error, Result};
use crate::kernels::cpu_attention::{self, CpuAttention};
use crate::kernels::int8_linear::Int8Kernel;
use crate::kernels::train_attention::{self, TrainAttention};
use crate::layers::{softmax_last_dim, Activation, Dropout, LayerNorm, Linear, LinearWeights};
use crate::mode::Mode;
use crate::packed::PackedBatch;

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

/// The query, key and value maps of one layer: three maps while they train, one map
/// to their concatenation for inference, so the input is read (and, in int8,
/// quantised) once and one wider GEMM runs.
#[derive(Debug, Clone)]
enum Projections {
    /// Query, key and value.
    Separate(Box<[Linear; 3]>),
    Fused(Linear),
}

impl Projections {
    fn load(
        vb: &VarBuilder,
        names: &LayerWeightNames,
        hidden: usize,
        int8: Option<Int8Kernel>,
    ) -> Result<Self> {
        let load = |name: &str| LinearWeights::load(vb.pp(name), hidden, hidden, true);
        let [query, key, value] = [load(names.query)?, load(names.key)?, load(names.value)?];
        if query.trains() || key.trains() || value.trains() {
            return Ok(Self::Separate(Box::new([
                Linear::new(query)?,
                Linear::new(key)?,
                Linear::new(value)?,
            ])));
        }
        // Stacked as stored, then laid out for the kernel once.
        Ok(Self::Fused(Linear::new_maybe_int8(
            LinearWeights::stacked(&[query, key, value])?,
            int8,
        )?))
    }

    /// Queries, keys and values of `x` (any leading dimensions), each contiguous.
    fn separate(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        match self {
            Self::Separate(maps) => {
                Ok((maps[0].forward(x)?, maps[1].forward(x)?, maps[2].forward(x)?))
            }
            Self::Fused(qkv) => {
                let all = qkv.forward(x)?;
                let h = all.dim(D::Minus1)? / 3;
                let part = |i: usize| all.narrow(D::Minus1, i * h, h)?.contiguous();
                Ok((part(0)?, part(1)?, part(2)?))
            }
        }
    }

    /// `(tokens, 3 hidden)` for packed `x`: each row's query, key and value side by side.
    fn fused(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Separate(maps) => Ok(Tensor::cat(
                &[maps[0].forward(x)?, maps[1].forward(x)?, maps[2].forward(x)?],
                1,
            )?),
            Self::Fused(qkv) => qkv.forward(x),
        }
    }
}

/// One encoder layer: self-attention and a feed-forward block, each followed
/// by dropout, a residual connection and layer norm.
#[derive(Debug, Clone)]
struct EncoderLayer {
    projections: Projections,
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
    fn load(
        vb: VarBuilder,
        cfg: &TransformerConfig,
        names: &LayerWeightNames,
        int8: Option<Int8Kernel>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let ff = cfg.intermediate_size;
        let eps = cfg.layer_norm_eps;
        let linear = |name: &str, in_dim: usize, out_dim: usize| {
            Linear::new_maybe_int8(LinearWeights::load(vb.pp(name), in_dim, out_dim, true)?, int8)
        };
        Ok(Self {
            projections: Projections::load(&vb, names, h, int8)?,
            attention_output: linear(names.attention_output, h, h)?,
            attention_norm: LayerNorm::load(vb.pp(names.attention_norm), h, eps)?,
            intermediate: linear(names.intermediate, h, ff)?,
            output: linear(names.output, ff, h)?,
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

    fn forward(&self, x: &Tensor, plan: &AttentionPlan, mode: &Mode) -> Result<Tensor> {
        let context = match plan {
            AttentionPlan::Ops { bias } => self.attend_with_ops(x, bias, mode)?,
            AttentionPlan::Packed(packing) => self.attend_with_kernel(x, packing, mode)?,
        };
        let attended =
            self.hidden_dropout.forward(&self.attention_output.forward(&context)?, mode)?;
        let x = self.attention_norm.forward_residual(&attended, x)?;
        let inner = self.intermediate.forward_then(&x, Some(self.activation))?;
        let out = self.hidden_dropout.forward(&self.output.forward(&inner)?, mode)?;
        self.output_norm.forward_residual(&out, &x)
    }

    fn scale(&self, hidden: usize) -> f64 {
        1.0 / ((hidden / self.heads) as f64).sqrt()
    }

    /// Attention from differentiable candle ops; `bias` broadcasts to `(batch, heads, seq, seq)`.
    fn attend_with_ops(&self, x: &Tensor, bias: &Tensor, mode: &Mode) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let (q, k, v) = self.projections.separate(x)?;
        let q = self.split_heads(&(q * self.scale(h))?)?;
        let (k, v) = (self.split_heads(&k)?, self.split_heads(&v)?);
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let probs = self.attention_dropout.forward(&softmax_last_dim(&scores)?, mode)?;
        Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?)
    }

    /// Attention through a CPU kernel over packed `(tokens, hidden)` rows: the training
    /// kernel (dropout, backward pass) in training or inside a gradient graph, the
    /// inference kernel otherwise.
    fn attend_with_kernel(&self, x: &Tensor, packing: &Packing, mode: &Mode) -> Result<Tensor> {
        let (_, h) = x.dims2()?;
        let scale = self.scale(h) as f32;
        if mode.is_training() || x.track_op() {
            let (q, k, v) = self.projections.separate(x)?;
            let dropout = self.attention_dropout.rate(mode);
            let seed = if dropout > 0.0 { mode.next_dropout_seed() } else { 0 };
            let op = TrainAttention {
                heads: self.heads,
                kv_heads: self.heads,
                sequences: packing.sequences.clone(),
                scale,
                causal: false,
                dropout,
                seed,
            };
            return Ok(train_attention::attention(&q, &k, &v, op)?);
        }
        let op = CpuAttention {
            heads: self.heads,
            sequences: &packing.sequences,
            bias: packing.bias.as_deref(),
            bias_width: packing.width,
            scale,
        };
        Ok(cpu_attention::attention(&self.projections.fused(x)?, op)?)
    }
}

/// How the layers compute attention for one forward pass, decided once.
enum AttentionPlan {
    /// Composed candle ops over the padded batch (devices other than the CPU, training
    /// with an extra attention bias, or a mask that is not right padding).
    Ops { bias: Tensor },
    /// The CPU kernel over packed sequences: the layers see only real tokens.
    Packed(Packing),
}

/// Where the real tokens of a right-padded `(batch, width, hidden)` batch sit once packed.
struct Packing {
    /// (first packed row, tokens) per sequence.
    sequences: Arc<[(usize, usize)]>,
    /// Padded width of the batch.
    width: usize,
    /// Row of each real token in the flattened `(batch * width)` batch; `None` when
    /// there is no padding and packing changes nothing.
    rows: Option<Tensor>,
    /// The architecture's extra attention bias, `(heads, width, width)`, as host values.
    bias: Option<Vec<f32>>,
}

impl AttentionPlan {
    fn new(
        x: &Tensor,
        batch: &PackedBatch,
        extra_bias: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<Self> {
        // The training kernel has no extra bias (MPNet's relative positions are learned,
        // so their gradient would be needed); such models train through the ops.
        let differentiable = mode.is_training() || x.track_op();
        let kernel_fits = x.device().is_cpu() && x.dtype() == DType::F32 && batch.is_right_padded();
        if kernel_fits && !(differentiable && extra_bias.is_some()) {
            return Ok(Self::Packed(Packing::new(batch, extra_bias)?));
        }
        let bias = padding_bias(batch.mask())?;
        let bias = match extra_bias {
            Some(extra) => bias.broadcast_add(extra)?,
            None => bias,
        };
        Ok(Self::Ops { bias })
    }
}

impl Packing {
    /// The packing of a right-padded batch, from the lengths it carries.
    fn new(batch: &PackedBatch, extra_bias: Option<&Tensor>) -> Result<Self> {
        let width = batch.width();
        let starts = batch.cu_seq_lengths();
        let sequences: Vec<(usize, usize)> =
            starts.iter().zip(batch.lengths()).map(|(&start, &len)| (start, len)).collect();
        let rows: Vec<u32> = batch
            .lengths()
            .iter()
            .enumerate()
            .flat_map(|(b, &len)| (0..len).map(move |t| (b * width + t) as u32))
            .collect();
        let rows = if rows.len() == batch.lengths().len() * width {
            None
        } else {
            Some(Tensor::new(rows, &Device::Cpu)?)
        };
        let bias = extra_bias.map(|b| b.flatten_all()?.to_vec1::<f32>()).transpose()?;
        Ok(Self { sequences: sequences.into(), width, rows, bias })
    }

    /// `(batch, width, hidden)` -> `(tokens, hidden)`: the real tokens only.
    fn pack(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, width, hidden) = x.dims3()?;
        let flat = x.reshape((batch * width, hidden))?;
        Ok(match &self.rows {
            Some(rows) => flat.index_select(rows, 0)?,
            None => flat,
        })
    }

    /// `(tokens, hidden)` -> `(batch, width, hidden)`, padding rows zero.
    fn unpack(&self, packed: &Tensor) -> Result<Tensor> {
        let (_, hidden) = packed.dims2()?;
        let (batch, width) = (self.sequences.len(), self.width);
        let flat = match &self.rows {
            Some(rows) => Tensor::zeros((batch * width, hidden), packed.dtype(), packed.device())?
                .index_add(rows, packed, 0)?,
            None => packed.clone(),
        };
        Ok(flat.reshape((batch, width, hidden))?)
    }
}

/// A stack of encoder layers loaded from `<prefix>.layer.N`.
#[derive(Debug, Clone)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Loads `cfg.num_hidden_layers` layers from `vb` (which points at `encoder`). With
    /// `int8`, each layer's linear maps are quantised as it loads (CPU inference only), so
    /// the float weights of at most one layer are ever held.
    pub fn load(
        vb: VarBuilder,
        cfg: &TransformerConfig,
        names: &LayerWeightNames,
        int8: Option<Int8Kernel>,
    ) -> Result<Self> {
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(Error::Unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(vb.pp(format!("layer.{i}")), cfg, names, int8))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Runs every layer over `x`, the embedded tokens of `batch`. `extra_bias`, of shape
    /// `(1, heads, seq, seq)`, is added to the attention scores (MPNet's relative positions).
    pub fn forward(
        &self,
        x: &Tensor,
        batch: &PackedBatch,
        extra_bias: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<Tensor> {
        let plan = AttentionPlan::new(x, batch, extra_bias, mode)?;
        let mut hidden = match &plan {
            AttentionPlan::Packed(packing) => packing.pack(x)?,
            AttentionPlan::Ops { .. } => x.clone(),
        };
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &plan, mode)?;
        }
        match &plan {
            AttentionPlan::Packed(packing) => packing.unpack(&hidden),
            AttentionPlan::Ops { .. } => Ok(hidden),
        }
    }
}

/// The additive padding mask: `(batch, seq)` of 1/0 -> `(batch, 1, 1, seq)` of 0 / a large negative.
fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let mask = mask.to_dtype(DType::F32)?;
    let bias = ((mask - 1.0)? * -(f32::MIN as f64))?;
    Ok(bias.reshape((b, 1, 1, s))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_real_tokens_and_restores_padding_as_zeros() {
        let batch = PackedBatch::right_padded(&[&[4, 5], &[6, 7, 8]], 0, &Device::Cpu).unwrap();
        let packing = Packing::new(&batch, None).unwrap();
        assert_eq!(&packing.sequences[..], &[(0, 2), (2, 3)]);
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((2, 3, 2)).unwrap();
        let packed = packing.pack(&x).unwrap();
        assert_eq!(
            packed.to_vec2::<f32>().unwrap(),
            vec![vec![0., 1.], vec![2., 3.], vec![6., 7.], vec![8., 9.], vec![10., 11.]]
        );
        let restored =
            packing.unpack(&packed).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(restored, vec![0., 1., 2., 3., 0., 0., 6., 7., 8., 9., 10., 11.]);
    }

    /// The same weights as variables (three projections, as in training) and as plain
    /// tensors (one fused projection, as in inference) give the same outputs, through
    /// the packed kernel (right padding) and through the ops (left padding).
    #[test]
    fn fused_and_separate_projections_agree() {
        let config: TransformerConfig = serde_json::from_value(serde_json::json!({
            "model_type": "bert", "vocab_size": 10, "hidden_size": 12, "num_hidden_layers": 2,
            "num_attention_heads": 3, "intermediate_size": 20, "max_position_embeddings": 16
        }))
        .unwrap();
        let vars = candle_nn::VarMap::new();
        let names = crate::models::bert::BERT_LAYER_NAMES;
        let separate = Encoder::load(
            candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
            &config,
            &names,
            None,
        )
        .unwrap();
        let tensors = vars
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
            .collect();
        let fused = Encoder::load(
            candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
            &config,
            &names,
            None,
        )
        .unwrap();
        assert!(matches!(separate.layers[0].projections, Projections::Separate(_)));
        assert!(matches!(fused.layers[0].projections, Projections::Fused(_)));
        let x = Tensor::randn(0f32, 1.0, (2, 4, 12), &Device::Cpu).unwrap();
        for mask in [[[1u32, 1, 1, 0], [1, 1, 1, 1]], [[0, 1, 1, 1], [1, 1, 1, 1]]] {
            let mask = Tensor::new(&mask, &Device::Cpu).unwrap();
            let batch = PackedBatch::from_mask(mask.zeros_like().unwrap(), mask).unwrap();
            let a = separate.forward(&x, &batch, None, &Mode::Inference).unwrap();
            let b = fused.forward(&x, &batch, None, &Mode::Inference).unwrap();
            let gap =
                (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(gap < 1e-5, "fused and separate projections differ by {gap}");
        }
    }

    #[test]
    fn a_mask_that_is_not_right_padding_is_not_packed() {
        let mask = Tensor::new(&[[0u32, 1, 1]], &Device::Cpu).unwrap();
        let batch = PackedBatch::from_mask(mask.zeros_like().unwrap(), mask).unwrap();
        let x = Tensor::zeros((1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            AttentionPlan::new(&x, &batch, None, &Mode::Inference).unwrap(),
            AttentionPlan::Ops { .. }
        ));
    }
}
