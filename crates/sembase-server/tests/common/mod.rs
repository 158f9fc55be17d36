//! Shared test helpers: a deterministic fake model, a server on a loopback port, and a
//! raw HTTP/1.1 client (raw, so that malformed requests go out exactly as written).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sembase_core::{EmbedOptions, Embedder, Embeddings, Error, Truncation};
use sembase_index::{Index, IndexSettings, Metric, ModelIdentity, StoreSpec};
use sembase_server::{Attachments, IndexSpec, ModelSpec, Server, ServerConfig};

pub const CLS: u32 = 101;
pub const SEP: u32 = 102;
pub const VOCAB: u32 = 5000;

/// Where a model's calls can be held, so that requests queue up deterministically.
pub struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
    /// Calls currently waiting at the gate.
    pub waiting: AtomicUsize,
}

/// An open gate.
impl Default for Gate {
    fn default() -> Self {
        Self { open: Mutex::new(true), changed: Condvar::new(), waiting: AtomicUsize::new(0) }
    }
}

impl Gate {
    /// Makes calls wait until `open`.
    pub fn close(&self) {
        *self.open.lock().unwrap() = false;
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }

    /// Returns once the gate is open.
    pub fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.changed.wait(open).unwrap();
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A model whose tokens are words and whose vectors are a fixed function of the ids.
/// It counts forward calls and can be held at a gate to build up a queue.
pub struct FakeModel {
    name: String,
    dim: usize,
    max_tokens: usize,
    pub calls: AtomicUsize,
    pub inputs: AtomicUsize,
    pub gate: Gate,
    /// Milliseconds each call takes (0 by default), so that a long run can be watched.
    pub call_ms: AtomicUsize,
}

impl FakeModel {
    pub fn new(name: &str, dim: usize, max_tokens: usize) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            dim,
            max_tokens,
            calls: AtomicUsize::new(0),
            inputs: AtomicUsize::new(0),
            gate: Gate::default(),
            call_ms: AtomicUsize::new(0),
        })
    }

    /// Makes model calls wait until `open`.
    pub fn close(&self) {
        self.gate.close();
    }

    pub fn open(&self) {
        self.gate.open();
    }

    /// Ids of a text: [CLS] one id per whitespace-separated word [SEP], not truncated.
    pub fn ids(text: &str) -> Vec<u32> {
        let mut ids = vec![CLS];
        for word in text.split_whitespace() {
            let h = word.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
            ids.push(1000 + h % 3000);
        }
        ids.push(SEP);
        ids
    }

    /// The vector of some ids at full width.
    pub fn vector_of(&self, ids: &[u32]) -> Vec<f32> {
        let mut v: Vec<f32> = (0..self.dim)
            .map(|k| {
                ids.iter()
                    .enumerate()
                    .map(|(pos, &id)| ((id as usize * (k + 3) + pos * 7) % 101) as f32 - 50.0)
                    .sum()
            })
            .collect();
        normalize(&mut v);
        v
    }

    /// What the server should answer for `text` (truncated like `embed` does).
    pub fn expected(&self, text: &str, dimensions: Option<usize>) -> Vec<f32> {
        let ids = self.truncated(Self::ids(text));
        let mut v = self.vector_of(&ids);
        if let Some(d) = dimensions {
            v.truncate(d);
            normalize(&mut v);
        }
        v
    }

    fn truncated(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if ids.len() > self.max_tokens {
            ids.truncate(self.max_tokens - 1);
            ids.push(SEP);
        }
        ids
    }

    fn finish(
        &self,
        sequences: Vec<Vec<u32>>,
        options: &EmbedOptions,
    ) -> sembase_core::Result<Embeddings> {
        if let Some(d) = options.dimensions {
            if d == 0 || d > self.dim {
                return Err(Error::InvalidDimensions { requested: d, max: self.dim });
            }
        }
        self.gate.pass();
        std::thread::sleep(Duration::from_millis(self.call_ms.load(Ordering::SeqCst) as u64));
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inputs.fetch_add(sequences.len(), Ordering::SeqCst);
        let mut vectors = Vec::new();
        for ids in &sequences {
            let mut v = self.vector_of(ids);
            if let Some(d) = options.dimensions {
                v.truncate(d);
                normalize(&mut v);
            }
            vectors.push(v);
        }
        Ok(Embeddings { token_counts: sequences.iter().map(Vec::len).collect(), vectors })
    }
}

pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

impl Embedder for FakeModel {
    fn name(&self) -> &str {
        &self.name
    }
    fn dimension(&self) -> usize {
        self.dim
    }
    fn max_tokens(&self) -> usize {
        self.max_tokens
    }
    fn embed(&self, texts: &[&str], options: &EmbedOptions) -> sembase_core::Result<Embeddings> {
        let mut sequences = Vec::new();
        for (index, text) in texts.iter().enumerate() {
            let text = format!("{}{text}", options.prefix.as_deref().unwrap_or(""));
            let ids = Self::ids(&text);
            if ids.len() > self.max_tokens && options.truncate == Truncation::Refuse {
                return Err(Error::InputTooLong {
                    index,
                    tokens: ids.len(),
                    limit: self.max_tokens,
                });
            }
            sequences.push(self.truncated(ids));
        }
        self.finish(sequences, options)
    }
    fn embed_tokens(
        &self,
        inputs: &[Vec<u32>],
        options: &EmbedOptions,
    ) -> sembase_core::Result<Embeddings> {
        let mut sequences = Vec::new();
        for (index, ids) in inputs.iter().enumerate() {
            if let Some(&id) = ids.iter().find(|&&id| id >= VOCAB) {
                return Err(Error::InvalidTokenId { index, id, vocab: VOCAB as usize });
            }
            if ids.len() > self.max_tokens && options.truncate == Truncation::Refuse {
                return Err(Error::InputTooLong {
                    index,
                    tokens: ids.len(),
                    limit: self.max_tokens,
                });
            }
            sequences.push(ids[..ids.len().min(self.max_tokens)].to_vec());
        }
        self.finish(sequences, options)
    }
    fn tokenize(&self, text: &str) -> sembase_core::Result<Vec<u32>> {
        Ok(Self::ids(text))
    }
    fn encode(&self, text: &str, truncate: Truncation) -> sembase_core::Result<Vec<u32>> {
        let ids = Self::ids(text);
        if ids.len() > self.max_tokens && truncate == Truncation::Refuse {
            return Err(Error::InputTooLong {
                index: 0,
                tokens: ids.len(),
                limit: self.max_tokens,
            });
        }
        Ok(self.truncated(ids))
    }
}

