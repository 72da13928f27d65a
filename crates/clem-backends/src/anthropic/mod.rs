//! The `anthropic` backend: Anthropic's Messages API (`POST {base}/v1/messages`, base
//! `https://api.anthropic.com`), also used by `azure` for Claude deployments.
//!
//! Request: system messages go to the top-level `system`; the rest to `messages` (text content, or image blocks
//! then a text block when the message has images); `max_tokens` and `temperature` as given. `thinking_mode`
//! enables extended thinking with `thinking_budget` tokens (default 4000, as clemcore), added to `max_tokens`,
//! and temperature 1 (required by the API). Response: the `text` blocks of `content` joined; `thinking` blocks
//! stay in the response object. Usage: `usage.input_tokens` plus the cache's `cache_creation_input_tokens`
//! and `cache_read_input_tokens` (input_tokens leaves those out) as prompt tokens, `output_tokens` (thinking
//! included; the API does not count it apart) as completion tokens; `stop_reason` `max_tokens` is a length cut.

use clem_core::usage::count;
use clem_core::{FinishReason, GenArgs, Message, Model, ModelError, ModelSpec, Role, Usage};
use serde_json::{json, Map, Value};

use crate::http::images::{Image, ImagePolicy};
use crate::http::remote::{base_url, check_url, credentials, extra_body, model_id, thinking_budget};
use crate::http::{join_url, merge_top_level, remote_schema, Adapter, ApiRequest, Auth, RemoteError, RemoteModel};
use crate::{Backend, LoadContext};

pub const BACKEND: Backend =
    Backend { schema: remote_schema("anthropic"), key_section: Some("anthropic"), loader: Some(load), unavailable: "" };

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const API_VERSION: &str = "2023-06-01";
/// clemcore's fixed budget, now only the default of `thinking_budget`.
pub const DEFAULT_THINKING_BUDGET: u32 = 4000;

/// A Messages API endpoint for one model.
#[derive(Clone, Debug)]
pub struct Messages {
    pub provider: &'static str,
    pub url: String,
    pub auth: Option<Auth>,
    pub headers: Vec<(String, String)>,
    pub model_id: String,
    pub extra_body: Map<String, Value>,
    /// The thinking budget when `thinking_mode` is on.
    pub thinking: Option<u32>,
    pub images: ImagePolicy,
}

impl Messages {
    /// `url` is the full endpoint (`.../v1/messages`).
    pub fn from_spec(
        provider: &'static str,
        spec: &ModelSpec,
        url: String,
        auth: Option<Auth>,
    ) -> Result<Messages, ModelError> {
        Ok(Messages {
            provider,
            url,
            auth,
            headers: vec![("anthropic-version".into(), API_VERSION.into())],
            model_id: model_id(spec)?,
            extra_body: extra_body(spec),
            thinking: spec.config_flag("thinking_mode").then(|| thinking_budget(spec, DEFAULT_THINKING_BUDGET)),
            images: ImagePolicy::from_spec(spec),
        })
    }
}

fn content(m: &Message) -> Result<Value, String> {
    if m.image.is_empty() {
        return Ok(json!(m.content));
    }
    // Anthropic advises images before the text that refers to them.
    let mut blocks = Vec::new();
    for source in &m.image {
        blocks.push(match Image::load(source)? {
            Image::Url(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
            Image::Inline { media_type, base64 } => {
                json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": base64}})
            }
        });
    }
    blocks.push(json!({"type": "text", "text": m.content}));
    Ok(Value::Array(blocks))
}

impl Adapter for Messages {
    fn provider(&self) -> &'static str {
        self.provider
    }

    fn build(&self, messages: &[Message], args: &GenArgs) -> Result<ApiRequest, RemoteError> {
        let invalid = |message: String| RemoteError::Invalid { provider: self.provider, message };
        self.images.check(&self.model_id, messages).map_err(invalid)?;
        let system: Vec<&str> =
            messages.iter().filter(|m| m.role == Role::System).map(|m| m.content.as_str()).collect();
        let turns = messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| Ok(json!({"role": m.role.as_str(), "content": content(m)?})))
            .collect::<Result<Vec<Value>, String>>()
            .map_err(invalid)?;
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model_id));
        let max_tokens = u64::from(args.max_tokens) + u64::from(self.thinking.unwrap_or(0));
        body.insert("max_tokens".into(), json!(max_tokens));
        body.insert("messages".into(), Value::Array(turns));
        if !system.is_empty() {
            body.insert("system".into(), json!(system.join("\n\n")));
        }
        match self.thinking {
            Some(budget) => {
                body.insert("temperature".into(), json!(1));
                body.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": budget}));
            }
            None => {
                body.insert("temperature".into(), json!(args.temperature));
            }
        }
        if !args.stop.is_empty() {
            body.insert("stop_sequences".into(), json!(args.stop));
        }
        merge_top_level(&mut body, &args.extra);
        merge_top_level(&mut body, &self.extra_body);
        Ok(ApiRequest {
            url: self.url.clone(),
            headers: self.headers.clone(),
            auth: self.auth.clone(),
            body: Value::Object(body),
        })
    }

    fn reply_text(&self, body: &Value) -> Result<String, String> {
        messages_reply(body)
    }

    fn usage(&self, body: &Value) -> Option<Usage> {
        messages_usage(body)
    }

    fn finish(&self, body: &Value) -> Option<FinishReason> {
        match body.get("stop_reason")?.as_str()? {
            "max_tokens" | "model_context_window_exceeded" => Some(FinishReason::Length),
            _ => Some(FinishReason::Stop),
        }
    }
}

