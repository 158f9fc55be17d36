//! Reading a 2-D float32 NumPy `.npy` file (what `sembase embed --output X.npy` writes).

use std::path::Path;

use crate::error::{IndexError, Result};

/// The rows of a little-endian float32, C-order, 2-D `.npy` file.
pub fn read_npy_f32(path: &Path) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| IndexError::io(path, e))?;
    let bad = |message: &str| IndexError::Invalid(format!("{}: {message}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = bytes.get(start..start + header_len).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    if !compact.contains("'descr':'<f4'") {
        return Err(bad("only little-endian float32 ('<f4') is supported"));
    }
    if !compact.contains("'fortran_order':False") {
        return Err(bad("only C order is supported"));
    }
    let shape = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("bad shape"))?;
    let [rows, cols] = dims[..] else { return Err(bad("expected a 2-D array")) };
    let data = &bytes[start + header_len..];
    if Some(data.len()) != rows.checked_mul(cols).and_then(|n| n.checked_mul(4)) {
        return Err(bad("data length does not match the shape"));
    }
    let values: Vec<f32> =
        data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    Ok(values.chunks(cols.max(1)).take(rows).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_numpy_written_layout() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut padded = header.to_string();
        while !(10 + padded.len() + 1).is_multiple_of(64) {
            padded.push(' ');
        }
        padded.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((padded.len() as u16).to_le_bytes());
        bytes.extend(padded.as_bytes());
        for x in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            bytes.extend(x.to_le_bytes());
        }
        let path = std::env::temp_dir().join(format!("sembase-npy-{}.npy", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_npy_f32(&path).unwrap(), vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read_npy_f32(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
