//! Training runs end to end on the tiny BERT fixture: the loss falls, exports
//! load back with the same vectors, cached negatives equal the plain batch,
//! an interrupted run resumes exactly (one dataset or several), Matryoshka +
//! projection export a Dense.

mod common;
use common::{assert_cached_negatives_match, assert_resumes_exactly, weights, Quiet, StopAt};

use std::path::{Path, PathBuf};

use sembase_core::vectors::cosine;
use sembase_core::{EmbedOptions, Embedder, LoadOptions, LocalEmbedder};
use sembase_train::{
    load_examples, BiEncoderConfig, BiEncoderTraining, DataSpec, Dataset, Example, Finish,
    LoopConfig, ModelCard, Objective, Sampling, StsLoss, TrainableModel, Trainee, Trainer,
};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert")
}

/// A copy of the fixture whose dropout is switched on.
fn fixture_with_dropout(tmp: &Path) -> PathBuf {
    let dir = tmp.join("tiny-dropout");
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for f in [
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("config.json")).unwrap()).unwrap();
    config["hidden_dropout_prob"] = 0.1.into();
    config["attention_probs_dropout_prob"] = 0.1.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

const PAIRS: &str = "sentence1\tsentence2\tlabel\n\
the cat sat on a mat\ta cat sat on the mat\t1\n\
a big dog ran far away\tthe big dog ran away\t1\n\
the bird flew over the tree\ta bird flew over a green tree\t1\n\
the sky is blue\tblue is the sky\t1\n\
a small red cat ran home\tthe small red cat ran fast home\t1\n\
the sun was green\tthe tree is slow\t0\n\
a dog was fast\tthe fast dog ran\t1\n\
the bird is small\ta small bird\t1\n";

/// Small batches and a high rate for the tiny model.
fn config() -> LoopConfig {
    LoopConfig { batch_size: 4, lr: 1e-3, epochs: 3, ..LoopConfig::default() }
}

/// The objective's settings and examples, trained on `model` with a default card.
fn trainee<'a>(
    model: &'a TrainableModel,
    bi: BiEncoderConfig,
    examples: Vec<Example>,
) -> BiEncoderTraining<'a> {
    BiEncoderTraining::new(model, bi, examples, ModelCard::default()).unwrap()
}

fn pairs_file(tmp: &Path) -> PathBuf {
    let path = tmp.join("pairs.tsv");
    std::fs::write(&path, PAIRS).unwrap();
    path
}

#[test]
fn loss_falls_and_the_export_loads_with_the_same_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = TrainableModel::load(&fixture(), 16, None).unwrap();
    let examples = load_examples(Objective::Pairs, &pairs_file(tmp.path())).unwrap();
    assert_eq!(examples.len(), 7, "label-0 rows are not positives");
    let out = tmp.path().join("out");
    let pairs = trainee(&model, BiEncoderConfig::new(Objective::Pairs), examples);
    let mut trainer = Trainer::new(&pairs, config(), &out).unwrap();
    assert_eq!(trainer.run(&Quiet).unwrap(), Finish::Completed);
    let losses: Vec<f32> = trainer.state.loss.iter().map(|(_, l)| *l).collect();
    let first: f32 = losses[..2].iter().sum();
    let last: f32 = losses[losses.len() - 2..].iter().sum();
    assert!(last < first, "loss did not fall: {losses:?}");
    let texts = ["the cat sat on a mat", "blue is the sky"];
    let exported = LocalEmbedder::load(&out, "out", LoadOptions::default())
        .unwrap()
        .embed(&texts, &EmbedOptions::default())
        .unwrap();
    let live = model.snapshot("live").unwrap().embed(&texts, &EmbedOptions::default()).unwrap();
    for (a, b) in exported.vectors.iter().zip(&live.vectors) {
        assert!(cosine(a, b) > 0.99999);
    }
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "1_Pooling/config.json",
        "README.md",
        "config_sentence_transformers.json",
    ] {
        assert!(out.join(f).exists(), "export lacks {f}");
    }
}

#[test]
fn cached_negatives_give_the_same_update_as_one_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let examples = load_examples(Objective::Pairs, &pairs_file(tmp.path())).unwrap();
    let load = || TrainableModel::load(&fixture(), 16, None).unwrap();
    assert_cached_negatives_match(tmp.path(), load, &examples, config());
}

#[test]
fn an_interrupted_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_with_dropout(tmp.path());
    let examples = load_examples(Objective::Pairs, &pairs_file(tmp.path())).unwrap();
    let load = || TrainableModel::load(&dir, 16, None).unwrap();
    assert_resumes_exactly(tmp.path(), load, &examples, config());
}

const STS: &str = "sentence1\tsentence2\tscore\n\
the cat sat\ta cat sat\t5\n\
the sky is blue\tthe dog ran\t0.5\n\
big bird\ta big bird flew\t4\n\
red sun\tgreen tree\t1\n\
a dog ran far\tthe dog ran far away\t4.5\n\
the tree is green\ta green tree\t3\n";

