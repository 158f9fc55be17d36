//! Rerankers over HTTP, on the tiny BERT cross-encoder fixture whose reference scores
//! sentence-transformers computed (crates/sembase-core/tests/fixtures): `POST /v1/rerank`
//! and TEI's `POST /rerank` (scores, order, `top_n`, documents, truncation), every bad
//! input, the shared batching queue and its metrics, `/v1/models`, the rerank stage of
//! `POST /v1/search`, and the OpenAPI document.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use sembase_core::{CrossEncoder, LoadOptions, Truncation};
use sembase_embed::{PairTokens, Reranker, ScoreActivation};
use sembase_server::{Attachments, ModelSpec, ServerConfig, ServerError};
use serde_json::{json, Value};

const TOLERANCE: f32 = 1e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sembase-core/tests/fixtures/tiny-bert-cross-encoder")
}

/// What sentence-transformers computed for the fixture's pairs.
struct Reference {
    pairs: Vec<(String, String)>,
    /// At the tokenizer's limit (64 tokens, which every pair fits).
    scores: Vec<f32>,
    logits: Vec<f32>,
    /// Tokens of each pair, special tokens included.
    tokens: Vec<usize>,
    /// With `max_length=16` (pairs 4 and 5 are cut).
    scores_16: Vec<f32>,
    tokens_16: Vec<usize>,
}

