//! The HTTP contract over a fake model: OpenAI's /v1/embeddings shapes, routing by
//! model, limits, auth, the side routes, and the metrics text.

mod common;

use std::collections::HashMap;

use base64::Engine as _;
use common::*;
use sembase_server::{Attachments, ModelSpec, ServerConfig};
use serde_json::json;

fn config() -> ServerConfig {
    ServerConfig::default()
}

#[test]
fn a_string_input_answers_openai_s_shape() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(config(), &model);
    let reply =
        server.post_json("/v1/embeddings", &json!({"input": "hello world", "model": "fake"}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "fake");
    assert_eq!(body["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["object"], "embedding");
    assert_eq!(data[0]["index"], 0);
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["data", "model", "object", "usage"]);
    assert_close(&vectors(&reply)[0], &model.expected("hello world", None), "vector");
}

#[test]
fn arrays_of_strings_and_token_ids_keep_input_order() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(config(), &model);
    let texts = ["a b c", "one", "the quick brown fox", "x y"];
    let reply = server.post_json("/v1/embeddings", &json!({"input": texts, "model": "fake"}));
    let got = vectors(&reply);
    for (i, text) in texts.iter().enumerate() {
        assert_close(&got[i], &model.expected(text, None), text);
    }
    let tokens: usize = texts.iter().map(|t| FakeModel::ids(t).len()).sum();
    assert_eq!(reply.json()["usage"]["prompt_tokens"], tokens);

    // The same texts as token ids: one array is one input; an array of arrays is several.
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| FakeModel::ids(t)).collect();
    let reply = server.post_json("/v1/embeddings", &json!({"input": ids[2], "model": "fake"}));
    assert_close(&vectors(&reply)[0], &model.expected(texts[2], None), "one token array");
    let reply = server.post_json("/v1/embeddings", &json!({"input": ids, "model": "fake"}));
    let got = vectors(&reply);
    assert_eq!(got.len(), 4);
    for (i, text) in texts.iter().enumerate() {
        assert_close(&got[i], &model.expected(text, None), text);
    }
}

#[test]
fn base64_is_little_endian_f32_of_the_float_answer() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(config(), &model);
    for dimensions in [None, Some(3)] {
        let mut request =
            json!({"input": ["hello there", "bye"], "model": "fake", "encoding_format": "base64"});
        if let Some(d) = dimensions {
            request["dimensions"] = json!(d);
        }
        let reply = server.post_json("/v1/embeddings", &request);
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        for (i, text) in ["hello there", "bye"].iter().enumerate() {
            let encoded = body["data"][i]["embedding"].as_str().expect("a base64 string");
            let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
            let decoded: Vec<f32> =
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            let expected = model.expected(text, dimensions);
            assert_eq!(decoded.len(), dimensions.unwrap_or(8));
            assert_close(&decoded, &expected, "base64");
        }
    }
}

#[test]
fn dimensions_truncate_and_renormalise_and_take_integral_floats() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(config(), &model);
    for d in [1, 5, 8] {
        let reply = server
            .post_json("/v1/embeddings", &json!({"input": "some words here", "dimensions": d}));
        let v = &vectors(&reply)[0];
        assert_eq!(v.len(), d);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_close(v, &model.expected("some words here", Some(d)), "dims");
    }
    // JavaScript clients send 4.0 for 4.
    let reply =
        server.post_json("/v1/embeddings", &json!({"input": "some words", "dimensions": 4.0}));
    assert_close(&vectors(&reply)[0], &model.expected("some words", Some(4)), "4.0");
    let refused = [json!(0), json!(9), json!(100000), json!(4.5), json!(-4.0), json!(1e300)];
    for d in refused {
        let reply = server.post_json("/v1/embeddings", &json!({"input": "x", "dimensions": d}));
        reply.assert_error(
            400,
            "invalid_request_error",
            Some("dimensions"),
            None,
            &format!("dimensions {d}"),
        );
    }
    // null is the same as leaving it out
    let reply = server.post_json(
        "/v1/embeddings",
        &json!({"input": "x", "dimensions": null, "encoding_format": null, "user": "u-1"}),
    );
    assert_eq!(vectors(&reply)[0].len(), 8);
}