const TRIPLETS: &str = "anchor\tpositive\tnegative\n\
the cat sat\ta cat sat on a mat\tthe sky is blue\n\
a big dog\tthe big dog ran\ta small bird\n\
red sun\tthe sun is red\tthe green tree\n\
the bird flew\ta bird flew far\tthe cat ran home\n\
blue sky\tthe sky is blue\ta slow dog\n";

/// An sts file and a triplets file, as `sts:PATH` and `triplets:PATH` would load them.
fn two_datasets(tmp: &Path) -> Vec<Dataset> {
    [("sts", "sts.tsv", STS), ("triplets", "triplets.tsv", TRIPLETS)]
        .into_iter()
        .map(|(objective, name, text)| {
            std::fs::write(tmp.join(name), text).unwrap();
            let spec: DataSpec =
                format!("{objective}:{}", tmp.join(name).display()).parse().unwrap();
            Dataset::load(&spec, Objective::Pairs).unwrap()
        })
        .collect()
}

fn mixed(model: &TrainableModel, bi: BiEncoderConfig, data: Vec<Dataset>) -> BiEncoderTraining<'_> {
    BiEncoderTraining::with_datasets(model, bi, data, ModelCard::default()).unwrap()
}

#[test]
fn two_datasets_train_by_their_objectives_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_with_dropout(tmp.path());
    let datasets = two_datasets(tmp.path());
    assert_eq!(
        datasets.iter().map(|d| d.objective).collect::<Vec<_>>(),
        [Objective::Sts, Objective::Triplets]
    );
    let cfg = || LoopConfig { batch_size: 3, ..config() };
    for (sampling, sts_loss) in [
        (Sampling::Proportional, StsLoss::CosentMnrl { weight: 1.0 }),
        (Sampling::RoundRobin, StsLoss::Angle),
    ] {
        let bi =
            || BiEncoderConfig { sampling, sts_loss, ..BiEncoderConfig::new(Objective::Pairs) };
        let straight = {
            let model = TrainableModel::load(&dir, 16, None).unwrap();
            let trainee = mixed(&model, bi(), datasets.clone());
            let mut t = Trainer::new(&trainee, cfg(), &tmp.path().join("a")).unwrap();
            // 6 sts rows and 5 triplets in batches of 3: 2 + 2 batches an epoch.
            assert_eq!(t.total_steps(), 12);
            t.run(&Quiet).unwrap();
            (t.state.loss.clone(), weights(&model))
        };
        assert!(straight.0.iter().all(|(_, l)| l.is_finite() && *l > 0.0), "{:?}", straight.0);
        let out = tmp.path().join("b");
        let checkpoint = {
            let model = TrainableModel::load(&dir, 16, None).unwrap();
            let trainee = mixed(&model, bi(), datasets.clone());
            let mut t = Trainer::new(&trainee, cfg(), &out).unwrap();
            match t.run(&StopAt(5, Default::default())).unwrap() {
                Finish::Interrupted { checkpoint } => checkpoint,
                other => panic!("expected an interruption, got {other:?}"),
            }
        };
        let model = TrainableModel::load(&dir, 16, None).unwrap();
        let trainee = mixed(&model, bi(), datasets.clone());
        let mut t = Trainer::new(&trainee, cfg(), &out).unwrap();
        t.resume(&checkpoint).unwrap();
        assert_eq!(t.state.step, 5);
        t.run(&Quiet).unwrap();
        assert_eq!(t.state.loss, straight.0, "{sampling:?}: loss curves differ after resume");
        assert_eq!(weights(&model), straight.1, "{sampling:?}: weights differ after resume");
    }
}

#[test]
fn each_batch_keeps_to_one_dataset_and_takes_its_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let model = TrainableModel::load(&fixture(), 16, None).unwrap();
    let datasets = two_datasets(tmp.path());
    // The loss of sts rows is set for runs that hold sts data.
    let bi = |objective, sts_loss| BiEncoderConfig { sts_loss, ..BiEncoderConfig::new(objective) };
    let both = mixed(&model, bi(Objective::Pairs, StsLoss::Angle), datasets.clone());
    let batches = both.batches(3, 7);
    assert_eq!(batches.len(), 4);
    let sts_rows = datasets[0].examples.len();
    for batch in batches {
        let d = usize::from(batch[0] >= sts_rows);
        assert!(batch.iter().all(|&i| usize::from(i >= sts_rows) == d), "mixed batch {batch:?}");
        let objective = datasets[d].objective;
        let sts_loss = if objective == Objective::Sts { StsLoss::Angle } else { StsLoss::Cosent };
        let alone = mixed(&model, bi(objective, sts_loss), vec![datasets[d].clone()]);
        let local: Vec<usize> = batch.iter().map(|i| i - d * sts_rows).collect();
        let (want, _) = alone.gradients(&local, 5).unwrap();
        let (got, _) = both.gradients(&batch, 5).unwrap();
        assert_eq!(got, want, "batch {batch:?} of {}", objective.name());
    }
}

