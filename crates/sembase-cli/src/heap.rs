//! Heap settings for model work.
//!
//! glibc serves allocations above a threshold (at most 32 MiB by default) with fresh
//! `mmap`s and unmaps them on free, so every forward pass over a large batch pays page
//! faults and zeroing for its activations again; measured at about 9% of
//! `sembase embed`'s time on all-MiniLM-L6-v2. Raising the thresholds keeps freed
//! buffers in the heap for the next pass (the peak RSS is unchanged: the same buffers
//! are reused instead of remapped).

/// Largest allocation still served from the heap, and free memory kept before trimming.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_BYTES: libc::c_int = 1 << 30;

/// Applies the settings; call once at start-up, before any model work.
pub fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_BYTES);
    }
}
