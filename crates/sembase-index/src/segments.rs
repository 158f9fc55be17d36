//! The committed documents of a file-backed index: segment files listed by the
//! manifest, replayed in order into the set of live documents.
//!
//! A write (upsert batch or delete) becomes one new segment file, flushed to
//! disk, then a new manifest naming it is swapped in atomically; a process
//! killed at any moment leaves the previous or the new manifest, and files no
//! manifest names are removed when the next writer opens the index. Every
//! stored document version gets a *slot* number, ascending across the
//! segments (ANN graphs use slots as keys). When segments pile up, or most
//! rows are dead, they are merged into one (slots kept).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{IndexError, Result};
use crate::exact::{scan, TopK, QUERY_TILE};
use crate::lock::WriteLock;
use crate::manifest::{GraphRef, Manifest, MANIFEST_FILE};
use crate::segment::{write_segment, RowIn, Segment};
use crate::store::{check_ids, check_widths, Document, Filter, Hit};
use crate::vectors::Precision;

/// More segments than this are merged into one after a write.
const MAX_SEGMENTS: usize = 16;
/// Rows scanned by one parallel job of an exact search.
const SCAN_CHUNK: usize = 16384;
/// How often a reader retries when a writer removed a file it was about to open.
const OPEN_RETRIES: usize = 20;

/// Whether an index is opened to read only or to write (taking its lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Where a document version is: segment and row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u32,
    pub row: u32,
}

/// The documents of a file-backed index.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    dim: usize,
    precision: Precision,
    manifest: Manifest,
    segs: Vec<Segment>,
    /// Per segment and row: whether that row is its id's current version.
    live: Vec<Vec<bool>>,
    by_id: HashMap<String, Loc>,
    /// First slot and index of every segment that has rows, ascending.
    starts: Vec<(u64, u32)>,
    lock: Option<WriteLock>,
}

impl Segments {
    /// Starts an empty index in `dir` (which must exist).
    pub fn create(dir: &Path) -> Result<()> {
        Manifest::default().commit(dir)
    }

    /// Opens the committed state of `dir`. Writers take the directory's lock
    /// first and remove files left behind by interrupted writes.
    pub fn open(dir: &Path, dim: usize, precision: Precision, access: Access) -> Result<Segments> {
        let lock = match access {
            Access::Write => Some(WriteLock::acquire(dir)?),
            Access::Read => None,
        };
        let mut attempt = 0;
        let (manifest, segs) = loop {
            let manifest = Manifest::read(dir)?;
            let opened: Result<Vec<Segment>> =
                manifest.segments.iter().map(|name| Segment::open(&dir.join(name))).collect();
            match opened {
                // A writer merged segments between our reading the manifest and the files.
                Err(IndexError::Io { source, .. })
                    if source.kind() == ErrorKind::NotFound
                        && attempt < OPEN_RETRIES
                        && lock.is_none() =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break (manifest, other?),
            }
        };
        for seg in &segs {
            if seg.dim() != dim || seg.precision() != precision {
                return Err(IndexError::Corrupt {
                    path: seg.path().to_path_buf(),
                    message: format!(
                        "holds {}-wide {} vectors, the index {dim}-wide {precision}",
                        seg.dim(),
                        seg.precision()
                    ),
                });
            }
        }
        let mut set = Segments {
            dir: dir.to_path_buf(),
            dim,
            precision,
            manifest,
            segs: Vec::new(),
            live: Vec::new(),
            by_id: HashMap::new(),
            starts: Vec::new(),
            lock,
        };
        for seg in segs {
            set.apply(seg);
        }
        if set.lock.is_some() {
            set.remove_unreferenced()?;
        }
        Ok(set)
    }

    /// Applies one segment on top of the current state.
    fn apply(&mut self, seg: Segment) {
        let index = self.segs.len() as u32;
        for id in seg.deletes() {
            if let Some(old) = self.by_id.remove(id) {
                self.live[old.seg as usize][old.row as usize] = false;
            }
        }
        let mut live = vec![true; seg.rows()];
        for row in 0..seg.rows() {
            let loc = Loc { seg: index, row: row as u32 };
            match self.by_id.insert(seg.id(row).to_string(), loc) {
                // Writers refuse repeated ids in one batch; should a file hold one, the later row wins.
                Some(old) if old.seg == index => live[old.row as usize] = false,
                Some(old) => self.live[old.seg as usize][old.row as usize] = false,
                None => {}
            }
        }
        if let Some(&first) = seg.slots().first() {
            self.starts.push((first, index));
        }
        self.segs.push(seg);
        self.live.push(live);
    }

