//! Layer norm and RMS norm for training on the CPU, each with a backward pass for the
//! input and its parameters.
//!
//! The composed ops they replace build several full-size tensors per call (about ten
//! for layer norm) and keep them until the backward pass; these are one pass over the
//! rows each way and keep only their output.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_norm::{lane_sum, LayerNormKernel};
use super::kernel_io::{add_into, contiguous_f32, HostF32};

/// The op's name in errors.
const OP: &str = "training layer norm";

/// Rows per parallel task in the backward pass (each task also sums its share of the
/// scale and shift gradients).
const ROWS_PER_TASK: usize = 64;

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension, as an op of
/// (x, weight, bias) that is differentiable in all three.
#[derive(Debug, Clone, Copy)]
pub struct TrainLayerNorm {
    pub eps: f32,
}

impl CustomOp3 for TrainLayerNorm {
    fn name(&self) -> &'static str {
        "sembase-train-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (weight, bias) =
            (contiguous_f32(w, wl, OP, "weight")?, contiguous_f32(b, bl, OP, "bias")?);
        let mut out = contiguous_f32(x, xl, OP, "x")?.to_vec();
        LayerNormKernel { weight, bias, eps: self.eps }.normalise_rows(&mut out, xl)?;
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dim = w.elem_count();
        let (x_host, weight, grad_host) = (HostF32::of(x)?, HostF32::of(w)?, HostF32::of(grad)?);
        let (dx, [dw, db]) = backward_rows(&x_host, &grad_host, dim, |x, g, dx, [dw, db]| {
            let normed = self.backward_row(x, g, &weight, dx);
            for (((dw, db), n), g) in dw.iter_mut().zip(db.iter_mut()).zip(&normed).zip(g) {
                *dw += g * n;
                *db += g;
            }
        });
        let vector = |data: Vec<f32>| Tensor::from_vec(data, dim, &Device::Cpu);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?),
            Some(vector(dw)?),
            Some(vector(db)?),
        ))
    }
}

impl TrainLayerNorm {
    /// One row's input gradient into `dx`; returns its normalised input x̂:
    /// `dx = inv * (g*w - mean(g*w) - x̂ * mean(g*w * x̂))`.
    fn backward_row(&self, x: &[f32], g: &[f32], weight: &[f32], dx: &mut [f32]) -> Vec<f32> {
        let n = x.len() as f32;
        let mean = lane_sum(x, |v| v) / n;
        let variance = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
        let inverse = 1.0 / (variance + self.eps).sqrt();
        let normed: Vec<f32> = x.iter().map(|v| (v - mean) * inverse).collect();
        for ((d, g), w) in dx.iter_mut().zip(g).zip(weight) {
            *d = g * w;
        }
        let mean_dy = lane_sum(dx, |v| v) / n;
        let mean_dy_x: f32 = dx.iter().zip(normed.iter()).map(|(d, x)| d * x).sum::<f32>() / n;
        for (d, x) in dx.iter_mut().zip(normed.iter()) {
            *d = inverse * (*d - mean_dy - x * mean_dy_x);
        }
        normed
    }
}

/// The input gradient of every row of `x` (rows of `dim`) under `grad`, by `row(x, g,
/// dx, sums)` in parallel tasks of [`ROWS_PER_TASK`] rows; each task adds its rows'
/// parameter gradients into its own `N` sums of `dim`, which are then added up.
fn backward_rows<const N: usize>(
    x: &[f32],
    grad: &[f32],
    dim: usize,
    row: impl Fn(&[f32], &[f32], &mut [f32], &mut [Vec<f32>; N]) + Sync,
) -> (Vec<f32>, [Vec<f32>; N]) {
    let zeros = || std::array::from_fn(|_| vec![0f32; dim]);
    let mut dx = vec![0f32; x.len()];
    let task = dim * ROWS_PER_TASK;
    let sums = dx
        .par_chunks_mut(task)
        .zip(x.par_chunks(task).zip(grad.par_chunks(task)))
        .map(|(dx, (x, g))| {
            let mut sums = zeros();
            for ((dx, x), g) in dx.chunks_mut(dim).zip(x.chunks(dim)).zip(g.chunks(dim)) {
                row(x, g, dx, &mut sums);
            }
            sums
        })
        .reduce(zeros, |mut all, part| {
            all.iter_mut().zip(&part).for_each(|(a, p)| add_into(a, p));
            all
        });
    (dx, sums)
}

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension, as an op of (x, weight)
/// differentiable in both.
#[derive(Debug, Clone, Copy)]
struct TrainRmsNorm {
    eps: f32,
}

