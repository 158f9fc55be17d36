//! Running the `sembase` binary from the CLI tests.

use std::path::Path;
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

/// A JSON file's value.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
