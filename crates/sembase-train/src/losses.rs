//! Contrastive and ranking losses over sentence vectors, with their
//! Matryoshka form (the same loss summed over truncated widths), and the losses
//! of a cross-encoder's logits (binary and listwise) and of a bi-encoder distilled
//! from one (MarginMSE, KL divergence over in-batch candidates).

use candle_core::{DType, Tensor, D};
use candle_nn::ops::log_softmax;

use crate::error::Result;

/// Scales cosine similarities into logits: 1 / temperature (0.05 -> 20).
pub const DEFAULT_SCALE: f64 = 20.0;

/// Rows scaled to unit length.
fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norms)?)
}

/// Cosine similarity of every row of `a` with every row of `b`: `(n, m)`.
pub fn cosine_matrix(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(normalize_rows(a)?.matmul(&normalize_rows(b)?.t()?)?)
}

/// Cosine similarity of matching rows: `(n,)`.
pub fn cosine_rows(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((normalize_rows(a)? * normalize_rows(b)?)?.sum(1)?)
}

/// Mean cross-entropy of `logits` `(n, m)` against target columns `0..n`.
fn diagonal_cross_entropy(logits: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let targets = Tensor::arange(0u32, n as u32, logits.device())?;
    Ok(candle_nn::loss::cross_entropy(logits, &targets)?)
}

/// In-batch-negatives InfoNCE (sentence-transformers' MultipleNegativesRankingLoss,
/// SimCSE): anchor `i` must pick candidate `i` among all `candidates` (the
/// positives, then any hard negatives). `symmetric` adds the loss of positives
/// picking their anchor among all anchors.
pub fn in_batch_negatives(
    anchors: &Tensor,
    candidates: &Tensor,
    scale: f64,
    symmetric: bool,
) -> Result<Tensor> {
    let forward = diagonal_cross_entropy(&(cosine_matrix(anchors, candidates)? * scale)?)?;
    if !symmetric {
        return Ok(forward);
    }
    let n = anchors.dim(0)?;
    let positives = candidates.narrow(0, 0, n)?;
    let backward = diagonal_cross_entropy(&(cosine_matrix(&positives, anchors)? * scale)?)?;
    Ok(((forward + backward)? * 0.5)?)
}

/// CoSENT (Su 2022; sentence-transformers' CoSENTLoss): for every two pairs where
/// pair `i` is more similar than pair `j` by its score, penalise `cos_j > cos_i`:
/// `log(1 + sum exp(scale * (cos_j - cos_i)))`. Works for graded scores and 0/1 labels alike.
pub fn cosent(a: &Tensor, b: &Tensor, scores: &[f32], scale: f64) -> Result<Tensor> {
    rank_by_score(&cosine_rows(a, b)?, scores, scale)
}

/// AnglE (Li & Li 2023, "AnglE-optimized text embeddings", arXiv:2309.12871): CoSENT's
/// ranking on [`angle_rows`] instead of the cosine, so the gradient does not vanish
/// where the cosine saturates. Scale 20, as sentence-transformers' AnglELoss.
pub fn angle(a: &Tensor, b: &Tensor, scores: &[f32], scale: f64) -> Result<Tensor> {
    rank_by_score(&angle_rows(a, b)?, scores, scale)
}

/// CoSENT on every pair plus `weight` times in-batch negatives over the pairs marked
/// `positive` (each positive's first text must pick its own second text among the
/// positives' second texts), as AnglE's paper pairs its ranking loss with a contrastive
/// one. Fewer than two positives leave nothing to contrast: CoSENT alone.
pub fn cosent_with_negatives(
    a: &Tensor,
    b: &Tensor,
    scores: &[f32],
    positive: &[bool],
    scale: f64,
    weight: f64,
) -> Result<Tensor> {
    let ranking = cosent(a, b, scores, scale)?;
    let rows: Vec<u32> = (0..positive.len() as u32).filter(|&i| positive[i as usize]).collect();
    if rows.len() < 2 {
        return Ok(ranking);
    }
    let rows = Tensor::new(rows.as_slice(), a.device())?;
    let contrast =
        in_batch_negatives(&a.index_select(&rows, 0)?, &b.index_select(&rows, 0)?, scale, false)?;
    Ok((ranking + (contrast * weight)?)?)
}

