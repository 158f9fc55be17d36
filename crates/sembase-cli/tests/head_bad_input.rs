//! `sembase head train` on bad data: one clear line naming the file and line, before any
//! model is opened (the store here is empty), and nothing written: no head, no report,
//! no temporary files.

use std::path::Path;
use std::process::Command;

const SEMBASE: &str = env!("CARGO_BIN_EXE_sembase");

/// `n` rows labelled `label`.
fn rows(label: &str, n: usize) -> String {
    (0..n).map(|i| format!("text number {i} for {label}\t{label}\n")).collect()
}

/// Runs `head train` on `data` in `dir` (report to `report`) and returns its stderr,
/// checking that it failed in one line and left only the data file behind.
fn train_fails(dir: &Path, name: &str, data: &str, report: &str, extra: &[&str]) -> String {
    let case = dir.join(name);
    std::fs::create_dir_all(&case).unwrap();
    std::fs::write(case.join("data.tsv"), data).unwrap();
    let out = Command::new(SEMBASE)
        .current_dir(&case)
        .env("SEMBASE_HOME", case.join("empty-store"))
        .args([
            "head",
            "train",
            "--model",
            "all-minilm-l6-v2",
            "--data",
            "data.tsv",
            "--output",
            "head",
            "--json",
            report,
        ])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{name}: succeeded");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: one line: {stderr}");
    let left: Vec<String> = std::fs::read_dir(&case)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["data.tsv"], "{name}: something was written");
    stderr.trim_end().to_string()
}

#[test]
fn bad_training_data_is_one_line_naming_the_line_and_writes_nothing() {
    let tmp = std::env::temp_dir().join(format!("sembase-head-bad-input-{}", std::process::id()));
    let header = "text\tlabel\n";
    let cases = [
        ("single-class", format!("{header}{}", rows("pos", 12)), "error: data.tsv:2: only one class (\"pos\") in the file; a classifier needs at least two"),
        (
            "few-examples",
            format!("{header}{}{}", rows("pos", 12), rows("neg", 3)),
            "error: data.tsv:14: class \"neg\" (first seen here) has 3 example(s), fewer than the 10 folds",
        ),
        ("empty-text", format!("{header}{}  \tneg\n{}", rows("pos", 12), rows("neg", 12)), "error: data.tsv:14: empty text"),
        (
            "tab-in-label",
            format!("{header}{}bad one\tneg\tative\n", rows("pos", 12)),
            "error: data.tsv:14: 3 tab-separated fields, expected 2 (`text<TAB>label`; tabs are not allowed inside a text or label)",
        ),
        ("empty-label", format!("{header}{}bad one\t\n", rows("pos", 12)), "error: data.tsv:14: empty label"),
        ("no-rows", header.to_string(), "error: data.tsv:1: no data rows after the header"),
    ];
    for (name, data, expected) in &cases {
        assert_eq!(&train_fails(&tmp, name, data, "report.json", &[]), expected, "{name}");
    }
    let data = format!("{header}{}{}", rows("pos", 3), rows("neg", 3));
    let stderr = train_fails(&tmp, "folds", &data, "report.json", &["--folds", "4"]);
    assert_eq!(stderr, "error: data.tsv:5: class \"neg\" (first seen here) has 3 example(s), fewer than the 4 folds");
    // A report that cannot be written fails before the model is opened.
    let stderr = train_fails(&tmp, "report-dir", &data, "missing/report.json", &["--folds", "3"]);
    assert!(stderr.starts_with("error: creating missing/.report.json"), "{stderr}");
    let _ = std::fs::remove_dir_all(&tmp);
}
