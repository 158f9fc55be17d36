//! Multi-head attention as one CPU kernel for inference.
//!
//! candle's batched matmul runs its batch serially and splits each small GEMM
//! across threads, which is slow for the many short sequences of embedding
//! work. This kernel instead gives each (sequence, head) pair to one thread and
//! works on packed sequences: the input is the fused projection, `(tokens, 3 hidden)`
//! with each row's query, key and value side by side and the real tokens of every
//! sequence one after another (no padding rows), read where it lies, so no head
//! transposes are copied. It has no backward pass: training uses `train_attention.rs`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::softmax_in_place;
use super::kernel_io::{contiguous_f32, matmul, SharedOut, View};

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

impl CustomOp1 for CpuAttention<'_> {
    fn name(&self) -> &'static str {
        "sembase-cpu-attention"
    }

    fn cpu_fwd(&self, qkv: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (tokens, width) = layout.shape().dims2()?;
        if width % 3 != 0 {
            candle_core::bail!("{OP}: fused projection width {width} is not 3 x hidden");
        }
        let hidden = width / 3;
        check_sequences(tokens, hidden, self.sequences, self.heads)?;
        if let Some(bias) = self.bias {
            let width = self.bias_width;
            if bias.len() != self.heads * width * width
                || self.sequences.iter().any(|&(_, len)| len > width)
            {
                candle_core::bail!("cpu attention: bias has {} values, not {} heads x {width} x {width} covering every sequence", bias.len(), self.heads);
            }
        }
        let qkv = contiguous_f32(qkv, layout, OP, "qkv")?;
        let (q, k, v) = (qkv, &qkv[hidden..], &qkv[2 * hidden..]);
        let head_dim = hidden / self.heads;
        let mut out = vec![0f32; tokens * hidden];
        let shared = SharedOut(out.as_mut_ptr());
        (0..self.sequences.len() * self.heads).into_par_iter().for_each_init(
            Vec::new,
            |scores: &mut Vec<f32>, task| {
                let (b, h) = (task / self.heads, task % self.heads);
                let (start, len) = self.sequences[b];
                if len == 0 {
                    return;
                }
                let base = start * width + h * head_dim;
                // SAFETY: rows start..start+len <= tokens and this head's columns lie inside
                // each of the three `hidden`-wide parts of a row (checked by `check_sequences`).
                unsafe {
                    let head = Head { base, len, stride: width, head_dim };
                    scaled_scores(q, head, k, head, self.scale, scores)
                };
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
                    let target = out.0.add(start * hidden + h * head_dim);
                    matmul(
                        len,
                        head_dim,
                        len,
                        target,
                        hidden,
                        false,
                        View::rows(scores, len),
                        View::rows(&v[base..], width),
                        1.0,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((tokens, hidden))))
    }
}

/// Where one (sequence, head) block lies in packed `(tokens, hidden)` rows.
#[derive(Clone, Copy)]
pub(crate) struct Head {
    /// Index of the block's first element: first row * stride + head * head_dim.
    pub base: usize,
    /// Tokens in the sequence.
    pub len: usize,
    /// Elements from one row to the next.
    pub stride: usize,
    pub head_dim: usize,
}

/// Checks that `sequences` (in order, not overlapping) fit `tokens` packed rows and
/// that `heads` divides `hidden`.
pub(crate) fn check_sequences(
    tokens: usize,
    hidden: usize,
    sequences: &[(usize, usize)],
    heads: usize,
) -> Result<()> {
    let in_order = sequences.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0);
    if !in_order || sequences.iter().any(|&(start, len)| start + len > tokens) {
        candle_core::bail!("{OP}: sequences overlap or do not fit the {tokens} packed tokens");
    }
    if heads == 0 || !hidden.is_multiple_of(heads) {
        candle_core::bail!("{OP}: hidden {hidden} not divisible by {heads} heads");
    }
    Ok(())
}

/// `scores` (len x len) = `scale` * Q K^T for one query head block of `q` and the key
/// head block of `k` it attends with (the same block of a fused projection, or of
/// another width under grouped-query attention).
///
/// # Safety
/// Each block must lie inside its slice (rows `len`, `stride` apart, from `base`), and
/// both must have the same `len` and `head_dim`.
pub(crate) unsafe fn scaled_scores(
    q: &[f32],
    q_head: Head,
    k: &[f32],
    k_head: Head,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let Head { len, head_dim, .. } = q_head;
    scores.resize(len * len, 0.0);
    matmul(
        len,
        len,
        head_dim,
        scores.as_mut_ptr(),
        len,
        false,
        View::rows(&q[q_head.base..], q_head.stride),
        View::columns(&k[k_head.base..], k_head.stride),
        scale,
        gemm::Parallelism::None,
    );
}

/// Runs the kernel on the packed, fused `(tokens, 3 hidden)` f32 projection on the CPU;
/// returns the `(tokens, hidden)` context.
pub fn attention(qkv: &Tensor, op: CpuAttention<'_>) -> Result<Tensor> {
    qkv.apply_op1_no_bwd(&op)
}
