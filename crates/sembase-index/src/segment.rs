//! Segment files: one committed write of a file-backed index, immutable once
//! written and read through a memory map.
//!
//! Layout (little-endian; sections start at 64-byte boundaries):
//! - header (128 bytes): `SBSEG001`, precision u8, 3 zero bytes, width u32,
//!   rows u64, deletes u64, then the offsets of the values, scales, slots,
//!   record-offset, records and deletes sections and the file length (u64 each);
//! - values: rows x width components in the precision;
//! - scales: one f32 per row (int8 only, else empty);
//! - slots: one u64 per row (the document version's number, ascending);
//! - record offsets: one u64 per row, the file offset of its record;
//! - records: per row id length, text length, metadata length (u32 each), then
//!   the id, text and metadata JSON bytes;
//! - deletes: per deleted id its length (u32) and bytes.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{IndexError, Result};
use crate::store::Metadata;
use crate::vectors::{Precision, Rows};
use sembase_embed::durable;

const MAGIC: &[u8; 8] = b"SBSEG001";
const HEADER_LEN: u64 = 128;
const ALIGN: u64 = 64;
/// Bytes of a record's three length fields.
const RECORD_HEAD: u64 = 12;

/// One row to write.
#[derive(Debug, Clone, Copy)]
pub struct RowIn<'a> {
    pub slot: u64,
    pub id: &'a str,
    pub text: &'a str,
    /// Metadata as JSON text (empty for none).
    pub metadata: &'a [u8],
    /// The vector's stored bytes in the segment's precision.
    pub values: &'a [u8],
    /// Its int8 scale (ignored for float precisions).
    pub scale: f32,
}

/// Where each section starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    precision: Precision,
    dim: usize,
    rows: u64,
    deletes: u64,
    values: u64,
    scales: u64,
    slots: u64,
    offsets: u64,
    records: u64,
    deletes_at: u64,
    file_len: u64,
}

fn align(at: u64) -> u64 {
    at.div_ceil(ALIGN) * ALIGN
}

impl Layout {
    fn plan(precision: Precision, dim: usize, rows: &[RowIn], deletes: &[&str]) -> Layout {
        let n = rows.len() as u64;
        let values = HEADER_LEN;
        let scales = align(values + n * (dim * precision.component_bytes()) as u64);
        let scale_bytes = if precision == Precision::Int8 { n * 4 } else { 0 };
        let slots = align(scales + scale_bytes);
        let offsets = align(slots + n * 8);
        let records = align(offsets + n * 8);
        let record_bytes: u64 = rows
            .iter()
            .map(|r| RECORD_HEAD + (r.id.len() + r.text.len() + r.metadata.len()) as u64)
            .sum();
        let deletes_at = records + record_bytes;
        let file_len = deletes_at + deletes.iter().map(|d| 4 + d.len() as u64).sum::<u64>();
        Layout {
            precision,
            dim,
            rows: n,
            deletes: deletes.len() as u64,
            values,
            scales,
            slots,
            offsets,
            records,
            deletes_at,
            file_len,
        }
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&[self.precision.code(), 0, 0, 0]);
        h.extend_from_slice(&(self.dim as u32).to_le_bytes());
        for v in [
            self.rows,
            self.deletes,
            self.values,
            self.scales,
            self.slots,
            self.offsets,
            self.records,
            self.deletes_at,
            self.file_len,
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.resize(HEADER_LEN as usize, 0);
        h
    }

