//! Loss and gradient parity with PyTorch on a tiny BERT: the reference values
//! come from `tools/make_train_fixture.py` (transformers' BertModel, dropout off).

use std::path::Path;

use sembase_core::Mode;
use sembase_train::losses::{cosent, in_batch_negatives};
use sembase_train::TrainableModel;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    scale: f64,
    anchors: Vec<String>,
    positives: Vec<String>,
    sts_scores: Vec<f32>,
    in_batch_negatives: Case,
    cosent: Case,
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

#[test]
fn in_batch_negatives_loss_and_gradients_match_pytorch() {
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap();
    let model = TrainableModel::load(&fixture(), 16, None).unwrap();
    let a: Vec<&str> = reference.anchors.iter().map(String::as_str).collect();
    let p: Vec<&str> = reference.positives.iter().map(String::as_str).collect();
    let loss = in_batch_negatives(
        &model.embed(&a, &Mode::training(0)).unwrap(),
        &model.embed(&p, &Mode::training(0)).unwrap(),
        reference.scale,
        false,
    )
    .unwrap();
    check(&reference.in_batch_negatives, &model, loss, "in-batch negatives");
}

#[test]
fn cosent_loss_and_gradients_match_pytorch() {
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap();
    let model = TrainableModel::load(&fixture(), 16, None).unwrap();
    let a: Vec<&str> = reference.anchors.iter().map(String::as_str).collect();
    let p: Vec<&str> = reference.positives.iter().map(String::as_str).collect();
    let loss = cosent(
        &model.embed(&a, &Mode::training(0)).unwrap(),
        &model.embed(&p, &Mode::training(0)).unwrap(),
        &reference.sts_scores,
        reference.scale,
    )
    .unwrap();
    check(&reference.cosent, &model, loss, "CoSENT");
}
