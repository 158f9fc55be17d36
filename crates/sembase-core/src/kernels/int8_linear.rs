//! Linear layers with int8 weights for CPU inference (`--quantize int8`).
//!
//! Weights are quantised once per output channel, symmetrically within +-127;
//! activations per row at run time (dynamic quantisation), asymmetrically,
//! `x ~ sx (qx - zx)` with 255 levels over the row's range (GELU outputs are far from
//! symmetric), so `y = sx sw (sum(qx qw) - zx sum(qw)) + b`. The integer dot products
//! run in AVX-512 VNNI where the CPU has it (`vpdpbusd`, unsigned by signed bytes: the
//! codes are stored as 1..=255), in AVX2 otherwise (codes stored as -127..=127; `vpsignb`
//! moves each weight's sign onto the activation so that `vpmaddubsw` multiplies |w| by
//! it, and two such products never pass the 16 bits it adds them in, where unsigned
//! activations by signed weights could), or in a portable loop; all give the same
//! `sum(qx qw) - zx sum(qw)`, so the same outputs.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::{gelu, max_of, min_of, multiversioned};
use super::kernel_io::{contiguous_f32, SharedOut};
use crate::error::{Error, Result};

/// Output channels per packed panel: one 512-bit register of 32-bit sums.
const PANEL: usize = 16;
/// Inputs per group: `vpdpbusd` sums four byte products into each 32-bit lane.
const GROUP: usize = 4;
/// Activation rows per pass of the kernels over a panel.
const ROWS_PER_PASS: usize = 6;
/// Panels per parallel task (64 output channels).
const PANELS_PER_TASK: usize = 4;
/// Activation rows per parallel task (eight passes).
const ROWS_PER_BLOCK: usize = 8 * ROWS_PER_PASS;

/// Which integer kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    Vnni,
    Avx2,
    Portable,
}

