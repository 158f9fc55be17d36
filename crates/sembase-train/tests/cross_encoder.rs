//! Cross-encoder training: loss and gradients of one step against PyTorch on the tiny
//! BERT and XLM-RoBERTa rerankers saved by sentence-transformers 6.2
//! (`tools/make_cross_encoder_fixture.py`), and runs end to end: a new head on a
//! sentence embedding model, the loss falling, exact resume, evaluation, and an export
//! that core's `CrossEncoder` loads with the scores of the model in training.

mod common;
use common::{Quiet, StopAt};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sembase_core::{CrossEncoder, LoadOptions, Mode, Truncation};
use sembase_embed::Reranker;
use sembase_train::{
    load_cross_examples, CrossEncoderTraining, CrossObjective, Example, Finish, LoopConfig,
    ModelCard, TrainObserver, TrainableCrossEncoder, Trainee, Trainer,
};
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    pairs: Vec<(String, String)>,
    training_max_length: usize,
    bce: BceCase,
    listwise: ListwiseCase,
}

#[derive(Deserialize)]
struct BceCase {
    labels: Vec<f32>,
    logits: Vec<f32>,
    loss: f32,
    grads: HashMap<String, Gradient>,
}

#[derive(Deserialize)]
struct ListwiseCase {
    groups: Vec<Group>,
    logits: Vec<Vec<f32>>,
    loss: f32,
    grads: HashMap<String, Gradient>,
}

#[derive(Deserialize)]
struct Group {
    query: String,
    documents: Vec<String>,
}

/// A parameter's gradient: all of it, or (embedding tables) the rows of the ids used.
#[derive(Deserialize)]
struct Gradient {
    shape: Vec<usize>,
    rows: Option<Vec<usize>>,
    values: Values,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Values {
    Flat(Vec<f32>),
    Rows(Vec<Vec<f32>>),
}

fn core_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sembase-core/tests/fixtures").join(name)
}

fn reference(dir: &Path) -> Reference {
    serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap()
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// One training step's loss and gradients through the trainer's own path, compared
/// with PyTorch's; returns the loss and the largest gradient difference.
fn check_step(
    model: &TrainableCrossEncoder,
    objective: CrossObjective,
    examples: Vec<Example>,
    want_loss: f32,
    want: &HashMap<String, Gradient>,
) -> (f32, f32) {
    let rows: Vec<usize> = (0..examples.len()).collect();
    let trainee =
        CrossEncoderTraining::new(model, objective, examples, None, ModelCard::default()).unwrap();
    let (loss, grads) = trainee.gradients(&rows, 0).unwrap();
    assert!((loss - want_loss).abs() < TOLERANCE, "{objective:?}: loss {loss} vs {want_loss}");
    let vars: HashMap<String, candle_core::Var> = model.named_vars().into_iter().collect();
    let mut largest = 0.0f32;
    for (name, reference) in want {
        let var = vars.get(name).unwrap_or_else(|| panic!("no variable {name}"));
        assert_eq!(var.as_tensor().dims(), reference.shape.as_slice(), "{name} shape");
        let ours = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let diff = match (&reference.rows, &reference.values) {
            (Some(rows), Values::Rows(values)) => rows
                .iter()
                .zip(values)
                .map(|(&r, v)| worst(&ours.get(r).unwrap().to_vec1::<f32>().unwrap(), v))
                .fold(0.0, f32::max),
            (None, Values::Flat(values)) => {
                worst(&ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values)
            }
            _ => panic!("{name}: unexpected reference layout"),
        };
        assert!(diff < TOLERANCE, "{objective:?}: {name} gradient differs by {diff}");
        largest = largest.max(diff);
    }
    (loss, largest)
}

fn parity(name: &str) {
    let dir = core_fixture(name);
    let reference = reference(&dir);
    let model = TrainableCrossEncoder::load(&dir, Some(reference.training_max_length), 0).unwrap();
    assert!(model.continued);

    let pairs: Vec<(&str, &str)> =
        reference.pairs.iter().map(|(q, d)| (q.as_str(), d.as_str())).collect();
    let logits = model.score(&pairs, &Mode::training(0)).unwrap().to_vec1::<f32>().unwrap();
    let diff = worst(&logits, &reference.bce.logits);
    assert!(diff < TOLERANCE, "{name}: logits differ by {diff}");
    let examples = reference
        .pairs
        .iter()
        .zip(&reference.bce.labels)
        .map(|((q, d), &label)| Example { texts: vec![q.clone(), d.clone()], score: label })
        .collect();
    let bce = &reference.bce;
    let (loss, grad) = check_step(&model, CrossObjective::Binary, examples, bce.loss, &bce.grads);
    eprintln!(
        "{name} bce: loss {loss} (PyTorch {}), largest gradient difference {grad:e}",
        bce.loss
    );

    let list = &reference.listwise;
    let queries: Vec<(&str, &str)> = list
        .groups
        .iter()
        .flat_map(|g| g.documents.iter().map(|d| (g.query.as_str(), d.as_str())))
        .collect();
    let logits = model.score(&queries, &Mode::training(0)).unwrap().to_vec1::<f32>().unwrap();
    let diff = worst(&logits, &list.logits.concat());
    assert!(diff < TOLERANCE, "{name}: listwise logits differ by {diff}");
    let groups = list
        .groups
        .iter()
        .map(|g| Example {
            texts: std::iter::once(&g.query).chain(&g.documents).cloned().collect(),
            score: 0.0,
        })
        .collect();
    let (loss, grad) = check_step(&model, CrossObjective::Listwise, groups, list.loss, &list.grads);
    eprintln!(
        "{name} listwise: loss {loss} (PyTorch {}), largest gradient difference {grad:e}",
        list.loss
    );
}

#[test]
fn bert_loss_and_gradients_match_pytorch() {
    parity("tiny-bert-cross-encoder");
}

#[test]
fn xlm_roberta_loss_and_gradients_match_pytorch() {
    parity("tiny-roberta-cross-encoder");
}

// ---------------------------------------------------------------- training runs

/// The sentence embedding model of the bi-encoder tests (tiny BERT, no pooler).
fn bi_encoder_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert")
}