    /// Deletes files of this index's kinds that the manifest does not name.
    fn remove_unreferenced(&self) -> Result<()> {
        let keep: Vec<&str> = self.manifest.files().collect();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| IndexError::io(&self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("seg-")
                || name.starts_with("graph-")
                || (name.starts_with('.') && name.ends_with(".tmp"));
            if ours && !keep.contains(&name.as_str()) && name != MANIFEST_FILE {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| IndexError::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Vector width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Stored precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The committed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Number of live documents.
    pub fn count(&self) -> usize {
        self.by_id.len()
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Per segment and row, whether the row is live.
    pub fn live(&self) -> &[Vec<bool>] {
        &self.live
    }

    fn require_writer(&self) -> Result<()> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(IndexError::Invalid(format!(
                "index {} was opened read-only",
                self.dir.display()
            ))),
        }
    }

    /// Adds or replaces documents as one committed write.
    pub fn upsert(&mut self, docs: &[Document]) -> Result<()> {
        self.require_writer()?;
        if docs.is_empty() {
            return Ok(());
        }
        check_ids(docs.iter().map(|d| d.id.as_str()))?;
        check_widths(docs.iter().map(|d| d.vector.as_slice()), self.dim)?;
        let mut values =
            Vec::with_capacity(docs.len() * self.dim * self.precision.component_bytes());
        let scales: Vec<f32> =
            docs.iter().map(|d| self.precision.encode(&d.vector, &mut values)).collect();
        let metadata: Vec<Vec<u8>> = docs
            .iter()
            .map(|d| {
                if d.metadata.is_empty() {
                    Vec::new()
                } else {
                    serde_json::to_vec(&d.metadata).expect("JSON values serialise")
                }
            })
            .collect();
        let width = self.dim * self.precision.component_bytes();
        let first_slot = self.manifest.next_slot;
        let rows: Vec<RowIn> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| RowIn {
                slot: first_slot + i as u64,
                id: &d.id,
                text: &d.text,
                metadata: &metadata[i],
                values: &values[i * width..(i + 1) * width],
                scale: scales[i],
            })
            .collect();
        self.commit_segment(&rows, &[], first_slot + docs.len() as u64)?;
        self.compact_if_needed()
    }

    /// Removes documents by id as one committed write; returns how many existed.
    pub fn delete(&mut self, ids: &[String]) -> Result<usize> {
        self.require_writer()?;
        let mut present: Vec<&str> =
            ids.iter().map(String::as_str).filter(|id| self.by_id.contains_key(*id)).collect();
        present.sort_unstable();
        present.dedup();
        if present.is_empty() {
            return Ok(0);
        }
        self.commit_segment(&[], &present, self.manifest.next_slot)?;
        self.compact_if_needed()?;
        Ok(present.len())
    }

    /// Writes a segment and commits a manifest that appends it.
    fn commit_segment(&mut self, rows: &[RowIn], deletes: &[&str], next_slot: u64) -> Result<()> {
        let generation = self.manifest.generation + 1;
        let name = format!("seg-{generation:010}.seg");
        let path = self.dir.join(&name);
        write_segment(&path, self.precision, self.dim, rows, deletes)?;
        let seg = Segment::open(&path)?;
        let mut next = self.manifest.clone();
        next.generation = generation;
        next.next_slot = next_slot;
        next.segments.push(name);
        next.commit(&self.dir)?;
        self.manifest = next;
        self.apply(seg);
        Ok(())
    }

    /// Commits `graph` as the index's ANN graph and removes the file of the one it replaces.
    pub fn commit_graph(&mut self, graph: GraphRef) -> Result<()> {
        self.require_writer()?;
        let mut next = self.manifest.clone();
        next.generation += 1;
        let old = next.graph.replace(graph);
        next.commit(&self.dir)?;
        self.manifest = next;
        if let Some(old) =
            old.filter(|o| Some(&o.file) != self.manifest.graph.as_ref().map(|g| &g.file))
        {
            let path = self.dir.join(old.file);
            std::fs::remove_file(&path).map_err(|e| IndexError::io(&path, e))?;
        }
        Ok(())
    }

    /// The generation the next commit will have (names new files).
    pub fn next_generation(&self) -> u64 {
        self.manifest.generation + 1
    }

    /// Merges every live row into one segment when there are too many
    /// segments or more dead rows than live ones.
    fn compact_if_needed(&mut self) -> Result<()> {
        let total: usize = self.segs.iter().map(Segment::rows).sum();
        let dead = total - self.count();
        if self.segs.len() <= MAX_SEGMENTS && (dead <= self.count() || dead < 1024) {
            return Ok(());
        }
        let generation = self.manifest.generation + 1;
        let name = format!("seg-{generation:010}.seg");
        let path = self.dir.join(&name);
        let mut rows = Vec::with_capacity(self.count());
        for (seg, live) in self.segs.iter().zip(&self.live) {
            for row in (0..seg.rows()).filter(|&r| live[r]) {
                let (values, scale) = seg.raw_vector(row);
                rows.push(RowIn {
                    slot: seg.slots()[row],
                    id: seg.id(row),
                    text: seg.text(row)?,
                    metadata: seg.metadata_json(row),
                    values,
                    scale,
                });
            }
        }
        write_segment(&path, self.precision, self.dim, &rows, &[])?;
        let merged = Segment::open(&path)?;
        let mut next = self.manifest.clone();
        next.generation = generation;
        next.segments = vec![name];
        next.commit(&self.dir)?;
        let old: Vec<PathBuf> = self.segs.iter().map(|s| s.path().to_path_buf()).collect();
        self.manifest = next;
        self.segs.clear();
        self.live.clear();
        self.by_id.clear();
        self.starts.clear();
        self.apply(merged);
        for path in old {
            std::fs::remove_file(&path).map_err(|e| IndexError::io(&path, e))?;
        }
        Ok(())
    }

    /// Where the document version with `slot` is, if still stored.
    pub fn locate_slot(&self, slot: u64) -> Option<Loc> {
        // Slot ranges of the segments are ascending and disjoint.
        let at = self.starts.partition_point(|&(first, _)| first <= slot).checked_sub(1)?;
        let seg = self.starts[at].1;
        let row = self.segs[seg as usize].slots().binary_search(&slot).ok()?;
        Some(Loc { seg, row: row as u32 })
    }

    /// Per segment and row: live, and (with a filter) matching it.
    pub fn allowed(&self, filter: Option<&Filter>) -> Result<Cow<'_, [Vec<bool>]>> {
        let Some(filter) = filter else { return Ok(Cow::Borrowed(&self.live)) };
        let allowed: Result<Vec<Vec<bool>>> = self
            .segs
            .iter()
            .zip(&self.live)
            .map(|(seg, live)| {
                (0..seg.rows())
                    .map(|row| {
                        Ok(live[row]
                            && !seg.metadata_json(row).is_empty()
                            && filter.matches(&seg.metadata(row)?))
                    })
                    .collect()
            })
            .collect();
        Ok(Cow::Owned(allowed?))
    }