fn reference() -> Reference {
    let path = fixture_dir().join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{}: {e} (see tools/make_cross_encoder_fixture.py)", path.display())
    });
    let r: Value = serde_json::from_str(&text).unwrap();
    let floats = |key: &str| -> Vec<f32> {
        r[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    let lengths = |key: &str| -> Vec<usize> {
        r[key].as_array().unwrap().iter().map(|ids| ids.as_array().unwrap().len()).collect()
    };
    let pairs = r["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
        .collect();
    Reference {
        pairs,
        scores: floats("scores"),
        logits: floats("logits"),
        tokens: lengths("input_ids_full"),
        scores_16: floats("scores_max16"),
        tokens_16: lengths("input_ids"),
    }
}

/// The fixture, served as `tiny`; `max_length` overrides the tokenizer's limit.
fn tiny(max_length: Option<usize>) -> Arc<CrossEncoder> {
    let options = LoadOptions { max_seq_length: max_length, ..LoadOptions::default() };
    Arc::new(CrossEncoder::load(&fixture_dir(), "tiny", options).expect("the fixture loads"))
}

/// The fixture held at a gate and counting its forward calls, to watch the queue merge pairs.
struct Gated {
    inner: Arc<CrossEncoder>,
    gate: Gate,
    calls: AtomicUsize,
}

impl Reranker for Gated {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn max_tokens(&self) -> usize {
        self.inner.max_tokens()
    }
    fn activation(&self) -> ScoreActivation {
        self.inner.activation()
    }
    fn encode_pair(
        &self,
        query: &str,
        document: &str,
        truncate: Truncation,
    ) -> sembase_embed::Result<PairTokens> {
        self.inner.encode_pair(query, document, truncate)
    }
    fn score_pairs(&self, pairs: &[PairTokens]) -> sembase_embed::Result<Vec<f32>> {
        self.gate.pass();
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.score_pairs(pairs)
    }
}

/// A server with a fake embedding model `fake` (8 dimensions) and `rerankers`.
fn serve(config: ServerConfig, rerankers: Vec<Arc<dyn Reranker>>) -> TestServer {
    let fake = FakeModel::new("fake", 8, 64);
    TestServer::start_with(
        config,
        vec![ModelSpec::new(fake)],
        Attachments { rerankers, ..Attachments::default() },
    )
}

fn serve_tiny(config: ServerConfig, max_length: Option<usize>) -> TestServer {
    serve(config, vec![tiny(max_length)])
}

fn close(got: f64, want: f32, context: &str) {
    assert!((got as f32 - want).abs() <= TOLERANCE, "{context}: got {got}, want {want}");
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

/// Positions of `scores` from the highest down.
fn best_first(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

#[test]
fn each_pair_scores_as_sentence_transformers_scored_it() {
    let reference = reference();
    let server = serve_tiny(ServerConfig::default(), None);
    // Sent together, so that the pairs of several requests share forward passes.
    let replies: Vec<_> = reference
        .pairs
        .iter()
        .map(|(query, document)| {
            spawn_post(
                server.addr,
                "/v1/rerank",
                json!({"model": "tiny", "query": query, "documents": [document]}),
            )
        })
        .collect();
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply.join().unwrap();
        assert_eq!(reply.status, 200, "pair {i}: {}", reply.text());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.json();
        assert_eq!(keys(&body), ["model", "results", "usage"], "{body}");
        assert_eq!(body["model"], "tiny");
        let result = &body["results"][0];
        assert_eq!(keys(result), ["document", "index", "relevance_score"], "{body}");
        assert_eq!(result["index"], 0);
        close(
            result["relevance_score"].as_f64().unwrap(),
            reference.scores[i],
            &format!("pair {i}"),
        );
        assert_eq!(result["document"], json!({"text": reference.pairs[i].1}));
        let tokens = reference.tokens[i];
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": tokens, "total_tokens": tokens}),
            "pair {i}"
        );
    }

    // TEI's route: the activation's scores by default, the logits with raw_scores.
    for (i, (query, document)) in reference.pairs.iter().enumerate() {
        let body = json!({"query": query, "texts": [document]});
        let reply = server.post_json("/rerank", &body);
        assert_eq!(reply.status, 200, "{}", reply.text());
        let ranks = reply.json();
        assert_eq!(keys(&ranks[0]), ["index", "score"], "no text unless asked: {ranks}");
        close(ranks[0]["score"].as_f64().unwrap(), reference.scores[i], &format!("TEI pair {i}"));
        let mut raw = body.clone();
        raw["raw_scores"] = json!(true);
        let ranks = server.post_json("/rerank", &raw).json();
        close(ranks[0]["score"].as_f64().unwrap(), reference.logits[i], &format!("raw pair {i}"));
    }
}

#[test]
fn documents_come_back_best_first_cut_to_top_n() {
    let reference = reference();
    let model = tiny(None);
    let server = serve(ServerConfig::default(), vec![model.clone()]);
    let query = reference.pairs[0].0.clone();
    let documents: Vec<String> = reference.pairs.iter().map(|(_, d)| d.clone()).collect();
    let texts: Vec<&str> = documents.iter().map(String::as_str).collect();
    let expected = model.rerank(&query, &texts, Truncation::Truncate).unwrap();
    let order = best_first(&expected);
    assert_ne!(order, (0..documents.len()).collect::<Vec<_>>(), "the test needs a reordering");

    // No model named: the only reranker answers.
    let reply = server.post_json("/v1/rerank", &json!({"query": query, "documents": documents}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let results = body["results"].as_array().unwrap();
    let got: Vec<usize> = results.iter().map(|r| r["index"].as_u64().unwrap() as usize).collect();
    assert_eq!(got, order);
    for r in results {
        let i = r["index"].as_u64().unwrap() as usize;
        close(r["relevance_score"].as_f64().unwrap(), expected[i], &format!("document {i}"));
        assert_eq!(r["document"]["text"], documents[i]);
    }
    // Document 0 is reference pair 0, scored in a batch with the others.
    let first = results.iter().find(|r| r["index"] == 0).unwrap();
    close(first["relevance_score"].as_f64().unwrap(), reference.scores[0], "pair 0 in a batch");

    // top_n keeps the best; 0 or more than there are keeps all.
    for (top_n, count) in [(2, 2), (0, documents.len()), (100, documents.len())] {
        let body = json!({"query": query, "documents": documents, "top_n": top_n});
        let got: Vec<usize> = server.post_json("/v1/rerank", &body).json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, order[..count], "top_n {top_n}");
    }

    // Objects with a `text` (other fields ignored) are documents too; return_documents false.
    let objects: Vec<Value> = documents
        .iter()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { json!({"text": d, "id": i}) } else { json!(d) })
        .collect();
    let body =
        json!({"model": "tiny", "query": query, "documents": objects, "return_documents": false});
    let reply = server.post_json("/v1/rerank", &body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    for (r, &i) in reply.json()["results"].as_array().unwrap().iter().zip(&order) {
        assert_eq!(keys(r), ["index", "relevance_score"]);
        assert_eq!(r["index"], i);
    }

    // TEI: the same order, texts when asked.
    let body = json!({"query": query, "texts": documents, "return_text": true});
    let ranks = server.post_json("/rerank", &body).json();
    for (rank, &i) in ranks.as_array().unwrap().iter().zip(&order) {
        assert_eq!(rank["index"], i);
        assert_eq!(rank["text"], documents[i]);
        close(rank["score"].as_f64().unwrap(), expected[i], "TEI");
    }
}

#[test]
fn over_long_pairs_are_cut_unless_truncation_is_off() {
    let reference = reference();
    let server = serve_tiny(ServerConfig::default(), Some(16));
    // Pairs 4 and 5 are over 16 tokens: cut as sentence-transformers cuts them.
    for i in 0..reference.pairs.len() {
        let (query, document) = &reference.pairs[i];
        let body = server
            .post_json("/v1/rerank", &json!({"query": query, "documents": [document]}))
            .json();
        close(
            body["results"][0]["relevance_score"].as_f64().unwrap(),
            reference.scores_16[i],
            &format!("pair {i} cut at 16"),
        );
        assert_eq!(body["usage"]["total_tokens"], reference.tokens_16[i]);
    }
    let (query, long) = &reference.pairs[4];
    let short = &reference.pairs[0].1;
    let body = json!({"query": query, "documents": [short, long], "truncate": false});
    let reply = server.post_json("/v1/rerank", &body);
    reply.assert_error(
        400,
        "invalid_request_error",
        Some("documents"),
        Some("input_too_long"),
        "v1",
    );
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("documents[1]") && message.contains("16"), "{message}");
    let body = json!({"query": query, "texts": [long], "truncate": false});
    server.post_json("/rerank", &body).assert_error(
        422,
        "invalid_request_error",
        Some("texts"),
        Some("input_too_long"),
        "TEI",
    );

    // A server started without truncation refuses unless the request asks for it.
    let strict = serve_tiny(ServerConfig { truncate: false, ..ServerConfig::default() }, Some(16));
    let body = json!({"query": query, "documents": [long]});
    strict.post_json("/v1/rerank", &body).assert_error(
        400,
        "invalid_request_error",
        Some("documents"),
        Some("input_too_long"),
        "--no-truncate",
    );
    let body = json!({"query": query, "documents": [long], "truncate": true});
    let answer = strict.post_json("/v1/rerank", &body).json();
    close(
        answer["results"][0]["relevance_score"].as_f64().unwrap(),
        reference.scores_16[4],
        "truncate: true",
    );
}

#[test]
fn bad_requests_get_error_objects_naming_the_field() {
    let config = ServerConfig { max_inputs: 3, ..ServerConfig::default() };
    let server = serve_tiny(config, None);
    let invalid = "invalid_request_error";
    let v1: Vec<(Value, Option<&str>, &str)> = vec![
        (json!({"query": "", "documents": ["a"]}), Some("query"), "'query' is an empty string"),
        (json!({"query": "q", "documents": []}), Some("documents"), "'documents' is empty"),
        (json!({"query": "q", "documents": ["a", ""]}), Some("documents"), "documents[1]"),
        (json!({"query": "q", "documents": ["a", "b", "c", "d"]}), Some("documents"), "limit of 3"),
        (json!({"query": 5, "documents": ["a"]}), Some("query"), "invalid type"),
        (json!({"query": "q", "documents": "a"}), Some("documents"), "invalid type"),
        (json!({"query": "q", "documents": [1]}), Some("documents"), "a string or an object"),
        (
            json!({"query": "q", "documents": [{"txt": "a"}]}),
            Some("documents"),
            "missing field `text`",
        ),
        (json!({"query": "q", "documents": [{"text": 3}]}), Some("documents"), "invalid type"),
        (json!({"query": "q", "documents": ["a"], "top_n": -1}), Some("top_n"), "invalid value"),
        (json!({"query": "q", "documents": ["a"], "top_n": "2"}), Some("top_n"), "invalid type"),
        (
            json!({"query": "q", "documents": ["a"], "return_documents": "yes"}),
            Some("return_documents"),
            "invalid type",
        ),
        (
            json!({"query": "q", "documents": ["a"], "truncate": 1}),
            Some("truncate"),
            "invalid type",
        ),
        (json!({"documents": ["a"]}), None, "missing field `query`"),
        (json!(["q", ["a"]]), None, "JSON object"),
    ];
    for (body, param, says) in &v1 {
        let reply = server.post_json("/v1/rerank", body);
        reply.assert_error(400, invalid, *param, None, &body.to_string());
        let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{body}: {message}");
    }
    let tei: Vec<(Value, Option<&str>)> = vec![
        (json!({"query": "", "texts": ["a"]}), Some("query")),
        (json!({"query": "q", "texts": []}), Some("texts")),
        (json!({"query": "q", "texts": ["a", ""]}), Some("texts")),
        (json!({"query": "q", "texts": ["a", "b", "c", "d"]}), Some("texts")),
        (json!({"query": "q", "texts": [{"text": "a"}]}), Some("texts")),
        (json!({"query": "q", "texts": ["a"], "raw_scores": "no"}), Some("raw_scores")),
        (json!({"texts": ["a"]}), None),
    ];
    for (body, param) in &tei {
        server.post_json("/rerank", body).assert_error(
            422,
            invalid,
            *param,
            None,
            &body.to_string(),
        );
    }
    for path in ["/v1/rerank", "/rerank"] {
        let reply = request(server.addr, "POST", path, &[], b"{\"query\": ");
        reply.assert_error(400, invalid, None, Some("invalid_json"), path);
    }

    // Models: unknown, or of the other kind, on every route that takes one.
    let body = json!({"model": "nope", "query": "q", "documents": ["a"]});
    let reply = server.post_json("/v1/rerank", &body);
    reply.assert_error(404, invalid, Some("model"), Some("model_not_found"), "unknown");
    assert!(reply.text().contains("fake, tiny"), "{}", reply.text());
    let body = json!({"model": "fake", "query": "q", "documents": ["a"]});
    server.post_json("/v1/rerank", &body).assert_error(
        400,
        invalid,
        Some("model"),
        Some("wrong_model_kind"),
        "embedder at /v1/rerank",
    );
    let body = json!({"model": "fake", "query": "q", "texts": ["a"]});
    server.post_json("/rerank", &body).assert_error(
        400,
        invalid,
        Some("model"),
        Some("wrong_model_kind"),
        "embedder at /rerank",
    );
    let reply = server.post_json("/v1/embeddings", &json!({"model": "tiny", "input": "a"}));
    reply.assert_error(
        400,
        invalid,
        Some("model"),
        Some("wrong_model_kind"),
        "reranker at /v1/embeddings",
    );
    assert!(reply.text().contains("/v1/rerank"), "{}", reply.text());
    let reply = server.post_json("/tokenize", &json!({"model": "tiny", "inputs": "a"}));
    reply.assert_error(
        400,
        invalid,
        Some("model"),
        Some("wrong_model_kind"),
        "reranker at /tokenize",
    );

    // Nothing above broke the server.
    let reply = server.post_json("/v1/rerank", &json!({"query": "q", "documents": ["a"]}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let embedded = server.post_json("/v1/embeddings", &json!({"input": "a"}));
    assert_eq!(embedded.status, 200, "the embedder still answers requests naming no model");
}

#[test]
fn servers_with_one_kind_of_model_say_what_they_lack() {
    let embedders_only = TestServer::fake(ServerConfig::default(), &FakeModel::new("fake", 8, 64));
    let reply = embedders_only.post_json("/v1/rerank", &json!({"query": "q", "documents": ["a"]}));
    reply.assert_error(
        404,
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
        "no reranker",
    );
    assert!(reply.text().contains("no reranker"), "{}", reply.text());

    let rerankers_only = TestServer::start_with(
        ServerConfig::default(),
        Vec::new(),
        Attachments { rerankers: vec![tiny(None)], ..Attachments::default() },
    );
    let reply = rerankers_only.post_json("/v1/embeddings", &json!({"input": "a"}));
    reply.assert_error(
        404,
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
        "no embedder",
    );
    let reply = rerankers_only.post_json("/v1/rerank", &json!({"query": "q", "documents": ["a"]}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(rerankers_only.get("/health").json()["models"], json!(["tiny"]));
}

#[test]
fn models_list_rerankers_with_their_kind() {
    let server = serve_tiny(ServerConfig::default(), None);
    let list = server.get("/v1/models").json();
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], "fake");
    assert_eq!(data[0]["kind"], "embedding");
    assert_eq!(data[0]["dimension"], 8);
    assert_eq!(data[1]["id"], "tiny");
    assert_eq!(
        keys(&data[1]),
        ["created", "id", "kind", "max_tokens", "object", "owned_by"],
        "a reranker has no vector width: {list}"
    );
    assert_eq!(
        (&data[1]["kind"], &data[1]["max_tokens"], &data[1]["object"]),
        (&json!("reranker"), &json!(64), &json!("model"))
    );
    assert_eq!(server.get("/v1/models/tiny").json(), data[1]);
    assert_eq!(server.get("/health").json()["models"], json!(["fake", "tiny"]));

    // Names are one namespace across both kinds.
    let server = sembase_server::Server::new(ServerConfig::default()).unwrap();
    let fake = FakeModel::new("tiny", 8, 64);
    let refused = server.set_models_with(
        vec![ModelSpec::new(fake)],
        Attachments { rerankers: vec![tiny(None)], ..Attachments::default() },
    );
    assert!(matches!(refused, Err(ServerError::DuplicateModel(name)) if name == "tiny"));
}

#[test]
fn pairs_of_waiting_requests_share_one_forward_pass() {
    let reference = reference();
    let gated =
        Arc::new(Gated { inner: tiny(None), gate: Gate::default(), calls: AtomicUsize::new(0) });
    let server = serve(ServerConfig::default(), vec![gated.clone()]);
    gated.gate.close();
    let (query, document) = &reference.pairs[0];
    let body = |documents: Vec<&String>| json!({"query": query, "documents": documents});
    let first = spawn_post(server.addr, "/v1/rerank", body(vec![document]));
    server.wait_for("the worker at the gate", || gated.gate.waiting.load(Ordering::SeqCst) == 1);
    let waiting: Vec<_> = (0..5)
        .map(|_| spawn_post(server.addr, "/v1/rerank", body(vec![document, document])))
        .collect();
    server.wait_for("5 queued requests", || {
        server.metric("sembase_queue_depth{model=\"tiny\"}") == Some(5.0)
    });
    gated.gate.open();
    for reply in std::iter::once(first).chain(waiting) {
        let body = reply.join().unwrap().json();
        for result in body["results"].as_array().unwrap() {
            close(result["relevance_score"].as_f64().unwrap(), reference.scores[0], "merged");
        }
    }
    assert_eq!(gated.calls.load(Ordering::SeqCst), 2, "the five waiting requests share one call");
    let metric = |name: &str| server.metric(&format!("{name}{{model=\"tiny\"}}"));
    assert_eq!(metric("sembase_batch_requests_sum"), Some(6.0));
    assert_eq!(metric("sembase_rerank_requests_total"), Some(6.0));
    assert_eq!(metric("sembase_rerank_pairs_total"), Some(11.0));
    assert_eq!(metric("sembase_embedded_inputs_total"), Some(11.0));
    assert_eq!(metric("sembase_embedded_tokens_total"), Some(11.0 * reference.tokens[0] as f64));
    assert_eq!(
        server.metric("sembase_http_requests_total{route=\"/v1/rerank\",status=\"200\"}"),
        Some(6.0)
    );
    assert_eq!(server.metric("sembase_rerank_pairs_total{model=\"fake\"}"), Some(0.0));
}

/// A flat index of the fake model's vectors, empty, for `--index docs=DIR`.
/// A server with the fake model, an index of the fixture's documents and `reranker`.
fn serve_search(name: &str, config: ServerConfig, reranker: Arc<CrossEncoder>) -> TestServer {
    let fake = FakeModel::new("fake", 8, 64);
    let dir = std::env::temp_dir().join(format!("sembase-rerank-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let attachments = Attachments {
        indexes: vec![empty_index(&dir)],
        rerankers: vec![reranker],
        ..Attachments::default()
    };
    let server = TestServer::start_with(config, vec![ModelSpec::new(fake)], attachments);
    let documents: Vec<Value> = reference()
        .pairs
        .iter()
        .enumerate()
        .map(|(i, (_, text))| json!({"id": format!("d{i}"), "text": text}))
        .collect();
    let reply = server.post_json("/v1/indexes/docs/documents", &json!({"documents": documents}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    server
}

#[test]
fn search_reranks_the_index_candidates_and_keeps_their_first_stage_rank() {
    let reference = reference();
    let model = tiny(None);
    let server = serve_search("rank", ServerConfig::default(), model.clone());
    let query = &reference.pairs[3].0;
    let plain =
        server.post_json("/v1/search", &json!({"index": "docs", "query": query, "top_k": 6}));
    assert_eq!(plain.status, 200, "{}", plain.text());
    let plain = plain.json();
    let candidates = plain["results"][0]["hits"].as_array().unwrap().clone();
    assert_eq!(candidates.len(), 6);
    assert!(candidates.iter().all(|h| h.get("retrieval_rank").is_none()), "{plain}");
    let texts: Vec<&str> = candidates.iter().map(|h| h["text"].as_str().unwrap()).collect();
    let expected = model.rerank(query, &texts, Truncation::Truncate).unwrap();
    let order = best_first(&expected);
    assert_ne!(order[..3], [0, 1, 2], "the test needs the reranker to change the order");

    let body = json!({"index": "docs", "query": query, "top_k": 3, "rerank": {"model": "tiny", "depth": 6}});
    let reply = server.post_json("/v1/search", &body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    let hits = answer["results"][0]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    for (hit, &i) in hits.iter().zip(&order) {
        assert_eq!(hit["id"], candidates[i]["id"]);
        assert_eq!(hit["retrieval_rank"], i + 1);
        assert_eq!(hit["retrieval_score"], candidates[i]["score"]);
        close(hit["score"].as_f64().unwrap(), expected[i], "reranked score");
    }
    let pair_tokens: u64 = texts
        .iter()
        .map(|t| model.encode_pair(query, t, Truncation::Truncate).unwrap().len() as u64)
        .sum();
    let query_tokens = plain["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(answer["usage"]["total_tokens"], query_tokens + pair_tokens);

    // The default: the only reranker, at least 50 candidates (all six here).
    let body = json!({"index": "docs", "query": query, "top_k": 3, "rerank": {}});
    let again = server.post_json("/v1/search", &body).json();
    assert_eq!(again["results"][0]["hits"], answer["results"][0]["hits"]);

    let bad =
        |rerank: Value| json!({"index": "docs", "query": query, "top_k": 3, "rerank": rerank});
    let invalid = "invalid_request_error";
    for depth in [json!(2), json!(5000)] {
        server.post_json("/v1/search", &bad(json!({"depth": depth}))).assert_error(
            400,
            invalid,
            Some("rerank"),
            None,
            "depth",
        );
    }
    server.post_json("/v1/search", &bad(json!({"depth": -1}))).assert_error(
        400,
        invalid,
        Some("rerank"),
        None,
        "negative depth",
    );
    server.post_json("/v1/search", &bad(json!({"model": "nope"}))).assert_error(
        404,
        invalid,
        Some("rerank"),
        Some("model_not_found"),
        "unknown reranker",
    );
    server.post_json("/v1/search", &bad(json!({"model": "fake"}))).assert_error(
        400,
        invalid,
        Some("rerank"),
        Some("wrong_model_kind"),
        "embedder as reranker",
    );
    server.post_json("/v1/search", &bad(json!("tiny"))).assert_error(
        400,
        invalid,
        Some("rerank"),
        None,
        "not an object",
    );
}

#[test]
fn top_n_top_k_and_depth_take_integral_floats() {
    let server = serve_search("floats", ServerConfig::default(), tiny(None));
    let reference = reference();
    let query = &reference.pairs[3].0;
    let documents: Vec<&str> = reference.pairs.iter().map(|(_, d)| d.as_str()).collect();
    let rerank = |top_n: Value| json!({"query": query, "documents": documents, "top_n": top_n});
    let reply = server.post_json("/v1/rerank", &rerank(json!(2.0)));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["results"].as_array().unwrap().len(), 2);
    let search = |top_k: Value, depth: Value| json!({"index": "docs", "query": query, "top_k": top_k, "rerank": {"depth": depth}});
    let reply = server.post_json("/v1/search", &search(json!(3.0), json!(6.0)));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["results"][0]["hits"].as_array().unwrap().len(), 3);
    let invalid = "invalid_request_error";
    for bad in [json!(2.5), json!(-2.0), json!(1e300)] {
        let context = format!("{bad}");
        let reply = server.post_json("/v1/rerank", &rerank(bad.clone()));
        reply.assert_error(400, invalid, Some("top_n"), None, &context);
        let reply = server.post_json("/v1/search", &search(bad.clone(), json!(6)));
        reply.assert_error(400, invalid, Some("top_k"), None, &context);
        let reply = server.post_json("/v1/search", &search(json!(3), bad));
        reply.assert_error(400, invalid, Some("rerank"), None, &context);
    }
}

#[test]
fn a_search_s_query_and_rerank_tokens_count_against_one_request_cap() {
    let reference = reference();
    let query = &reference.pairs[3].0;
    let documents: Vec<&str> = reference.pairs.iter().map(|(_, d)| d.as_str()).collect();
    // Depth 6 reads every document of the index.
    let body = json!({"index": "docs", "query": query, "top_k": 3, "rerank": {"depth": 6}});
    let total = {
        let server = serve_search("cap-measure", ServerConfig::default(), tiny(None));
        let reply = server.post_json("/v1/search", &body);
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["usage"]["total_tokens"].as_u64().unwrap() as usize
    };
    let config = ServerConfig { max_request_tokens: total - 1, ..ServerConfig::default() };
    let server = serve_search("cap", config, tiny(None));
    // Each stage alone fits the cap...
    let plain = server.post_json("/v1/search", &json!({"index": "docs", "query": query}));
    assert_eq!(plain.status, 200, "{}", plain.text());
    let pairs = server.post_json("/v1/rerank", &json!({"query": query, "documents": documents}));
    assert_eq!(pairs.status, 200, "{}", pairs.text());
    let tokens = |reply: &Reply| reply.json()["usage"]["total_tokens"].as_u64().unwrap() as usize;
    assert_eq!(tokens(&plain) + tokens(&pairs), total);
    // ...both together do not.
    let reply = server.post_json("/v1/search", &body);
    reply.assert_error(
        413,
        "invalid_request_error",
        Some("rerank"),
        Some("request_too_many_tokens"),
        "query and pairs together",
    );
    let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains(&format!("make {total} tokens")), "{message}");
}

#[test]
fn the_default_rerank_depth_counts_against_the_hits_limit() {
    let config = ServerConfig { max_search_hits: 20, ..ServerConfig::default() };
    let server = serve_search("hits", config, tiny(None));
    let search = |rerank: Value| {
        let body = json!({"index": "docs", "query": "cold water", "top_k": 3, "rerank": rerank});
        server.post_json("/v1/search", &body)
    };
    // The index retrieves 50 candidates by default, though top_k is 3.
    let reply = search(json!({}));
    reply.assert_error(400, "invalid_request_error", Some("rerank"), Some("too_many_hits"), "50");
    assert!(reply.text().contains("1 queries x 50 hits"), "{}", reply.text());
    assert_eq!(search(json!({"depth": 20})).status, 200);
    let queries = vec!["cold water"; 7];
    let reply =
        server.post_json("/v1/search", &json!({"index": "docs", "queries": queries, "top_k": 3}));
    reply.assert_error(400, "invalid_request_error", Some("top_k"), Some("too_many_hits"), "21");
}

#[test]
fn search_refuses_over_long_candidates_when_truncation_is_off() {
    let strict = ServerConfig { truncate: false, ..ServerConfig::default() };
    let server = serve_search("strict", strict, tiny(Some(16)));
    let body = json!({"index": "docs", "query": "cold water", "top_k": 6, "rerank": {"depth": 6}});
    let reply = server.post_json("/v1/search", &body);
    reply.assert_error(
        400,
        "invalid_request_error",
        Some("rerank"),
        Some("input_too_long"),
        "strict",
    );
    assert!(reply.text().contains("`d4`") || reply.text().contains("`d5`"), "{}", reply.text());
}

#[test]
fn openapi_describes_the_rerank_routes_as_they_behave() {
    let server = serve_tiny(ServerConfig::default(), None);
    let doc = server.get("/openapi.json").json();
    let schemas = &doc["components"]["schemas"];
    let v1 = &doc["paths"]["/v1/rerank"]["post"];
    let tei = &doc["paths"]["/rerank"]["post"];
    for (route, statuses) in [
        (v1, ["200", "400", "401", "404", "413", "429", "503"].as_slice()),
        (tei, &["200", "400", "404", "422"]),
    ] {
        for status in statuses {
            assert!(route["responses"].get(status).is_some(), "{status} missing: {route}");
        }
    }
    assert_eq!(
        v1["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/RerankRequest"
    );
    let request = &schemas["RerankRequest"];
    assert_eq!(request["required"], json!(["query", "documents"]));
    for field in ["model", "query", "documents", "top_n", "return_documents", "truncate"] {
        assert!(request["properties"].get(field).is_some(), "RerankRequest.{field}");
    }
    assert_eq!(schemas["RerankDocument"]["oneOf"].as_array().map(Vec::len), Some(2));
    assert_eq!(schemas["RerankResponse"]["required"], json!(["model", "results", "usage"]));
    assert_eq!(schemas["RerankResult"]["required"], json!(["index", "relevance_score"]));
    assert_eq!(schemas["TeiRerankRequest"]["required"], json!(["query", "texts"]));
    let answer = &tei["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(
        (&answer["type"], &answer["items"]["$ref"]),
        (&json!("array"), &json!("#/components/schemas/Rank"))
    );
    assert!(schemas["SearchRequest"]["properties"].get("rerank").is_some());
    for field in ["retrieval_score", "retrieval_rank"] {
        assert!(schemas["SearchHit"]["properties"].get(field).is_some(), "SearchHit.{field}");
    }
    assert_eq!(schemas["ModelKind"]["enum"], json!(["embedding", "reranker"]));
    assert!(schemas["ModelObject"]["required"].as_array().unwrap().contains(&json!("kind")));
}
