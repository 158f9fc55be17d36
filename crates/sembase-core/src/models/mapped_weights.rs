//! Weights read in place from memory-mapped safetensors files, for CPU inference.
//! candle's `VarBuilder` copies every tensor it hands out; a table read here instead is
//! paged in by the operating system as texts touch its rows, so a multilingual model's
//! 250k-row word table costs neither a copy at load nor memory for unused rows.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use safetensors::Dtype;

use crate::error::Result;

/// A model's safetensors files, mapped read-only.
#[derive(Clone)]
pub struct MappedWeights(Arc<MmapedSafetensors>);

impl std::fmt::Debug for MappedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MappedWeights")
    }
}

impl MappedWeights {
    /// Maps `files` (one file, or the shards of a sharded checkpoint).
    ///
    /// # Safety
    /// The files must not change while any matrix read from them is alive.
    pub unsafe fn open(files: &[PathBuf]) -> Result<Self> {
        // SAFETY: passed on to the caller.
        Ok(Self(Arc::new(unsafe { MmapedSafetensors::multi(files)? })))
    }

    /// A `VarBuilder` that copies tensors out of this same mapping (for the weights that
    /// are not read in place), converted to `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The `(rows, cols)` matrix `name`, when it is stored as little-endian f32 at an
    /// address this CPU can read f32 from; `None` otherwise (the caller then copies it).
    pub fn f32_matrix(&self, name: &str, rows: usize, cols: usize) -> Option<MappedMatrix> {
        let view = self.0.get(name).ok()?;
        if view.dtype() != Dtype::F32 || view.shape() != [rows, cols] || cfg!(target_endian = "big") {
            return None;
        }
        // SAFETY: every bit pattern is a valid f32; `align_to` only yields whole,
        // aligned elements, and the checks below refuse anything else.
        let (before, values, after) = unsafe { view.data().align_to::<f32>() };
        if !before.is_empty() || !after.is_empty() || values.len() != rows * cols {
            return None;
        }
        Some(MappedMatrix { _files: self.clone(), values: values.as_ptr(), rows, cols })
    }
}

impl SimpleBackend for MappedWeights {
    fn get(&self, shape: Shape, name: &str, init: candle_nn::Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        SimpleBackend::get(&*self.0, shape, name, init, dtype, device)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        SimpleBackend::get_unchecked(&*self.0, name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(&*self.0, name)
    }
}

/// A row-major f32 matrix inside the mapped files.
#[derive(Clone)]
pub struct MappedMatrix {
    /// Keeps the mapping (and so `values`) alive.
    _files: MappedWeights,
    values: *const f32,
    rows: usize,
    cols: usize,
}

// SAFETY: the mapping is read-only and lives as long as `_files`, so the values can be
// read from any thread.
unsafe impl Send for MappedMatrix {}
unsafe impl Sync for MappedMatrix {}

impl std::fmt::Debug for MappedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedMatrix({}, {})", self.rows, self.cols)
    }
}

impl MappedMatrix {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All values, row after row.
    pub fn values(&self) -> &[f32] {
        // SAFETY: `values` points at `rows * cols` aligned f32 in a read-only mapping that
        // `_files` keeps alive for at least as long as `self`.
        unsafe { std::slice::from_raw_parts(self.values, self.rows * self.cols) }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::*;

    #[test]
    fn reads_f32_matrices_in_place_and_declines_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let table = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((4, 3)).unwrap();
        let tensors = HashMap::from([
            ("table".to_string(), table.clone()),
            ("half".to_string(), table.to_dtype(DType::F16).unwrap()),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        // SAFETY: the file is not changed while mapped.
        let mapped = unsafe { MappedWeights::open(&[path]) }.unwrap();
        let matrix = mapped.f32_matrix("table", 4, 3).expect("an f32 matrix is read in place");
        assert_eq!((matrix.rows(), matrix.cols()), (4, 3));
        assert_eq!(matrix.values(), table.flatten_all().unwrap().to_vec1::<f32>().unwrap().as_slice());
        assert!(mapped.f32_matrix("table", 3, 4).is_none(), "wrong shape");
        assert!(mapped.f32_matrix("half", 4, 3).is_none(), "f16 is copied and converted instead");
        assert!(mapped.f32_matrix("missing", 4, 3).is_none());
    }
}
