//! Building blocks shared by the architectures: linear maps, layer norm,
//! activations and embedding look-ups, each usable for inference and training.
//!
//! Training needs a backward pass through every op. candle's fused layer norm
//! and last-dim softmax have none, so when a tensor takes part in a gradient
//! graph (`track_op`), these blocks switch to differentiable ops: our training
//! kernels on the CPU (`train_linear.rs`, `train_norm.rs`, `train_gelu.rs`,
//! `train_dropout.rs`), compositions of candle ops elsewhere.

use std::borrow::Cow;
use std::sync::OnceLock;

use candle_core::{DType, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use candle_nn::VarBuilder;

use super::cpu_linear::{self, CpuLinear};
use super::cpu_lookup;
use super::cpu_norm::{self, LayerNormKernel};
use super::int8_linear::{self, Int8Kernel, Int8Matrix};
use super::{train_dropout, train_gelu, train_linear, train_norm};
use crate::error::Result;

/// `y = x W^T + b` over the last dimension of `x`, whatever its rank.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The CPU inference kernel's copy of f32 weights, made on its first use
    /// (half-precision weights are converted per call instead, keeping their memory small).
    kernel_weights: OnceLock<KernelWeights>,
    /// Int8 weights, once [`Linear::quantise_int8`] has run: CPU inference then uses them.
    int8: Option<Int8Weights>,
}

/// A linear map's weights quantised to int8, with the bias and the kernel that runs them.
#[derive(Debug, Clone)]
struct Int8Weights {
    matrix: Int8Matrix,
    bias: Vec<f32>,
    kernel: Int8Kernel,
}

