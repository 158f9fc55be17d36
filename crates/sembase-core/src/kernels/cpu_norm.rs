//! Layer norm, with or without a residual add first, as one CPU kernel for inference:
//! `LN(x + residual)` in one parallel pass over rows, each row summed, normalised and
//! scaled while it is in cache (candle would run the add and the norm as two passes,
//! each allocating, and sums each row in a scalar loop).
//! No backward pass: training uses `train_norm.rs`, which shares the row code.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::multiversioned;
use super::kernel_io::contiguous_f32;

/// The op's name in errors.
const OP: &str = "layer norm";

/// The op: `((x + residual) - mean) / sqrt(var + eps) * weight + bias` over the last
/// dimension (as a two-input op), or the same without the residual (one input).
pub struct LayerNormKernel<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub eps: f32,
}

/// Rows per parallel task: enough work to outweigh the scheduling.
const ROWS_PER_TASK: usize = 16;

impl CustomOp2 for LayerNormKernel<'_> {
    fn name(&self) -> &'static str {
        "sembase-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        r: &CpuStorage,
        r_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if x_layout.shape() != r_layout.shape() {
            candle_core::bail!(
                "residual layer norm: shapes {:?} and {:?} differ",
                x_layout.shape(),
                r_layout.shape()
            );
        }
        let dim = x_layout.shape().dims().last().copied().unwrap_or(0);
        if dim == 0 || self.weight.len() != dim || self.bias.len() != dim {
            candle_core::bail!(
                "residual layer norm: width {dim} does not fit the weight {} and bias {}",
                self.weight.len(),
                self.bias.len()
            );
        }
        let (x, r) =
            (contiguous_f32(x, x_layout, OP, "x")?, contiguous_f32(r, r_layout, OP, "residual")?);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(x.par_chunks(dim * ROWS_PER_TASK).zip(r.par_chunks(dim * ROWS_PER_TASK)))
            .for_each(|(out, (x, r))| add_and_normalise(out, x, r, self));
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// Without a residual: `LN(x)`.
impl CustomOp1 for LayerNormKernel<'_> {
    fn name(&self) -> &'static str {
        "sembase-layer-norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = contiguous_f32(x, x_layout, OP, "x")?.to_vec();
        self.normalise_rows(&mut out, x_layout)?;
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

impl LayerNormKernel<'_> {
    /// Normalises every row of `values`, laid out as `layout`, in place, in parallel.
    pub(crate) fn normalise_rows(&self, values: &mut [f32], layout: &Layout) -> Result<()> {
        let dim = layout.shape().dims().last().copied().unwrap_or(0);
        if dim == 0 || self.weight.len() != dim || self.bias.len() != dim {
            candle_core::bail!(
                "layer norm: width {dim} does not fit the weight {} and bias {}",
                self.weight.len(),
                self.bias.len()
            );
        }
        values.par_chunks_mut(dim * ROWS_PER_TASK).for_each(|rows| normalise(rows, self));
        Ok(())
    }

    /// Normalises one row in place.
    #[inline(always)]
    fn normalise_row(&self, out: &mut [f32]) {
        let n = out.len() as f32;
        let mean = lane_sum(out, |v| v) / n;
        let variance = lane_sum(out, |v| (v - mean) * (v - mean)) / n;
        let inverse = 1.0 / (variance + self.eps).sqrt();
        for ((o, w), b) in out.iter_mut().zip(self.weight).zip(self.bias) {
            *o = (*o - mean) * inverse * w + b;
        }
    }
}

#[inline(always)]
fn normalise_loop(rows: &mut [f32], op: &LayerNormKernel) {
    rows.chunks_mut(op.weight.len()).for_each(|row| op.normalise_row(row));
}

#[inline(always)]
fn add_and_normalise_loop(out: &mut [f32], x: &[f32], r: &[f32], op: &LayerNormKernel) {
    let dim = op.weight.len();
    for ((out, x), r) in out.chunks_mut(dim).zip(x.chunks(dim)).zip(r.chunks(dim)) {
        for ((o, a), b) in out.iter_mut().zip(x).zip(r) {
            *o = a + b;
        }
        op.normalise_row(out);
    }
}

