//! `sembase train ... --lora` on the tiny LLaMA fixture: the run exports a PEFT adapter
//! directory (bidirectional recorded in its config, the query instruction as its
//! `query` prompt) that `sembase embed` loads over the base; wrong combinations are one
//! clear line.

mod run;
use run::{failure, read_json, sembase, training_fixture};

use std::path::{Path, PathBuf};

use serde_json::Value;

const PAIRS: &str = "sentence1\tsentence2\tlabel\n\
the cat sat on a mat\ta cat sat on the mat\t1\n\
a big dog ran far away\tthe big dog ran away\t1\n\
the bird flew over the tree\ta bird flew over a green tree\t1\n\
the sky is blue\tblue is the sky\t1\n\
a small red cat ran home\tthe small red cat ran fast home\t1\n";

/// A directory of the test `tag` alone: the tests run in parallel in one process.
fn scratch(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sembase-cli-train-lora-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pairs.tsv"), PAIRS).unwrap();
    dir
}

#[test]
fn lora_training_exports_an_adapter_that_embed_loads() {
    let dir = scratch("export");
    let model = training_fixture("tiny-llama");
    let out = sembase(
        &dir,
        &[
            "train",
            "pairs",
            "--model",
            model.to_str().unwrap(),
            "--data",
            "pairs.tsv",
            "--output",
            "adapter",
            "--lora",
            "4",
            "--bidirectional",
            "--pooling",
            "mean",
            "--query-instruction",
            "the ",
            "--batch-size",
            "2",
            "--max-steps",
            "3",
            "--lr",
            "1e-2",
            "--json",
            "run.json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let adapter = dir.join("adapter");
    let config = read_json(&adapter.join("adapter_config.json"));
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0, "alpha defaults to twice the rank");
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);
    let sbert = read_json(&adapter.join("sentence_bert_config.json"));
    assert_eq!(sbert["config_kwargs"]["is_causal"], false, "{sbert}");
    assert!(!adapter.join("config.json").exists(), "transformers would not load the base");
    assert_eq!(
        read_json(&adapter.join("config_sentence_transformers.json"))["prompts"]["query"],
        "the "
    );
    let pooling = read_json(&adapter.join("1_Pooling/config.json"));
    assert_eq!(pooling["pooling_mode_mean_tokens"], true);
    let weights = std::fs::metadata(adapter.join("adapter_model.safetensors")).unwrap().len();
    let base = std::fs::metadata(model.join("model.safetensors")).unwrap().len();
    assert!(weights < base, "the adapter ({weights} bytes) is no copy of the base ({base})");
    let run = read_json(&dir.join("run.json"));
    assert_eq!(run["steps"], 3);
    let card = std::fs::read_to_string(adapter.join("README.md")).unwrap();
    assert!(card.contains("\"bidirectional\": true"), "{card}");

    std::fs::write(dir.join("texts.txt"), "the cat sat\nblue sky\n").unwrap();
    let out = sembase(&dir, &["embed", "--model", "adapter", "--input", "texts.txt"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 32);
}

#[test]
fn wrong_lora_combinations_are_refused() {
    let dir = scratch("refused");
    let llama = training_fixture("tiny-llama");
    let bert = training_fixture("tiny-bert");
    let train = |model: &Path, extra: &[&str]| {
        let mut args = vec!["train", "pairs", "--model", model.to_str().unwrap()];
        args.extend(["--data", "pairs.tsv", "--output", "o", "--max-steps", "1"]);
        args.extend(extra);
        sembase(&dir, &args)
    };
    let err = failure(&train(&llama, &[]));
    assert!(err.contains("add --lora RANK"), "{err}");
    let err = failure(&train(&bert, &["--lora", "4"]));
    assert!(err.contains("decoder models"), "{err}");
    let err = failure(&train(&llama, &["--lora", "4", "--lora-targets", "lm_head"]));
    assert!(err.contains("lm_head"), "{err}");
    let err = failure(&train(&llama, &["--lora", "0"]));
    assert!(err.contains("rank must be at least 1"), "{err}");
    let err = failure(&train(&llama, &["--bidirectional"]));
    assert!(err.contains("--lora"), "{err}");
    assert!(!dir.join("o").exists(), "a refused run wrote an output");
}
