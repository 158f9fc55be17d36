//! Distilling a cross-encoder into a bi-encoder: the trainer's loss on a tiny batch
//! against the same loss computed by hand from the student's vectors and the teacher's
//! logits, and a short run whose loss falls.

mod common;
use common::Quiet;

use std::path::{Path, PathBuf};

use sembase_core::{CrossEncoder, LoadOptions, Mode, Truncation};
use sembase_embed::Reranker;
use sembase_train::{
    load_examples, BiEncoderConfig, BiEncoderTraining, LoopConfig, ModelCard, Objective,
    TrainableModel, Trainee, Trainer,
};

fn student() -> TrainableModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    TrainableModel::load(&dir, 16, None).unwrap()
}

fn teacher() -> CrossEncoder {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sembase-core/tests/fixtures/tiny-bert-cross-encoder");
    CrossEncoder::load(&dir, "teacher", LoadOptions::default()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const STS: &str = "sentence1\tsentence2\tscore\n\
where is the boat\tthe boat sails over the lake\t4.5\n\
what fish swims\tstars shine at night\t0.5\n\
who sleeps under the bridge\tpeople sleep under the old stone bridge\t4\n\
cold water\tthe lake is deep and the water is cold\t3\n";

const TRIPLETS: &str = "anchor\tpositive\tnegative\n\
where is the boat\tthe boat sails over the lake\tstars shine over the town\n\
what falls in autumn\tleaves fall in autumn\tthe moon is bright\n\
moon\tthe bright moon is over the quiet town\tpeople sleep\n";

/// The student's vectors of `texts` (dropout is off in the fixture).
fn vectors(model: &TrainableModel, texts: &[&str]) -> Vec<Vec<f64>> {
    let v = model.embed(texts, &Mode::Inference).unwrap().to_vec2::<f32>().unwrap();
    v.into_iter().map(|row| row.into_iter().map(f64::from).collect()).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = row.iter().map(|x| (x - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|x| x - lse).collect()
}

fn logit(teacher: &CrossEncoder, q: &str, d: &str) -> f64 {
    let pair = teacher.encode_pair(q, d, Truncation::Truncate).unwrap();
    f64::from(teacher.score_pairs(&[pair]).unwrap()[0])
}

#[test]
fn in_batch_kl_matches_a_hand_computed_value() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, teacher) = (student(), teacher());
    let examples = load_examples(Objective::Sts, &write(tmp.path(), "s.tsv", STS)).unwrap();
    let (anchors, candidates): (Vec<&str>, Vec<&str>) =
        examples.iter().map(|e| (e.texts[0].as_str(), e.texts[1].as_str())).unzip();
    let scale = 20.0;
    let (a, c) = (vectors(&model, &anchors), vectors(&model, &candidates));
    let mut want = 0.0;
    for (i, anchor) in anchors.iter().enumerate() {
        let t: Vec<f64> = candidates.iter().map(|d| logit(&teacher, anchor, d)).collect();
        let s: Vec<f64> = c.iter().map(|cj| scale * cosine(&a[i], cj)).collect();
        let (log_p, log_q) = (log_softmax(&t), log_softmax(&s));
        want += log_p.iter().zip(&log_q).map(|(p, q)| p.exp() * (p - q)).sum::<f64>();
    }
    want /= anchors.len() as f64;

    let bi = BiEncoderConfig::new(Objective::Sts);
    let trainee = BiEncoderTraining::new(&model, bi, examples, ModelCard::default())
        .unwrap()
        .with_teacher(&teacher)
        .unwrap();
    let (loss, _) = trainee.gradients(&[0, 1, 2, 3], 0).unwrap();
    eprintln!("in-batch KL: trainer {loss}, by hand {want}");
    assert!(want > 1e-3, "the check needs the two distributions to differ");
    assert!((f64::from(loss) - want).abs() < 1e-4, "trainer {loss} vs by hand {want}");
}

#[test]
fn margin_mse_matches_a_hand_computed_value() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, teacher) = (student(), teacher());
    let path = write(tmp.path(), "t.tsv", TRIPLETS);
    let examples = load_examples(Objective::Triplets, &path).unwrap();
    let column = |c: usize| examples.iter().map(|e| e.texts[c].as_str()).collect::<Vec<_>>();
    let (a, p, n) =
        (vectors(&model, &column(0)), vectors(&model, &column(1)), vectors(&model, &column(2)));
    let scale = 20.0;
    let want = (0..examples.len())
        .map(|i| {
            let [q, pos, neg] = [0, 1, 2].map(|c| examples[i].texts[c].as_str());
            let teacher_margin = logit(&teacher, q, pos) - logit(&teacher, q, neg);
            let student_margin = scale * (cosine(&a[i], &p[i]) - cosine(&a[i], &n[i]));
            (student_margin - teacher_margin).powi(2)
        })
        .sum::<f64>()
        / examples.len() as f64;

    let bi = BiEncoderConfig::new(Objective::Triplets);
    let trainee = BiEncoderTraining::new(&model, bi, examples, ModelCard::default())
        .unwrap()
        .with_teacher(&teacher)
        .unwrap();
    let (loss, _) = trainee.gradients(&[0, 1, 2], 0).unwrap();
    eprintln!("MarginMSE: trainer {loss}, by hand {want}");
    assert!((f64::from(loss) - want).abs() < 1e-4 * want.max(1.0), "trainer {loss} vs {want}");
}

#[test]
fn a_distilled_student_moves_towards_the_teacher_and_simcse_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, teacher) = (student(), teacher());
    let examples = load_examples(Objective::Sts, &write(tmp.path(), "s.tsv", STS)).unwrap();
    let bi = BiEncoderConfig::new(Objective::Sts);
    let trainee = BiEncoderTraining::new(&model, bi, examples, ModelCard::default())
        .unwrap()
        .with_teacher(&teacher)
        .unwrap();
    let config = LoopConfig { batch_size: 4, lr: 3e-3, epochs: 30, ..LoopConfig::default() };
    let mut trainer = Trainer::new(&trainee, config, &tmp.path().join("student")).unwrap();
    trainer.run(&Quiet).unwrap();
    let losses: Vec<f32> = trainer.state.loss.iter().map(|(_, l)| *l).collect();
    eprintln!("distillation losses {losses:?}");
    assert!(losses[losses.len() - 1] < 0.5 * losses[0], "loss did not fall: {losses:?}");

    let corpus = write(tmp.path(), "c.txt", "one line\nanother line\n");
    let simcse = BiEncoderTraining::new(
        &model,
        BiEncoderConfig::new(Objective::SimCse),
        load_examples(Objective::SimCse, &corpus).unwrap(),
        ModelCard::default(),
    )
    .unwrap();
    assert!(simcse.with_teacher(&teacher).err().unwrap().to_string().contains("--teacher"));
}
