//! The classifiers: multinomial logistic regression and a one-hidden-layer
//! (tanh) MLP over embedding vectors, fitted full-batch with L-BFGS on
//! `(1/S) sum_i s_i CE_i + 1/(2 C S) ||weights||^2` (S = sum of sample weights;
//! biases are not penalised), which is scikit-learn's LogisticRegression
//! objective with its `C`.

use serde::{Deserialize, Serialize};

use crate::lbfgs::{minimize, LbfgsOptions};
use crate::split::SplitMix64;

/// Which classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Kind {
    /// Softmax regression. With two classes, class 0's logit is pinned at zero
    /// (the usual binary logistic model).
    Logistic,
    /// One tanh hidden layer, then softmax.
    Mlp { hidden: usize },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Logistic => "logistic",
            Kind::Mlp { .. } => "mlp",
        }
    }
}

/// Per-class weights in the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeight {
    /// Every example counts once.
    None,
    /// scikit-learn's "balanced": class c weighs `n / (classes * n_c)`.
    #[default]
    Balanced,
}

impl ClassWeight {
    pub fn name(&self) -> &'static str {
        match self {
            ClassWeight::None => "none",
            ClassWeight::Balanced => "balanced",
        }
    }

    /// The weight of every example.
    pub fn sample_weights(&self, labels: &[usize], classes: usize) -> Vec<f64> {
        match self {
            ClassWeight::None => vec![1.0; labels.len()],
            ClassWeight::Balanced => {
                let mut counts = vec![0usize; classes];
                labels.iter().for_each(|&y| counts[y] += 1);
                let n = labels.len() as f64;
                let per_class: Vec<f64> = counts
                    .iter()
                    .map(|&c| if c == 0 { 0.0 } else { n / (classes as f64 * c as f64) })
                    .collect();
                labels.iter().map(|&y| per_class[y]).collect()
            }
        }
    }
}

/// A fitted classifier: parameters as named f32 tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    pub kind: Kind,
    pub dim: usize,
    pub classes: usize,
    /// `linear.weight` [classes, dim] and `linear.bias` [classes] for logistic;
    /// `hidden.weight` [h, dim], `hidden.bias` [h], `output.weight` [classes, h],
    /// `output.bias` [classes] for the MLP. Row-major.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// Layout of the flat parameter vector the optimiser sees.
#[derive(Debug, Clone, Copy)]
struct Layout {
    kind: Kind,
    dim: usize,
    classes: usize,
}

impl Layout {
    /// Rows of the output layer that are free (binary logistic pins class 0).
    fn free_rows(&self) -> usize {
        match self.kind {
            Kind::Logistic if self.classes == 2 => 1,
            _ => self.classes,
        }
    }

    fn len(&self) -> usize {
        match self.kind {
            Kind::Logistic => self.free_rows() * (self.dim + 1),
            Kind::Mlp { hidden } => hidden * (self.dim + 1) + self.classes * (hidden + 1),
        }
    }

    /// Which parameters carry the L2 penalty (weights, not biases).
    fn penalised(&self) -> Vec<bool> {
        let mut mask = vec![false; self.len()];
        match self.kind {
            Kind::Logistic => {
                mask[..self.free_rows() * self.dim].iter_mut().for_each(|m| *m = true)
            }
            Kind::Mlp { hidden } => {
                let w1 = hidden * self.dim;
                mask[..w1].iter_mut().for_each(|m| *m = true);
                let w2_start = w1 + hidden;
                mask[w2_start..w2_start + self.classes * hidden].iter_mut().for_each(|m| *m = true);
            }
        }
        mask
    }
}

/// Training data as a dense row-major matrix with labels and sample weights.
pub struct Problem<'a> {
    pub x: &'a [f32],
    pub dim: usize,
    pub labels: &'a [usize],
    pub weights: &'a [f64],
    pub classes: usize,
}

/// Fitting settings.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    pub kind: Kind,
    /// Inverse L2 strength, as scikit-learn's `C`.
    pub c: f64,
    pub seed: u64,
    pub lbfgs: LbfgsOptions,
}