#[test]
fn search_errors_name_the_field_that_holds_the_bad_text() {
    let model = FakeModel::new("fake", 8, 6);
    let dir = std::env::temp_dir().join(format!("sembase-contract-search-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let attachments = Attachments { indexes: vec![empty_index(&dir)], ..Attachments::default() };
    let config = ServerConfig { truncate: false, ..config() };
    let server = TestServer::start_with(config, vec![ModelSpec::new(model)], attachments);
    let long = "w1 w2 w3 w4 w5 w6 w7";
    let cases = [
        (
            "/v1/search",
            json!({"index": "docs", "query": ""}),
            "query",
            "query[0] is an empty string",
        ),
        (
            "/v1/search",
            json!({"index": "docs", "queries": ["a", ""]}),
            "queries",
            "queries[1] is an empty string",
        ),
        ("/v1/search", json!({"index": "docs", "query": long}), "query", "query[0] has 9 tokens"),
        (
            "/v1/search",
            json!({"index": "docs", "queries": ["a", long]}),
            "queries",
            "queries[1] has 9 tokens",
        ),
        (
            "/v1/indexes/docs/documents",
            json!({"documents": [{"id": "1", "text": "a"}, {"id": "2", "text": ""}]}),
            "documents",
            "documents[1] is an empty string",
        ),
        (
            "/v1/indexes/docs/documents",
            json!({"documents": [{"id": "1", "text": long}]}),
            "documents",
            "documents[0] has 9 tokens",
        ),
    ];
    for (path, body, field, message) in cases {
        let reply = server.post_json(path, &body);
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
        let error = &reply.json()["error"];
        assert_eq!(error["param"], field, "{body}");
        assert!(error["message"].as_str().unwrap().starts_with(message), "{body}: {error}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn requests_are_routed_by_model_and_the_first_is_the_default() {
    let small = FakeModel::new("small", 4, 16);
    let large = FakeModel::new("large", 12, 16);
    let server = TestServer::start(
        config(),
        vec![ModelSpec::new(small.clone()), ModelSpec::new(large.clone())],
    );
    let reply = server.post_json("/v1/embeddings", &json!({"input": "hi", "model": "large"}));
    assert_eq!(reply.json()["model"], "large");
    assert_close(&vectors(&reply)[0], &large.expected("hi", None), "large");
    let reply = server.post_json("/v1/embeddings", &json!({"input": "hi"}));
    assert_eq!(reply.json()["model"], "small");
    assert_close(&vectors(&reply)[0], &small.expected("hi", None), "default");
    let reply = server
        .post_json("/v1/embeddings", &json!({"input": "hi", "model": "text-embedding-3-small"}));
    reply.assert_error(
        404,
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
        "unknown model",
    );

    let listing = server.get("/v1/models").json();
    assert_eq!(listing["object"], "list");
    let ids: Vec<&str> =
        listing["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["small", "large"]);
    assert_eq!(listing["data"][1]["object"], "model");
    assert_eq!(listing["data"][1]["owned_by"], "sembase");
    assert_eq!(listing["data"][1]["dimension"], 12);
    let one = server.get("/v1/models/large");
    assert_eq!(one.json()["id"], "large");
    server.get("/v1/models/nope").assert_error(
        404,
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
        "retrieve",
    );
    let health = server.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["models"], json!(["small", "large"]));
}

#[test]
fn prompts_are_put_before_texts_and_unknown_ones_are_refused() {
    let model = FakeModel::new("e5", 8, 32);
    let spec = ModelSpec {
        embedder: model.clone(),
        prompts: HashMap::from([
            ("query".to_string(), "query: ".to_string()),
            ("passage".to_string(), "passage: ".to_string()),
        ]),
        default_prompt: Some("passage: ".to_string()),
    };
    let server = TestServer::start(config(), vec![spec]);
    let reply =
        server.post_json("/v1/embeddings", &json!({"input": "how tall", "prompt_name": "query"}));
    assert_close(&vectors(&reply)[0], &model.expected("query: how tall", None), "named prompt");
    let reply = server.post_json("/v1/embeddings", &json!({"input": "how tall"}));
    assert_close(&vectors(&reply)[0], &model.expected("passage: how tall", None), "default prompt");
    let reply = server.post_json("/v1/embeddings", &json!({"input": "x", "prompt_name": "title"}));
    reply.assert_error(400, "invalid_request_error", Some("prompt_name"), None, "unknown prompt");
    let tokens =
        server.post_json("/tokenize", &json!({"inputs": "how tall", "prompt_name": "query"}));
    assert_eq!(tokens.json(), json!([FakeModel::ids("query: how tall")]));
}

#[test]
fn long_inputs_are_truncated_by_default() {
    let model = FakeModel::new("fake", 8, 6);
    let server = TestServer::fake(config(), &model);
    let long = "w1 w2 w3 w4 w5 w6 w7 w8 w9";
    let reply = server.post_json("/v1/embeddings", &json!({"input": ["short one", long]}));
    let got = vectors(&reply);
    assert_close(&got[0], &model.expected("short one", None), "short");
    // truncated as the model's `embed` does: keeping the closing special token
    assert_close(&got[1], &model.expected(long, None), "long text");
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 4 + 6);
    let ids = FakeModel::ids(long);
    let reply = server.post_json("/v1/embeddings", &json!({"input": [ids.clone()]}));
    assert_close(&vectors(&reply)[0], &model.vector_of(&ids[..6]), "long token ids are cut");
}

#[test]
fn no_truncate_refuses_over_long_inputs_naming_the_index() {
    let model = FakeModel::new("fake", 8, 6);
    let server = TestServer::fake(ServerConfig { truncate: false, ..config() }, &model);
    let long = "w1 w2 w3 w4 w5 w6 w7 w8 w9";
    let reply = server.post_json("/v1/embeddings", &json!({"input": ["ok", "fine", long]}));
    reply.assert_error(
        400,
        "invalid_request_error",
        Some("input"),
        Some("input_too_long"),
        "long text",
    );
    assert!(
        reply.json()["error"]["message"].as_str().unwrap().starts_with("input[2] has 11 tokens"),
        "{}",
        reply.text()
    );
    let reply =
        server.post_json("/v1/embeddings", &json!({"input": [[1, 2], [1, 2, 3, 4, 5, 6, 7]]}));
    reply.assert_error(
        400,
        "invalid_request_error",
        Some("input"),
        Some("input_too_long"),
        "long ids",
    );
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("input[1] has 7 tokens"));
    let reply = server.post_json("/v1/embeddings", &json!({"input": ["w1 w2 w3 w4"]}));
    assert_eq!(reply.status, 200, "at the limit is fine");
}

#[test]
fn token_ids_outside_the_vocabulary_fail_only_their_request() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(config(), &model);
    let reply = server.post_json("/v1/embeddings", &json!({"input": [[1, 2], [3, 99999]]}));
    reply.assert_error(400, "invalid_request_error", Some("input"), None, "bad id");
    assert!(
        reply.json()["error"]["message"].as_str().unwrap().contains("input[1] has token id 99999"),
        "{}",
        reply.text()
    );
    assert_eq!(server.post_json("/v1/embeddings", &json!({"input": [5, 6]})).status, 200);
}

#[test]
fn api_key_guards_v1_and_tokenize_but_not_health_or_metrics() {
    let model = FakeModel::new("fake", 8, 16);
    let server =
        TestServer::fake(ServerConfig { api_key: Some("s3cret".into()), ..config() }, &model);
    let body = json!({"input": "hi"}).to_string();
    let post = |headers: &[(&str, &str)], path: &str| {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        request(server.addr, "POST", path, &all, body.as_bytes())
    };
    post(&[], "/v1/embeddings").assert_error(
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
        "missing",
    );
    post(&[("Authorization", "Bearer nope")], "/v1/embeddings").assert_error(
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
        "wrong",
    );
    post(&[("Authorization", "Basic s3cret")], "/v1/embeddings").assert_error(
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
        "scheme",
    );
    assert_eq!(post(&[("Authorization", "Bearer s3cret")], "/v1/embeddings").status, 200);
    post(&[], "/tokenize").assert_error(
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
        "tokenize",
    );
    server.get("/v1/models").assert_error(
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
        "models",
    );
    let reply =
        request(server.addr, "GET", "/v1/models", &[("Authorization", "Bearer s3cret")], b"");
    assert_eq!(reply.status, 200);
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.get("/metrics").status, 200);
    assert_eq!(server.get("/openapi.json").status, 200);
}

