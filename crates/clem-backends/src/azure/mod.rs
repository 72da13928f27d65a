//! The `azure` backend: models deployed on Azure, with the key in the `api-key` header.
//!
//! - GPT and other OpenAI-format deployments (key.json section `azure_gpt`, `base_url` = the resource endpoint,
//!   e.g. `https://NAME.openai.azure.com`): Chat Completions at `{base}/openai/v1/chat/completions` with the
//!   deployment as `model`; when the section (or `model_config`) gives an `api_version`, the classic
//!   `{base}/openai/deployments/{model_id}/chat/completions?api-version=...` instead.
//! - Claude deployments (`model_id` starting with `claude`; section `azure_claude`, `base_url` e.g.
//!   `https://NAME.services.ai.azure.com/anthropic`): the Anthropic Messages API at `{base}/v1/messages`.
//!
//! The base URL comes from the entry's `model_config.base_url`, else the section (or its environment fallback).

use clem_core::{Model, ModelError, ModelSpec};

use crate::anthropic::Messages;
use crate::http::remote::{base_url, check_url, credentials, key_sources, model_id};
use crate::http::{join_url, remote_schema, Auth, RemoteModel};
use crate::openai::chat::ChatCompletions;
use crate::{Backend, LoadContext};

pub const BACKEND: Backend =
    Backend { schema: remote_schema("azure"), key_section: Some("azure_gpt"), loader: Some(load), unavailable: "" };

/// Whether the entry is a Claude deployment (served with the Anthropic format and the `azure_claude` keys).
pub fn is_claude(model_id: &str) -> bool {
    model_id.to_ascii_lowercase().starts_with("claude")
}

/// The Chat Completions URL for a GPT deployment.
pub fn gpt_url(base: &str, model_id: &str, api_version: Option<&str>) -> String {
    match api_version {
        Some(v) => {
            format!("{}?api-version={v}", join_url(base, &format!("openai/deployments/{model_id}/chat/completions")))
        }
        None if base.trim_end_matches('/').ends_with("/openai/v1") => join_url(base, "chat/completions"),
        None => join_url(base, "openai/v1/chat/completions"),
    }
}

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    let id = model_id(spec)?;
    let section_name = if is_claude(&id) { "azure_claude" } else { "azure_gpt" };
    let (section, key) = credentials(ctx, section_name, name)?;
    let base = base_url(spec, Some(&section), None).ok_or_else(|| {
        ModelError::config(
            name,
            format!(
                "no base_url for Azure: set \"base_url\" (the resource endpoint) in {} or model_config.base_url",
                key_sources(section_name)
            ),
        )
    })?;
    check_url(name, &base)?;
    let auth = Some(Auth::header("api-key", key));
    if is_claude(&id) {
        let adapter = Messages::from_spec("azure", spec, join_url(&base, "v1/messages"), auth)?;
        return Ok(Box::new(RemoteModel::new(spec, adapter, Some(&section))?));
    }
    let api_version = spec.config_str("api_version").or_else(|| section.extra_str("api_version"));
    let adapter = ChatCompletions::from_spec("azure", spec, gpt_url(&base, &id, api_version), auth)?;
    Ok(Box::new(RemoteModel::new(spec, adapter, Some(&section))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_for_both_api_styles() {
        assert_eq!(
            gpt_url("https://r.openai.azure.com", "gpt-4o", None),
            "https://r.openai.azure.com/openai/v1/chat/completions"
        );
        assert_eq!(
            gpt_url("https://r.openai.azure.com/openai/v1/", "gpt-4o", None),
            "https://r.openai.azure.com/openai/v1/chat/completions"
        );
        assert_eq!(
            gpt_url("https://r.openai.azure.com/", "dep", Some("2024-10-21")),
            "https://r.openai.azure.com/openai/deployments/dep/chat/completions?api-version=2024-10-21"
        );
        assert!(is_claude("claude-sonnet-4-5") && !is_claude("gpt-4o"));
    }
}
