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
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
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
            format!("The server is at its limit of {limit} concurrent requests; retry shortly."),
        )
        .with_code("server_overloaded")
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

    /// A model's failure: a prompt that does not fit is the client's problem (400), the rest is ours (500).
    pub fn from_model(e: &ModelError) -> Self {
        match e {
            ModelError::ContextExceeded(c) => {
                ApiError::invalid(Some("messages"), c.to_string()).with_code("context_length_exceeded")
            }
            other => Self::internal(other.to_string()),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
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