/// AnglE's similarity of matching rows: each vector `[re | im]` of width 2d is a
/// complex vector `re + i im` (an odd width gains a zero column); the quotient of
/// unit-length `x` by `y`, whose real parts sum to `cos(x, y)` and imaginary parts to
/// `sum(im_x re_y - re_x im_y) / (|x| |y|)`; the score is the absolute value of the sum
/// of both, as in the authors' reference code and sentence-transformers'
/// `pairwise_angle_sim`.
pub fn angle_rows(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = (normalize_rows(&even_width(a)?)?, normalize_rows(&even_width(b)?)?);
    let half = a.dim(1)? / 2;
    let (re_a, im_a) = (a.narrow(1, 0, half)?, a.narrow(1, half, half)?);
    let (re_b, im_b) = (b.narrow(1, 0, half)?, b.narrow(1, half, half)?);
    let real = (&a * &b)?.sum(1)?;
    let imaginary = ((im_a * &re_b)? - (re_a * im_b)?)?.sum(1)?;
    Ok((real + imaginary)?.abs()?)
}

/// `x` with a zero column appended when its width is odd (a complex vector needs pairs).
fn even_width(x: &Tensor) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    if d % 2 == 0 {
        return Ok(x.clone());
    }
    Ok(Tensor::cat(&[x, &Tensor::zeros((n, 1), x.dtype(), x.device())?], 1)?)
}

/// CoSENT's ranking of per-pair similarities `(n,)` by gold `scores`:
/// `log(1 + sum over score_i > score_j of exp(scale * (sim_j - sim_i)))`.
fn rank_by_score(similarities: &Tensor, scores: &[f32], scale: f64) -> Result<Tensor> {
    let n = scores.len();
    let sim = (similarities * scale)?;
    // diff[i][j] = sim_j - sim_i
    let diff = sim.unsqueeze(0)?.broadcast_sub(&sim.unsqueeze(1)?)?;
    let keep: Vec<f32> =
        (0..n * n).map(|k| if scores[k / n] > scores[k % n] { 0.0 } else { -1e12 }).collect();
    let keep = Tensor::from_vec(keep, (n, n), similarities.device())?;
    let masked = (diff + keep)?.flatten_all()?;
    let zero = Tensor::zeros(1, DType::F32, similarities.device())?;
    log_sum_exp(&Tensor::cat(&[&zero, &masked], 0)?)
}

/// Mean binary cross-entropy of `logits` `(n,)` against targets in `[0, 1]` (soft
/// targets allowed), as `torch.nn.functional.binary_cross_entropy_with_logits` and
/// sentence-transformers' BinaryCrossEntropyLoss compute it; in the stable form
/// `max(x, 0) - x y + ln(1 + e^-|x|)`, which never exponentiates a large logit.
pub fn binary_cross_entropy(logits: &Tensor, targets: &[f32]) -> Result<Tensor> {
    let y = Tensor::from_slice(targets, targets.len(), logits.device())?;
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok(((logits.relu()? - (logits * y)?)? + softplus)?.mean_all()?)
}

/// Listwise softmax cross-entropy: `logits` `(n,)` hold consecutive groups of
/// `group_sizes`, each a query's positive first and its negatives after; the loss is
/// the mean over groups of `-log softmax(group)[0]`. Groups may differ in size.
pub fn listwise_softmax(logits: &Tensor, group_sizes: &[usize]) -> Result<Tensor> {
    let mut start = 0;
    let mut per_group = Vec::with_capacity(group_sizes.len());
    for &size in group_sizes {
        let group = logits.narrow(0, start, size)?;
        per_group.push((log_sum_exp(&group)? - group.get(0)?)?);
        start += size;
    }
    Ok(Tensor::stack(&per_group, 0)?.mean_all()?)
}

/// MarginMSE (Hofstätter et al.; sentence-transformers' MarginMSELoss): the student's
/// margin `scale * (cos(a, p) - cos(a, n))` regressed onto the teacher's logit margin
/// `teacher_margins` `(n,)`, mean squared error. Cosines live in [-1, 1] and logits do
/// not; the logit scale of the contrastive losses gives the cosine margins the range
/// the in-batch losses already train them to.
pub fn margin_mse(
    anchors: &Tensor,
    positives: &Tensor,
    negatives: &Tensor,
    teacher_margins: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let student = ((cosine_rows(anchors, positives)? - cosine_rows(anchors, negatives)?)? * scale)?;
    Ok((student - teacher_margins)?.sqr()?.mean_all()?)
}

