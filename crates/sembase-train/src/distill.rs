//! The teacher's side of distilling a cross-encoder into a bi-encoder: the scores the
//! student learns to reproduce, computed once per batch in inference mode (the teacher
//! is not trained, so its scores carry no gradient and replay exactly on resume).

use candle_core::{Device, Tensor};
use sembase_core::Truncation;
use sembase_embed::Reranker;

use crate::error::Result;

/// What the student is trained against, by the shape of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistillTarget {
    /// (anchor, positive, negative): the teacher's logit margin `(n,)` per row (MarginMSE).
    Margins,
    /// (anchor, candidate) pairs: the teacher's logits `(n, n)` of every anchor with every
    /// in-batch candidate (KL divergence of the two softmaxes).
    InBatch,
}

/// The teacher's targets for a batch's text columns (anchors first). `strip` is a prefix
/// the student's texts carry (an instruction such as `query: `) that the teacher never saw.
pub fn teacher_scores(
    teacher: &dyn Reranker,
    target: DistillTarget,
    columns: &[Vec<&str>],
    strip: Option<&str>,
) -> Result<Tensor> {
    let plain =
        |t: &'_ str| -> String { strip.and_then(|p| t.strip_prefix(p)).unwrap_or(t).to_string() };
    let column = |c: usize| columns[c].iter().map(|t| plain(t)).collect::<Vec<_>>();
    let (anchors, n) = (column(0), columns[0].len());
    Ok(match target {
        DistillTarget::Margins => {
            let (positives, negatives) = (column(1), column(2));
            let pairs: Vec<(&String, &String)> =
                anchors.iter().zip(&positives).chain(anchors.iter().zip(&negatives)).collect();
            let logits = score(teacher, &pairs)?;
            let margins: Vec<f32> = (0..n).map(|i| logits[i] - logits[n + i]).collect();
            Tensor::from_vec(margins, n, &Device::Cpu)?
        }
        DistillTarget::InBatch => {
            let candidates = column(1);
            let pairs: Vec<(&String, &String)> =
                anchors.iter().flat_map(|a| candidates.iter().map(move |c| (a, c))).collect();
            Tensor::from_vec(score(teacher, &pairs)?, (n, n), &Device::Cpu)?
        }
    })
}

/// The teacher's logits of `pairs`, cut at its limit.
fn score(teacher: &dyn Reranker, pairs: &[(&String, &String)]) -> Result<Vec<f32>> {
    let encoded = pairs
        .iter()
        .map(|(q, d)| teacher.encode_pair(q, d, Truncation::Truncate))
        .collect::<sembase_core::Result<Vec<_>>>()?;
    Ok(teacher.score_pairs(&encoded)?)
}
