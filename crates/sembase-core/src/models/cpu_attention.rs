//! Multi-head attention as one CPU kernel for inference.
//!
//! candle's batched matmul runs its batch serially and splits each small GEMM
//! across threads, which is slow for the many short sequences of embedding
//! work. This kernel instead gives each (sequence, head) pair to one thread and
//! works on packed sequences: queries, keys and values are `(tokens, hidden)`
//! with the real tokens of every sequence one after another (no padding rows),
//! read straight from the projections' output, so no head transposes are copied.
//! It has no backward pass: training uses the composed ops in `encoder.rs`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernel_io::{contiguous_f32, SharedOut};

/// The op's name in errors.
const OP: &str = "cpu attention";

/// The attention op: `softmax(scale * Q K^T + bias) V` per sequence and head.
pub struct CpuAttention<'a> {
    /// Number of heads; the hidden width is split evenly among them.
    pub heads: usize,
    /// The sequences, as (first row, tokens) in the packed input.
    pub sequences: &'a [(usize, usize)],
    /// Optional additive bias of shape `(heads, bias_width, bias_width)`, row-major,
    /// indexed by positions within a sequence.
    pub bias: Option<&'a [f32]>,
    /// The bias's width: at least the longest sequence.
    pub bias_width: usize,
    /// Multiplies the scores before the bias is added.
    pub scale: f32,
}

impl CustomOp3 for CpuAttention<'_> {
    fn name(&self) -> &'static str {
        "sembase-cpu-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (tokens, hidden) = q_layout.shape().dims2()?;
        if k_layout.shape() != q_layout.shape() || v_layout.shape() != q_layout.shape() {
            candle_core::bail!("cpu attention: q, k and v shapes differ");
        }
        let in_order = self.sequences.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0);
        if !in_order || self.sequences.iter().any(|&(start, len)| start + len > tokens) {
            candle_core::bail!("cpu attention: sequences overlap or do not fit the {tokens} packed tokens");
        }
        if hidden % self.heads != 0 {
            candle_core::bail!("cpu attention: hidden {hidden} not divisible by {} heads", self.heads);
        }
        if let Some(bias) = self.bias {
            let width = self.bias_width;
            if bias.len() != self.heads * width * width || self.sequences.iter().any(|&(_, len)| len > width) {
                candle_core::bail!("cpu attention: bias has {} values, not {} heads x {width} x {width} covering every sequence", bias.len(), self.heads);
            }
        }
        let (q, k, v) = (contiguous_f32(q, q_layout, OP, "q")?, contiguous_f32(k, k_layout, OP, "k")?, contiguous_f32(v, v_layout, OP, "v")?);
        let head_dim = hidden / self.heads;
        let mut out = vec![0f32; tokens * hidden];
        let shared = SharedOut(out.as_mut_ptr());
        (0..self.sequences.len() * self.heads).into_par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, task| {
            let (b, h) = (task / self.heads, task % self.heads);
            let (start, len) = self.sequences[b];
            if len == 0 {
                return;
            }
            let base = start * hidden + h * head_dim;
            scores.resize(len * len, 0.0);
            // SAFETY: all pointers stay inside their slices: rows start..start+len <= tokens,
            // columns < head_dim within this head's block of `hidden`.
            unsafe {
                // scores (len x len) = scale * Q (len x d) . K^T (d x len)
                gemm::gemm(
                    len, len, head_dim,
                    scores.as_mut_ptr(), 1, len as isize, false,
                    q.as_ptr().add(base), 1, hidden as isize,
                    k.as_ptr().add(base), hidden as isize, 1,
                    0.0, self.scale, false, false, false, gemm::Parallelism::None,
                );
            }
            for (i, row) in scores.chunks_mut(len).enumerate() {
                if let Some(bias) = self.bias {
                    let bias_row = &bias[(h * self.bias_width + i) * self.bias_width..][..len];
                    row.iter_mut().zip(bias_row).for_each(|(s, b)| *s += b);
                }
                softmax_in_place(row);
            }
            let out = shared;
            // SAFETY: each (b, h) task writes rows start..start+len of its own head's
            // columns, a region no other task touches (sequences do not overlap).
            unsafe {
                // context (len x d) = P (len x len) . V (len x d), written into (tokens, hidden)
                gemm::gemm(
                    len, head_dim, len,
                    out.0.add(base), 1, hidden as isize, false,
                    scores.as_ptr(), 1, len as isize,
                    v.as_ptr().add(base), 1, hidden as isize,
                    0.0, 1.0, false, false, false, gemm::Parallelism::None,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((tokens, hidden))))
    }
}

fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Runs the kernel on packed `(tokens, hidden)` f32 projections on the CPU.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, op: CpuAttention<'_>) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &op)
}
