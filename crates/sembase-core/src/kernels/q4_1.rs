//! Matmuls with GGUF Q4_1 weights kept quantised, on the CPU.
//!
//! A Q4_1 block holds 32 weights as `d * q + m` with 4-bit `q`, an f16 scale `d` and
//! an f16 offset `m` (20 bytes). candle computes this format with a scalar loop; here
//! the activations are quantised per block of 32 to 8 bits (scale `dx`, plus the sum of
//! the block's quantised values), so one block's dot product is
//! `d * dx * sum(q * qx) + m * dx * sum(qx)`, with the integer part in AVX2 where the
//! CPU has it (a portable loop otherwise; both give the same integers). Large batches
//! dequantise the matrix instead (see `gguf_linear`).

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::weights::mapped_gguf::SharedBytes;

/// Weights per block.
const BLOCK: usize = 32;
/// Bytes per Q4_1 block: f16 scale, f16 offset, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 20;

/// A `(out, in)` weight matrix in GGUF Q4_1 blocks, row after row (usually read in
/// place from a mapped file).
#[derive(Debug, Clone)]
pub struct Q4_1Matrix {
    bytes: SharedBytes,
    out_dim: usize,
    in_dim: usize,
}

/// One row of activations quantised to 8 bits per block.
struct QuantisedRow {
    values: Vec<i8>,
    /// Per block: the scale and the scale times the sum of the block's values.
    scales: Vec<(f32, f32)>,
}