/// A linear map's weights as stored: `weight` (out, in) and an optional `bias` (out).
#[derive(Debug, Clone)]
pub struct LinearWeights {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl LinearWeights {
    /// Reads `weight` and, when `with_bias`, `bias` from `vb`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, with_bias: bool) -> Result<Self> {
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = if with_bias {
            Some(vb.get_with_hints(out_dim, "bias", candle_nn::Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Whether these are training variables (part of a gradient graph).
    pub fn trains(&self) -> bool {
        self.weight.track_op() || self.bias.as_ref().is_some_and(Tensor::track_op)
    }

    /// The weights of one map whose output is the outputs of `parts` side by side, for
    /// maps of the same input that inference runs together.
    pub fn stacked(parts: &[LinearWeights]) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let biases = parts
            .iter()
            .map(|p| match &p.bias {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(p.weight.dim(0)?, p.weight.dtype(), p.weight.device()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let bias = parts.iter().any(|p| p.bias.is_some()).then(|| Tensor::cat(&biases, 0)).transpose()?;
        Ok(Self { weight: Tensor::cat(&weights, 0)?, bias })
    }
}

/// The weights as the CPU inference kernel reads them.
#[derive(Debug, Clone)]
struct KernelWeights {
    /// `W^T`, `(in, out)` row-major: the GEMM then streams the weights as they are
    /// instead of repacking all of them on every call (which dominated small batches).
    weight_t: Tensor,
    /// The bias, or zeros.
    bias: Tensor,
}

impl Linear {
    /// Loads `weight` (out, in) and, when `with_bias`, `bias` (out) from `vb`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, with_bias: bool) -> Result<Self> {
        Self::new(LinearWeights::load(vb, in_dim, out_dim, with_bias)?)
    }

    /// The map with these weights, laid out for the CPU inference kernel.
    pub fn new(weights: LinearWeights) -> Result<Self> {
        let LinearWeights { weight, bias } = weights;
        // Inference weights on the CPU are stored transposed once, as the kernel reads
        // them; `weight` stays a (strided) view of that storage, so nothing is kept twice.
        let weight = if !weight.track_op() && weight.device().is_cpu() && weight.dtype() == DType::F32 {
            weight.t()?.contiguous()?.t()?
        } else {
            weight
        };
        Ok(Self { weight, bias, kernel_weights: OnceLock::new(), int8: None })
    }

    /// Quantises the weights to int8 per output channel for CPU inference
    /// (activations are quantised per row as each call runs).
    pub fn quantise_int8(&mut self, kernel: Int8Kernel) -> Result<()> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let weight = self.weight.to_dtype(DType::F32)?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let bias = match &self.bias {
            Some(b) => b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            None => vec![0.0; out_dim],
        };
        self.int8 = Some(Int8Weights { matrix: Int8Matrix::quantise(&weight, out_dim, in_dim), bias, kernel });
        Ok(())
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Applies the map; leading dimensions are flattened into one GEMM.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, None)
    }

    /// Applies the map, then `activation`. For inference on the CPU this is one
    /// kernel (bias and exact GELU fused); otherwise differentiable ops (the training
    /// kernel on the CPU in f32).
    pub fn forward_then(&self, x: &Tensor, activation: Option<Activation>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let flat = x.reshape((rows, in_dim))?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.out_dim();
        if self.kernel_applies(x) {
            let gelu = activation == Some(Activation::Gelu);
            let flat = flat.contiguous()?;
            let y = match &self.int8 {
                Some(int8) => int8_linear::linear(&flat, &int8.matrix, &int8.bias, gelu, int8.kernel)?,
                None => {
                    let kernel = self.kernel_weights()?;
                    cpu_linear::linear(&flat, &kernel.weight_t, &kernel.bias, CpuLinear { gelu })?
                }
            };
            let y = y.reshape(out_dims)?;
            return match activation {
                Some(a) if !gelu => a.forward(&y),
                _ => Ok(y),
            };
        }
        let y = match &self.bias {
            Some(bias) if on_cpu_in_f32(&[&flat, &self.weight, bias]) => train_linear::linear(&flat, &self.weight, bias)?,
            Some(bias) => flat.matmul(&self.weight.t()?)?.broadcast_add(bias)?,
            None => flat.matmul(&self.weight.t()?)?,
        };
        let y = y.reshape(out_dims)?;
        match activation {
            Some(a) => a.forward(&y),
            None => Ok(y),
        }
    }

    /// Whether this call can take the CPU inference kernel: f32 input on the CPU (f32,
    /// bf16 or f16 weights), outside any gradient graph (trained weights are variables,
    /// so the kernel's cached copy never goes stale).
    fn kernel_applies(&self, x: &Tensor) -> bool {
        let inference = !x.track_op() && !self.weight.track_op() && x.device().is_cpu();
        let floats = matches!(self.weight.dtype(), DType::F32 | DType::BF16 | DType::F16);
        inference && floats && x.dtype() == DType::F32 && self.bias.as_ref().is_none_or(|b| !b.track_op())
    }

    /// The kernel's weights: made once and kept for f32 weights, converted on each call
    /// for half-precision ones (so only one f32 matrix exists at a time).
    fn kernel_weights(&self) -> Result<Cow<'_, KernelWeights>> {
        if self.weight.dtype() != DType::F32 {
            return Ok(Cow::Owned(self.convert_kernel_weights()?));
        }
        if let Some(weights) = self.kernel_weights.get() {
            return Ok(Cow::Borrowed(weights));
        }
        let weights = self.convert_kernel_weights()?;
        Ok(Cow::Borrowed(self.kernel_weights.get_or_init(|| weights)))
    }

    /// `W^T` and the bias in f32, from weights of any float precision.
    fn convert_kernel_weights(&self) -> Result<KernelWeights> {
        let weight_t = self.weight.t()?.to_dtype(DType::F32)?.contiguous()?;
        let bias = match &self.bias {
            Some(bias) => bias.to_dtype(DType::F32)?.contiguous()?,
            None => Tensor::zeros(self.out_dim(), DType::F32, self.weight.device())?,
        };
        Ok(KernelWeights { weight_t, bias })
    }
}

/// Layer normalisation over the last dimension, with learned scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    /// Scale and shift as host values for the CPU inference kernel, read on first use.
    kernel_params: OnceLock<(Vec<f32>, Vec<f32>)>,
}

impl LayerNorm {
    /// Loads `weight` and `bias` (older checkpoints: `gamma` and `beta`).
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let (w, b) = if vb.contains_tensor("gamma") { ("gamma", "beta") } else { ("weight", "bias") };
        let weight = vb.get_with_hints(dim, w, candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, b, candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps, kernel_params: OnceLock::new() })
    }

    /// Normalises `x + residual` over the last dimension: one CPU kernel for f32
    /// inference, composed ops otherwise.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match self.kernel_params(&[x, residual])? {
            Some((weight, bias)) => {
                let op = LayerNormKernel { weight, bias, eps: self.eps as f32 };
                Ok(cpu_norm::residual_layer_norm(&x.contiguous()?, &residual.contiguous()?, op)?)
            }
            None => self.forward(&(x + residual)?),
        }
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() || self.weight.track_op() {
            return self.forward_differentiable(x);
        }
        match self.kernel_params(&[x])? {
            Some((weight, bias)) => Ok(cpu_norm::layer_norm(&x.contiguous()?, LayerNormKernel { weight, bias, eps: self.eps as f32 })?),
            None => Ok(candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)?),
        }
    }

    /// Scale and shift as host values when `inputs` can take the CPU inference kernel
    /// (f32 on the CPU, outside any gradient graph).
    fn kernel_params(&self, inputs: &[&Tensor]) -> Result<Option<(&[f32], &[f32])>> {
        let tracked = inputs.iter().any(|t| t.track_op()) || self.weight.track_op() || self.bias.track_op();
        let f32s = inputs.iter().chain([&&self.weight, &&self.bias]).all(|t| t.dtype() == DType::F32);
        if tracked || !f32s || !inputs.iter().all(|t| t.device().is_cpu()) {
            return Ok(None);
        }
        let (weight, bias) = match self.kernel_params.get() {
            Some(params) => params,
            None => {
                let params = (self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?);
                self.kernel_params.get_or_init(|| params)
            }
        };
        Ok(Some((weight, bias)))
    }

    fn forward_differentiable(&self, x: &Tensor) -> Result<Tensor> {
        if on_cpu_in_f32(&[x, &self.weight, &self.bias]) {
            return Ok(train_norm::layer_norm(x, &self.weight, &self.bias, self.eps as f32)?);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// Whether every tensor is f32 on the CPU (what the training kernels take).
fn on_cpu_in_f32(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Softmax over the last dimension; differentiable when `x` is in a gradient graph.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

/// Dropout that is active only in training mode. Masks come from a seeded
/// per-thread generator (see [`seed_dropout`]), so a training run can be
/// replayed exactly, e.g. when resuming from a checkpoint.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
}

thread_local! {
    static DROPOUT_RNG: std::cell::RefCell<StdRng> = std::cell::RefCell::new(StdRng::seed_from_u64(0));
}

/// Re-seeds the dropout masks of this thread (the trainer does this per step).
pub fn seed_dropout(seed: u64) {
    DROPOUT_RNG.with(|rng| *rng.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// The next seed from this thread's dropout generator, for kernels that make their
/// own masks (so they replay with the rest of a step).
pub fn next_dropout_seed() -> u64 {
    DROPOUT_RNG.with(|rng| rng.borrow_mut().random())
}

impl Dropout {
    /// Drops each element with probability `p` (0 disables it).
    pub fn new(p: f32) -> Self {
        Self { p }
    }

    /// The probability of dropping an element in this mode (0 outside training).
    pub fn rate(&self, train: bool) -> f32 {
        if train { self.p } else { 0.0 }
    }

    /// Identity unless `train`; in training, zeroes elements and rescales the rest.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p <= 0.0 {
            return Ok(x.clone());
        }
        if on_cpu_in_f32(&[x]) {
            return Ok(train_dropout::dropout(x, self.p, next_dropout_seed())?);
        }
        let keep = 1.0 - self.p;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = DROPOUT_RNG.with(|rng| {
            let mut rng = rng.borrow_mut();
            (0..x.elem_count()).map(|_| if rng.random::<f32>() < keep { scale } else { 0.0 }).collect()
        });
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}

/// The feed-forward activations used by the supported configs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU with erf (`gelu`).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    /// Parses a `hidden_act` value of config.json.
    pub fn from_config(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }

    /// Applies the activation element-wise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu if on_cpu_in_f32(&[x]) => train_gelu::gelu_erf(x)?,
            Self::Gelu => x.gelu_erf()?,
            Self::GeluTanh => x.gelu()?,
            Self::Relu => x.relu()?,
            Self::Silu => x.silu()?,
        })
    }
}

