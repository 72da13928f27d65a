//! Errors of a remote call, and reading a provider's error body (every provider shapes it differently).
//!
//! Each error says what happened, how many attempts were made and, when the provider sent one, its own error
//! message and type; bodies are kept (raw) for the log. Nothing here ever holds the API key: bodies are
//! passed through [`redact`] before they are stored.

use std::time::Duration;

use clem_core::keys::Secret;
use serde_json::Value;

/// How much of a raw body an error message shows (the full body stays in the error's field).
const SHOWN_BODY_CHARS: usize = 2000;

/// Why a remote generation failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The request could not be built (e.g. an image the entry does not allow); nothing was sent.
    #[error("{provider}: {message}")]
    Invalid { provider: &'static str, message: String },
    /// The provider answered with an error status.
    #[error(
        "{provider} answered HTTP {status}{}: {message}{}; {outcome}",
        reason(*status),
        kind.as_ref().map(|k| format!(" (type {k})")).unwrap_or_default()
    )]
    Status {
        provider: &'static str,
        status: u16,
        message: String,
        kind: Option<String>,
        body: String,
        attempts: u32,
        /// Why it was not retried, or that retries ran out.
        outcome: String,
    },
    /// No connection, or the connection broke before the whole response came.
    #[error("{provider}: connection failed: {detail}; gave up after {attempts} attempt(s)")]
    Connection { provider: &'static str, detail: String, attempts: u32 },
    /// No complete response within the time limit.
    #[error("{provider}: no response within {} s (model_config.timeout); gave up after {attempts} attempt(s)", timeout.as_secs_f64())]
    Timeout { provider: &'static str, timeout: Duration, attempts: u32 },
    /// A success status whose body is not JSON.
    #[error("{provider}: response is not valid JSON ({detail}); raw body: {}", shown(body))]
    NotJson { provider: &'static str, detail: String, body: String, attempts: u32 },
    /// Valid JSON without a reply in it.
    #[error("{provider}: response has no reply ({detail}); raw body: {}", shown(body))]
    NoReply { provider: &'static str, detail: String, body: String, attempts: u32 },
    /// The runtime could not run the call (should not happen; reported rather than panicking).
    #[error("{provider}: internal error: {message}")]
    Internal { provider: &'static str, message: String },
}

impl RemoteError {
    /// How many HTTP attempts were made (0 when nothing was sent).
    pub fn attempts(&self) -> u32 {
        match self {
            RemoteError::Status { attempts, .. }
            | RemoteError::Connection { attempts, .. }
            | RemoteError::Timeout { attempts, .. }
            | RemoteError::NotJson { attempts, .. }
            | RemoteError::NoReply { attempts, .. } => *attempts,
            RemoteError::Invalid { .. } | RemoteError::Internal { .. } => 0,
        }
    }

    /// The raw response body, when the error came with one.
    pub fn body(&self) -> Option<&str> {
        match self {
            RemoteError::Status { body, .. }
            | RemoteError::NotJson { body, .. }
            | RemoteError::NoReply { body, .. } => Some(body),
            _ => None,
        }
    }
}

fn reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

fn shown(body: &str) -> String {
    if body.chars().count() <= SHOWN_BODY_CHARS {
        return body.to_string();
    }
    let head: String = body.chars().take(SHOWN_BODY_CHARS).collect();
    format!("{head}... ({} bytes in all)", body.len())
}

/// The provider's error message and type from an error body, whatever the provider's shape:
/// OpenAI/Azure/OpenRouter `{"error": {"message", "type"|"code"}}`, Anthropic `{"type": "error", "error":
/// {"type", "message"}}`, Google `{"error": {"message", "status"}}` (sometimes inside a list), Mistral
/// `{"object": "error", "message", "type"}`, Cohere `{"message"}`, FastAPI servers `{"detail"}`.
pub fn error_details(body: &str) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return (None, None);
    };
    let value = match value {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        v => v,
    };
    let Value::Object(obj) = value else {
        return (None, None);
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let str_of = |o: &serde_json::Map<String, Value>, keys: &[&str]| {
        keys.iter().find_map(|k| o.get(*k).filter(|v| !v.is_null()).map(text))
    };
    match obj.get("error") {
        Some(Value::Object(err)) => (str_of(err, &["message", "detail"]), str_of(err, &["type", "status", "code"])),
        Some(Value::String(s)) => (Some(s.clone()), str_of(&obj, &["type", "code"])),
        _ => {
            let kind = str_of(&obj, &["type", "code"]).filter(|k| k != "error");
            (str_of(&obj, &["message", "detail", "msg"]), kind)
        }
    }
}

/// `text` with every occurrence of the key replaced by its masked form.
pub fn redact(text: &str, key: Option<&Secret>) -> String {
    match key {
        // Very short keys would mask unrelated text; such keys are not real credentials anyway.
        Some(k) if k.expose().len() >= 4 && text.contains(k.expose()) => text.replace(k.expose(), &k.masked()),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_provider_shape() {
        let openai = r#"{"error": {"message": "Invalid model", "type": "invalid_request_error", "param": null, "code": "model_not_found"}}"#;
        assert_eq!(error_details(openai), (Some("Invalid model".into()), Some("invalid_request_error".into())));
        let anthropic = r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#;
        assert_eq!(error_details(anthropic), (Some("Overloaded".into()), Some("overloaded_error".into())));
        let google = r#"[{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}]"#;
        assert_eq!(error_details(google), (Some("Quota exceeded".into()), Some("RESOURCE_EXHAUSTED".into())));
        let mistral = r#"{"object": "error", "message": "Unauthorized", "type": "authentication_error", "code": null}"#;
        assert_eq!(error_details(mistral), (Some("Unauthorized".into()), Some("authentication_error".into())));
        let cohere = r#"{"id": "abc", "message": "invalid api token"}"#;
        assert_eq!(error_details(cohere), (Some("invalid api token".into()), None));
        let fastapi = r#"{"detail": [{"loc": ["body"], "msg": "field required"}]}"#;
        assert!(error_details(fastapi).0.is_some_and(|m| m.contains("field required")));
        assert_eq!(error_details("<html>502</html>"), (None, None));
        assert_eq!(error_details(r#"{"error": "rate limited"}"#).0.as_deref(), Some("rate limited"));
    }

    #[test]
    fn redaction_masks_the_key() {
        let key = Secret::new("sk-0123456789abcdef");
        let out = redact("bad key sk-0123456789abcdef given", Some(&key));
        assert!(!out.contains("sk-0123456789abcdef"));
        assert!(out.contains("sk-0...cdef"));
        assert_eq!(redact("nothing", None), "nothing");
    }

    #[test]
    fn long_bodies_are_shortened_in_messages_only() {
        let body = "x".repeat(5000);
        let e = RemoteError::NotJson { provider: "p", detail: "d".into(), body: body.clone(), attempts: 1 };
        assert!(e.to_string().len() < 2200);
        assert_eq!(e.body().map(str::len), Some(5000));
    }
}
