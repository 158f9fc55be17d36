//! Multi-head attention for training on the CPU: the packed-sequence kernel of
//! `cpu_attention.rs` with dropout on the attention probabilities and a backward pass.
//!
//! Composed candle ops would copy every head transpose, run thousands of tiny batched
//! GEMMs serially and build a softmax backward from several full-size tensors. Here
//! each (sequence, head) block is one task, forward and backward; the backward
//! recomputes the probabilities (cheap at these lengths) instead of storing them, and
//! the dropout mask is a hash of (seed, block, row, column), so both passes see the
//! same mask without keeping it.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_attention::{check_packed, scaled_scores, Head};
use super::fast_math::softmax_in_place;
use super::kernel_io::{contiguous_f32, matmul, HostF32, SharedOut, View};
use super::train_dropout::keeps;

/// The op's name in errors.
const OP: &str = "training attention";

/// `dropout(softmax(scale * Q K^T)) V` per sequence and head over packed
/// `(tokens, hidden)` projections, differentiable in q, k and v.
#[derive(Debug, Clone)]
pub struct TrainAttention {
    /// Number of heads; the hidden width is split evenly among them.
    pub heads: usize,
    /// The sequences, as (first row, tokens) in the packed input.
    pub sequences: Arc<[(usize, usize)]>,
    /// Multiplies the scores.
    pub scale: f32,
    /// Probability of dropping an attention weight (0: none).
    pub dropout: f32,
    /// Chooses the dropout mask.
    pub seed: u64,
}

impl TrainAttention {
    /// The block of task `task` (sequence-major, then head), or `None` for an empty sequence.
    fn head(&self, task: usize, hidden: usize) -> Option<Head> {
        let (start, len) = self.sequences[task / self.heads];
        let head_dim = hidden / self.heads;
        (len > 0).then_some(Head {
            base: start * hidden + (task % self.heads) * head_dim,
            len,
            stride: hidden,
            head_dim,
        })
    }

    /// The softmax probabilities of one block into `probs`, and into `kept` the same
    /// after dropout (scaled by 1 / keep); `kept` is left empty without dropout.
    fn probabilities(
        &self,
        q: &[f32],
        k: &[f32],
        task: usize,
        head: Head,
        probs: &mut Vec<f32>,
        kept: &mut Vec<f32>,
    ) {
        // SAFETY: `check_packed` has verified that every block lies inside q and k.
        unsafe { scaled_scores(q, k, head, self.scale, probs) };
        probs.chunks_mut(head.len).for_each(softmax_in_place);
        kept.clear();
        if self.dropout > 0.0 {
            let keep = 1.0 - self.dropout;
            kept.extend(probs.iter().enumerate().map(|(at, p)| {
                if self.keeps(task, at, keep) {
                    p / keep
                } else {
                    0.0
                }
            }));
        }
    }

    /// Whether element `at` of block `task` survives dropout with probability `keep`.
    fn keeps(&self, task: usize, at: usize, keep: f32) -> bool {
        keeps(self.seed, ((task as u64) << 32) | at as u64, keep)
    }
}

