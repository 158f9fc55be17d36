//! `sembase serve --index NAME=DIR` end to end with the real binary and the
//! store's all-minilm-l6-v2: search, upsert and delete over HTTP, and the
//! start-up refusal of an index whose model is not served.

#[path = "../../sembase-server/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::request;
use serde_json::{json, Value};

const MODEL: &str = "all-minilm-l6-v2";
const SEMBASE: &str = env!("CARGO_BIN_EXE_sembase");

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sembase-serve-search-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn build_index(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus.jsonl");
    let docs = [
        json!({"_id": "cat", "text": "The cat sleeps on the sofa.", "metadata": {"topic": "pets"}}),
        json!({"_id": "dog", "text": "A dog runs after the ball in the park.", "metadata": {"topic": "pets"}}),
        json!({"_id": "tax", "title": "Taxes", "text": "How to file an income tax return.", "metadata": {"topic": "money"}}),
        json!({"_id": "bank", "text": "Opening a savings account at a bank.", "metadata": {"topic": "money"}}),
    ];
    std::fs::write(&corpus, docs.iter().map(|d| format!("{d}\n")).collect::<String>()).unwrap();
    let index = dir.join("index");
    let out = Command::new(SEMBASE)
        .args([
            "index",
            "build",
            "--model",
            MODEL,
            "--corpus",
            corpus.to_str().unwrap(),
            "--output",
            index.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "index build failed (is {MODEL} in the store? `sembase model pull {MODEL}`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    index
}

struct Serve(Child, std::net::SocketAddr);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn post(addr: std::net::SocketAddr, method: &str, path: &str, body: Value) -> (u16, Value) {
    let reply = request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    (reply.status, serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
}

fn ids(answer: &Value, query: usize) -> Vec<String> {
    answer["results"][query]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn search_upsert_and_delete_over_http() {
    let dir = temp_dir("http");
    let index = build_index(&dir);
    let mut child = Command::new(SEMBASE)
        .args([
            "serve",
            "--model",
            MODEL,
            "--port",
            "0",
            "--index",
            &format!("docs={}", index.display()),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("no ready line: {line:?}"))
        .parse()
        .unwrap();
    let server = Serve(child, addr);

    let (status, answer) = post(
        server.1,
        "POST",
        "/v1/search",
        json!({"index": "docs", "queries": ["my kitten is napping", "filing taxes"], "top_k": 2}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ids(&answer, 0)[0], "cat");
    assert_eq!(ids(&answer, 1)[0], "tax");
    assert_eq!(answer["results"][1]["hits"][0]["metadata"]["title"], "Taxes");
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let (status, answer) = post(
        server.1,
        "POST",
        "/v1/search",
        json!({"index": "docs", "query": "my kitten is napping", "filter": {"topic": "money"}}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ids(&answer, 0).len(), 2, "only the two money documents match");
    assert!(answer["results"][0]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["metadata"]["topic"] == "money"));

    let (status, answer) = post(
        server.1,
        "POST",
        "/v1/indexes/docs/documents",
        json!({"documents": [{"id": "kitten", "text": "A small kitten naps in the sun."}]}),
    );
    assert_eq!((status, answer["count"].as_u64()), (200, Some(5)), "{answer}");
    let (_, answer) = post(
        server.1,
        "POST",
        "/v1/search",
        json!({"index": "docs", "query": "my kitten is napping", "top_k": 1}),
    );
    assert_eq!(ids(&answer, 0), ["kitten"]);

    let (status, answer) = post(
        server.1,
        "DELETE",
        "/v1/indexes/docs/documents",
        json!({"ids": ["kitten", "missing"]}),
    );
    assert_eq!(
        (status, answer["changed"].as_u64(), answer["count"].as_u64()),
        (200, Some(1), Some(4)),
        "{answer}"
    );
    let (_, answer) = post(
        server.1,
        "POST",
        "/v1/search",
        json!({"index": "docs", "query": "my kitten is napping", "top_k": 1}),
    );
    assert_eq!(ids(&answer, 0), ["cat"]);

    for (body, status) in [
        (json!({"index": "nope", "query": "x"}), 404),
        (json!({"index": "docs"}), 400),
        (json!({"index": "docs", "query": "x", "top_k": 0}), 400),
        (json!({"index": "docs", "query": "x", "filter": {"topic": ["a"]}}), 400),
    ] {
        assert_eq!(post(server.1, "POST", "/v1/search", body.clone()).0, status, "{body}");
    }
    assert_eq!(
        post(
            server.1,
            "POST",
            "/v1/indexes/docs/documents",
            json!({"documents": [{"text": "no id"}]})
        )
        .0,
        400
    );
    drop(server);
    // The writes are on disk: a reader sees them after the server is gone.
    let out = Command::new(SEMBASE)
        .args([
            "search",
            "--index",
            index.to_str().unwrap(),
            "--query",
            "bank account",
            "--top-k",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bank"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_index_of_an_unserved_model_is_refused_at_start_up() {
    let dir = temp_dir("refuse");
    let index = build_index(&dir);
    let path = index.join("index.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    settings["settings"]["model"]["fingerprint"] = json!("0123456789abcdef");
    std::fs::write(&path, settings.to_string()).unwrap();
    let mut child = Command::new(SEMBASE)
        .args([
            "serve",
            "--model",
            MODEL,
            "--port",
            "0",
            "--index",
            &format!("docs={}", index.display()),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve kept running with an index of another model"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("which is not served"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