#[test]
fn the_sts_loss_needs_sts_data() {
    let tmp = tempfile::tempdir().unwrap();
    let model = TrainableModel::load(&fixture(), 16, None).unwrap();
    let triplets = two_datasets(tmp.path()).split_off(1);
    let bi = BiEncoderConfig { sts_loss: StsLoss::Angle, ..BiEncoderConfig::new(Objective::Pairs) };
    let refused = BiEncoderTraining::with_datasets(&model, bi, triplets, ModelCard::default());
    let message = refused.err().expect("refused").to_string();
    assert_eq!(message, "--loss angle applies to sts data, and this run has none");
}

#[test]
fn matryoshka_with_a_projection_exports_a_dense_module() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "the cat sat\na dog ran far\nthe sky is blue\nbird flew over the tree\nred sun\n",
    )
    .unwrap();
    let model = TrainableModel::load(&fixture(), 16, Some(8)).unwrap();
    assert_eq!(model.dimension(), 8);
    let bi = BiEncoderConfig { dims: vec![8, 4], ..BiEncoderConfig::new(Objective::SimCse) };
    let simcse = BiEncoderTraining::new(
        &model,
        bi,
        load_examples(Objective::SimCse, &corpus).unwrap(),
        ModelCard { dims: vec![8, 4], ..Default::default() },
    )
    .unwrap();
    let out = tmp.path().join("m");
    let mut t = Trainer::new(&simcse, LoopConfig { max_steps: Some(3), ..config() }, &out).unwrap();
    t.run(&Quiet).unwrap();
    assert!(out.join("2_Dense/model.safetensors").exists());
    let loaded = LocalEmbedder::load(&out, "m", LoadOptions::default()).unwrap();
    assert_eq!(loaded.dimension(), 8);
    let card: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("config_sentence_transformers.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(card["sembase"]["matryoshka_dims"], serde_json::json!([8, 4]));
}

#[test]
fn evaluation_during_training_keeps_the_best_export() {
    let tmp = tempfile::tempdir().unwrap();
    let sts = tmp.path().join("dev.tsv");
    std::fs::write(&sts, "sentence1\tsentence2\tscore\nthe cat sat\ta cat sat\t5\nthe sky is blue\tthe dog ran\t0.5\nbig bird\ta big bird flew\t4\nred sun\tgreen tree\t1\n").unwrap();
    let model = TrainableModel::load(&fixture(), 16, None).unwrap();
    let bi = BiEncoderConfig {
        eval: Some(format!("sts:{}", sts.display()).parse().unwrap()),
        ..BiEncoderConfig::new(Objective::Pairs)
    };
    let pairs =
        trainee(&model, bi, load_examples(Objective::Pairs, &pairs_file(tmp.path())).unwrap());
    let out = tmp.path().join("best");
    let cfg = LoopConfig { eval_steps: 2, max_steps: Some(4), ..config() };
    let mut t = Trainer::new(&pairs, cfg, &out).unwrap();
    t.run(&Quiet).unwrap();
    assert_eq!(t.state.eval.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 4]);
    assert!(t.state.best.is_some() && out.join("model.safetensors").exists());
}

#[test]
fn bad_settings_and_data_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = TrainableModel::load(&fixture(), 16, None).unwrap();
    let examples = load_examples(Objective::Pairs, &pairs_file(tmp.path())).unwrap();
    let pairs = trainee(&model, BiEncoderConfig::new(Objective::Pairs), examples.clone());
    let refused = |cfg: LoopConfig| Trainer::new(&pairs, cfg, tmp.path()).err().expect("refused");
    assert!(refused(LoopConfig { batch_size: 1, ..config() }).to_string().contains("batch-size"));
    assert!(refused(LoopConfig { lr: 0.0, ..config() }).to_string().contains("--lr"));
    let bi = BiEncoderConfig { dims: vec![17], ..BiEncoderConfig::new(Objective::Pairs) };
    let wide = BiEncoderTraining::new(&model, bi, examples, ModelCard::default());
    assert!(wide.err().expect("refused").to_string().contains("--dims 17"));
    assert!(TrainableModel::load(&fixture(), 99, None)
        .err()
        .unwrap()
        .to_string()
        .contains("--max-length"));
    let one = tmp.path().join("one.txt");
    std::fs::write(&one, "only one line\n").unwrap();
    assert!(load_examples(Objective::SimCse, &one)
        .err()
        .unwrap()
        .to_string()
        .contains("at least 2"));
    std::fs::write(&one, b"ok\n\xff\xfe\n").unwrap();
    assert!(load_examples(Objective::SimCse, &one)
        .err()
        .unwrap()
        .to_string()
        .contains(":2: not valid UTF-8"));
}
