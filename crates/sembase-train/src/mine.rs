//! Hard-negative mining: from labelled positive pairs and a model's ranking of a
//! corpus for each anchor, the (anchor, positive, negative) triplets that
//! `train triplets` learns from.
//!
//! A negative is taken from the anchor's neighbours ranked within a window (1-based
//! ranks, as sentence-transformers' `mine_hard_negatives` `range_min`/`range_max`):
//! the very nearest are skipped because they are the likeliest unlabelled positives.
//! A guard against such false negatives then drops candidates scoring too close to the
//! positive: NV-Retriever's "TopK-PercPos" (Moreira et al., 2024, arXiv:2407.15831)
//! keeps only negatives scoring at most 95% of the positive's score, which
//! sentence-transformers offers as `relative_margin=0.05`; an absolute margin
//! (`absolute_margin`) is the alternative. The anchor's own text and its labelled
//! positives never count as candidates and take no rank.
//!
//! This module holds the data and the selection; the command line embeds the texts
//! and finds the neighbours with the index crate's exact search.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use sembase_eval::tasks::{load_pairs, load_sts, load_triplets};

use crate::data::{tsv_format, TsvFormat};
use crate::error::{Result, TrainError};

/// STS scores at or above this make a positive pair: 4 of 0-5 is "mostly
/// equivalent" in the STS annotation guidelines (and on SICK-R's 1-5 scale, close).
pub const STS_POSITIVE_SCORE: f64 = 4.0;

/// What mining needs from a labelled file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelledData {
    /// (anchor, positive) pairs, in file order, each once (after whitespace normalisation).
    pub positives: Vec<(String, String)>,
    /// Every text of the file, in file order (the corpus when none is given).
    pub texts: Vec<String>,
}

/// Reads the positive pairs of a TSV file in a format `train` reads, told apart by its
/// header: pairs (label 1), sts (score >= [`STS_POSITIVE_SCORE`]) or triplets (anchor and
/// positive; the file's own negative only joins the texts).
pub fn load_positive_pairs(path: &Path) -> Result<LabelledData> {
    let mut rows: Vec<(String, String, bool)> = Vec::new();
    let mut extra = Vec::new();
    match tsv_format(path)? {
        TsvFormat::Pairs => {
            rows.extend(load_pairs(path)?.into_iter().map(|p| (p.sentence1, p.sentence2, p.label)))
        }
        TsvFormat::Sts => rows.extend(
            load_sts(path)?
                .into_iter()
                .map(|p| (p.sentence1, p.sentence2, p.score >= STS_POSITIVE_SCORE)),
        ),
        TsvFormat::Triplets => {
            for t in load_triplets(path)? {
                rows.push((t.anchor, t.positive, true));
                extra.push(t.negative);
            }
        }
    }
    if rows.is_empty() {
        return Err(TrainError::Data(format!("{}: no rows", path.display())));
    }
    let mut data = LabelledData::default();
    let mut seen = HashSet::new();
    for (anchor, positive, is_positive) in rows {
        let key = (normalize_text(&anchor), normalize_text(&positive));
        if is_positive && !key.0.is_empty() && !key.1.is_empty() && seen.insert(key) {
            data.positives.push((anchor.clone(), positive.clone()));
        }
        data.texts.extend([anchor, positive]);
    }
    data.texts.extend(extra);
    if data.positives.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no positive pairs (label 1, score >= {STS_POSITIVE_SCORE}, or triplets)",
            path.display()
        )));
    }
    Ok(data)
}

/// The key texts are compared by: whitespace runs collapsed to one space, ends trimmed.
pub fn normalize_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `texts` without empty ones and without repeats (by [`normalize_text`]), first kept.
pub fn distinct_texts(texts: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    texts
        .into_iter()
        .filter(|t| {
            let key = normalize_text(t);
            !key.is_empty() && seen.insert(key)
        })
        .collect()
}