/// The `usage` of a Messages API response: input (cache writes and reads included) and output tokens.
pub fn messages_usage(body: &Value) -> Option<Usage> {
    let u = body.get("usage")?;
    let cached = |key: &str| count(u.get(key)).unwrap_or(0);
    let input = count(u.get("input_tokens"))?
        .saturating_add(cached("cache_creation_input_tokens"))
        .saturating_add(cached("cache_read_input_tokens"));
    Some(Usage::new(input, count(u.get("output_tokens"))?))
}

/// The text blocks of a Messages API response, joined.
pub fn messages_reply(body: &Value) -> Result<String, String> {
    let blocks = body.get("content").and_then(Value::as_array).ok_or_else(|| "no content list".to_string())?;
    Ok(blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect())
}

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    let (section, key) = credentials(ctx, "anthropic", name)?;
    let base = base_url(spec, Some(&section), Some(DEFAULT_BASE_URL)).unwrap_or_else(|| DEFAULT_BASE_URL.into());
    check_url(name, &base)?;
    let adapter =
        Messages::from_spec("anthropic", spec, join_url(&base, "v1/messages"), Some(Auth::header("x-api-key", key)))?;
    Ok(Box::new(RemoteModel::new(spec, adapter, Some(&section))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(config: Value) -> Messages {
        let spec: ModelSpec =
            serde_json::from_value(json!({"model_name": "c", "model_id": "claude-x", "model_config": config}))
                .expect("spec");
        Messages::from_spec("anthropic", &spec, "https://api.anthropic.com/v1/messages".into(), None).expect("adapter")
    }

    #[test]
    fn system_goes_to_system_and_thinking_adds_budget() {
        let msgs = [Message::system("be brief"), Message::user("hi"), Message::assistant("yo"), Message::user("?")];
        let req = adapter(json!({})).build(&msgs, &GenArgs::new(0.0, 300)).expect("req");
        assert_eq!(
            req.body,
            json!({"model": "claude-x", "max_tokens": 300, "messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}],
                   "system": "be brief", "temperature": 0.0})
        );
        assert!(req.headers.contains(&("anthropic-version".into(), API_VERSION.into())));
        let req = adapter(json!({"thinking_mode": true})).build(&msgs, &GenArgs::new(0.0, 300)).expect("req");
        assert_eq!(req.body["max_tokens"], json!(4300));
        assert_eq!(req.body["temperature"], json!(1));
        assert_eq!(req.body["thinking"], json!({"type": "enabled", "budget_tokens": 4000}));
        let req = adapter(json!({"thinking_mode": true, "thinking_budget": 1024}))
            .build(&msgs, &GenArgs::new(0.0, 300))
            .expect("req");
        assert_eq!(
            (req.body["max_tokens"].clone(), req.body["thinking"]["budget_tokens"].clone()),
            (json!(1324), json!(1024))
        );
    }

    /// Before: `stop` reached Anthropic under OpenAI's name, which the Messages API refuses.
    #[test]
    fn stop_is_sent_as_stop_sequences() {
        let req = adapter(json!({}))
            .build(
                &[Message::user("hi")],
                &GenArgs { stop: vec!["END".into(), "\n\n".into()], ..GenArgs::new(0.0, 10) },
            )
            .expect("req");
        assert_eq!(req.body["stop_sequences"], json!(["END", "\n\n"]));
        assert!(req.body.get("stop").is_none());
        let req = adapter(json!({})).build(&[Message::user("hi")], &GenArgs::default()).expect("req");
        assert!(req.body.get("stop_sequences").is_none());
    }

    #[test]
    fn images_become_base64_blocks() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.png");
        std::fs::write(&path, b"\x89PNGxx").expect("write");
        let msg = Message { image: vec![path.to_string_lossy().into()], ..Message::user("what?") };
        assert!(adapter(json!({})).build(std::slice::from_ref(&msg), &GenArgs::default()).is_err());
        let req =
            adapter(json!({"multimodality": {"single_image": true}})).build(&[msg], &GenArgs::default()).expect("req");
        assert_eq!(
            req.body["messages"][0]["content"],
            json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR3h4"}},
                   {"type": "text", "text": "what?"}])
        );
    }

    #[test]
    fn reply_is_the_text_blocks() {
        let body = json!({"content": [{"type": "thinking", "thinking": "let me see", "signature": "s"},
                                      {"type": "text", "text": "Paris"}], "stop_reason": "end_turn"});
        assert_eq!(messages_reply(&body).as_deref(), Ok("Paris"));
        assert!(messages_reply(&json!({"type": "message"})).is_err());
    }

    #[test]
    fn usage_counts_cache_tokens_as_input_and_max_tokens_as_length() {
        let a = adapter(json!({}));
        let body = json!({"content": [], "stop_reason": "max_tokens", "usage": {"input_tokens": 2095,
            "cache_creation_input_tokens": 100, "cache_read_input_tokens": 5, "output_tokens": 503}});
        assert_eq!(a.usage(&body), Some(Usage::new(2200, 503)));
        assert_eq!(a.finish(&body), Some(FinishReason::Length));
        let body = json!({"stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 4}});
        assert_eq!((a.usage(&body), a.finish(&body)), (Some(Usage::new(3, 4)), Some(FinishReason::Stop)));
        assert_eq!(a.usage(&json!({"usage": {"output_tokens": 4}})), None);
        assert_eq!(a.finish(&json!({"stop_reason": null})), None);
    }
}
