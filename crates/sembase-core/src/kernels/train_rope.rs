//! Rotary position embedding for training on the CPU, over packed `(tokens, heads x
//! head_dim)` projections (the layout the training attention kernel reads), each token
//! at its own position, with its backward pass: the inverse rotation of the gradient.
//!
//! Composed candle ops need the heads transposed first and keep about four full-size
//! tensors per call until the backward pass; this op keeps only its output.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernel_io::{contiguous_f32, HostF32};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// The rotation angles of every token: `cos` and `sin` `(tokens, head_dim / 2)`, row-major.
#[derive(Debug, Clone)]
pub struct RopeAngles {
    pub cos: Arc<[f32]>,
    pub sin: Arc<[f32]>,
    /// Whether rotary pairs are `(2i, 2i + 1)` (GGUF's llama layout) rather than
    /// `(i, i + head_dim / 2)` (Hugging Face's).
    pub interleaved: bool,
}

/// Rotates every head of every token by its token's angles.
struct TrainRope {
    angles: RopeAngles,
    head_dim: usize,
}

impl TrainRope {
    /// `values` rotated forward (`sign` 1) or back (`sign` -1, the transpose).
    fn rotated(&self, mut values: Vec<f32>, width: usize, sign: f32) -> Vec<f32> {
        let half = self.head_dim / 2;
        let RopeAngles { cos, sin, interleaved } = &self.angles;
        values.par_chunks_mut(width * ROWS_PER_TASK).enumerate().for_each(|(task, rows)| {
            for (at, row) in rows.chunks_mut(width).enumerate() {
                let token = task * ROWS_PER_TASK + at;
                let (cos, sin) = (&cos[token * half..][..half], &sin[token * half..][..half]);
                for head in row.chunks_mut(self.head_dim) {
                    for i in 0..half {
                        let (a, b) = if *interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                        let (x, y, s) = (head[a], head[b], sign * sin[i]);
                        head[a] = x * cos[i] - y * s;
                        head[b] = x * s + y * cos[i];
                    }
                }
            }
        });
        values
    }

    /// Checks `shape` against the angles; returns the row width.
    fn width(&self, shape: &Shape) -> Result<usize> {
        let (tokens, width) = shape.dims2()?;
        let half = self.head_dim / 2;
        let fits = self.angles.cos.len() == tokens * half && self.angles.sin.len() == tokens * half;
        if half == 0 || !width.is_multiple_of(2 * half) || !fits {
            candle_core::bail!(
                "training rope: {shape:?} is not tokens x heads of {} with {} angles",
                self.head_dim,
                self.angles.cos.len()
            );
        }
        Ok(width)
    }
}

impl CustomOp1 for TrainRope {
    fn name(&self) -> &'static str {
        "sembase-train-rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = self.width(layout.shape())?;
        let x = contiguous_f32(x, layout, "training rope", "x")?;
        Ok((CpuStorage::F32(self.rotated(x.to_vec(), width, 1.0)), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let width = self.width(x.shape())?;
        let grad = self.rotated(HostF32::of(grad)?.to_vec(), width, -1.0);
        Ok(Some(Tensor::from_vec(grad, x.shape(), &Device::Cpu)?))
    }
}

/// Rotates the heads (`head_dim` wide) of f32 CPU rows `x` `(tokens, heads x head_dim)`
/// by `angles`, in the gradient graph.
pub fn rope(x: &Tensor, angles: &RopeAngles, head_dim: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(TrainRope { angles: angles.clone(), head_dim })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::train_check::assert_same_forward_and_gradients;
    use candle_core::{Var, D};

    /// The rotation from composed candle ops on `(tokens, heads, head_dim)`.
    fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Tensor {
        let (tokens, heads, d) = x.dims3().unwrap();
        let (cos, sin) = (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap());
        let (x0, x1) = if interleaved {
            let pairs = x.reshape((tokens, heads, d / 2, 2)).unwrap();
            (
                pairs.narrow(3, 0, 1).unwrap().squeeze(3).unwrap(),
                pairs.narrow(3, 1, 1).unwrap().squeeze(3).unwrap(),
            )
        } else {
            (x.narrow(D::Minus1, 0, d / 2).unwrap(), x.narrow(D::Minus1, d / 2, d / 2).unwrap())
        };
        let y0 = (x0.broadcast_mul(&cos).unwrap() - x1.broadcast_mul(&sin).unwrap()).unwrap();
        let y1 = (x0.broadcast_mul(&sin).unwrap() + x1.broadcast_mul(&cos).unwrap()).unwrap();
        let y = if interleaved {
            Tensor::stack(&[&y0, &y1], 3).unwrap()
        } else {
            Tensor::cat(&[&y0, &y1], D::Minus1).unwrap()
        };
        y.reshape((tokens, heads * d)).unwrap()
    }

    #[test]
    fn both_layouts_match_composed_ops_forward_and_backward() {
        let (tokens, heads, head_dim) = (70, 3, 8);
        let dev = Device::Cpu;
        // Positions restart mid-way, as in a padded batch of two rows.
        let positions: Vec<f32> = (0..tokens).map(|t| (t % 40) as f32).collect();
        let angles: Vec<f32> = positions
            .iter()
            .flat_map(|&p| (0..head_dim / 2).map(move |i| p / 100f32.powf(i as f32 / 4.0)))
            .collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let table = |v: &[f32]| Tensor::from_vec(v.to_vec(), (tokens, head_dim / 2), &dev).unwrap();
        for interleaved in [false, true] {
            let x = Tensor::randn(0f32, 1.0, (tokens, heads * head_dim), &dev).unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let angles =
                RopeAngles { cos: cos.clone().into(), sin: sin.clone().into(), interleaved };
            let ours = rope(x.as_tensor(), &angles, head_dim).unwrap();
            let split = x.as_tensor().reshape((tokens, heads, head_dim)).unwrap();
            let theirs = composed(&split, &table(&cos), &table(&sin), interleaved);
            assert_same_forward_and_gradients(&ours, &theirs, &[("x", &x)], 1e-5, 1e-5);
        }
    }
}
