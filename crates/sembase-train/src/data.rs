//! Training examples for each objective, and the seeded batch order.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use sembase_eval::tasks::{load_pairs, load_sts, load_triplets, Triplet};

use crate::error::{Result, TrainError};

/// What a run optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// Unsupervised SimCSE: each sentence against itself under another dropout mask.
    SimCse,
    /// Positive pairs with in-batch negatives.
    Pairs,
    /// Anchor, positive and a hard negative, with in-batch negatives.
    Triplets,
    /// CoSENT on scored (or 0/1 labelled) pairs.
    Sts,
}

impl Objective {
    /// The token limit a run uses unless told otherwise: 32 for SimCSE (its paper's
    /// setting; short inputs make its many steps cheap), else `None` for the model's own.
    pub fn default_max_length(self) -> Option<usize> {
        (self == Self::SimCse).then_some(32)
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::SimCse => "simcse",
            Self::Pairs => "pairs",
            Self::Triplets => "triplets",
            Self::Sts => "sts",
        }
    }
}

impl FromStr for Objective {
    type Err = TrainError;

    fn from_str(name: &str) -> Result<Self> {
        [Self::SimCse, Self::Pairs, Self::Triplets, Self::Sts]
            .into_iter()
            .find(|o| o.name() == name)
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "unknown objective `{name}` (expected simcse, pairs, triplets or sts)"
                ))
            })
    }
}

/// A `--data` value: `PATH`, or `OBJECTIVE:PATH` to give this file its own objective
/// in a run that mixes several. A prefix of letters and hyphens is taken for an objective
/// (write `./a:b.tsv` for a file whose name has such a colon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSpec {
    /// `None`: the command's objective.
    pub objective: Option<Objective>,
    pub path: PathBuf,
}

impl FromStr for DataSpec {
    type Err = TrainError;

    fn from_str(spec: &str) -> Result<Self> {
        let fail = |message: String| TrainError::Config(format!("--data {spec}: {message}"));
        let (objective, path) = match spec.split_once(':') {
            Some((prefix, path)) if !prefix.is_empty() && prefix.chars().all(is_name_char) => {
                (Some(prefix.parse::<Objective>().map_err(|e| fail(e.to_string()))?), path)
            }
            _ => (None, spec),
        };
        if path.is_empty() {
            return Err(fail("the path is empty".into()));
        }
        Ok(Self { objective, path: PathBuf::from(path) })
    }
}

/// Letters and hyphens: what an objective's name is made of.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '-'
}

/// One training file with the objective its rows train.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub objective: Objective,
    /// The file, as given.
    pub path: PathBuf,
    pub examples: Vec<Example>,
}

impl Dataset {
    /// Loads `spec`'s rows, under `default` when the spec names no objective.
    pub fn load(spec: &DataSpec, default: Objective) -> Result<Self> {
        let objective = spec.objective.unwrap_or(default);
        let examples = load_examples(objective, &spec.path)?;
        Ok(Self { objective, path: spec.path.clone(), examples })
    }

    /// What the model card records of it: path, objective and usable rows.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path.display().to_string(),
            "objective": self.objective.name(),
            "rows": self.examples.len(),
        })
    }

    /// The lowest score that marks a pair positive for in-batch negatives on scored
    /// data: the top fifth of the file's score range (label 1 on 0/1 data, 4 and up on
    /// 0..5). A file whose rows share one score has no positives.
    pub fn positive_threshold(&self) -> f32 {
        let scores = self.examples.iter().map(|e| e.score);
        let low = scores.clone().fold(f32::INFINITY, f32::min);
        let high = scores.fold(f32::NEG_INFINITY, f32::max);
        if high > low {
            low + 0.8 * (high - low)
        } else {
            f32::INFINITY
        }
    }
}

/// One training row: its texts (1 to 3 columns) and, for CoSENT, a score.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub texts: Vec<String>,
    pub score: f32,
}

/// Loads the rows `objective` trains on: a text file (one sentence per line)
/// for SimCSE; for the others the TSV formats of the data README.
pub fn load_examples(objective: Objective, path: &Path) -> Result<Vec<Example>> {
    let examples: Vec<Example> = match objective {
        Objective::SimCse => read_sentences(path)?
            .into_iter()
            .map(|s| Example { texts: vec![s], score: 0.0 })
            .collect(),
        Objective::Pairs => load_pairs(path)?
            .into_iter()
            .filter(|p| p.label)
            .map(|p| Example { texts: vec![p.sentence1, p.sentence2], score: 1.0 })
            .collect(),
        Objective::Triplets => load_triplets(path)?
            .into_iter()
            .map(|t| Example { texts: vec![t.anchor, t.positive, t.negative], score: 0.0 })
            .collect(),
        Objective::Sts => load_sts(path)?
            .into_iter()
            .map(|p| Example { texts: vec![p.sentence1, p.sentence2], score: p.score as f32 })
            .collect(),
    };
    if examples.len() < 2 {
        return Err(TrainError::Data(format!(
            "{}: {} usable rows; training needs at least 2",
            path.display(),
            examples.len()
        )));
    }
    Ok(examples)
}

