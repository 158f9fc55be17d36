//! Linear maps: `y = x W^T + b` in float, int8 or mapped half precision, with the CPU
//! inference kernel where it applies and differentiable ops where training needs them.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::{on_cpu_in_f32, Activation};
use crate::error::{Error, Result};
use crate::kernels::cpu_linear::{self, CpuLinear};
use crate::kernels::frozen_linear::{self, FrozenMap, FrozenMatrix};
use crate::kernels::int8_linear::{self, Int8Kernel, Int8Matrix};
use crate::kernels::train_linear;
use crate::weights::mapped_weights::MappedHalf;

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
        let bias =
            parts.iter().any(|p| p.bias.is_some()).then(|| Tensor::cat(&biases, 0)).transpose()?;
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
        let weight =
            if !weight.track_op() && weight.device().is_cpu() && weight.dtype() == DType::F32 {
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

    /// The map as a frozen f32 map on the CPU, for a gradient graph in which it is not
    /// trained (a LoRA base): half-precision weights are expanded to f32 in each pass
    /// that reads them. `None` for int8 weights and for trained or non-CPU ones.
    pub(crate) fn frozen_map(&self) -> Result<Option<FrozenMap>> {
        Ok(match &self.weights {
            LinearStore::Float { weight, bias, .. }
                if !weight.track_op()
                    && bias.as_ref().is_none_or(|b| !b.track_op())
                    && on_cpu_in_f32(&[weight]) =>
            {
                Some(FrozenMap::held(weight, bias.as_ref())?)
            }
            LinearStore::Mapped { weight, bias } => {
                let (half, out_dim) = (weight.clone(), weight.dims().0);
                let weight: FrozenMatrix = Arc::new(move || {
                    let w = half.to_tensor().map_err(candle_core::Error::wrap)?;
                    w.to_dtype(DType::F32)?.contiguous()
                });
                Some(FrozenMap { weight, bias: FrozenMap::bias_or_zeros(bias.as_ref(), out_dim)? })
            }
            _ => None,
        })
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
        let frozen = match x.track_op() && on_cpu_in_f32(&[x]) {
            true => self.frozen_map()?,
            false => None,
        };
        let (y, activated) = match (&self.weights, frozen) {
            // A LoRA base: only the input gets a gradient.
            (_, Some(map)) => (frozen_linear::linear(&flat, &map)?, false),
            (LinearStore::Int8(int8), None) => {
                if x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 {
                    return Err(Error::Unsupported(
                        "int8 weights run only for inference on f32 CPU inputs".into(),
                    ));
                }
                (
                    int8_linear::linear(
                        &flat.contiguous()?,
                        &int8.matrix,
                        &int8.bias,
                        gelu,
                        int8.kernel,
                    )?,
                    gelu,
                )
            }
            (LinearStore::Mapped { weight, bias }, None) => {
                if x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 {
                    return Err(Error::Unsupported(
                        "mapped half-precision weights run only for inference on f32 CPU inputs"
                            .into(),
                    ));
                }
                let kernel = KernelWeights::convert(&weight.to_tensor()?, bias.as_ref())?;
                (
                    cpu_linear::linear(
                        &flat.contiguous()?,
                        &kernel.weight_t,
                        &kernel.bias,
                        CpuLinear { gelu },
                    )?,
                    gelu,
                )
            }
            (LinearStore::Float { weight, bias, kernel_weights }, None)
                if kernel_applies(x, weight, bias.as_ref()) =>
            {
                let kernel = kernel_weights_of(weight, bias.as_ref(), kernel_weights)?;
                (
                    cpu_linear::linear(
                        &flat.contiguous()?,
                        &kernel.weight_t,
                        &kernel.bias,
                        CpuLinear { gelu },
                    )?,
                    gelu,
                )
            }
            (LinearStore::Float { weight, bias, .. }, None) => {
                let y = match bias {
                    Some(bias) if on_cpu_in_f32(&[&flat, weight, bias]) => {
                        train_linear::linear(&flat, weight, bias)?
                    }
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
fn kernel_weights_of<'a>(
    weight: &Tensor,
    bias: Option<&Tensor>,
    cache: &'a OnceLock<KernelWeights>,
) -> Result<Cow<'a, KernelWeights>> {
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
