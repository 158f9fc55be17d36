//! A remote [`Embedder`] for any OpenAI-compatible `/embeddings` endpoint, named
//! `openai:BASE_URL#MODEL` (e.g. `openai:https://api.openai.com/v1#text-embedding-3-small`
//! or `openai:http://127.0.0.1:8080/v1#all-minilm-l6-v2` for `sembase serve`).
//!
//! The key comes from `SEMBASE_EVAL_API_KEY`, else `OPENAI_API_KEY` (none: no
//! `Authorization` header). Inputs go in batches (by count and by characters);
//! 429 and 5xx answers and transport failures are retried with exponential
//! back-off, honouring `Retry-After`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use sembase_embed::{EmbedOptions, Embedder, Embeddings};
use serde::{Deserialize, Serialize};
use ureq::tls::{RootCerts, TlsConfig};

use crate::error::{EvalError, Result};

/// The scheme of remote model specs.
pub const SCHEME: &str = "openai:";

/// Environment variables holding the key, first found wins.
pub const KEY_VARIABLES: [&str; 2] = ["SEMBASE_EVAL_API_KEY", "OPENAI_API_KEY"];

/// Largest response body read (a batch of wide float vectors as JSON text).
const MAX_RESPONSE_BYTES: u64 = 1 << 30;

/// Whether `spec` names a remote endpoint.
pub fn is_remote(spec: &str) -> bool {
    spec.starts_with(SCHEME)
}

/// Splits `openai:BASE_URL#MODEL` into the embeddings URL and the model name.
pub fn parse_spec(spec: &str) -> Result<(String, String)> {
    let fail = |m: &str| {
        EvalError::Invalid(format!("model {spec:?}: {m} (expected openai:BASE_URL#MODEL)"))
    };
    let rest = spec.strip_prefix(SCHEME).ok_or_else(|| fail("not a remote spec"))?;
    let (base, model) = rest.rsplit_once('#').ok_or_else(|| fail("no #MODEL"))?;
    if model.is_empty() {
        return Err(fail("the model name is empty"));
    }
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(fail("BASE_URL must start with http:// or https://"));
    }
    Ok((format!("{}/embeddings", base.trim_end_matches('/')), model.to_string()))
}

/// Batching, retry and timeout settings.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Most inputs per request.
    pub batch_size: usize,
    /// Most characters per request (a batch closes before exceeding it, but a
    /// single longer input still goes alone).
    pub batch_chars: usize,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each time up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Per-request time limit for connecting and for the answer.
    pub timeout: Duration,
    /// The token limit reported by [`Embedder::max_tokens`].
    pub max_tokens: usize,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            batch_size: 64,
            batch_chars: 100_000,
            max_attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(120),
            max_tokens: 8191,
        }
    }
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: Input<'a>,
    encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Input<'a> {
    Texts(Vec<&'a str>),
    Tokens(&'a [Vec<u32>]),
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

/// An OpenAI-compatible embeddings endpoint.
pub struct RemoteEmbedder {
    name: String,
    url: String,
    model: String,
    key: Option<String>,
    agent: ureq::Agent,
    options: RemoteOptions,
    dimension: usize,
}

impl std::fmt::Debug for RemoteEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEmbedder")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .finish()
    }
}

impl RemoteEmbedder {
    /// Connects with the key from the environment and learns the vector width
    /// from one small request.
    pub fn connect(spec: &str, options: RemoteOptions) -> Result<Self> {
        let key =
            KEY_VARIABLES.iter().find_map(|v| std::env::var(v).ok().filter(|k| !k.is_empty()));
        Self::connect_with_key(spec, key, options)
    }

