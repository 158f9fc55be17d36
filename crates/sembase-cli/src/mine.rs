//! `sembase mine`: hard negatives for labelled positive pairs, written as the
//! triplets TSV that `sembase train triplets` reads. The selection rules live in
//! `sembase_train::mine`; this layer embeds the texts and searches the corpus with
//! the index crate's exact search.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use sembase_core::{EmbedOptions, Embedder, LocalEmbedder};
use sembase_embed::vectors::cosine;
use sembase_index::exact::ExactSearch;
use sembase_train::mine::{
    distinct_texts, group_by_anchor, load_positive_pairs, normalize_text, pick_negatives,
    tsv_field, Candidate, Guard, MineConfig, RankRange,
};

use crate::models::{load_local, ComputeArgs};

/// Corpus texts embedded per call (the search keeps only the anchors and one block).
const CHUNK: usize = 4096;

#[derive(Args)]
pub struct MineArgs {
    /// A store name or a model directory (the model that ranks the corpus).
    #[arg(long)]
    model: String,
    /// Labelled TSV as `train` reads it: pairs (label-1 rows), sts (score >= 4) or
    /// triplets (anchor and positive); sentence1 / anchor is the anchor.
    #[arg(long)]
    data: PathBuf,
    /// Candidate negatives: one text per line, or `.jsonl` as `index build` reads it.
    /// Default: every distinct text of --data.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Where the triplets go (TSV with an anchor/positive/negative header).
    #[arg(long)]
    output: PathBuf,
    /// Ranks negatives come from, FIRST-LAST, 1-based and inclusive, counted without
    /// the anchor and its labelled positives.
    #[arg(long, default_value = "10-50")]
    range: String,
    /// Keep negatives scoring at most this share of the positive's score
    /// (default 0.95: NV-Retriever's TopK-PercPos).
    #[arg(long, conflicts_with = "margin")]
    relative: Option<f32>,
    /// Keep negatives scoring at most the positive's score minus this, instead.
    #[arg(long)]
    margin: Option<f32>,
    /// Triplets per (anchor, positive) at most: the best-ranked negatives kept.
    #[arg(long, default_value_t = 1)]
    negatives: usize,
    /// Put before every text embedded, anchors and candidates (as `train --prefix`).
    #[arg(long)]
    prefix: Option<String>,
    /// Put before anchors instead of --prefix (as `eval --query-prefix`).
    #[arg(long)]
    query_prefix: Option<String>,
    /// Write the counts and mean scores as JSON.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    #[command(flatten)]
    compute: ComputeArgs,
}

impl MineArgs {
    /// The guard the flags ask for, checked.
    fn guard(&self) -> Result<Guard> {
        match (self.relative, self.margin) {
            (_, Some(m)) if !m.is_finite() => bail!("--margin must be a number"),
            (_, Some(m)) => Ok(Guard::Margin(m)),
            (Some(r), None) if !(r.is_finite() && r > 0.0) => bail!("--relative must be positive"),
            (Some(r), None) => Ok(Guard::Relative(r)),
            (None, None) => Ok(Guard::default()),
        }
    }
}

