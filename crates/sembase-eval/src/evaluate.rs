//! Running one task with one model at one width.

use std::time::Instant;

use sembase_core::vectors::cosine;

use crate::beir::RetrievalSet;
use crate::encode::Encoder;
use crate::error::Result;
use crate::metrics::{average_precision, best_accuracy, best_f1, pearson, spearman, QueryScores, RetrievalScores, MAP_CUTOFF};
use crate::results::{EvalResult, Metrics};
use crate::search::{id_ranks, ExactSearch};
use crate::tasks::{Task, TaskData};

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

/// Evaluates `task` and returns its result, timed.
pub fn evaluate(encoder: &Encoder, task: &Task, settings: &Settings) -> Result<EvalResult> {
    encoder.check_dimensions(settings.dimensions)?;
    let started = Instant::now();
    let metrics = match &task.data {
        TaskData::Sts(rows) => {
            let texts: Vec<&str> = rows.iter().flat_map(|r| [r.sentence1.as_str(), r.sentence2.as_str()]).collect();
            let similarities = pair_similarities(encoder, &task.spec.name, &texts, settings)?;
            let gold: Vec<f64> = rows.iter().map(|r| r.score).collect();
            sts_metrics(&similarities, &gold)
        }
        TaskData::Pairs(rows) => {
            let texts: Vec<&str> = rows.iter().flat_map(|r| [r.sentence1.as_str(), r.sentence2.as_str()]).collect();
            let similarities = pair_similarities(encoder, &task.spec.name, &texts, settings)?;
            let labels: Vec<bool> = rows.iter().map(|r| r.label).collect();
            pair_metrics(&similarities, &labels)
        }
        TaskData::Retrieval(set) => retrieval_metrics(&rank(encoder, &task.spec.name, set, settings)?, set),
    };
    Ok(EvalResult {
        model: encoder.model().name().to_string(),
        task: task.spec.name.clone(),
        kind: task.spec.kind.as_str().to_string(),
        dimensions: settings.dimensions.unwrap_or_else(|| encoder.model().embedder.dimension()),
        metrics,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Cosine similarity of each consecutive pair of `texts` (both sides get the query prefix).
fn pair_similarities(encoder: &Encoder, what: &str, texts: &[&str], settings: &Settings) -> Result<Vec<f64>> {
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

/// The top documents (corpus indices, best first) of every judged query.
pub fn rank(encoder: &Encoder, what: &str, set: &RetrievalSet, settings: &Settings) -> Result<Vec<Vec<usize>>> {
    let progress = encoder.progress();
    let query_texts: Vec<&str> = set.judged.iter().map(|j| set.queries[j.query].text.as_str()).collect();
    progress.start(&format!("{what} queries"), query_texts.len());
    let queries = encoder.encode(&query_texts, settings.query_prefix.as_deref(), settings.dimensions);
    progress.finish();
    let ids: Vec<&str> = set.corpus.iter().map(|d| d.id.as_str()).collect();
    let mut search = ExactSearch::new(&queries?, MAP_CUTOFF, id_ranks(&ids))?;
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
    }
    progress.finish();
    Ok(search.finish().into_iter().map(|hits| hits.into_iter().map(|h| h.doc).collect()).collect())
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
