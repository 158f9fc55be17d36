//! One log line and one metrics record per request, and its `x-request-id`.
//!
//! The middleware [`track`] gives each request an id (the client's `x-request-id` when it
//! sends a usable one, else a new one), returns it on the answer, and when the request
//! ends (or its client leaves, logged as status 499) writes one `tracing` event with the
//! route, status, timings and what the models did for it. Handlers report the model work
//! through [`record_work`], which finds the request's record in a task-local slot: the
//! queue helpers call it, so no handler has to carry the record around.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ErrorNote;
use crate::metrics::Metrics;
use crate::AppState;

/// The header that carries the request id both ways.
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-sent id kept; a longer or non-printable one is replaced.
const MAX_CLIENT_ID: usize = 128;

/// What the models did for one request, summed over its queued jobs.
#[derive(Debug, Default)]
struct Work {
    models: Vec<String>,
    inputs: usize,
    tokens: usize,
    queued: Duration,
    computed: Duration,
}

tokio::task_local! {
    static WORK: Arc<Mutex<Work>>;
}

/// Adds one finished job to the current request's record (a no-op outside a request).
pub(crate) fn record_work(
    model: &str,
    inputs: usize,
    tokens: usize,
    queued: Duration,
    computed: Duration,
) {
    let _ = WORK.try_with(|work| {
        let mut work = work.lock().unwrap_or_else(|p| p.into_inner());
        if !work.models.iter().any(|m| m == model) {
            work.models.push(model.to_string());
        }
        work.inputs += inputs;
        work.tokens += tokens;
        work.queued += queued;
        work.computed += computed;
    });
}

/// The client's id when it is 1 to 128 printable ASCII characters, else a new one.
fn request_id(request: &Request) -> String {
    let given = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok());
    match given {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_CLIENT_ID
                && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_string()
        }
        _ => new_request_id(),
    }
}

/// A process-unique id: a random per-process prefix and a counter (hex), so ids from
/// several replicas do not collide in one log store.
fn new_request_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    format!("{prefix:016x}{:08x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Writes the metrics record and the log line when dropped, so that a request whose
/// client went away (its future dropped) is still counted, as 499.
struct Record {
    metrics: Arc<Metrics>,
    id: String,
    method: Method,
    route: String,
    started: Instant,
    work: Arc<Mutex<Work>>,
    status: Option<StatusCode>,
    error: Option<String>,
}

impl Drop for Record {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let status = self.status.map_or(499, |s| s.as_u16());
        self.metrics.record_request(&self.route, status, elapsed.as_secs_f64());
        let work = self.work.lock().unwrap_or_else(|p| p.into_inner());
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "sembase::request",
                    request_id = %self.id,
                    method = %self.method,
                    route = %self.route,
                    status,
                    model = %work.models.join(","),
                    inputs = work.inputs,
                    tokens = work.tokens,
                    queue_ms = ms(work.queued),
                    compute_ms = ms(work.computed),
                    total_ms = ms(elapsed),
                    error = self.error.as_deref().unwrap_or(""),
                    "request"
                )
            };
        }
        match status {
            500.. => line!(error),
            499 => line!(warn),
            _ => line!(info),
        }
    }
}

/// Ids, metrics and the log line for every request.
pub(crate) async fn track(
    State(state): State<Arc<AppState>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let work = Arc::new(Mutex::new(Work::default()));
    let mut record = Record {
        metrics: state.metrics.clone(),
        id: request_id(&request),
        method: request.method().clone(),
        route,
        started: Instant::now(),
        work: work.clone(),
        status: None,
        error: None,
    };
    let mut response = WORK.scope(work, next.run(request)).await;
    record.status = Some(response.status());
    record.error = response.extensions().get::<ErrorNote>().map(|note| note.0.clone());
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        record.route = "unmatched".to_string();
    }
    if let Ok(value) = HeaderValue::from_str(&record.id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &[u8]) -> Request {
        let mut request = Request::new(Body::empty());
        request.headers_mut().insert(&REQUEST_ID, HeaderValue::from_bytes(id).unwrap());
        request
    }

    #[test]
    fn a_client_id_is_kept_and_a_bad_one_replaced() {
        assert_eq!(request_id(&with_id(b"abc-123")), "abc-123");
        for bad in [&b"has space"[..], &[b'x'; 129][..], b""] {
            let id = request_id(&with_id(bad));
            assert_eq!(id.len(), 24, "{bad:?} gave {id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(new_request_id(), new_request_id());
    }
}
