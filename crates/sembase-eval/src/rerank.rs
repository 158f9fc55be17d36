//! The second stage of retrieval: a cross-encoder reorders the top of each
//! bi-encoder ranking, and the same figures are computed on the new rankings.
//!
//! Queries are read as the task gives them, without the bi-encoder's prefix
//! (`query: ` is an instruction to that model, not to the cross-encoder), and
//! documents as `title + " " + text`, the text the bi-encoder embedded.

use std::time::Instant;

use sembase_embed::reranker::ranked;
use sembase_embed::{PairTokens, Reranker, Truncation};

use crate::beir::RetrievalSet;
use crate::encode::Progress;
use crate::error::{EvalError, Result};
use crate::results::RerankInfo;

/// Pairs tokenized and scored per call into the reranker: enough for it to fill
/// its token-budget batches across queries, few enough to show progress.
const PAIR_CHUNK: usize = 2048;

/// A cross-encoder and how deep into each ranking it reads.
#[derive(Clone, Copy)]
pub struct Rerank<'a> {
    pub reranker: &'a dyn Reranker,
    /// Documents reranked at the top of each ranking; the ones below keep their order.
    pub depth: usize,
}

impl Rerank<'_> {
    /// Reorders the top [`depth`](Self::depth) of each ranking (corpus indices, best
    /// first, one per judged query of `set`) by the cross-encoder; the documents
    /// below stay after them in the bi-encoder's order.
    ///
    /// Orders by raw logits: the activation is monotonic, and a sigmoid saturated
    /// at 1.0 in f32 would tie documents the logits still tell apart.
    pub fn rerank(
        &self,
        set: &RetrievalSet,
        rankings: &[Vec<usize>],
        what: &str,
        progress: &dyn Progress,
    ) -> Result<(Vec<Vec<usize>>, RerankInfo)> {
        let started = Instant::now();
        let heads: Vec<&[usize]> = rankings.iter().map(|r| &r[..r.len().min(self.depth)]).collect();
        let total: usize = heads.iter().map(|h| h.len()).sum();
        progress.start(&format!("{what} rerank pairs"), total);
        let scores = self.score_heads(set, &heads, progress);
        progress.finish();
        let mut scores = scores?.into_iter();
        let reranked = rankings
            .iter()
            .zip(&heads)
            .map(|(ranking, head)| {
                let head_scores: Vec<f32> = scores.by_ref().take(head.len()).collect();
                reorder(ranking, &head_scores)
            })
            .collect();
        let info = RerankInfo {
            model: self.reranker.name().to_string(),
            depth: self.depth,
            pairs: total,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((reranked, info))
    }

    /// Logits of every (query, document) pair of `heads`, query after query, scored
    /// in chunks of about [`PAIR_CHUNK`] pairs.
    fn score_heads(
        &self,
        set: &RetrievalSet,
        heads: &[&[usize]],
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        let mut scores = Vec::new();
        let mut pending: Vec<PairTokens> = Vec::new();
        for (head, judged) in heads.iter().zip(&set.judged) {
            let query = &set.queries[judged.query].text;
            for &doc in head.iter() {
                let text = set.corpus[doc].full_text();
                pending.push(self.reranker.encode_pair(query, &text, Truncation::Truncate)?);
            }
            if pending.len() >= PAIR_CHUNK {
                self.score_chunk(&mut pending, &mut scores, progress)?;
            }
        }
        self.score_chunk(&mut pending, &mut scores, progress)?;
        Ok(scores)
    }

    /// Scores the `pending` pairs onto `scores` and empties `pending`.
    fn score_chunk(
        &self,
        pending: &mut Vec<PairTokens>,
        scores: &mut Vec<f32>,
        progress: &dyn Progress,
    ) -> Result<()> {
        if !pending.is_empty() {
            let logits = self.reranker.score_pairs(pending)?;
            if logits.len() != pending.len() {
                return Err(EvalError::Invalid(format!(
                    "{} returned {} scores for {} pairs",
                    self.reranker.name(),
                    logits.len(),
                    pending.len()
                )));
            }
            scores.extend(logits);
            progress.advance(pending.len());
            pending.clear();
        }
        Ok(())
    }
}

