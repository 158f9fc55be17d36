//! An on-disk embedding cache, so a second run over the same data skips the
//! encoder.
//!
//! Vectors are kept per (model, prefix, dimensions) in a *namespace* directory
//! `<root>/embeddings/<hash>/` (a `meta.json` there says what it holds), and
//! within it per text, keyed by the first 16 bytes of the text's SHA-256. Each
//! write adds a *segment* file, written to a temporary name and renamed into
//! place, so readers (and concurrent runs) never see half a file; when there are
//! many segments they are merged into one.
//!
//! Segment layout (little-endian): `SBEMB001`, width u32, count u64, then count
//! records of key (16 bytes) + width f32.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use sembase_embed::durable;

/// A text's key in a namespace.
pub type Key = [u8; 16];

const MAGIC: &[u8; 8] = b"SBEMB001";
const HEADER: u64 = 8 + 4 + 8;
/// More segments than this in a namespace are merged into one.
const MAX_SEGMENTS: usize = 32;

/// The key of `text`.
pub fn text_key(text: &str) -> Key {
    let digest = Sha256::digest(text.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The cache's root directory (`<root>/embeddings/...`).
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    root: PathBuf,
}

impl EmbeddingCache {
    /// A cache under `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$SEMBASE_HOME/cache`, else `$HOME/.cache/sembase/cache` (the store's home);
    /// `None` when neither variable is set.
    pub fn from_env() -> Option<Self> {
        let home = std::env::var_os("SEMBASE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache").join("sembase"))
            })?;
        Some(Self::at(home.join("cache")))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens (creating if needed) the namespace for vectors of `model` (an
    /// identity string that changes when the model's weights change) embedded with
    /// `prefix` at `dimensions`.
    pub fn namespace(
        &self,
        model: &str,
        prefix: Option<&str>,
        dimensions: Option<usize>,
    ) -> Result<Namespace> {
        let meta = serde_json::json!({"model": model, "prefix": prefix, "dimensions": dimensions});
        let meta = serde_json::to_string_pretty(&meta).expect("json of strings and numbers");
        let hash = Sha256::digest(meta.as_bytes());
        let name: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        let dir = self.root.join("embeddings").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| EvalError::io(&dir, e))?;
        let meta_path = dir.join("meta.json");
        if !meta_path.exists() {
            durable::write_bytes(&meta_path, meta.as_bytes())?;
        }
        Namespace::open(dir)
    }
}

/// One open segment file.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: Mutex<File>,
    width: usize,
}

/// The vectors of one (model, prefix, dimensions).
#[derive(Debug)]
pub struct Namespace {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// Key -> (segment, byte offset of its vector).
    index: HashMap<Key, (usize, u64)>,
}

impl Namespace {
    fn open(dir: PathBuf) -> Result<Self> {
        let mut ns = Self { dir, segments: Vec::new(), index: HashMap::new() };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&ns.dir)
            .map_err(|e| EvalError::io(&ns.dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        paths.sort();
        for path in paths {
            // A segment that vanished (merged by another run) or does not parse is
            // skipped: the cache only ever saves work.
            let _ = ns.add_segment(path);
        }
        if ns.segments.len() > MAX_SEGMENTS {
            ns.compact()?;
        }
        Ok(ns)
    }

    /// Reads a segment's keys into the index.
    fn add_segment(&mut self, path: PathBuf) -> std::io::Result<()> {
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        let mut reader = BufReader::new(file);
        let mut header = [0u8; HEADER as usize];
        reader.read_exact(&mut header)?;
        if &header[..8] != MAGIC {
            return Err(std::io::Error::other("not a cache segment"));
        }
        let width = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        let count = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
        let record = 16 + 4 * width as u64;
        if HEADER + count * record != size {
            return Err(std::io::Error::other("truncated cache segment"));
        }
        let segment = self.segments.len();
        for i in 0..count {
            let mut key = [0u8; 16];
            reader.read_exact(&mut key)?;
            reader.seek_relative(4 * width as i64)?;
            self.index.insert(key, (segment, HEADER + i * record + 16));
        }
        self.segments.push(Segment { path, file: Mutex::new(reader.into_inner()), width });
        Ok(())
    }

    /// How many texts the namespace holds.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The vector of `key`, if cached.
    pub fn get(&self, key: &Key) -> Result<Option<Vec<f32>>> {
        let Some(&(segment, offset)) = self.index.get(key) else {
            return Ok(None);
        };
        let seg = &self.segments[segment];
        let mut bytes = vec![0u8; 4 * seg.width];
        {
            let mut file = seg.file.lock().unwrap_or_else(|p| p.into_inner());
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(|e| EvalError::io(&seg.path, e))?;
        }
        Ok(Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ))
    }

