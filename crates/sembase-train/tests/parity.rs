//! Loss and gradient parity with PyTorch on a tiny BERT: the reference values
//! come from `tools/make_train_fixture.py` (transformers' BertModel, dropout off;
//! sentence-transformers' AnglELoss, CoSENTLoss and MultipleNegativesRankingLoss).

use std::path::Path;

use sembase_core::Mode;
use sembase_train::losses::{angle, cosent, cosent_with_negatives, in_batch_negatives};
use sembase_train::{Dataset, Example, Objective, TrainableModel};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    scale: f64,
    anchors: Vec<String>,
    positives: Vec<String>,
    sts_scores: Vec<f32>,
    in_batch_negatives: Case,
    cosent: Case,
    angle: Case,
    /// The rows the combined loss took for positives.
    positive_rows: Vec<usize>,
    cosent_mnrl: Case,
}

#[derive(Deserialize)]
struct Case {
    loss: f32,
    grads: std::collections::HashMap<String, Vec<f32>>,
}

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert")
}

fn check(case: &Case, model: &TrainableModel, loss: candle_core::Tensor, what: &str) {
    let got = loss.to_scalar::<f32>().unwrap();
    assert!((got - case.loss).abs() < 1e-4, "{what}: loss {got} vs PyTorch {}", case.loss);
    let grads = loss.backward().unwrap();
    let vars = model.named_vars();
    for (name, want) in &case.grads {
        let (_, var) = vars
            .iter()
            .find(|(n, _)| n == &format!("encoder.{name}"))
            .unwrap_or_else(|| panic!("no variable {name}"));
        let ours: Vec<f32> =
            grads.get(var.as_tensor()).expect("gradient").flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(ours.len(), want.len(), "{what}: {name} size");
        let worst = ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{what}: {name} gradient differs by {worst}");
    }
}

/// The reference, the model, and the vectors of its anchors and positives.
fn setup() -> (Reference, TrainableModel, candle_core::Tensor, candle_core::Tensor) {
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap();
    let model = TrainableModel::load(&fixture(), 16, None).unwrap();
    let a: Vec<&str> = reference.anchors.iter().map(String::as_str).collect();
    let p: Vec<&str> = reference.positives.iter().map(String::as_str).collect();
    let a = model.embed(&a, &Mode::training(0)).unwrap();
    let p = model.embed(&p, &Mode::training(0)).unwrap();
    (reference, model, a, p)
}

#[test]
fn in_batch_negatives_loss_and_gradients_match_pytorch() {
    let (reference, model, a, p) = setup();
    let loss = in_batch_negatives(&a, &p, reference.scale, false).unwrap();
    check(&reference.in_batch_negatives, &model, loss, "in-batch negatives");
}

#[test]
fn cosent_loss_and_gradients_match_pytorch() {
    let (reference, model, a, p) = setup();
    let loss = cosent(&a, &p, &reference.sts_scores, reference.scale).unwrap();
    check(&reference.cosent, &model, loss, "CoSENT");
}

#[test]
fn angle_loss_and_gradients_match_sentence_transformers() {
    let (reference, model, a, p) = setup();
    let loss = angle(&a, &p, &reference.sts_scores, reference.scale).unwrap();
    check(&reference.angle, &model, loss, "AnglE");
}

#[test]
fn cosent_with_negatives_matches_sentence_transformers_on_the_same_positives() {
    let (reference, model, a, p) = setup();
    // The rows the fixture took are the ones the library's threshold marks.
    let rows = reference.sts_scores.iter().map(|&score| Example { texts: vec![], score });
    let data = Dataset { objective: Objective::Sts, path: "".into(), examples: rows.collect() };
    let threshold = data.positive_threshold();
    let positive: Vec<bool> = reference.sts_scores.iter().map(|&s| s >= threshold).collect();
    let marked: Vec<usize> = (0..positive.len()).filter(|&i| positive[i]).collect();
    assert_eq!(marked, reference.positive_rows);
    let scores = &reference.sts_scores;
    let loss = cosent_with_negatives(&a, &p, scores, &positive, reference.scale, 1.0).unwrap();
    check(&reference.cosent_mnrl, &model, loss, "CoSENT + in-batch negatives");
}