/// One anchor with its labelled positives and the texts that may not be its negatives.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorGroup {
    pub anchor: String,
    pub positives: Vec<String>,
    /// Normalised texts never taken as negatives: the anchor itself and every text
    /// labelled positive with it, in either column (paraphrase is symmetric).
    pub excluded: HashSet<String>,
}

/// Groups positive pairs by anchor (first-seen order).
pub fn group_by_anchor(pairs: &[(String, String)]) -> Vec<AnchorGroup> {
    let mut related: HashMap<String, HashSet<String>> = HashMap::new();
    for (a, p) in pairs {
        let (a, p) = (normalize_text(a), normalize_text(p));
        related.entry(a.clone()).or_default().insert(p.clone());
        related.entry(p).or_default().insert(a);
    }
    let mut groups: Vec<AnchorGroup> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (anchor, positive) in pairs {
        let key = normalize_text(anchor);
        let g = *index.entry(key.clone()).or_insert_with(|| {
            let mut excluded = related.get(&key).cloned().unwrap_or_default();
            excluded.insert(key.clone());
            groups.push(AnchorGroup { anchor: anchor.clone(), positives: Vec::new(), excluded });
            groups.len() - 1
        });
        groups[g].positives.push(positive.clone());
    }
    groups
}

/// Ranks a negative may come from: `first..=last`, 1-based, counted over the anchor's
/// candidates (its own text and its positives take no rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankRange {
    pub first: usize,
    pub last: usize,
}

impl Default for RankRange {
    /// 10-50: skip the nine nearest, the likeliest unlabelled positives.
    fn default() -> Self {
        Self { first: 10, last: 50 }
    }
}

impl FromStr for RankRange {
    type Err = String;

    /// `FIRST-LAST` with 1 <= FIRST <= LAST.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad =
            || format!("{s:?}: expected FIRST-LAST ranks with 1 <= FIRST <= LAST, e.g. 10-50");
        let (first, last) = s.split_once('-').ok_or_else(bad)?;
        let first: usize = first.trim().parse().map_err(|_| bad())?;
        let last: usize = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

/// The false-negative guard: the highest score a negative may have, given the
/// anchor's score with the positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Guard {
    /// At most this share of the positive's score (NV-Retriever's TopK-PercPos).
    Relative(f32),
    /// At most the positive's score minus this.
    Margin(f32),
}

impl Default for Guard {
    /// NV-Retriever's best setting, 95% of the positive's score.
    fn default() -> Self {
        Self::Relative(0.95)
    }
}

impl Guard {
    /// The highest score a negative may have against this positive score.
    pub fn ceiling(self, positive_score: f32) -> f32 {
        match self {
            Self::Relative(share) => positive_score * share,
            Self::Margin(margin) => positive_score - margin,
        }
    }
}

/// What to mine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MineConfig {
    pub range: RankRange,
    pub guard: Guard,
    /// Triplets per (anchor, positive) at most.
    pub negatives: usize,
}

/// A corpus document and its score against an anchor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub doc: usize,
    pub score: f32,
}

/// One mined triplet: indices into the groups and their positives, and the negative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mined {
    pub group: usize,
    pub positive: usize,
    pub negative: usize,
    /// 1-based rank of the negative among the anchor's candidates.
    pub rank: usize,
    pub positive_score: f32,
    pub negative_score: f32,
}

/// Counts reported by `sembase mine --json`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MineStats {
    pub anchors: usize,
    pub pairs: usize,
    pub triplets: usize,
    pub anchors_without_negative: usize,
    /// Candidates inside the rank range dropped by the guard, over all pairs.
    pub dropped_by_guard: usize,
    /// Means over the triplets written; `None` when there are none.
    pub mean_positive_score: Option<f64>,
    pub mean_negative_score: Option<f64>,
}

