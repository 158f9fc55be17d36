//! Exact top-k search: dot products over tiles of rows (AVX2+FMA when the CPU
//! has it), a bounded best-first list per query, and [`ExactSearch`], which
//! scores fixed queries against a corpus fed in blocks (memory stays at queries +
//! one block + k hits per query however large the corpus is).
//!
//! Ties in score are broken by a caller-given order; [`ExactSearch`] ranks the
//! larger corpus id first, as trec_eval does, so rankings agree with pytrec_eval.

use std::cmp::Ordering;

use rayon::prelude::*;

use crate::error::{IndexError, Result};
use crate::vectors::Rows;

/// Queries scored together against one tile of rows.
pub const QUERY_TILE: usize = 32;
/// Rows per tile (a tile of 384-wide f32 rows is ~200 KB, within L2).
pub const ROW_TILE: usize = 128;

/// The `k` best items seen so far, best first.
#[derive(Debug, Clone)]
pub struct TopK<T> {
    k: usize,
    items: Vec<(f32, T)>,
}

impl<T: Copy> TopK<T> {
    /// An empty list keeping at most `k` items.
    pub fn new(k: usize) -> Self {
        Self { k, items: Vec::with_capacity(k.min(1024) + 1) }
    }

    /// Whether a candidate scoring `score` can still enter (ties may).
    #[inline]
    pub fn admits(&self, score: f32) -> bool {
        self.k > 0 && (self.items.len() < self.k || score >= self.items[self.k - 1].0)
    }

    /// Offers a candidate; `first(a, b)` says whether `a` ranks before `b` at equal score.
    #[inline]
    pub fn offer(&mut self, score: f32, item: T, first: impl Fn(&T, &T) -> bool) {
        if !self.admits(score) {
            return;
        }
        let at = self.items.partition_point(|(s, other)| match s.total_cmp(&score) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => !first(&item, other),
        });
        if at < self.k {
            self.items.insert(at, (score, item));
            self.items.truncate(self.k);
        }
    }

    /// Offers every item of `other`.
    pub fn merge(&mut self, other: TopK<T>, first: impl Fn(&T, &T) -> bool) {
        for (score, item) in other.items {
            self.offer(score, item, &first);
        }
    }

    /// The items, best first.
    pub fn into_sorted(self) -> Vec<(f32, T)> {
        self.items
    }
}

/// Dot product of two equally long vectors (the same number [`dots`] gives).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut out = [0.0];
    dots(a, b, a.len(), &mut out);
    out[0]
}

/// `out[j * n + r]` = dot of query `j` with row `r`, for queries and `n` rows
/// given row-major, `dim` wide. Blocks of queries x rows share each load; every
/// (query, row) pair is summed in the same order whatever the blocking, so a
/// score does not depend on which other queries or rows came with it.
pub fn dots(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    if dim == 0 {
        out.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { x86::dots(queries, rows, dim, out) };
        return;
    }
    dots_portable(queries, rows, dim, out);
}