impl Q4_1Matrix {
    /// Wraps the raw blocks of an `(out, in)` matrix; `in` must be a multiple of 32.
    pub fn new(bytes: SharedBytes, out_dim: usize, in_dim: usize) -> Result<Self> {
        if !in_dim.is_multiple_of(BLOCK) || bytes.len() != out_dim * in_dim / BLOCK * BLOCK_BYTES {
            return Err(Error::Unsupported(format!(
                "Q4_1 matrix {out_dim}x{in_dim}: {} bytes do not form whole blocks of 32",
                bytes.len()
            )));
        }
        Ok(Self { bytes, out_dim, in_dim })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// The weights as f32, `(out, in)` row-major as stored: each task expands whole rows
    /// with sequential writes (the layout the f32 GEMM path and LoRA training's frozen
    /// matmuls read; gemm packs either orientation alike, and this one was 3.5% faster
    /// on SmolLM2-135M batches than a transposed copy).
    pub fn dequantise(&self) -> Vec<f32> {
        let mut values = vec![0f32; self.out_dim * self.in_dim];
        let row_bytes = self.in_dim / BLOCK * BLOCK_BYTES;
        let avx2 = has_avx2();
        let rows = values.par_chunks_mut(self.in_dim).zip(self.bytes.par_chunks(row_bytes));
        rows.for_each(|(row, bytes)| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`); `row` holds 32 values
                // per 20-byte block of `bytes`.
                return unsafe { dequantise_row_avx2(bytes, row) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = avx2;
            dequantise_row_portable(bytes, row);
        });
        values
    }

    /// `x W^T` for `x` of `rows x in` values, row-major; returns `rows x out`.
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let quantised: Vec<QuantisedRow> =
            x.par_chunks(self.in_dim).take(rows).map(quantise_row).collect();
        let blocks = self.in_dim / BLOCK;
        let row_bytes = blocks * BLOCK_BYTES;
        let avx2 = has_avx2();
        // Each task computes a few output columns for every input row, so a few weight
        // rows stay in the L1 cache while the activations stream past.
        const COLUMNS_PER_TASK: usize = 8;
        let columns: Vec<Vec<f32>> = self
            .bytes
            .par_chunks(row_bytes * COLUMNS_PER_TASK)
            .map(|weights| {
                let width = weights.len() / row_bytes;
                let mut out = vec![0f32; rows * width];
                // Four activation rows per pass over a weight row: its nibbles are
                // unpacked once for all four.
                for (group_index, group) in quantised.chunks(ROWS_PER_PASS).enumerate() {
                    for (c, weight_row) in weights.chunks(row_bytes).enumerate() {
                        let dots = dot_rows(weight_row, group, avx2);
                        for (i, value) in dots.into_iter().take(group.len()).enumerate() {
                            out[(group_index * ROWS_PER_PASS + i) * width + c] = value;
                        }
                    }
                }
                out
            })
            .collect();
        // Scatter each task's (rows x its columns) into (rows x out).
        let mut y = vec![0f32; rows * self.out_dim];
        let mut first_column = 0;
        for block in columns {
            let width = block.len() / rows.max(1);
            for (r, values) in block.chunks(width.max(1)).enumerate() {
                y[r * self.out_dim + first_column..][..width].copy_from_slice(values);
            }
            first_column += width;
        }
        y
    }
}

fn quantise_row(x: &[f32]) -> QuantisedRow {
    let mut values = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / BLOCK);
    for block in x.chunks(BLOCK) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for v in block {
            let q = (v * inverse).round() as i8;
            sum += i32::from(q);
            values.push(q);
        }
        scales.push((scale, scale * sum as f32));
    }
    QuantisedRow { values, scales }
}

/// Activation rows computed together against one weight row.
const ROWS_PER_PASS: usize = 4;

/// One weight row (Q4_1 blocks) against up to four quantised activation rows; the
/// results past `rows.len()` are zero.
fn dot_rows(weights: &[u8], rows: &[QuantisedRow], avx2: bool) -> [f32; ROWS_PER_PASS] {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time); the rows were
        // quantised from inputs of the matrix's width.
        return unsafe {
            match rows {
                [a, b, c, d] => dot_avx2([a, b, c, d], weights),
                [a, b, c] => pad(dot_avx2([a, b, c], weights)),
                [a, b] => pad(dot_avx2([a, b], weights)),
                [a] => pad(dot_avx2([a], weights)),
                _ => [0.0; ROWS_PER_PASS],
            }
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    let mut out = [0.0; ROWS_PER_PASS];
    for (slot, row) in out.iter_mut().zip(rows) {
        *slot = dot_portable(weights, row);
    }
    out
}

#[cfg(target_arch = "x86_64")]
fn pad<const N: usize>(values: [f32; N]) -> [f32; ROWS_PER_PASS] {
    let mut out = [0.0; ROWS_PER_PASS];
    out[..N].copy_from_slice(&values);
    out
}

/// The block's scale and offset.
fn header(block: &[u8]) -> (f32, f32) {
    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
    let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
    (d, m)
}

/// Expands the blocks of one row into `out` (32 values per block).
fn dequantise_row_portable(bytes: &[u8], out: &mut [f32]) {
    for (values, block) in out.chunks_exact_mut(BLOCK).zip(bytes.chunks_exact(BLOCK_BYTES)) {
        let (d, m) = header(block);
        let (low, high) = values.split_at_mut(BLOCK / 2);
        for ((l, h), &byte) in low.iter_mut().zip(high).zip(&block[4..]) {
            *l = d * f32::from(byte & 0x0F) + m;
            *h = d * f32::from(byte >> 4) + m;
        }
    }
}

/// [`dequantise_row_portable`] eight values per instruction.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and `out` must hold 32 values per whole block
/// of `bytes`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantise_row_avx2(bytes: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let blocks = bytes.len() / BLOCK_BYTES;
    assert!(out.len() >= blocks * BLOCK, "output row shorter than the blocks");
    let low_nibbles = _mm_set1_epi8(0x0F);
    for b in 0..blocks {
        let block = bytes.as_ptr().add(b * BLOCK_BYTES);
        let header = _mm_cvtph_ps(_mm_cvtsi32_si128((block as *const i32).read_unaligned()));
        let d = _mm256_set1_ps(_mm_cvtss_f32(header));
        let m = _mm256_set1_ps(_mm_cvtss_f32(_mm_shuffle_ps(header, header, 1)));
        let packed = _mm_loadu_si128(block.add(4) as *const __m128i);
        // Values 0-15 are the low nibbles of the 16 bytes, 16-31 the high ones.
        let low = _mm_and_si128(packed, low_nibbles);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
        let dst = out.as_mut_ptr().add(b * BLOCK);
        for (i, half) in [low, high].into_iter().enumerate() {
            for (j, eight) in [half, _mm_srli_si128(half, 8)].into_iter().enumerate() {
                let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(eight));
                _mm256_storeu_ps(dst.add(i * 16 + j * 8), _mm256_fmadd_ps(d, q, m));
            }
        }
    }
}

fn dot_portable(weights: &[u8], row: &QuantisedRow) -> f32 {
    let mut total = 0f32;
    for ((block, xs), &(dx, dx_sum)) in
        weights.chunks(BLOCK_BYTES).zip(row.values.chunks(BLOCK)).zip(&row.scales)
    {
        let (d, m) = header(block);
        let mut int_dot = 0i32;
        for (j, &byte) in block[4..].iter().enumerate() {
            int_dot += i32::from(byte & 0x0F) * i32::from(xs[j])
                + i32::from(byte >> 4) * i32::from(xs[j + 16]);
        }
        total += d * dx * int_dot as f32 + m * dx_sum;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2<const N: usize>(rows: [&QuantisedRow; N], weights: &[u8]) -> [f32; N] {
    use std::arch::x86_64::*;
    let blocks = weights.len() / BLOCK_BYTES;
    for row in rows {
        assert!(
            row.scales.len() >= blocks && row.values.len() >= blocks * BLOCK,
            "activation row shorter than the weights"
        );
    }
    let low_nibbles = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut offsets = [0f32; N];
    for b in 0..blocks {
        // SAFETY: block b lies within `weights` (b < blocks) and each row holds at least
        // `blocks` scales and `blocks * 32` values (asserted above).
        let block = weights.as_ptr().add(b * BLOCK_BYTES);
        // The header's two f16 values (scale, offset), converted in one instruction.
        let header = _mm_cvtph_ps(_mm_cvtsi32_si128((block as *const i32).read_unaligned()));
        let (d, m) = (_mm_cvtss_f32(header), _mm_cvtss_f32(_mm_shuffle_ps(header, header, 1)));
        let packed = _mm_loadu_si128(block.add(4) as *const __m128i);
        let low = _mm_and_si128(packed, low_nibbles);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
        let q = _mm256_set_m128i(high, low);
        for i in 0..N {
            let (dx, dx_sum) = *rows[i].scales.get_unchecked(b);
            let xs = _mm256_loadu_si256(rows[i].values.as_ptr().add(b * BLOCK) as *const __m256i);
            let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xs), ones);
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(sums), acc[i]);
            offsets[i] += m * dx_sum;
        }
    }
    let mut out = [0f32; N];
    for i in 0..N {
        let halves = _mm_add_ps(_mm256_castps256_ps128(acc[i]), _mm256_extractf128_ps(acc[i], 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        let single = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1));
        out[i] = _mm_cvtss_f32(single) + offsets[i];
    }
    out
}

/// Whether the AVX2 path runs: the kernel set in force includes AVX2 and FMA
/// (`cpu_features`, which can force the portable path) and the CPU has F16C.
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use super::cpu_features::{active, KernelSet};
        active() >= KernelSet::Avx2 && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q4_1 blocks of a matrix whose values are known exactly (`d * q + m`).
    fn matrix(out_dim: usize, in_dim: usize) -> (Q4_1Matrix, Vec<f32>) {
        let mut bytes = Vec::new();
        let mut dense = Vec::new();
        for o in 0..out_dim {
            for b in 0..in_dim / BLOCK {
                let d = f16::from_f32(0.01 * (1 + (o + b) % 5) as f32);
                let m = f16::from_f32(-0.05 * ((o * 3 + b) % 4) as f32);
                bytes.extend(d.to_le_bytes());
                bytes.extend(m.to_le_bytes());
                let q: Vec<u8> = (0..BLOCK).map(|j| ((o * 7 + b * 3 + j * 5) % 16) as u8).collect();
                bytes.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
                dense.extend(q.iter().map(|&v| d.to_f32() * v as f32 + m.to_f32()));
            }
        }
        (Q4_1Matrix::new(bytes.into(), out_dim, in_dim).unwrap(), dense)
    }

    #[test]
    fn matches_the_dequantised_matmul() {
        let (out_dim, in_dim, rows) = (19, 96, 5);
        let (q, dense) = matrix(out_dim, in_dim);
        let x: Vec<f32> =
            (0..rows * in_dim).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let y = q.matmul(&x, rows);
        for r in 0..rows {
            for o in 0..out_dim {
                let exact: f32 =
                    (0..in_dim).map(|k| x[r * in_dim + k] * dense[o * in_dim + k]).sum();
                let got = y[r * out_dim + o];
                assert!(
                    (got - exact).abs() <= 0.02 * (1.0 + exact.abs()),
                    "row {r} col {o}: {got} vs {exact}"
                );
            }
        }
    }

    /// The AVX2 path, where the CPU has it, against the portable one: row counts 1 to 5
    /// take every group size of the four-row passes.
    #[test]
    fn every_kernel_set_matches_the_portable_one() {
        use crate::kernels::cpu_features::assert_every_set_agrees;
        let (q, _) = matrix(19, 96);
        for rows in 1..=5 {
            let x: Vec<f32> = (0..rows * 96).map(|i| ((i * 29 % 71) as f32 - 30.0) / 7.0).collect();
            assert_every_set_agrees(&format!("{rows} rows"), 1e-5, || q.matmul(&x, rows));
        }
    }

    #[test]
    fn dequantises_to_the_values() {
        let (out_dim, in_dim) = (5, 64);
        let (q, dense) = matrix(out_dim, in_dim);
        // The AVX2 path rounds `d * q + m` once (FMA), the portable loop twice.
        let worst =
            q.dequantise().iter().zip(&dense).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-6, "dequantised values differ by {worst}");
        let mut portable = vec![0f32; out_dim * in_dim];
        for (row, bytes) in portable.chunks_mut(in_dim).zip(q.bytes.chunks(in_dim / 32 * 20)) {
            dequantise_row_portable(bytes, row);
        }
        assert_eq!(portable, dense, "the portable loop differs");
    }

    #[test]
    fn a_width_not_made_of_blocks_is_refused() {
        assert!(Q4_1Matrix::new(vec![0; 20].into(), 1, 30).is_err());
    }
}