/// How a cross-encoder learns from a file, decided by the file's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossObjective {
    /// Binary cross-entropy on each pair's logit: pairs files give 0/1 targets, sts
    /// files soft targets (score / 5).
    Binary,
    /// Softmax cross-entropy over each query's group [positive, negatives...]
    /// (triplets files; rows sharing an anchor and a positive form one group).
    Listwise,
}

impl CrossObjective {
    /// The name used in model cards.
    pub fn name(self) -> &'static str {
        match self {
            Self::Binary => "binary cross-entropy",
            Self::Listwise => "listwise softmax cross-entropy",
        }
    }
}

/// The TSV formats of the data README, told apart by their header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsvFormat {
    /// `sentence1 sentence2 label`
    Pairs,
    /// `sentence1 sentence2 score`
    Sts,
    /// `anchor positive negative`
    Triplets,
}

/// Reads the header line of `path` to tell which format it holds.
pub fn tsv_format(path: &Path) -> Result<TsvFormat> {
    let text = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let header = text
        .split(|&b| b == b'\n')
        .map(|line| String::from_utf8_lossy(line).trim().to_lowercase())
        .find(|line| !line.is_empty())
        .unwrap_or_default();
    let columns: Vec<&str> = header.split('\t').map(str::trim).collect();
    match columns.as_slice() {
        ["anchor", ..] => Ok(TsvFormat::Triplets),
        [_, _, "label"] => Ok(TsvFormat::Pairs),
        [_, _, "score"] => Ok(TsvFormat::Sts),
        _ => Err(TrainError::Data(format!(
            "{}: the first line must be a header naming the format: sentence1<TAB>sentence2<TAB>label (pairs), ...<TAB>score (sts) or anchor<TAB>positive<TAB>negative (triplets)",
            path.display()
        ))),
    }
}

/// Loads the rows a cross-encoder trains on and the objective their format implies.
/// Binary rows hold `[query, document]` with the target in `score`; listwise rows hold
/// `[query, positive, negatives...]`.
pub fn load_cross_examples(path: &Path) -> Result<(CrossObjective, Vec<Example>)> {
    let pair = |a: String, b: String, score: f32| Example { texts: vec![a, b], score };
    let (objective, examples) = match tsv_format(path)? {
        TsvFormat::Pairs => (
            CrossObjective::Binary,
            load_pairs(path)?
                .into_iter()
                .map(|p| pair(p.sentence1, p.sentence2, if p.label { 1.0 } else { 0.0 }))
                .collect(),
        ),
        TsvFormat::Sts => {
            let rows = load_sts(path)?;
            if let Some(bad) = rows.iter().find(|p| !(0.0..=5.0).contains(&p.score)) {
                return Err(TrainError::Data(format!(
                    "{}: score {} is outside 0..5 (targets are score / 5)",
                    path.display(),
                    bad.score
                )));
            }
            let rows =
                rows.into_iter().map(|p| pair(p.sentence1, p.sentence2, (p.score / 5.0) as f32));
            (CrossObjective::Binary, rows.collect())
        }
        TsvFormat::Triplets => (CrossObjective::Listwise, query_groups(load_triplets(path)?)),
    };
    if examples.len() < 2 {
        return Err(TrainError::Data(format!(
            "{}: {} usable rows; training needs at least 2",
            path.display(),
            examples.len()
        )));
    }
    Ok((objective, examples))
}

/// Triplets sharing an anchor and a positive become one group, in first-seen order,
/// each negative once.
fn query_groups(triplets: Vec<Triplet>) -> Vec<Example> {
    let mut groups: Vec<Example> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for t in triplets {
        let key = (t.anchor.clone(), t.positive.clone());
        match index.get(&key) {
            Some(&g) => {
                if !groups[g].texts[2..].contains(&t.negative) {
                    groups[g].texts.push(t.negative);
                }
            }
            None => {
                index.insert(key, groups.len());
                groups.push(Example { texts: vec![t.anchor, t.positive, t.negative], score: 0.0 });
            }
        }
    }
    groups
}

