//! The batching queue, the concurrency limit, disconnects, readiness and shutdown.
//! The fake model can be held at a gate, so queues build up deterministically.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use sembase_server::{ModelSpec, ServerConfig};
use serde_json::json;

fn post_in_thread(
    addr: std::net::SocketAddr,
    body: serde_json::Value,
) -> std::thread::JoinHandle<Reply> {
    spawn_post(addr, "/v1/embeddings", body)
}

#[test]
fn concurrent_requests_are_merged_into_one_forward_call() {
    let model = FakeModel::new("fake", 8, 64);
    let server = TestServer::fake(ServerConfig::default(), &model);
    let first = hold_worker(&server, &model);
    let texts: Vec<String> = (0..20).map(|i| format!("request number {i} with words")).collect();
    let waiting: Vec<_> = texts
        .iter()
        .map(|t| post_in_thread(server.addr, json!({"input": [t, "five words in this text"]})))
        .collect();
    server.wait_for("20 queued requests", || {
        server.metric("sembase_queue_depth{model=\"fake\"}") == Some(20.0)
    });
    model.open();
    assert_eq!(vectors(&first.join().unwrap()).len(), 1);
    for (text, handle) in texts.iter().zip(waiting) {
        let got = vectors(&handle.join().unwrap());
        // each request gets its own vectors back, in its own order
        assert_close(&got[0], &model.expected(text, None), text);
        assert_close(&got[1], &model.expected("five words in this text", None), "shared");
    }
    // all 40 queued inputs have 7 tokens: one merged batch, one call
    assert_eq!(
        model.calls.load(Ordering::SeqCst),
        2,
        "the 20 queued requests should share one call"
    );
    assert_eq!(model.inputs.load(Ordering::SeqCst), 41);
    assert_eq!(server.metric("sembase_batch_requests_count{model=\"fake\"}"), Some(2.0));
    assert_eq!(server.metric("sembase_batch_requests_sum{model=\"fake\"}"), Some(21.0));
    assert_eq!(server.metric("sembase_batch_sequences_sum{model=\"fake\"}"), Some(41.0));
    assert_eq!(server.metric("sembase_queue_depth{model=\"fake\"}"), Some(0.0));
}

#[test]
fn merged_batches_stay_within_the_token_budget_and_share_options() {
    let model = FakeModel::new("fake", 8, 64);
    // "a b" is 4 tokens: two requests fit a budget of 10, three do not
    let server =
        TestServer::fake(ServerConfig { max_batch_tokens: 10, ..ServerConfig::default() }, &model);
    let first = hold_worker(&server, &model);
    let plain: Vec<_> =
        (0..6).map(|_| post_in_thread(server.addr, json!({"input": "a b"}))).collect();
    server
        .wait_for("6 queued", || server.metric("sembase_queue_depth{model=\"fake\"}") == Some(6.0));
    let cut: Vec<_> = (0..2)
        .map(|_| post_in_thread(server.addr, json!({"input": "a b", "dimensions": 3})))
        .collect();
    server
        .wait_for("8 queued", || server.metric("sembase_queue_depth{model=\"fake\"}") == Some(8.0));
    model.open();
    first.join().unwrap();
    for h in plain {
        assert_close(&vectors(&h.join().unwrap())[0], &model.expected("a b", None), "plain");
    }
    for h in cut {
        assert_close(
            &vectors(&h.join().unwrap())[0],
            &model.expected("a b", Some(3)),
            "dimensions 3",
        );
    }
    // 1 (held) + 3 (six plain in pairs) + 1 (two with dimensions 3)
    assert_eq!(model.calls.load(Ordering::SeqCst), 5);
    assert_eq!(server.metric("sembase_batch_tokens_sum{model=\"fake\"}"), Some(4.0 + 8.0 * 4.0));
}

#[test]
fn a_bad_request_in_a_merged_batch_fails_alone() {
    let model = FakeModel::new("fake", 8, 64);
    let server = TestServer::fake(ServerConfig::default(), &model);
    let first = hold_worker(&server, &model);
    let good1 = post_in_thread(server.addr, json!({"input": [[1, 2, 3]]}));
    server
        .wait_for("1 queued", || server.metric("sembase_queue_depth{model=\"fake\"}") == Some(1.0));
    let bad = post_in_thread(server.addr, json!({"input": [[1, 2], [3, 7777777]]}));
    server
        .wait_for("2 queued", || server.metric("sembase_queue_depth{model=\"fake\"}") == Some(2.0));
    let good2 = post_in_thread(server.addr, json!({"input": "fine text"}));
    server
        .wait_for("3 queued", || server.metric("sembase_queue_depth{model=\"fake\"}") == Some(3.0));
    model.open();
    first.join().unwrap();
    assert_close(&vectors(&good1.join().unwrap())[0], &model.vector_of(&[1, 2, 3]), "good1");
    assert_close(&vectors(&good2.join().unwrap())[0], &model.expected("fine text", None), "good2");
    let bad = bad.join().unwrap();
    bad.assert_error(400, "invalid_request_error", Some("input"), None, "bad id");
    assert!(bad.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("input[1] has token id 7777777"));
}