impl Int8Kernel {
    /// `SEMBASE_INT8_KERNEL` (`vnni`, `avx2` or `portable`, e.g. to check a fallback
    /// on a CPU that has more), or the fastest kernel this CPU supports.
    pub fn from_env() -> Result<Self> {
        let Ok(name) = std::env::var("SEMBASE_INT8_KERNEL") else {
            return Ok(Self::detect());
        };
        let wanted = match name.as_str() {
            "vnni" => Self::Vnni,
            "avx2" => Self::Avx2,
            "portable" => Self::Portable,
            other => {
                return Err(Error::Unsupported(format!(
                    "SEMBASE_INT8_KERNEL={other}: expected vnni, avx2 or portable"
                )))
            }
        };
        if !wanted.supported() {
            return Err(Error::Unsupported(format!(
                "SEMBASE_INT8_KERNEL={name}: this CPU lacks the instructions"
            )));
        }
        Ok(wanted)
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Self::Vnni => {
                is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        [Self::Vnni, Self::Avx2].into_iter().find(|k| k.supported()).unwrap_or(Self::Portable)
    }

    /// What is added to an activation code in 0..=254 to make the byte the kernel reads:
    /// `vpdpbusd` reads bytes unsigned (1..=255), the other kernels signed (-127..=127).
    fn code_shift(self) -> i32 {
        match self {
            Self::Vnni => 1,
            Self::Avx2 | Self::Portable => -127,
        }
    }
}

/// An `(out, in)` weight matrix quantised per output channel, packed for the kernels:
/// panel by panel of 16 channels, each panel group by group of 4 inputs, 16 x 4 bytes
/// (channel-major within a group). Padding channels and inputs are zero.
#[derive(Debug, Clone)]
pub struct Int8Matrix {
    packed: Vec<i8>,
    /// Per output channel: the dequantisation scale.
    scales: Vec<f32>,
    /// Per output channel: the sum of its quantised weights (takes off the zero points).
    sums: Vec<i32>,
    out_dim: usize,
    in_dim: usize,
    /// Groups of 4 inputs per row (the input width rounded up).
    groups: usize,
}

impl Int8Matrix {
    /// Quantises a row-major `(out, in)` f32 matrix.
    pub fn quantise(weight: &[f32], out_dim: usize, in_dim: usize) -> Self {
        assert_eq!(weight.len(), out_dim * in_dim, "weight size");
        let groups = in_dim.div_ceil(GROUP);
        let panels = out_dim.div_ceil(PANEL);
        let mut packed = vec![0i8; panels * groups * PANEL * GROUP];
        let mut scales = vec![0f32; out_dim];
        let mut sums = vec![0i32; out_dim];
        // One panel (16 channels) per task: each writes only its own bytes.
        packed
            .par_chunks_mut(groups * PANEL * GROUP)
            .zip(scales.par_chunks_mut(PANEL).zip(sums.par_chunks_mut(PANEL)))
            .zip(weight.par_chunks(in_dim * PANEL))
            .for_each(|((panel, (scales, sums)), rows)| {
                let mut codes = vec![0i8; in_dim];
                for (lane, ((row, scale), sum)) in
                    rows.chunks(in_dim).zip(scales).zip(sums).enumerate()
                {
                    (*scale, *sum) = quantise_weights(row, &mut codes);
                    for (k, &q) in codes.iter().enumerate() {
                        panel[((k / GROUP) * PANEL + lane) * GROUP + k % GROUP] = q;
                    }
                }
            });
        Self { packed, scales, sums, out_dim, in_dim, groups }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x W^T + bias`, then GELU when asked, for `x` of `rows x in` f32 values.
    pub fn forward(
        &self,
        x: &[f32],
        rows: usize,
        bias: &[f32],
        gelu: bool,
        kernel: Int8Kernel,
    ) -> Vec<f32> {
        let stride = self.groups * GROUP;
        let codes = quantise_rows(x, rows, self.in_dim, stride, kernel.code_shift());
        let channel_tasks = self.out_dim.div_ceil(PANEL * PANELS_PER_TASK);
        let mut out: Vec<f32> = Vec::with_capacity(rows * self.out_dim);
        let inputs = TaskInputs {
            matrix: self,
            codes: &codes,
            rows,
            bias,
            gelu,
            kernel,
            out: SharedOut(out.as_mut_ptr()),
        };
        // Tasks run block of rows by block of rows, each block through every channel task
        // in turn: a thread fills whole output rows while they are in cache, and a small
        // input still splits across threads by channels.
        (0..rows.div_ceil(ROWS_PER_BLOCK) * channel_tasks)
            .into_par_iter()
            .for_each(|t| run_task(&inputs, t / channel_tasks, t % channel_tasks));
        // SAFETY: the tasks above cover every channel of every row block (see `run_task_loop`).
        unsafe { out.set_len(rows * self.out_dim) };
        out
    }
}

/// What every task of one [`Int8Matrix::forward`] call shares.
struct TaskInputs<'a> {
    matrix: &'a Int8Matrix,
    codes: &'a QuantisedRows,
    rows: usize,
    bias: &'a [f32],
    gelu: bool,
    kernel: Int8Kernel,
    /// The `rows x out_dim` output.
    out: SharedOut,
}

/// One task: the rows of block `row_block` through the 64 channels of `task`.
#[inline(always)]
fn run_task_loop(inputs: &TaskInputs, row_block: usize, task: usize) {
    let TaskInputs { matrix, codes, rows, bias, gelu, kernel, out } = *inputs;
    let (stride, task_width) = (matrix.groups * GROUP, PANEL * PANELS_PER_TASK);
    let panel_bytes = matrix.groups * PANEL * GROUP;
    let panels: Vec<&[i8]> = matrix.packed[task * panel_bytes * PANELS_PER_TASK..]
        .chunks(panel_bytes)
        .take(PANELS_PER_TASK)
        .collect();
    let first_channel = task * task_width;
    let width = task_width.min(matrix.out_dim - first_channel);
    let channels = first_channel..first_channel + width;
    let channels = Channels {
        scales: &matrix.scales[channels.clone()],
        sums: &matrix.sums[channels.clone()],
        bias: &bias[channels],
    };
    let block_rows = row_block * ROWS_PER_BLOCK..rows.min((row_block + 1) * ROWS_PER_BLOCK);
    // Every kernel overwrites the sums of the rows and panels it is given.
    let mut block = [[0i32; PANEL * PANELS_PER_TASK]; ROWS_PER_PASS];
    for first in block_rows.clone().step_by(ROWS_PER_PASS) {
        let n = ROWS_PER_PASS.min(block_rows.end - first);
        dot_block(
            kernel,
            &panels,
            &codes.codes[first * stride..][..n * stride],
            n,
            stride,
            &mut block,
        );
        for (i, lanes) in block.iter().take(n).enumerate() {
            let r = first + i;
            // SAFETY: this task alone writes channels first_channel..+width of the rows of
            // its block, inside the rows x out_dim buffer; every value is written once.
            let target = unsafe {
                std::slice::from_raw_parts_mut(out.0.add(r * matrix.out_dim + first_channel), width)
            };
            let row = RowScale { scale: codes.scales[r], zero: codes.zeros[r] };
            dequantise(target, &lanes[..width], channels, row, gelu);
        }
    }
}

multiversioned! {
    fn run_task(inputs: &TaskInputs, row_block: usize, task: usize) = run_task_loop
}

/// The int8 map as a candle op on a contiguous `(rows, in)` f32 tensor: reads the
/// input where it lies and hands its output over, without copies.
struct Int8Op<'a> {
    weights: &'a Int8Matrix,
    bias: &'a [f32],
    gelu: bool,
    kernel: Int8Kernel,
}

impl CustomOp1 for Int8Op<'_> {
    fn name(&self) -> &'static str {
        "sembase-int8-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = layout.shape().dims2()?;
        if in_dim != self.weights.in_dim || self.bias.len() != self.weights.out_dim {
            candle_core::bail!(
                "int8 linear: input {:?} does not fit a {}x{} matrix",
                layout.shape(),
                self.weights.out_dim,
                self.weights.in_dim
            );
        }
        let x = contiguous_f32(storage, layout, "int8 linear", "x")?;
        let y = self.weights.forward(x, rows, self.bias, self.gelu, self.kernel);
        Ok((CpuStorage::F32(y), Shape::from((rows, self.weights.out_dim))))
    }
}

/// `x W^T + bias` (then GELU when asked) with int8 weights, for f32 `x` of shape `(rows, in)` on the CPU.
pub fn linear(
    x: &Tensor,
    weights: &Int8Matrix,
    bias: &[f32],
    gelu: bool,
    kernel: Int8Kernel,
) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&Int8Op { weights, bias, gelu, kernel })
}

/// Activation rows as bytes, with each row's scale and zero point.
struct QuantisedRows {
    /// Row-major, each row padded to the stride with its zero point, in the kernel's
    /// reading (`Int8Kernel::code_shift`).
    codes: Vec<u8>,
    scales: Vec<f32>,
    /// Each row's zero point, shifted as its codes are.
    zeros: Vec<i32>,
}

fn quantise_rows(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    stride: usize,
    shift: i32,
) -> QuantisedRows {
    let mut codes = vec![0u8; rows * stride];
    let mut scales = vec![0f32; rows];
    let mut zeros = vec![0i32; rows];
    codes
        .par_chunks_mut(stride)
        .zip(scales.par_iter_mut().zip(zeros.par_iter_mut()))
        .zip(x.par_chunks(in_dim))
        .for_each(|((codes, (scale, zero)), row)| {
            (*scale, *zero) = quantise_row(row, codes, shift)
        });
    QuantisedRows { codes, scales, zeros }
}

/// Codes one output channel's weights symmetrically into `codes`; returns the scale
/// and the sum of the codes.
#[inline(always)]
fn quantise_weights_loop(row: &[f32], codes: &mut [i8]) -> (f32, i32) {
    let max = max_of(row).max(-min_of(row));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inverse = 1.0 / scale;
    for (c, &v) in codes.iter_mut().zip(row) {
        // Adding 1.5 x 2^23 rounds to the nearest integer (ties to even) into the low bits.
        let shifted = (v * inverse).clamp(-127.0, 127.0) + ROUNDING;
        *c = shifted.to_bits().wrapping_sub(ROUNDING.to_bits()) as i32 as i8;
    }
    (scale, codes.iter().map(|&c| i32::from(c)).sum())
}

multiversioned! {
    fn quantise_weights(row: &[f32], codes: &mut [i8]) -> (f32, i32) = quantise_weights_loop
}

/// Codes one activation row into `codes` as 0..=254 plus `shift` (wrapping to a byte;
/// padded past the row with the zero point); returns the row's scale and zero point
/// (shifted too).
#[inline(always)]
fn quantise_row_loop(row: &[f32], codes: &mut [u8], shift: i32) -> (f32, i32) {
    // The range always holds 0, so padding (the zero point) is exactly 0.
    let (min, max) = range_with_zero(row);
    let scale = if max > min { (max - min) / f32::from(TOP_CODE) } else { 1.0 };
    let inverse = 1.0 / scale;
    let z = round_to_code(-min * inverse);
    let zero = f32::from(z);
    let shift_byte = shift as u8;
    for (c, &v) in codes.iter_mut().zip(row) {
        *c = round_to_code(v * inverse + zero).wrapping_add(shift_byte);
    }
    codes[row.len()..].fill(z.wrapping_add(shift_byte));
    (scale, i32::from(z) + shift)
}

multiversioned! {
    fn quantise_row(row: &[f32], codes: &mut [u8], shift: i32) -> (f32, i32) = quantise_row_loop
}

/// Per output channel of one task: weight scales, weight sums and bias.
#[derive(Clone, Copy)]
struct Channels<'a> {
    scales: &'a [f32],
    sums: &'a [i32],
    bias: &'a [f32],
}

/// One activation row's scale and zero point.
#[derive(Clone, Copy)]
struct RowScale {
    scale: f32,
    zero: i32,
}

/// Turns one row's integer sums into outputs, `sx sw (sum - zx sum(qw)) + b`, then GELU
/// when asked (in registers, before the store).
#[inline(always)]
fn dequantise(
    target: &mut [f32],
    lanes: &[i32],
    channels: Channels,
    row: RowScale,
    with_gelu: bool,
) {
    let Channels { scales, sums, bias } = channels;
    let values = lanes.iter().zip(scales).zip(sums).zip(bias);
    let value = |(((&sum, &w_scale), &w_sum), &b): (((&i32, &f32), &i32), &f32)| {
        (sum - row.zero * w_sum) as f32 * row.scale * w_scale + b
    };
    if with_gelu {
        target.iter_mut().zip(values).for_each(|(slot, v)| *slot = gelu(value(v)));
    } else {
        target.iter_mut().zip(values).for_each(|(slot, v)| *slot = value(v));
    }
}

/// The smallest and largest of `values` and 0.
#[inline(always)]
fn range_with_zero(values: &[f32]) -> (f32, f32) {
    (min_of(values).min(0.0), max_of(values).max(0.0))
}

/// 1.5 x 2^23: adding it to a float of magnitude below 2^22 leaves that float rounded to
/// an integer (ties to even) in the low mantissa bits, without a libm call.
const ROUNDING: f32 = 12_582_912.0;

/// The largest activation code: 255 levels, so that shifted by -127 they fit a signed byte
/// whose negation does too (`vpsignb` cannot negate -128).
const TOP_CODE: u8 = 254;

/// `v` clamped to [0, 254] and rounded to the nearest integer (ties to even).
#[inline(always)]
fn round_to_code(v: f32) -> u8 {
    let clamped = v.clamp(0.0, f32::from(TOP_CODE));
    ((clamped + ROUNDING).to_bits() & 0xFF) as u8
}

/// Sums of one task's block: 32-bit sums of channel lanes (16 per panel) for up to six rows.
type Block = [[i32; PANEL * PANELS_PER_TASK]; ROWS_PER_PASS];

/// Integer sums of up to six activation rows against up to four panels of 16 channels,
/// written over the first `rows` rows and `16 x panels` lanes of `out`.
fn dot_block(
    kernel: Int8Kernel,
    panels: &[&[i8]],
    codes: &[u8],
    rows: usize,
    stride: usize,
    out: &mut Block,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Vnni` is only chosen when the CPU has AVX-512F and VNNI (`supported`);
        // every panel holds groups x 64 bytes and `codes` rows x stride, stride = groups x 4.
        Int8Kernel::Vnni => unsafe {
            match panels {
                [a, b, c, d] => dot_block_vnni([a, b, c, d], codes, rows, stride, out),
                [a, b, c] => dot_block_vnni([a, b, c], codes, rows, stride, out),
                [a, b] => dot_block_vnni([a, b], codes, rows, stride, out),
                [a] => dot_block_vnni([a], codes, rows, stride, out),
                _ => {}
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2, whose activation bytes are -127..=127 read signed.
        Int8Kernel::Avx2 => unsafe {
            for (p, panel) in panels.iter().enumerate() {
                dot_panel_avx2(panel, codes, rows, stride, out, p * PANEL);
            }
        },
        _ => {
            for (p, panel) in panels.iter().enumerate() {
                dot_panel_portable(panel, codes, rows, stride, out, p * PANEL);
            }
        }
    }
}

/// The plain loop, on activation bytes read signed: written so that the compiler
/// vectorises it across the panel's 16 channels (NEON on aarch64, where it is the kernel).
fn dot_panel_portable(
    panel: &[i8],
    codes: &[u8],
    rows: usize,
    stride: usize,
    out: &mut Block,
    first_lane: usize,
) {
    for (r, out) in out.iter_mut().enumerate().take(rows) {
        let row = &codes[r * stride..][..stride];
        let mut sums = [0i32; PANEL];
        for (weights, x) in panel.chunks_exact(PANEL * GROUP).zip(row.chunks_exact(GROUP)) {
            let x: [i32; GROUP] = std::array::from_fn(|k| i32::from(x[k] as i8));
            for (sum, w) in sums.iter_mut().zip(weights.chunks_exact(GROUP)) {
                *sum += x.iter().zip(w).map(|(&a, &b)| a * i32::from(b)).sum::<i32>();
            }
        }
        out[first_lane..first_lane + PANEL].copy_from_slice(&sums);
    }
}

/// `P` panels (16 channels each) against up to six rows of codes:
/// 6 x P accumulators, each `vpdpbusd` summing four byte products per lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dot_block_vnni<const P: usize>(
    panels: [&&[i8]; P],
    codes: &[u8],
    rows: usize,
    stride: usize,
    out: &mut Block,
) {
    use std::arch::x86_64::*;
    let groups = stride / GROUP;
    assert!(
        panels.iter().all(|p| p.len() >= groups * PANEL * GROUP)
            && codes.len() >= rows * stride
            && rows <= ROWS_PER_PASS
    );
    let mut acc = [[_mm512_setzero_si512(); P]; ROWS_PER_PASS];
    for g in 0..groups {
        let mut w = [_mm512_setzero_si512(); P];
        for (w, panel) in w.iter_mut().zip(panels) {
            *w = _mm512_loadu_si512(panel.as_ptr().add(g * PANEL * GROUP) as *const _);
        }
        for (r, sums) in acc.iter_mut().enumerate().take(rows) {
            // Four activation bytes, repeated across the register.
            let x = _mm512_set1_epi32(
                (codes.as_ptr().add(r * stride + g * GROUP) as *const i32).read_unaligned(),
            );
            for (sum, w) in sums.iter_mut().zip(&w) {
                *sum = _mm512_dpbusd_epi32(*sum, x, *w);
            }
        }
    }
    for (r, sums) in acc.iter().enumerate().take(rows) {
        for (p, sum) in sums.iter().enumerate() {
            _mm512_storeu_si512(out[r].as_mut_ptr().add(p * PANEL) as *mut _, *sum);
        }
    }
}

/// One panel against up to six rows of codes, in passes of [`AVX2_ROWS`] rows.
///
/// SAFETY (callers): the CPU has AVX2; `panel` holds groups x 64 bytes, `codes`
/// rows x stride bytes (stride = groups x 4), each within -127..=127 read signed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_panel_avx2(
    panel: &[i8],
    codes: &[u8],
    rows: usize,
    stride: usize,
    out: &mut Block,
    first_lane: usize,
) {
    assert!(
        panel.len() >= (stride / GROUP) * PANEL * GROUP
            && codes.len() >= rows * stride
            && rows <= ROWS_PER_PASS
    );
    for first in (0..rows).step_by(AVX2_ROWS) {
        let codes = &codes[first * stride..];
        let out = &mut out[first..];
        match rows - first {
            1 => dot_rows_avx2::<1>(panel, codes, stride, out, first_lane),
            2 => dot_rows_avx2::<2>(panel, codes, stride, out, first_lane),
            3 => dot_rows_avx2::<3>(panel, codes, stride, out, first_lane),
            _ => dot_rows_avx2::<AVX2_ROWS>(panel, codes, stride, out, first_lane),
        }
    }
}

/// Activation rows per pass of the AVX2 kernel: 4 rows x 2 registers of sums, the
/// weights and their magnitudes, the activations and the products fit AVX2's 16 registers.
const AVX2_ROWS: usize = 4;

/// `R` rows of codes against one panel (16 channels, two registers of 8). Per group,
/// `vpsignb` gives each channel its activations times the sign of its weights, and
/// `vpmaddubsw` multiplies them by the weights' magnitudes (unsigned), adding pairs into
/// 16 bits: |127 x 127 x 2| < 2^15, so nothing saturates. `vpmaddwd` by ones then adds
/// the pairs into each channel's 32-bit lane, as `vpdpbusd` does in one step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_rows_avx2<const R: usize>(
    panel: &[i8],
    codes: &[u8],
    stride: usize,
    out: &mut [[i32; PANEL * PANELS_PER_TASK]],
    first_lane: usize,
) {
    use std::arch::x86_64::*;
    let groups = stride / GROUP;
    assert!(panel.len() >= groups * PANEL * GROUP && codes.len() >= R * stride && out.len() >= R);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for g in 0..groups {
        let base = panel.as_ptr().add(g * PANEL * GROUP);
        let weights = [
            _mm256_loadu_si256(base as *const __m256i),
            _mm256_loadu_si256(base.add(32) as *const __m256i),
        ];
        let magnitudes = weights.map(|w| _mm256_abs_epi8(w));
        for (r, sums) in acc.iter_mut().enumerate() {
            // The group's four codes, repeated across the register.
            let x = _mm256_set1_epi32(
                (codes.as_ptr().add(r * stride + g * GROUP) as *const i32).read_unaligned(),
            );
            for ((sum, &w), &m) in sums.iter_mut().zip(&weights).zip(&magnitudes) {
                let pairs = _mm256_maddubs_epi16(m, _mm256_sign_epi8(x, w));
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
            }
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        let lanes = out[r].as_mut_ptr().add(first_lane);
        _mm256_storeu_si256(lanes as *mut __m256i, sums[0]);
        _mm256_storeu_si256(lanes.add(8) as *mut __m256i, sums[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(out_dim: usize, in_dim: usize, rows: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let w: Vec<f32> =
            (0..out_dim * in_dim).map(|i| ((i * 7919 % 997) as f32 / 997.0 - 0.5) * 0.2).collect();
        let x: Vec<f32> =
            (0..rows * in_dim).map(|i| ((i * 104729 % 1009) as f32 / 1009.0 - 0.5) * 4.0).collect();
        let b: Vec<f32> = (0..out_dim).map(|i| i as f32 * 0.01).collect();
        (w, x, b)
    }

    fn kernels() -> Vec<Int8Kernel> {
        [Int8Kernel::Portable, Int8Kernel::Avx2, Int8Kernel::Vnni]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    /// Odd sizes: channels not a multiple of 16 over two tasks of 64, inputs not a multiple
    /// of 4, rows not a multiple of 6 over two blocks of 48. Each kernel gives exactly the
    /// portable loop's result on the same weights (this is how the fallbacks are checked
    /// on a CPU that has VNNI), close to f32.
    #[test]
    fn every_kernel_equals_the_portable_loop_and_is_close_to_f32() {
        let (out_dim, in_dim, rows) = (77, 70, 53);
        let (w, x, b) = data(out_dim, in_dim, rows);
        for kernel in kernels() {
            let q = Int8Matrix::quantise(&w, out_dim, in_dim);
            let got = q.forward(&x, rows, &b, false, kernel);
            assert_eq!(
                got,
                q.forward(&x, rows, &b, false, Int8Kernel::Portable),
                "{kernel:?} differs from the portable loop"
            );
            for r in 0..rows {
                for o in 0..out_dim {
                    let exact: f32 =
                        (0..in_dim).map(|k| x[r * in_dim + k] * w[o * in_dim + k]).sum::<f32>()
                            + b[o];
                    let value = got[r * out_dim + o];
                    assert!(
                        (value - exact).abs() < 0.05,
                        "{kernel:?} row {r} channel {o}: {value} vs {exact}"
                    );
                }
            }
        }
    }

    /// Activations at both ends of their range against weights at both ends of theirs:
    /// every pair of products the AVX2 kernel adds in 16 bits is as large as it gets
    /// (127 x 127 x 2), and every kernel still equals the portable loop and f32.
    #[test]
    fn extreme_codes_do_not_saturate() {
        let (out_dim, in_dim, rows) = (32, 64, 5);
        let w: Vec<f32> = (0..out_dim * in_dim)
            .map(|i| if (i / in_dim + i / 2) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let x: Vec<f32> =
            (0..rows * in_dim).map(|i| if (i / 2) % 2 == 0 { 2.0 } else { -2.0 }).collect();
        let b = vec![0.0; out_dim];
        for kernel in kernels() {
            let q = Int8Matrix::quantise(&w, out_dim, in_dim);
            let got = q.forward(&x, rows, &b, false, kernel);
            assert_eq!(got, q.forward(&x, rows, &b, false, Int8Kernel::Portable), "{kernel:?}");
            for r in 0..rows {
                for o in 0..out_dim {
                    let exact: f32 =
                        (0..in_dim).map(|k| x[r * in_dim + k] * w[o * in_dim + k]).sum();
                    let value = got[r * out_dim + o];
                    assert!((value - exact).abs() < 0.5, "{kernel:?} {r} {o}: {value} vs {exact}");
                }
            }
        }
    }

    #[test]
    fn rounding_and_range() {
        assert_eq!(
            [
                round_to_code(-3.0),
                round_to_code(0.49),
                round_to_code(2.5),
                round_to_code(3.5),
                round_to_code(253.6),
                round_to_code(900.0)
            ],
            [0, 0, 2, 4, 254, 254]
        );
        let values: Vec<f32> = (0..37).map(|i| i as f32 - 10.0).collect();
        assert_eq!(range_with_zero(&values), (-10.0, 26.0));
        assert_eq!(range_with_zero(&[3.0, 5.0]), (0.0, 5.0));
    }

    #[test]
    fn zero_rows_and_zero_weights() {
        let q = Int8Matrix::quantise(&[0.0; 8], 2, 4);
        assert_eq!(
            q.forward(&[1.0, 2.0, 3.0, 4.0], 1, &[0.5, -0.5], false, Int8Kernel::detect()),
            vec![0.5, -0.5]
        );
        assert!(q.forward(&[], 0, &[0.0, 0.0], false, Int8Kernel::detect()).is_empty());
    }
}