    fn parse(bytes: &[u8]) -> Option<Layout> {
        if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let layout = Layout {
            precision: Precision::from_code(bytes[8])?,
            dim: u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize,
            rows: u64_at(16),
            deletes: u64_at(24),
            values: u64_at(32),
            scales: u64_at(40),
            slots: u64_at(48),
            offsets: u64_at(56),
            records: u64_at(64),
            deletes_at: u64_at(72),
            file_len: u64_at(80),
        };
        // The sections must be where a writer of this layout puts them (checked
        // arithmetic: a damaged header must not overflow).
        let n = layout.rows;
        let value_len = n.checked_mul((layout.dim * layout.precision.component_bytes()) as u64)?;
        let scale_len = if layout.precision == Precision::Int8 { n.checked_mul(4)? } else { 0 };
        let table_len = n.checked_mul(8)?;
        let after = |start: u64, len: u64| {
            start.checked_add(len).filter(|&e| e <= layout.file_len).map(align)
        };
        let ok = layout.values == HEADER_LEN
            && Some(layout.scales) == after(layout.values, value_len)
            && Some(layout.slots) == after(layout.scales, scale_len)
            && Some(layout.offsets) == after(layout.slots, table_len)
            && Some(layout.records) == after(layout.offsets, table_len)
            && layout.records <= layout.deletes_at
            && layout.deletes_at <= layout.file_len
            && layout.file_len == bytes.len() as u64;
        ok.then_some(layout)
    }
}

/// Writes a segment durably (temp file, fsync, rename, directory fsync).
pub fn write_segment(
    path: &Path,
    precision: Precision,
    dim: usize,
    rows: &[RowIn],
    deletes: &[&str],
) -> Result<()> {
    let row_bytes = dim * precision.component_bytes();
    if let Some(bad) = rows.iter().find(|r| r.values.len() != row_bytes) {
        return Err(IndexError::Invalid(format!(
            "document {:?}: {} vector bytes, expected {row_bytes}",
            bad.id,
            bad.values.len()
        )));
    }
    let layout = Layout::plan(precision, dim, rows, deletes);
    Ok(durable::write_with(path, |w| {
        let mut at = 0u64;
        let pad_to = |w: &mut dyn Write, at: &mut u64, to: u64| -> std::io::Result<()> {
            w.write_all(&vec![0u8; (to - *at) as usize])?;
            *at = to;
            Ok(())
        };
        let header = layout.header();
        w.write_all(&header)?;
        at += header.len() as u64;
        for r in rows {
            w.write_all(r.values)?;
        }
        at += (rows.len() * row_bytes) as u64;
        pad_to(w, &mut at, layout.scales)?;
        if precision == Precision::Int8 {
            for r in rows {
                w.write_all(&r.scale.to_le_bytes())?;
            }
            at += rows.len() as u64 * 4;
        }
        pad_to(w, &mut at, layout.slots)?;
        for r in rows {
            w.write_all(&r.slot.to_le_bytes())?;
        }
        at += rows.len() as u64 * 8;
        pad_to(w, &mut at, layout.offsets)?;
        let mut record_at = layout.records;
        for r in rows {
            w.write_all(&record_at.to_le_bytes())?;
            record_at += RECORD_HEAD + (r.id.len() + r.text.len() + r.metadata.len()) as u64;
        }
        at += rows.len() as u64 * 8;
        pad_to(w, &mut at, layout.records)?;
        for r in rows {
            for len in [r.id.len(), r.text.len(), r.metadata.len()] {
                w.write_all(&(len as u32).to_le_bytes())?;
            }
            w.write_all(r.id.as_bytes())?;
            w.write_all(r.text.as_bytes())?;
            w.write_all(r.metadata)?;
        }
        for d in deletes {
            w.write_all(&(d.len() as u32).to_le_bytes())?;
            w.write_all(d.as_bytes())?;
        }
        Ok(())
    })?)
}

/// A segment file opened for reading.
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    map: Mmap,
    layout: Layout,
    deletes: Vec<String>,
}

