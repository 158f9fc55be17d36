//! Multi-head attention for training on the CPU: the packed-sequence kernel of
//! `cpu_attention.rs` with dropout on the attention probabilities, grouped-query heads,
//! an optional causal mask and a backward pass.
//!
//! Composed candle ops would copy every head transpose, run thousands of tiny batched
//! GEMMs serially and build a softmax backward from several full-size tensors, all kept
//! until the backward pass. Here each (sequence, key/value head) block is one task,
//! forward and backward, with the query heads that share it; the backward recomputes
//! the probabilities (cheap at these lengths) instead of storing them, and the dropout
//! mask is a hash of (seed, block, row, column), so both passes see the same mask
//! without keeping it.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_attention::{check_sequences, scaled_scores, Head};
use super::fast_math::softmax_in_place;
use super::kernel_io::{contiguous_f32, matmul, HostF32, SharedOut, View};
use super::train_dropout::keeps;

/// The op's name in errors.
const OP: &str = "training attention";

/// `dropout(softmax(scale * Q K^T + mask)) V` per sequence and query head over packed
/// projections, q `(tokens, heads x head_dim)` and k, v `(tokens, kv_heads x head_dim)`,
/// differentiable in q, k and v. Query head `h` attends with key/value head
/// `h / (heads / kv_heads)` (grouped-query attention; `kv_heads == heads` is plain
/// multi-head attention).
#[derive(Debug, Clone)]
pub struct TrainAttention {
    /// Number of query heads; q's width is split evenly among them.
    pub heads: usize,
    /// Number of key/value heads; divides `heads`.
    pub kv_heads: usize,
    /// The sequences, as (first row, tokens) in the packed input.
    pub sequences: Arc<[(usize, usize)]>,
    /// Multiplies the scores.
    pub scale: f32,
    /// Whether a token attends only to itself and the tokens before it.
    pub causal: bool,
    /// Probability of dropping an attention weight (0: none).
    pub dropout: f32,
    /// Chooses the dropout mask.
    pub seed: u64,
}

/// The widths of one call.
#[derive(Clone, Copy)]
struct Widths {
    tokens: usize,
    q_hidden: usize,
    kv_hidden: usize,
    head_dim: usize,
}

/// Buffers a task reuses from block to block.
#[derive(Default)]
struct Scratch {
    probs: Vec<f32>,
    kept: Vec<f32>,
    dprobs: Vec<f32>,
}

