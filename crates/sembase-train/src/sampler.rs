//! The datasets of a run and its batch order: each batch comes from one dataset
//! (in-batch negatives never cross datasets), the datasets interleaved by a seeded
//! shuffle or in turn.

use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::bi_encoder::SEED_SPREAD;
use crate::data::{epoch_batches, Dataset, Example};
use crate::error::TrainError;

/// Several datasets behind one row numbering: dataset 0's rows first, then dataset 1's...
#[derive(Debug, Clone)]
pub struct Mixture {
    datasets: Vec<Dataset>,
    /// The first row number of each dataset.
    starts: Vec<usize>,
}

impl Mixture {
    pub fn new(datasets: Vec<Dataset>) -> Self {
        let starts = datasets
            .iter()
            .scan(0, |next, d| {
                let start = *next;
                *next += d.examples.len();
                Some(start)
            })
            .collect();
        Self { datasets, starts }
    }

    pub fn datasets(&self) -> &[Dataset] {
        &self.datasets
    }

    /// The dataset that holds row `row`.
    pub fn dataset_of(&self, row: usize) -> &Dataset {
        &self.datasets[self.starts.partition_point(|&s| s <= row) - 1]
    }

    /// Row `row` of the numbering.
    pub fn row(&self, row: usize) -> &Example {
        let d = self.starts.partition_point(|&s| s <= row) - 1;
        &self.datasets[d].examples[row - self.starts[d]]
    }

    /// One epoch's batches: each dataset cut by [`epoch_batches`] (dataset `d` under
    /// `seed ^ d * SEED_SPREAD`, so a single dataset keeps `seed` itself), with distinct
    /// texts where `distinct` says, then interleaved by `sampling`.
    pub fn batches(
        &self,
        size: usize,
        seed: u64,
        sampling: Sampling,
        distinct: impl Fn(&Dataset) -> bool,
    ) -> Vec<Vec<usize>> {
        let per_dataset = self
            .datasets
            .iter()
            .zip(&self.starts)
            .enumerate()
            .map(|(d, (set, &start))| {
                let own_seed = seed ^ (d as u64).wrapping_mul(SEED_SPREAD);
                let batches = epoch_batches(&set.examples, size, own_seed, distinct(set));
                batches.into_iter().map(|b| b.into_iter().map(|i| i + start).collect()).collect()
            })
            .collect();
        interleave(per_dataset, sampling, seed.wrapping_add(SEED_SPREAD))
    }
}

/// How the batches of several datasets interleave within an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sampling {
    /// A seeded shuffle of all batches: each dataset is drawn in proportion to its size.
    #[default]
    Proportional,
    /// One batch of each dataset in turn, skipping those already used up.
    RoundRobin,
}

impl Sampling {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Proportional => "proportional",
            Self::RoundRobin => "round-robin",
        }
    }
}

impl FromStr for Sampling {
    type Err = TrainError;

    fn from_str(name: &str) -> Result<Self, TrainError> {
        [Self::Proportional, Self::RoundRobin].into_iter().find(|s| s.name() == name).ok_or_else(
            || {
                TrainError::Config(format!(
                    "--sampling {name}: expected proportional or round-robin"
                ))
            },
        )
    }
}

