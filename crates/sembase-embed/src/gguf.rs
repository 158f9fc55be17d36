//! The header of a GGUF file (llama.cpp's format): its metadata and the directory of
//! its tensors. One reader serves the model store, which rebuilds `config.json` and
//! `tokenizer.json` from the metadata, and the engine, which maps the tensors where the
//! directory says they lie. Sizes come from the file, so every count and length is
//! bounded before anything is allocated for it.

use std::io::{self, Read};

use serde_json::{json, Map, Value};

/// Longest string, and most values in one array, the reader accepts.
const MAX_STRING: u64 = 1 << 24;
const MAX_ARRAY: u64 = 1 << 24;
/// Most tensors and metadata entries in one file.
const MAX_ENTRIES: u64 = 1 << 20;
/// GGML tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Where tensor data is aligned when `general.alignment` does not say.
const DEFAULT_ALIGNMENT: u64 = 32;

/// A GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    /// Metadata key/values; numbers and strings as JSON values, arrays as arrays.
    pub metadata: Map<String, Value>,
    /// The tensor directory, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Where tensor data starts, counted from the start of the file.
    pub data_offset: u64,
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions as GGUF stores them: innermost (contiguous) first.
    pub dims: Vec<u64>,
    /// The GGML block type's number (0 f32, 1 f16, 2 Q4_0, 3 Q4_1, 8 Q8_0, 12 Q4_K, ...).
    pub type_id: u32,
    /// Offset of the tensor's bytes from [`GgufHeader::data_offset`].
    pub offset: u64,
}

impl GgufHeader {
    /// A metadata string, e.g. `general.architecture`.
    pub fn string(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Counts what it reads, so the end of the header is known without seeking.
struct Reader<R> {
    inner: R,
    position: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.position += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn count(&mut self, what: &str, max: u64) -> io::Result<u64> {
        let n = self.u64()?;
        if n > max {
            return Err(invalid(format!("{what} of {n}, more than the {max} accepted")));
        }
        Ok(n)
    }

    fn string(&mut self) -> io::Result<String> {
        let n = self.count("a string", MAX_STRING)?;
        let mut b = vec![0u8; n as usize];
        self.inner.read_exact(&mut b)?;
        self.position += n;
        String::from_utf8(b).map_err(|e| invalid(format!("a string that is not UTF-8: {e}")))
    }

    /// One value of GGUF type `t`; arrays nest at most four deep.
    fn value(&mut self, t: u32, depth: usize) -> io::Result<Value> {
        Ok(match t {
            0 => json!(self.bytes::<1>()?[0]),
            1 => json!(self.bytes::<1>()?[0] as i8),
            2 => json!(u16::from_le_bytes(self.bytes()?)),
            3 => json!(i16::from_le_bytes(self.bytes()?)),
            4 => json!(self.u32()?),
            5 => json!(i32::from_le_bytes(self.bytes()?)),
            6 => json!(f32::from_le_bytes(self.bytes()?) as f64),
            7 => json!(self.bytes::<1>()?[0] != 0),
            8 => json!(self.string()?),
            9 if depth < 4 => {
                let inner = self.u32()?;
                let n = self.count("an array", MAX_ARRAY)?;
                Value::Array(
                    (0..n).map(|_| self.value(inner, depth + 1)).collect::<io::Result<_>>()?,
                )
            }
            10 => json!(self.u64()?),
            11 => json!(i64::from_le_bytes(self.bytes()?)),
            12 => json!(f64::from_le_bytes(self.bytes()?)),
            other => return Err(invalid(format!("metadata value type {other}"))),
        })
    }

    fn tensor_info(&mut self) -> io::Result<GgufTensorInfo> {
        let name = self.string()?;
        let rank = self.u32()?;
        if rank > MAX_DIMS {
            return Err(invalid(format!("tensor {name} has {rank} dimensions")));
        }
        let dims = (0..rank).map(|_| self.u64()).collect::<io::Result<_>>()?;
        Ok(GgufTensorInfo { name, dims, type_id: self.u32()?, offset: self.u64()? })
    }
}

/// Reads the header from the start of a GGUF file (versions 2 and 3).
pub fn read_header(source: impl Read) -> io::Result<GgufHeader> {
    let mut r = Reader { inner: source, position: 0 };
    if &r.bytes::<4>()? != b"GGUF" {
        return Err(invalid("not a GGUF file"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(invalid(format!("GGUF version {version} (2 and 3 are read)")));
    }
    let tensor_count = r.count("a tensor count", MAX_ENTRIES)?;
    let entry_count = r.count("a metadata count", MAX_ENTRIES)?;
    let mut metadata = Map::new();
    for _ in 0..entry_count {
        let key = r.string()?;
        let t = r.u32()?;
        metadata.insert(key, r.value(t, 0)?);
    }
    let tensors = (0..tensor_count).map(|_| r.tensor_info()).collect::<io::Result<Vec<_>>>()?;
    let alignment = match metadata.get("general.alignment").and_then(Value::as_u64) {
        Some(0) => return Err(invalid("general.alignment is 0")),
        Some(a) => a,
        None => DEFAULT_ALIGNMENT,
    };
    let data_offset = r.position.div_ceil(alignment) * alignment;
    Ok(GgufHeader { metadata, tensors, data_offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, text: &str) {
        out.extend((text.len() as u64).to_le_bytes());
        out.extend(text.as_bytes());
    }

    /// A header with one string, one u32 array and one tensor.
    fn sample() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        string(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        string(&mut b, "llama");
        string(&mut b, "ids");
        b.extend(9u32.to_le_bytes());
        b.extend(4u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(7u32.to_le_bytes());
        b.extend(9u32.to_le_bytes());
        string(&mut b, "token_embd.weight");
        b.extend(2u32.to_le_bytes());
        b.extend(64u64.to_le_bytes());
        b.extend(10u64.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b
    }

    #[test]
    fn reads_metadata_and_the_tensor_directory_and_aligns_the_data() {
        let bytes = sample();
        let header = read_header(bytes.as_slice()).unwrap();
        assert_eq!(header.string("general.architecture"), Some("llama"));
        assert_eq!(header.metadata["ids"], json!([7, 9]));
        let info = &header.tensors[0];
        assert_eq!(
            (info.name.as_str(), info.dims.as_slice(), info.type_id),
            ("token_embd.weight", &[64, 10][..], 8)
        );
        assert_eq!(header.data_offset, (bytes.len() as u64).div_ceil(32) * 32);
    }

    #[test]
    fn damaged_headers_are_errors_not_panics_or_huge_allocations() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert!(read_header(&bytes[..cut]).is_err(), "a header cut at {cut} bytes was read");
        }
        let mut huge = bytes.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_header(huge.as_slice()).unwrap_err().to_string().contains("metadata count"));
        let mut wrong = bytes;
        wrong[0] = b'X';
        assert!(read_header(wrong.as_slice()).is_err());
    }
}