/// Picks the negatives of every (anchor, positive). `hits[g]` is group `g`'s
/// neighbours, best first, from a search deep enough to hold `range.last` candidates
/// after the excluded ones; `corpus_keys[doc]` is a document's normalised text;
/// `positive_scores[g][p]` is the anchor's score with its `p`-th positive.
pub fn pick_negatives(
    groups: &[AnchorGroup],
    corpus_keys: &[String],
    hits: &[Vec<Candidate>],
    positive_scores: &[Vec<f32>],
    config: &MineConfig,
) -> (Vec<Mined>, MineStats) {
    let mut mined = Vec::new();
    let mut stats = MineStats { anchors: groups.len(), ..MineStats::default() };
    for (g, group) in groups.iter().enumerate() {
        // Ranks count the candidates only: excluded texts are removed before ranking.
        let window: Vec<(usize, Candidate)> = hits[g]
            .iter()
            .filter(|c| !group.excluded.contains(&corpus_keys[c.doc]))
            .enumerate()
            .map(|(i, c)| (i + 1, *c))
            .skip(config.range.first - 1)
            .take(config.range.last + 1 - config.range.first)
            .collect();
        let before = mined.len();
        for (p, &positive_score) in positive_scores[g].iter().enumerate() {
            stats.pairs += 1;
            let ceiling = config.guard.ceiling(positive_score);
            let (kept, dropped): (Vec<_>, Vec<_>) =
                window.iter().partition(|(_, c)| c.score <= ceiling);
            stats.dropped_by_guard += dropped.len();
            mined.extend(kept.into_iter().take(config.negatives).map(|&(rank, c)| Mined {
                group: g,
                positive: p,
                negative: c.doc,
                rank,
                positive_score,
                negative_score: c.score,
            }));
        }
        if mined.len() == before {
            stats.anchors_without_negative += 1;
        }
    }
    stats.triplets = mined.len();
    let mean = |f: fn(&Mined) -> f32| {
        (!mined.is_empty())
            .then(|| mined.iter().map(|m| f64::from(f(m))).sum::<f64>() / mined.len() as f64)
    };
    stats.mean_positive_score = mean(|m| m.positive_score);
    stats.mean_negative_score = mean(|m| m.negative_score);
    (mined, stats)
}