/// One epoch's batches from each dataset's own (already shuffled) batches, each
/// dataset's kept in its order. A single dataset's batches come back unchanged.
pub fn interleave(
    per_dataset: Vec<Vec<Vec<usize>>>,
    sampling: Sampling,
    seed: u64,
) -> Vec<Vec<usize>> {
    let turns: Vec<usize> = match sampling {
        Sampling::Proportional => {
            let mut turns: Vec<usize> =
                per_dataset.iter().enumerate().flat_map(|(d, b)| vec![d; b.len()]).collect();
            turns.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            turns
        }
        Sampling::RoundRobin => {
            let sizes: Vec<usize> = per_dataset.iter().map(Vec::len).collect();
            let rounds = sizes.iter().copied().max().unwrap_or(0);
            let sizes = &sizes;
            (0..rounds).flat_map(|r| (0..sizes.len()).filter(move |&d| r < sizes[d])).collect()
        }
    };
    let mut sources: Vec<_> = per_dataset.into_iter().map(Vec::into_iter).collect();
    turns.into_iter().filter_map(|d| sources[d].next()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Objective;

    fn dataset(objective: Objective, rows: usize, tag: &str) -> Dataset {
        let examples = (0..rows)
            .map(|i| Example { texts: vec![format!("{tag}{i}"), format!("{tag}{i}'")], score: 0.0 })
            .collect();
        Dataset { objective, path: tag.into(), examples }
    }

    #[test]
    fn mixed_batches_never_cross_datasets_and_cover_every_row_once() {
        let mixture = Mixture::new(vec![
            dataset(Objective::Sts, 10, "s"),
            dataset(Objective::Triplets, 7, "t"),
            dataset(Objective::Pairs, 5, "p"),
        ]);
        for sampling in [Sampling::Proportional, Sampling::RoundRobin] {
            let batches = mixture.batches(3, 11, sampling, |_| true);
            for batch in &batches {
                let first = mixture.dataset_of(batch[0]).path.clone();
                assert!(batch.iter().all(|&i| mixture.dataset_of(i).path == first), "{batch:?}");
                let tag = first.to_str().unwrap();
                assert!(batch.iter().all(|&i| mixture.row(i).texts[0].starts_with(tag)));
            }
            let mut rows: Vec<usize> = batches.concat();
            rows.sort_unstable();
            assert_eq!(rows, (0..22).collect::<Vec<_>>());
            assert_eq!(batches, mixture.batches(3, 11, sampling, |_| true), "not deterministic");
        }
    }

    #[test]
    fn one_dataset_is_batched_as_before() {
        let set = dataset(Objective::Pairs, 9, "p");
        let mixture = Mixture::new(vec![set.clone()]);
        for seed in [0, 42] {
            let before = epoch_batches(&set.examples, 4, seed, true);
            assert_eq!(mixture.batches(4, seed, Sampling::Proportional, |_| true), before);
        }
    }

    /// `sizes[d]` batches for dataset `d`, each batch `[d * 1000 + k]`.
    fn datasets(sizes: &[usize]) -> Vec<Vec<Vec<usize>>> {
        sizes
            .iter()
            .enumerate()
            .map(|(d, &n)| (0..n).map(|k| vec![d * 1000 + k]).collect())
            .collect()
    }

    /// Which dataset each batch came from.
    fn sources(batches: &[Vec<usize>]) -> Vec<usize> {
        batches.iter().map(|b| b[0] / 1000).collect()
    }

    #[test]
    fn proportional_keeps_every_batch_once_in_dataset_order_and_is_seeded() {
        let mixed = interleave(datasets(&[6, 3, 1]), Sampling::Proportional, 5);
        let from = sources(&mixed);
        assert_eq!([0, 1, 2].map(|d| from.iter().filter(|&&s| s == d).count()), [6, 3, 1]);
        for d in 0..3 {
            let own: Vec<usize> = mixed.iter().filter(|b| b[0] / 1000 == d).map(|b| b[0]).collect();
            assert!(own.windows(2).all(|w| w[0] < w[1]), "dataset {d} out of order: {own:?}");
        }
        assert_eq!(mixed, interleave(datasets(&[6, 3, 1]), Sampling::Proportional, 5));
        let others: Vec<_> = (6..12)
            .map(|seed| sources(&interleave(datasets(&[6, 3, 1]), Sampling::Proportional, seed)))
            .collect();
        assert!(others.iter().any(|o| *o != from), "the seed does not change the order");
    }

    #[test]
    fn proportional_draws_each_dataset_by_its_share_throughout_the_epoch() {
        // 300 and 100 batches: the first half of the epoch holds about half of each.
        let from = sources(&interleave(datasets(&[300, 100]), Sampling::Proportional, 1));
        let early = from[..200].iter().filter(|&&d| d == 1).count();
        assert!((30..=70).contains(&early), "{early} of dataset 1's 100 batches in the first half");
    }

    #[test]
    fn round_robin_takes_turns_and_skips_used_up_datasets() {
        let mixed = interleave(datasets(&[3, 1, 2]), Sampling::RoundRobin, 9);
        let ids: Vec<usize> = mixed.iter().map(|b| b[0]).collect();
        assert_eq!(ids, [0, 1000, 2000, 1, 2001, 2]);
    }

    #[test]
    fn one_dataset_comes_back_unchanged() {
        for sampling in [Sampling::Proportional, Sampling::RoundRobin] {
            assert_eq!(interleave(datasets(&[4]), sampling, 3), datasets(&[4])[0]);
        }
    }

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused() {
        for s in [Sampling::Proportional, Sampling::RoundRobin] {
            assert_eq!(s.name().parse::<Sampling>().unwrap(), s);
        }
        let err = "random".parse::<Sampling>().unwrap_err().to_string();
        assert_eq!(err, "--sampling random: expected proportional or round-robin");
    }
}