impl TrainAttention {
    /// Checks the shapes of q, k and v against the heads and sequences.
    fn widths(&self, q: &Shape, k: &Shape, v: &Shape) -> Result<Widths> {
        let (tokens, q_hidden) = q.dims2()?;
        let (_, kv_hidden) = k.dims2()?;
        if k != v || k.dims()[0] != tokens {
            candle_core::bail!("{OP}: q {q:?}, k {k:?} and v {v:?} do not fit together");
        }
        check_sequences(tokens, q_hidden, &self.sequences, self.heads)?;
        let head_dim = q_hidden / self.heads;
        let grouped = self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads);
        if !grouped || kv_hidden != self.kv_heads * head_dim {
            candle_core::bail!(
                "{OP}: {} query heads of {head_dim} and k/v of width {kv_hidden} do not make {} key/value heads",
                self.heads,
                self.kv_heads
            );
        }
        Ok(Widths { tokens, q_hidden, kv_hidden, head_dim })
    }

    /// The tasks: one per (sequence, key/value head).
    fn tasks(&self) -> std::ops::Range<usize> {
        0..self.sequences.len() * self.kv_heads
    }

    /// The query heads of task `task` with their blocks in q, and the task's key/value
    /// block; `None` for an empty sequence.
    fn blocks(
        &self,
        task: usize,
        w: Widths,
    ) -> Option<(impl Iterator<Item = (usize, Head)> + use<'_>, Head)> {
        let (sequence, kv_head) = (task / self.kv_heads, task % self.kv_heads);
        let (start, len) = self.sequences[sequence];
        let group = self.heads / self.kv_heads;
        let head_dim = w.head_dim;
        let kv = Head {
            base: start * w.kv_hidden + kv_head * head_dim,
            len,
            stride: w.kv_hidden,
            head_dim,
        };
        let queries = (kv_head * group..(kv_head + 1) * group).map(move |h| {
            // The dropout key: the same block numbering as one task per query head.
            let block = sequence * self.heads + h;
            (
                block,
                Head { base: start * w.q_hidden + h * head_dim, len, stride: w.q_hidden, head_dim },
            )
        });
        (len > 0).then_some((queries, kv))
    }

    /// The softmax probabilities of one block into `probs`, and into `kept` the same
    /// after dropout (scaled by 1 / keep); `kept` is left empty without dropout.
    fn probabilities(
        &self,
        (q, q_head): (&[f32], Head),
        (k, k_head): (&[f32], Head),
        block: usize,
        probs: &mut Vec<f32>,
        kept: &mut Vec<f32>,
    ) {
        let len = q_head.len;
        // SAFETY: `widths` has verified that every block lies inside q and k.
        unsafe { scaled_scores(q, q_head, k, k_head, self.scale, probs) };
        for (i, row) in probs.chunks_mut(len).enumerate() {
            if self.causal {
                // Later keys get no weight (their gradient is then zero too).
                softmax_in_place(&mut row[..=i]);
                row[i + 1..].fill(0.0);
            } else {
                softmax_in_place(row);
            }
        }
        kept.clear();
        if self.dropout > 0.0 {
            let keep = 1.0 - self.dropout;
            kept.extend(probs.iter().enumerate().map(|(at, p)| {
                if self.keeps(block, at, keep) {
                    p / keep
                } else {
                    0.0
                }
            }));
        }
    }

    /// Whether element `at` of block `block` survives dropout with probability `keep`.
    fn keeps(&self, block: usize, at: usize, keep: f32) -> bool {
        keeps(self.seed, ((block as u64) << 32) | at as u64, keep)
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
        let w = self.widths(ql.shape(), kl.shape(), vl.shape())?;
        let (q, k, v) = (
            contiguous_f32(q, ql, OP, "q")?,
            contiguous_f32(k, kl, OP, "k")?,
            contiguous_f32(v, vl, OP, "v")?,
        );
        let mut out = vec![0f32; w.tokens * w.q_hidden];
        let shared = SharedOut(out.as_mut_ptr());
        self.tasks().into_par_iter().for_each_init(Scratch::default, |scratch, task| {
            let Some((queries, kv)) = self.blocks(task, w) else { return };
            for (block, q_head) in queries {
                let Scratch { probs, kept, .. } = scratch;
                self.probabilities((q, q_head), (k, kv), block, probs, kept);
                let weights = if kept.is_empty() { &*probs } else { &*kept };
                let out = shared;
                // SAFETY: each query head block is written by its one task; sequences do
                // not overlap (checked), so no two tasks share an element.
                unsafe {
                    matmul(
                        kv.len,
                        w.head_dim,
                        kv.len,
                        out.0.add(q_head.base),
                        w.q_hidden,
                        false,
                        View::rows(weights, kv.len),
                        View::rows(&v[kv.base..], w.kv_hidden),
                        1.0,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((w.tokens, w.q_hidden))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let w = self.widths(q.shape(), k.shape(), v.shape())?;
        let (q, k, v, grad) =
            (HostF32::of(q)?, HostF32::of(k)?, HostF32::of(v)?, HostF32::of(grad)?);
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
        let (dq_out, dk_out, dv_out) =
            (SharedOut(dq.as_mut_ptr()), SharedOut(dk.as_mut_ptr()), SharedOut(dv.as_mut_ptr()));
        self.tasks().into_par_iter().for_each_init(Scratch::default, |scratch, task| {
            let Some((queries, kv)) = self.blocks(task, w) else { return };
            let (len, head_dim) = (kv.len, w.head_dim);
            for (at, (block, q_head)) in queries.enumerate() {
                let Scratch { probs, kept, dprobs } = scratch;
                self.probabilities((&q, q_head), (&k, kv), block, probs, kept);
                let weights = if kept.is_empty() { &*probs } else { &*kept };
                let (dq_out, dk_out, dv_out) = (dq_out, dk_out, dv_out);
                // The group's query heads add into one key/value block.
                let accumulate = at > 0;
                dprobs.resize(len * len, 0.0);
                // SAFETY: reads stay inside the checked blocks; each task writes only its
                // own query head blocks of dq and its own key/value block of dk and dv.
                unsafe {
                    // dV += W^T . dO, with W the (dropped-out) weights.
                    matmul(
                        len,
                        head_dim,
                        len,
                        dv_out.0.add(kv.base),
                        w.kv_hidden,
                        accumulate,
                        View::columns(weights, len),
                        View::rows(&grad[q_head.base..], w.q_hidden),
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
                        View::rows(&grad[q_head.base..], w.q_hidden),
                        View::columns(&v[kv.base..], w.kv_hidden),
                        1.0,
                        gemm::Parallelism::None,
                    );
                }
                if !kept.is_empty() {
                    // Through dropout: dP = dW * mask / keep.
                    let keep = 1.0 - self.dropout;
                    for (at, d) in dprobs.iter_mut().enumerate() {
                        *d = if self.keeps(block, at, keep) { *d / keep } else { 0.0 };
                    }
                }
                // Through softmax: dS = P * (dP - sum(dP * P)) per row.
                for (d_row, p_row) in dprobs.chunks_mut(len).zip(probs.chunks(len)) {
                    let dot: f32 = d_row.iter().zip(p_row).map(|(d, p)| d * p).sum();
                    d_row.iter_mut().zip(p_row).for_each(|(d, p)| *d = p * (*d - dot));
                }
                // SAFETY: as above.
                unsafe {
                    // dQ = scale * dS . K ; dK += scale * dS^T . Q
                    matmul(
                        len,
                        head_dim,
                        len,
                        dq_out.0.add(q_head.base),
                        w.q_hidden,
                        false,
                        View::rows(dprobs, len),
                        View::rows(&k[kv.base..], w.kv_hidden),
                        self.scale,
                        gemm::Parallelism::None,
                    );
                    matmul(
                        len,
                        head_dim,
                        len,
                        dk_out.0.add(kv.base),
                        w.kv_hidden,
                        accumulate,
                        View::columns(dprobs, len),
                        View::rows(&q[q_head.base..], w.q_hidden),
                        self.scale,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
        let shaped =
            |data: Vec<f32>, width| Tensor::from_vec(data, (w.tokens, width), &Device::Cpu);
        Ok((
            Some(shaped(dq, w.q_hidden)?),
            Some(shaped(dk, w.kv_hidden)?),
            Some(shaped(dv, w.kv_hidden)?),
        ))
    }
}

/// Runs the op on packed f32 projections on the CPU, keeping it in the gradient graph.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, op: TrainAttention) -> Result<Tensor> {
    q.apply_op3(k, v, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::train_check::{assert_same_forward_and_gradients, largest};
    use candle_core::{DType, Var, D};

    /// The same attention from composed candle ops over each sequence separately, key
    /// and value heads repeated for their query heads, later keys masked when `causal`.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, op: &TrainAttention) -> Tensor {
        let (tokens, hidden) = q.dims2().unwrap();
        let d = hidden / op.heads;
        let group = op.heads / op.kv_heads;
        let split = |t: &Tensor, heads, start, len| {
            t.narrow(0, start, len)
                .unwrap()
                .reshape((len, heads, d))
                .unwrap()
                .transpose(0, 1)
                .unwrap()
        };
        let repeated = |t: Tensor| {
            let heads: Vec<Tensor> =
                (0..op.heads).map(|h| t.narrow(0, h / group, 1).unwrap()).collect();
            Tensor::cat(&heads, 0).unwrap()
        };
        let mut parts = Vec::new();
        let mut covered = 0;
        for &(start, len) in op.sequences.iter() {
            if start > covered {
                // Rows outside every sequence (padding) get zeros.
                parts.push(
                    Tensor::zeros((start - covered, hidden), DType::F32, &Device::Cpu).unwrap(),
                );
            }
            let q = split(q, op.heads, start, len);
            let (k, v) = (split(k, op.kv_heads, start, len), split(v, op.kv_heads, start, len));
            let (k, v) = (repeated(k), repeated(v));
            let mut scores = (q.matmul(&k.t().unwrap()).unwrap() * op.scale as f64).unwrap();
            if op.causal {
                let mask: Vec<f32> = (0..len * len)
                    .map(|at| if at % len > at / len { -1e30 } else { 0.0 })
                    .collect();
                let mask = Tensor::from_vec(mask, (1, len, len), &Device::Cpu).unwrap();
                scores = scores.broadcast_add(&mask).unwrap();
            }
            let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            parts.push(
                probs.matmul(&v).unwrap().transpose(0, 1).unwrap().reshape((len, hidden)).unwrap(),
            );
            covered = start + len;
        }
        if tokens > covered {
            parts
                .push(Tensor::zeros((tokens - covered, hidden), DType::F32, &Device::Cpu).unwrap());
        }
        Tensor::cat(&parts, 0).unwrap()
    }

    #[test]
    fn forward_and_gradients_match_composed_ops() {
        let dev = Device::Cpu;
        let head_dim = 4;
        // Plain multi-head (an encoder's), then grouped-query heads with a causal mask
        // and padding rows between the sequences (a decoder's padded batch).
        let cases = [
            (3, 3, false, vec![(0, 5), (5, 1), (6, 7)], 13),
            (4, 2, true, vec![(1, 5), (8, 1), (9, 7)], 17),
        ];
        for (heads, kv_heads, causal, sequences, tokens) in cases {
            let make = |width: usize| {
                let values = Tensor::randn(0f32, 1.0, (tokens, width), &dev).unwrap();
                Var::from_tensor(&values).unwrap()
            };
            let q = make(heads * head_dim);
            let (k, v) = (make(kv_heads * head_dim), make(kv_heads * head_dim));
            let op = TrainAttention {
                heads,
                kv_heads,
                sequences: Arc::from(sequences),
                scale: 0.4,
                causal,
                dropout: 0.0,
                seed: 7,
            };
            let theirs = reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), &op);
            let ours = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), op).unwrap();
            assert_same_forward_and_gradients(
                &ours,
                &theirs,
                &[("q", &q), ("k", &k), ("v", &v)],
                1e-5,
                1e-5,
            );
        }
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
            kv_heads: 2,
            sequences: sequences.clone(),
            scale: 1.0,
            causal: false,
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
