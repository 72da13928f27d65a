//! The `openrouter` backend: OpenRouter's Chat Completions API (`https://openrouter.ai/api/v1` unless the
//! entry or the key.json section `openrouter` sets `base_url`).
//!
//! As in clemcore, an entry without `extra_body` gets `{"provider": {"quantizations": ["fp8"]}}` so that runs
//! do not silently mix quantisations; an entry's own `extra_body` (even `{}`) replaces that default.

use clem_core::{Model, ModelError, ModelSpec};
use serde_json::json;

use crate::http::remote::{base_url, check_url, credentials};
use crate::http::{join_url, remote_schema, Auth, RemoteModel};
use crate::openai::chat::ChatCompletions;
use crate::{Backend, LoadContext};

pub const BACKEND: Backend = Backend {
    schema: remote_schema("openrouter"),
    key_section: Some("openrouter"),
    loader: Some(load),
    unavailable: "",
};

pub const DEFAULT_BASE_URL: &str = "https://openrouter.ai/api/v1";

/// The adapter, without credentials lookup (for tests).
pub fn adapter(spec: &ModelSpec, base: &str, auth: Option<Auth>) -> Result<ChatCompletions, ModelError> {
    let mut adapter = ChatCompletions::from_spec("openrouter", spec, join_url(base, "chat/completions"), auth)?;
    if spec.config("extra_body").is_none() {
        if let serde_json::Value::Object(default) = json!({"provider": {"quantizations": ["fp8"]}}) {
            adapter.extra_body = default;
        }
    }
    Ok(adapter)
}

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    let (section, key) = credentials(ctx, "openrouter", name)?;
    let base = base_url(spec, Some(&section), Some(DEFAULT_BASE_URL)).unwrap_or_else(|| DEFAULT_BASE_URL.into());
    check_url(name, &base)?;
    let adapter = adapter(spec, &base, Some(Auth::bearer(key)))?;
    Ok(Box::new(RemoteModel::new(spec, adapter, Some(&section))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clem_core::{GenArgs, Message};

    fn spec(v: serde_json::Value) -> ModelSpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn default_extra_body_only_when_the_entry_has_none() {
        use crate::http::Adapter;
        let plain = adapter(&spec(json!({"model_name": "m", "model_id": "x/y"})), DEFAULT_BASE_URL, None).expect("a");
        let req = plain.build(&[Message::user("hi")], &GenArgs::default()).expect("req");
        assert_eq!(req.body["provider"], json!({"quantizations": ["fp8"]}));
        assert_eq!(req.url, "https://openrouter.ai/api/v1/chat/completions");
        let own = spec(json!({"model_name": "m", "model_id": "x/y", "model_config": {"extra_body": {}}}));
        let req = adapter(&own, "http://local/", None).expect("a").build(&[Message::user("hi")], &GenArgs::default());
        assert!(req.expect("req").body.get("provider").is_none());
    }
}