/// An empty index `docs` in `dir` (empty or not there yet), of the
/// 8-dimensional vectors of a fake model named `fake`.
pub fn empty_index(dir: &Path) -> IndexSpec {
    let settings = IndexSettings {
        model: ModelIdentity { name: "fake".into(), fingerprint: "test".into() },
        dimensions: 8,
        query_prefix: None,
        document_prefix: None,
        metric: Metric::Cosine,
    };
    let index = Index::create(dir, settings, StoreSpec::Flat { precision: Default::default() })
        .expect("an index in a fresh directory");
    IndexSpec { name: "docs".into(), index, model: "fake".into() }
}

/// A server on a loopback port, run on its own runtime; stopped (gracefully) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(config: ServerConfig, models: Vec<ModelSpec>) -> Self {
        Self::start_with(config, models, Attachments::default())
    }

    /// [`start`](Self::start) with heads (or other attachments) on the models.
    pub fn start_with(
        config: ServerConfig,
        models: Vec<ModelSpec>,
        attachments: Attachments,
    ) -> Self {
        let server = Server::new(config).expect("config");
        if !models.is_empty() || !attachments.rerankers.is_empty() {
            server.set_models_with(models, attachments).expect("models");
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = server.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                serving
                    .serve(listener, async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self { addr, server, stop: Some(stop), thread: Some(thread) }
    }

    pub fn fake(config: ServerConfig, model: &Arc<FakeModel>) -> Self {
        Self::start(config, vec![ModelSpec::new(model.clone())])
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Reply {
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    pub fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, &[], b"")
    }

    /// The value of a metric line (`name{labels}` exactly as written), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.server.metrics_text();
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until `done` holds, for at most 10 s.
    pub fn wait_for(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.server.metrics_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the OpenAI error shape: exactly message/type/param/code, with the given values.
    pub fn assert_error(
        &self,
        status: u16,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
        context: &str,
    ) {
        assert_eq!(self.status, status, "{context}: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"), "{context}");
        let body = self.json();
        let object = body.as_object().unwrap_or_else(|| panic!("{context}: not an object"));
        assert_eq!(object.len(), 1, "{context}: {body}");
        let error = body["error"]
            .as_object()
            .unwrap_or_else(|| panic!("{context}: no error object: {body}"));
        let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["code", "message", "param", "type"], "{context}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{context}: {body}");
        assert_eq!(error["type"], kind, "{context}: {body}");
        assert_eq!(error["param"].as_str(), param, "{context}: {body}");
        assert_eq!(error["code"].as_str(), code, "{context}: {body}");
    }
}

/// Posts a JSON body from another thread (so that requests can wait in the queue together).
pub fn spawn_post(
    addr: SocketAddr,
    path: &'static str,
    body: serde_json::Value,
) -> std::thread::JoinHandle<Reply> {
    std::thread::spawn(move || {
        let headers = [("Content-Type", "application/json")];
        request(addr, "POST", path, &headers, body.to_string().as_bytes())
    })
}

/// Sends one request on a fresh connection and reads the answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    }) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    send_raw(addr, &raw)
}

/// Writes raw bytes (from a second thread, so that a server answering before it has
/// read everything cannot deadlock us) and parses the answer.
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> Reply {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let raw = raw.to_vec();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&raw);
    });
    let mut reader = stream;
    let mut answer = Vec::new();
    let result = reader.read_to_end(&mut answer);
    let _ = sending.join();
    if answer.is_empty() {
        panic!("no answer: {result:?}");
    }
    parse_reply(&answer)
}

pub fn parse_reply(answer: &[u8]) -> Reply {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = std::str::from_utf8(&answer[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut body = answer[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The float vectors of an embeddings answer, in `index` order.
pub fn vectors(reply: &Reply) -> Vec<Vec<f32>> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let data = body["data"].as_array().expect("data");
    let mut out = vec![Vec::new(); data.len()];
    for item in data {
        let index = item["index"].as_u64().unwrap() as usize;
        out[index] = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
    }
    out
}

pub fn assert_close(a: &[f32], b: &[f32], context: &str) {
    assert_eq!(a.len(), b.len(), "{context}: lengths");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{context}: {a:?} != {b:?}");
    }
}

/// Holds the worker inside a model call with one request, so later ones queue.
pub fn hold_worker(server: &TestServer, model: &Arc<FakeModel>) -> std::thread::JoinHandle<Reply> {
    model.close();
    let first =
        spawn_post(server.addr, "/v1/embeddings", serde_json::json!({"input": "first one"}));
    server.wait_for("the worker at the gate", || model.gate.waiting.load(Ordering::SeqCst) == 1);
    first
}
