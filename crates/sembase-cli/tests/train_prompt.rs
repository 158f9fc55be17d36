//! A model trained with `--prefix` records it as its default prompt
//! (`default_prompt_name` in `config_sentence_transformers.json`), and `sembase eval`
//! without prefix flags then embeds the way the model was trained: as with the prefix
//! given by hand, and not as with no prefix.

mod run;
use run::{read_json, sembase, training_fixture};

use std::path::Path;

const STS: &str = "sentence1\tsentence2\tscore\n\
a red bird sat\tthe red bird sat\t5\n\
the dog is big\tthe sky ran\t0\n\
a small cat ran\tthe small cat ran far\t4\n\
green tree\tblue sun\t1\n\
the bird flew away\ta bird flew far away\t4.5\n\
a big dog sat\tthe blue mat\t1.5\n";

/// `sembase ARGS` in `dir`, which must succeed.
fn succeed(dir: &Path, args: &[&str]) {
    let out = sembase(dir, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Pearson of `sembase eval` on the sts file, with `flags`.
fn pearson(dir: &Path, flags: &[&str], tag: &str) -> f64 {
    let json = format!("eval-{tag}.json");
    let args = ["eval", "--model", "out", "--task", "sts:sts.tsv", "--no-cache", "--json", &json];
    succeed(dir, &[&args[..], flags].concat());
    let report = read_json(&dir.join(json));
    report["results"][0]["metrics"]["pearson"].as_f64().expect("pearson in the eval report")
}

#[test]
fn the_training_prefix_becomes_the_default_prompt_that_eval_uses() {
    let dir = std::env::temp_dir().join(format!("sembase-cli-prompt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sts.tsv"), STS).unwrap();
    let model = training_fixture("tiny-bert");
    let train = ["train", "sts", "--model", model.to_str().unwrap(), "--data", "sts.tsv"];
    let rest = ["--max-length", "16", "--batch-size", "3", "--max-steps", "2", "--prefix"];
    succeed(&dir, &[&train[..], &rest, &["the bird ", "--output", "out"]].concat());

    let config = read_json(&dir.join("out/config_sentence_transformers.json"));
    let name = config["default_prompt_name"].as_str().expect("a default prompt name");
    assert_eq!(config["prompts"][name], "the bird ", "{config}");

    let by_default = pearson(&dir, &[], "default");
    let by_hand = pearson(&dir, &["--query-prefix", "the bird "], "by-hand");
    let without = pearson(&dir, &["--query-prefix", ""], "without");
    assert_eq!(by_default, by_hand, "eval did not apply the default prompt");
    assert_ne!(by_default, without, "the prefix changes nothing on this model");
    std::fs::remove_dir_all(&dir).unwrap();
}
