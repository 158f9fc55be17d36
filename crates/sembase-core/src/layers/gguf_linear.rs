//! Matmuls with a GGUF file's quantised matrices.
//!
//! On the CPU a matrix stays in the mapped file. A large enough batch dequantises the
//! matrix for its call and runs the f32 GEMM (one f32 matrix exists at a time); smaller
//! batches multiply the blocks as they are: Q4_1 through sembase's kernel, the other
//! types through candle's quantised matmul on a copy of the blocks made for the call.
//! On other devices the blocks are copied to the device once, for candle's matmul.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Tensor};

use super::{over_last_dim, Activation, Linear, LinearWeights};
use crate::error::{Error, Result};
use crate::kernels::frozen_linear::{self, FrozenMap, FrozenMatrix};
use crate::kernels::q4_1::Q4_1Matrix;
use crate::weights::mapped_gguf::GgufTensor;

/// From this many activation rows on, dequantising a Q4_1 matrix to f32 for the call
/// and running the f32 GEMM beats sembase's Q4_1 kernel. Both costs grow with the
/// matrix's size, so the crossover is a row count: 64-128 rows on 576x1536 and 1536x576
/// matrices (at 1024 rows the GEMM takes 0.4x the kernel's time).
const Q4_1_GEMM_FROM_ROWS: usize = 128;

/// The same for candle's kernels (the other block types), which are slower: on
/// SmolLM2-135M the GEMM path was on par at about 32 rows for Q8_0 and Q4_0, already
/// at 7 rows for a Q4_K/Q5_0/Q6_K mix, and 4-19x faster on whole batches.
const CANDLE_GEMM_FROM_ROWS: usize = 32;

/// An `(out, in)` quantised weight matrix.
#[derive(Debug, Clone)]
pub enum GgufMatrix {
    /// Q4_1 on the CPU, in the mapped file.
    Q4_1(Q4_1Matrix),
    /// Any other block type on the CPU, in the mapped file.
    Mapped(GgufTensor),
    /// Copied to a non-CPU device.
    Device(QMatMul),
}

impl GgufMatrix {
    /// The matrix `tensor` (already checked to be `(out, in)`) for use on `device`.
    pub fn new(tensor: GgufTensor, device: &Device) -> Result<Self> {
        let [out_dim, in_dim] = tensor.dims[..] else {
            return Err(Error::Unsupported(format!(
                "a quantised matrix of shape {:?}",
                tensor.dims
            )));
        };
        Ok(match (device.is_cpu(), tensor.dtype) {
            (true, GgmlDType::Q4_1) => Self::Q4_1(Q4_1Matrix::new(tensor.bytes, out_dim, in_dim)?),
            (true, _) => Self::Mapped(tensor),
            (false, _) => Self::Device(QMatMul::from_arc(Arc::new(tensor.to_qtensor(device)?))?),
        })
    }

    /// `x W^T` over the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .ok_or_else(|| Error::Unsupported("a quantised matmul of a scalar".into()))?;
        let rows = x.elem_count() / in_dim.max(1);
        match self {
            Self::Device(matmul) => Ok(matmul.forward(&x.contiguous()?)?),
            Self::Q4_1(_) | Self::Mapped(_) if x.track_op() => self.forward_in_graph(x),
            Self::Q4_1(_) if rows >= Q4_1_GEMM_FROM_ROWS => self.gemm(x),
            Self::Mapped(_) if rows >= CANDLE_GEMM_FROM_ROWS => self.gemm(x),
            Self::Q4_1(weights) => {
                let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut out_dims = dims;
                *out_dims.last_mut().expect("rank >= 1") = weights.out_dim();
                Ok(Tensor::from_vec(weights.matmul(&values, rows), out_dims, x.device())?)
            }
            Self::Mapped(tensor) => {
                let matmul = QMatMul::from_arc(Arc::new(tensor.to_qtensor(&Device::Cpu)?))?;
                Ok(matmul.forward(&x.contiguous()?)?)
            }
        }
    }

    /// `x W^T` for an input in a gradient graph (LoRA over a quantised base): the matrix
    /// is dequantised in each pass that reads it, and only the input gets a gradient.
    fn forward_in_graph(&self, x: &Tensor) -> Result<Tensor> {
        let map = self.frozen_map(None)?;
        over_last_dim(x, self.out_dim()?, |x| Ok(frozen_linear::linear(x, &map)?))
    }

    /// The CPU matrix as a frozen f32 map with `bias` (none: zeros), dequantised in
    /// each pass that reads it.
    fn frozen_map(&self, bias: Option<&Tensor>) -> Result<FrozenMap> {
        let matrix = self.clone();
        let weight: FrozenMatrix =
            Arc::new(move || matrix.dequantised().map_err(candle_core::Error::wrap)?.contiguous());
        Ok(FrozenMap { weight, bias: FrozenMap::bias_or_zeros(bias, self.out_dim()?)? })
    }

    /// Rows of the `(out, in)` matrix.
    fn out_dim(&self) -> Result<usize> {
        match self {
            Self::Q4_1(weights) => Ok(weights.out_dim()),
            Self::Mapped(tensor) => Ok(tensor.dims[0]),
            Self::Device(_) => Err(Error::Unsupported("the shape of a device matrix".into())),
        }
    }

    /// `x W^T` through the f32 GEMM, on the matrix dequantised for this call.
    fn gemm(&self, x: &Tensor) -> Result<Tensor> {
        Linear::new(LinearWeights { weight: self.dequantised()?, bias: None })?.forward(x)
    }

    /// The CPU matrix in f32, `(out, in)` row-major as stored.
    fn dequantised(&self) -> Result<Tensor> {
        match self {
            Self::Q4_1(weights) => Ok(Tensor::from_vec(
                weights.dequantise(),
                (weights.out_dim(), weights.in_dim()),
                &Device::Cpu,
            )?),
            Self::Mapped(tensor) => {
                Ok(tensor.to_qtensor(&Device::Cpu)?.dequantize(&Device::Cpu)?)
            }
            Self::Device(_) => {
                Err(Error::Unsupported("dequantising a matrix held on a device".into()))
            }
        }
    }
}

/// A linear map with dense weights or a GGUF file's quantised matrix.
#[derive(Debug, Clone)]
pub enum DecoderLinear {
    Dense(Linear),
    Quantized { matrix: GgufMatrix, bias: Option<Tensor> },
}

impl DecoderLinear {
    /// Applies the map over the last dimension, then `activation`.
    pub fn forward_then(&self, x: &Tensor, activation: Option<Activation>) -> Result<Tensor> {
        let (mut y, bias) = match self {
            Self::Dense(linear) => return linear.forward_then(x, activation),
            Self::Quantized { matrix, bias } => (matrix.forward(x)?, bias),
        };
        if let Some(b) = bias {
            y = y.broadcast_add(b)?;
        }
        match activation {
            Some(a) => a.forward(&y),
            None => Ok(y),
        }
    }

    /// Applies the map over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, None)
    }

    /// The map as a frozen f32 map on the CPU (a LoRA base in a gradient graph); `None`
    /// where it has none (int8, trained or device weights).
    pub(crate) fn frozen_map(&self) -> Result<Option<FrozenMap>> {
        match self {
            Self::Dense(linear) => linear.frozen_map(),
            Self::Quantized { matrix: GgufMatrix::Device(_), .. } => Ok(None),
            Self::Quantized { matrix, bias } => Ok(Some(matrix.frozen_map(bias.as_ref())?)),
        }
    }
}
