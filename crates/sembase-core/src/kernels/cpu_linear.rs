//! Linear layers as one CPU kernel for inference: the bias is written into
//! the output before the GEMM accumulates onto it, and an optional exact GELU
//! runs on each row while it is still in cache. No backward pass: training uses
//! `train_linear.rs`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::gelu_erf_in_place;
use super::kernel_io::{affine, contiguous_f32, View};

/// The op's name in errors.
const OP: &str = "cpu linear";

/// `y = x W^T + b`, then optionally GELU, for `x` of shape `(rows, in)`.
pub struct CpuLinear {
    /// Apply exact (erf) GELU to the result.
    pub gelu: bool,
}

impl CustomOp3 for CpuLinear {
    fn name(&self) -> &'static str {
        "sembase-cpu-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = x_layout.shape().dims2()?;
        let (w_in, out_dim) = w_layout.shape().dims2()?;
        if w_in != in_dim || b_layout.shape().dims1()? != out_dim {
            candle_core::bail!(
                "cpu linear: shapes {:?} x {:?} + {:?} do not fit",
                x_layout.shape(),
                w_layout.shape(),
                b_layout.shape()
            );
        }
        let (x, w, b) = (
            contiguous_f32(x, x_layout, OP, "x")?,
            contiguous_f32(w, w_layout, OP, "weight")?,
            contiguous_f32(b, b_layout, OP, "bias")?,
        );
        let mut out = affine(x, rows, in_dim, View::rows(w, out_dim), b);
        if self.gelu {
            out.par_chunks_mut(out_dim * 16).for_each(gelu_erf_in_place);
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, out_dim))))
    }
}

/// Runs the kernel on `(rows, in)` input, `(in, out)` transposed weight and `(out)` bias.
pub fn linear(x: &Tensor, weight_t: &Tensor, bias: &Tensor, op: CpuLinear) -> Result<Tensor> {
    x.apply_op3_no_bwd(weight_t, bias, &op)
}
