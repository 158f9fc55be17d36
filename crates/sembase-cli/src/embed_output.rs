//! Writing embeddings: JSONL lines in input order, or a `.npy` float32 matrix.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::embed_input::InputText;

/// How the output is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// `{"index": i, "id": ..., "embedding": [...]}` per line.
    Jsonl,
    /// A NumPy `.npy` file of shape (inputs, dimensions), float32 little-endian.
    Npy,
}

impl OutputFormat {
    /// `.npy` files get NumPy's format, everything else JSONL.
    pub fn guess(path: Option<&Path>) -> Self {
        match path.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
            Some("npy") => Self::Npy,
            _ => Self::Jsonl,
        }
    }
}

#[derive(Serialize)]
struct JsonlRow<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    embedding: &'a [f32],
}

/// Writes one JSONL line per vector; `first_index` is the position of `inputs[0]` in the whole input.
pub fn write_jsonl(
    out: &mut dyn Write,
    first_index: usize,
    inputs: &[InputText],
    vectors: &[Vec<f32>],
) -> Result<()> {
    for (offset, (input, embedding)) in inputs.iter().zip(vectors).enumerate() {
        let row = JsonlRow { index: first_index + offset, id: input.id.as_deref(), embedding };
        serde_json::to_writer(&mut *out, &row)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes the `.npy` header (format 1.0) for a `rows x cols` float32 matrix.
pub fn write_npy_header(out: &mut dyn Write, rows: usize, cols: usize) -> Result<()> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header_len = (dict.len() + padding + 1) as u16;
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&header_len.to_le_bytes())?;
    out.write_all(dict.as_bytes())?;
    out.write_all(&vec![b' '; padding])?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Appends rows of a `.npy` matrix.
pub fn write_npy_rows(out: &mut dyn Write, vectors: &[Vec<f32>]) -> Result<()> {
    for v in vectors {
        for x in v {
            out.write_all(&x.to_le_bytes())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_well_formed() {
        let mut buf = Vec::new();
        write_npy_header(&mut buf, 3, 384).unwrap();
        assert_eq!(buf.len() % 64, 0);
        assert_eq!(&buf[..6], b"\x93NUMPY");
        let text = String::from_utf8_lossy(&buf[10..]);
        assert!(text.contains("'shape': (3, 384)"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn jsonl_rows_carry_index_and_optional_id() {
        let inputs = vec![
            InputText { id: Some("a".into()), text: "x".into() },
            InputText { id: None, text: "y".into() },
        ];
        let mut buf = Vec::new();
        write_jsonl(&mut buf, 10, &inputs, &[vec![0.5], vec![-1.0]]).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text, "{\"index\":10,\"id\":\"a\",\"embedding\":[0.5]}\n{\"index\":11,\"embedding\":[-1.0]}\n");
    }
}
