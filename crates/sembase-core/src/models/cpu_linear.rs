//! Linear layers as one CPU kernel for inference: the bias is written into
//! the output before the GEMM accumulates onto it, and an optional exact GELU
//! runs on each row while it is still in cache. No backward pass: training uses
//! the composed ops of `layers.rs`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::gelu_erf_in_place;
use super::kernel_io::contiguous_f32;

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
            candle_core::bail!("cpu linear: shapes {:?} x {:?} + {:?} do not fit", x_layout.shape(), w_layout.shape(), b_layout.shape());
        }
        let (x, w, b) = (contiguous_f32(x, x_layout, OP, "x")?, contiguous_f32(w, w_layout, OP, "weight")?, contiguous_f32(b, b_layout, OP, "bias")?);
        // Every row starts as the bias (written once, no zeroing first).
        let mut out: Vec<f32> = Vec::with_capacity(rows * out_dim);
        out.spare_capacity_mut().par_chunks_mut(out_dim).for_each(|row| {
            row.iter_mut().zip(b).for_each(|(slot, &v)| {
                slot.write(v);
            });
        });
        // SAFETY: the loop above wrote all rows * out_dim values.
        unsafe { out.set_len(rows * out_dim) };
        let threads = candle_core::utils::get_num_threads();
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: dimensions and strides describe exactly the three slices above:
        // out (rows x out, row-major), x (rows x in, row-major), W^T (in x out, row-major).
        unsafe {
            gemm::gemm(
                rows, out_dim, in_dim,
                out.as_mut_ptr(), 1, out_dim as isize, true,
                x.as_ptr(), 1, in_dim as isize,
                w.as_ptr(), 1, out_dim as isize,
                1.0, 1.0, false, false, false, parallelism,
            );
        }
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
