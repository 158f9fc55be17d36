//! The remote embedder against a loopback OpenAI-compatible server: batching,
//! order, auth, retries on 429/5xx with back-off, no retry on other errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sembase_core::{EmbedOptions, Embedder};
use sembase_eval::remote::{RemoteEmbedder, RemoteOptions};
use serde_json::{json, Value};

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    authorization: Option<String>,
    body: Value,
}

/// A status and body for the next request, given its number and body.
type Script = dyn Fn(usize, &Value) -> (u16, Vec<(String, String)>, String) + Send + Sync;

/// Serves requests on a loopback port until the test ends; returns the base URL.
fn serve(script: Arc<Script>, seen: Arc<Mutex<Vec<Seen>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let (script, seen) = (script.clone(), seen.clone());
            std::thread::spawn(move || handle(stream, &*script, &seen));
        }
    });
    base
}

fn handle(stream: TcpStream, script: &Script, seen: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut authorization) = (0usize, None);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "authorization" => authorization = Some(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let number = {
            let mut s = seen.lock().unwrap();
            s.push(Seen { authorization, body: body.clone() });
            s.len() - 1
        };
        let (status, headers, text) = script(number, &body);
        let mut response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            text.len()
        );
        for (k, v) in headers {
            response.push_str(&format!("{k}: {v}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&text);
        let mut out = stream.try_clone().unwrap();
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A 3-wide vector derived from the text, so order mistakes show.
fn vector_of(text: &str) -> Vec<f32> {
    vec![text.len() as f32, text.chars().next().map_or(0.0, |c| c as u32 as f32), 1.0]
}

/// A successful answer, data listed in reverse order.
fn answer(body: &Value) -> String {
    let inputs = body["input"].as_array().unwrap();
    let mut data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = vector_of(t.as_str().unwrap());
            if let Some(d) = body["dimensions"].as_u64() {
                v.resize(d as usize, 0.5);
            }
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    data.reverse();
    json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}).to_string()
}

fn quick() -> RemoteOptions {
    RemoteOptions {
        batch_size: 2,
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_attempts: 4,
        ..RemoteOptions::default()
    }
}

#[test]
fn batches_keep_order_send_the_key_prefix_and_dimensions() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let base = serve(Arc::new(|_, body: &Value| (200, vec![], answer(body))), seen.clone());
    let spec = format!("openai:{base}#test-model");
    let model = RemoteEmbedder::connect_with_key(&spec, Some("sk-test".into()), quick()).unwrap();
    assert_eq!(model.dimension(), 3);
    assert_eq!(model.name(), spec);
    let texts = ["a", "bb", "ccc", "dddd", "eeeee"];
    let options = EmbedOptions { prefix: Some("q: ".into()), ..EmbedOptions::default() };
    let out = model.embed(&texts, &options).unwrap();
    let want: Vec<Vec<f32>> = texts.iter().map(|t| vector_of(&format!("q: {t}"))).collect();
    assert_eq!(out.vectors, want);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1 + 3, "a probe, then batches of 2, 2, 1");
    assert!(seen.iter().all(|s| s.authorization.as_deref() == Some("Bearer sk-test")));
    assert_eq!(seen[1].body["model"], "test-model");
    assert_eq!(seen[1].body["input"], json!(["q: a", "q: bb"]));
    assert!(seen[1].body.get("dimensions").is_none());

    let narrow = model
        .embed(&["x"], &EmbedOptions { dimensions: Some(5), ..EmbedOptions::default() })
        .unwrap();
    assert_eq!(narrow.vectors[0].len(), 5);
}

#[test]
fn rate_limits_and_server_errors_are_retried_with_backoff() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = |n: usize, body: &Value| match n {
        1 => (
            429,
            vec![("Retry-After".to_string(), "0.1".to_string())],
            r#"{"error":{"message":"slow down"}}"#.to_string(),
        ),
        2 => (503, vec![], "overloaded".to_string()),
        _ => (200, vec![], answer(body)),
    };
    let base = serve(Arc::new(script), seen.clone());
    let model =
        RemoteEmbedder::connect_with_key(&format!("openai:{base}#m"), None, quick()).unwrap();
    let started = Instant::now();
    let out = model.embed(&["hello"], &EmbedOptions::default()).unwrap();
    assert_eq!(out.vectors, vec![vector_of("hello")]);
    // Waits: max(Retry-After 0.1 s, 20 ms), then 40 ms.
    assert!(started.elapsed() >= Duration::from_millis(140), "{:?}", started.elapsed());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen[1].authorization.is_none());
}

#[test]
fn client_errors_fail_at_once_and_persistent_errors_give_up() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = |n: usize, body: &Value| match n {
        0 => (200, vec![], answer(body)),
        1 => (
            401,
            vec![],
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#
                .to_string(),
        ),
        _ => (500, vec![], "boom".to_string()),
    };
    let base = serve(Arc::new(script), seen.clone());
    let model =
        RemoteEmbedder::connect_with_key(&format!("openai:{base}#m"), Some("bad".into()), quick())
            .unwrap();
    let message = model.embed(&["x"], &EmbedOptions::default()).unwrap_err().to_string();
    assert!(message.contains("HTTP 401: Incorrect API key provided"), "{message}");
    assert_eq!(seen.lock().unwrap().len(), 2, "no retry on 401");
    let message = model.embed(&["x"], &EmbedOptions::default()).unwrap_err().to_string();
    assert!(message.contains("HTTP 500: boom (gave up after 4 attempts)"), "{message}");
    assert_eq!(seen.lock().unwrap().len(), 6);
}

#[test]
fn an_unreachable_endpoint_is_one_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let options = RemoteOptions { max_attempts: 2, ..quick() };
    let message =
        RemoteEmbedder::connect_with_key(&format!("openai:http://{addr}/v1#m"), None, options)
            .unwrap_err()
            .to_string();
    assert!(message.starts_with(&format!("http://{addr}/v1/embeddings: ")), "{message}");
    assert!(message.contains("gave up after 2 attempts"), "{message}");
}