impl Segment {
    /// Maps `path` and checks its structure; every record and deleted id is
    /// checked to lie inside the file and every id to be UTF-8.
    pub fn open(path: &Path) -> Result<Segment> {
        let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
        // SAFETY: segment files are never modified after they are renamed into
        // place (new writes go to new files), so the mapping does not change.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| IndexError::io(path, e))?;
        let corrupt = |message: &str| IndexError::Corrupt {
            path: path.to_path_buf(),
            message: message.to_string(),
        };
        let layout =
            Layout::parse(&map).ok_or_else(|| corrupt("not a segment file, or truncated"))?;
        let mut segment = Segment { path: path.to_path_buf(), map, layout, deletes: Vec::new() };
        if segment.vectors().is_none() {
            return Err(corrupt("misaligned vector section"));
        }
        let mut expected = layout.records;
        for row in 0..layout.rows as usize {
            let (start, end) =
                segment.record_span(row).ok_or_else(|| corrupt("record out of bounds"))?;
            if start != expected || end > layout.deletes_at {
                return Err(corrupt("records out of order"));
            }
            std::str::from_utf8(segment.field(row, 0))
                .map_err(|_| corrupt("an id is not UTF-8"))?;
            expected = end;
        }
        if expected != layout.deletes_at {
            return Err(corrupt("records do not end where deletes start"));
        }
        let mut at = layout.deletes_at as usize;
        for _ in 0..layout.deletes {
            let len = segment.u32_at(at).ok_or_else(|| corrupt("deletes out of bounds"))? as usize;
            let bytes = segment
                .map
                .get(at + 4..at + 4 + len)
                .ok_or_else(|| corrupt("deletes out of bounds"))?;
            segment.deletes.push(
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| corrupt("a deleted id is not UTF-8"))?,
            );
            at += 4 + len;
        }
        if at as u64 != layout.file_len {
            return Err(corrupt("trailing bytes after the deletes"));
        }
        Ok(segment)
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stored precision.
    pub fn precision(&self) -> Precision {
        self.layout.precision
    }

    /// Vector width.
    pub fn dim(&self) -> usize {
        self.layout.dim
    }

    /// Number of documents written in this segment.
    pub fn rows(&self) -> usize {
        self.layout.rows as usize
    }

    /// Ids this segment deletes.
    pub fn deletes(&self) -> &[String] {
        &self.deletes
    }

    fn section(&self, start: u64, len: u64) -> &[u8] {
        &self.map[start as usize..(start + len) as usize]
    }

