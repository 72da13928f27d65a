//! The `openai_compatible` backend: any server speaking Chat Completions (vLLM, llama.cpp's server, Ollama,
//! LM Studio, ...), reached at a base URL such as `http://127.0.0.1:8080/v1`.
//!
//! The base URL comes from the entry's `model_config.base_url`, else the key.json section
//! `openai_compatible` (`base_url`, or `$OPENAI_COMPATIBLE_BASE_URL`). The API key is optional here (local
//! servers need none); without one no `Authorization` header is sent. TLS certificates are verified; a server
//! with a self-signed certificate needs the explicit opt-out `"danger_accept_invalid_certs": true` in
//! `model_config` or in the key.json section (clemcore turned verification off for everyone).

use clem_core::{Model, ModelError, ModelSpec};

use crate::http::remote::{base_url, check_url};
use crate::http::{join_url, remote_schema, Auth, RemoteModel};
use crate::openai::chat::ChatCompletions;
use crate::{Backend, LoadContext};

pub const BACKEND: Backend = Backend {
    schema: remote_schema("openai_compatible"),
    key_section: Some("openai_compatible"),
    loader: Some(load),
    unavailable: "",
};

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    let section = ctx.keys.section("openai_compatible");
    let base = base_url(spec, section.as_ref(), None).ok_or_else(|| {
        ModelError::config(
            name,
            "no base_url: set model_config.base_url in the registry entry, or \"base_url\" in the key.json \
             section \"openai_compatible\" (or $OPENAI_COMPATIBLE_BASE_URL), e.g. http://127.0.0.1:8080/v1",
        )
    })?;
    check_url(name, &base)?;
    let auth = section.as_ref().and_then(|s| s.api_key.clone()).filter(|k| !k.is_empty()).map(Auth::bearer);
    let adapter = ChatCompletions::from_spec("openai_compatible", spec, join_url(&base, "chat/completions"), auth)?;
    Ok(Box::new(RemoteModel::new(spec, adapter, section.as_ref())?))
}