pub fn run(args: MineArgs) -> Result<()> {
    args.compute.apply_threads();
    if args.negatives == 0 {
        bail!("--negatives must be at least 1");
    }
    let range: RankRange = args.range.parse().map_err(|e| anyhow::anyhow!("--range {e}"))?;
    let config = MineConfig { range, guard: args.guard()?, negatives: args.negatives };
    if !args.data.is_file() {
        bail!("{}: no such file", args.data.display());
    }
    let data = load_positive_pairs(&args.data)?;
    let corpus = match &args.corpus {
        Some(path) => {
            let docs = sembase_index::read_corpus(path)?;
            distinct_texts(docs.iter().map(|d| d.embed_text()))
        }
        None => distinct_texts(data.texts),
    };
    if corpus.is_empty() {
        bail!("the corpus has no texts");
    }
    let groups = group_by_anchor(&data.positives);
    let model = load_local(&args.model, None, args.compute.batch_tokens, None)?;
    let doc_options = EmbedOptions { prefix: args.prefix.clone(), ..EmbedOptions::default() };
    let query_options = EmbedOptions {
        prefix: args.query_prefix.clone().or_else(|| args.prefix.clone()),
        ..EmbedOptions::default()
    };
    eprintln!(
        "mining {} anchors ({} positive pairs) against {} candidates",
        groups.len(),
        data.positives.len(),
        corpus.len()
    );
    let anchors: Vec<&str> = groups.iter().map(|g| g.anchor.as_str()).collect();
    let anchor_vectors = embed(&model, &anchors, &query_options)?;
    let positives: Vec<&str> =
        groups.iter().flat_map(|g| g.positives.iter().map(String::as_str)).collect();
    let positive_vectors = embed(&model, &positives, &doc_options)?;
    // The positives' vectors come group after group, in the order embedded above.
    let mut next_positive = positive_vectors.iter();
    let positive_scores: Vec<Vec<f32>> = groups
        .iter()
        .zip(&anchor_vectors)
        .map(|(g, a)| (&mut next_positive).take(g.positives.len()).map(|p| cosine(a, p)).collect())
        .collect();

    // Deep enough that `range.last` candidates remain after the excluded texts.
    let excluded = groups.iter().map(|g| g.excluded.len()).max().unwrap_or(0);
    let n = corpus.len();
    let tie = (0..n).map(|i| (n - i) as u32).collect(); // equal scores: corpus order
    let mut search = ExactSearch::new(&anchor_vectors, config.range.last + excluded, tie)?;
    for (i, block) in corpus.chunks(CHUNK).enumerate() {
        let texts: Vec<&str> = block.iter().map(String::as_str).collect();
        search.add_block(&embed(&model, &texts, &doc_options)?)?;
        eprintln!("embedded {} of {n} candidates", i * CHUNK + block.len());
    }
    let hits: Vec<Vec<Candidate>> = search
        .finish()
        .into_iter()
        .map(|h| h.into_iter().map(|h| Candidate { doc: h.doc, score: h.score }).collect())
        .collect();
    let keys: Vec<String> = corpus.iter().map(|t| normalize_text(t)).collect();
    let (mined, stats) = pick_negatives(&groups, &keys, &hits, &positive_scores, &config);

    sembase_embed::durable::write_with(&args.output, |w| {
        writeln!(w, "anchor\tpositive\tnegative")?;
        for m in &mined {
            let group = &groups[m.group];
            let row = [&group.anchor, &group.positives[m.positive], &corpus[m.negative]];
            writeln!(w, "{}", row.map(|t| tsv_field(t)).join("\t"))?;
        }
        Ok(())
    })?;
    if let Some(path) = &args.json {
        let mut report = serde_json::to_value(&stats)?;
        report["candidates"] = n.into();
        report["range"] = format!("{}-{}", config.range.first, config.range.last).into();
        report["guard"] = match config.guard {
            Guard::Relative(r) => serde_json::json!({"relative": r}),
            Guard::Margin(m) => serde_json::json!({"margin": m}),
        };
        report["negatives"] = config.negatives.into();
        report["output"] = args.output.display().to_string().into();
        sembase_embed::durable::write_json(path, &report)?;
    }
    eprintln!(
        "{} triplets; {} of {} anchors left without a negative; {} candidates dropped by the guard",
        stats.triplets, stats.anchors_without_negative, stats.anchors, stats.dropped_by_guard
    );
    println!("{}", args.output.display());
    Ok(())
}

/// The vectors of `texts`, in order.
fn embed(model: &LocalEmbedder, texts: &[&str], options: &EmbedOptions) -> Result<Vec<Vec<f32>>> {
    let embeddings = model.embed(texts, options).context("embedding")?;
    Ok(embeddings.vectors)
}
