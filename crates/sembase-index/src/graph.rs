//! The ANN graph: a usearch HNSW index whose keys are document slots.
//!
//! Why usearch rather than hnsw_rs: usearch is actively maintained (2.x
//! releases through 2025-26), removes and filters keys during search (a
//! predicate per candidate, which metadata filters and deleted documents
//! need), stores vectors as f32, f16 or int8, and saves the graph as one file
//! that can be *viewed* through a memory map without loading it. hnsw_rs has no
//! deletion and maps only the vectors, not the graph, from disk.

use std::path::Path;

use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::error::{IndexError, Result};
use crate::vectors::Precision;
use sembase_embed::durable;

/// HNSW settings, recorded in `index.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnParams {
    /// Links per node (HNSW's M).
    pub connectivity: usize,
    /// Candidate list size while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidate list size while searching (ef); raised to k when k is larger.
    pub expansion_search: usize,
    /// Documents written since the graph was saved are searched exactly until
    /// there are more than `max(delta_limit, graph size / 10)` of them; then
    /// they are added to the graph.
    #[serde(default = "default_delta_limit")]
    pub delta_limit: usize,
}

fn default_delta_limit() -> usize {
    4096
}

impl Default for AnnParams {
    fn default() -> Self {
        Self {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
            delta_limit: default_delta_limit(),
        }
    }
}

fn ann_error(what: &str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Ann(format!("{what}: {e}"))
}

/// An HNSW graph over unit vectors (inner-product metric).
pub struct Graph {
    index: Index,
    params: AnnParams,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph").field("len", &self.len()).field("params", &self.params).finish()
    }
}

impl Graph {
    /// An empty graph for `dim`-wide vectors stored in `precision`.
    pub fn new(dim: usize, precision: Precision, params: AnnParams) -> Result<Graph> {
        let quantization = match precision {
            Precision::F32 => ScalarKind::F32,
            Precision::F16 => ScalarKind::F16,
            Precision::Int8 => ScalarKind::I8,
        };
        let options = IndexOptions {
            dimensions: dim,
            metric: MetricKind::IP,
            quantization,
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(|e| ann_error("creating the graph", e))?;
        Ok(Graph { index, params })
    }

    /// Maps a saved graph from disk without reading it into memory (read-only).
    pub fn view(path: &Path, params: AnnParams) -> Result<Graph> {
        let index = Index::restore_view(&path_str(path)?)
            .map_err(|e| ann_error(&format!("mapping {}", path.display()), e))?;
        Self::ready(index, params)
    }

    /// Reads a saved graph into memory (so more vectors can be added).
    pub fn load(path: &Path, params: AnnParams) -> Result<Graph> {
        let index = Index::restore(&path_str(path)?)
            .map_err(|e| ann_error(&format!("loading {}", path.display()), e))?;
        Self::ready(index, params)
    }

    fn ready(index: Index, params: AnnParams) -> Result<Graph> {
        index.change_expansion_search(params.expansion_search);
        let graph = Graph { index, params };
        graph.reserve(0)?;
        Ok(graph)
    }

    /// Room for `more` vectors and a search context per worker thread.
    fn reserve(&self, more: usize) -> Result<()> {
        let threads = rayon::current_num_threads().max(1);
        self.index
            .reserve_capacity_and_threads(self.len() + more, threads)
            .map_err(|e| ann_error("reserving memory", e))
    }

    /// Number of vectors in the graph.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// Whether the graph holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts vectors under their keys, one at a time: usearch 2.x's
    /// concurrent `add` can leave nodes that are stored but unreachable by
    /// search (usearch issue #735), which a live document must never be.
    pub fn add_all(&self, items: &[(u64, Vec<f32>)]) -> Result<()> {
        self.reserve(items.len())?;
        items.iter().try_for_each(|(key, v)| {
            self.index.add(*key, v).map_err(|e| ann_error("adding a vector", e))
        })
    }

    /// Saves the graph durably (temp file, fsync, rename, directory fsync).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = durable::temp_path(path);
        self.index
            .save(&path_str(&tmp)?)
            .map_err(|e| ann_error(&format!("saving {}", tmp.display()), e))?;
        durable::sync_file(&tmp)?;
        Ok(durable::rename(&tmp, path)?)
    }

    /// The `k` nearest keys that `keep` accepts, with their inner products, best first.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>> {
        self.nearest(k, || self.index.filtered_search(query, k, keep))
    }

    /// [`Graph::search`] over every key.
    pub fn search_all(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>> {
        self.nearest(k, || self.index.search(query, k))
    }

    fn nearest<E: std::fmt::Display>(
        &self,
        k: usize,
        search: impl FnOnce() -> std::result::Result<usearch::ffi::Matches, E>,
    ) -> Result<Vec<(u64, f32)>> {
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let found = search().map_err(|e| ann_error("searching", e))?;
        Ok(found.keys.into_iter().zip(found.distances).map(|(key, d)| (key, 1.0 - d)).collect())
    }
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| IndexError::Invalid(format!("path {} is not UTF-8", path.display())))
}
