//! End to end on the real all-MiniLM-L6-v2: the first 500 rows of TREC, 5-fold
//! CV, save, load, predict from text. Needs `sembase model pull all-minilm-l6-v2`.

use std::path::PathBuf;

use sembase_core::{EmbedOptions, Embedder, LoadOptions, LocalEmbedder};
use sembase_heads::head::{config_hash, TrainingInfo};
use sembase_heads::{
    embed_cached, parse_tsv, train_head, BaseModel, EmbeddingCache, Head, Kind, TrainConfig,
};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn model() -> (LocalEmbedder, PathBuf) {
    let store = sembase_hub::Store::from_env().expect("sembase store");
    let dir = store.resolve("all-minilm-l6-v2").unwrap_or_else(|e| {
        panic!(
            "all-minilm-l6-v2 is not in the store ({e}): run `sembase model pull all-minilm-l6-v2`"
        )
    });
    let model = LocalEmbedder::load(&dir, "all-minilm-l6-v2", LoadOptions::default())
        .expect("load all-minilm-l6-v2");
    (model, dir)
}

#[test]
fn trec_slice_train_save_load_predict() {
    let path = data_dir().join("en/classify/trec.tsv");
    let content =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let slice: String = content.lines().take(501).map(|l| format!("{l}\n")).collect();
    let data = parse_tsv(&slice, &path).unwrap();
    assert_eq!(data.texts.len(), 500);
    assert_eq!(data.classes, vec!["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]);
    data.check_trainable(&path, 5).unwrap();

    let (model, dir) = model();
    let tmp = tempfile::tempdir().unwrap();
    let options = EmbedOptions::default();
    let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
    let mut cache = EmbeddingCache::open(tmp.path(), "all-minilm-l6-v2|test").unwrap();
    let (x, dim) = embed_cached(&model, &texts, &options, Some(&mut cache), &mut |_| {}).unwrap();
    assert_eq!(dim, 384);
    assert_eq!(
        cache.len(),
        EmbeddingCache::open(tmp.path(), "all-minilm-l6-v2|test").unwrap().len()
    );

    let mut config = TrainConfig::new(Kind::Logistic);
    config.folds = 5;
    let (classifier, report) = train_head(&x, dim, &data.labels, &data.classes, &config).unwrap();
    // MiniLM + logistic regression: about 77 on this slice (about 90 on all of TREC).
    assert!(report.metrics.accuracy > 70.0, "{:?}", report.metrics);
    assert!(report.metrics.macro_f1 > 50.0, "{:?}", report.metrics);
    assert_eq!(report.fold_ids.len(), 500);

    let base = BaseModel::describe(model.name(), &dir, dim, None, None, true);
    assert_eq!(base.config_hash, config_hash(&dir));
    let training = TrainingInfo {
        rows: 500,
        folds: 5,
        seed: 0,
        accuracy: report.metrics.accuracy,
        macro_f1: report.metrics.macro_f1,
        data: None,
    };
    let head = Head::new(
        classifier,
        data.classes.clone(),
        report.c,
        config.class_weight,
        base,
        Some(training),
    );
    let out = tmp.path().join("trec-head");
    head.save(&out).unwrap();
    let loaded = Head::load(&out).unwrap();
    assert_eq!(loaded, head);

    loaded.check_embedder(&model).unwrap();
    let questions = [
        "How far is it from Denver to Aspen ?",
        "Who wrote Hamlet ?",
        "What does NASA stand for ?",
    ];
    let predictions = loaded.predict_texts(&model, &questions).unwrap();
    let labels: Vec<&str> = predictions.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, vec!["NUM", "HUM", "ABBR"], "{predictions:?}");
    for p in &predictions {
        assert!((p.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
}
