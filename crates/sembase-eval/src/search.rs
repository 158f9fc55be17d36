//! Exact cosine top-k search. Queries are held in memory; the corpus is fed in
//! blocks, so memory stays at (queries + one block + k hits per query) however
//! large the corpus is. Each query keeps a bounded heap of its k best hits.
//!
//! Ties in score are broken by corpus id, larger id first, as trec_eval does, so
//! rankings and [`crate::metrics::retrieval`] agree with pytrec_eval.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::error::{EvalError, Result};

/// Queries scored together against one tile of documents.
const QUERY_TILE: usize = 32;
/// Documents per tile (keeps a tile of document vectors in cache).
const DOC_TILE: usize = 128;

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Index of the document in the corpus.
    pub doc: usize,
    /// Cosine similarity.
    pub score: f32,
}

/// A heap entry; `Ord` says which hit is better.
#[derive(Debug, Clone, Copy)]
struct Entry {
    score: f32,
    tie: u32,
    doc: usize,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(self.tie.cmp(&other.tie))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

/// The position of each id in ascending byte order: the tie-break key of
/// [`ExactSearch`] (a larger key ranks first among equal scores).
pub fn id_ranks<S: AsRef<str>>(ids: &[S]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by(|&a, &b| ids[a].as_ref().cmp(ids[b].as_ref()));
    let mut ranks = vec![0u32; ids.len()];
    for (rank, i) in order.into_iter().enumerate() {
        ranks[i] = rank as u32;
    }
    ranks
}

/// A unit-length copy of `v` (a zero vector stays zero).
fn normalized(v: &[f32]) -> Vec<f32> {
    let mut v = v.to_vec();
    sembase_core::vectors::normalize(&mut v);
    v
}

/// Dot product with eight independent accumulators (vectorises well).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Exact top-k search of fixed queries over a corpus fed in blocks.
pub struct ExactSearch {
    dim: usize,
    k: usize,
    /// Normalised queries, row-major.
    queries: Vec<f32>,
    /// Per query, its k best hits so far with the worst on top.
    heaps: Vec<BinaryHeap<Reverse<Entry>>>,
    /// Tie-break key per corpus document (see [`id_ranks`]).
    tie: Vec<u32>,
    /// Documents seen so far; blocks must arrive in corpus order.
    next_doc: usize,
}

impl ExactSearch {
    /// Prepares a search for `queries` keeping `k` hits each; `tie` has one key per
    /// corpus document.
    pub fn new(queries: &[Vec<f32>], k: usize, tie: Vec<u32>) -> Result<Self> {
        let dim = queries.first().map_or(0, Vec::len);
        let mut flat = Vec::with_capacity(queries.len() * dim);
        for q in queries {
            if q.len() != dim {
                return Err(EvalError::Invalid(format!("query vectors differ in width ({} and {dim})", q.len())));
            }
            flat.extend(normalized(q));
        }
        let heaps = (0..queries.len()).map(|_| BinaryHeap::with_capacity(k + 1)).collect();
        Ok(Self { dim, k, queries: flat, heaps, tie, next_doc: 0 })
    }

    /// Scores the next block of corpus documents (in corpus order) against every query.
    pub fn add_block(&mut self, docs: &[Vec<f32>]) -> Result<()> {
        let first = self.next_doc;
        if first + docs.len() > self.tie.len() {
            return Err(EvalError::Invalid(format!("more documents than the {} announced", self.tie.len())));
        }
        let mut flat = Vec::with_capacity(docs.len() * self.dim);
        for d in docs {
            if d.len() != self.dim {
                return Err(EvalError::Invalid(format!("document vectors are {} wide, queries {}", d.len(), self.dim)));
            }
            flat.extend(normalized(d));
        }
        self.next_doc += docs.len();
        if self.dim == 0 || self.k == 0 {
            return Ok(());
        }
        let (dim, k, tie) = (self.dim, self.k, &self.tie);
        self.queries.par_chunks(dim * QUERY_TILE).zip(self.heaps.par_chunks_mut(QUERY_TILE)).for_each(|(qs, heaps)| {
            for (tile_no, tile) in flat.chunks(dim * DOC_TILE).enumerate() {
                let tile_first = first + tile_no * DOC_TILE;
                for (q, heap) in qs.chunks_exact(dim).zip(heaps.iter_mut()) {
                    for (j, d) in tile.chunks_exact(dim).enumerate() {
                        let doc = tile_first + j;
                        let entry = Entry { score: dot(q, d), tie: tie[doc], doc };
                        if heap.len() < k {
                            heap.push(Reverse(entry));
                        } else if heap.peek().is_some_and(|Reverse(worst)| entry > *worst) {
                            heap.pop();
                            heap.push(Reverse(entry));
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// The hits of every query, best first.
    pub fn finish(self) -> Vec<Vec<Hit>> {
        self.heaps
            .into_iter()
            .map(|heap| {
                let mut entries: Vec<Entry> = heap.into_iter().map(|Reverse(e)| e).collect();
                entries.sort_by(|a, b| b.cmp(a));
                entries.into_iter().map(|e| Hit { doc: e.doc, score: e.score }).collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A brute-force ranking to compare with.
    fn brute(queries: &[Vec<f32>], docs: &[Vec<f32>], ids: &[String], k: usize) -> Vec<Vec<usize>> {
        queries
            .iter()
            .map(|q| {
                let q = normalized(q);
                let mut all: Vec<(f32, &str, usize)> =
                    docs.iter().enumerate().map(|(i, d)| (dot(&q, &normalized(d)), ids[i].as_str(), i)).collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(a.1)));
                all.into_iter().take(k).map(|x| x.2).collect()
            })
            .collect()
    }

    #[test]
    fn blocks_give_the_brute_force_ranking_with_ties() {
        // Vectors on a coarse grid so that many scores tie exactly.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) % 3) as f32 - 1.0
        };
        let docs: Vec<Vec<f32>> = (0..500).map(|_| (0..5).map(|_| next()).collect()).collect();
        let queries: Vec<Vec<f32>> = (0..70).map(|_| (0..5).map(|_| next()).collect()).collect();
        let ids: Vec<String> = (0..docs.len()).map(|i| format!("d{}", (i * 7919) % 1000)).collect();
        let mut search = ExactSearch::new(&queries, 20, id_ranks(&ids)).unwrap();
        for block in docs.chunks(33) {
            search.add_block(block).unwrap();
        }
        let got: Vec<Vec<usize>> = search.finish().into_iter().map(|h| h.into_iter().map(|h| h.doc).collect()).collect();
        assert_eq!(got, brute(&queries, &docs, &ids, 20));
    }

    #[test]
    fn width_mismatch_is_an_error() {
        let mut search = ExactSearch::new(&[vec![1.0, 0.0]], 1, vec![0]).unwrap();
        assert!(search.add_block(&[vec![1.0, 0.0, 0.0]]).is_err());
    }
}
