//! Training examples for each objective, and the seeded batch order.

use std::collections::HashSet;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use sembase_eval::tasks::{load_pairs, load_sts, load_triplets};

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