    /// Connects with an explicit key (or none).
    pub fn connect_with_key(
        spec: &str,
        key: Option<String>,
        options: RemoteOptions,
    ) -> Result<Self> {
        let (url, model) = parse_spec(spec)?;
        let tls = TlsConfig::builder().root_certs(RootCerts::PlatformVerifier).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(options.timeout))
            .timeout_recv_response(Some(options.timeout))
            .timeout_recv_body(Some(options.timeout))
            .user_agent(concat!("sembase-eval/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let mut embedder =
            Self { name: spec.to_string(), url, model, key, agent, options, dimension: 0 };
        let probe = embedder
            .request(&Input::Texts(vec!["dimension probe"]), 1, None)
            .map_err(|message| EvalError::Remote { url: embedder.url.clone(), message })?;
        embedder.dimension = probe[0].len();
        if embedder.dimension == 0 {
            return Err(EvalError::Remote {
                url: embedder.url.clone(),
                message: "returned an empty embedding".into(),
            });
        }
        Ok(embedder)
    }

    /// The embeddings URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One request with retries; vectors in input order.
    fn request(
        &self,
        input: &Input,
        count: usize,
        dimensions: Option<usize>,
    ) -> std::result::Result<Vec<Vec<f32>>, String> {
        let body = Request {
            model: &self.model,
            input: clone_input(input),
            encoding_format: "float",
            dimensions,
        };
        let mut backoff = self.options.first_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (failure, retry_after) = match self.send(&body) {
                Ok(Ok(text)) => return parse_vectors(&text, count),
                Ok(Err((status, message, retry_after))) => {
                    let failure = format!("HTTP {status}: {message}");
                    if status != 429 && status < 500 {
                        return Err(failure);
                    }
                    (failure, retry_after)
                }
                Err(transport) => (transport, None),
            };
            if attempt >= self.options.max_attempts.max(1) {
                return Err(format!("{failure} (gave up after {attempt} attempts)"));
            }
            let wait =
                retry_after.map_or(backoff, |r| r.min(self.options.max_backoff).max(backoff));
            std::thread::sleep(wait);
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    /// Sends once: `Ok(Ok(body))` on 2xx, `Ok(Err((status, message, retry-after)))`
    /// on another status, `Err` when no answer came.
    #[allow(clippy::type_complexity)]
    fn send(
        &self,
        body: &Request,
    ) -> std::result::Result<std::result::Result<String, (u16, String, Option<Duration>)>, String>
    {
        let mut request = self.agent.post(&self.url);
        if let Some(key) = &self.key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request.send_json(body).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if (200..300).contains(&status) {
            return Ok(Ok(text));
        }
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| {
                let t: String = text.chars().take(200).collect();
                if t.is_empty() {
                    "(no body)".to_string()
                } else {
                    t
                }
            });
        Ok(Err((status, message, retry_after)))
    }

    /// Embeds texts in batches.
    fn embed_texts(
        &self,
        texts: &[String],
        dimensions: Option<usize>,
    ) -> std::result::Result<Vec<Vec<f32>>, String> {
        let mut vectors = Vec::with_capacity(texts.len());
        let mut start = 0;
        while start < texts.len() {
            let mut end = start;
            let mut chars = 0;
            while end < texts.len() && end - start < self.options.batch_size.max(1) {
                let len = texts[end].chars().count();
                if end > start && chars + len > self.options.batch_chars {
                    break;
                }
                chars += len;
                end += 1;
            }
            let batch: Vec<&str> = texts[start..end].iter().map(String::as_str).collect();
            vectors.extend(self.request(&Input::Texts(batch), end - start, dimensions)?);
            start = end;
        }
        Ok(vectors)
    }

    /// A core error for a failure of this endpoint.
    fn failure(&self, message: String) -> sembase_embed::Error {
        sembase_embed::Error::Io {
            path: PathBuf::from(&self.url),
            source: io::Error::other(message),
        }
    }

    /// Checks every vector is `dimensions` wide when a width was asked for.
    fn check_width(
        &self,
        vectors: &[Vec<f32>],
        dimensions: Option<usize>,
    ) -> sembase_embed::Result<()> {
        match (dimensions, vectors.iter().find(|v| Some(v.len()) != dimensions)) {
            (Some(d), Some(v)) => {
                Err(self.failure(format!("asked for {d} dimensions, got {}", v.len())))
            }
            _ => Ok(()),
        }
    }
}

fn clone_input<'a>(input: &Input<'a>) -> Input<'a> {
    match input {
        Input::Texts(t) => Input::Texts(t.clone()),
        Input::Tokens(t) => Input::Tokens(t),
    }
}

/// Reads `data[].embedding` into input order, checking every index appears once.
fn parse_vectors(text: &str, count: usize) -> std::result::Result<Vec<Vec<f32>>, String> {
    let response: Response =
        serde_json::from_str(text).map_err(|e| format!("unexpected answer ({e})"))?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; count];
    for item in response.data {
        match vectors.get_mut(item.index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            _ => return Err(format!("answer has a bad or repeated index {}", item.index)),
        }
    }
    vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| format!("answer lacks the embedding of input {i}")))
        .collect()
}

impl Embedder for RemoteEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn max_tokens(&self) -> usize {
        self.options.max_tokens
    }

    /// Token counts are not known per input (the API reports a total): they are 0.
    fn embed(&self, texts: &[&str], options: &EmbedOptions) -> sembase_embed::Result<Embeddings> {
        let prefix = options.prefix.as_deref().unwrap_or("");
        let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let vectors = self.embed_texts(&inputs, options.dimensions).map_err(|m| self.failure(m))?;
        self.check_width(&vectors, options.dimensions)?;
        Ok(Embeddings { token_counts: vec![0; vectors.len()], vectors })
    }

    fn embed_tokens(
        &self,
        inputs: &[Vec<u32>],
        options: &EmbedOptions,
    ) -> sembase_embed::Result<Embeddings> {
        let mut vectors = Vec::with_capacity(inputs.len());
        for batch in inputs.chunks(self.options.batch_size.max(1)) {
            vectors.extend(
                self.request(&Input::Tokens(batch), batch.len(), options.dimensions)
                    .map_err(|m| self.failure(m))?,
            );
        }
        self.check_width(&vectors, options.dimensions)?;
        Ok(Embeddings { token_counts: inputs.iter().map(Vec::len).collect(), vectors })
    }

    fn tokenize(&self, _text: &str) -> sembase_embed::Result<Vec<u32>> {
        Err(sembase_embed::Error::Unsupported(format!(
            "{}: a remote endpoint does not expose its tokenizer",
            self.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let (url, model) =
            parse_spec("openai:https://api.example.com/v1/#text-embedding-3-small").unwrap();
        assert_eq!(url, "https://api.example.com/v1/embeddings");
        assert_eq!(model, "text-embedding-3-small");
        assert!(parse_spec("openai:https://api.example.com/v1").is_err());
        assert!(parse_spec("openai:ftp://x#m").is_err());
        assert!(parse_spec("openai:http://x#").is_err());
        assert!(is_remote("openai:http://x#m") && !is_remote("all-minilm-l6-v2"));
    }

    #[test]
    fn answers_are_put_in_input_order() {
        let text = r#"{"data":[{"index":1,"embedding":[2.0]},{"index":0,"embedding":[1.0]}]}"#;
        assert_eq!(parse_vectors(text, 2).unwrap(), vec![vec![1.0], vec![2.0]]);
        assert!(parse_vectors(r#"{"data":[{"index":0,"embedding":[1.0]}]}"#, 2).is_err());
        assert!(parse_vectors(
            r#"{"data":[{"index":0,"embedding":[1.0]},{"index":0,"embedding":[1.0]}]}"#,
            2
        )
        .is_err());
    }
}