multiversioned! {
    /// Normalises each `weight`-wide row of `rows` in place.
    fn normalise(rows: &mut [f32], op: &LayerNormKernel) = normalise_loop
}

multiversioned! {
    /// `out = LN(x + r)`, row by row.
    fn add_and_normalise(out: &mut [f32], x: &[f32], r: &[f32], op: &LayerNormKernel) = add_and_normalise_loop
}

/// The sum of `f(v)` over `values`, accumulated in 16 lanes so the loop vectorises
/// (a single running sum must keep its order and stays scalar).
#[inline(always)]
pub(crate) fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// Runs the kernel without a residual on an f32 tensor on the CPU.
pub fn layer_norm(x: &Tensor, op: LayerNormKernel<'_>) -> Result<Tensor> {
    x.apply_op1_no_bwd(&op)
}

/// Runs the kernel on two f32 tensors of the same shape on the CPU.
pub fn residual_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    op: LayerNormKernel<'_>,
) -> Result<Tensor> {
    x.apply_op2_no_bwd(residual, &op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn matches_add_then_layer_norm() {
        let dev = Device::Cpu;
        let (rows, dim) = (37, 48);
        let x = Tensor::randn(0f32, 2.0, (rows, dim), &dev).unwrap();
        let r = Tensor::randn(1f32, 1.0, (rows, dim), &dev).unwrap();
        let weight: Vec<f32> = (0..dim).map(|i| 0.5 + i as f32 / dim as f32).collect();
        let bias: Vec<f32> = (0..dim).map(|i| (i as f32 - 20.0) / 10.0).collect();
        let fused = residual_layer_norm(
            &x,
            &r,
            LayerNormKernel { weight: &weight, bias: &bias, eps: 1e-12 },
        )
        .unwrap();
        let sum = (&x + &r).unwrap();
        let mean = sum.mean_keepdim(D::Minus1).unwrap();
        let centred = sum.broadcast_sub(&mean).unwrap();
        let std = (centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-12)
            .unwrap()
            .sqrt()
            .unwrap();
        let (w, b) = (
            Tensor::new(weight.as_slice(), &dev).unwrap(),
            Tensor::new(bias.as_slice(), &dev).unwrap(),
        );
        let reference = centred
            .broadcast_div(&std)
            .unwrap()
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let largest = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(
            largest(&fused, &reference) < 1e-5,
            "largest difference {}",
            largest(&fused, &reference)
        );
        let plain =
            layer_norm(&sum, LayerNormKernel { weight: &weight, bias: &bias, eps: 1e-12 }).unwrap();
        assert!(
            largest(&plain, &reference) < 1e-5,
            "without a residual: largest difference {}",
            largest(&plain, &reference)
        );
    }

    /// Each kernel set this CPU has gives the portable loop's values (see `cpu_features`).
    #[test]
    fn every_kernel_set_matches_the_portable_one() {
        use crate::kernels::cpu_features::assert_every_set_agrees;
        let (rows, dim) = (5, 384 + 3);
        let x: Vec<f32> = (0..rows * dim).map(|i| ((i * 37 % 101) as f32 - 40.0) / 9.0).collect();
        let r: Vec<f32> = (0..rows * dim).map(|i| ((i * 53 % 89) as f32 - 44.0) / 13.0).collect();
        let weight: Vec<f32> = (0..dim).map(|i| 0.5 + i as f32 / dim as f32).collect();
        let bias: Vec<f32> = (0..dim).map(|i| (i as f32 - 20.0) / 100.0).collect();
        let op = LayerNormKernel { weight: &weight, bias: &bias, eps: 1e-12 };
        assert_every_set_agrees("layer norm", 1e-6, || {
            let mut out = x.clone();
            normalise(&mut out, &op);
            out
        });
        assert_every_set_agrees("residual layer norm", 1e-6, || {
            let mut out = vec![0f32; x.len()];
            add_and_normalise(&mut out, &x, &r, &op);
            out
        });
    }

    #[test]
    fn a_weight_of_the_wrong_width_is_an_error() {
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let op = LayerNormKernel { weight: &[1.0; 3], bias: &[0.0; 4], eps: 1e-5 };
        assert!(residual_layer_norm(&x, &x, op).is_err());
    }
}
