//! Turning a task's texts into vectors: unique texts only, through the cache,
//! in chunks, with progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use sembase_embed::vectors::truncate_dimensions;
use sembase_embed::{EmbedOptions, Embedder, Truncation};

use crate::cache::{text_key, EmbeddingCache};
use crate::error::{EvalError, Result};

/// Texts handed to the model per call (it batches by tokens within a call).
const CHUNK: usize = 2048;

/// A model as evaluation sees it.
pub struct EvalModel {
    pub embedder: Box<dyn Embedder>,
    /// The model's identity for the cache: must change when its weights change.
    pub cache_id: String,
    /// Whether `dimensions` may be applied here, by truncating full vectors and
    /// re-normalising (what the local model does itself), so that one encoding
    /// serves every `--dimensions`. Remote endpoints get `dimensions` sent instead.
    pub truncate_locally: bool,
}

impl EvalModel {
    /// The name results use.
    pub fn name(&self) -> &str {
        self.embedder.name()
    }
}

/// Where long work reports how far it got. All methods default to doing nothing.
pub trait Progress: Sync {
    /// Work on `total` texts starts; `what` names it.
    fn start(&self, _what: &str, _total: usize) {}
    /// `n` more texts are done (from the model or the cache).
    fn advance(&self, _n: usize) {}
    /// The work started last is over.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}

/// Puts a model, the cache and progress reporting together.
pub struct Encoder<'a> {
    model: &'a EvalModel,
    cache: Option<&'a EmbeddingCache>,
    progress: &'a dyn Progress,
    embedded: AtomicUsize,
    cached: AtomicUsize,
}

impl<'a> Encoder<'a> {
    /// An encoder; without a cache every text goes through the model.
    pub fn new(
        model: &'a EvalModel,
        cache: Option<&'a EmbeddingCache>,
        progress: &'a dyn Progress,
    ) -> Self {
        Self { model, cache, progress, embedded: AtomicUsize::new(0), cached: AtomicUsize::new(0) }
    }

    /// The model.
    pub fn model(&self) -> &EvalModel {
        self.model
    }

    /// Where progress is reported.
    pub fn progress(&self) -> &dyn Progress {
        self.progress
    }

    /// Texts embedded by the model and texts found in the cache so far.
    pub fn counts(&self) -> (usize, usize) {
        (self.embedded.load(Ordering::Relaxed), self.cached.load(Ordering::Relaxed))
    }

    /// Checks `dimensions` against the model's width.
    pub fn check_dimensions(&self, dimensions: Option<usize>) -> Result<()> {
        let width = self.model.embedder.dimension();
        match dimensions {
            Some(d) if d == 0 || d > width => Err(EvalError::Invalid(format!(
                "{}: dimensions must be between 1 and {width}, got {d}",
                self.model.name()
            ))),
            _ => Ok(()),
        }
    }

    /// One vector per text, in order. Progress advances by `texts.len()` in all,
    /// cached and repeated texts first.
    pub fn encode(
        &self,
        texts: &[&str],
        prefix: Option<&str>,
        dimensions: Option<usize>,
    ) -> Result<Vec<Vec<f32>>> {
        self.check_dimensions(dimensions)?;
        let request_dims = if self.model.truncate_locally { None } else { dimensions };

        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let mut unique: Vec<&str> = Vec::new();
        let slots: Vec<usize> = texts
            .iter()
            .map(|&t| {
                *slot_of.entry(t).or_insert_with(|| {
                    unique.push(t);
                    unique.len() - 1
                })
            })
            .collect();

        let mut namespace = match self.cache {
            Some(cache) => Some(cache.namespace(&self.model.cache_id, prefix, request_dims)?),
            None => None,
        };
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; unique.len()];
        if let Some(ns) = &namespace {
            for (slot, text) in unique.iter().enumerate() {
                vectors[slot] = ns.get(&text_key(text))?;
            }
        }
        let missing: Vec<usize> = (0..unique.len()).filter(|&s| vectors[s].is_none()).collect();
        self.cached.fetch_add(unique.len() - missing.len(), Ordering::Relaxed);
        self.progress.advance(texts.len() - missing.len());

        if !missing.is_empty() {
            let options = EmbedOptions {
                prefix: prefix.map(str::to_string),
                dimensions: request_dims,
                truncate: Truncation::Truncate,
            };
            for chunk in missing.chunks(CHUNK) {
                let batch: Vec<&str> = chunk.iter().map(|&s| unique[s]).collect();
                let embeddings = self.model.embedder.embed(&batch, &options)?;
                if embeddings.vectors.len() != batch.len() {
                    return Err(EvalError::Invalid(format!(
                        "{} returned {} vectors for {} texts",
                        self.model.name(),
                        embeddings.vectors.len(),
                        batch.len()
                    )));
                }
                if let Some(ns) = namespace.as_mut() {
                    let entries: Vec<_> = batch
                        .iter()
                        .zip(&embeddings.vectors)
                        .map(|(t, v)| (text_key(t), v.clone()))
                        .collect();
                    ns.put(&entries)?;
                }
                for (&s, v) in chunk.iter().zip(embeddings.vectors) {
                    vectors[s] = Some(v);
                }
                self.embedded.fetch_add(chunk.len(), Ordering::Relaxed);
                self.progress.advance(chunk.len());
            }
        }

        let mut vectors: Vec<Vec<f32>> =
            vectors.into_iter().map(|v| v.expect("every slot filled")).collect();
        if let (true, Some(d)) = (self.model.truncate_locally, dimensions) {
            vectors.iter_mut().for_each(|v| truncate_dimensions(v, d));
        }
        Ok(slots.into_iter().map(|s| vectors[s].clone()).collect())
    }
}
