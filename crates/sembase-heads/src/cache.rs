//! An on-disk embedding cache: one append-only file per (model, settings) key,
//! records of (text hash, vector). Retraining on the same texts skips the encoder.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use sembase_embed::{EmbedOptions, Embedder};

use crate::error::{io, Error, Result};

const MAGIC: &[u8; 8] = b"SBHEADC1";
/// Texts embedded per call into the model (and per progress report).
const CHUNK: usize = 2048;

type TextHash = [u8; 16];

/// Vectors of one model under one set of embedding settings.
pub struct EmbeddingCache {
    path: PathBuf,
    dim: Option<usize>,
    index: HashMap<TextHash, usize>,
    data: Vec<f32>,
}

impl EmbeddingCache {
    /// Opens (or starts) the cache for `key` under `root`; `key` should name
    /// the model, its configuration hash, the prefix and the dimensions.
    pub fn open(root: &Path, key: &str) -> Result<EmbeddingCache> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let name: String =
            Sha256::digest(key.as_bytes()).iter().take(12).map(|b| format!("{b:02x}")).collect();
        let path = root.join(format!("{name}.bin"));
        let mut cache = EmbeddingCache { path, dim: None, index: HashMap::new(), data: Vec::new() };
        match std::fs::read(&cache.path) {
            Ok(bytes) => cache.parse(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&cache.path)(e)),
        }
        Ok(cache)
    }

    /// Reads records; a damaged file is ignored (and rewritten on the next store),
    /// a torn last record is dropped.
    fn parse(&mut self, bytes: &[u8]) {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return;
        }
        let dim = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        if dim == 0 {
            return;
        }
        self.dim = Some(dim);
        for record in bytes[12..].chunks_exact(16 + 4 * dim) {
            let hash: TextHash = record[..16].try_into().unwrap();
            let row = self.data.len() / dim;
            self.data.extend(
                record[16..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())),
            );
            self.index.insert(hash, row);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn get(&self, hash: &TextHash) -> Option<&[f32]> {
        let dim = self.dim?;
        self.index.get(hash).map(|&row| &self.data[row * dim..(row + 1) * dim])
    }

    /// Appends vectors to the file and the in-memory index.
    fn store(&mut self, items: &[(TextHash, &[f32])]) -> Result<()> {
        let Some(dim) = items.first().map(|i| i.1.len()) else { return Ok(()) };
        let fresh = self.dim != Some(dim);
        if fresh {
            self.dim = Some(dim);
            self.index.clear();
            self.data.clear();
        }
        let mut buf = Vec::with_capacity(items.len() * (16 + 4 * dim) + 12);
        if fresh {
            buf.extend_from_slice(MAGIC);
            buf.extend_from_slice(&(dim as u32).to_le_bytes());
        }
        for (hash, v) in items {
            buf.extend_from_slice(hash);
            v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
            let row = self.data.len() / dim;
            self.data.extend_from_slice(v);
            self.index.insert(*hash, row);
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(&self.path)
            .map_err(io(&self.path))?;
        file.write_all(&buf).map_err(io(&self.path))
    }
}

fn text_hash(text: &str) -> TextHash {
    Sha256::digest(text.as_bytes())[..16].try_into().unwrap()
}

