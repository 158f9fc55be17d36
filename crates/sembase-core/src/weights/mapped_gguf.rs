//! GGUF files mapped read-only. A tensor's bytes are read where they lie in the file
//! instead of all being copied at load, so a quantised model costs the pages its
//! matmuls and word-table lookups touch, and nothing is held twice while loading.

use std::fs::File;
use std::io::Cursor;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use memmap2::Mmap;

use crate::error::{Error, Result};

/// Read-only bytes shared by clones: a range of a mapped file, or an owned buffer.
#[derive(Clone)]
pub struct SharedBytes {
    storage: Storage,
    start: usize,
    len: usize,
}

#[derive(Clone)]
enum Storage {
    Mapped(Arc<Mmap>),
    Owned(Arc<[u8]>),
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let all: &[u8] = match &self.storage {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        };
        &all[self.start..self.start + self.len]
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Self { storage: Storage::Owned(bytes.into()), start: 0, len }
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.storage {
            Storage::Mapped(_) => "mapped",
            Storage::Owned(_) => "owned",
        };
        write!(f, "SharedBytes({} {kind} bytes)", self.len)
    }
}

/// One tensor of a GGUF file: its block type, its dimensions (outermost first, as
/// candle orders them) and its bytes in the file.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub bytes: SharedBytes,
}

impl GgufTensor {
    /// A copy as a candle `QTensor` on `device` (for candle's quantised matmul or dequantising).
    pub fn to_qtensor(&self, device: &Device) -> Result<QTensor> {
        Ok(qtensor_from_ggml(self.dtype, &self.bytes, self.dims.clone(), device)?)
    }
}

/// A GGUF file mapped read-only, with its parsed header.
#[derive(Clone)]
pub struct MappedGguf {
    map: Arc<Mmap>,
    content: Arc<gguf_file::Content>,
    path: PathBuf,
}

impl MappedGguf {
    /// Maps `path` and parses its header.
    ///
    /// # Safety
    /// The file must not change while any tensor read from it is alive.
    pub unsafe fn open(path: &Path) -> Result<Self> {
        let file =
            File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        // SAFETY: passed on to the caller.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let content =
            gguf_file::Content::read(&mut Cursor::new(&map[..])).map_err(|e| e.with_path(path))?;
        Ok(Self { map: Arc::new(map), content: Arc::new(content), path: path.to_path_buf() })
    }

    /// The file's `general.architecture` (e.g. `llama`).
    pub fn architecture(&self) -> Result<String> {
        match self.content.metadata.get("general.architecture") {
            Some(value) => Ok(value.to_string()?.clone()),
            None => {
                Err(Error::Unsupported(format!("{}: no general.architecture", self.path.display())))
            }
        }
    }

    /// Whether the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The tensor `name`, read in place; `None` when the file has no such tensor, an
    /// error when its bytes would run past the end of the file.
    pub fn tensor(&self, name: &str) -> Result<Option<GgufTensor>> {
        let Some(info) = self.content.tensor_infos.get(name) else { return Ok(None) };
        let elements = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if !elements.is_multiple_of(block) {
            return Err(self
                .damaged(name, format!("{elements} values do not fill whole blocks of {block}")));
        }
        let len = elements / block * info.ggml_dtype.type_size();
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok());
        let Some(start) =
            start.filter(|s| s.checked_add(len).is_some_and(|end| end <= self.map.len()))
        else {
            return Err(self.damaged(
                name,
                format!("its {len} bytes run past the end of the {}-byte file", self.map.len()),
            ));
        };
        Ok(Some(GgufTensor {
            dtype: info.ggml_dtype,
            dims: info.shape.dims().to_vec(),
            bytes: SharedBytes { storage: Storage::Mapped(self.map.clone()), start, len },
        }))
    }

    fn damaged(&self, name: &str, why: String) -> Error {
        Error::Unsupported(format!("{}: tensor {name}: {why}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::*;

    fn write_gguf(path: &Path, tensors: &[(&str, QTensor)]) {
        let mut file = File::create(path).unwrap();
        let metadata = [("general.architecture", &gguf_file::Value::String("llama".into()))];
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        gguf_file::write(&mut file, &metadata, &tensors).unwrap();
    }

    #[test]
    fn reads_tensors_in_place_with_their_block_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let values = Tensor::arange(0f32, 128.0, &Device::Cpu).unwrap().reshape((2, 64)).unwrap();
        let q8 = QTensor::quantize(&values, GgmlDType::Q8_0).unwrap();
        let plain = QTensor::quantize(&values, GgmlDType::F32).unwrap();
        write_gguf(&path, &[("q", q8), ("f", plain)]);
        // SAFETY: the file is not changed while mapped.
        let gguf = unsafe { MappedGguf::open(&path) }.unwrap();
        assert_eq!(gguf.architecture().unwrap(), "llama");
        let q = gguf.tensor("q").unwrap().unwrap();
        assert_eq!(
            (q.dtype, q.dims.as_slice(), q.bytes.len()),
            (GgmlDType::Q8_0, &[2, 64][..], 4 * 34)
        );
        let back = q.to_qtensor(&Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
        let err =
            (back - &values).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 0.5, "Q8_0 round trip off by {err}");
        let f = gguf.tensor("f").unwrap().unwrap();
        let floats: Vec<f32> =
            f.bytes.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(floats, values.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(gguf.contains("q") && !gguf.contains("missing"));
        assert!(gguf.tensor("missing").unwrap().is_none());
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let values = Tensor::ones((4, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        write_gguf(&path, &[("w", QTensor::quantize(&values, GgmlDType::F32).unwrap())]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        // SAFETY: the file is not changed while mapped.
        let gguf = unsafe { MappedGguf::open(&path) }.unwrap();
        let err = gguf.tensor("w").unwrap_err().to_string();
        assert!(err.contains("run past the end"), "{err}");
    }
}