#[test]
fn over_the_concurrency_limit_requests_get_429_with_retry_after() {
    let model = FakeModel::new("fake", 8, 64);
    let server = TestServer::fake(
        ServerConfig { max_concurrent_requests: 2, ..ServerConfig::default() },
        &model,
    );
    let first = hold_worker(&server, &model);
    let second = post_in_thread(server.addr, json!({"input": "second"}));
    server.wait_for("2 in flight", || server.metric("sembase_requests_in_flight") == Some(2.0));
    let refused = server.post_json("/v1/embeddings", &json!({"input": "third"}));
    refused.assert_error(429, "rate_limit_error", None, Some("rate_limit_exceeded"), "third");
    assert_eq!(refused.header("retry-after"), Some("1"));
    server.post_json("/tokenize", &json!({"inputs": "x"})).assert_error(
        429,
        "rate_limit_error",
        None,
        Some("rate_limit_exceeded"),
        "tokenize",
    );
    // the cheap routes are not limited
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.get("/v1/models").status, 200);
    model.open();
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(second.join().unwrap().status, 200);
    server.wait_for("slots released", || server.metric("sembase_requests_in_flight") == Some(0.0));
    assert_eq!(server.post_json("/v1/embeddings", &json!({"input": "fourth"})).status, 200);
    assert_eq!(
        server.metric("sembase_http_requests_total{route=\"/v1/embeddings\",status=\"429\"}"),
        Some(1.0)
    );
}

#[test]
fn a_client_that_disconnects_has_its_queued_work_dropped() {
    let model = FakeModel::new("fake", 8, 64);
    let server = TestServer::fake(ServerConfig::default(), &model);
    let first = hold_worker(&server, &model);
    let body = json!({"input": "never computed"}).to_string();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    server
        .wait_for("1 queued", || server.metric("sembase_queue_depth{model=\"fake\"}") == Some(1.0));
    drop(stream);
    server.wait_for("the handler to notice", || {
        server.metric("sembase_http_requests_total{route=\"/v1/embeddings\",status=\"499\"}")
            == Some(1.0)
    });
    model.open();
    assert_eq!(first.join().unwrap().status, 200);
    server.wait_for("the job to be dropped", || {
        server.metric("sembase_dropped_requests_total{model=\"fake\"}") == Some(1.0)
    });
    assert_eq!(
        model.calls.load(Ordering::SeqCst),
        1,
        "the abandoned request must not reach the model"
    );
    assert_eq!(server.metric("sembase_queue_depth{model=\"fake\"}"), Some(0.0));
    assert_eq!(server.post_json("/v1/embeddings", &json!({"input": "later"})).status, 200);
}

#[test]
fn health_is_503_until_every_model_is_loaded() {
    let server = TestServer::start(ServerConfig::default(), Vec::new());
    server.get("/health").assert_error(503, "server_error", None, Some("model_loading"), "health");
    let early = server.post_json("/v1/embeddings", &json!({"input": "x"}));
    early.assert_error(503, "server_error", None, Some("model_loading"), "embeddings");
    assert_eq!(early.header("retry-after"), Some("1"));
    assert_eq!(server.get("/metrics").status, 200);
    let model = FakeModel::new("fake", 8, 64);
    server.server.set_models(vec![ModelSpec::new(model)]).unwrap();
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.post_json("/v1/embeddings", &json!({"input": "x"})).status, 200);
}

#[test]
fn shutdown_stops_accepting_and_finishes_work_in_flight() {
    let model = FakeModel::new("fake", 8, 64);
    let server = TestServer::fake(ServerConfig::default(), &model);
    let addr = server.addr;
    let first = hold_worker(&server, &model);
    let stopping = std::thread::spawn(move || drop(server));
    // the listener closes while the request is still in the model
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting after shutdown began");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!stopping.is_finished(), "shutdown must wait for the request in flight");
    model.open();
    let reply = first.join().unwrap();
    assert_close(&vectors(&reply)[0], &model.expected("first one", None), "in flight");
    stopping.join().unwrap();
}
