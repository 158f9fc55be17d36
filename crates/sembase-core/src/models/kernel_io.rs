//! Plumbing shared by the CPU inference kernels (candle custom ops): reading an f32
//! input where it lies, and a shared output pointer for parallel tasks.

use candle_core::{CpuStorage, Layout, Result};

/// An op's contiguous f32 input as a slice of exactly its layout's elements; `op` and
/// `what` name the op and the input in the error.
pub(super) fn contiguous_f32<'s>(storage: &'s CpuStorage, layout: &Layout, op: &str, what: &str) -> Result<&'s [f32]> {
    if !layout.is_contiguous() {
        candle_core::bail!("{op}: {what} must be contiguous");
    }
    Ok(&storage.as_slice::<f32>()?[layout.start_offset()..][..layout.shape().elem_count()])
}

/// A pointer into an output buffer that parallel tasks share; each task writes a region
/// no other task touches.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(pub(super) *mut f32);
// SAFETY: tasks only write disjoint regions (each user states which), so sharing the
// pointer across threads cannot race.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
