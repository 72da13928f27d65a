//! Errors: [`ApiError`] is what a client sees (OpenAI's `{"error": {message, type, param, code}}` with a status
//! code); [`ServeError`] is what stops the server from starting or running.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use clem_core::ModelError;
use serde_json::json;

/// Why the server cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no model to serve")]
    NoModels,
    #[error("two models are served under the same name {0:?}")]
    DuplicateModel(String),
    /// An empty key would be no key at all: refused rather than silently serving without authentication.
    #[error(
        "the API key is empty; give a non-empty key (--api-key / CLEM_SERVE_API_KEY) or none to serve without one"
    )]
    EmptyApiKey,
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("server metrics: {0}")]
    Metrics(String),
}

/// One failed request, answered in OpenAI's error format.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError { param, ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "Incorrect or missing API key.")
            .with_code("invalid_api_key")
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            param: Some("model"),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("The model `{model}` does not exist."))
        }
        .with_code("model_not_found")
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the server's limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    pub fn overloaded(limit: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("The server is at its limit of {limit} concurrent sequences (a request takes one per choice); retry shortly."),
        )
        .with_code("server_overloaded")
    }

    /// The budget for bodies being received is spent (many large or slow uploads at once).
    pub fn busy_receiving() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "The server is receiving too many request bodies at once; retry shortly.",
        )
        .with_code("server_overloaded")
    }

    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("The request body did not arrive within {} s.", limit.as_secs_f64()),
        )
        .with_code("request_timeout")
    }

    pub fn not_found_route(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("Unknown route {path}."))
            .with_code("unknown_url")
    }

    /// A known route asked with a method it does not answer (axum's own 405 has no body).
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{method} is not allowed on {path}."),
        )
        .with_code("method_not_allowed")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// A model's failure: a prompt that does not fit is the client's problem (400); a backend's failure (the
    /// provider's error, the network) is 502, a broken entry 500, a cancelled request 503. The message is
    /// [`sanitize`]d: a provider's error body may be long and hold anything, terminal escapes included.
    pub fn from_model(e: &ModelError) -> Self {
        match e {
            ModelError::ContextExceeded(c) => {
                ApiError::invalid(Some("messages"), c.to_string()).with_code("context_length_exceeded")
            }
            ModelError::Backend { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, "server_error", sanitize(&e.to_string())).with_code("upstream_error")
            }
            ModelError::Cancelled { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "The request was cancelled (the server is shutting down).",
            )
            .with_code("cancelled"),
            other => Self::internal(sanitize(&other.to_string())),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// How much of a model's error message a client sees.
const SHOWN_ERROR_CHARS: usize = 300;

/// `text` with control characters escaped (`\u{1b}`), cut to [`SHOWN_ERROR_CHARS`] characters (and `...`).
pub fn sanitize(text: &str) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for c in text.chars() {
        let piece: String = if c.is_control() { c.escape_unicode().collect() } else { c.to_string() };
        let n = piece.chars().count();
        if shown + n > SHOWN_ERROR_CHARS {
            out.push_str("...");
            break;
        }
        out.push_str(&piece);
        shown += n;
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, [(header::CONTENT_TYPE, "application/json")], self.body().to_string()).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // OpenAI clients honour Retry-After; one second keeps a burst from hammering the server.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_are_502_escaped_and_capped() {
        let body = format!("\x1b[31mred\x1b[0m\n{}", "x".repeat(5000));
        let e = ApiError::from_model(&ModelError::backend("m", body));
        assert_eq!((e.status, e.code), (StatusCode::BAD_GATEWAY, Some("upstream_error")));
        assert!(!e.message.chars().any(char::is_control), "{}", e.message);
        assert!(e.message.starts_with("model m: \\u{1b}[31mred"), "{}", e.message);
        assert!(e.message.ends_with("xxx...") && e.message.chars().count() <= SHOWN_ERROR_CHARS + 3);
        assert_eq!(sanitize("short\ttext"), "short\\u{9}text");
    }
}