    /// Row's id.
    pub fn id(&self, loc: Loc) -> &str {
        self.segs[loc.seg as usize].id(loc.row as usize)
    }

    /// Whether `a` ranks before `b` at equal score: the larger id first.
    pub fn id_first(&self, a: &Loc, b: &Loc) -> bool {
        self.id(*a) > self.id(*b)
    }

    /// Row's vector as f32.
    pub fn vector(&self, loc: Loc) -> Vec<f32> {
        let mut buf = Vec::new();
        self.segs[loc.seg as usize].rows_view().row(loc.row as usize, self.dim, &mut buf).to_vec()
    }

    /// A search result for the row at `loc`.
    pub fn hit(&self, loc: Loc, score: f32) -> Result<Hit> {
        let seg = &self.segs[loc.seg as usize];
        let row = loc.row as usize;
        Ok(Hit {
            id: seg.id(row).to_string(),
            score,
            text: seg.text(row)?.to_string(),
            metadata: seg.metadata(row)?,
        })
    }

    /// Exact top-k over the allowed rows whose slot is at least `min_slot`, for
    /// unit-length queries (row-major), in parallel over query tiles and row chunks.
    pub fn scan(
        &self,
        queries: &[f32],
        k: usize,
        allowed: &[Vec<bool>],
        min_slot: u64,
    ) -> Vec<TopK<Loc>> {
        let dim = self.dim;
        let n_queries = queries.len() / dim.max(1);
        let mut jobs = Vec::new();
        for (seg_no, seg) in self.segs.iter().enumerate() {
            let start = seg.slots().partition_point(|&s| s < min_slot);
            let mut at = start;
            while at < seg.rows() {
                let end = (at + SCAN_CHUNK).min(seg.rows());
                for tile in 0..n_queries.div_ceil(QUERY_TILE) {
                    jobs.push((tile, seg_no, at..end));
                }
                at = end;
            }
        }
        let first = |a: &Loc, b: &Loc| self.id_first(a, b);
        let partial: Vec<(usize, Vec<TopK<Loc>>)> = jobs
            .into_par_iter()
            .map(|(tile, seg_no, range)| {
                let qs = &queries
                    [tile * QUERY_TILE * dim..((tile + 1) * QUERY_TILE).min(n_queries) * dim];
                let mut tops = vec![TopK::new(k); qs.len() / dim];
                let keep = |row: usize| allowed[seg_no][row];
                let item = |row: usize| Loc { seg: seg_no as u32, row: row as u32 };
                scan(qs, dim, &self.segs[seg_no].rows_view(), range, keep, item, first, &mut tops);
                (tile, tops)
            })
            .collect();
        let mut out = vec![TopK::new(k); n_queries];
        for (tile, tops) in partial {
            for (i, top) in tops.into_iter().enumerate() {
                out[tile * QUERY_TILE + i].merge(top, first);
            }
        }
        out
    }
}
