//! Errors of a remote call, and reading a provider's error body (every provider shapes it differently).
//!
//! Each error says what happened, how many attempts were made and, when the provider sent one, its own error
//! message and type; bodies are kept (raw) for the log. Nothing here ever holds the API key: bodies are
//! passed through [`redact`] before they are stored. What a provider wrote reaches terminals and clients only
//! through [`sanitize`] (control characters escaped, length capped), in every error's `Display`.

use std::time::Duration;

use clem_core::keys::Secret;
use serde_json::Value;

/// How much of a provider's text an error message shows (the full text stays in the error's field).
pub const SHOWN_CHARS: usize = 2000;

/// Why a remote generation failed. Every text that came from the network is shown through [`sanitize`].
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The request could not be built (e.g. an image the entry does not allow); nothing was sent.
    #[error("{provider}: {}", sanitize(message))]
    Invalid { provider: &'static str, message: String },
    /// The provider answered with an error status.
    #[error(
        "{provider} answered HTTP {status}{}: {}{}; {outcome}",
        reason(*status),
        sanitize(message),
        kind.as_ref().map(|k| format!(" (type {})", sanitize(k))).unwrap_or_default()
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
    #[error("{provider}: connection failed: {}; gave up after {attempts} attempt(s)", sanitize(detail))]
    Connection { provider: &'static str, detail: String, attempts: u32 },
    /// No connection within `connect_timeout` (TCP and TLS).
    #[error(
        "{provider}: could not connect within {} s (model_config.connect_timeout); gave up after {attempts} attempt(s)",
        timeout.as_secs_f64()
    )]
    ConnectTimeout { provider: &'static str, timeout: Duration, attempts: u32 },
    /// No complete response within the time limit.
    #[error("{provider}: no response within {} s (model_config.timeout); gave up after {attempts} attempt(s)", timeout.as_secs_f64())]
    Timeout { provider: &'static str, timeout: Duration, attempts: u32 },
    /// The call's overall deadline (all attempts and the waits between them) passed.
    #[error(
        "{provider}: the call's deadline of {} s (model_config.deadline) was reached after {attempts} attempt(s){}",
        deadline.as_secs_f64(),
        last.as_ref().map(|e| format!("; the last failure: {}", e.summary())).unwrap_or_default()
    )]
    Deadline { provider: &'static str, deadline: Duration, attempts: u32, last: Option<Box<RemoteError>> },
    /// The response body is larger than `max_response_bytes`; not retried (a repeat would be as large).
    #[error(
        "{provider}: the response body is larger than the limit of {limit} bytes ({}; model_config.max_response_bytes \
         raises it) ({attempts} attempt(s), not retried)",
        human_bytes(*limit)
    )]
    TooLarge { provider: &'static str, limit: u64, attempts: u32 },
    /// A success status whose body is not JSON.
    #[error("{provider}: response is not valid JSON ({}); raw body: {}", sanitize(detail), sanitize(body))]
    NotJson { provider: &'static str, detail: String, body: String, attempts: u32 },
    /// Valid JSON without a reply in it.
    #[error("{provider}: response has no reply ({}); raw body: {}", sanitize(detail), sanitize(body))]
    NoReply { provider: &'static str, detail: String, body: String, attempts: u32 },
    /// The caller cancelled the call (its client left, Ctrl-C) before or between attempts.
    #[error("{provider}: the call was cancelled ({attempts} attempt(s))")]
    Cancelled { provider: &'static str, attempts: u32 },
    /// The runtime could not run the call (should not happen; reported rather than panicking).
    #[error("{provider}: internal error: {}", sanitize(message))]
    Internal { provider: &'static str, message: String },
}

impl RemoteError {
    /// How many HTTP attempts were made (0 when nothing was sent).
    pub fn attempts(&self) -> u32 {
        match self {
            RemoteError::Status { attempts, .. }
            | RemoteError::Connection { attempts, .. }
            | RemoteError::ConnectTimeout { attempts, .. }
            | RemoteError::Timeout { attempts, .. }
            | RemoteError::Deadline { attempts, .. }
            | RemoteError::TooLarge { attempts, .. }
            | RemoteError::NotJson { attempts, .. }
            | RemoteError::NoReply { attempts, .. }
            | RemoteError::Cancelled { attempts, .. } => *attempts,
            RemoteError::Invalid { .. } | RemoteError::Internal { .. } => 0,
        }
    }

    /// What went wrong, without the provider's name and the attempt count (for the deadline's message).
    fn summary(&self) -> String {
        let secs = |d: &Duration| d.as_secs_f64();
        match self {
            RemoteError::Status { status, message, .. } => {
                format!("HTTP {status}{}: {}", reason(*status), sanitize(message))
            }
            RemoteError::Connection { detail, .. } => format!("connection failed: {}", sanitize(detail)),
            RemoteError::ConnectTimeout { timeout, .. } => {
                format!("could not connect within {} s (model_config.connect_timeout)", secs(timeout))
            }
            RemoteError::Timeout { timeout, .. } => {
                format!("no response within {} s (model_config.timeout)", secs(timeout))
            }
            other => other.to_string(),
        }
    }

    /// The raw response body, when the error came with one.
    pub fn body(&self) -> Option<&str> {
        match self {
            RemoteError::Status { body, .. }
            | RemoteError::NotJson { body, .. }
            | RemoteError::NoReply { body, .. } => Some(body),
            RemoteError::Deadline { last, .. } => last.as_deref().and_then(RemoteError::body),
            _ => None,
        }
    }
}

/// Whether a model call failed because the provider could not be reached at all (no connection, or none within
/// the connect timeout, also as the last failure before a deadline): the runner stops a run after a few identical
/// ones rather than failing every instance the same way.
pub fn is_connection_failure(e: &clem_core::ModelError) -> bool {
    fn unreachable(e: &RemoteError) -> bool {
        match e {
            RemoteError::Connection { .. } | RemoteError::ConnectTimeout { .. } => true,
            RemoteError::Deadline { last: Some(last), .. } => unreachable(last),
            _ => false,
        }
    }
    match e {
        clem_core::ModelError::Backend { error, .. } => error.downcast_ref::<RemoteError>().is_some_and(unreachable),
        _ => false,
    }
}

fn reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

/// `text` safe to print: every control character (ESC, BEL, CR, ... ; all but the plain space) and the Unicode
/// controls that reorder text are escaped (`\n`, `\u{1b}`), and at most [`SHOWN_CHARS`] characters are kept,
/// followed by how many bytes were left out. A provider's error text cannot clear a terminal, set its title or
/// fill a screen.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(SHOWN_CHARS + 64));
    for (shown, (at, c)) in text.char_indices().enumerate() {
        if shown == SHOWN_CHARS {
            out.push_str(&format!("... ({} more bytes)", text.len() - at));
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Unicode's explicit direction marks, embeddings, overrides and isolates (they make text read differently).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A byte count for people: `1 MiB`, `64 MiB`, `1.5 KiB`, `12 bytes`.
fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match UNITS.iter().find(|(size, _)| n >= *size) {
        Some((size, unit)) if n.is_multiple_of(*size) => format!("{} {unit}", n / size),
        Some((size, unit)) => format!("{:.1} {unit}", n as f64 / *size as f64),
        None => format!("{n} bytes"),
    }
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
    fn connection_failures_are_told_apart() {
        let backend = |e: RemoteError| clem_core::ModelError::backend("m", e);
        assert!(is_connection_failure(&backend(RemoteError::Connection {
            provider: "p",
            detail: "refused".into(),
            attempts: 3
        })));
        let timeout = RemoteError::ConnectTimeout { provider: "p", timeout: Duration::from_secs(1), attempts: 1 };
        let deadline = RemoteError::Deadline {
            provider: "p",
            deadline: Duration::from_secs(9),
            attempts: 2,
            last: Some(Box::new(timeout)),
        };
        assert!(is_connection_failure(&backend(deadline)));
        let status = RemoteError::Status {
            provider: "p",
            status: 500,
            message: "x".into(),
            kind: None,
            body: String::new(),
            attempts: 1,
            outcome: String::new(),
        };
        assert!(!is_connection_failure(&backend(status)));
        assert!(!is_connection_failure(&clem_core::ModelError::backend("m", "connection failed: refused")));
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
    fn provider_text_is_escaped_and_capped_in_every_message() {
        let hostile = format!("\x1b[2J\x1b]0;pwned\x07 line\r\n\ttab \u{202e}rev\u{9b}{}", "y".repeat(1_000_000));
        let escaped = "\\u{1b}[2J\\u{1b}]0;pwned\\u{7} line\\r\\n\\ttab \\u{202e}rev\\u{9b}";
        let shown = sanitize(&hostile);
        assert!(shown.starts_with(escaped), "{shown}");
        let cut = hostile.char_indices().nth(SHOWN_CHARS).map_or(0, |(at, _)| at);
        assert!(shown.ends_with(&format!("y... ({} more bytes)", hostile.len() - cut)), "{shown}");
        let body = || hostile.clone();
        let errors = [
            RemoteError::Invalid { provider: "p", message: body() },
            RemoteError::Status {
                provider: "p",
                status: 400,
                message: body(),
                kind: Some(body()),
                body: body(),
                attempts: 1,
                outcome: "o".into(),
            },
            RemoteError::Connection { provider: "p", detail: body(), attempts: 1 },
            RemoteError::NotJson { provider: "p", detail: body(), body: body(), attempts: 1 },
            RemoteError::NoReply { provider: "p", detail: body(), body: body(), attempts: 1 },
            RemoteError::Internal { provider: "p", message: body() },
            RemoteError::Deadline {
                provider: "p",
                deadline: Duration::from_secs(1),
                attempts: 2,
                last: Some(Box::new(RemoteError::Connection { provider: "p", detail: body(), attempts: 1 })),
            },
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.chars().any(|c| c.is_control() || is_bidi_control(c)), "{e:?}");
            assert!(text.contains(escaped) && text.len() < 7000, "{}", text.len());
        }
        assert_eq!(sanitize("plain text, kept"), "plain text, kept");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }

    #[test]
    fn long_bodies_are_shortened_in_messages_only() {
        let body = "x".repeat(5000);
        let e = RemoteError::NotJson { provider: "p", detail: "d".into(), body: body.clone(), attempts: 1 };
        assert!(e.to_string().len() < 2200);
        assert_eq!(e.body().map(str::len), Some(5000));
    }
}
