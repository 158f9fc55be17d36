//! `sembase mine` with the store's all-minilm-l6-v2 (pulled by scripts/test.sh into
//! $SEMBASE_HOME): the triplets it writes load as `train triplets` data, no negative
//! is the anchor or one of its labelled positives, and every negative's rank and score
//! (recomputed here from `sembase embed`'s vectors) respect the range and the guard.
//! Bad input ends in one line on stderr.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sembase_train::mine::normalize_text as key;
use sembase_train::{load_examples, Objective};

const SEMBASE: &str = env!("CARGO_BIN_EXE_sembase");
const MODEL: &str = "all-minilm-l6-v2";

/// (anchor, positive, label) rows: three topics, label-0 rows add candidates.
const PAIRS: [(&str, &str, u8); 8] = [
    ("How do I reset my password?", "I forgot my password, how can I change it?", 1),
    ("How do I reset my password?", "Steps to recover a lost account password", 1),
    ("What time does the store open?", "When are your opening hours?", 1),
    ("Where can I park my car?", "Is there a car park near the shop?", 1),
    ("How do I reset my password?", "How do I delete my account?", 0),
    ("What time does the store open?", "What time does the store close?", 0),
    ("Where can I park my car?", "Can I bring my dog into the shop?", 0),
    ("How do I pay by card?", "Do you take cash?", 0),
];

/// Candidates besides the data's own texts; one repeats a positive with other spacing.
const CORPUS: [&str; 14] = [
    "How do I change my email address?",
    "My login code never arrives",
    "Is the store open on Sundays?",
    "The shop closes at nine in the evening",
    "Parking is free for customers after six",
    "Where is the nearest bus stop?",
    "Do you deliver to my home?",
    "Can I return an item without a receipt?",
    "How long does delivery take?",
    "I  forgot my password,  how can I change it?",
    "The weather is lovely today",
    "Bananas are rich in potassium",
    "Can I pay with my phone?",
    "My card was declined at the checkout",
];

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sembase-cli-mine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sembase(args: &[&str]) -> Output {
    Command::new(SEMBASE).args(args).output().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed (is {MODEL} in the store? `sembase model pull {MODEL}`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one line a refused run writes to stderr.
fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

/// Unit vectors of `texts` from `sembase embed`, by whitespace-normalised text.
fn embed(dir: &Path, texts: &[String]) -> HashMap<String, Vec<f32>> {
    let input = dir.join("texts.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let output = dir.join("vectors.jsonl");
    let out =
        sembase(&["embed", "--model", MODEL, "--input", path(&input), "--output", path(&output)]);
    succeeded(&out, "embed");
    let lines = std::fs::read_to_string(&output).unwrap();
    texts
        .iter()
        .zip(lines.lines())
        .map(|(t, line)| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let v: Vec<f32> = row["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            (key(t), v.iter().map(|x| x / norm).collect())
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn triplets_load_for_training_and_respect_positives_range_and_guard() {
    let dir = scratch("real");
    let data = dir.join("pairs.tsv");
    let rows: Vec<String> = PAIRS.iter().map(|(a, p, l)| format!("{a}\t{p}\t{l}")).collect();
    std::fs::write(&data, format!("sentence1\tsentence2\tlabel\n{}\n", rows.join("\n"))).unwrap();
    let corpus = dir.join("corpus.txt");
    let mut candidates: Vec<String> =
        PAIRS.iter().flat_map(|(a, p, _)| [*a, *p]).map(String::from).collect();
    candidates.extend(CORPUS.iter().map(|s| s.to_string()));
    std::fs::write(&corpus, candidates.join("\n") + "\n").unwrap();
    let (first, last) = (2usize, 6usize);
    let output = dir.join("triplets.tsv");
    let json = dir.join("mine.json");
    let range = format!("{first}-{last}");
    let out = sembase(&[
        "mine",
        "--model",
        MODEL,
        "--data",
        path(&data),
        "--corpus",
        path(&corpus),
        "--output",
        path(&output),
        "--range",
        &range,
        "--negatives",
        "3",
        "--json",
        path(&json),
    ]);
    succeeded(&out, "mine");

    let examples = load_examples(Objective::Triplets, &output).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["triplets"], examples.len());
    assert_eq!((report["anchors"].as_u64(), report["pairs"].as_u64()), (Some(3), Some(4)));
    assert!(examples.len() >= 4, "{} triplets", examples.len());

    // Labelled positives of each text, in either column.
    let mut positives: HashMap<String, Vec<String>> = HashMap::new();
    for (a, p, _) in PAIRS.iter().filter(|r| r.2 == 1) {
        positives.entry(key(a)).or_default().push(key(p));
        positives.entry(key(p)).or_default().push(key(a));
    }
    let mut distinct: Vec<String> = Vec::new();
    for c in &candidates {
        if !distinct.iter().any(|d| key(d) == key(c)) {
            distinct.push(c.clone());
        }
    }
    let vectors = embed(&dir, &distinct);
    for e in &examples {
        let [anchor, positive, negative] = [&e.texts[0], &e.texts[1], &e.texts[2]].map(|t| key(t));
        let excluded: Vec<&String> =
            positives[&anchor].iter().chain(std::iter::once(&anchor)).collect();
        assert!(!excluded.contains(&&negative), "{negative:?} is labelled positive for {anchor:?}");
        assert!(positives[&anchor].contains(&positive));
        let a = &vectors[&anchor];
        let score = dot(a, &vectors[&negative]);
        let rank = 1 + vectors
            .iter()
            .filter(|(t, _)| !excluded.contains(t) && **t != negative)
            .filter(|(_, v)| dot(a, v) > score + 1e-5)
            .count();
        assert!((first..=last).contains(&rank), "{negative:?} ranks {rank} for {anchor:?}");
        let ceiling = 0.95 * dot(a, &vectors[&positive]);
        assert!(score <= ceiling + 1e-4, "{negative:?} scores {score} > {ceiling}");
    }
}

#[test]
fn bad_input_is_refused_in_one_line() {
    let dir = scratch("bad");
    let data = dir.join("pairs.tsv");
    std::fs::write(&data, "sentence1\tsentence2\tlabel\na\tb\t1\n").unwrap();
    let negatives_only = dir.join("negatives.tsv");
    std::fs::write(&negatives_only, "sentence1\tsentence2\tlabel\na\tb\t0\n").unwrap();
    let empty = dir.join("empty.tsv");
    std::fs::write(&empty, "sentence1\tsentence2\tlabel\n").unwrap();
    let output = dir.join("t.tsv");
    let mine = |data: &Path, extra: &[&str]| {
        let mut args =
            vec!["mine", "--model", MODEL, "--data", path(data), "--output", path(&output)];
        args.extend(extra);
        refused(&sembase(&args))
    };
    assert!(mine(&data, &["--range", "50-10"]).contains("--range"));
    assert!(mine(&data, &["--range", "0-5"]).contains("--range"));
    assert!(mine(&dir.join("missing.tsv"), &[]).contains("missing.tsv"));
    assert!(mine(&negatives_only, &[]).contains("no positive pairs"));
    assert!(mine(&empty, &[]).contains("no rows"));
    assert!(mine(&data, &["--negatives", "0"]).contains("--negatives"));
    assert!(mine(&data, &["--corpus", path(&dir.join("nothing.txt"))]).contains("nothing.txt"));
    assert!(!output.exists());
}
