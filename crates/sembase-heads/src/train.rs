//! Cross validation over an L2 grid, and the final fit on all data.

use rayon::prelude::*;
use serde::Serialize;

use crate::classifier::{fit_flat, ClassWeight, Classifier, FitOptions, Kind, Problem};
use crate::error::{Error, Result};
use crate::lbfgs::LbfgsOptions;
use crate::metrics::{argmax, Metrics};
use crate::split::stratified_folds;

/// How to train a head.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub kind: Kind,
    pub folds: usize,
    pub seed: u64,
    /// Candidate `C` values (inverse L2 strength, scikit-learn's convention);
    /// the one with the best cross-validated accuracy is kept.
    pub grid: Vec<f64>,
    pub class_weight: ClassWeight,
    pub lbfgs: LbfgsOptions,
}

impl TrainConfig {
    /// Defaults for a kind: 10 folds, seed 0, balanced class weights, and a grid
    /// of 0.1..100 for logistic regression (1, 10 for the slower MLP).
    pub fn new(kind: Kind) -> Self {
        let (grid, max_iter) = match kind {
            Kind::Logistic => (vec![0.1, 1.0, 10.0, 100.0], 1000),
            Kind::Mlp { .. } => (vec![1.0, 10.0], 300),
        };
        TrainConfig {
            kind,
            folds: 10,
            seed: 0,
            grid,
            class_weight: ClassWeight::Balanced,
            lbfgs: LbfgsOptions { max_iter, ..LbfgsOptions::default() },
        }
    }
}

/// What cross validation found.
#[derive(Debug, Clone, Serialize)]
pub struct CvReport {
    pub folds: usize,
    pub seed: u64,
    /// Fold of every row (rows in input order).
    pub fold_ids: Vec<usize>,
    pub grid: Vec<f64>,
    /// Pooled out-of-fold accuracy (x100) for each grid value.
    pub grid_accuracy: Vec<f64>,
    /// The chosen `C`.
    pub c: f64,
    /// Out-of-fold metrics at the chosen `C`.
    pub metrics: Metrics,
    /// Out-of-fold predicted class of every row at the chosen `C`.
    pub predictions: Vec<usize>,
}

/// K-fold cross validation of every grid value on the same stratified, seeded
/// folds (folds run in parallel; grid values warm-start from the previous one).
/// `x` is row-major, `labels.len()` rows of width `dim`.
pub fn cross_validate(
    x: &[f32],
    dim: usize,
    labels: &[usize],
    classes: &[String],
    config: &TrainConfig,
) -> Result<CvReport> {
    check_inputs(x, dim, labels, classes, config)?;
    let fold_ids = stratified_folds(labels, config.folds, config.seed);
    // per_fold[f] = (test rows, predictions per grid value)
    let per_fold: Vec<(Vec<usize>, Vec<Vec<usize>>)> = (0..config.folds)
        .into_par_iter()
        .map(|fold| {
            let train: Vec<usize> = (0..labels.len()).filter(|&i| fold_ids[i] != fold).collect();
            let test: Vec<usize> = (0..labels.len()).filter(|&i| fold_ids[i] == fold).collect();
            let tx = gather(x, dim, &train);
            let ty: Vec<usize> = train.iter().map(|&i| labels[i]).collect();
            let w = config.class_weight.sample_weights(&ty, classes.len());
            let problem = Problem { x: &tx, dim, labels: &ty, weights: &w, classes: classes.len() };
            let mut init: Option<Vec<f64>> = None;
            let mut preds = Vec::with_capacity(config.grid.len());
            for &c in &config.grid {
                let options =
                    FitOptions { kind: config.kind, c, seed: config.seed, lbfgs: config.lbfgs };
                let flat = fit_flat(&problem, &options, init.as_deref());
                let clf = Classifier::from_flat(config.kind, dim, classes.len(), &flat);
                preds.push(
                    test.iter()
                        .map(|&i| argmax(&clf.predict_proba(&x[i * dim..(i + 1) * dim])))
                        .collect(),
                );
                init = Some(flat);
            }
            (test, preds)
        })
        .collect();
    let mut oof = vec![vec![0usize; labels.len()]; config.grid.len()];
    for (test, preds) in &per_fold {
        for (g, p) in preds.iter().enumerate() {
            for (&row, &class) in test.iter().zip(p) {
                oof[g][row] = class;
            }
        }
    }
    let grid_accuracy: Vec<f64> =
        oof.iter().map(|p| Metrics::compute(labels, p, classes).accuracy).collect();
    let mut best = 0;
    for (g, &acc) in grid_accuracy.iter().enumerate() {
        if acc > grid_accuracy[best] {
            best = g;
        }
    }
    Ok(CvReport {
        folds: config.folds,
        seed: config.seed,
        fold_ids,
        grid: config.grid.clone(),
        grid_accuracy,
        c: config.grid[best],
        metrics: Metrics::compute(labels, &oof[best], classes),
        predictions: oof.swap_remove(best),
    })
}

