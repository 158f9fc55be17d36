//! What keeps the server usable under abuse and overload: per-request token budgets, a
//! bounded queue with a wait limit, chunked scheduling so a large request cannot starve
//! small ones, header and body timeouts, a drain deadline, request ids, readiness and the
//! admin key.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use sembase_server::{BodyTimeouts, ServerConfig};
use serde_json::json;

/// A server of a fake model under `config`, its worker held inside a model call by a
/// first request (answered once the model's gate opens).
fn held(config: ServerConfig) -> (Arc<FakeModel>, TestServer, JoinHandle<Reply>) {
    let model = FakeModel::new("fake", 8, 64);
    let server = TestServer::fake(config, &model);
    let first = hold_worker(&server, &model);
    (model, server, first)
}

fn queued(server: &TestServer, jobs: f64) {
    server.wait_for(&format!("{jobs} queued"), || {
        server.metric("sembase_queue_depth{model=\"fake\"}") == Some(jobs)
    });
}

#[test]
fn a_large_request_is_run_in_chunks_and_a_small_one_is_answered_between_them() {
    // "a b" is 4 tokens: two inputs per batch of 10 tokens.
    let config = ServerConfig { max_batch_tokens: 10, ..ServerConfig::default() };
    let (model, server, first) = held(config);
    let texts: Vec<String> = (0..30).map(|i| format!("w{i} b")).collect();
    let large = spawn_post(server.addr, "/v1/embeddings", json!({ "input": texts }));
    queued(&server, 1.0);
    let small = spawn_post(server.addr, "/v1/embeddings", json!({"input": "x y"}));
    queued(&server, 2.0);
    model.call_ms.store(50, Ordering::SeqCst);
    model.open();
    let small = small.join().unwrap();
    let calls_when_small_done = model.calls.load(Ordering::SeqCst);
    assert!(!large.is_finished(), "the small request waited for the whole large one");
    assert_close(&vectors(&small)[0], &model.expected("x y", None), "small");
    assert!(
        calls_when_small_done <= 4,
        "the small request waited for {calls_when_small_done} calls: it should run right after the large one's first chunk"
    );
    let large = large.join().unwrap();
    let got = vectors(&large);
    assert_eq!(got.len(), 30);
    for (i, text) in texts.iter().enumerate() {
        assert_close(&got[i], &model.expected(text, None), text);
    }
    assert!(model.calls.load(Ordering::SeqCst) >= 16, "30 inputs of 4 tokens in batches of 10");
    assert_eq!(server.metric("sembase_queue_depth{model=\"fake\"}"), Some(0.0));
    assert_eq!(server.metric("sembase_queue_tokens{model=\"fake\"}"), Some(0.0));
    first.join().unwrap();
}

#[test]
fn a_request_over_the_token_budget_gets_413() {
    let model = FakeModel::new("fake", 8, 64);
    let server = TestServer::fake(
        ServerConfig { max_request_tokens: 10, ..ServerConfig::default() },
        &model,
    );
    let reply = server.post_json("/v1/embeddings", &json!({"input": ["a b", "c d", "e f"]}));
    reply.assert_error(
        413,
        "invalid_request_error",
        Some("input"),
        Some("request_too_many_tokens"),
        "12 tokens over 10",
    );
    assert_eq!(model.calls.load(Ordering::SeqCst), 0);
    assert_eq!(server.post_json("/v1/embeddings", &json!({"input": ["a b", "c d"]})).status, 200);
}