/// Fits from `init` (or zeros / a seeded initialisation) and returns the flat parameters.
pub fn fit_flat(problem: &Problem, options: &FitOptions, init: Option<&[f64]>) -> Vec<f64> {
    let layout = Layout { kind: options.kind, dim: problem.dim, classes: problem.classes };
    let mut params = match init {
        Some(p) if p.len() == layout.len() => p.to_vec(),
        _ => initial(&layout, options.seed),
    };
    let mask = layout.penalised();
    let total: f64 = problem.weights.iter().sum::<f64>().max(1e-12);
    let l2 = 1.0 / (options.c * total);
    minimize(&mut params, &options.lbfgs, |p, g| {
        let data = objective(&layout, problem, p, g) / total;
        g.iter_mut().for_each(|v| *v /= total);
        let mut pen = 0.0;
        for i in 0..p.len() {
            if mask[i] {
                pen += p[i] * p[i];
                g[i] += l2 * p[i];
            }
        }
        data + 0.5 * l2 * pen
    });
    params
}

impl Classifier {
    /// Fits a classifier; see [`fit_flat`].
    pub fn fit(problem: &Problem, options: &FitOptions) -> Classifier {
        let flat = fit_flat(problem, options, None);
        Classifier::from_flat(options.kind, problem.dim, problem.classes, &flat)
    }

    /// Builds the named tensors from optimiser parameters.
    pub fn from_flat(kind: Kind, dim: usize, classes: usize, flat: &[f64]) -> Classifier {
        let layout = Layout { kind, dim, classes };
        let f: Vec<f32> = flat.iter().map(|&v| v as f32).collect();
        let tensors = match kind {
            Kind::Logistic => {
                let rows = layout.free_rows();
                let (w, b) = f.split_at(rows * dim);
                let (mut weight, mut bias) =
                    (Vec::with_capacity(classes * dim), Vec::with_capacity(classes));
                if rows < classes {
                    weight.extend(std::iter::repeat_n(0.0, dim));
                    bias.push(0.0);
                }
                weight.extend_from_slice(w);
                bias.extend_from_slice(b);
                vec![
                    ("linear.weight".into(), vec![classes, dim], weight),
                    ("linear.bias".into(), vec![classes], bias),
                ]
            }
            Kind::Mlp { hidden } => {
                let (w1, rest) = f.split_at(hidden * dim);
                let (b1, rest) = rest.split_at(hidden);
                let (w2, b2) = rest.split_at(classes * hidden);
                vec![
                    ("hidden.weight".into(), vec![hidden, dim], w1.to_vec()),
                    ("hidden.bias".into(), vec![hidden], b1.to_vec()),
                    ("output.weight".into(), vec![classes, hidden], w2.to_vec()),
                    ("output.bias".into(), vec![classes], b2.to_vec()),
                ]
            }
        };
        let mut tensors = tensors;
        // Name order, as a safetensors file lists them.
        tensors.sort_by(|a: &(String, Vec<usize>, Vec<f32>), b| a.0.cmp(&b.0));
        Classifier { kind, dim, classes, tensors }
    }