/// A text as one TSV field: tabs and line breaks become spaces.
pub fn tsv_field(text: &str) -> String {
    text.replace(['\t', '\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row of `scores` ranked best first, as a search returns it.
    fn ranked(scores: &[Vec<f32>]) -> Vec<Vec<Candidate>> {
        scores
            .iter()
            .map(|row| {
                let mut hits: Vec<Candidate> =
                    row.iter().enumerate().map(|(doc, &score)| Candidate { doc, score }).collect();
                hits.sort_by(|a, b| b.score.total_cmp(&a.score));
                hits
            })
            .collect()
    }

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn ranks_skip_the_anchor_and_its_positives_and_the_guard_drops_near_positives() {
        let corpus = strings(&["q", "p", "n1", "n2", "n3", "n4", "r"]);
        let pairs = vec![("q".into(), "p".into()), ("r".into(), "q".into())];
        let groups = group_by_anchor(&pairs);
        assert_eq!(groups.len(), 2);
        // Anchor q: itself 1.0, p 0.9 and r 0.85 (labelled positive in the other
        // direction) are excluded; candidates n1 0.88 (rank 1), n2 0.8 (2), n3 0.7 (3),
        // n4 0.1 (4).
        let scores = vec![
            vec![1.0, 0.9, 0.88, 0.8, 0.7, 0.1, 0.85],
            vec![0.85, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0],
        ];
        let config = MineConfig {
            range: RankRange { first: 1, last: 3 },
            guard: Guard::Relative(0.95),
            negatives: 5,
        };
        let (mined, stats) =
            pick_negatives(&groups, &corpus, &ranked(&scores), &[vec![0.9], vec![0.85]], &config);
        let for_q: Vec<(usize, usize)> =
            mined.iter().filter(|m| m.group == 0).map(|m| (m.negative, m.rank)).collect();
        // 0.95 * 0.9 = 0.855: n1 (0.88) is dropped, n2 and n3 kept, n4 is out of range.
        assert_eq!(for_q, [(3, 2), (4, 3)]);
        // Anchor r: q is its positive, excluded; p (0.2) is not labelled with r.
        let for_r: Vec<usize> = mined.iter().filter(|m| m.group == 1).map(|m| m.negative).collect();
        assert_eq!(for_r, [5, 4, 3]);
        assert_eq!(stats.dropped_by_guard, 1);
        assert_eq!((stats.anchors, stats.pairs, stats.triplets), (2, 2, 5));

        // The window starts later, the margin guard is stricter, one negative each.
        let config = MineConfig {
            range: RankRange { first: 2, last: 4 },
            guard: Guard::Margin(0.15),
            negatives: 1,
        };
        let (mined, stats) =
            pick_negatives(&groups, &corpus, &ranked(&scores), &[vec![0.9], vec![0.85]], &config);
        // q: ceiling 0.75 -> n2 (0.8) dropped, n3 (0.7, rank 3) first.
        assert_eq!((mined[0].negative, mined[0].rank), (4, 3));
        // r: ranks 2-4 are n3 0.5, n2 0.4, n1 0.3; ceiling 0.7 keeps all.
        assert_eq!((mined[1].negative, mined[1].rank), (4, 2));
        assert_eq!((stats.triplets, stats.dropped_by_guard), (2, 1));
    }

    #[test]
    fn an_anchor_whose_window_is_all_guarded_counts_as_left_without_a_negative() {
        let corpus = strings(&["a", "b", "c"]);
        let groups = group_by_anchor(&[("a".into(), "b".into())]);
        let scores = vec![vec![1.0, 0.5, 0.9]];
        let config = MineConfig {
            range: RankRange { first: 1, last: 50 },
            guard: Guard::default(),
            negatives: 1,
        };
        let (mined, stats) =
            pick_negatives(&groups, &corpus, &ranked(&scores), &[vec![0.5]], &config);
        assert!(mined.is_empty());
        assert_eq!((stats.anchors_without_negative, stats.dropped_by_guard), (1, 1));
        assert_eq!(stats.mean_negative_score, None);
    }

    #[test]
    fn positives_match_after_whitespace_normalisation() {
        let groups = group_by_anchor(&[("how  do I\tpay".into(), " card ".into())]);
        assert!(groups[0].excluded.contains("how do I pay"));
        assert!(groups[0].excluded.contains("card"));
        assert_eq!(distinct_texts(strings(&["a  b", "a b", " ", "c"])), ["a  b", "c"]);
    }

    #[test]
    fn ranges_parse_and_bad_ones_are_refused() {
        assert_eq!("10-50".parse::<RankRange>(), Ok(RankRange { first: 10, last: 50 }));
        assert_eq!("3-3".parse::<RankRange>(), Ok(RankRange { first: 3, last: 3 }));
        for bad in ["50-10", "0-5", "10", "a-b", "-5"] {
            assert!(bad.parse::<RankRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_format_gives_its_positive_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let pairs = write("p.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t0\na \tb\t1\n");
        let data = load_positive_pairs(&pairs).unwrap();
        assert_eq!(data.positives, [("a".to_string(), "b".to_string())]);
        assert_eq!(data.texts.len(), 6);
        let sts = write("s.tsv", "sentence1\tsentence2\tscore\na\tb\t4\nc\td\t3.9\n");
        assert_eq!(load_positive_pairs(&sts).unwrap().positives.len(), 1);
        let triplets = write("t.tsv", "anchor\tpositive\tnegative\nq\tp\tn\n");
        let data = load_positive_pairs(&triplets).unwrap();
        assert_eq!((data.positives.len(), data.texts), (1, strings(&["q", "p", "n"])));
        let none = write("n.tsv", "sentence1\tsentence2\tlabel\nc\td\t0\n");
        let err = load_positive_pairs(&none).unwrap_err().to_string();
        assert!(err.contains("no positive pairs"), "{err}");
    }
}