/// `ranking` with its first `scores.len()` entries sorted by score, highest first
/// (ties keep their order), followed by the rest unchanged.
pub fn reorder(ranking: &[usize], scores: &[f32]) -> Vec<usize> {
    let mut out: Vec<usize> = ranked(scores).into_iter().map(|i| ranking[i]).collect();
    out.extend_from_slice(&ranking[scores.len()..]);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use sembase_embed::{EmbedOptions, Embedder, Embeddings, ScoreActivation};

    use super::*;
    use crate::beir::{Document, Judged, Query};
    use crate::encode::{Encoder, EvalModel, Silent};
    use crate::evaluate::{evaluate_with, Search, Settings};
    use crate::tasks::{ScoredPair, Task, TaskData};

    /// The number a text ends with (documents are `... doc N`), if any.
    fn trailing_number(text: &str) -> Option<u32> {
        text.rsplit(' ').next()?.parse().ok()
    }

    /// Queries embed to (1, 0) and `doc N` to (1, N): the bi-encoder ranks
    /// documents by their number, `doc 0` first.
    struct ByNumber;

    impl Embedder for ByNumber {
        fn name(&self) -> &str {
            "bi"
        }
        fn dimension(&self) -> usize {
            2
        }
        fn max_tokens(&self) -> usize {
            512
        }
        fn embed(&self, texts: &[&str], _: &EmbedOptions) -> sembase_embed::Result<Embeddings> {
            let vectors: Vec<Vec<f32>> =
                texts.iter().map(|t| vec![1.0, trailing_number(t).unwrap_or(0) as f32]).collect();
            Ok(Embeddings { token_counts: vec![1; vectors.len()], vectors })
        }
        fn embed_tokens(
            &self,
            _: &[Vec<u32>],
            _: &EmbedOptions,
        ) -> sembase_embed::Result<Embeddings> {
            unimplemented!("not used by evaluation")
        }
        fn tokenize(&self, _: &str) -> sembase_embed::Result<Vec<u32>> {
            unimplemented!("not used by evaluation")
        }
    }

    /// Scores (query, document number) pairs from a table (0 when absent) and
    /// records the texts it was given.
    struct Chosen {
        logits: HashMap<(String, u32), f32>,
        seen: Mutex<Vec<(String, String)>>,
    }

    impl Chosen {
        fn new(logits: &[(&str, u32, f32)]) -> Self {
            Self {
                logits: logits.iter().map(|&(q, d, x)| ((q.to_string(), d), x)).collect(),
                seen: Mutex::new(Vec::new()),
            }
        }
    }

    impl Reranker for Chosen {
        fn name(&self) -> &str {
            "ce"
        }
        fn max_tokens(&self) -> usize {
            512
        }
        fn activation(&self) -> ScoreActivation {
            ScoreActivation::Sigmoid
        }
        fn encode_pair(
            &self,
            query: &str,
            document: &str,
            _: Truncation,
        ) -> sembase_embed::Result<PairTokens> {
            let mut seen = self.seen.lock().unwrap();
            seen.push((query.to_string(), document.to_string()));
            // The pair's number in `seen` stands for it.
            Ok(PairTokens { ids: vec![seen.len() as u32 - 1], segments: vec![0] })
        }
        fn score_pairs(&self, pairs: &[PairTokens]) -> sembase_embed::Result<Vec<f32>> {
            let seen = self.seen.lock().unwrap();
            Ok(pairs
                .iter()
                .map(|p| {
                    let (query, doc) = &seen[p.ids[0] as usize];
                    let key = (query.clone(), trailing_number(doc).unwrap());
                    self.logits.get(&key).copied().unwrap_or(0.0)
                })
                .collect())
        }
    }

    /// Documents `doc 0` .. `doc 5` (`doc 3` titled "Apples"); "apples" judges
    /// doc 3 relevant, "pears" doc 2.
    fn task() -> Task {
        let corpus = (0..6)
            .map(|n| Document {
                id: format!("d{n}"),
                title: if n == 3 { "Apples".into() } else { String::new() },
                text: format!("doc {n}"),
            })
            .collect();
        let queries = vec![
            Query { id: "q0".into(), text: "apples".into() },
            Query { id: "q1".into(), text: "pears".into() },
        ];
        let judged = vec![
            Judged { query: 0, grades: HashMap::from([("d3".to_string(), 1)]) },
            Judged { query: 1, grades: HashMap::from([("d2".to_string(), 1)]) },
        ];
        let set = RetrievalSet { corpus, queries, judged, report: Default::default() };
        Task { spec: "retrieval:memory".parse().unwrap(), data: TaskData::Retrieval(set) }
    }

    #[test]
    fn reranks_the_top_of_each_query_and_keeps_the_rest_below() {
        let task = task();
        let TaskData::Retrieval(set) = &task.data else { unreachable!() };
        // doc 4 scores highest for "apples" but lies below the depth: it must not move.
        let ce = Chosen::new(&[("apples", 3, 5.0), ("apples", 4, 9.0), ("pears", 2, 1.0)]);
        let rerank = Rerank { reranker: &ce, depth: 4 };
        let rankings = vec![vec![0, 1, 2, 3, 4, 5], vec![0, 1, 2, 3, 4, 5]];
        let (reranked, info) = rerank.rerank(set, &rankings, "t", &Silent).unwrap();
        assert_eq!(reranked, [vec![3, 0, 1, 2, 4, 5], vec![2, 0, 1, 3, 4, 5]]);
        assert_eq!((info.model.as_str(), info.depth, info.pairs), ("ce", 4, 8));
        // Rankings shorter than the depth are reranked whole.
        let deep = Rerank { reranker: &ce, depth: 10 };
        let (reranked, info) = deep.rerank(set, &[vec![1, 4, 3], vec![]], "t", &Silent).unwrap();
        assert_eq!((reranked, info.pairs), (vec![vec![4, 3, 1], vec![]], 3));
    }

    #[test]
    fn evaluation_reports_the_reranked_metrics_and_the_ones_before() {
        let model = EvalModel {
            embedder: Box::new(ByNumber),
            cache_id: "bi".into(),
            truncate_locally: true,
        };
        let encoder = Encoder::new(&model, None, &Silent);
        let settings = Settings { query_prefix: Some("query: ".into()), ..Settings::default() };
        let ce = Chosen::new(&[("apples", 3, 5.0), ("pears", 2, 1.0), ("pears", 5, 7.0)]);
        let rerank = Rerank { reranker: &ce, depth: 4 };
        let result =
            evaluate_with(&encoder, &task(), &settings, Search::Exact, Some(&rerank)).unwrap();

        // Before: relevant documents at ranks 4 and 3. After: both first (doc 5,
        // the best for "pears", lies below the depth).
        let before = result.before.as_ref().unwrap();
        assert_eq!(before.get("mrr@10"), Some((1.0 / 4.0 + 1.0 / 3.0) / 2.0 * 100.0));
        assert_eq!(before.get("recall@1"), Some(0.0));
        assert_eq!(result.metrics.get("mrr@10"), Some(100.0));
        assert_eq!(result.metrics.get("recall@1"), Some(100.0));
        assert_eq!(result.metrics.get("ndcg@10"), Some(100.0));
        assert_eq!(result.metrics.get("recall@5"), before.get("recall@5"));
        let names = |m: &crate::results::Metrics| -> Vec<String> {
            m.0.iter().map(|(n, _)| n.clone()).collect()
        };
        assert_eq!(names(&result.metrics), names(before));
        let info = result.rerank.as_ref().unwrap();
        assert_eq!((info.model.as_str(), info.depth, info.pairs), ("ce", 4, 8));
        assert!(info.seconds <= result.seconds);

        // The cross-encoder reads queries without the bi-encoder's prefix, and
        // documents as title + text.
        let seen = ce.seen.lock().unwrap();
        assert!(seen.iter().all(|(q, _)| q == "apples" || q == "pears"), "{seen:?}");
        assert!(seen.contains(&("apples".into(), "Apples doc 3".into())), "{seen:?}");
    }

    #[test]
    fn reranking_other_tasks_is_refused() {
        let model = EvalModel {
            embedder: Box::new(ByNumber),
            cache_id: "bi".into(),
            truncate_locally: true,
        };
        let encoder = Encoder::new(&model, None, &Silent);
        let row = ScoredPair { sentence1: "a".into(), sentence2: "b".into(), score: 1.0 };
        let sts = Task { spec: "sts:x.tsv".parse().unwrap(), data: TaskData::Sts(vec![row]) };
        let ce = Chosen::new(&[]);
        let rerank = Rerank { reranker: &ce, depth: 4 };
        let err = evaluate_with(&encoder, &sts, &Settings::default(), Search::Exact, Some(&rerank))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "task \"sts:x.tsv\": reranking applies to retrieval tasks only"
        );
    }

    #[test]
    fn reorders_the_head_and_keeps_the_tail() {
        assert_eq!(reorder(&[7, 3, 9, 1, 4], &[0.1, 0.9, 0.5]), [3, 9, 7, 1, 4]);
        assert_eq!(reorder(&[7, 3], &[0.2, 0.2]), [7, 3]);
    }
}
