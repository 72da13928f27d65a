//! The shared HTTP layer of every remote backend: what an adapter is, and the one executor that sends.
//!
//! A provider backend is an [`Adapter`]: pure functions from (messages, generation arguments) to an
//! [`ApiRequest`] and from a successful JSON body to the reply text. Everything that touches the network lives
//! here, once for all providers: the shared tokio runtime and reqwest client ([`executor`]), timeouts, retries
//! with backoff and the providers' rate-limit headers ([`retry`]), concurrency and requests-per-minute limits,
//! and the synchronous [`remote::RemoteModel`] that implements `clem_core::Model` on top of it.
//!
//! Each adapter also reads the provider's token usage and finish reason into clem's normalised form
//! ([`Adapter::usage`], [`Adapter::finish`]); the response object itself stays as the provider sent it.
//!
//! The API key lives in a [`Secret`] inside [`Auth`] and is only ever written into one request header, and only
//! for the request URL's own origin (a redirect elsewhere drops it); errors that carry provider bodies are
//! scrubbed of it.

pub mod error;
pub mod executor;
pub mod images;
pub mod remote;
pub mod retry;

use clem_core::keys::Secret;
use clem_core::schema::{BackendSchema, KeySpec, KeyType as T};
use clem_core::{FinishReason, GenArgs, Message, Usage};
use serde_json::{Map, Value};

pub use error::RemoteError;
pub use remote::RemoteModel;

/// `model_config` keys every remote API backend reads.
pub const REMOTE_CONFIG: &[KeySpec] = &[
    ("multimodality", T::Object),
    ("extra_body", T::Object),
    ("reasoning_model", T::Bool),
    ("thinking_mode", T::Bool),
    ("thinking_budget", T::Count),
    ("max_concurrency", T::Count),
    ("requests_per_minute", T::Count),
    ("timeout", T::Number),
    ("connect_timeout", T::Number),
    ("deadline", T::Number),
    ("max_response_bytes", T::Count),
    ("max_attempts", T::Count),
    ("retry_base_delay", T::Number),
    ("retry_max_delay", T::Number),
    ("base_url", T::Str),
    ("danger_accept_invalid_certs", T::Bool),
    // azure only: the classic deployment URL with this api-version.
    ("api_version", T::Str),
];

/// The registry schema of a remote backend: entries need `model_id`, `model_config` takes [`REMOTE_CONFIG`].
pub const fn remote_schema(name: &'static str) -> BackendSchema {
    BackendSchema {
        name,
        aliases: &[],
        entry_required: &[("model_id", T::Str)],
        entry_optional: &[],
        config_required: &[],
        config_optional: REMOTE_CONFIG,
    }
}

/// How the API key is sent: `{header}: {prefix}{key}`.
#[derive(Clone, Debug)]
pub struct Auth {
    pub header: &'static str,
    pub prefix: &'static str,
    pub key: Secret,
}

impl Auth {
    pub fn bearer(key: Secret) -> Self {
        Auth { header: "authorization", prefix: "Bearer ", key }
    }
    pub fn header(header: &'static str, key: Secret) -> Self {
        Auth { header, prefix: "", key }
    }
}

/// One request as an adapter built it. Only [`Auth`] holds the credential; `body` is the exact JSON sent.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub url: String,
    /// Further headers (`content-type` is always added by the executor). Like `auth`, they go only to the URL's
    /// own origin: a redirect to another host drops them (an account id such as `OpenAI-Organization` is no
    /// business of another host).
    pub headers: Vec<(String, String)>,
    pub auth: Option<Auth>,
    pub body: Value,
}

/// A provider's wire format, as pure functions (no I/O besides reading local image files).
pub trait Adapter: Send + Sync + 'static {
    /// The provider's name, for messages (`openai`, `anthropic`, ...).
    fn provider(&self) -> &'static str;

    /// The request for one generation.
    fn build(&self, messages: &[Message], args: &GenArgs) -> Result<ApiRequest, RemoteError>;

    /// The reply text of a successful response body; `Err` says why there is none.
    fn reply_text(&self, body: &Value) -> Result<String, String>;

    /// The reply text and, for adapters that clean replies with `cot_output`, the chain of thought cut from it
    /// (recorded as `cot_content` in the response object, as the local backends do).
    fn reply(&self, body: &Value) -> Result<(String, Option<String>), String> {
        self.reply_text(body).map(|text| (text, None))
    }

    /// The provider's token counts of a successful response body, normalised; `None` when it sent none.
    fn usage(&self, _body: &Value) -> Option<Usage> {
        None
    }

    /// Why the provider stopped (`Length` when the token budget cut the reply); `None` when it does not say.
    fn finish(&self, _body: &Value) -> Option<FinishReason> {
        None
    }
}

/// Merges `extra` into `body` at the top level (later keys win), as the OpenAI SDK does with `extra_body`.
pub fn merge_top_level(body: &mut Map<String, Value>, extra: &Map<String, Value>) {
    for (k, v) in extra {
        body.insert(k.clone(), v.clone());
    }
}

/// Joins a base URL and a path with exactly one slash between them.
pub fn join_url(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(join_url("http://x/v1/", "/chat/completions"), "http://x/v1/chat/completions");
        assert_eq!(join_url("http://x/v1", "chat/completions"), "http://x/v1/chat/completions");
    }

    /// `clem registry check` knows the call limits of every backend that sends through the executor: good values
    /// pass, bad ones are reported (before: any value passed the check and failed only when the model loaded).
    #[test]
    fn the_call_limits_pass_the_registry_check() {
        let schemas = crate::schemas();
        let remote = ["openai", "openai_compatible", "openrouter", "azure", "anthropic", "google", "mistral", "cohere"];
        for backend in remote.iter().chain(&["vllm"]) {
            let check = |config: serde_json::Value| {
                let entry = serde_json::json!({"model_name": "m", "backend": backend, "model_id": "x",
                    "model_config": config});
                let problems = clem_core::schema::check_entry(&entry, "r.json", 0, &schemas);
                ["deadline", "max_response_bytes"]
                    .map(|key| problems.iter().any(|p| p.key == format!("model_config.{key}")))
            };
            let good = check(serde_json::json!({"deadline": 60, "max_response_bytes": 1_048_576}));
            assert_eq!(good, [false, false], "{backend}");
            let bad = check(serde_json::json!({"deadline": "soon", "max_response_bytes": -1}));
            assert_eq!(bad, [true, true], "{backend}");
        }
    }

    #[test]
    fn auth_debug_masks_the_key() {
        let auth = Auth::bearer(Secret::new("sk-very-secret-key-123456"));
        assert!(!format!("{auth:?}").contains("very-secret"));
    }
}
