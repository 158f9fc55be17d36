//! `sembase train recipe` on all-MiniLM-L6-v2 (from the store): it holds rows out, mines hard negatives,
//! trains on the mix with checkpoints chosen on the held-out rows, and records every
//! step in `recipe.json` and the model card. On the tiny BERT: the flags it chooses
//! itself, data with nothing to hold out and a budget too small are one clear line.

mod run;
use run::{failure, read_json, sembase, training_fixture};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The model the recipe runs on: mining needs one whose neighbours differ (the tiny
/// random BERT scores every text alike, so the 95% guard drops every candidate).
const MODEL: &str = "all-minilm-l6-v2";

const ANIMALS: [&str; 5] = ["cat", "dog", "bird", "horse", "fish"];
const COLOURS: [&str; 4] = ["red", "black", "white", "small"];
const PLACES: [&str; 2] = ["in the garden", "near the river"];

/// 40 scored pairs: a sentence and its paraphrase (score 5), or two unrelated sentences
/// (score 1).
fn sts_rows() -> String {
    let mut text = String::from("sentence1\tsentence2\tscore\n");
    for i in 0..40 {
        let (animal, colour, place) = (ANIMALS[i % 5], COLOURS[i / 5 % 4], PLACES[i / 20]);
        let first = format!("the {colour} {animal} sleeps {place}");
        let (second, score) = if i % 2 == 0 {
            (format!("a {colour} {animal} is sleeping {place}"), 5)
        } else {
            (format!("stock prices fell on day {i}"), 1)
        };
        text.push_str(&format!("{first}\t{second}\t{score}\n"));
    }
    text
}

fn tiny_bert() -> String {
    training_fixture("tiny-bert").to_str().unwrap().to_string()
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sembase-cli-recipe-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sts.tsv"), sts_rows()).unwrap();
    dir
}

/// Small batches and texts, for every recipe of these tests.
const SMALL: [&str; 4] = ["--max-length", "16", "--batch-size", "4"];

/// `sembase train recipe` on `model` with `extra` flags and an empty store.
fn recipe(dir: &Path, model: &str, extra: &[&str]) -> Output {
    sembase(dir, &[&["train", "recipe", "--model", model], &SMALL[..], extra].concat())
}

/// `train recipe` with the user's store from a copy of the binary that is deleted once
/// it runs, as an upgrade replaces the file under an hour-long recipe: every step must
/// still start.
fn recipe_from_a_deleted_binary(dir: &Path, extra: &[&str]) -> Output {
    let binary = dir.join("sembase-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_sembase"), &binary).unwrap();
    let mut command = Command::new(&binary);
    command.current_dir(dir).args(["train", "recipe", "--model", MODEL]).args(SMALL).args(extra);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    // A test thread forking at the moment of the copy keeps a write handle on the new
    // file until it execs, and the kernel refuses to run a file open for writing.
    let child = (0..50)
        .find_map(|_| match command.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            }
            other => Some(other.unwrap()),
        })
        .expect("the copied binary stayed busy");
    std::fs::remove_file(&binary).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_recipe_holds_out_mines_trains_and_records_every_step() {
    let dir = scratch("run");
    let out = recipe_from_a_deleted_binary(
        &dir,
        &["--data", "sts.tsv", "--max-steps", "5", "--prefix", "the ", "--output", "model"],
    );
    assert!(
        out.status.success(),
        "(is {MODEL} in the store? `sembase model pull {MODEL}`) {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let summary = read_json(&dir.join("model/recipe.json"));
    let steps = summary["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "held-out split",
            "base model on the held-out split",
            "hard negatives",
            "timing",
            "training",
            "trained model on the held-out split"
        ]
    );
    assert_eq!(steps[0]["rows"], 4, "a tenth of 40 rows is held out");
    for figure in [&steps[1]["spearman"], &steps[5]["spearman"]] {
        assert!(figure.as_f64().is_some_and(f64::is_finite), "{figure}");
    }
    assert!(steps[2]["report"]["triplets"].as_u64().unwrap() > 0, "nothing mined: {}", steps[2]);
    let training = &steps[4];
    assert_eq!(training["steps"], 5);
    assert_eq!(training["data"].as_array().unwrap().len(), 2, "scored pairs and mined triplets");
    assert_eq!(training["sampling"], "proportional", "{training}");
    assert!(training["best"][0].as_u64().is_some(), "no checkpoint was chosen: {training}");

    // The budget is fitted from the mean of ten timed steps.
    let work = dir.join("model.recipe");
    let probe = read_json(&work.join("probe.json"));
    assert_eq!(probe["steps"], 10, "{probe}");
    assert_eq!(steps[3]["seconds_per_step"], probe["step_seconds_mean"]);

    // The held-out rows are not in the file trained on.
    let held = std::fs::read_to_string(work.join("held-out.tsv")).unwrap();
    let trained = std::fs::read_to_string(work.join("train.tsv")).unwrap();
    assert_eq!(held.lines().count() + trained.lines().count(), 40 + 2, "rows lost or doubled");
    assert!(
        held.lines().skip(1).all(|row| !trained.contains(row)),
        "held-out rows were trained on"
    );

    let card = std::fs::read_to_string(dir.join("model/README.md")).unwrap();
    assert!(card.contains("## Recipe"), "{card}");
    // The training run itself drew the files by their size (its hyper-parameters).
    assert!(card.contains("\"sampling\": \"proportional\""), "{card}");
    let config = read_json(&dir.join("model/config_sentence_transformers.json"));
    let name = config["default_prompt_name"].as_str().expect("the prefix as default prompt");
    assert_eq!(config["prompts"][name], "the ");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_recipes_are_refused_in_one_line() {
    let dir = scratch("refused");
    std::fs::write(dir.join("corpus.txt"), "the cat\nthe dog\n").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--data", "sts.tsv", "--loss", "angle"], "--loss: train recipe chooses it"),
        (&["--data", "simcse:corpus.txt"], "needs scored or labelled pairs"),
        (&["--data", "sts.tsv", "--budget-minutes", "0.001"], "too little for 10 steps"),
        (&["--data", "sts.tsv", "--budget-minutes", "0"], "--budget-minutes must be positive"),
    ];
    for (flags, message) in cases {
        let out = recipe(&dir, &tiny_bert(), &[flags, &["--output", "model"]].concat());
        let stderr = failure(&out);
        let last = stderr.lines().last().unwrap_or("");
        assert!(last.contains(message), "{flags:?}: {stderr}");
    }
    let model = tiny_bert();
    let args = ["train", "sts", "--model", &model, "--data", "sts.tsv", "--output", "m"];
    let out = sembase(&dir, &[&args[..], &["--budget-minutes", "5"]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("apply to train recipe"));
    std::fs::remove_dir_all(&dir).unwrap();
}