/// A lookup table of row vectors.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
}

impl Embedding {
    /// Loads a `(rows, dim)` table named `weight`.
    pub fn load(vb: VarBuilder, rows: usize, dim: usize) -> Result<Self> {
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Ok(Self { table: vb.get_with_hints((rows, dim), "weight", init)? })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.table.dims()[0]
    }

    /// Looks up `ids` (any shape, u32) and appends the vector dimension.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.table.dims()[1]);
        let rows = self.table.index_select(&ids.flatten_all()?.to_dtype(DType::U32)?, 0)?;
        Ok(rows.reshape(dims)?)
    }

    /// The sum of several tables' lookups, each with its own ids of one shape (word,
    /// position and segment embeddings): one parallel pass over the tokens for
    /// inference on the CPU, composed ops otherwise (so training gets gradients).
    pub fn sum_of_lookups(lookups: &[(&Embedding, &Tensor)]) -> Result<Tensor> {
        let tables: Vec<&Tensor> = lookups.iter().map(|(e, _)| &e.table).collect();
        let Some(&(first, first_ids)) = lookups.first() else {
            return Err(candle_core::Error::Msg("no embedding tables to look up".into()).into());
        };
        if !on_cpu_in_f32(&tables) || tables.iter().any(|t| t.track_op()) {
            return lookups[1..].iter().try_fold(first.forward(first_ids)?, |sum, (e, ids)| Ok(sum.add(&e.forward(ids)?)?));
        }
        let ids = lookups.iter().map(|(_, ids)| ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()).collect::<candle_core::Result<Vec<_>>>()?;
        let pairs: Vec<(&Tensor, &[u32])> = tables.iter().zip(&ids).map(|(&t, ids)| (t, ids.as_slice())).collect();
        let mut dims = first_ids.dims().to_vec();
        dims.push(first.table.dims()[1]);
        Ok(Tensor::from_vec(cpu_lookup::sum_of_rows(&pairs)?, dims, first.table.device())?)
    }
}
