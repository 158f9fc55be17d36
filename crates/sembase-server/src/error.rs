//! Errors: the typed error of the library API and the JSON error every route answers with.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// What can go wrong setting up or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No model was given.
    #[error("at least one model is needed")]
    NoModels,
    /// Two models answer to the same name.
    #[error("two models are named {0:?}; names must be unique")]
    DuplicateModel(String),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// A head's base model is not among the served models.
    #[error("head `{head}` was trained on model `{model}`, which this server does not serve (it serves: {served})")]
    HeadModelNotServed { head: String, model: String, served: String },
    /// A head cannot be served (repeated name, or it does not fit its model).
    #[error("head `{head}`: {message}")]
    Head { head: String, message: String },
    /// `set_models` was called twice.
    #[error("models are already loaded")]
    AlreadyLoaded,
    /// The listener failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// The body of every error answer: `{"error": {...}}`, as OpenAI sends it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// What went wrong, OpenAI's fields.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A sentence for a person.
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A stable code for programs (`model_not_found`, `invalid_api_key`, ...), if any.
    pub code: Option<String>,
}

/// An error answer: a status and the JSON body (plus `Retry-After` for 429/503).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody { message: message.into(), kind: kind.into(), param: None, code: None },
            retry_after: None,
        }
    }

    /// 400 invalid_request_error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 422 invalid_request_error (the TEI-style routes use it for well-formed but invalid requests).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", message)
    }

    /// 401 for a missing or wrong API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .code("invalid_api_key")
    }

    /// 404 for a route that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message).code("not_found")
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(name: &str, known: &[&str]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "The model `{name}` does not exist on this server; it serves: {}",
                known.join(", ")
            ),
        )
        .param("model")
        .code("model_not_found")
    }

    /// 405 for a known route with the wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method not allowed on this route",
        )
        .code("method_not_allowed")
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .code("request_too_large")
    }

    /// 413 for a request whose inputs make more tokens than one request may run.
    pub fn too_many_tokens(tokens: usize, limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "the request's inputs make {tokens} tokens, more than the limit of {limit} tokens per request; split it into smaller requests"
            ),
        )
        .code("request_too_many_tokens")
    }

    /// 408 for a body that arrived too slowly.
    pub fn body_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", message)
            .code("body_timeout")
    }

    /// 503 with `Retry-After`: the model's queue holds its limit of tokens.
    pub fn queue_full(model: &str) -> Self {
        Self::unavailable(
            format!("the queue of model `{model}` is full; retry shortly"),
            "queue_full",
        )
    }

    /// 503 with `Retry-After`: the request waited in the model's queue past the timeout.
    pub fn queue_timeout(model: &str, waited: std::time::Duration) -> Self {
        Self::unavailable(
            format!(
                "the request waited {:.1} s in the queue of model `{model}` without starting; the server is overloaded, retry shortly",
                waited.as_secs_f64()
            ),
            "queue_timeout",
        )
    }

    /// 503 with `Retry-After`: the request ran past the server's request timeout.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::unavailable(
            format!(
                "the request took longer than the server's limit of {} s and was stopped",
                limit.as_secs_f64()
            ),
            "request_timeout",
        )
    }

    /// 429 with `Retry-After`.
    pub fn overloaded(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server is handling its limit of {limit} concurrent requests; retry shortly"
            ),
        )
        .code("rate_limit_exceeded");
        e.retry_after = Some(1);
        e
    }

    /// 503 while models load or the server shuts down.
    pub fn unavailable(message: impl Into<String>, code: &str) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).code(code);
        e.retry_after = Some(1);
        e
    }

    /// 500: a fault of the server, not the request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message).code("internal_error")
    }

    /// Names the request field at fault.
    pub fn param(mut self, param: &str) -> Self {
        self.body.param = Some(param.to_string());
        self
    }

    /// Sets the machine-readable code.
    pub fn code(mut self, code: &str) -> Self {
        self.body.code = Some(code.to_string());
        self
    }
}

/// The message of an error answer, kept on the response for the request's log line.
#[derive(Debug, Clone)]
pub(crate) struct ErrorNote(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let note = ErrorNote(self.body.message.clone());
        let body = serde_json::to_vec(&ErrorResponse { error: self.body }).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.extensions_mut().insert(note);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
