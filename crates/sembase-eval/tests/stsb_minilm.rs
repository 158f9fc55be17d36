//! Real data: all-MiniLM-L6-v2 on English STS-B test must give MTEB's 82.03
//! cosine Spearman (x100) within +/-0.2. The model comes from the store
//! (`SEMBASE_HOME`); the data from `../shared/data` beside the repository.

use std::path::PathBuf;

use sembase_core::{LoadOptions, LocalEmbedder};
use sembase_eval::encode::{Encoder, EvalModel, Silent};
use sembase_eval::evaluate::{evaluate, Settings};
use sembase_eval::tasks::{Task, TaskData, TaskSpec};

const MODEL: &str = "all-minilm-l6-v2";
const MTEB_SPEARMAN: f64 = 82.03;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

#[test]
fn minilm_on_stsb_test_matches_mteb() {
    let store = sembase_hub::Store::from_env().expect("a model store (set SEMBASE_HOME)");
    let dir = store.resolve(MODEL).unwrap_or_else(|e| {
        panic!("{MODEL} is needed: run `sembase model pull {MODEL}` (store: {e})")
    });
    let embedder = LocalEmbedder::load(&dir, MODEL, LoadOptions::default()).expect("model loads");
    let model = EvalModel {
        embedder: Box::new(embedder),
        cache_id: format!("test:{}", dir.display()),
        truncate_locally: true,
    };

    let file = data_dir().join("en/stsb/test.tsv");
    assert!(
        file.exists(),
        "{} is missing (the shared data lives beside the repository)",
        file.display()
    );
    let spec: TaskSpec = format!("sts:{}", file.display()).parse().unwrap();
    let task = Task::load(&spec).unwrap();
    let TaskData::Sts(rows) = &task.data else { unreachable!() };
    assert_eq!(rows.len(), 1379);

    let result =
        evaluate(&Encoder::new(&model, None, &Silent), &task, &Settings::default()).unwrap();
    let spearman = result.metrics.get("spearman").unwrap();
    eprintln!(
        "{MODEL} stsb test: spearman {spearman:.3}, pearson {:.3}, {:.1}s",
        result.metrics.get("pearson").unwrap(),
        result.seconds
    );
    assert!(
        (spearman - MTEB_SPEARMAN).abs() <= 0.2,
        "cosine Spearman {spearman:.3}, MTEB reports {MTEB_SPEARMAN}"
    );
    assert_eq!(result.dimensions, 384);
}
