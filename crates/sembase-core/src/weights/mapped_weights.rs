//! Weights read in place from memory-mapped safetensors files, for CPU inference.
//! candle's `VarBuilder` copies every tensor it hands out; a table read here instead is
//! paged in by the operating system as texts touch its rows, so a multilingual model's
//! 250k-row word table costs neither a copy at load nor memory for unused rows. A
//! decoder's bf16/f16 matrices are read here too, converted to f32 as each matmul runs.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor, WithDType};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use half::{bf16, f16};
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

    /// The `(rows, cols)` matrix `name`, when it is stored as little-endian `T` (f32,
    /// bf16 or f16) at an address this CPU can read `T` from; `None` otherwise (the
    /// caller then copies it).
    pub fn matrix<T: WithDType>(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Option<MappedMatrix<T>> {
        let view = self.0.get(name).ok()?;
        let stored = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            _ => return None,
        };
        if stored != T::DTYPE || view.shape() != [rows, cols] || cfg!(target_endian = "big") {
            return None;
        }
        // SAFETY: every bit pattern is a valid f32, bf16 and f16; `align_to` only yields
        // whole, aligned elements, and the checks below refuse anything else.
        let (before, values, after) = unsafe { view.data().align_to::<T>() };
        if !before.is_empty() || !after.is_empty() || values.len() != rows * cols {
            return None;
        }
        Some(MappedMatrix { _files: self.clone(), values: values.as_ptr(), rows, cols })
    }

    /// The `(rows, cols)` matrix `name` when it is stored in bf16 or f16 (see [`Self::matrix`]).
    pub fn half_matrix(&self, name: &str, rows: usize, cols: usize) -> Option<MappedHalf> {
        self.matrix::<bf16>(name, rows, cols)
            .map(MappedHalf::Bf16)
            .or_else(|| self.matrix::<f16>(name, rows, cols).map(MappedHalf::F16))
    }
}

impl SimpleBackend for MappedWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        SimpleBackend::get(&*self.0, shape, name, init, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        SimpleBackend::get_unchecked(&*self.0, name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(&*self.0, name)
    }
}

/// A row-major matrix of `T` (f32 unless said) inside the mapped files.
#[derive(Clone)]
pub struct MappedMatrix<T = f32> {
    /// Keeps the mapping (and so `values`) alive.
    _files: MappedWeights,
    values: *const T,
    rows: usize,
    cols: usize,
}

// SAFETY: the mapping is read-only and lives as long as `_files`, so the values can be
// read from any thread.
unsafe impl<T> Send for MappedMatrix<T> {}
unsafe impl<T> Sync for MappedMatrix<T> {}

impl<T> std::fmt::Debug for MappedMatrix<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedMatrix<{}>({}, {})", std::any::type_name::<T>(), self.rows, self.cols)
    }
}

impl<T> MappedMatrix<T> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All values, row after row.
    pub fn values(&self) -> &[T] {
        // SAFETY: `values` points at `rows * cols` aligned `T` in a read-only mapping that
        // `_files` keeps alive for at least as long as `self`.
        unsafe { std::slice::from_raw_parts(self.values, self.rows * self.cols) }
    }
}

/// A mapped matrix in one of the half precisions.
#[derive(Debug, Clone)]
pub enum MappedHalf {
    Bf16(MappedMatrix<bf16>),
    F16(MappedMatrix<f16>),
}

impl MappedHalf {
    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::Bf16(m) => (m.rows(), m.cols()),
            Self::F16(m) => (m.rows(), m.cols()),
        }
    }

    /// The precision it is stored in.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Bf16(_) => DType::BF16,
            Self::F16(_) => DType::F16,
        }
    }

    /// A copy as a CPU tensor in its own precision.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(match self {
            Self::Bf16(m) => Tensor::from_slice(m.values(), (m.rows(), m.cols()), &Device::Cpu)?,
            Self::F16(m) => Tensor::from_slice(m.values(), (m.rows(), m.cols()), &Device::Cpu)?,
        })
    }

    /// Row `row` in f32, appended to `out`.
    pub fn extend_row(&self, row: usize, out: &mut Vec<f32>) {
        match self {
            Self::Bf16(m) => {
                out.extend(m.values()[row * m.cols()..][..m.cols()].iter().map(|v| v.to_f32()))
            }
            Self::F16(m) => {
                out.extend(m.values()[row * m.cols()..][..m.cols()].iter().map(|v| v.to_f32()))
            }
        }
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
            ("brain".to_string(), table.to_dtype(DType::BF16).unwrap()),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        // SAFETY: the file is not changed while mapped.
        let mapped = unsafe { MappedWeights::open(&[path]) }.unwrap();
        let matrix = mapped.matrix::<f32>("table", 4, 3).expect("an f32 matrix is read in place");
        assert_eq!((matrix.rows(), matrix.cols()), (4, 3));
        assert_eq!(
            matrix.values(),
            table.flatten_all().unwrap().to_vec1::<f32>().unwrap().as_slice()
        );
        assert!(mapped.matrix::<f32>("table", 3, 4).is_none(), "wrong shape");
        assert!(mapped.matrix::<f32>("half", 4, 3).is_none(), "f16 is not f32");
        assert!(mapped.matrix::<f32>("missing", 4, 3).is_none());
        let half = mapped.half_matrix("half", 4, 3).expect("an f16 matrix is read in place");
        assert_eq!((half.dtype(), half.dims()), (DType::F16, (4, 3)));
        let back = half.to_tensor().unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), table.to_vec2::<f32>().unwrap());
        let mut row = Vec::new();
        half.extend_row(2, &mut row);
        assert_eq!(row, vec![6.0, 7.0, 8.0]);
        assert!(mapped.half_matrix("table", 4, 3).is_none(), "f32 is not half precision");
        let brain = mapped.half_matrix("brain", 4, 3).expect("a bf16 matrix is read in place");
        assert_eq!(brain.dtype(), DType::BF16);
        assert_eq!(
            brain.to_tensor().unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(),
            table.to_vec2::<f32>().unwrap()
        );
    }
}
