//! `sembase train` on several datasets at once, on the tiny BERT of the training tests:
//! `--data sts:A --data triplets:B` trains on both and lists them with their objectives
//! and row counts in the JSON report and the model card; a bad prefix or a missing file
//! is one clear line.

mod run;
use run::{one_line_failure, training_fixture};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const SEMBASE: &str = env!("CARGO_BIN_EXE_sembase");

const STS: &str = "sentence1\tsentence2\tscore\n\
the cat sat\ta cat sat\t5\n\
the sky is blue\tthe dog ran\t0.5\n\
big bird\ta big bird flew\t4\n\
red sun\tgreen tree\t1\n\
a dog ran far\tthe dog ran far away\t4.5\n";

const TRIPLETS: &str = "anchor\tpositive\tnegative\n\
the cat sat\ta cat sat on a mat\tthe sky is blue\n\
a big dog\tthe big dog ran\ta small bird\n\
red sun\tthe sun is red\tthe green tree\n\
blue sky\tthe sky is blue\ta slow dog\n";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sembase-cli-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sts.tsv"), STS).unwrap();
    std::fs::write(dir.join("triplets.tsv"), TRIPLETS).unwrap();
    dir
}

/// Runs `sembase train ARGS` in `dir` on the tiny model, with an empty store.
fn train(dir: &Path, args: &[&str]) -> Output {
    Command::new(SEMBASE)
        .current_dir(dir)
        .env("SEMBASE_HOME", dir.join("empty-store"))
        .arg("train")
        .args(args)
        .args(["--model", training_fixture("tiny-bert").to_str().unwrap(), "--max-length", "16"])
        .output()
        .unwrap()
}

#[test]
fn two_datasets_train_together_and_are_listed_with_their_objectives() {
    let dir = scratch("mixed");
    let args = [
        "sts",
        "--data",
        "sts:sts.tsv",
        "--data",
        "triplets:triplets.tsv",
        "--loss",
        "cosent+mnrl",
        "--sampling",
        "round-robin",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--output",
        "out",
        "--json",
        "report.json",
    ];
    let out = train(&dir, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let datasets = json!([
        {"path": "sts.tsv", "objective": "sts", "rows": 5},
        {"path": "triplets.tsv", "objective": "triplets", "rows": 4},
    ]);
    assert_eq!(report["datasets"], datasets);
    // 5 sts rows and 4 triplets in batches of 2: 3 + 2 steps.
    assert_eq!(report["steps"], 5, "{report}");
    let card = std::fs::read_to_string(dir.join("out/README.md")).unwrap();
    assert!(card.contains("- Objective: `sts + triplets`"), "{card}");
    assert!(card.contains("- Training data: `sts:sts.tsv, triplets:triplets.tsv`"), "{card}");
    for line in ["\"loss\": \"cosent+mnrl\"", "\"sampling\": \"round-robin\"", "\"rows\": 4"] {
        assert!(card.contains(line), "the card lacks {line}: {card}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_data_specs_and_missing_files_are_one_line_errors() {
    let dir = scratch("errors");
    let run = |args: &[&str]| {
        one_line_failure(&train(&dir, &[&["sts"], args, &["--output", "o"]].concat()))
    };
    assert_eq!(
        run(&["--data", "bogus:sts.tsv"]),
        "error: --data bogus:sts.tsv: unknown objective `bogus` (expected simcse, pairs, triplets or sts)"
    );
    let missing = run(&["--data", "sts.tsv", "--data", "triplets:absent.tsv"]);
    assert_eq!(missing, "error: absent.tsv: No such file or directory (os error 2)");
    assert_eq!(
        run(&["--data", "sts.tsv", "--loss", "cos"]),
        "error: --loss cos: expected cosent, angle or cosent+mnrl"
    );
    assert_eq!(
        run(&["--data", "triplets:triplets.tsv", "--loss", "angle"]),
        "error: --loss angle applies to sts data, and this run has none"
    );
    assert!(!dir.join("o").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