#[test]
fn tokenize_answers_ids_per_input() {
    let model = FakeModel::new("fake", 8, 4);
    let server = TestServer::fake(config(), &model);
    let reply = server.post_json("/tokenize", &json!({"inputs": "a b c d e f"}));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!([FakeModel::ids("a b c d e f")]), "not truncated");
    let reply = server.post_json("/tokenize", &json!({"inputs": ["a", "b c"]}));
    assert_eq!(reply.json(), json!([FakeModel::ids("a"), FakeModel::ids("b c")]));
    server.post_json("/tokenize", &json!({"inputs": []})).assert_error(
        422,
        "invalid_request_error",
        Some("inputs"),
        None,
        "empty",
    );
    server.post_json("/tokenize", &json!({"inputs": 5})).assert_error(
        422,
        "invalid_request_error",
        Some("inputs"),
        None,
        "type",
    );
    server.post_json("/tokenize", &json!({"inputs": "a", "model": "x"})).assert_error(
        404,
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
        "model",
    );
}

#[test]
fn openapi_describes_every_route_from_the_handler_types() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(config(), &model);
    let doc = server.get("/openapi.json").json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/v1/embeddings", "post"),
        ("/v1/models", "get"),
        ("/v1/models/{model}", "get"),
        ("/tokenize", "post"),
        ("/health", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing");
    }
    let schemas = &doc["components"]["schemas"];
    let request = &schemas["EmbeddingsRequest"];
    assert_eq!(request["required"], json!(["input"]));
    for field in ["input", "model", "encoding_format", "dimensions", "user"] {
        assert!(request["properties"][field].is_object(), "{field}");
    }
    assert_eq!(schemas["EmbeddingInput"]["oneOf"].as_array().unwrap().len(), 4);
    assert_eq!(schemas["EncodingFormat"]["enum"], json!(["float", "base64"]));
    assert!(schemas["ErrorBody"]["properties"]["type"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// Checks the Prometheus text format line by line: HELP/TYPE comments, then samples
/// `name{label="value",...} number` of a declared family.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = if value == "+Inf" {
            f64::INFINITY
        } else {
            value.parse().unwrap_or_else(|_| panic!("value in {line}"))
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "name in {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "labels in {line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) =
                        pair.split_once("=\"").unwrap_or_else(|| panic!("label in {line}"));
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    assert!(!v.trim_end_matches('"').contains('"') || v.contains("\\\""), "{line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample of an undeclared family: {line}");
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn metrics_text_parses_and_counts_what_happened() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(config(), &model);
    for _ in 0..3 {
        assert_eq!(server.post_json("/v1/embeddings", &json!({"input": ["a b", "c"]})).status, 200);
    }
    assert_eq!(server.post_json("/v1/embeddings", &json!({"input": ""})).status, 400);
    assert_eq!(server.get("/nope").status, 404);
    let reply = server.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let samples = parse_prometheus(&reply.text());
    assert_eq!(
        samples["sembase_http_requests_total{route=\"/v1/embeddings\",status=\"200\"}"],
        3.0
    );
    assert_eq!(
        samples["sembase_http_requests_total{route=\"/v1/embeddings\",status=\"400\"}"],
        1.0
    );
    assert_eq!(samples["sembase_http_requests_total{route=\"unmatched\",status=\"404\"}"], 1.0);
    assert_eq!(
        samples["sembase_http_request_duration_seconds_count{route=\"/v1/embeddings\"}"],
        4.0
    );
    assert_eq!(
        samples
            ["sembase_http_request_duration_seconds_bucket{route=\"/v1/embeddings\",le=\"+Inf\"}"],
        4.0
    );
    assert_eq!(samples["sembase_embedded_tokens_total{model=\"fake\"}"], 3.0 * (4.0 + 3.0));
    assert_eq!(samples["sembase_embedded_inputs_total{model=\"fake\"}"], 6.0);
    assert_eq!(samples["sembase_batch_sequences_sum{model=\"fake\"}"], 6.0);
    assert_eq!(samples["sembase_batch_tokens_sum{model=\"fake\"}"], 21.0);
    assert_eq!(samples["sembase_queue_depth{model=\"fake\"}"], 0.0);
    assert!(samples.contains_key("sembase_queue_wait_seconds_count{model=\"fake\"}"));
    assert!(samples.contains_key("sembase_requests_in_flight"));
}