    /// Checks that the tensors have the shapes `kind`, `dim` and `classes` call for.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let expected: Vec<(&str, Vec<usize>)> = match self.kind {
            Kind::Logistic => vec![
                ("linear.weight", vec![self.classes, self.dim]),
                ("linear.bias", vec![self.classes]),
            ],
            Kind::Mlp { hidden } => vec![
                ("hidden.weight", vec![hidden, self.dim]),
                ("hidden.bias", vec![hidden]),
                ("output.weight", vec![self.classes, hidden]),
                ("output.bias", vec![self.classes]),
            ],
        };
        for (name, shape) in expected {
            match self.tensors.iter().find(|t| t.0 == name) {
                None => return Err(format!("missing tensor {name}")),
                Some((_, s, data))
                    if *s != shape || data.len() != shape.iter().product::<usize>() =>
                {
                    return Err(format!("tensor {name} has shape {s:?}, expected {shape:?}"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn tensor(&self, name: &str) -> &[f32] {
        &self.tensors.iter().find(|t| t.0 == name).expect("validated tensor").2
    }

    /// Class probabilities for one vector of length `dim`.
    pub fn predict_proba(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.dim, "input width");
        let mut logits = vec![0.0f32; self.classes];
        match self.kind {
            Kind::Logistic => {
                let (w, b) = (self.tensor("linear.weight"), self.tensor("linear.bias"));
                for c in 0..self.classes {
                    logits[c] = b[c] + dot32(&w[c * self.dim..(c + 1) * self.dim], x);
                }
            }
            Kind::Mlp { hidden } => {
                let (w1, b1) = (self.tensor("hidden.weight"), self.tensor("hidden.bias"));
                let (w2, b2) = (self.tensor("output.weight"), self.tensor("output.bias"));
                let h: Vec<f32> = (0..hidden)
                    .map(|j| (b1[j] + dot32(&w1[j * self.dim..(j + 1) * self.dim], x)).tanh())
                    .collect();
                for c in 0..self.classes {
                    logits[c] = b2[c] + dot32(&w2[c * hidden..(c + 1) * hidden], &h);
                }
            }
        }
        let p = softmax(&logits.iter().map(|&v| v as f64).collect::<Vec<_>>());
        p.into_iter().map(|v| v as f32).collect()
    }
}

fn initial(layout: &Layout, seed: u64) -> Vec<f64> {
    let mut p = vec![0.0; layout.len()];
    if let Kind::Mlp { hidden } = layout.kind {
        // Glorot-uniform weights, zero biases, from the seed.
        let mut rng = SplitMix64::new(seed ^ 0x5EED_4EAD);
        let a1 = (6.0 / (layout.dim + hidden) as f64).sqrt();
        for v in &mut p[..hidden * layout.dim] {
            *v = (2.0 * rng.unit() - 1.0) * a1;
        }
        let start = hidden * (layout.dim + 1);
        let a2 = (6.0 / (hidden + layout.classes) as f64).sqrt();
        for v in &mut p[start..start + layout.classes * hidden] {
            *v = (2.0 * rng.unit() - 1.0) * a2;
        }
    }
    p
}

/// Sum over rows of `s_i * CE_i`; writes the matching gradient (unscaled).
fn objective(layout: &Layout, pr: &Problem, params: &[f64], grad: &mut [f64]) -> f64 {
    let (d, k) = (layout.dim, layout.classes);
    let p32: Vec<f32> = params.iter().map(|&v| v as f32).collect();
    // Gradients accumulate in f32 over blocks of rows, then into f64.
    let mut acc = vec![0.0f32; params.len()];
    grad.iter_mut().for_each(|g| *g = 0.0);
    let mut loss = 0.0f64;
    let rows = pr.labels.len();
    let mut logits = vec![0.0f64; k];
    let hidden = match layout.kind {
        Kind::Mlp { hidden } => hidden,
        Kind::Logistic => 0,
    };
    let mut h = vec![0.0f32; hidden];
    let mut dh = vec![0.0f32; hidden];
    for i in 0..rows {
        let x = &pr.x[i * d..(i + 1) * d];
        let y = pr.labels[i];
        let s = pr.weights[i];
        match layout.kind {
            Kind::Logistic => {
                let free = layout.free_rows();
                let (w, b) = p32.split_at(free * d);
                let offset = k - free; // 1 when class 0 is pinned
                logits[0] = 0.0;
                for r in 0..free {
                    logits[r + offset] = (b[r] + dot32(&w[r * d..(r + 1) * d], x)) as f64;
                }
                let (ce, probs) = cross_entropy(&logits, y);
                loss += s * ce;
                let (gw, gb) = acc.split_at_mut(free * d);
                for r in 0..free {
                    let c = r + offset;
                    let coef = (s * (probs[c] - if c == y { 1.0 } else { 0.0 })) as f32;
                    axpy32(coef, x, &mut gw[r * d..(r + 1) * d]);
                    gb[r] += coef;
                }
            }
            Kind::Mlp { hidden } => {
                let (w1, rest) = p32.split_at(hidden * d);
                let (b1, rest) = rest.split_at(hidden);
                let (w2, b2) = rest.split_at(k * hidden);
                for j in 0..hidden {
                    h[j] = (b1[j] + dot32(&w1[j * d..(j + 1) * d], x)).tanh();
                }
                for c in 0..k {
                    logits[c] = (b2[c] + dot32(&w2[c * hidden..(c + 1) * hidden], &h)) as f64;
                }
                let (ce, probs) = cross_entropy(&logits, y);
                loss += s * ce;
                let (gw1, rest) = acc.split_at_mut(hidden * d);
                let (gb1, rest) = rest.split_at_mut(hidden);
                let (gw2, gb2) = rest.split_at_mut(k * hidden);
                dh.iter_mut().for_each(|v| *v = 0.0);
                for c in 0..k {
                    let coef = (s * (probs[c] - if c == y { 1.0 } else { 0.0 })) as f32;
                    axpy32(coef, &h, &mut gw2[c * hidden..(c + 1) * hidden]);
                    gb2[c] += coef;
                    axpy32(coef, &w2[c * hidden..(c + 1) * hidden], &mut dh);
                }
                for j in 0..hidden {
                    let dz = dh[j] * (1.0 - h[j] * h[j]);
                    axpy32(dz, x, &mut gw1[j * d..(j + 1) * d]);
                    gb1[j] += dz;
                }
            }
        }
        if (i + 1) % 256 == 0 || i + 1 == rows {
            for (g, a) in grad.iter_mut().zip(acc.iter_mut()) {
                *g += *a as f64;
                *a = 0.0;
            }
        }
    }
    loss
}

/// Softmax cross entropy of `logits` against class `y`, and the probabilities.
fn cross_entropy(logits: &[f64], y: usize) -> (f64, Vec<f64>) {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|&z| (z - max).exp()).sum();
    let lse = max + sum.ln();
    (lse - logits[y], logits.iter().map(|&z| (z - lse).exp()).collect())
}

pub(crate) fn softmax(logits: &[f64]) -> Vec<f64> {
    cross_entropy(logits, 0).1
}

pub(crate) fn dot32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn axpy32(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussian-ish blobs around well separated centres.
    pub(crate) fn blobs(
        n_per: usize,
        classes: usize,
        dim: usize,
        spread: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<usize>) {
        let mut rng = SplitMix64::new(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for c in 0..classes {
            for _ in 0..n_per {
                for j in 0..dim {
                    let centre = if j % classes == c { 1.0 } else { 0.0 };
                    x.push(centre + spread * (rng.unit() as f32 - 0.5));
                }
                y.push(c);
            }
        }
        (x, y)
    }

    fn accuracy(clf: &Classifier, x: &[f32], y: &[usize]) -> f64 {
        let d = clf.dim;
        let ok = y
            .iter()
            .enumerate()
            .filter(|(i, &yi)| {
                let p = clf.predict_proba(&x[i * d..(i + 1) * d]);
                let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
                best == yi
            })
            .count();
        ok as f64 / y.len() as f64
    }

    fn fit(kind: Kind, x: &[f32], y: &[usize], classes: usize, dim: usize, c: f64) -> Classifier {
        let w = ClassWeight::None.sample_weights(y, classes);
        let problem = Problem { x, dim, labels: y, weights: &w, classes };
        Classifier::fit(&problem, &FitOptions { kind, c, seed: 1, lbfgs: LbfgsOptions::default() })
    }

    #[test]
    fn logistic_separates_and_probabilities_sum_to_one() {
        for classes in [2, 4] {
            let (x, y) = blobs(50, classes, 8, 0.8, 3);
            let clf = fit(Kind::Logistic, &x, &y, classes, 8, 10.0);
            clf.validate().unwrap();
            assert_eq!(accuracy(&clf, &x, &y), 1.0, "{classes} classes");
            let p = clf.predict_proba(&x[..8]);
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{p:?}");
        }
    }

    #[test]
    fn mlp_learns_xor() {
        let mut x = Vec::new();
        let mut y = Vec::new();
        let mut rng = SplitMix64::new(9);
        for _ in 0..200 {
            let (a, b) = (rng.unit() as f32 - 0.5, rng.unit() as f32 - 0.5);
            x.extend([a * 4.0, b * 4.0]);
            y.push(usize::from((a > 0.0) != (b > 0.0)));
        }
        let lin = fit(Kind::Logistic, &x, &y, 2, 2, 100.0);
        assert!(accuracy(&lin, &x, &y) < 0.8, "a linear model cannot do XOR");
        let mlp = fit(Kind::Mlp { hidden: 16 }, &x, &y, 2, 2, 100.0);
        mlp.validate().unwrap();
        assert!(accuracy(&mlp, &x, &y) > 0.95, "{}", accuracy(&mlp, &x, &y));
    }

    /// The analytic gradient matches finite differences (both kinds, weighted).
    #[test]
    fn gradient_matches_finite_differences() {
        let (x, y) = blobs(5, 3, 4, 2.0, 5);
        let w: Vec<f64> = (0..y.len()).map(|i| 0.5 + (i % 3) as f64).collect();
        let problem = Problem { x: &x, dim: 4, labels: &y, weights: &w, classes: 3 };
        for kind in [Kind::Logistic, Kind::Mlp { hidden: 3 }] {
            let layout = Layout { kind, dim: 4, classes: 3 };
            let mut rng = SplitMix64::new(2);
            let p: Vec<f64> = (0..layout.len()).map(|_| rng.unit() - 0.5).collect();
            let mut g = vec![0.0; p.len()];
            objective(&layout, &problem, &p, &mut g);
            for i in 0..p.len() {
                let (mut hi, mut lo) = (p.clone(), p.clone());
                hi[i] += 1e-3;
                lo[i] -= 1e-3;
                let mut scratch = vec![0.0; p.len()];
                let num = (objective(&layout, &problem, &hi, &mut scratch)
                    - objective(&layout, &problem, &lo, &mut scratch))
                    / 2e-3;
                assert!(
                    (num - g[i]).abs() < 2e-3 * (1.0 + num.abs()),
                    "{kind:?} param {i}: {num} vs {}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn balanced_weights_match_sklearn() {
        let w = ClassWeight::Balanced.sample_weights(&[0, 0, 0, 1], 2);
        assert_eq!(w, vec![4.0 / 6.0, 4.0 / 6.0, 4.0 / 6.0, 2.0]);
        assert_eq!(ClassWeight::None.sample_weights(&[0, 1], 2), vec![1.0, 1.0]);
    }

    /// On an imbalanced, overlapping set, balanced weights raise the minority
    /// class's recall.
    #[test]
    fn balanced_weights_help_the_minority() {
        let (mut x, mut y) = blobs(400, 2, 4, 3.0, 11);
        // Keep 40 of class 1.
        let keep: Vec<usize> = (0..y.len()).filter(|&i| y[i] == 0 || i < 440).collect();
        x = keep.iter().flat_map(|&i| x[i * 4..(i + 1) * 4].to_vec()).collect();
        y = keep.iter().map(|&i| y[i]).collect();
        let recall = |weight: ClassWeight| {
            let w = weight.sample_weights(&y, 2);
            let problem = Problem { x: &x, dim: 4, labels: &y, weights: &w, classes: 2 };
            let clf = Classifier::fit(
                &problem,
                &FitOptions {
                    kind: Kind::Logistic,
                    c: 1.0,
                    seed: 0,
                    lbfgs: LbfgsOptions::default(),
                },
            );
            let minority: Vec<usize> = (0..y.len()).filter(|&i| y[i] == 1).collect();
            minority.iter().filter(|&&i| clf.predict_proba(&x[i * 4..(i + 1) * 4])[1] > 0.5).count()
                as f64
                / minority.len() as f64
        };
        let (plain, balanced) = (recall(ClassWeight::None), recall(ClassWeight::Balanced));
        assert!(balanced > plain + 0.1, "balanced {balanced} vs plain {plain}");
    }
}