/// Cross validates, then fits on all rows with the chosen `C`.
pub fn train_head(
    x: &[f32],
    dim: usize,
    labels: &[usize],
    classes: &[String],
    config: &TrainConfig,
) -> Result<(Classifier, CvReport)> {
    let report = cross_validate(x, dim, labels, classes, config)?;
    let w = config.class_weight.sample_weights(labels, classes.len());
    let problem = Problem { x, dim, labels, weights: &w, classes: classes.len() };
    let options =
        FitOptions { kind: config.kind, c: report.c, seed: config.seed, lbfgs: config.lbfgs };
    Ok((Classifier::fit(&problem, &options), report))
}

fn check_inputs(
    x: &[f32],
    dim: usize,
    labels: &[usize],
    classes: &[String],
    config: &TrainConfig,
) -> Result<()> {
    if dim == 0 || x.len() != labels.len() * dim {
        return Err(Error::Invalid(format!(
            "{} values for {} rows of width {dim}",
            x.len(),
            labels.len()
        )));
    }
    if config.folds < 2 {
        return Err(Error::Invalid(format!("need at least 2 folds, got {}", config.folds)));
    }
    if config.grid.is_empty() || config.grid.iter().any(|&c| !(c > 0.0 && c.is_finite())) {
        return Err(Error::Invalid(format!(
            "the C grid must be positive numbers, got {:?}",
            config.grid
        )));
    }
    if classes.len() < 2 {
        return Err(Error::Invalid("a classifier needs at least two classes".into()));
    }
    let mut counts = vec![0usize; classes.len()];
    for &y in labels {
        if y >= classes.len() {
            return Err(Error::Invalid(format!(
                "label index {y} out of range for {} classes",
                classes.len()
            )));
        }
        counts[y] += 1;
    }
    if let Some(c) = counts.iter().position(|&n| n < config.folds) {
        return Err(Error::Invalid(format!(
            "class {:?} has {} example(s), fewer than the {} folds",
            classes[c], counts[c], config.folds
        )));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid("embeddings contain NaN or infinite values".into()));
    }
    Ok(())
}

fn gather(x: &[f32], dim: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * dim);
    for &i in rows {
        out.extend_from_slice(&x[i * dim..(i + 1) * dim]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::SplitMix64;

    fn noisy(n: usize, seed: u64) -> (Vec<f32>, Vec<usize>, Vec<String>) {
        let mut rng = SplitMix64::new(seed);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..n {
            let c = i % 3;
            for j in 0..6 {
                x.push(if j == c { 1.0 } else { 0.0 } + 1.2 * (rng.unit() as f32 - 0.5));
            }
            y.push(c);
        }
        (x, y, vec!["a".into(), "b".into(), "c".into()])
    }

    #[test]
    fn cv_is_deterministic_and_sensible() {
        let (x, y, classes) = noisy(150, 4);
        let mut config = TrainConfig::new(Kind::Logistic);
        config.folds = 5;
        let a = cross_validate(&x, 6, &y, &classes, &config).unwrap();
        let b = cross_validate(&x, 6, &y, &classes, &config).unwrap();
        assert_eq!(a.fold_ids, b.fold_ids);
        assert_eq!(a.predictions, b.predictions);
        assert_eq!(a.grid_accuracy, b.grid_accuracy);
        assert_eq!(a.grid_accuracy.len(), 4);
        assert!(a.metrics.accuracy > 80.0, "{:?}", a.metrics);
        assert_eq!(a.metrics.accuracy, a.grid_accuracy.iter().cloned().fold(0.0, f64::max));
        let (clf, _) = train_head(&x, 6, &y, &classes, &config).unwrap();
        assert_eq!(clf.classes, 3);
    }

    #[test]
    fn rejects_bad_inputs() {
        let (x, y, classes) = noisy(12, 1);
        let config = TrainConfig::new(Kind::Logistic); // 10 folds, 4 per class
        let e = cross_validate(&x, 6, &y, &classes, &config).unwrap_err().to_string();
        assert!(e.contains("fewer than the 10 folds"), "{e}");
        let mut c2 = config.clone();
        c2.folds = 2;
        c2.grid = vec![0.0];
        assert!(cross_validate(&x, 6, &y, &classes, &c2).is_err());
        c2.grid = vec![1.0];
        assert!(cross_validate(&x[1..], 6, &y, &classes, &c2).is_err());
    }
}
