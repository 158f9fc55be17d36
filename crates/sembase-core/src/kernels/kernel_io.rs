//! Plumbing shared by the CPU kernels (candle custom ops): reading an f32 input where
//! it lies, a shared output pointer for parallel tasks, and strided GEMMs.

use candle_core::{CpuStorage, Layout, Result, Storage, StorageRef, Tensor};
use rayon::prelude::*;

/// An op's contiguous f32 input as a slice of exactly its layout's elements; `op` and
/// `what` name the op and the input in the error.
pub(crate) fn contiguous_f32<'s>(
    storage: &'s CpuStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'s [f32]> {
    if !layout.is_contiguous() {
        candle_core::bail!("{op}: {what} must be contiguous");
    }
    Ok(&storage.as_slice::<f32>()?[layout.start_offset()..][..layout.shape().elem_count()])
}

/// A pointer into an output buffer that parallel tasks share; each task writes a region
/// no other task touches.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: tasks only write disjoint regions (each user states which), so sharing the
// pointer across threads cannot race.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// A tensor's f32 elements on the CPU in row-major order, for the backward passes of
/// the training kernels: read where they lie when contiguous (the storage stays
/// read-locked while this lives), copied otherwise.
pub(crate) enum HostF32<'a> {
    Borrowed { _storage: StorageRef<'a>, data: *const f32, len: usize },
    Owned(Vec<f32>),
}

impl<'a> HostF32<'a> {
    /// Reads `t`, which must hold f32 on the CPU.
    pub(crate) fn of(t: &'a Tensor) -> Result<Self> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!(
                "training kernels read CPU tensors, not {:?}",
                t.device().location()
            );
        };
        let values = cpu.as_slice::<f32>()?;
        match layout.contiguous_offsets() {
            Some((start, end)) => {
                let (data, len) = (values[start..end].as_ptr(), end - start);
                Ok(Self::Borrowed { _storage: storage, data, len })
            }
            None => {
                drop(storage);
                Ok(Self::Owned(t.flatten_all()?.to_vec1::<f32>()?))
            }
        }
    }
}

// SAFETY: a `HostF32` only gives out shared reads of values that stay unchanged while
// it lives (see `deref`), so reading it from several threads cannot race.
unsafe impl Sync for HostF32<'_> {}

impl std::ops::Deref for HostF32<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            // SAFETY: `data` and `len` were taken from the storage that `_storage` keeps
            // read-locked (so alive and unchanged) for as long as `self` lives.
            Self::Borrowed { data, len, .. } => unsafe { std::slice::from_raw_parts(*data, *len) },
            Self::Owned(values) => values,
        }
    }
}

/// A read-only strided matrix for [`matmul`]: its start and the steps between
/// columns and between rows.
#[derive(Clone, Copy)]
pub(crate) struct View {
    start: *const f32,
    column_step: isize,
    row_step: isize,
}

// SAFETY: a `View` only reads, and its users promise the matrix outlives it and does
// not change meanwhile (see `matmul`), so threads may share it.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// Row-major: rows `row_step` apart, columns adjacent.
    pub(crate) fn rows(data: &[f32], row_step: usize) -> Self {
        Self { start: data.as_ptr(), column_step: 1, row_step: row_step as isize }
    }

    /// The columns from `first` on.
    pub(crate) fn columns_from(self, first: usize) -> Self {
        Self { start: self.start.wrapping_offset(first as isize * self.column_step), ..self }
    }

    /// The transpose of a row-major matrix whose rows are `row_step` apart.
    pub(crate) fn columns(data: &[f32], row_step: usize) -> Self {
        Self { start: data.as_ptr(), column_step: row_step as isize, row_step: 1 }
    }
}

/// `dst` (m x n, rows `dst_row_step` apart) = `scale` * a (m x k) . b (k x n), added to
/// what `dst` holds when `accumulate`, on the threads `parallelism` says.
///
/// # Safety
/// `a`, `b` and `dst` must cover the m x k, k x n and m x n elements their steps reach.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row_step: usize,
    accumulate: bool,
    a: View,
    b: View,
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_row_step as isize,
        accumulate,
        a.start,
        a.column_step,
        a.row_step,
        b.start,
        b.column_step,
        b.row_step,
        1.0,
        scale,
        false,
        false,
        false,
        parallelism,
    );
}

/// Every thread candle may use, for one large GEMM.
pub(crate) fn every_thread() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    }
}