const PAIRS: &str = "sentence1\tsentence2\tlabel\n\
the cat sat on a mat\ta cat sat on the mat\t1\n\
a big dog ran far away\tthe sky is blue\t0\n\
the bird flew over the tree\ta bird flew over a green tree\t1\n\
the sky is blue\tthe small red cat ran fast home\t0\n\
a small red cat ran home\tthe small red cat ran fast home\t1\n\
the sun was green\tthe tree is slow\t0\n\
a dog was fast\tthe fast dog ran\t1\n\
the bird is small\ta big dog ran far away\t0\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config() -> LoopConfig {
    LoopConfig { batch_size: 4, lr: 1e-3, epochs: 4, ..LoopConfig::default() }
}

fn values(model: &TrainableCrossEncoder) -> Vec<(String, Vec<f32>)> {
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn pair_scores(model: &impl Reranker, pairs: &[(&str, &str)]) -> Vec<f32> {
    let encoded: Vec<_> =
        pairs.iter().map(|(q, d)| model.encode_pair(q, d, Truncation::Truncate).unwrap()).collect();
    model.score_pairs(&encoded).unwrap()
}

#[test]
fn a_new_head_learns_and_the_export_reloads_with_the_same_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let model = TrainableCrossEncoder::load(&bi_encoder_fixture(), Some(24), 7).unwrap();
    assert!(!model.continued);
    let again = TrainableCrossEncoder::load(&bi_encoder_fixture(), Some(24), 7).unwrap();
    assert_eq!(values(&model), values(&again), "the new head is not drawn from the seed");
    let (objective, examples) = load_cross_examples(&write(tmp.path(), "p.tsv", PAIRS)).unwrap();
    let out = tmp.path().join("reranker");
    let card = ModelCard { base: "tiny-bert".into(), ..ModelCard::default() };
    let trainee = CrossEncoderTraining::new(&model, objective, examples, None, card).unwrap();
    let cfg = LoopConfig { epochs: 25, lr: 3e-3, ..config() };
    let mut trainer = Trainer::new(&trainee, cfg, &out).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(trainer.run(&Quiet).unwrap(), Finish::Completed);
    let seconds = started.elapsed().as_secs_f64() / trainer.state.step as f64;
    let losses: Vec<f32> = trainer.state.loss.iter().map(|(_, l)| *l).collect();
    eprintln!("losses {losses:?}; {:.1} ms per step", seconds * 1e3);
    // From ln 2 (a new head knows nothing) well below it.
    let last = losses[losses.len() - 4..].iter().sum::<f32>() / 4.0;
    assert!(losses[0] > 0.69 && last < 0.6, "loss did not fall: {losses:?}");

    let pairs = [("the cat sat on a mat", "a cat sat on the mat"), ("the sky is blue", "the bird")];
    let live = model.score(&pairs, &Mode::Inference).unwrap().to_vec1::<f32>().unwrap();
    let exported = CrossEncoder::load(&out, "out", LoadOptions::default()).unwrap();
    assert_eq!(exported.max_tokens(), 24);
    let diff = worst(&pair_scores(&exported, &pairs), &live);
    assert!(diff < 1e-5, "the export scores differ by {diff}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["BertForSequenceClassification"]));
    assert_eq!(config["id2label"], serde_json::json!({"0": "LABEL_0"}));
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("config_sentence_transformers.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(st["model_type"], "CrossEncoder");
    for f in ["tokenizer.json", "tokenizer_config.json", "modules.json", "README.md"] {
        assert!(out.join(f).exists(), "export lacks {f}");
    }
}

/// The BERT reranker fixture with dropout switched on.
fn reranker_with_dropout(tmp: &Path) -> PathBuf {
    let from = core_fixture("tiny-bert-cross-encoder");
    let dir = tmp.join("dropout");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let name = entry.unwrap().file_name();
        std::fs::copy(from.join(&name), dir.join(&name)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    for key in ["hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"] {
        config[key] = 0.1.into();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

const TRIPLETS: &str = "anchor\tpositive\tnegative\n\
where is the boat\tthe boat sails over the lake\tstars shine over the town\n\
where is the boat\tthe boat sails over the lake\tpeople sleep\n\
what falls in autumn\tleaves fall in autumn\tthe moon is bright\n\
who sleeps under the bridge\tpeople sleep under the old stone bridge\tthe fish swims\n\
what fish swims\tthe fish swims in deep cold water\tthe wind blows\n\
moon\tthe bright moon is over the quiet town\tleaves fall\n";

#[test]
fn an_interrupted_listwise_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = reranker_with_dropout(tmp.path());
    let (objective, examples) = load_cross_examples(&write(tmp.path(), "t.tsv", TRIPLETS)).unwrap();
    assert_eq!(objective, CrossObjective::Listwise);
    let cfg = || LoopConfig { batch_size: 2, ..config() };
    let run = |out: &Path, observer: &dyn TrainObserver, resume: Option<&Path>| {
        let model = TrainableCrossEncoder::load(&dir, Some(32), 1).unwrap();
        let trainee = CrossEncoderTraining::new(
            &model,
            objective,
            examples.clone(),
            None,
            ModelCard::default(),
        )
        .unwrap();
        let mut trainer = Trainer::new(&trainee, cfg(), out).unwrap();
        if let Some(checkpoint) = resume {
            trainer.resume(checkpoint).unwrap();
            assert_eq!(trainer.state.step, 3);
        }
        let finish = trainer.run(observer).unwrap();
        (finish, trainer.state.loss.clone(), values(&model))
    };
    let (_, straight_loss, straight_weights) = run(&tmp.path().join("a"), &Quiet, None);
    let out = tmp.path().join("b");
    let checkpoint = match run(&out, &StopAt(3, Default::default()), None).0 {
        Finish::Interrupted { checkpoint } => checkpoint,
        other => panic!("expected an interruption, got {other:?}"),
    };
    let (finish, loss, weights) = run(&out, &Quiet, Some(&checkpoint));
    assert_eq!(finish, Finish::Completed);
    assert_eq!(loss, straight_loss, "loss curves differ after resume");
    assert_eq!(weights, straight_weights, "weights differ after resume");
    let first: f32 = straight_loss[..2].iter().map(|(_, l)| l).sum();
    let last: f32 = straight_loss[straight_loss.len() - 2..].iter().map(|(_, l)| l).sum();
    assert!(last < first, "listwise loss did not fall: {straight_loss:?}");
}

#[test]
fn evaluation_on_scored_pairs_keeps_the_best_export_and_retrieval_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = TrainableCrossEncoder::load(&bi_encoder_fixture(), Some(24), 3).unwrap();
    let sts = "sentence1\tsentence2\tscore\nthe cat sat\ta cat sat\t5\nthe sky is blue\tthe dog ran\t0.5\nbig bird\ta big bird flew\t4\nred sun\tgreen tree\t1\n";
    let (objective, examples) = load_cross_examples(&write(tmp.path(), "s.tsv", sts)).unwrap();
    let spec = format!("sts:{}", write(tmp.path(), "dev.tsv", sts).display()).parse().unwrap();
    let trainee = CrossEncoderTraining::new(
        &model,
        objective,
        examples.clone(),
        Some(&spec),
        ModelCard::default(),
    )
    .unwrap();
    let out = tmp.path().join("best");
    let cfg = LoopConfig { eval_steps: 2, max_steps: Some(4), batch_size: 2, ..config() };
    let mut trainer = Trainer::new(&trainee, cfg, &out).unwrap();
    trainer.run(&Quiet).unwrap();
    assert_eq!(trainer.state.eval.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 4]);
    assert!(trainer.state.eval[0].1["spearman"].is_number());
    assert!(trainer.state.best.is_some() && out.join("model.safetensors").exists());

    let retrieval = "retrieval:/nowhere".parse().unwrap();
    let refused = CrossEncoderTraining::new(
        &model,
        objective,
        examples,
        Some(&retrieval),
        ModelCard::default(),
    );
    assert!(refused.err().unwrap().to_string().contains("sts: or pairs:"));
    assert!(TrainableCrossEncoder::load(&bi_encoder_fixture(), Some(99), 0)
        .err()
        .unwrap()
        .to_string()
        .contains("--max-length 99"));
}
