//! Layer norm for training on the CPU: the inference kernel's forward pass with a
//! backward pass for the input, the scale and the shift.
//!
//! The composed ops it replaces build about ten full-size tensors per call, forward and
//! backward; this is one pass over the rows each way.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
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
        let mut dx = vec![0f32; x_host.len()];
        let (dw, db) = dx
            .par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(
                x_host
                    .par_chunks(dim * ROWS_PER_TASK)
                    .zip(grad_host.par_chunks(dim * ROWS_PER_TASK)),
            )
            .map(|(dx, (x, g))| {
                let (mut dw, mut db) = (vec![0f32; dim], vec![0f32; dim]);
                let mut normed = vec![0f32; dim];
                for ((dx, x), g) in dx.chunks_mut(dim).zip(x.chunks(dim)).zip(g.chunks(dim)) {
                    self.backward_row(x, g, &weight, &mut normed, dx);
                    for (((dw, db), n), g) in dw.iter_mut().zip(db.iter_mut()).zip(&normed).zip(g) {
                        *dw += g * n;
                        *db += g;
                    }
                }
                (dw, db)
            })
            .reduce(
                || (vec![0f32; dim], vec![0f32; dim]),
                |(mut dw, mut db), (w2, b2)| {
                    add_into(&mut dw, &w2);
                    add_into(&mut db, &b2);
                    (dw, db)
                },
            );
        let vector = |data: Vec<f32>| Tensor::from_vec(data, dim, &Device::Cpu);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?),
            Some(vector(dw)?),
            Some(vector(db)?),
        ))
    }
}

impl TrainLayerNorm {
    /// One row's input gradient into `dx`, leaving its normalised input in `normed`:
    /// `dx = inv * (g*w - mean(g*w) - x̂ * mean(g*w * x̂))`.
    fn backward_row(
        &self,
        x: &[f32],
        g: &[f32],
        weight: &[f32],
        normed: &mut [f32],
        dx: &mut [f32],
    ) {
        let n = x.len() as f32;
        let mean = lane_sum(x, |v| v) / n;
        let variance = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
        let inverse = 1.0 / (variance + self.eps).sqrt();
        for (o, v) in normed.iter_mut().zip(x) {
            *o = (v - mean) * inverse;
        }
        for ((d, g), w) in dx.iter_mut().zip(g).zip(weight) {
            *d = g * w;
        }
        let mean_dy = lane_sum(dx, |v| v) / n;
        let mean_dy_x: f32 = dx.iter().zip(normed.iter()).map(|(d, x)| d * x).sum::<f32>() / n;
        for (d, x) in dx.iter_mut().zip(normed.iter()) {
            *d = inverse * (*d - mean_dy - x * mean_dy_x);
        }
    }
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

    #[test]
    fn forward_and_gradients_match_composed_ops() {
        let dev = Device::Cpu;
        let (rows, dim) = (150, 24);
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (3, rows / 3, dim), &dev).unwrap())
            .unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, dim, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, dim, &dev).unwrap()).unwrap();
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
}
