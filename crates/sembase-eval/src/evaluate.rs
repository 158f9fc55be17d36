//! Running one task with one model at one width.

use std::time::Instant;

use sembase_embed::vectors::cosine;

use crate::beir::RetrievalSet;
use crate::encode::Encoder;
use crate::error::{EvalError, Result};
use crate::metrics::{
    average_precision, best_accuracy, best_f1, pearson, spearman, QueryScores, RetrievalScores,
    MAP_CUTOFF,
};
use crate::rerank::Rerank;
use crate::results::{EvalResult, Metrics};
use crate::search::{id_ranks, ExactSearch};
use crate::tasks::{Task, TaskData};
use sembase_index::graph::Graph;
use sembase_index::{AnnParams, Precision};

/// Corpus documents embedded and searched per block in retrieval.
pub const CORPUS_BLOCK: usize = 8192;

/// How texts are embedded for a task.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Put before queries, and before both sides of sts/pairs (e.g. `query: `).
    pub query_prefix: Option<String>,
    /// Put before corpus documents (e.g. `passage: `).
    pub doc_prefix: Option<String>,
    /// Keep the first N dimensions (Matryoshka); `None` for the model's width.
    pub dimensions: Option<usize>,
}

/// How retrieval tasks search the corpus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Search {
    /// Exact top-k (the reference).
    #[default]
    Exact,
    /// A usearch HNSW graph (the index crate's `ann` store) over the same vectors:
    /// the metrics come from its rankings, plus `exact_recall@10` (the exact
    /// rankings' recall@10) and `ann_vs_exact@10` (the share of each exact top 10
    /// that the graph finds), so the cost of ANN is read off one result.
    Ann(AnnParams),
}

/// Evaluates `task` and returns its result, timed.
pub fn evaluate(encoder: &Encoder, task: &Task, settings: &Settings) -> Result<EvalResult> {
    evaluate_with(encoder, task, settings, Search::Exact, None)
}

/// [`evaluate`], searching retrieval corpora as `search` says and, with `rerank`,
/// reranking each query's top documents: the result's `metrics` are then the
/// reranked figures and `before` the bi-encoder's. `rerank` applies to retrieval
/// tasks only.
pub fn evaluate_with(
    encoder: &Encoder,
    task: &Task,
    settings: &Settings,
    search: Search,
    rerank: Option<&Rerank>,
) -> Result<EvalResult> {
    encoder.check_dimensions(settings.dimensions)?;
    if rerank.is_some() && !matches!(task.data, TaskData::Retrieval(_)) {
        return Err(EvalError::Task {
            spec: task.spec.name.clone(),
            message: "reranking applies to retrieval tasks only".into(),
        });
    }
    let started = Instant::now();
    let mut before = None;
    let mut reranked = None;
    let metrics = match &task.data {
        TaskData::Sts(rows) => {
            let texts: Vec<&str> =
                rows.iter().flat_map(|r| [r.sentence1.as_str(), r.sentence2.as_str()]).collect();
            let similarities = pair_similarities(encoder, &task.spec.name, &texts, settings)?;
            let gold: Vec<f64> = rows.iter().map(|r| r.score).collect();
            sts_metrics(&similarities, &gold)
        }
        TaskData::Pairs(rows) => {
            let texts: Vec<&str> =
                rows.iter().flat_map(|r| [r.sentence1.as_str(), r.sentence2.as_str()]).collect();
            let similarities = pair_similarities(encoder, &task.spec.name, &texts, settings)?;
            let labels: Vec<bool> = rows.iter().map(|r| r.label).collect();
            pair_metrics(&similarities, &labels)
        }
        TaskData::Retrieval(set) => {
            let what = &task.spec.name;
            let depth = MAP_CUTOFF.max(rerank.map_or(0, |r| r.depth));
            let (rankings, search_figures) = match search {
                Search::Exact => {
                    let queries = embed_queries(encoder, what, set, settings)?;
                    let rankings = rank(encoder, what, set, settings, &queries, depth, None)?;
                    (rankings, Metrics::default())
                }
                Search::Ann(params) => ann_rankings(encoder, what, set, settings, params, depth)?,
            };
            let figures = |rankings: &[Vec<usize>]| {
                let mut m = retrieval_metrics(rankings, set);
                m.0.extend(search_figures.0.iter().cloned());
                m
            };
            match rerank {
                None => figures(&rankings),
                Some(r) => {
                    let (reordered, info) = r.rerank(set, &rankings, what, encoder.progress())?;
                    before = Some(figures(&rankings));
                    reranked = Some(info);
                    figures(&reordered)
                }
            }
        }
    };
    Ok(EvalResult {
        model: encoder.model().name().to_string(),
        task: task.spec.name.clone(),
        kind: task.spec.kind.as_str().to_string(),
        dimensions: settings.dimensions.unwrap_or_else(|| encoder.model().embedder.dimension()),
        metrics,
        seconds: started.elapsed().as_secs_f64(),
        before,
        rerank: reranked,
    })
}

/// Cosine similarity of each consecutive pair of `texts` (both sides get the query prefix).
fn pair_similarities(
    encoder: &Encoder,
    what: &str,
    texts: &[&str],
    settings: &Settings,
) -> Result<Vec<f64>> {
    let progress = encoder.progress();
    progress.start(what, texts.len());
    let vectors = encoder.encode(texts, settings.query_prefix.as_deref(), settings.dimensions);
    progress.finish();
    Ok(vectors?.chunks_exact(2).map(|p| cosine(&p[0], &p[1]) as f64).collect())
}