impl TrainRmsNorm {
    /// `1 / sqrt(mean(x^2) + eps)` of one row.
    fn inverse_rms(&self, x: &[f32]) -> f32 {
        1.0 / (lane_sum(x, |v| v * v) / x.len() as f32 + self.eps).sqrt()
    }
}

impl CustomOp2 for TrainRmsNorm {
    fn name(&self) -> &'static str {
        "sembase-train-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "training RMS norm";
        let weight = contiguous_f32(w, wl, OP, "weight")?;
        let mut out = contiguous_f32(x, xl, OP, "x")?.to_vec();
        if weight.is_empty() || out.len() % weight.len() != 0 {
            candle_core::bail!("{OP}: x {:?} does not end in {}", xl.shape(), weight.len());
        }
        out.par_chunks_mut(weight.len() * ROWS_PER_TASK).for_each(|rows| {
            for row in rows.chunks_mut(weight.len()) {
                let inverse = self.inverse_rms(row);
                row.iter_mut().zip(weight).for_each(|(v, w)| *v *= inverse * w);
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dim = w.elem_count();
        let (x_host, weight, grad_host) = (HostF32::of(x)?, HostF32::of(w)?, HostF32::of(grad)?);
        // With x̂ = x * inv: dx = inv * (g*w - x̂ * mean(g*w * x̂)), dw = sum of g * x̂.
        let (dx, [dw]) = backward_rows(&x_host, &grad_host, dim, |x, g, dx, [dw]| {
            let inverse = self.inverse_rms(x);
            let mut mean_dy_x = 0f32;
            for (((d, g), w), x) in dx.iter_mut().zip(g).zip(weight.iter()).zip(x) {
                *d = g * w;
                mean_dy_x += *d * x * inverse;
            }
            mean_dy_x /= dim as f32;
            for (((d, x), g), dw) in dx.iter_mut().zip(x).zip(g).zip(dw.iter_mut()) {
                let normed = x * inverse;
                *dw += g * normed;
                *d = inverse * (*d - normed * mean_dy_x);
            }
        });
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(dw, dim, &Device::Cpu)?),
        ))
    }
}

/// RMS norm of `x` over its last dimension with `weight`, in the gradient graph.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, TrainRmsNorm { eps })
}

/// Layer norm of `x` over its last dimension with `weight` and `bias`, in the gradient graph.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op3(weight, bias, TrainLayerNorm { eps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::train_check::assert_same_forward_and_gradients;
    use candle_core::{Var, D};

    /// 150 rows of 24 (x, off-centre), a scale near 1 and a shift near 0.
    fn inputs() -> (Var, Var, Var) {
        let (dev, dim) = (Device::Cpu, 24);
        let random = |mean: f32, std: f32, shape: &[usize]| {
            Var::from_tensor(&Tensor::randn(mean, std, shape, &dev).unwrap()).unwrap()
        };
        (random(0.5, 2.0, &[3, 50, dim]), random(1.0, 0.3, &[dim]), random(0.0, 0.3, &[dim]))
    }

    #[test]
    fn forward_and_gradients_match_composed_ops() {
        let (x, w, b) = inputs();
        let eps = 1e-12;
        let ours = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), eps as f32).unwrap();
        let xt = x.as_tensor();
        let centred = xt.broadcast_sub(&xt.mean_keepdim(D::Minus1).unwrap()).unwrap();
        let std = (centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
            .unwrap()
            .sqrt()
            .unwrap();
        let theirs = centred
            .broadcast_div(&std)
            .unwrap()
            .broadcast_mul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert_same_forward_and_gradients(
            &ours,
            &theirs,
            &[("x", &x), ("weight", &w), ("bias", &b)],
            1e-5,
            1e-4,
        );
    }

    #[test]
    fn rms_norm_forward_and_gradients_match_composed_ops() {
        let (x, w, _) = inputs();
        let eps = 1e-6;
        let ours = rms_norm(x.as_tensor(), w.as_tensor(), eps as f32).unwrap();
        let xt = x.as_tensor();
        let rms =
            (xt.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps).unwrap().sqrt().unwrap();
        let theirs = xt.broadcast_div(&rms).unwrap().broadcast_mul(w.as_tensor()).unwrap();
        assert_same_forward_and_gradients(&ours, &theirs, &[("x", &x), ("weight", &w)], 1e-5, 1e-4);
    }
}