/// Embeds `texts` in order, taking what the cache holds and storing the rest.
/// Returns a row-major matrix and its width. `progress` gets the number of
/// texts done so far.
pub fn embed_cached(
    embedder: &dyn Embedder,
    texts: &[&str],
    options: &EmbedOptions,
    mut cache: Option<&mut EmbeddingCache>,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<f32>, usize)> {
    let hashes: Vec<TextHash> = texts.iter().map(|t| text_hash(t)).collect();
    let mut missing: Vec<usize> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cached_count = 0;
    for (i, h) in hashes.iter().enumerate() {
        if cache.as_ref().is_some_and(|c| c.get(h).is_some()) {
            cached_count += 1;
        } else if seen.insert(*h) {
            missing.push(i);
        }
    }
    let mut fresh: HashMap<TextHash, Vec<f32>> = HashMap::new();
    progress(cached_count);
    let mut done = 0;
    for chunk in missing.chunks(CHUNK) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        let out = embedder.embed(&batch, options)?;
        if out.vectors.len() != batch.len() {
            return Err(Error::Invalid(format!(
                "model returned {} vectors for {} texts",
                out.vectors.len(),
                batch.len()
            )));
        }
        if let Some(c) = cache.as_deref_mut() {
            let items: Vec<(TextHash, &[f32])> =
                chunk.iter().zip(&out.vectors).map(|(&i, v)| (hashes[i], v.as_slice())).collect();
            c.store(&items)?;
        }
        for (&i, v) in chunk.iter().zip(out.vectors) {
            fresh.insert(hashes[i], v);
        }
        done += chunk.len();
        progress((cached_count + done).min(texts.len()));
    }
    let mut dim = None;
    let mut matrix = Vec::new();
    for h in &hashes {
        let v: &[f32] = match fresh.get(h) {
            Some(v) => v,
            None => cache.as_ref().and_then(|c| c.get(h)).expect("cached or freshly embedded"),
        };
        if *dim.get_or_insert(v.len()) != v.len() {
            return Err(Error::Invalid("the model returned vectors of different widths".into()));
        }
        matrix.extend_from_slice(v);
    }
    progress(texts.len());
    Ok((matrix, dim.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sembase_embed::Embeddings;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hashes text into a small vector and counts how many texts it embedded.
    struct Fake(AtomicUsize);

    impl Embedder for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn dimension(&self) -> usize {
            3
        }
        fn max_tokens(&self) -> usize {
            512
        }
        fn embed(&self, texts: &[&str], _: &EmbedOptions) -> sembase_embed::Result<Embeddings> {
            self.0.fetch_add(texts.len(), Ordering::SeqCst);
            let vectors = texts
                .iter()
                .map(|t| vec![t.len() as f32, t.bytes().map(f32::from).sum(), 1.0])
                .collect();
            Ok(Embeddings { vectors, token_counts: vec![1; texts.len()] })
        }
        fn embed_tokens(
            &self,
            _: &[Vec<u32>],
            _: &EmbedOptions,
        ) -> sembase_embed::Result<Embeddings> {
            unimplemented!()
        }
        fn tokenize(&self, _: &str) -> sembase_embed::Result<Vec<u32>> {
            unimplemented!()
        }
    }

    #[test]
    fn second_pass_skips_the_encoder() {
        let tmp = tempfile::tempdir().unwrap();
        let model = Fake(AtomicUsize::new(0));
        let texts = ["a", "bb", "a", "ccc"];
        let opts = EmbedOptions::default();
        let mut cache = EmbeddingCache::open(tmp.path(), "fake|x").unwrap();
        let (m1, dim) = embed_cached(&model, &texts, &opts, Some(&mut cache), &mut |_| {}).unwrap();
        assert_eq!(dim, 3);
        assert_eq!(model.0.load(Ordering::SeqCst), 3, "duplicates embedded once");
        let mut reopened = EmbeddingCache::open(tmp.path(), "fake|x").unwrap();
        assert_eq!(reopened.len(), 3);
        let (m2, _) =
            embed_cached(&model, &texts, &opts, Some(&mut reopened), &mut |_| {}).unwrap();
        assert_eq!(model.0.load(Ordering::SeqCst), 3, "nothing re-embedded");
        assert_eq!(m1, m2);
        // Another key is another cache; a torn tail is dropped.
        let other = EmbeddingCache::open(tmp.path(), "fake|y").unwrap();
        assert!(other.is_empty());
        let path = reopened.path().to_path_buf();
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        assert_eq!(EmbeddingCache::open(tmp.path(), "fake|x").unwrap().len(), 2);
    }
}
