//! The `mistral` backend: Mistral's chat completions (`https://api.mistral.ai/v1/chat/completions`), the Chat
//! Completions format with Mistral's details: `image_url` as a plain string, and replies that may come as a
//! list of chunks (text and, for reasoning models, thinking chunks, which stay in the response object).

use clem_core::{Model, ModelError, ModelSpec};

use crate::http::remote::{base_url, check_url, credentials};
use crate::http::{join_url, remote_schema, Auth, RemoteModel};
use crate::openai::chat::{ChatCompletions, ImageUrlStyle};
use crate::{Backend, LoadContext};

pub const BACKEND: Backend =
    Backend { schema: remote_schema("mistral"), key_section: Some("mistral"), loader: Some(load), unavailable: "" };

pub const DEFAULT_BASE_URL: &str = "https://api.mistral.ai/v1";

/// The adapter, without credentials lookup (for tests).
pub fn adapter(spec: &ModelSpec, base: &str, auth: Option<Auth>) -> Result<ChatCompletions, ModelError> {
    let mut adapter = ChatCompletions::from_spec("mistral", spec, join_url(base, "chat/completions"), auth)?;
    adapter.image_style = ImageUrlStyle::String;
    Ok(adapter)
}

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    let (section, key) = credentials(ctx, "mistral", name)?;
    let base = base_url(spec, Some(&section), Some(DEFAULT_BASE_URL)).unwrap_or_else(|| DEFAULT_BASE_URL.into());
    check_url(name, &base)?;
    let adapter = adapter(spec, &base, Some(Auth::bearer(key)))?;
    Ok(Box::new(RemoteModel::new(spec, adapter, Some(&section))?))
}
