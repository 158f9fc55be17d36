//! Classification metrics: accuracy, macro-F1, per-class precision/recall/F1.
//! Values are percentages (x100), as the project's JSON reports print them.

use serde::{Deserialize, Serialize};

/// Figures for one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Examples of this class (true label).
    pub support: usize,
}

/// Figures for a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
}

impl Metrics {
    /// Compares predicted with true class indices; `classes` names every class.
    pub fn compute(truth: &[usize], predicted: &[usize], classes: &[String]) -> Metrics {
        assert_eq!(truth.len(), predicted.len());
        let k = classes.len();
        let (mut tp, mut fp, mut support) = (vec![0usize; k], vec![0usize; k], vec![0usize; k]);
        for (&t, &p) in truth.iter().zip(predicted) {
            support[t] += 1;
            if t == p {
                tp[t] += 1;
            } else {
                fp[p] += 1;
            }
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let precision = ratio(tp[c], tp[c] + fp[c]);
                let recall = ratio(tp[c], support[c]);
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassMetrics {
                    label: classes[c].clone(),
                    precision: 100.0 * precision,
                    recall: 100.0 * recall,
                    f1: 100.0 * f1,
                    support: support[c],
                }
            })
            .collect();
        let correct: usize = tp.iter().sum();
        Metrics {
            accuracy: 100.0 * ratio(correct, truth.len()),
            macro_f1: per_class.iter().map(|m| m.f1).sum::<f64>() / k.max(1) as f64,
            per_class,
        }
    }
}

/// Index of the largest probability (first on ties).
pub fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        let classes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        // a: tp 2, fn 1 ; b: tp 1, fp 1 (the a predicted b) ; c: never predicted, one example -> f1 0.
        let m = Metrics::compute(&[0, 0, 0, 1, 2], &[0, 0, 1, 1, 0], &classes);
        assert!((m.accuracy - 60.0).abs() < 1e-9);
        let a = &m.per_class[0];
        assert!((a.precision - 200.0 / 3.0).abs() < 1e-9 && (a.recall - 200.0 / 3.0).abs() < 1e-9);
        let b = &m.per_class[1];
        assert!((b.precision - 50.0).abs() < 1e-9 && (b.recall - 100.0).abs() < 1e-9);
        assert!((b.f1 - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(m.per_class[2].f1, 0.0);
        assert_eq!(m.per_class[2].support, 1);
        assert!((m.macro_f1 - (200.0 / 3.0 + 200.0 / 3.0) / 3.0).abs() < 1e-9);
        assert_eq!(argmax(&[0.1, 0.5, 0.5]), 1);
    }
}
