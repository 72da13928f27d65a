//! The `openai` backend: OpenAI's Chat Completions API. The Chat Completions format itself is in [`chat`],
//! shared with openai_compatible, openrouter, azure and mistral.
//!
//! key.json section `openai`: `api_key`, optional `organisation` (sent as `OpenAI-Organization`) and
//! `project` (`OpenAI-Project`); base URL `https://api.openai.com/v1` unless the entry or section sets one.

pub mod chat;

use clem_core::{Model, ModelError, ModelSpec};

use crate::http::remote::{base_url, check_url, credentials};
use crate::http::{join_url, remote_schema, Auth, RemoteModel};
use crate::{Backend, LoadContext};
use chat::ChatCompletions;

pub const BACKEND: Backend =
    Backend { schema: remote_schema("openai"), key_section: Some("openai"), loader: Some(load), unavailable: "" };

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    let (section, key) = credentials(ctx, "openai", name)?;
    let base = base_url(spec, Some(&section), Some(DEFAULT_BASE_URL)).unwrap_or_else(|| DEFAULT_BASE_URL.into());
    check_url(name, &base)?;
    let mut adapter =
        ChatCompletions::from_spec("openai", spec, join_url(&base, "chat/completions"), Some(Auth::bearer(key)))?;
    if let Some(org) = section.extra_str("organisation").filter(|s| !s.is_empty()) {
        adapter.headers.push(("OpenAI-Organization".into(), org.into()));
    }
    if let Some(project) = section.extra_str("project").filter(|s| !s.is_empty()) {
        adapter.headers.push(("OpenAI-Project".into(), project.into()));
    }
    Ok(Box::new(RemoteModel::new(spec, adapter, Some(&section))?))
}