/// [`dots`] for any CPU: eight lanes per pair, summed as the AVX2 path does.
fn dots_portable(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    let n = rows.len() / dim;
    for (j, q) in queries.chunks_exact(dim).enumerate() {
        for (r, row) in rows.chunks_exact(dim).enumerate() {
            let mut acc = [0.0f32; 8];
            let (cq, cr) = (q.chunks_exact(8), row.chunks_exact(8));
            let tail: f32 = cq.remainder().iter().zip(cr.remainder()).map(|(x, y)| x * y).sum();
            for (x, y) in cq.zip(cr) {
                for i in 0..8 {
                    acc[i] += x[i] * y[i];
                }
            }
            let quads = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
            out[j * n + r] = ((quads[0] + quads[2]) + (quads[1] + quads[3])) + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::dots`] in blocks of 4 queries x 2 rows (1 query x 4 rows for
    /// the last queries), one FMA accumulator per pair.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
        let (nq, n) = (queries.len() / dim, rows.len() / dim);
        let mut j = 0;
        // SAFETY (both calls): blocks stay inside `queries`, `rows` and `out`.
        while j + 4 <= nq {
            unsafe { all_rows::<4, 2>(queries, rows, dim, out, j, n) };
            j += 4;
        }
        while j < nq {
            unsafe { all_rows::<1, 4>(queries, rows, dim, out, j, n) };
            j += 1;
        }
    }

    /// Queries `j..j+Q` against every row, R rows at a time, then one by one.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn all_rows<const Q: usize, const R: usize>(
        queries: &[f32],
        rows: &[f32],
        dim: usize,
        out: &mut [f32],
        j: usize,
        n: usize,
    ) {
        let mut r = 0;
        // SAFETY: r + R <= n (then r < n) rows exist; the caller checked the queries.
        unsafe {
            while r + R <= n {
                block::<Q, R>(queries, rows, dim, out, j, r, n);
                r += R;
            }
            while r < n {
                block::<Q, 1>(queries, rows, dim, out, j, r, n);
                r += 1;
            }
        }
    }

    /// Scores queries `j..j+Q` against rows `r..r+R`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const Q: usize, const R: usize>(
        queries: &[f32],
        rows: &[f32],
        dim: usize,
        out: &mut [f32],
        j: usize,
        r: usize,
        n: usize,
    ) {
        debug_assert!(
            (j + Q) * dim <= queries.len()
                && (r + R) * dim <= rows.len()
                && (j + Q - 1) * n + r + R <= out.len()
        );
        let qp: [*const f32; Q] = std::array::from_fn(|a| queries[(j + a) * dim..].as_ptr());
        let rp: [*const f32; R] = std::array::from_fn(|b| rows[(r + b) * dim..].as_ptr());
        let mut acc = [[_mm256_setzero_ps(); R]; Q];
        let mut i = 0;
        while i + 8 <= dim {
            // SAFETY: i + 8 <= dim and every pointer starts a `dim`-long slice.
            unsafe {
                let rv: [__m256; R] = std::array::from_fn(|b| _mm256_loadu_ps(rp[b].add(i)));
                for a in 0..Q {
                    let qv = _mm256_loadu_ps(qp[a].add(i));
                    for b in 0..R {
                        acc[a][b] = _mm256_fmadd_ps(qv, rv[b], acc[a][b]);
                    }
                }
            }
            i += 8;
        }
        for a in 0..Q {
            let q = &queries[(j + a) * dim..(j + a + 1) * dim];
            for b in 0..R {
                let row = &rows[(r + b) * dim..(r + b + 1) * dim];
                let tail: f32 = q[i..].iter().zip(&row[i..]).map(|(x, y)| x * y).sum();
                out[(j + a) * n + r + b] = hsum(acc[a][b]) + tail;
            }
        }
    }

    /// Lanes summed as ((0+4) + (2+6)) + ((1+5) + (3+7)).
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let quads = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pairs = _mm_add_ps(quads, _mm_movehl_ps(quads, quads));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }
}

/// Scores queries (row-major, `dim` wide) against `rows[range]` tile by tile
/// and offers every row that `keep` accepts to its query's list as
/// `item(row)`; `first` orders equal scores.
#[allow(clippy::too_many_arguments)]
pub fn scan<T: Copy>(
    queries: &[f32],
    dim: usize,
    rows: &Rows,
    range: std::ops::Range<usize>,
    keep: impl Fn(usize) -> bool,
    item: impl Fn(usize) -> T,
    first: impl Fn(&T, &T) -> bool + Copy,
    tops: &mut [TopK<T>],
) {
    let mut buf = Vec::new();
    let n_queries = queries.len() / dim.max(1);
    let mut scores = vec![0.0f32; n_queries * ROW_TILE];
    let mut start = range.start;
    while start < range.end {
        let count = ROW_TILE.min(range.end - start);
        let tile = rows.tile(start, count, dim, &mut buf);
        dots(queries, tile, dim, &mut scores[..n_queries * count]);
        for (j, top) in tops.iter_mut().enumerate().take(n_queries) {
            for (r, &score) in scores[j * count..(j + 1) * count].iter().enumerate() {
                if top.admits(score) && keep(start + r) {
                    top.offer(score, item(start + r), first);
                }
            }
        }
        start += count;
    }
}

/// One result of [`ExactSearch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Index of the document in the corpus.
    pub doc: usize,
    /// Cosine similarity.
    pub score: f32,
}

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
    sembase_embed::vectors::normalize(&mut v);
    v
}

/// A corpus document in [`ExactSearch`]: its tie-break key and index.
#[derive(Debug, Clone, Copy)]
struct Doc {
    tie: u32,
    index: usize,
}

/// Exact top-k search of fixed queries over a corpus fed in blocks.
pub struct ExactSearch {
    dim: usize,
    /// Normalised queries, row-major.
    queries: Vec<f32>,
    tops: Vec<TopK<Doc>>,
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
                return Err(IndexError::Invalid(format!(
                    "query vectors differ in width ({} and {dim})",
                    q.len()
                )));
            }
            flat.extend(normalized(q));
        }
        let tops = (0..queries.len()).map(|_| TopK::new(k)).collect();
        Ok(Self { dim, queries: flat, tops, tie, next_doc: 0 })
    }

    /// Scores the next block of corpus documents (in corpus order) against every query.
    pub fn add_block(&mut self, docs: &[Vec<f32>]) -> Result<()> {
        let first = self.next_doc;
        if first + docs.len() > self.tie.len() {
            return Err(IndexError::Invalid(format!(
                "more documents than the {} announced",
                self.tie.len()
            )));
        }
        let mut flat = Vec::with_capacity(docs.len() * self.dim);
        for d in docs {
            if d.len() != self.dim {
                return Err(IndexError::Invalid(format!(
                    "document vectors are {} wide, queries {}",
                    d.len(),
                    self.dim
                )));
            }
            flat.extend(normalized(d));
        }
        self.next_doc += docs.len();
        if self.dim == 0 {
            return Ok(());
        }
        let (dim, tie) = (self.dim, &self.tie);
        let rows = Rows::F32(&flat);
        let later_id_first = |a: &Doc, b: &Doc| a.tie > b.tie;
        self.queries
            .par_chunks(dim * QUERY_TILE)
            .zip(self.tops.par_chunks_mut(QUERY_TILE))
            .for_each(|(qs, tops)| {
                let item = |row: usize| Doc { tie: tie[first + row], index: first + row };
                scan(qs, dim, &rows, 0..docs.len(), |_| true, item, later_id_first, tops);
            });
        Ok(())
    }

    /// The hits of every query, best first.
    pub fn finish(self) -> Vec<Vec<Hit>> {
        self.tops
            .into_iter()
            .map(|top| {
                top.into_sorted()
                    .into_iter()
                    .map(|(score, d)| Hit { doc: d.index, score })
                    .collect()
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
                let mut all: Vec<(f32, &str, usize)> = docs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (dot(&q, &normalized(d)), ids[i].as_str(), i))
                    .collect();
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
        let got: Vec<Vec<usize>> =
            search.finish().into_iter().map(|h| h.into_iter().map(|h| h.doc).collect()).collect();
        assert_eq!(got, brute(&queries, &docs, &ids, 20));
    }

    #[test]
    fn width_mismatch_is_an_error() {
        let mut search = ExactSearch::new(&[vec![1.0, 0.0]], 1, vec![0]).unwrap();
        assert!(search.add_block(&[vec![1.0, 0.0, 0.0]]).is_err());
    }

    #[test]
    fn blocked_scores_equal_single_pair_scores_and_the_portable_path() {
        for dim in [1, 7, 8, 31, 32, 33, 384] {
            let queries: Vec<f32> = (0..dim * 6).map(|i| (i as f32 * 0.13).cos()).collect();
            let rows: Vec<f32> = (0..dim * 7).map(|i| (i as f32 * 0.71).sin()).collect();
            let (mut fast, mut slow) = (vec![0.0; 42], vec![0.0; 42]);
            dots(&queries, &rows, dim, &mut fast);
            dots_portable(&queries, &rows, dim, &mut slow);
            for j in 0..6 {
                for r in 0..7 {
                    let single =
                        dot(&queries[j * dim..(j + 1) * dim], &rows[r * dim..(r + 1) * dim]);
                    assert_eq!(
                        fast[j * 7 + r].to_bits(),
                        single.to_bits(),
                        "dim {dim} pair ({j}, {r})"
                    );
                    assert!(
                        (fast[j * 7 + r] - slow[j * 7 + r]).abs() <= 1e-4 * dim as f32,
                        "dim {dim}"
                    );
                }
            }
        }
    }

    #[test]
    fn top_k_keeps_the_best_with_the_given_tie_order() {
        let mut top = TopK::new(3);
        for (score, id) in [(0.5, 1), (0.9, 2), (0.5, 3), (0.1, 4), (0.5, 5), (0.7, 6)] {
            top.offer(score, id, |a: &i32, b: &i32| a > b);
        }
        assert_eq!(top.into_sorted(), vec![(0.9, 2), (0.7, 6), (0.5, 5)]);
    }
}