    fn vectors(&self) -> Option<Rows<'_>> {
        let l = &self.layout;
        let values =
            self.section(l.values, l.rows * (l.dim * l.precision.component_bytes()) as u64);
        let scale_len = if l.precision == Precision::Int8 { l.rows * 4 } else { 0 };
        Rows::from_bytes(
            l.precision,
            values,
            self.section(l.scales, scale_len),
            l.rows as usize,
            l.dim,
        )
    }

    /// The stored vectors.
    pub fn rows_view(&self) -> Rows<'_> {
        self.vectors().expect("checked when opened")
    }

    /// Row `row`'s stored vector bytes and scale (for copying into a merged segment).
    pub fn raw_vector(&self, row: usize) -> (&[u8], f32) {
        let l = &self.layout;
        let width = (l.dim * l.precision.component_bytes()) as u64;
        let values = self.section(l.values + row as u64 * width, width);
        let scale = match self.rows_view() {
            Rows::Int8 { scales, .. } => scales[row],
            _ => 1.0,
        };
        (values, scale)
    }

    /// Slot numbers, one per row, ascending.
    pub fn slots(&self) -> &[u64] {
        bytemuck::cast_slice(self.section(self.layout.slots, self.layout.rows * 8))
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        self.map.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// Start and end of row's record, if they lie in the records section.
    fn record_span(&self, row: usize) -> Option<(u64, u64)> {
        let at = self.layout.offsets as usize + row * 8;
        let start = u64::from_le_bytes(self.map.get(at..at + 8)?.try_into().ok()?);
        let s = start as usize;
        let lens = [self.u32_at(s)?, self.u32_at(s + 4)?, self.u32_at(s + 8)?];
        let end = start + RECORD_HEAD + lens.iter().map(|&l| l as u64).sum::<u64>();
        (start >= self.layout.records && end <= self.layout.deletes_at).then_some((start, end))
    }

    /// Field `which` (0 id, 1 text, 2 metadata) of a row's record.
    fn field(&self, row: usize, which: usize) -> &[u8] {
        let (start, _) = self.record_span(row).expect("checked when opened");
        let s = start as usize;
        let lens: Vec<usize> =
            (0..3).map(|i| self.u32_at(s + 4 * i).expect("checked when opened") as usize).collect();
        let from = s + RECORD_HEAD as usize + lens[..which].iter().sum::<usize>();
        &self.map[from..from + lens[which]]
    }

    /// Row's document id.
    pub fn id(&self, row: usize) -> &str {
        std::str::from_utf8(self.field(row, 0)).expect("checked when opened")
    }

    /// Row's text.
    pub fn text(&self, row: usize) -> Result<&str> {
        std::str::from_utf8(self.field(row, 1)).map_err(|_| IndexError::Corrupt {
            path: self.path.clone(),
            message: format!("text of row {row} is not UTF-8"),
        })
    }

    /// Row's metadata JSON bytes (empty for none).
    pub fn metadata_json(&self, row: usize) -> &[u8] {
        self.field(row, 2)
    }

    /// Row's metadata.
    pub fn metadata(&self, row: usize) -> Result<Metadata> {
        let raw = self.metadata_json(row);
        if raw.is_empty() {
            return Ok(Metadata::new());
        }
        serde_json::from_slice(raw).map_err(|e| IndexError::Corrupt {
            path: self.path.clone(),
            message: format!("metadata of row {row}: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sembase-segment-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("seg")
    }

    #[test]
    fn rows_and_deletes_read_back_in_every_precision() {
        for precision in Precision::ALL {
            let path = temp(precision.name());
            let vectors = [vec![0.6f32, 0.8, 0.0], vec![0.0, -1.0, 0.0]];
            let encoded: Vec<(Vec<u8>, f32)> = vectors
                .iter()
                .map(|v| {
                    let mut b = Vec::new();
                    let s = precision.encode(v, &mut b);
                    (b, s)
                })
                .collect();
            let rows: Vec<RowIn> =
                [("a", "first", &b"{\"k\":1}"[..]), ("b\u{e9}", "second", &b""[..])]
                    .iter()
                    .zip(&encoded)
                    .enumerate()
                    .map(|(i, ((id, text, meta), (values, scale)))| RowIn {
                        slot: 10 + i as u64,
                        id,
                        text,
                        metadata: meta,
                        values,
                        scale: *scale,
                    })
                    .collect();
            write_segment(&path, precision, 3, &rows, &["gone", "x"]).unwrap();
            let seg = Segment::open(&path).unwrap();
            assert_eq!((seg.rows(), seg.dim(), seg.precision()), (2, 3, precision));
            assert_eq!(seg.id(1), "b\u{e9}");
            assert_eq!(seg.text(0).unwrap(), "first");
            assert_eq!(seg.metadata(0).unwrap()["k"], 1);
            assert!(seg.metadata(1).unwrap().is_empty());
            assert_eq!(seg.slots(), &[10, 11]);
            assert_eq!(seg.deletes(), &["gone".to_string(), "x".to_string()]);
            let mut buf = Vec::new();
            let back = seg.rows_view().row(1, 3, &mut buf).to_vec();
            assert!((back[1] + 1.0).abs() < 1e-2, "{precision}: {back:?}");
            std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        }
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let path = temp("truncated");
        let values = 1.0f32.to_le_bytes();
        let row = RowIn { slot: 0, id: "a", text: "t", metadata: b"", values: &values, scale: 1.0 };
        write_segment(&path, Precision::F32, 1, &[row], &[]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(Segment::open(&path), Err(IndexError::Corrupt { .. })));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
