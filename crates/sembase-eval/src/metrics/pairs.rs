//! Pair classification from a similarity score, as sentence-transformers'
//! `BinaryClassificationEvaluator` defines it: the best accuracy and the best F1
//! over all thresholds (equal scores always fall on the same side), and average
//! precision as `sklearn.metrics.average_precision_score`.

/// Indices sorted by score, highest first.
fn descending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// The groups of equal scores in `order` (a descending order), as position ranges.
fn groups<'a>(
    scores: &'a [f64],
    order: &'a [usize],
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= order.len() {
            return None;
        }
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let group = start..end;
        start = end;
        Some(group)
    })
}

/// The threshold between group end `pos` and the next group: their midpoint, or
/// the score itself at the end or when the midpoint rounds onto the next score.
fn threshold_after(scores: &[f64], order: &[usize], pos: usize) -> f64 {
    let score = scores[order[pos]];
    match order.get(pos + 1) {
        None => score,
        Some(&next) => {
            let mid = (score + scores[next]) / 2.0;
            if mid == scores[next] {
                score
            } else {
                mid
            }
        }
    }
}

/// The best accuracy of `score >= threshold` predicting `label`, and its threshold.
/// Predicting every pair dissimilar is one of the candidates (its threshold is
/// just above the highest score).
pub fn best_accuracy(scores: &[f64], labels: &[bool]) -> (f64, f64) {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let n = scores.len();
    if n == 0 {
        return (0.0, -1.0);
    }
    let order = descending(scores);
    let mut remaining_negatives = labels.iter().filter(|&&l| !l).count();
    let mut positives_so_far = 0;
    let mut best = remaining_negatives as f64 / n as f64;
    let mut threshold = next_up(scores[order[0]]);
    for group in groups(scores, &order) {
        let last = group.end - 1;
        for &i in &order[group] {
            if labels[i] {
                positives_so_far += 1;
            } else {
                remaining_negatives -= 1;
            }
        }
        let accuracy = (positives_so_far + remaining_negatives) as f64 / n as f64;
        if accuracy > best {
            best = accuracy;
            threshold = threshold_after(scores, &order, last);
        }
    }
    (best, threshold)
}

/// The best F1 over thresholds, with its precision, recall and threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BestF1 {
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub threshold: f64,
}

/// The best F1 of `score >= threshold` predicting `label` (all zero when no
/// threshold gets a true positive).
pub fn best_f1(scores: &[f64], labels: &[bool]) -> BestF1 {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let order = descending(scores);
    let positives = labels.iter().filter(|&&l| l).count();
    let mut best = BestF1 { f1: 0.0, precision: 0.0, recall: 0.0, threshold: 0.0 };
    let (mut extracted, mut correct) = (0usize, 0usize);
    for group in groups(scores, &order) {
        let last = group.end - 1;
        for &i in &order[group] {
            extracted += 1;
            if labels[i] {
                correct += 1;
            }
        }
        if correct == 0 {
            continue;
        }
        let precision = correct as f64 / extracted as f64;
        let recall = correct as f64 / positives as f64;
        let f1 = 2.0 * precision * recall / (precision + recall);
        if f1 > best.f1 {
            best =
                BestF1 { f1, precision, recall, threshold: threshold_after(scores, &order, last) };
        }
    }
    best
}

/// Average precision: sum over distinct score thresholds (highest first) of the
/// recall gained times the precision there. 0 when there is no positive.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return 0.0;
    }
    let order = descending(scores);
    let (mut tp, mut seen) = (0usize, 0usize);
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    for group in groups(scores, &order) {
        for &i in &order[group] {
            seen += 1;
            if labels[i] {
                tp += 1;
            }
        }
        let recall = tp as f64 / positives as f64;
        ap += (recall - previous_recall) * (tp as f64 / seen as f64);
        previous_recall = recall;
    }
    ap
}

/// The next representable value above `x`.
fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let bits = x.to_bits();
    f64::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_scores_are_perfect() {
        let scores = [0.9, 0.8, 0.3, 0.1];
        let labels = [true, true, false, false];
        let (acc, t) = best_accuracy(&scores, &labels);
        assert_eq!(acc, 1.0);
        assert!((t - 0.55).abs() < 1e-12);
        let f1 = best_f1(&scores, &labels);
        assert_eq!((f1.f1, f1.precision, f1.recall), (1.0, 1.0, 1.0));
        assert_eq!(average_precision(&scores, &labels), 1.0);
    }

    #[test]
    fn tied_scores_cannot_be_split() {
        // Both pairs score 0.5: a threshold either takes both or neither.
        let scores = [0.5, 0.5];
        let labels = [true, false];
        assert_eq!(best_accuracy(&scores, &labels).0, 0.5);
        assert!((best_f1(&scores, &labels).f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(average_precision(&scores, &labels), 0.5);
    }
}
