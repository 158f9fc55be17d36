//! The `flat` store: exact search over every stored vector (f32, f16 or int8),
//! scanned in cache-sized tiles with SIMD dot products.

use std::path::Path;

use crate::error::Result;
use crate::segments::{Access, Segments};
use crate::store::{check_widths, Document, Filter, Hit, IndexSettings, VectorStore};
use crate::vectors::Precision;

/// Exact search over the segments of an index directory.
#[derive(Debug)]
pub struct FlatStore {
    settings: IndexSettings,
    segments: Segments,
}

impl FlatStore {
    /// Opens (or, on a freshly created directory, starts) the store in `dir`.
    pub fn open(
        dir: &Path,
        settings: IndexSettings,
        precision: Precision,
        access: Access,
    ) -> Result<Self> {
        let segments = Segments::open(dir, settings.dimensions, precision, access)?;
        Ok(Self { settings, segments })
    }
}

/// Flattens unit-length queries into one row-major buffer after checking widths.
pub(crate) fn flatten_queries(queries: &[Vec<f32>], dim: usize) -> Result<Vec<f32>> {
    check_widths(queries.iter().map(Vec::as_slice), dim)?;
    Ok(queries.concat())
}

/// Turns per-query top lists into hits.
pub(crate) fn to_hits(
    segments: &Segments,
    tops: Vec<crate::exact::TopK<crate::segments::Loc>>,
) -> Result<Vec<Vec<Hit>>> {
    tops.into_iter()
        .map(|top| {
            top.into_sorted().into_iter().map(|(score, loc)| segments.hit(loc, score)).collect()
        })
        .collect()
}

impl VectorStore for FlatStore {
    fn settings(&self) -> &IndexSettings {
        &self.settings
    }

    fn upsert(&mut self, docs: &[Document]) -> Result<()> {
        self.segments.upsert(docs)
    }

    fn delete(&mut self, ids: &[String]) -> Result<usize> {
        self.segments.delete(ids)
    }

    fn search(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Vec<Hit>>> {
        let flat = flatten_queries(queries, self.settings.dimensions)?;
        let allowed = self.segments.allowed(filter)?;
        to_hits(&self.segments, self.segments.scan(&flat, k, &allowed, 0))
    }

    fn count(&self) -> Result<usize> {
        Ok(self.segments.count())
    }
}
