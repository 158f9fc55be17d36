//! Stored vector precision: f32, f16, or int8 with one scale per vector, and a
//! borrowed view of many rows that decodes them to f32 a tile at a time.

use std::fmt;
use std::str::FromStr;

use half::f16;
use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

/// How each vector component is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 4 bytes per component, exact.
    #[default]
    F32,
    /// 2 bytes per component (IEEE half).
    F16,
    /// 1 byte per component, symmetric per-vector scale (max |x| maps to 127).
    Int8,
}

impl Precision {
    /// All precisions, for parsing and help text.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Int8];

    /// The name used on the command line and in `index.json`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        }
    }

    /// Bytes per component.
    pub fn component_bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
            Precision::Int8 => 1,
        }
    }

    /// The one-byte code in segment headers.
    pub(crate) fn code(self) -> u8 {
        match self {
            Precision::F32 => 0,
            Precision::F16 => 1,
            Precision::Int8 => 2,
        }
    }

    /// The precision of a segment header code.
    pub(crate) fn from_code(code: u8) -> Option<Precision> {
        Precision::ALL.into_iter().find(|p| p.code() == code)
    }

    /// Appends the stored bytes of `v` to `values` and returns its scale
    /// (1 for float precisions).
    pub fn encode(self, v: &[f32], values: &mut Vec<u8>) -> f32 {
        match self {
            Precision::F32 => {
                values.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                1.0
            }
            Precision::F16 => {
                values.extend(v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()));
                1.0
            }
            Precision::Int8 => {
                let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                values.extend(
                    v.iter().map(|x| ((x / scale).round().clamp(-127.0, 127.0) as i8) as u8),
                );
                scale
            }
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = IndexError;

    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            IndexError::Invalid(format!("unknown precision {s:?}: use f32, f16 or int8"))
        })
    }
}

/// Many stored vectors of one width, borrowed (usually from a memory map).
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Components and one scale per row.
    Int8 {
        values: &'a [i8],
        scales: &'a [f32],
    },
}

impl<'a> Rows<'a> {
    /// Views raw little-endian bytes as rows of `precision`; `scales` is only
    /// read for int8. Fails when the bytes are misaligned or the wrong length.
    pub fn from_bytes(
        precision: Precision,
        values: &'a [u8],
        scales: &'a [u8],
        rows: usize,
        dim: usize,
    ) -> Option<Self> {
        let view = match precision {
            Precision::F32 => Rows::F32(bytemuck::try_cast_slice(values).ok()?),
            Precision::F16 => Rows::F16(half::slice::HalfBitsSliceExt::reinterpret_cast(
                bytemuck::try_cast_slice::<u8, u16>(values).ok()?,
            )),
            Precision::Int8 => Rows::Int8 {
                values: bytemuck::try_cast_slice(values).ok()?,
                scales: bytemuck::try_cast_slice(scales).ok()?,
            },
        };
        let (components, scale_count) = match view {
            Rows::F32(v) => (v.len(), rows),
            Rows::F16(v) => (v.len(), rows),
            Rows::Int8 { values, scales } => (values.len(), scales.len()),
        };
        (components == rows * dim && scale_count == rows).then_some(view)
    }

    /// Rows `start..start + count` as f32, decoded into `buf` unless stored as f32.
    pub fn tile<'b>(
        &'b self,
        start: usize,
        count: usize,
        dim: usize,
        buf: &'b mut Vec<f32>,
    ) -> &'b [f32] {
        let range = start * dim..(start + count) * dim;
        match *self {
            Rows::F32(v) => &v[range],
            Rows::F16(v) => {
                buf.clear();
                buf.resize(range.len(), 0.0);
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&v[range], buf);
                buf
            }
            Rows::Int8 { values, scales } => {
                buf.clear();
                for (row, chunk) in values[range].chunks_exact(dim).enumerate() {
                    let scale = scales[start + row];
                    buf.extend(chunk.iter().map(|&x| x as f32 * scale));
                }
                buf
            }
        }
    }

    /// Row `i` as f32 (decoded into `buf` unless stored as f32).
    pub fn row<'b>(&'b self, i: usize, dim: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        self.tile(i, 1, dim, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_precision_round_trips_close_to_the_input() {
        let v: Vec<f32> = (0..16).map(|i| ((i as f32) * 0.37).sin() * 0.5).collect();
        for (precision, tolerance) in
            [(Precision::F32, 0.0), (Precision::F16, 1e-3), (Precision::Int8, 0.5 / 127.0)]
        {
            let mut bytes = Vec::new();
            let scale = precision.encode(&v, &mut bytes);
            assert_eq!(bytes.len(), 16 * precision.component_bytes());
            let scales = scale.to_le_bytes();
            // Copy into f32-aligned storage, as a memory map would be.
            let mut aligned = vec![0f32; bytes.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<f32, u8>(&mut aligned)[..bytes.len()]
                .copy_from_slice(&bytes);
            let raw = &bytemuck::cast_slice::<f32, u8>(&aligned)[..bytes.len()];
            let scale_store = [f32::from_le_bytes(scales)];
            let rows = Rows::from_bytes(precision, raw, bytemuck::cast_slice(&scale_store), 1, 16)
                .unwrap();
            let mut buf = Vec::new();
            let back = rows.row(0, 16, &mut buf);
            for (a, b) in v.iter().zip(back) {
                assert!((a - b).abs() <= tolerance, "{precision}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let data = [0f32; 10];
        assert!(Rows::from_bytes(Precision::F32, bytemuck::cast_slice(&data), &[], 3, 4).is_none());
    }

    #[test]
    fn precision_names_parse() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("f64".parse::<Precision>().is_err());
    }
}