#[test]
fn a_full_queue_and_a_long_wait_get_503_with_retry_after() {
    let config = ServerConfig {
        max_queue_tokens: 5,
        queue_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let (model, server, first) = held(config);
    let waiting = spawn_post(server.addr, "/v1/embeddings", json!({"input": "a b"}));
    queued(&server, 1.0);
    let full = server.post_json("/v1/embeddings", &json!({"input": "c d"}));
    full.assert_error(503, "server_error", None, Some("queue_full"), "queue full");
    assert_eq!(full.header("retry-after"), Some("1"));
    std::thread::sleep(Duration::from_millis(400));
    model.open();
    assert_eq!(first.join().unwrap().status, 200);
    let late = waiting.join().unwrap();
    late.assert_error(503, "server_error", None, Some("queue_timeout"), "waited too long");
    assert_eq!(late.header("retry-after"), Some("1"));
    assert_eq!(server.metric("sembase_queue_timeouts_total{model=\"fake\"}"), Some(1.0));
    assert_eq!(server.metric("sembase_queue_full_total{model=\"fake\"}"), Some(1.0));
    assert_eq!(model.calls.load(Ordering::SeqCst), 1, "the timed-out request never ran");
}

/// Opens a connection and sends `raw`, leaving it open.
fn open_with(server: &TestServer, raw: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(raw).unwrap();
    stream
}

/// Reads until the server closes the connection; how long that took and what it sent.
fn wait_closed(mut stream: TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (started.elapsed(), answer)
}

#[test]
fn a_connection_that_sends_its_headers_too_slowly_is_closed() {
    let model = FakeModel::new("fake", 8, 64);
    let config =
        ServerConfig { header_timeout: Duration::from_millis(500), ..ServerConfig::default() };
    let server = TestServer::fake(config, &model);
    let slow = open_with(&server, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n");
    let (took, _) = wait_closed(slow, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "a header-less connection lived {took:?}");
    assert_eq!(server.post_json("/v1/embeddings", &json!({"input": "x"})).status, 200);
}

#[test]
fn a_slow_body_is_cut_with_408_and_holds_no_compute_slot() {
    let model = FakeModel::new("fake", 8, 64);
    let config = ServerConfig {
        max_concurrent_requests: 1,
        body: BodyTimeouts {
            total: Duration::from_secs(2),
            min_rate: 1000,
            grace: Duration::from_millis(500),
        },
        ..ServerConfig::default()
    };
    let server = TestServer::fake(config, &model);
    let head = "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inp";
    let slow = open_with(&server, head.as_bytes());
    // The slow body holds no slot: with a limit of one request, others still get through.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(server.post_json("/v1/embeddings", &json!({"input": "x"})).status, 200);
    let (took, answer) = wait_closed(slow, Duration::from_secs(10));
    assert!(took < Duration::from_secs(4), "the slow body lived {took:?}");
    let reply = parse_reply(&answer);
    reply.assert_error(408, "invalid_request_error", None, Some("body_timeout"), "slow body");
}

#[test]
fn shutdown_waits_for_requests_in_flight_only_until_the_drain_deadline() {
    let config =
        ServerConfig { drain_timeout: Duration::from_millis(500), ..ServerConfig::default() };
    let (model, server, first) = held(config);
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for a request stuck in the model",
        started.elapsed()
    );
    model.open();
    let _ = first.join();
}

#[test]
fn every_answer_carries_a_request_id_and_keeps_the_clients() {
    let model = FakeModel::new("fake", 8, 64);
    let server = TestServer::fake(ServerConfig::default(), &model);
    let mine = request(
        server.addr,
        "POST",
        "/v1/embeddings",
        &[("Content-Type", "application/json"), ("X-Request-Id", "client-42")],
        br#"{"input": "x"}"#,
    );
    assert_eq!(mine.header("x-request-id"), Some("client-42"));
    let a = server.get("/v1/models");
    let b = server.post_json("/v1/embeddings", &json!({"input": ""}));
    let (a, b) = (a.header("x-request-id").unwrap(), b.header("x-request-id").unwrap());
    assert_eq!(a.len(), 24);
    assert_ne!(a, b);
}

#[test]
fn ready_answers_with_the_models_and_indexes() {
    let model = FakeModel::new("fake", 8, 64);
    let server = TestServer::fake(ServerConfig::default(), &model);
    let ready = server.get("/ready");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["models"], json!(["fake"]));
    assert_eq!(ready.json()["indexes"], json!([]));
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn ready_fails_while_a_worker_is_stuck_on_one_batch_past_the_request_timeout() {
    let config =
        ServerConfig { request_timeout: Duration::from_secs(1), ..ServerConfig::default() };
    // The worker is alive but does not come back from the model.
    let (model, server, first) = held(config);
    assert_eq!(server.get("/ready").status, 200, "a batch within the timeout is progress");
    first.join().unwrap().assert_error(
        503,
        "server_error",
        None,
        Some("request_timeout"),
        "the held request",
    );
    server.wait_for("/ready to fail", || server.get("/ready").status == 503);
    let ready = server.get("/ready");
    ready.assert_error(503, "server_error", None, Some("worker_stuck"), "stuck worker");
    let message = ready.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.starts_with("model `fake`: worker busy on one batch for "), "{message}");
    assert_eq!(server.get("/health").status, 200, "liveness: the worker still runs");
    model.open();
    server.wait_for("the worker back", || server.get("/ready").status == 200);
}

#[test]
fn index_writes_need_the_admin_key_when_one_is_set() {
    let model = FakeModel::new("fake", 8, 64);
    let config = ServerConfig {
        api_key: Some("reader".into()),
        admin_key: Some("writer".into()),
        ..ServerConfig::default()
    };
    let server = TestServer::fake(config, &model);
    let write = |key: &str| {
        request(
            server.addr,
            "POST",
            "/v1/indexes/docs/documents",
            &[("Content-Type", "application/json"), ("Authorization", &format!("Bearer {key}"))],
            br#"{"documents": [{"id": "1", "text": "x"}]}"#,
        )
    };
    assert_eq!(write("reader").status, 401, "the API key must not change an index");
    // Past the key check: this server has no index of that name.
    assert_eq!(write("writer").status, 404);
    let search = request(
        server.addr,
        "POST",
        "/v1/embeddings",
        &[("Content-Type", "application/json"), ("Authorization", "Bearer reader")],
        br#"{"input": "x"}"#,
    );
    assert_eq!(search.status, 200, "the API key still opens the other routes");
}
