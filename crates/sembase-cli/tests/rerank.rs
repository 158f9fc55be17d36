//! `sembase rerank` against sentence-transformers: the tiny cross-encoder fixture's
//! `reference.json` holds (query, document) pairs and the scores `CrossEncoder.predict`
//! gave them. Every document is reranked for every reference query, so the check covers
//! the score of the reference pair, the index mapping back to the input and the order.

mod run;
use run::{one_line_failure, read_json, sembase};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const SEMBASE: &str = env!("CARGO_BIN_EXE_sembase");
const TOLERANCE: f64 = 1e-4;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn cross_encoder() -> PathBuf {
    fixture("sembase-core/tests/fixtures/tiny-bert-cross-encoder")
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sembase-cli-rerank-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `sembase rerank ARGS` with an empty store, `stdin` on its standard input.
fn rerank(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(SEMBASE)
        .current_dir(dir)
        .env("SEMBASE_HOME", dir.join("empty-store"))
        .arg("rerank")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rerank failed: {stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn scores_match_sentence_transformers_and_come_best_first() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(cross_encoder().join("reference.json")).unwrap(),
    )
    .unwrap();
    let pairs: Vec<(&str, &str)> = reference["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
        .collect();
    let scores: Vec<f64> =
        reference["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    assert!(pairs.len() >= 3 && pairs.len() == scores.len());

    let dir = scratch("reference");
    let documents: Vec<&str> = pairs.iter().map(|p| p.1).collect();
    std::fs::write(dir.join("candidates.txt"), documents.join("\n") + "\n").unwrap();
    let model = cross_encoder();
    let model = model.to_str().unwrap();
    for (i, ((query, document), want)) in pairs.iter().zip(&scores).enumerate() {
        let args =
            ["--model", model, "--query", query, "--input", "candidates.txt", "--json", "out.json"];
        succeeded(&rerank(&dir, &args, ""));
        let out: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("out.json")).unwrap()).unwrap();
        assert_eq!(out["query"], *query);
        assert_eq!(out["model"], "tiny-bert-cross-encoder");
        assert_eq!(out["pairs"], documents.len());
        assert!(out["seconds"].as_f64().unwrap() >= 0.0);
        let results = out["results"].as_array().unwrap();
        let mut indices: Vec<u64> = results.iter().map(|r| r["index"].as_u64().unwrap()).collect();
        let got: Vec<f64> = results.iter().map(|r| r["score"].as_f64().unwrap()).collect();
        assert!(got.windows(2).all(|w| w[0] >= w[1]), "{query:?}: not best first: {got:?}");
        let mine = results.iter().find(|r| r["index"] == i).unwrap();
        assert_eq!(mine["text"], *document);
        let score = mine["score"].as_f64().unwrap();
        assert!((score - want).abs() <= TOLERANCE, "{query:?}: {score}, reference {want}");
        indices.sort_unstable();
        assert_eq!(indices, (0..documents.len() as u64).collect::<Vec<_>>());
    }

    // From stdin, printed, the best two: the same ranking as --json's.
    let (query, _) = pairs[0];
    let args = ["--model", model, "--query", query, "--input", "-", "--top-n", "2"];
    let printed = succeeded(&rerank(&dir, &args, &(documents.join("\n") + "\n")));
    let args =
        ["--model", model, "--query", query, "--input", "candidates.txt", "--json", "out.json"];
    succeeded(&rerank(&dir, &args, ""));
    let out: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out.json")).unwrap()).unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    for (line, r) in lines.iter().zip(out["results"].as_array().unwrap()) {
        let fields: Vec<&str> = line.splitn(3, '\t').collect();
        let score: f64 = fields[0].parse().unwrap();
        assert!((score - r["score"].as_f64().unwrap()).abs() < 1e-6, "{line}");
        assert_eq!(
            (fields[1], fields[2]),
            (r["index"].to_string().as_str(), r["text"].as_str().unwrap())
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_models_and_inputs_are_one_line_errors() {
    let dir = scratch("errors");
    std::fs::write(dir.join("candidates.txt"), "a boat\nthe moon\n").unwrap();
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    let bi_encoder = fixture("sembase-train/tests/fixtures/tiny-bert");
    let cross = cross_encoder();
    let run = |model: &Path, query: &str, input: &str| {
        let args = ["--model", model.to_str().unwrap(), "--query", query, "--input", input];
        one_line_failure(&rerank(&dir, &args, ""))
    };

    let message = run(&bi_encoder, "boat", "candidates.txt");
    assert!(message.starts_with("error: loading cross-encoder "), "{message}");
    assert!(message.contains("is not a cross-encoder"), "{message}");
    assert_eq!(run(&cross, "  ", "candidates.txt"), "error: --query is empty");
    assert_eq!(run(&cross, "boat", "empty.txt"), "error: no candidates in empty.txt");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The second stage behind `eval` and `search`, with the tiny bi-encoder of the
/// training tests as the first: `eval --rerank` reports both stages, and
/// `search --rerank` gives each hit the score `rerank` gives the same text.
#[test]
fn eval_and_search_rerank_a_bi_encoders_candidates() {
    let dir = scratch("stages");
    let bi_encoder = fixture("sembase-train/tests/fixtures/tiny-bert");
    let (bi, ce) = (bi_encoder.to_str().unwrap(), cross_encoder());
    let ce = ce.to_str().unwrap();
    let docs = [
        ("d1", "Boats", "the boat sails over the lake"),
        ("d2", "", "stars shine at night over the quiet town"),
        ("d3", "Moon", "the bright moon is over the quiet town"),
        ("d4", "", "people sleep under the old stone bridge"),
        ("d5", "", "leaves fall in autumn when the cold wind blows"),
    ];
    let beir = dir.join("beir");
    std::fs::create_dir_all(beir.join("qrels")).unwrap();
    let corpus: String = docs
        .iter()
        .map(|(id, title, text)| {
            serde_json::json!({"_id": id, "title": title, "text": text}).to_string() + "\n"
        })
        .collect();
    std::fs::write(beir.join("corpus.jsonl"), &corpus).unwrap();
    std::fs::write(
        beir.join("queries.jsonl"),
        "{\"_id\": \"q1\", \"text\": \"where is the boat\"}\n{\"_id\": \"q2\", \"text\": \"moon\"}\n",
    )
    .unwrap();
    std::fs::write(
        beir.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n",
    )
    .unwrap();

    let args = ["eval", "--model", bi, "--task", "retrieval:beir", "--no-cache", "--rerank", ce];
    let out = sembase(&dir, &[&args[..], &["--rerank-depth", "3", "--json", "eval.json"]].concat());
    let table = succeeded(&out);
    let result = &read_json(&dir.join("eval.json"))["results"][0];
    assert_eq!(result["rerank"]["model"], "tiny-bert-cross-encoder", "{result}");
    assert_eq!(
        (result["rerank"]["depth"].as_u64(), result["rerank"]["pairs"].as_u64()),
        (Some(3), Some(6))
    );
    for key in ["metrics", "before"] {
        for metric in ["ndcg@10", "mrr@10", "recall@10", "map@100"] {
            assert!(result[key][metric].is_f64(), "{key} {metric}: {result}");
        }
    }
    // Five documents, all retrieved: reranking the top 3 cannot change recall@10.
    assert_eq!(result["metrics"]["recall@10"], result["before"]["recall@10"]);
    assert!(table.contains("tiny-bert + tiny-bert-cross-encoder (top 3)"), "{table}");
    // Reranking is for retrieval tasks only, refused before any model loads.
    std::fs::write(dir.join("sts.tsv"), "s1\ts2\tscore\na\tb\t1\n").unwrap();
    let out =
        sembase(&dir, &["eval", "--model", "missing", "--task", "sts:sts.tsv", "--rerank", ce]);
    assert_eq!(
        one_line_failure(&out),
        "error: --rerank applies to retrieval tasks only, not sts:sts.tsv"
    );

    let build =
        ["index", "build", "--model", bi, "--corpus", "beir/corpus.jsonl", "--output", "index"];
    succeeded(&sembase(&dir, &build));
    let query = "where is the boat";
    let search = ["search", "--index", "index", "--query", query, "--top-k", "2", "--rerank", ce];
    succeeded(&sembase(&dir, &[&search[..], &["--json", "search.json"]].concat()));
    let search = read_json(&dir.join("search.json"));
    // The default depth (50) reads the whole five-document index.
    assert_eq!(
        (search["rerank"]["depth"].as_u64(), search["rerank"]["pairs"].as_u64()),
        (Some(50), Some(5))
    );
    let hits = search["results"][0]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    // The cross-encoder reads each document as the bi-encoder embedded it: title + text.
    let texts: Vec<String> = docs
        .iter()
        .map(
            |(_, title, text)| {
                if title.is_empty() {
                    text.to_string()
                } else {
                    format!("{title} {text}")
                }
            },
        )
        .collect();
    std::fs::write(dir.join("texts.txt"), texts.join("\n") + "\n").unwrap();
    let args =
        ["rerank", "--model", ce, "--query", query, "--input", "texts.txt", "--json", "rr.json"];
    succeeded(&sembase(&dir, &args));
    let reranked = read_json(&dir.join("rr.json"));
    for (hit, best) in hits.iter().zip(reranked["results"].as_array().unwrap()) {
        let index = best["index"].as_u64().unwrap() as usize;
        assert_eq!(hit["id"], docs[index].0, "{search}");
        assert!((hit["score"].as_f64().unwrap() - best["score"].as_f64().unwrap()).abs() < 1e-6);
        let rank = hit["retrieval_rank"].as_u64().unwrap();
        assert!((1..=5).contains(&rank) && hit["retrieval_score"].is_f64(), "{hit}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
