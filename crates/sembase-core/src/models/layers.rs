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
use super::kernel_io::HostF32;
use super::mapped_weights::{MappedHalf, MappedMatrix, MappedWeights};
use super::cpu_norm::{self, LayerNormKernel};
use super::int8_linear::{self, Int8Kernel, Int8Matrix};
use super::{train_dropout, train_gelu, train_linear, train_norm};
use crate::error::{Error, Result};

/// `y = x W^T + b` over the last dimension of `x`, whatever its rank.
#[derive(Debug, Clone)]
pub struct Linear {
    weights: LinearStore,
}

/// A linear map's weights in the form its forward pass reads.
#[derive(Debug, Clone)]
enum LinearStore {
    /// Float weights (f32, bf16 or f16), as loaded or as training variables.
    Float {
        weight: Tensor,
        bias: Option<Tensor>,
        /// The CPU inference kernel's copy of f32 weights, made on its first use
        /// (half-precision weights are converted per call instead, keeping their memory small).
        kernel_weights: OnceLock<KernelWeights>,
    },
    /// Int8 weights (see [`Linear::new_int8`]): the map runs only for inference on the CPU.
    Int8(Int8Weights),
    /// Half-precision weights read in place from mapped files (see [`Linear::new_mapped`]):
    /// inference on the CPU only.
    Mapped { weight: MappedHalf, bias: Option<Tensor> },
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
        Ok(Self { weights: LinearStore::Float { weight, bias, kernel_weights: OnceLock::new() } })
    }

    /// The map with these weights quantised to int8 per output channel, for CPU
    /// inference by `kernel` (activations are quantised per row as each call runs); no
    /// float copy of the weights is kept.
    pub fn new_int8(weights: LinearWeights, kernel: Int8Kernel) -> Result<Self> {
        let LinearWeights { weight, bias } = weights;
        let (out_dim, in_dim) = weight.dims2()?;
        let values = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bias = match bias {
            Some(b) => b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            None => vec![0.0; out_dim],
        };
        let matrix = Int8Matrix::quantise(&values, out_dim, in_dim);
        Ok(Self { weights: LinearStore::Int8(Int8Weights { matrix, bias, kernel }) })
    }

    /// The map with a bf16/f16 `weight` `(out, in)` read in place from mapped files and
    /// converted to f32 as each call runs, for CPU inference: the weights cost no memory
    /// beyond the file's pages.
    pub fn new_mapped(weight: MappedHalf, bias: Option<Tensor>) -> Self {
        Self { weights: LinearStore::Mapped { weight, bias } }
    }

    /// Whether the weights are read in place from mapped files.
    #[cfg(test)]
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.weights, LinearStore::Mapped { .. })
    }

    /// The map with these weights, quantised to int8 when `int8` names a kernel.
    pub fn new_maybe_int8(weights: LinearWeights, int8: Option<Int8Kernel>) -> Result<Self> {
        match int8 {
            Some(kernel) => Self::new_int8(weights, kernel),
            None => Self::new(weights),
        }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        match &self.weights {
            LinearStore::Float { weight, .. } => weight.dims()[0],
            LinearStore::Int8(int8) => int8.matrix.out_dim(),
            LinearStore::Mapped { weight, .. } => weight.dims().0,
        }
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
        let gelu = activation == Some(Activation::Gelu);
        let (y, activated) = match &self.weights {
            LinearStore::Int8(int8) => {
                if x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 {
                    return Err(Error::Unsupported("int8 weights run only for inference on f32 CPU inputs".into()));
                }
                (int8_linear::linear(&flat.contiguous()?, &int8.matrix, &int8.bias, gelu, int8.kernel)?, gelu)
            }
            LinearStore::Mapped { weight, bias } => {
                if x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 {
                    return Err(Error::Unsupported("mapped half-precision weights run only for inference on f32 CPU inputs".into()));
                }
                let kernel = KernelWeights::convert(&weight.to_tensor()?, bias.as_ref())?;
                (cpu_linear::linear(&flat.contiguous()?, &kernel.weight_t, &kernel.bias, CpuLinear { gelu })?, gelu)
            }
            LinearStore::Float { weight, bias, kernel_weights } if kernel_applies(x, weight, bias.as_ref()) => {
                let kernel = kernel_weights_of(weight, bias.as_ref(), kernel_weights)?;
                (cpu_linear::linear(&flat.contiguous()?, &kernel.weight_t, &kernel.bias, CpuLinear { gelu })?, gelu)
            }
            LinearStore::Float { weight, bias, .. } => {
                let y = match bias {
                    Some(bias) if on_cpu_in_f32(&[&flat, weight, bias]) => train_linear::linear(&flat, weight, bias)?,
                    Some(bias) => flat.matmul(&weight.t()?)?.broadcast_add(bias)?,
                    None => flat.matmul(&weight.t()?)?,
                };
                (y, false)
            }
        };
        let y = y.reshape(out_dims)?;
        match activation {
            Some(a) if !activated => a.forward(&y),
            _ => Ok(y),
        }
    }
}

/// Whether a call can take the CPU inference kernel: f32 input on the CPU (f32, bf16 or
/// f16 weights), outside any gradient graph (trained weights are variables, so the
/// kernel's cached copy never goes stale).
fn kernel_applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let inference = !x.track_op() && !weight.track_op() && x.device().is_cpu();
    let floats = matches!(weight.dtype(), DType::F32 | DType::BF16 | DType::F16);
    inference && floats && x.dtype() == DType::F32 && bias.is_none_or(|b| !b.track_op())
}

