//! The `ann` store: the same segment files as `flat`, plus a usearch HNSW graph
//! (see [`crate::graph`] for why usearch) saved as one file, memory-mapped for
//! search and named by the manifest.
//!
//! The graph covers every document version with a slot below its
//! `slot_limit`; newer versions (the *delta*) are searched exactly and merged
//! with the graph's hits, and deleted or replaced versions are skipped by the
//! search predicate. After a write, when the delta outgrows
//! `max(delta_limit, graph/10)` (see [`AnnParams`]), the graph is reloaded, extended and saved as a
//! new file; when over a quarter of its vectors are dead it is rebuilt from
//! the live documents. The graph file is committed through the manifest like
//! a segment, so a crash leaves the old graph or the new one.

use std::path::Path;

use rayon::prelude::*;

use crate::error::Result;
use crate::flat::{flatten_queries, to_hits};
use crate::graph::{AnnParams, Graph};
use crate::manifest::GraphRef;
use crate::segments::{Access, Loc, Segments};
use crate::store::{Document, Filter, Hit, IndexSettings, VectorStore};
use crate::vectors::Precision;

/// HNSW search over an index directory, with an exact delta.
#[derive(Debug)]
pub struct AnnStore {
    settings: IndexSettings,
    precision: Precision,
    params: AnnParams,
    segments: Segments,
    graph: Option<Graph>,
    /// Whether every vector in the graph is a live document (then unfiltered
    /// searches skip the per-candidate liveness check).
    graph_clean: bool,
}

impl AnnStore {
    /// Opens the store in `dir`, mapping its graph file.
    pub fn open(
        dir: &Path,
        settings: IndexSettings,
        precision: Precision,
        params: AnnParams,
        access: Access,
    ) -> Result<Self> {
        let segments = Segments::open(dir, settings.dimensions, precision, access)?;
        let graph = match &segments.manifest().graph {
            Some(g) => Some(Graph::view(&dir.join(&g.file), params)?),
            None => None,
        };
        let mut store = Self { settings, precision, params, segments, graph, graph_clean: false };
        store.graph_clean = store.is_graph_clean();
        Ok(store)
    }

    fn is_graph_clean(&self) -> bool {
        self.graph.as_ref().is_some_and(|g| g.len() == self.live_split().0)
    }

    /// Slots below this are in the graph.
    fn slot_limit(&self) -> u64 {
        self.segments.manifest().graph.as_ref().map_or(0, |g| g.slot_limit)
    }

    /// Live documents inside and outside the graph's slot range.
    fn live_split(&self) -> (usize, usize) {
        let limit = self.slot_limit();
        let mut inside = 0;
        for (seg, live) in self.segments.segments().iter().zip(self.segments.live()) {
            inside += seg.slots().iter().zip(live).filter(|(&slot, &l)| l && slot < limit).count();
        }
        (inside, self.segments.count() - inside)
    }

    /// Extends or rebuilds the graph when the delta or the dead share grew too large.
    fn refresh_graph(&mut self) -> Result<()> {
        let (inside, delta) = self.live_split();
        let graph_len = self.graph.as_ref().map_or(0, Graph::len);
        let dead = graph_len.saturating_sub(inside);
        let rebuild = dead > 0 && dead * 4 > graph_len;
        if !rebuild && delta <= self.params.delta_limit.max(graph_len / 10) {
            return Ok(());
        }
        let dir = self.segments.dir().to_path_buf();
        let (graph, from_slot) = match (&self.segments.manifest().graph, rebuild) {
            (Some(current), false) => {
                (Graph::load(&dir.join(&current.file), self.params)?, self.slot_limit())
            }
            _ => (Graph::new(self.settings.dimensions, self.precision, self.params)?, 0),
        };
        let mut items = Vec::with_capacity(delta);
        for (seg_no, (seg, live)) in
            self.segments.segments().iter().zip(self.segments.live()).enumerate()
        {
            for (row, (&slot, &l)) in seg.slots().iter().zip(live).enumerate() {
                if l && slot >= from_slot {
                    items.push((
                        slot,
                        self.segments.vector(Loc { seg: seg_no as u32, row: row as u32 }),
                    ));
                }
            }
        }
        graph.add_all(&items)?;
        drop(items);
        let file = format!("graph-{:010}.usearch", self.segments.next_generation());
        graph.save(&dir.join(&file))?;
        drop(graph);
        let slot_limit = self.segments.manifest().next_slot;
        self.segments.commit_graph(GraphRef { file: file.clone(), slot_limit })?;
        self.graph = Some(Graph::view(&dir.join(file), self.params)?);
        Ok(())
    }

    /// Rebuilds or extends the graph when needed, then notes whether it is clean.
    fn after_write(&mut self) -> Result<()> {
        let refreshed = self.refresh_graph();
        self.graph_clean = self.is_graph_clean();
        refreshed
    }
}

impl VectorStore for AnnStore {
    fn settings(&self) -> &IndexSettings {
        &self.settings
    }

    fn upsert(&mut self, docs: &[Document]) -> Result<()> {
        self.segments.upsert(docs)?;
        self.after_write()
    }

    fn delete(&mut self, ids: &[String]) -> Result<usize> {
        let removed = self.segments.delete(ids)?;
        if removed > 0 {
            self.after_write()?;
        }
        Ok(removed)
    }

    fn search(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Vec<Hit>>> {
        let dim = self.settings.dimensions;
        let flat = flatten_queries(queries, dim)?;
        let allowed = self.segments.allowed(filter)?;
        let limit = self.slot_limit();
        let mut tops = self.segments.scan(&flat, k, &allowed, limit);
        if let Some(graph) = &self.graph {
            let segments = &self.segments;
            let locate = |slot: u64| {
                segments.locate_slot(slot).filter(|loc| allowed[loc.seg as usize][loc.row as usize])
            };
            let unfiltered = filter.is_none() && self.graph_clean;
            let found: Vec<Vec<(u64, f32)>> = flat
                .par_chunks(dim.max(1))
                .map(|q| {
                    if unfiltered {
                        graph.search_all(q, k)
                    } else {
                        graph.search(q, k, |slot| slot < limit && locate(slot).is_some())
                    }
                })
                .collect::<Result<_>>()?;
            let first = |a: &Loc, b: &Loc| segments.id_first(a, b);
            for (top, hits) in tops.iter_mut().zip(found) {
                for (slot, score) in hits {
                    if let Some(loc) = locate(slot) {
                        top.offer(score, loc, first);
                    }
                }
            }
        }
        to_hits(&self.segments, tops)
    }

    fn count(&self) -> Result<usize> {
        Ok(self.segments.count())
    }
}