/// `a` (m x k) . `b` (k x n) into a new row-major m x n vector.
pub(crate) fn product(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    parallelism: gemm::Parallelism,
) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: with k > 0 and no accumulation the GEMM writes all m x n elements of
    // `out` (without reading them) before the length is set; the caller's views
    // cover their matrices (every caller builds them from slices of those sizes).
    unsafe {
        matmul(m, n, k, out.as_mut_ptr(), n, false, a, b, 1.0, parallelism);
        out.set_len(m * n);
    }
    out
}

/// Below this many multiply-adds, [`affine`] splits its output columns between the
/// threads itself: gemm's own threading hands work off too often for a few rows.
const SPLIT_COLUMNS_BELOW_MACS: usize = 1 << 25;

/// Column blocks of a split [`affine`] start at multiples of this (whole SIMD registers).
const COLUMN_ALIGN: usize = 16;

/// `x` (rows x k, row-major) . `weight` (k x bias.len()) + `bias` on every row, into a new
/// row-major vector, on every thread.
pub(crate) fn affine(x: &[f32], rows: usize, k: usize, weight: View, bias: &[f32]) -> Vec<f32> {
    let n = bias.len();
    assert_eq!(x.len(), rows * k, "affine: x is not {rows} x {k}");
    // Every row starts as the bias (written once, no zeroing first).
    let mut out = repeated_rows(bias, rows);
    let threads = candle_core::utils::get_num_threads();
    if rows * n * k < SPLIT_COLUMNS_BELOW_MACS && threads > 1 && n >= threads * COLUMN_ALIGN {
        // A few rows (one short text): one single-threaded GEMM per thread over its own
        // block of columns; gemm's own split hands off far more often than that.
        let block = n.div_ceil(threads).next_multiple_of(COLUMN_ALIGN);
        let shared = SharedOut(out.as_mut_ptr());
        (0..n.div_ceil(block)).into_par_iter().for_each(|task| {
            let out = shared;
            let first = task * block;
            let width = block.min(n - first);
            // SAFETY: as below; each task writes only columns first..first + width of
            // every row, which no other task touches.
            unsafe {
                matmul(
                    rows,
                    width,
                    k,
                    out.0.add(first),
                    n,
                    true,
                    View::rows(x, k),
                    weight.columns_from(first),
                    1.0,
                    gemm::Parallelism::None,
                );
            }
        });
        return out;
    }
    // SAFETY: out (rows x n) and x (rows x k) are row-major slices of these sizes; the
    // caller builds `weight` from a slice holding k x n elements.
    unsafe {
        matmul(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            n,
            true,
            View::rows(x, k),
            weight,
            1.0,
            every_thread(),
        );
    }
    out
}

/// Adds `from` element-wise into `into` (the merge step of parallel partial sums).
pub(crate) fn add_into(into: &mut [f32], from: &[f32]) {
    into.iter_mut().zip(from).for_each(|(a, b)| *a += b);
}

/// `row` repeated `rows` times, written once (no zeroing first).
fn repeated_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(rows * row.len());
    if !row.is_empty() {
        out.spare_capacity_mut().par_chunks_mut(row.len()).for_each(|slots| {
            slots.iter_mut().zip(row).for_each(|(slot, &v)| {
                slot.write(v);
            });
        });
    }
    // SAFETY: the loop above wrote all rows * row.len() values.
    unsafe { out.set_len(rows * row.len()) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x W + b` by plain loops, in f64.
    fn plain_affine(x: &[f32], rows: usize, k: usize, w: &[f32], bias: &[f32]) -> Vec<f32> {
        let n = bias.len();
        (0..rows * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                (0..k).fold(f64::from(bias[c]), |sum, j| {
                    sum + f64::from(x[r * k + j]) * f64::from(w[j * n + c])
                }) as f32
            })
            .collect()
    }

    #[test]
    fn affine_matches_plain_loops_with_and_without_splitting_columns() {
        // Below the split size (one ragged column block) and above it (gemm's own threads).
        for (rows, k, n) in [(3, 5, 40), (12, 384, 1152), (300, 64, 2048)] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 16.0).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 / 100.0).collect();
            let ours = affine(&x, rows, k, View::rows(&w, n), &bias);
            let expected = plain_affine(&x, rows, k, &w, &bias);
            let worst = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-3, "{rows}x{k}x{n}: largest difference {worst}");
        }
        const {
            assert!(
                3 * 5 * 40 < SPLIT_COLUMNS_BELOW_MACS && 300 * 64 * 2048 > SPLIT_COLUMNS_BELOW_MACS
            )
        };
    }
}