    /// Stores vectors (all of one width) as a new segment.
    pub fn put(&mut self, entries: &[(Key, Vec<f32>)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let width = entries[0].1.len();
        if entries.iter().any(|(_, v)| v.len() != width) {
            return Err(EvalError::Invalid("cache: vectors of one batch differ in width".into()));
        }
        let name = format!(
            "{:020}-{}-{}.seg",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            std::process::id(),
            self.segments.len()
        );
        let path = self.dir.join(name);
        write_segment(&path, width, entries.iter().map(|(k, v)| (k, v.as_slice())), entries.len())?;
        self.add_segment(path.clone()).map_err(|e| EvalError::io(&path, e))?;
        if self.segments.len() > MAX_SEGMENTS {
            self.compact()?;
        }
        Ok(())
    }

    /// Merges every segment into one and removes the merged files.
    fn compact(&mut self) -> Result<()> {
        let width = self.segments.first().map_or(0, |s| s.width);
        let mut entries = Vec::with_capacity(self.index.len());
        let keys: Vec<Key> = self
            .index
            .iter()
            .filter(|(_, &(s, _))| self.segments[s].width == width)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(v) = self.get(&key)? {
                entries.push((key, v));
            }
        }
        let old: Vec<PathBuf> = self.segments.drain(..).map(|s| s.path).collect();
        self.index.clear();
        let path = self.dir.join(format!(
            "{:020}-{}-merged.seg",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            std::process::id()
        ));
        write_segment(&path, width, entries.iter().map(|(k, v)| (k, v.as_slice())), entries.len())?;
        for p in old {
            let _ = std::fs::remove_file(p);
        }
        self.add_segment(path.clone()).map_err(|e| EvalError::io(&path, e))
    }

    /// Number of segment files (for tests).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Writes one segment atomically.
fn write_segment<'a>(
    path: &Path,
    width: usize,
    entries: impl Iterator<Item = (&'a Key, &'a [f32])>,
    count: usize,
) -> Result<()> {
    Ok(durable::write_with(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&(width as u32).to_le_bytes())?;
        w.write_all(&(count as u64).to_le_bytes())?;
        for (key, vector) in entries {
            w.write_all(key)?;
            for x in vector {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        Ok(())
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sembase-eval-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn vectors_survive_reopening_and_namespaces_are_separate() {
        let root = temp_root("reopen");
        let cache = EmbeddingCache::at(&root);
        let mut ns = cache.namespace("m", Some("query: "), None).unwrap();
        ns.put(&[(text_key("a"), vec![1.0, 2.0]), (text_key("b"), vec![3.0, -4.5])]).unwrap();
        let ns = cache.namespace("m", Some("query: "), None).unwrap();
        assert_eq!(ns.get(&text_key("b")).unwrap(), Some(vec![3.0, -4.5]));
        assert_eq!(ns.get(&text_key("c")).unwrap(), None);
        let other = cache.namespace("m", Some("passage: "), None).unwrap();
        assert!(other.is_empty());
        let other = cache.namespace("m", Some("query: "), Some(2)).unwrap();
        assert!(other.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn many_segments_are_merged() {
        let root = temp_root("merge");
        let cache = EmbeddingCache::at(&root);
        let mut ns = cache.namespace("m", None, None).unwrap();
        for i in 0..(MAX_SEGMENTS + 3) {
            ns.put(&[(text_key(&i.to_string()), vec![i as f32])]).unwrap();
        }
        assert!(ns.segment_count() <= MAX_SEGMENTS);
        let ns = cache.namespace("m", None, None).unwrap();
        assert_eq!(ns.len(), MAX_SEGMENTS + 3);
        for i in 0..(MAX_SEGMENTS + 3) {
            assert_eq!(ns.get(&text_key(&i.to_string())).unwrap(), Some(vec![i as f32]));
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_truncated_segment_is_ignored() {
        let root = temp_root("trunc");
        let cache = EmbeddingCache::at(&root);
        let mut ns = cache.namespace("m", None, None).unwrap();
        ns.put(&[(text_key("a"), vec![1.0, 2.0])]).unwrap();
        let seg = std::fs::read_dir(&ns.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        let bytes = std::fs::read(&seg).unwrap();
        std::fs::write(&seg, &bytes[..bytes.len() - 3]).unwrap();
        let ns = cache.namespace("m", None, None).unwrap();
        assert!(ns.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