impl CustomOp3 for TrainAttention {
    fn name(&self) -> &'static str {
        "sembase-train-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (tokens, hidden) = check_packed(ql, kl, vl, &self.sequences, self.heads)?;
        let (q, k, v) = (
            contiguous_f32(q, ql, OP, "q")?,
            contiguous_f32(k, kl, OP, "k")?,
            contiguous_f32(v, vl, OP, "v")?,
        );
        let mut out = vec![0f32; tokens * hidden];
        let shared = SharedOut(out.as_mut_ptr());
        (0..self.sequences.len() * self.heads).into_par_iter().for_each_init(
            || (Vec::new(), Vec::new()),
            |(probs, kept), task| {
                let Some(head) = self.head(task, hidden) else { return };
                self.probabilities(q, k, task, head, probs, kept);
                let weights = if kept.is_empty() { &*probs } else { &*kept };
                let out = shared;
                // SAFETY: each task writes its own sequence's rows in its own head's
                // columns; sequences do not overlap (checked), so no two tasks share an element.
                unsafe {
                    matmul(
                        head.len,
                        head.head_dim,
                        head.len,
                        out.0.add(head.base),
                        hidden,
                        false,
                        View::rows(weights, head.len),
                        View::rows(&v[head.base..], hidden),
                        1.0,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((tokens, hidden))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (tokens, hidden) = q.dims2()?;
        let (q, k, v, grad) =
            (HostF32::of(q)?, HostF32::of(k)?, HostF32::of(v)?, HostF32::of(grad)?);
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; q.len()], vec![0f32; q.len()], vec![0f32; q.len()]);
        let (dq_out, dk_out, dv_out) =
            (SharedOut(dq.as_mut_ptr()), SharedOut(dk.as_mut_ptr()), SharedOut(dv.as_mut_ptr()));
        (0..self.sequences.len() * self.heads).into_par_iter().for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(probs, kept, dprobs): &mut (Vec<f32>, Vec<f32>, Vec<f32>), task| {
                let Some(head) = self.head(task, hidden) else { return };
                let Head { base, len, head_dim, .. } = head;
                self.probabilities(&q, &k, task, head, probs, kept);
                let weights = if kept.is_empty() { &*probs } else { &*kept };
                let (dq_out, dk_out, dv_out) = (dq_out, dk_out, dv_out);
                dprobs.resize(len * len, 0.0);
                // SAFETY: reads stay inside the checked blocks; each task writes only its
                // own block of dq, dk and dv (disjoint, as in the forward pass).
                unsafe {
                    // dV = W^T . dO, with W the (dropped-out) weights.
                    matmul(
                        len,
                        head_dim,
                        len,
                        dv_out.0.add(base),
                        hidden,
                        false,
                        View::columns(weights, len),
                        View::rows(&grad[base..], hidden),
                        1.0,
                        gemm::Parallelism::None,
                    );
                    // dW = dO . V^T
                    matmul(
                        len,
                        len,
                        head_dim,
                        dprobs.as_mut_ptr(),
                        len,
                        false,
                        View::rows(&grad[base..], hidden),
                        View::columns(&v[base..], hidden),
                        1.0,
                        gemm::Parallelism::None,
                    );
                }
                if !kept.is_empty() {
                    // Through dropout: dP = dW * mask / keep.
                    let keep = 1.0 - self.dropout;
                    for (at, d) in dprobs.iter_mut().enumerate() {
                        *d = if self.keeps(task, at, keep) { *d / keep } else { 0.0 };
                    }
                }
                // Through softmax: dS = P * (dP - sum(dP * P)) per row.
                for (d_row, p_row) in dprobs.chunks_mut(len).zip(probs.chunks(len)) {
                    let dot: f32 = d_row.iter().zip(p_row).map(|(d, p)| d * p).sum();
                    d_row.iter_mut().zip(p_row).for_each(|(d, p)| *d = p * (*d - dot));
                }
                // SAFETY: as above.
                unsafe {
                    // dQ = scale * dS . K ; dK = scale * dS^T . Q
                    matmul(
                        len,
                        head_dim,
                        len,
                        dq_out.0.add(base),
                        hidden,
                        false,
                        View::rows(dprobs, len),
                        View::rows(&k[base..], hidden),
                        self.scale,
                        gemm::Parallelism::None,
                    );
                    matmul(
                        len,
                        head_dim,
                        len,
                        dk_out.0.add(base),
                        hidden,
                        false,
                        View::columns(dprobs, len),
                        View::rows(&q[base..], hidden),
                        self.scale,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
        let shaped = |data: Vec<f32>| Tensor::from_vec(data, (tokens, hidden), &Device::Cpu);
        Ok((Some(shaped(dq)?), Some(shaped(dk)?), Some(shaped(dv)?)))
    }
}

/// Runs the op on packed `(tokens, hidden)` f32 projections on the CPU, keeping it in
/// the gradient graph.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, op: TrainAttention) -> Result<Tensor> {
    q.apply_op3(k, v, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::train_check::{assert_same_forward_and_gradients, largest};
    use candle_core::{Var, D};

    /// The same attention from composed candle ops over each sequence separately.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        sequences: &[(usize, usize)],
        scale: f64,
    ) -> Tensor {
        let (_, hidden) = q.dims2().unwrap();
        let d = hidden / heads;
        let split = |t: &Tensor, start, len| {
            t.narrow(0, start, len)
                .unwrap()
                .reshape((len, heads, d))
                .unwrap()
                .transpose(0, 1)
                .unwrap()
        };
        let parts: Vec<Tensor> = sequences
            .iter()
            .map(|&(start, len)| {
                let (q, k, v) = (split(q, start, len), split(k, start, len), split(v, start, len));
                let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
                let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
                probs.matmul(&v).unwrap().transpose(0, 1).unwrap().reshape((len, hidden)).unwrap()
            })
            .collect();
        Tensor::cat(&parts, 0).unwrap()
    }

    #[test]
    fn forward_and_gradients_match_composed_ops() {
        let dev = Device::Cpu;
        let (heads, hidden) = (3, 12);
        let sequences: Arc<[(usize, usize)]> = Arc::from(vec![(0, 5), (5, 1), (6, 7)]);
        let tokens = 13;
        let make = || {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (tokens, hidden), &dev).unwrap()).unwrap()
        };
        let (q, k, v) = (make(), make(), make());
        let scale = 0.4;
        let op = TrainAttention {
            heads,
            sequences: sequences.clone(),
            scale: scale as f32,
            dropout: 0.0,
            seed: 7,
        };
        let ours = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), op).unwrap();
        let theirs =
            reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads, &sequences, scale);
        assert_same_forward_and_gradients(
            &ours,
            &theirs,
            &[("q", &q), ("k", &k), ("v", &v)],
            1e-5,
            1e-5,
        );
    }

    #[test]
    fn dropout_is_the_same_mask_in_both_passes_and_changes_with_the_seed() {
        let dev = Device::Cpu;
        let sequences: Arc<[(usize, usize)]> = Arc::from(vec![(0, 6)]);
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (6, 8), &dev).unwrap()).unwrap();
        let (k, v) = (
            Tensor::randn(0f32, 1.0, (6, 8), &dev).unwrap(),
            Tensor::ones((6, 8), candle_core::DType::F32, &dev).unwrap(),
        );
        let op = |seed| TrainAttention {
            heads: 2,
            sequences: sequences.clone(),
            scale: 1.0,
            dropout: 0.5,
            seed,
        };
        let a = attention(q.as_tensor(), &k, &v, op(1)).unwrap();
        let b = attention(q.as_tensor(), &k, &v, op(2)).unwrap();
        assert!(largest(&a, &b) > 0.1, "the seed does not change the mask");
        // With V all ones, each output is the sum of the kept weights of its row; the
        // gradient check against finite differences needs the same mask in backward.
        let grads = a.sum_all().unwrap().backward().unwrap();
        let dq = grads.get(q.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = q.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let eps = 1e-2;
        for at in [0, 9, 30, 47] {
            let mut shifted = base.clone();
            shifted[at] += eps;
            let up =
                attention(&Tensor::from_vec(shifted.clone(), (6, 8), &dev).unwrap(), &k, &v, op(1))
                    .unwrap();
            shifted[at] -= 2.0 * eps;
            let down = attention(&Tensor::from_vec(shifted, (6, 8), &dev).unwrap(), &k, &v, op(1))
                .unwrap();
            let numeric = (up.sum_all().unwrap().to_scalar::<f32>().unwrap()
                - down.sum_all().unwrap().to_scalar::<f32>().unwrap())
                / (2.0 * eps);
            assert!(
                (numeric - dq[at]).abs() < 2e-2,
                "dq[{at}] {} vs finite difference {numeric}",
                dq[at]
            );
        }
    }
}