/// Spearman and Pearson of similarities against gold scores.
pub fn sts_metrics(similarities: &[f64], gold: &[f64]) -> Metrics {
    let mut m = Metrics::default();
    m.push_fraction("spearman", spearman(similarities, gold));
    m.push_fraction("pearson", pearson(similarities, gold));
    m
}

/// Spearman against the 0/1 labels, best-threshold accuracy and F1, and AP.
pub fn pair_metrics(similarities: &[f64], labels: &[bool]) -> Metrics {
    let as_numbers: Vec<f64> = labels.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();
    let mut m = Metrics::default();
    m.push_fraction("spearman", spearman(similarities, &as_numbers));
    m.push_fraction("accuracy", best_accuracy(similarities, labels).0);
    m.push_fraction("f1", best_f1(similarities, labels).f1);
    m.push_fraction("ap", average_precision(similarities, labels));
    m
}

/// The top `depth` documents (corpus indices, best first) of every judged query,
/// by exact search of their vectors `queries`; every corpus vector is also kept
/// in `keep` when given.
pub fn rank(
    encoder: &Encoder,
    what: &str,
    set: &RetrievalSet,
    settings: &Settings,
    queries: &[Vec<f32>],
    depth: usize,
    mut keep: Option<&mut Vec<Vec<f32>>>,
) -> Result<Vec<Vec<usize>>> {
    let progress = encoder.progress();
    let ids: Vec<&str> = set.corpus.iter().map(|d| d.id.as_str()).collect();
    let mut search = ExactSearch::new(queries, depth, id_ranks(&ids))?;
    progress.start(&format!("{what} corpus"), set.corpus.len());
    for block in set.corpus.chunks(CORPUS_BLOCK) {
        let texts: Vec<String> = block.iter().map(|d| d.full_text()).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = encoder.encode(&texts, settings.doc_prefix.as_deref(), settings.dimensions);
        let vectors = match vectors {
            Ok(v) => v,
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        };
        search.add_block(&vectors)?;
        if let Some(kept) = keep.as_mut() {
            kept.extend(vectors);
        }
    }
    progress.finish();
    Ok(search.finish().into_iter().map(|hits| hits.into_iter().map(|h| h.doc).collect()).collect())
}

/// The judged queries' vectors.
pub fn embed_queries(
    encoder: &Encoder,
    what: &str,
    set: &RetrievalSet,
    settings: &Settings,
) -> Result<Vec<Vec<f32>>> {
    let progress = encoder.progress();
    let query_texts: Vec<&str> =
        set.judged.iter().map(|j| set.queries[j.query].text.as_str()).collect();
    progress.start(&format!("{what} queries"), query_texts.len());
    let queries =
        encoder.encode(&query_texts, settings.query_prefix.as_deref(), settings.dimensions);
    progress.finish();
    queries
}

/// An HNSW graph's top `depth` documents of every judged query, and what the
/// graph costs against exact search (`exact_recall@10`, `ann_vs_exact@10`).
fn ann_rankings(
    encoder: &Encoder,
    what: &str,
    set: &RetrievalSet,
    settings: &Settings,
    params: AnnParams,
    depth: usize,
) -> Result<(Vec<Vec<usize>>, Metrics)> {
    let queries = embed_queries(encoder, what, set, settings)?;
    let mut corpus = Vec::with_capacity(set.corpus.len());
    let exact = rank(encoder, what, set, settings, &queries, depth, Some(&mut corpus))?;
    let dim = queries.first().map_or(0, Vec::len);
    let graph = Graph::new(dim, Precision::F32, params)?;
    let items: Vec<(u64, Vec<f32>)> =
        corpus.into_iter().enumerate().map(|(i, v)| (i as u64, unit(v))).collect();
    graph.add_all(&items)?;
    let ann: Vec<Vec<usize>> = queries
        .into_iter()
        .map(|q| {
            Ok(graph
                .search_all(&unit(q), depth)?
                .into_iter()
                .map(|(doc, _)| doc as usize)
                .collect())
        })
        .collect::<Result<_>>()?;
    let mut m = Metrics::default();
    if let Some(recall) = retrieval_metrics(&exact, set).get("recall@10") {
        m.0.push(("exact_recall@10".into(), recall));
    }
    let found: f64 = ann
        .iter()
        .zip(&exact)
        .map(|(a, e)| {
            let top: Vec<&usize> = e.iter().take(10).collect();
            a.iter().take(10).filter(|d| top.contains(d)).count() as f64 / top.len().max(1) as f64
        })
        .sum();
    m.push_fraction("ann_vs_exact@10", found / exact.len().max(1) as f64);
    Ok((ann, m))
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    sembase_embed::vectors::normalize(&mut v);
    v
}

/// The retrieval measures of rankings (one per judged query, in order).
pub fn retrieval_metrics(rankings: &[Vec<usize>], set: &RetrievalSet) -> Metrics {
    let per_query: Vec<QueryScores> = rankings
        .iter()
        .zip(&set.judged)
        .map(|(ranked, judged)| {
            let ids: Vec<&str> = ranked.iter().map(|&d| set.corpus[d].id.as_str()).collect();
            QueryScores::compute(&ids, &judged.grades)
        })
        .collect();
    let mut m = Metrics::default();
    for (name, value) in RetrievalScores::mean(&per_query).named() {
        m.push_fraction(&name, value);
    }
    m
}