/// KL divergence from the teacher's distribution over each anchor's in-batch candidates
/// (the softmax of its logits `teacher` `(n, m)`) to the student's (the softmax of
/// `scale` times the cosines), summed over candidates and averaged over anchors, as
/// sentence-transformers' DistillKLDivLoss at temperature 1.
pub fn distill_kl(
    anchors: &Tensor,
    candidates: &Tensor,
    teacher: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let student = log_softmax(&(cosine_matrix(anchors, candidates)? * scale)?, D::Minus1)?;
    let target = log_softmax(teacher, D::Minus1)?;
    let per_entry = (target.exp()? * (target - student)?)?;
    Ok((per_entry.sum_all()? / anchors.dim(0)? as f64)?)
}

fn log_sum_exp(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    Ok((x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?.squeeze(0)?)
}

/// The loss summed over the leading `dims` of the vectors (Matryoshka); with
/// no dims, the loss on the full vectors. `loss` receives the truncated tensors.
pub fn matryoshka<F>(tensors: &[&Tensor], dims: &[usize], loss: F) -> Result<Tensor>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    if dims.is_empty() {
        return loss(&tensors.iter().map(|t| (*t).clone()).collect::<Vec<_>>());
    }
    let mut total: Option<Tensor> = None;
    for &d in dims {
        let cut =
            tensors.iter().map(|t| t.narrow(1, 0, d)).collect::<candle_core::Result<Vec<_>>>()?;
        let l = loss(&cut)?;
        total = Some(match total {
            Some(t) => (t + l)?,
            None => l,
        });
    }
    Ok(total.expect("dims is not empty"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn in_batch_negatives_prefers_aligned_pairs() {
        let anchors = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let aligned = in_batch_negatives(&anchors, &t(&[[1.0, 0.1], [0.1, 1.0]]), 20.0, false)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let crossed = in_batch_negatives(&anchors, &t(&[[0.1, 1.0], [1.0, 0.1]]), 20.0, false)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(aligned < 0.01 && crossed > 10.0, "aligned {aligned}, crossed {crossed}");
    }

    #[test]
    fn in_batch_negatives_matches_hand_computed_value() {
        // cos matrix [[1, 0], [0, 1]] * 1: row loss = ln(e^1 + e^0) - 1 each.
        let x = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let loss = in_batch_negatives(&x, &x, 1.0, false).unwrap().to_scalar::<f32>().unwrap();
        let want = (1f32.exp() + 1.0).ln() - 1.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
    }

    #[test]
    fn cosent_is_small_when_order_agrees_and_large_when_not() {
        let a = t(&[[1.0, 0.0], [1.0, 0.0]]);
        let b = t(&[[1.0, 0.05], [0.0, 1.0]]); // pair 0 similar, pair 1 not
        let agree = cosent(&a, &b, &[1.0, 0.0], 20.0).unwrap().to_scalar::<f32>().unwrap();
        let disagree = cosent(&a, &b, &[0.0, 1.0], 20.0).unwrap().to_scalar::<f32>().unwrap();
        assert!(agree < 0.01 && disagree > 15.0, "agree {agree}, disagree {disagree}");
        // Equal scores give no ordered pair: log(1 + 0) = 0.
        let none = cosent(&a, &b, &[1.0, 1.0], 20.0).unwrap().to_scalar::<f32>().unwrap();
        assert!(none.abs() < 1e-6);
    }

    /// Deterministic, uneven rows (`n` by `d`) for the reference checks.
    fn rows(n: usize, d: usize, salt: f64) -> Vec<Vec<f64>> {
        (0..n).map(|i| (0..d).map(|k| ((i * d + k) as f64 * 1.7 + salt).sin()).collect()).collect()
    }

    fn tensor(rows: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
        Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
    }

    fn dot(x: &[f64], y: &[f64]) -> f64 {
        x.iter().zip(y).map(|(a, b)| a * b).sum()
    }

    fn cos(x: &[f64], y: &[f64]) -> f64 {
        dot(x, y) / (dot(x, x).sqrt() * dot(y, y).sqrt())
    }

    /// AnglE's score by complex arithmetic: `z = x[k] + i x[k + h]` (zero-padded to an
    /// even width), the quotient `z * conj(w) / |w|^2` rescaled by `|w| / |z|`, and the
    /// absolute value of the sum of its real and imaginary parts.
    fn angle_reference(x: &[f64], y: &[f64]) -> f64 {
        let pad = |v: &[f64]| {
            let mut v = v.to_vec();
            if v.len() % 2 == 1 {
                v.push(0.0);
            }
            v
        };
        let (x, y) = (pad(x), pad(y));
        let h = x.len() / 2;
        let (nx, ny) = (dot(&x, &x).sqrt(), dot(&y, &y).sqrt());
        let mut total = 0.0;
        for k in 0..h {
            let (a, b, c, d) = (x[k], x[k + h], y[k], y[k + h]);
            let re = (a * c + b * d) / (ny * ny) * (ny / nx);
            let im = (b * c - a * d) / (ny * ny) * (ny / nx);
            total += re + im;
        }
        total.abs()
    }

    /// `log(1 + sum over score_i > score_j of exp(scale (sim_j - sim_i)))`, plainly.
    fn ranking_reference(sim: &[f64], scores: &[f32], scale: f64) -> f64 {
        let mut sum = 1.0;
        for i in 0..sim.len() {
            for j in 0..sim.len() {
                if scores[i] > scores[j] {
                    sum += (scale * (sim[j] - sim[i])).exp();
                }
            }
        }
        sum.ln()
    }

    /// Mean over anchors `i` of `-log softmax_j(scale cos(a_i, b_j))[i]`, plainly.
    fn negatives_reference(a: &[Vec<f64>], b: &[Vec<f64>], scale: f64) -> f64 {
        let per_anchor = |i: usize| {
            let logits: Vec<f64> = b.iter().map(|bj| scale * cos(&a[i], bj)).collect();
            logits.iter().map(|l| l.exp()).sum::<f64>().ln() - logits[i]
        };
        (0..a.len()).map(per_anchor).sum::<f64>() / a.len() as f64
    }

    fn angle_loss_reference(a: &[Vec<f64>], b: &[Vec<f64>], scores: &[f32]) -> f64 {
        let sim: Vec<f64> = a.iter().zip(b).map(|(x, y)| angle_reference(x, y)).collect();
        ranking_reference(&sim, scores, 20.0)
    }

    #[test]
    fn angle_matches_complex_division_for_even_and_odd_widths() {
        let scores = [4.5f32, 3.0, 5.0, 1.0, 2.5];
        for d in [6, 5] {
            let (a, b) = (rows(5, d, 0.3), rows(5, d, 2.1));
            let got = angle(&tensor(&a), &tensor(&b), &scores, 20.0).unwrap();
            let want = angle_loss_reference(&a, &b, &scores);
            let got = got.to_scalar::<f32>().unwrap() as f64;
            assert!((got - want).abs() < 1e-4 * want.max(1.0), "width {d}: {got} vs {want}");
            let sims = angle_rows(&tensor(&a), &tensor(&b)).unwrap().to_vec1::<f32>().unwrap();
            for (i, s) in sims.iter().enumerate() {
                let want = angle_reference(&a[i], &b[i]);
                assert!((*s as f64 - want).abs() < 1e-5, "width {d} row {i}: {s} vs {want}");
            }
        }
    }

    #[test]
    fn angle_gradient_matches_finite_differences() {
        let scores = [4.5f32, 3.0, 5.0, 1.0];
        let (a, b) = (rows(4, 6, 0.3), rows(4, 6, 2.1));
        let var = candle_core::Var::from_tensor(&tensor(&a)).unwrap();
        let loss = angle(var.as_tensor(), &tensor(&b), &scores, 20.0).unwrap();
        let grad = loss.backward().unwrap().get(var.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let eps = 1e-6;
        for i in 0..a.len() {
            for k in 0..a[i].len() {
                let shifted = |delta: f64| {
                    let mut moved = a.clone();
                    moved[i][k] += delta;
                    angle_loss_reference(&moved, &b, &scores)
                };
                let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
                let analytic = grad[i][k] as f64;
                assert!(analytic.is_finite());
                assert!(
                    (analytic - numeric).abs() < 1e-3 * numeric.abs().max(1.0),
                    "d loss / d a[{i}][{k}]: {analytic} vs {numeric}"
                );
            }
        }
    }

    #[test]
    fn cosent_with_negatives_adds_weighted_negatives_over_the_positives() {
        let scores = [1.0f32, 0.0, 1.0, 1.0, 0.0];
        let positive = [true, false, true, true, false];
        let (a, b) = (rows(5, 4, 0.3), rows(5, 4, 2.1));
        let sim: Vec<f64> = a.iter().zip(&b).map(|(x, y)| cos(x, y)).collect();
        let pick = |m: &[Vec<f64>]| [0, 2, 3].map(|i| m[i].clone()).to_vec();
        let want = ranking_reference(&sim, &scores, 20.0)
            + 0.5 * negatives_reference(&pick(&a), &pick(&b), 20.0);
        let (ta, tb) = (tensor(&a), tensor(&b));
        let got = cosent_with_negatives(&ta, &tb, &scores, &positive, 20.0, 0.5).unwrap();
        let got = got.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
        // One positive: nothing to contrast, CoSENT alone.
        let lone = [true, false, false, false, false];
        let alone = cosent_with_negatives(&ta, &tb, &scores, &lone, 20.0, 0.5).unwrap();
        let cosent_only = cosent(&ta, &tb, &scores, 20.0).unwrap();
        assert_eq!(alone.to_scalar::<f32>().unwrap(), cosent_only.to_scalar::<f32>().unwrap());
        // Gradients reach only through the loss: finite, and a step along them lowers it.
        let var = candle_core::Var::from_tensor(&ta).unwrap();
        let loss = |x: &Tensor| {
            cosent_with_negatives(x, &tb, &scores, &positive, 20.0, 1.0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let before = loss(var.as_tensor());
        let grads = cosent_with_negatives(var.as_tensor(), &tb, &scores, &positive, 20.0, 1.0)
            .unwrap()
            .backward()
            .unwrap();
        let g = grads.get(var.as_tensor()).unwrap();
        assert!(g.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()));
        let stepped = (var.as_tensor() - (g * 0.01).unwrap()).unwrap();
        assert!(loss(&stepped) < before, "a gradient step did not lower the loss");
    }

    #[test]
    fn binary_cross_entropy_matches_hand_computed_values() {
        let logits = Tensor::new(&[0.0f32, 2.0, -30.0], &Device::Cpu).unwrap();
        let loss =
            binary_cross_entropy(&logits, &[1.0, 0.25, 0.0]).unwrap().to_scalar::<f32>().unwrap();
        // -ln(0.5); -(0.25 ln s(2) + 0.75 ln(1 - s(2))); ~0 for a confident right answer.
        let s2 = 1.0 / (1.0 + (-2f32).exp());
        let want = (2f32.ln() - (0.25 * s2.ln() + 0.75 * (1.0 - s2).ln()) + 0.0) / 3.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
    }

    #[test]
    fn listwise_softmax_averages_groups_of_any_size() {
        let logits = Tensor::new(&[1.0f32, 0.0, 0.0, 2.0, 2.0], &Device::Cpu).unwrap();
        let loss = listwise_softmax(&logits, &[3, 2]).unwrap().to_scalar::<f32>().unwrap();
        let first = (1f32.exp() + 2.0).ln() - 1.0;
        let second = 2f32.ln();
        assert!((loss - (first + second) / 2.0).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn margin_mse_matches_hand_computed_value() {
        // cos(a, p) = 1, cos(a, n) = 0: student margin 2 * 1; teacher margins 1 and 3.
        let a = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let p = t(&[[2.0, 0.0], [0.0, 3.0]]);
        let n = t(&[[0.0, 1.0], [1.0, 0.0]]);
        let margins = Tensor::new(&[1f32, 3.0], &Device::Cpu).unwrap();
        let loss = margin_mse(&a, &p, &n, &margins, 2.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss - 1.0).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn distill_kl_is_zero_when_the_student_agrees_and_matches_a_hand_computed_value() {
        let a = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let cos = [[1.0f32, 0.0], [0.0, 1.0]]; // cosine matrix of a with itself
        let teacher = Tensor::new(&cos, &Device::Cpu).unwrap();
        let same = distill_kl(&a, &a, &teacher, 1.0).unwrap().to_scalar::<f32>().unwrap();
        assert!(same.abs() < 1e-6, "{same}");
        // Uniform teacher: KL(u || softmax([1, 0])) = -ln 2 - (ln s(1) + ln s(-1)) / 2.
        let uniform = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let kl = distill_kl(&a, &a, &uniform, 1.0).unwrap().to_scalar::<f32>().unwrap();
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        let want = -(2f32.ln()) - (s(1.0).ln() + s(-1.0).ln()) / 2.0;
        assert!((kl - want).abs() < 1e-6, "{kl} vs {want}");
    }

    #[test]
    fn matryoshka_sums_the_loss_over_widths() {
        let x = Tensor::new(&[[1f32, 2.0, 3.0, 4.0]], &Device::Cpu).unwrap();
        let width_sum = |ts: &[Tensor]| -> Result<Tensor> {
            Ok(Tensor::new(ts[0].dim(1)? as f32, &Device::Cpu)?)
        };
        let total = matryoshka(&[&x], &[4, 2, 1], width_sum).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(total, 7.0);
    }
}
