//! Running the `sembase` binary from the CLI tests.
// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `sembase ARGS` in `dir` with an empty store.
pub fn sembase(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sembase"))
        .current_dir(dir)
        .env("SEMBASE_HOME", dir.join("empty-store"))
        .args(args)
        .output()
        .unwrap()
}

/// A model directory of sembase-train's test fixtures (`tiny-bert`, `tiny-llama`).
pub fn training_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sembase-train/tests/fixtures").join(name)
}

/// A JSON file's value.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The stderr of a run that must have failed, trimmed.
pub fn failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(!out.status.success(), "succeeded: {stderr}");
    stderr
}

/// The one line a run that must have failed writes to stderr.
pub fn one_line_failure(out: &Output) -> String {
    let stderr = failure(out);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}
