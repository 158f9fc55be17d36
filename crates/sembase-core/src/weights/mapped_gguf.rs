//! GGUF files mapped read-only. A tensor's bytes are read where they lie in the file
//! instead of all being copied at load, so a quantised model costs the pages its
//! matmuls and word-table lookups touch, and nothing is held twice while loading.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use memmap2::Mmap;
use sembase_embed::gguf::{read_header, GgufHeader, GgufTensorInfo};

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

/// A file as it is now: its path and what changes when it is replaced or rewritten.
type FileIdentity = (PathBuf, u64, Option<std::time::SystemTime>);

/// The GGUF mappings alive in this process: a model loaded from a file that another
/// model's tensors still map (several LoRA adapters over one base) reads that mapping,
/// so the base is mapped once; a file changed since is mapped anew.
fn open_mappings() -> &'static Mutex<HashMap<FileIdentity, Weak<Mmap>>> {
    static MAPPINGS: OnceLock<Mutex<HashMap<FileIdentity, Weak<Mmap>>>> = OnceLock::new();
    MAPPINGS.get_or_init(Default::default)
}

/// `file` (at `path`) mapped read-only: the live mapping of the same file if there is one.
///
/// # Safety
/// The file must not change while any tensor read from it is alive.
unsafe fn shared_map(file: &File, path: &Path) -> Result<Arc<Mmap>> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let metadata = file.metadata().map_err(io)?;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let identity = (canonical, metadata.len(), metadata.modified().ok());
    let mut mappings = open_mappings().lock().unwrap_or_else(|e| e.into_inner());
    mappings.retain(|_, map| map.strong_count() > 0);
    if let Some(map) = mappings.get(&identity).and_then(Weak::upgrade) {
        return Ok(map);
    }
    // SAFETY: passed on to the caller.
    let map = Arc::new(unsafe { Mmap::map(file) }.map_err(io)?);
    mappings.insert(identity, Arc::downgrade(&map));
    Ok(map)
}

/// A GGUF file mapped read-only, with its parsed header.
#[derive(Clone)]
pub struct MappedGguf {
    map: Arc<Mmap>,
    header: Arc<GgufHeader>,
    /// Index of each tensor in the header's directory, by name.
    by_name: Arc<HashMap<String, usize>>,
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
        let map = unsafe { shared_map(&file, path) }?;
        let header = read_header(&map[..]).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("GGUF header: {e}"),
        })?;
        let by_name = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Self {
            map,
            header: Arc::new(header),
            by_name: Arc::new(by_name),
            path: path.to_path_buf(),
        })
    }

    /// The file's `general.architecture` (e.g. `llama`).
    pub fn architecture(&self) -> Result<String> {
        match self.header.string("general.architecture") {
            Some(value) => Ok(value.to_string()),
            None => {
                Err(Error::Unsupported(format!("{}: no general.architecture", self.path.display())))
            }
        }
    }

    /// Whether the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The tensor `name`, read in place; `None` when the file has no such tensor, an
    /// error when its bytes would run past the end of the file.
    pub fn tensor(&self, name: &str) -> Result<Option<GgufTensor>> {
        let Some(&index) = self.by_name.get(name) else { return Ok(None) };
        let info = &self.header.tensors[index];
        let dtype = block_type(info).map_err(|why| self.damaged(name, why))?;
        // GGUF lists dimensions innermost first; candle, outermost first.
        let dims: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let Some(elements) = elements else {
            return Err(self.damaged(name, format!("dimensions {:?} overflow", info.dims)));
        };
        let block = dtype.block_size();
        if !elements.is_multiple_of(block) {
            return Err(self
                .damaged(name, format!("{elements} values do not fill whole blocks of {block}")));
        }
        let len = elements / block * dtype.type_size();
        let start =
            self.header.data_offset.checked_add(info.offset).and_then(|s| usize::try_from(s).ok());
        let Some(start) =
            start.filter(|s| s.checked_add(len).is_some_and(|end| end <= self.map.len()))
        else {
            return Err(self.damaged(
                name,
                format!("its {len} bytes run past the end of the {}-byte file", self.map.len()),
            ));
        };
        Ok(Some(GgufTensor {
            dtype,
            dims,
            bytes: SharedBytes { storage: Storage::Mapped(self.map.clone()), start, len },
        }))
    }

    fn damaged(&self, name: &str, why: String) -> Error {
        Error::Unsupported(format!("{}: tensor {name}: {why}", self.path.display()))
    }
}

/// The block type a tensor's GGML type number names (the numbers of ggml.h).
fn block_type(info: &GgufTensorInfo) -> std::result::Result<GgmlDType, String> {
    Ok(match info.type_id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        other => return Err(format!("GGML type {other} is not supported")),
    })
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::gguf_file;
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