/// One sentence per line; empty lines are skipped, invalid UTF-8 is an error with its line.
fn read_sentences(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line)
            .map_err(|_| {
                TrainError::Data(format!("{}:{}: not valid UTF-8", path.display(), i + 1))
            })?
            .trim_end_matches('\r');
        if !line.trim().is_empty() {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

/// The batches of one epoch: a seeded shuffle, cut into batches of `size`.
/// With `distinct_texts`, a row whose text is already in the batch waits for a
/// later batch, so no text is its own in-batch negative; a final short batch is kept.
pub fn epoch_batches(
    examples: &[Example],
    size: usize,
    seed: u64,
    distinct_texts: bool,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    if !distinct_texts {
        return order.chunks(size).map(<[usize]>::to_vec).collect();
    }
    let mut batches = Vec::new();
    let mut pending = order;
    while !pending.is_empty() {
        let (mut batch, mut seen, mut deferred) = (Vec::new(), HashSet::new(), Vec::new());
        for i in pending {
            let texts = &examples[i].texts;
            if batch.len() < size && texts.iter().all(|t| !seen.contains(t.as_str())) {
                texts.iter().for_each(|t| {
                    seen.insert(t.as_str());
                });
                batch.push(i);
            } else {
                deferred.push(i);
            }
        }
        batches.push(batch);
        pending = deferred;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(texts: &[&str]) -> Example {
        Example { texts: texts.iter().map(|s| s.to_string()).collect(), score: 0.0 }
    }

    #[test]
    fn batches_are_seeded_and_cover_every_row_once() {
        let rows: Vec<Example> =
            (0..10).map(|i| ex(&[&format!("a{i}"), &format!("b{i}")])).collect();
        let one = epoch_batches(&rows, 4, 7, true);
        assert_eq!(one, epoch_batches(&rows, 4, 7, true));
        assert_ne!(one, epoch_batches(&rows, 4, 8, true));
        let mut all: Vec<usize> = one.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn the_header_picks_the_cross_encoder_objective_and_triplets_group_by_query() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let pairs = write("p.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t0\n");
        let (objective, rows) = load_cross_examples(&pairs).unwrap();
        assert_eq!(objective, CrossObjective::Binary);
        assert_eq!(rows.iter().map(|r| r.score).collect::<Vec<_>>(), [1.0, 0.0]);
        let sts = write("s.tsv", "sentence1\tsentence2\tscore\na\tb\t4\nc\td\t0.5\n");
        let (_, rows) = load_cross_examples(&sts).unwrap();
        assert_eq!(rows.iter().map(|r| r.score).collect::<Vec<_>>(), [0.8, 0.1]);
        let triplets =
            write("t.tsv", "anchor\tpositive\tnegative\nq\tp\tn1\nq\tp\tn2\nq\tp\tn1\nr\ts\tn1\n");
        let (objective, rows) = load_cross_examples(&triplets).unwrap();
        assert_eq!(objective, CrossObjective::Listwise);
        assert_eq!(rows[0].texts, ["q", "p", "n1", "n2"]);
        assert_eq!(rows[1].texts, ["r", "s", "n1"]);
        let headless = write("h.tsv", "a\tb\t1\nc\td\t0\n");
        assert!(load_cross_examples(&headless).unwrap_err().to_string().contains("header"));
        let wide = write("w.tsv", "sentence1\tsentence2\tscore\na\tb\t7\nc\td\t0\n");
        assert!(load_cross_examples(&wide).unwrap_err().to_string().contains("outside 0..5"));
    }

    #[test]
    fn data_specs_take_an_optional_objective_prefix() {
        let spec = |s: &str| s.parse::<DataSpec>();
        assert_eq!(spec("a/b.tsv").unwrap(), DataSpec { objective: None, path: "a/b.tsv".into() });
        let zh = spec("sts:zh/atec/train.tsv").unwrap();
        assert_eq!((zh.objective, zh.path), (Some(Objective::Sts), "zh/atec/train.tsv".into()));
        assert_eq!(spec("triplets:m.tsv").unwrap().objective, Some(Objective::Triplets));
        assert_eq!(spec("./x:y.tsv").unwrap().path, PathBuf::from("./x:y.tsv"));
        assert_eq!(
            spec("bogus:x.tsv").unwrap_err().to_string(),
            "--data bogus:x.tsv: unknown objective `bogus` (expected simcse, pairs, triplets or sts)"
        );
        assert!(spec("cross-encoder:x.tsv").unwrap_err().to_string().contains("`cross-encoder`"));
        assert_eq!(spec("sts:").unwrap_err().to_string(), "--data sts:: the path is empty");
    }

    #[test]
    fn positives_are_the_top_fifth_of_the_score_range() {
        let marked = |scores: &[f32]| {
            let examples = scores.iter().map(|&score| Example { texts: vec![], score }).collect();
            let data = Dataset { objective: Objective::Sts, path: PathBuf::new(), examples };
            let threshold = data.positive_threshold();
            scores.iter().map(|&s| s >= threshold).collect::<Vec<_>>()
        };
        assert_eq!(marked(&[0.0, 1.0, 1.0, 0.0]), [false, true, true, false]);
        assert_eq!(marked(&[0.0, 3.9, 4.0, 5.0]), [false, false, true, true]);
        assert_eq!(marked(&[1.0, 1.0]), [false, false]);
    }

    #[test]
    fn duplicate_texts_are_kept_out_of_one_batch() {
        let rows = vec![ex(&["q", "x"]), ex(&["q", "y"]), ex(&["r", "z"]), ex(&["s", "x"])];
        for batch in epoch_batches(&rows, 4, 1, true) {
            let mut texts: Vec<&str> =
                batch.iter().flat_map(|&i| rows[i].texts.iter().map(String::as_str)).collect();
            let n = texts.len();
            texts.sort_unstable();
            texts.dedup();
            assert_eq!(texts.len(), n, "a text repeats inside a batch");
        }
    }
}
