//! `sembase serve` end to end with a real model: the binary, the store's
//! all-minilm-l6-v2 (pulled by scripts/test.sh into $SEMBASE_HOME), loopback HTTP.

#[path = "../../sembase-server/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{request, vectors, Reply};
use serde_json::json;

const MODEL: &str = "all-minilm-l6-v2";
const SEMBASE: &str = env!("CARGO_BIN_EXE_sembase");

struct Serve {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Serve {
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(SEMBASE)
            .args(["serve", "--model", MODEL, "--port", "0"])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_default();
        let Some(url) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            panic!("no ready line from `sembase serve` (is {MODEL} in the store? `sembase model pull {MODEL}`): {line:?}");
        };
        Self { addr: url.parse().unwrap(), child }
    }

    fn post(&self, path: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> Reply {
        request(self.addr, "POST", path, headers, body.to_string().as_bytes())
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let status =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sembase embed` on the texts (JSONL in and out).
fn embed_cli(texts: &[&str], dimensions: Option<usize>) -> Vec<Vec<f32>> {
    let dir = std::env::temp_dir().join(format!(
        "sembase-serve-test-{}-{}",
        std::process::id(),
        dimensions.unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for t in texts {
        writeln!(f, "{}", json!({ "text": t })).unwrap();
    }
    let output = dir.join("out.jsonl");
    let mut cmd = Command::new(SEMBASE);
    cmd.args(["embed", "--model", MODEL, "--input"]).arg(&input).arg("--output").arg(&output);
    if let Some(d) = dimensions {
        cmd.args(["--dimensions", &d.to_string()]);
    }
    assert!(cmd.status().unwrap().success());
    let text = std::fs::read_to_string(&output).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    text.lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            row["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn serves_the_vectors_sembase_embed_computes_and_stops_cleanly_on_sigterm() {
    let long = "lorem ipsum dolor sit amet ".repeat(100);
    let texts = ["A man is playing a guitar.", "北京是中国的首都。", "x", long.as_str()];
    let server = Serve::start(&[], &[]);
    assert_eq!(request(server.addr, "GET", "/health", &[], b"").status, 200);
    for dimensions in [None, Some(64)] {
        let mut body = json!({ "model": MODEL, "input": texts });
        if let Some(d) = dimensions {
            body["dimensions"] = json!(d);
        }
        let got = vectors(&server.post("/v1/embeddings", &body, &[]));
        let expected = embed_cli(&texts, dimensions);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g.len(), dimensions.unwrap_or(384));
            assert!(cosine(g, e) >= 0.99999, "input {i}: cosine {}", cosine(g, e));
        }
    }

    // Concurrent single-text clients: all answered, and merged into shared batches.
    let addr = server.addr;
    let clients: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let body =
                    json!({ "input": format!("client {i} asks a short question") }).to_string();
                (0..4)
                    .map(|_| request(addr, "POST", "/v1/embeddings", &[], body.as_bytes()).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for c in clients {
        assert!(c.join().unwrap().iter().all(|&s| s == 200));
    }
    let metrics = request(server.addr, "GET", "/metrics", &[], b"").text();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    let batches = value(&format!("sembase_batch_requests_count{{model=\"{MODEL}\"}}"));
    let requests = value(&format!("sembase_batch_requests_sum{{model=\"{MODEL}\"}}"));
    assert!(requests >= 66.0, "{metrics}");
    assert!(
        batches < requests,
        "no two requests shared a batch: {batches} batches for {requests} requests"
    );

    // SIGTERM while a large request is in the model: it is answered, then the process exits 0.
    let big: Vec<String> =
        (0..1500).map(|i| format!("sentence number {i} about nothing in particular")).collect();
    let in_flight = std::thread::spawn(move || {
        request(addr, "POST", "/v1/embeddings", &[], json!({ "input": big }).to_string().as_bytes())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !request(addr, "GET", "/metrics", &[], b"")
        .text()
        .contains("\nsembase_requests_in_flight 1\n")
    {
        assert!(std::time::Instant::now() < deadline, "the large request never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    let exit = server.terminate();
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(vectors(&reply).len(), 1500);
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn no_truncate_and_api_key_from_the_environment() {
    let server =
        Serve::start(&["--no-truncate", "--max-inputs", "4"], &[("SEMBASE_API_KEY", "k-123")]);
    let auth = [("Authorization", "Bearer k-123")];
    let long = "word ".repeat(400);
    let reply = server.post("/v1/embeddings", &json!({ "input": ["fine", long] }), &auth);
    reply.assert_error(
        400,
        "invalid_request_error",
        Some("input"),
        Some("input_too_long"),
        "too long",
    );
    assert!(
        reply.json()["error"]["message"].as_str().unwrap().starts_with("input[1] has 402 tokens"),
        "{}",
        reply.text()
    );
    let reply =
        server.post("/v1/embeddings", &json!({ "input": ["a", "b", "c", "d", "e"] }), &auth);
    reply.assert_error(400, "invalid_request_error", Some("input"), None, "max inputs");
    server.post("/v1/embeddings", &json!({ "input": "x" }), &[]).assert_error(
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
        "no key",
    );
    assert_eq!(server.post("/v1/embeddings", &json!({ "input": "x" }), &auth).status, 200);
    assert_eq!(request(server.addr, "GET", "/health", &[], b"").status, 200);
    assert!(server.terminate().success());
}

#[test]
fn a_cross_encoder_directory_is_served_as_a_reranker() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sembase-core/tests/fixtures/tiny-bert-cross-encoder");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let server = Serve::start(&["--model", dir.to_str().unwrap()], &[]);
    let models = request(server.addr, "GET", "/v1/models", &[], b"").json();
    let kinds: Vec<(&str, &str)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [(MODEL, "embedding"), ("tiny-bert-cross-encoder", "reranker")]);
    let (query, document) = (&reference["pairs"][0][0], &reference["pairs"][0][1]);
    let reply = server.post("/v1/rerank", &json!({ "query": query, "documents": [document] }), &[]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let score = reply.json()["results"][0]["relevance_score"].as_f64().unwrap();
    let expected = reference["scores"][0].as_f64().unwrap();
    assert!((score - expected).abs() < 1e-4, "{score} vs {expected}");
    // Requests that name no model still go to the embedding model.
    assert_eq!(server.post("/v1/embeddings", &json!({ "input": "x" }), &[]).status, 200);
    assert!(server.terminate().success());
}

#[test]
fn a_model_that_cannot_load_is_a_clear_error() {
    let out = Command::new(SEMBASE)
        .args(["serve", "--model", "/nonexistent/model/dir", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = final_error(&stderr);
    assert!(error.contains("/nonexistent/model/dir"), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.contains("ERROR") && l.contains("loading the models failed")),
        "the log names the failure: {stderr}"
    );
}

/// The one `error: ` line the binary ends with (after any log lines), checked to be the
/// last line and the only one.
fn final_error(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.trim().lines().collect();
    let errors = lines.iter().filter(|l| l.starts_with("error: ")).count();
    assert_eq!(errors, 1, "one error line: {stderr}");
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.starts_with("error: "), "the error comes last: {stderr}");
    last
}

/// The first `take` rows of each label of `en/classify/cr.tsv` after skipping `skip`, as TSV rows.
fn cr_rows(skip: usize, take: usize) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/en/classify/cr.tsv");
    let content =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    let mut rows = Vec::new();
    for line in content.lines().skip(1) {
        let n = seen.entry(line.rsplit('\t').next().unwrap()).or_default();
        *n += 1;
        if *n > skip && *n <= skip + take {
            rows.push(line.to_string());
        }
    }
    rows
}

fn sembase(args: &[&str]) -> std::process::Output {
    let out = Command::new(SEMBASE).args(args).output().unwrap();
    assert!(out.status.success(), "sembase {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn serves_heads_that_answer_as_sembase_head_predict_and_refuses_foreign_ones() {
    let dir = std::env::temp_dir().join(format!("sembase-serve-heads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("train.tsv");
    std::fs::write(&data, format!("text\tlabel\n{}\n", cr_rows(0, 20).join("\n"))).unwrap();
    let head = dir.join("sentiment");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    sembase(&[
        "head",
        "train",
        "--model",
        MODEL,
        "--data",
        &path(&data),
        "--output",
        &path(&head),
        "--folds",
        "2",
        "--c-grid",
        "1",
        "--no-cache",
    ]);
    let texts: Vec<String> =
        cr_rows(20, 5).iter().map(|r| r.split('\t').next().unwrap().to_string()).collect();
    let input = dir.join("texts.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let predicted = sembase(&[
        "head",
        "predict",
        "--head",
        &path(&head),
        "--input",
        &path(&input),
        "--no-cache",
    ]);
    let expected: Vec<serde_json::Value> = String::from_utf8(predicted.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(expected.len(), texts.len());

    let server = Serve::start(&["--head", &format!("sentiment={}", path(&head))], &[]);
    let reply = server.post("/v1/classify", &json!({ "input": texts, "heads": "sentiment" }), &[]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    for (i, want) in expected.iter().enumerate() {
        let got = &body["data"][i]["heads"]["sentiment"];
        assert_eq!(got["label"], want["label"], "input {i}: {got} vs {want}");
        let (got, want) =
            (got["probabilities"].as_object().unwrap(), want["probabilities"].as_object().unwrap());
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (label, p) in want {
            assert!(
                (got[label].as_f64().unwrap() - p.as_f64().unwrap()).abs() < 1e-5,
                "input {i} {label}: {got:?} vs {want:?}"
            );
        }
    }
    assert!(server.terminate().success());

    // The same head, claiming another base model: refused at start-up, in one line.
    let foreign = dir.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    for file in ["weights.safetensors", "labels.json", "head.json"] {
        std::fs::copy(head.join(file), foreign.join(file)).unwrap();
    }
    let meta = std::fs::read_to_string(head.join("head.json"))
        .unwrap()
        .replace(&format!("\"{MODEL}\""), "\"multilingual-e5-small\"");
    std::fs::write(foreign.join("head.json"), meta).unwrap();
    let refused = |head_arg: String| {
        let out = Command::new(SEMBASE)
            .args(["serve", "--model", MODEL, "--port", "0", "--head", &head_arg])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        final_error(&stderr).to_string()
    };
    let stderr = refused(format!("zh={}", path(&foreign)));
    assert_eq!(
        stderr.trim(),
        format!("error: head `zh` was trained on model `multilingual-e5-small`, which this server does not serve (it serves: {MODEL})")
    );
    let stderr = refused(format!("gone={}", path(&dir.join("missing"))));
    assert!(stderr.starts_with("error: loading head `gone` from "), "{stderr}");
    let out = Command::new(SEMBASE)
        .args(["serve", "--model", MODEL, "--head", "no-equals-sign"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected NAME=DIR"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
