//! The second stage of `sembase search --rerank`: a cross-encoder reorders each
//! query's retrieved hits and the best `--top-k` are kept.

use std::num::NonZeroUsize;
use std::time::Instant;

use anyhow::{bail, Result};
use sembase_embed::reranker::ranked;
use sembase_embed::{Reranker, Truncation};
use sembase_eval::results::RerankInfo;
use sembase_index::Hit;

/// Candidates per query a cross-encoder reads when `--rerank-depth` is not given
/// (or `--top-k`, if larger). Reranking costs one encoder pass per candidate and a
/// search is often one interactive query on a CPU: 50 keeps that to a fraction of a
/// second for a MiniLM-sized cross-encoder, while the documents a cross-encoder
/// lifts into a top 10 rarely come from further down a bi-encoder's list.
/// `sembase eval --rerank` measures what a deeper K would gain.
const RERANK_DEPTH: usize = 50;

/// Candidates to retrieve per query for reranking: `--rerank-depth`, else
/// [`RERANK_DEPTH`] or `top_k` if larger; never fewer than the hits returned.
pub fn rerank_depth(asked: Option<NonZeroUsize>, top_k: usize) -> Result<usize> {
    match asked.map(NonZeroUsize::get) {
        None => Ok(top_k.max(RERANK_DEPTH)),
        Some(k) if k < top_k => bail!("--rerank-depth {k} is below --top-k {top_k}"),
        Some(k) => Ok(k),
    }
}

/// A hit as reported: the store's hit and its score, which after reranking is the
/// cross-encoder's relevance, with the rank (1-based) retrieval gave the hit.
pub struct Shown {
    pub hit: Hit,
    pub score: f32,
    pub retrieval_rank: Option<usize>,
}

impl Shown {
    /// A hit as retrieval found it.
    pub fn retrieved(hit: Hit) -> Self {
        Self { score: hit.score, retrieval_rank: None, hit }
    }
}

/// Reorders each query's hits by the cross-encoder's relevance and keeps the best `top_k`.
pub fn rerank_all(
    model: &dyn Reranker,
    depth: usize,
    queries: &[String],
    results: Vec<Vec<Hit>>,
    top_k: usize,
) -> Result<(Vec<Vec<Shown>>, RerankInfo)> {
    let started = Instant::now();
    let mut pairs = 0;
    let mut out = Vec::with_capacity(results.len());
    for (query, hits) in queries.iter().zip(results) {
        let texts: Vec<String> = hits.iter().map(embedded_text).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let scores = model.rerank(query, &texts, Truncation::Truncate)?;
        pairs += hits.len();
        let mut hits: Vec<Option<Hit>> = hits.into_iter().map(Some).collect();
        let shown = ranked(&scores)
            .into_iter()
            .take(top_k)
            .map(|i| Shown {
                hit: hits[i].take().expect("ranked() gives each index once"),
                score: scores[i],
                retrieval_rank: Some(i + 1),
            })
            .collect();
        out.push(shown);
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{pairs} pairs reranked in {seconds:.3}s ({:.0} pairs/s)",
        pairs as f64 / seconds.max(1e-9)
    );
    Ok((out, RerankInfo { model: model.name().to_string(), depth, pairs, seconds }))
}

/// The text the index embedded for a hit: `title + " " + text` when the build
/// kept a title in the metadata (see `CorpusDoc::embed_text`).
fn embedded_text(hit: &Hit) -> String {
    match hit.metadata.get("title").and_then(|t| t.as_str()) {
        Some(title) if !title.is_empty() => format!("{title} {}", hit.text),
        _ => hit.text.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_defaults_to_fifty_and_covers_top_k() {
        assert_eq!(rerank_depth(None, 10).unwrap(), 50);
        assert_eq!(rerank_depth(None, 80).unwrap(), 80);
        assert_eq!(rerank_depth(NonZeroUsize::new(20), 10).unwrap(), 20);
        let err = rerank_depth(NonZeroUsize::new(5), 10).unwrap_err();
        assert_eq!(err.to_string(), "--rerank-depth 5 is below --top-k 10");
    }

    #[test]
    fn a_kept_title_is_read_before_the_text() {
        let mut hit =
            Hit { id: "1".into(), score: 0.5, text: "body".into(), metadata: Default::default() };
        assert_eq!(embedded_text(&hit), "body");
        hit.metadata.insert("title".into(), "Title".into());
        assert_eq!(embedded_text(&hit), "Title body");
    }
}
