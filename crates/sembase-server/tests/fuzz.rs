//! Fuzzing request bodies (see sembase-fuzz): each input's first line is a path and
//! the rest a body, sent as a POST through the router over the fake embedding model,
//! the tiny BERT cross-encoder and an empty index. Whatever the bytes, the answer is
//! never a 5xx and nothing panics; the request types of `api` are also parsed from
//! the body directly.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use common::{empty_index, FakeModel};
use sembase_core::{CrossEncoder, LoadOptions};
use sembase_server::api::{parse_json, EmbeddingsRequest, SchemaStatus, TokenizeRequest};
use sembase_server::{Attachments, ModelSpec, Server, ServerConfig};
use tower::ServiceExt;

#[global_allocator]
static ALLOC: sembase_fuzz::BoundedAlloc = sembase_fuzz::BoundedAlloc;

#[test]
fn http_request_bodies() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_corpus/http");
    let dir = sembase_fuzz::scratch_dir();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sembase-core/tests/fixtures/tiny-bert-cross-encoder");
    let reranker = CrossEncoder::load(&fixture, "tiny", LoadOptions::default()).unwrap();
    let attachments = Attachments {
        indexes: vec![empty_index(dir.path())],
        rerankers: vec![Arc::new(reranker)],
        ..Attachments::default()
    };
    let server = Server::new(ServerConfig::default()).unwrap();
    server
        .set_models_with(vec![ModelSpec::new(FakeModel::new("fake", 8, 64))], attachments)
        .unwrap();
    let app = server.router();
    // One thread: the handlers run on the fuzzing thread, where allocations are bounded.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tokens: &[&[u8]] = &[
        b"\"input\"",
        b"\"documents\"",
        b"\"texts\"",
        b"\"query\"",
        b"[",
        b"]",
        b"{",
        b"}",
        b"\"",
        b"null",
        b"-1",
        b"1e400",
    ];
    sembase_fuzz::Target::new("http", corpus).tokens(tokens).run(|input| {
        let split = input.iter().position(|&b| b == b'\n').unwrap_or(input.len());
        let body = input.get(split + 1..).unwrap_or_default();
        let _ = parse_json::<EmbeddingsRequest>(body, SchemaStatus::BadRequest);
        let _ = parse_json::<TokenizeRequest>(body, SchemaStatus::Unprocessable);
        let Ok(path) = std::str::from_utf8(&input[..split]) else { return };
        let Ok(request) = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
        else {
            return;
        };
        let response = runtime.block_on(app.clone().oneshot(request)).unwrap();
        assert!(
            !response.status().is_server_error(),
            "{path} answered {} to {:?}",
            response.status(),
            String::from_utf8_lossy(body)
        );
    });
}