/// The kernel's weights: made once and kept in `cache` for f32 weights, converted on each
/// call for half-precision ones (so only one f32 matrix exists at a time).
fn kernel_weights_of<'a>(weight: &Tensor, bias: Option<&Tensor>, cache: &'a OnceLock<KernelWeights>) -> Result<Cow<'a, KernelWeights>> {
    if weight.dtype() != DType::F32 {
        return Ok(Cow::Owned(KernelWeights::convert(weight, bias)?));
    }
    if let Some(weights) = cache.get() {
        return Ok(Cow::Borrowed(weights));
    }
    let weights = KernelWeights::convert(weight, bias)?;
    Ok(Cow::Borrowed(cache.get_or_init(|| weights)))
}

impl KernelWeights {
    /// `W^T` and the bias in f32, from weights of any float precision.
    fn convert(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let weight_t = weight.t()?.to_dtype(DType::F32)?.contiguous()?;
        let bias = match bias {
            Some(bias) => bias.to_dtype(DType::F32)?.contiguous()?,
            None => Tensor::zeros(weight.dim(0)?, DType::F32, weight.device())?,
        };
        Ok(Self { weight_t, bias })
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
    table: Table,
}

/// Where a table's values live.
#[derive(Debug, Clone)]
enum Table {
    /// A tensor (copied from the weights file, or a training variable).
    Tensor(Tensor),
    /// In place in the memory-mapped weights file (CPU inference).
    Mapped(MappedMatrix),
}

impl Embedding {
    /// Loads a `(rows, dim)` table named `weight`.
    pub fn load(vb: VarBuilder, rows: usize, dim: usize) -> Result<Self> {
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Ok(Self { table: Table::Tensor(vb.get_with_hints((rows, dim), "weight", init)?) })
    }

    /// Like [`Embedding::load`], but reads the table in place from `mapped` when it is
    /// stored there as f32 (copying it otherwise).
    pub fn load_mapped(vb: VarBuilder, rows: usize, dim: usize, mapped: Option<&MappedWeights>) -> Result<Self> {
        let name = format!("{}.weight", vb.prefix());
        match mapped.and_then(|m| m.matrix::<f32>(&name, rows, dim)) {
            Some(matrix) => Ok(Self { table: Table::Mapped(matrix) }),
            None => Self::load(vb, rows, dim),
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        match &self.table {
            Table::Tensor(t) => t.dims()[0],
            Table::Mapped(m) => m.rows(),
        }
    }

    /// Width of a row.
    fn dim(&self) -> usize {
        match &self.table {
            Table::Tensor(t) => t.dims()[1],
            Table::Mapped(m) => m.cols(),
        }
    }

    /// Looks up `ids` (any shape, u32) and appends the vector dimension.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.table {
            Table::Tensor(table) => {
                let mut dims = ids.dims().to_vec();
                dims.push(self.dim());
                let rows = table.index_select(&ids.flatten_all()?.to_dtype(DType::U32)?, 0)?;
                Ok(rows.reshape(dims)?)
            }
            Table::Mapped(_) => Self::sum_of_lookups(&[(self, ids)]),
        }
    }

    /// The sum of several tables' lookups, each with its own ids of one shape (word,
    /// position and segment embeddings): one parallel pass over the tokens for
    /// inference on the CPU, composed ops otherwise (so training gets gradients).
    pub fn sum_of_lookups(lookups: &[(&Embedding, &Tensor)]) -> Result<Tensor> {
        let Some(&(first, first_ids)) = lookups.first() else {
            return Err(candle_core::Error::Msg("no embedding tables to look up".into()).into());
        };
        let host_tables = lookups.iter().map(|(e, _)| e.host_values()).collect::<candle_core::Result<Option<Vec<_>>>>()?;
        let Some(host_tables) = host_tables else {
            return lookups[1..].iter().try_fold(first.forward(first_ids)?, |sum, (e, ids)| Ok(sum.add(&e.forward(ids)?)?));
        };
        let ids = lookups.iter().map(|(_, ids)| ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()).collect::<candle_core::Result<Vec<_>>>()?;
        let pairs: Vec<(&[f32], &[u32])> = host_tables.iter().zip(&ids).map(|(values, ids)| (&**values, ids.as_slice())).collect();
        let mut dims = first_ids.dims().to_vec();
        dims.push(first.dim());
        if lookups.iter().any(|(e, _)| e.dim() != first.dim()) {
            return Err(candle_core::Error::Msg("embedding tables to sum differ in width".into()).into());
        }
        Ok(Tensor::from_vec(cpu_lookup::sum_of_rows(first.dim(), &pairs)?, dims, first_ids.device())?)
    }

    /// The table's values as host f32, when inference on the CPU can read them (mapped,
    /// or an f32 CPU tensor outside any gradient graph); `None` otherwise.
    fn host_values(&self) -> candle_core::Result<Option<TableValues<'_>>> {
        Ok(match &self.table {
            Table::Mapped(m) => Some(TableValues::Mapped(m.values())),
            Table::Tensor(t) if on_cpu_in_f32(&[t]) && !t.track_op() => Some(TableValues::Host(HostF32::of(t)?)),
            Table::Tensor(_) => None,
        })
    }
}

/// A table's f32 values as the CPU lookup reads them.
enum TableValues<'a> {
    Mapped(&'a [f32]),
    Host(HostF32<'a>),
}

impl std::ops::Deref for TableValues<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Self::Mapped(values) => values,
            Self::Host(values) => values,
        }
    }
}
