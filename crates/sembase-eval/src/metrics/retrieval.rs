//! Retrieval measures as pytrec_eval (trec_eval) defines them, with relevance
//! level 1: a document is relevant when its grade is >= 1.
//!
//! - recall@k = relevant documents in the top k / relevant documents judged
//!   (`recall_k`);
//! - MRR@10 = 1 / rank of the first relevant document within the top 10, else 0
//!   (`recip_rank` over the run cut at 10, as BEIR computes MRR@k);
//! - nDCG@10 with gain = the grade, discount log2(rank + 1) and the ideal
//!   ordering of all judged grades (`ndcg_cut_10`);
//! - MAP@100 = sum of precision at each relevant document within the top 100,
//!   divided by all relevant documents judged (`map_cut_100`). For queries with
//!   at most 100 relevant documents this equals sentence-transformers'
//!   `InformationRetrievalEvaluator`, which divides by min(100, relevant).
//!
//! A query whose judgments hold no relevant document scores 0 on everything, as
//! in trec_eval. Rankings break score ties by corpus id, larger id first, as
//! trec_eval does ([`crate::search`] ranks that way).

use std::collections::HashMap;

/// The k of recall@k.
pub const RECALL_AT: [usize; 4] = [1, 5, 10, 100];
/// The cut-off of MRR.
pub const MRR_CUTOFF: usize = 10;
/// The cut-off of nDCG.
pub const NDCG_CUTOFF: usize = 10;
/// The cut-off of MAP.
pub const MAP_CUTOFF: usize = 100;

/// The measures of one query (fractions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryScores {
    /// recall@k for each k of [`RECALL_AT`].
    pub recall: [f64; RECALL_AT.len()],
    pub mrr: f64,
    pub ndcg: f64,
    pub map: f64,
}

impl QueryScores {
    /// Scores a ranking (document ids, best first, no repeats) against one query's
    /// graded judgments.
    pub fn compute(ranked: &[&str], grades: &HashMap<String, i32>) -> QueryScores {
        let grade = |id: &str| grades.get(id).copied().unwrap_or(0);
        let relevant_total = grades.values().filter(|&&g| g >= 1).count();
        let mut scores =
            QueryScores { recall: [0.0; RECALL_AT.len()], mrr: 0.0, ndcg: 0.0, map: 0.0 };
        if relevant_total == 0 {
            return scores;
        }
        let is_relevant: Vec<bool> = ranked.iter().map(|id| grade(id) >= 1).collect();

        for (slot, &k) in RECALL_AT.iter().enumerate() {
            let found = is_relevant.iter().take(k).filter(|&&r| r).count();
            scores.recall[slot] = found as f64 / relevant_total as f64;
        }

        if let Some(rank) = is_relevant.iter().take(MRR_CUTOFF).position(|&r| r) {
            scores.mrr = 1.0 / (rank + 1) as f64;
        }

        let discount = |rank: usize| 1.0 / ((rank + 2) as f64).log2();
        let dcg: f64 = ranked
            .iter()
            .take(NDCG_CUTOFF)
            .enumerate()
            .map(|(r, id)| grade(id).max(0) as f64 * discount(r))
            .sum();
        let mut ideal: Vec<i32> = grades.values().copied().filter(|&g| g > 0).collect();
        ideal.sort_unstable_by(|a, b| b.cmp(a));
        let idcg: f64 =
            ideal.iter().take(NDCG_CUTOFF).enumerate().map(|(r, &g)| g as f64 * discount(r)).sum();
        if idcg > 0.0 {
            scores.ndcg = dcg / idcg;
        }

        let mut hits = 0usize;
        let mut precision_sum = 0.0;
        for (rank, _) in is_relevant.iter().take(MAP_CUTOFF).enumerate().filter(|(_, &r)| r) {
            hits += 1;
            precision_sum += hits as f64 / (rank + 1) as f64;
        }
        scores.map = precision_sum / relevant_total as f64;
        scores
    }
}

/// The measures averaged over queries (fractions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrievalScores {
    /// How many queries were averaged.
    pub queries: usize,
    pub recall: [f64; RECALL_AT.len()],
    pub mrr: f64,
    pub ndcg: f64,
    pub map: f64,
}

impl RetrievalScores {
    /// The mean of per-query scores (all zero for no queries).
    pub fn mean(per_query: &[QueryScores]) -> RetrievalScores {
        let n = per_query.len().max(1) as f64;
        let mut recall = [0.0; RECALL_AT.len()];
        for (slot, r) in recall.iter_mut().enumerate() {
            *r = per_query.iter().map(|q| q.recall[slot]).sum::<f64>() / n;
        }
        RetrievalScores {
            queries: per_query.len(),
            recall,
            mrr: per_query.iter().map(|q| q.mrr).sum::<f64>() / n,
            ndcg: per_query.iter().map(|q| q.ndcg).sum::<f64>() / n,
            map: per_query.iter().map(|q| q.map).sum::<f64>() / n,
        }
    }

    /// (name, fraction) in report order: recall@k..., mrr@10, ndcg@10, map@100.
    pub fn named(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> =
            RECALL_AT.iter().zip(self.recall).map(|(k, v)| (format!("recall@{k}"), v)).collect();
        out.push((format!("mrr@{MRR_CUTOFF}"), self.mrr));
        out.push((format!("ndcg@{NDCG_CUTOFF}"), self.ndcg));
        out.push((format!("map@{MAP_CUTOFF}"), self.map));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grades(pairs: &[(&str, i32)]) -> HashMap<String, i32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    #[test]
    fn hand_computed_query() {
        // Relevant: a (grade 2), c (grade 1); z is judged irrelevant; d is unjudged.
        let g = grades(&[("a", 2), ("c", 1), ("z", 0)]);
        let s = QueryScores::compute(&["d", "a", "z", "c"], &g);
        assert_eq!(s.recall[0], 0.0);
        assert_eq!(s.recall[1], 1.0);
        assert_eq!(s.mrr, 0.5);
        let dcg = 2.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2();
        assert!((s.ndcg - dcg / idcg).abs() < 1e-12);
        assert!((s.map - (0.5 + 0.5) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn query_without_relevant_documents_scores_zero() {
        let s = QueryScores::compute(&["a"], &grades(&[("a", 0)]));
        assert_eq!(s, QueryScores { recall: [0.0; 4], mrr: 0.0, ndcg: 0.0, map: 0.0 });
    }
}
