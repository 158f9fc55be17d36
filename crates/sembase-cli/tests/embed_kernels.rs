//! `sembase embed` names the CPU kernels it runs in one stderr line, leaving stdout to the
//! vectors, and `SEMBASE_CPU_KERNELS` forces the portable set or is refused as a clear
//! error. Uses the store's all-minilm-l6-v2 (pulled by scripts/test.sh into $SEMBASE_HOME).

use std::io::Write;
use std::process::{Command, Output, Stdio};

const MODEL: &str = "all-minilm-l6-v2";
const SEMBASE: &str = env!("CARGO_BIN_EXE_sembase");

/// `sembase embed` of two texts from stdin to stdout, with `envs` set.
fn embed(envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new(SEMBASE)
        .args(["embed", "--model", MODEL])
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"a first sentence\nand a second one\n").unwrap();
    child.wait_with_output().unwrap()
}

/// The embeddings of embed's JSONL output.
fn vectors(output: &Output) -> Vec<Vec<f64>> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            row["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        })
        .collect()
}

#[test]
fn the_kernel_line_is_the_only_stderr_line_and_portable_gives_the_same_vectors() {
    let fastest = embed(&[]);
    let stderr = String::from_utf8_lossy(&fastest.stderr);
    assert!(fastest.status.success(), "sembase embed failed (is {MODEL} in the store?): {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1
            && lines[0].starts_with("kernels: fp32 gemm(")
            && lines[0].contains("(cpu: "),
        "{stderr}"
    );

    let portable = embed(&[("SEMBASE_CPU_KERNELS", "portable")]);
    let line = String::from_utf8_lossy(&portable.stderr);
    assert!(portable.status.success(), "{line}");
    assert!(line.contains("elementwise portable,") && line.contains("q4_1 portable "), "{line}");
    let (a, b) = (vectors(&fastest), vectors(&portable));
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        let cosine: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        assert!(cosine > 0.999_999, "cosine {cosine} between the fastest and the portable set");
    }
}

#[test]
fn an_unknown_kernel_set_is_one_clear_error() {
    let out = embed(&[("SEMBASE_CPU_KERNELS", "sse")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr.trim(),
        "error: device: SEMBASE_CPU_KERNELS=sse: expected avx512, avx2 or portable"
    );
}
