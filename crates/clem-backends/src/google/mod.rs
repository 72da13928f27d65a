//! The `google` backend: the Gemini API's `generateContent` (`POST {base}/models/{model_id}:generateContent`,
//! base `https://generativelanguage.googleapis.com/v1beta`), with the key in the `x-goog-api-key` header (never
//! in the URL).
//!
//! Request: `contents` with roles `user` and `model` (for assistant), system messages in
//! `system_instruction`, `generationConfig` with `temperature`, `maxOutputTokens` and further generation args;
//! `thinking_mode` adds `thinkingConfig` with `thinking_budget` tokens (default 4096, as clemcore) and asks for
//! the thoughts, which stay in the response object. Response: the non-thought text parts of the first
//! candidate; a blocked prompt or a candidate without content is an error naming the reason.
//!
//! Usage from `usageMetadata`: `promptTokenCount` (plus `toolUsePromptTokenCount`) as prompt tokens,
//! `candidatesTokenCount` plus `thoughtsTokenCount` as completion tokens (both are billed as output; OpenAI counts
//! reasoning inside completion tokens too), `thoughtsTokenCount` as reasoning tokens. The API leaves out counts
//! that are zero, so a missing count is 0 once `promptTokenCount` is there. `finishReason` `MAX_TOKENS` is a
//! length cut.

use clem_core::usage::count;
use clem_core::{FinishReason, GenArgs, Message, Model, ModelError, ModelSpec, Role, Usage};
use serde_json::{json, Map, Value};

use crate::http::images::{Image, ImagePolicy};
use crate::http::remote::{base_url, check_url, credentials, extra_body, model_id, thinking_budget};
use crate::http::{join_url, merge_top_level, remote_schema, Adapter, ApiRequest, Auth, RemoteError, RemoteModel};
use crate::{Backend, LoadContext};

pub const BACKEND: Backend =
    Backend { schema: remote_schema("google"), key_section: Some("google"), loader: Some(load), unavailable: "" };

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";
pub const DEFAULT_THINKING_BUDGET: u32 = 4096;

/// A generateContent endpoint for one model.
#[derive(Clone, Debug)]
pub struct GenerateContent {
    pub url: String,
    pub auth: Option<Auth>,
    pub model_id: String,
    pub extra_body: Map<String, Value>,
    pub thinking: Option<u32>,
    pub images: ImagePolicy,
}

impl GenerateContent {
    /// `base` is the API root (`.../v1beta`).
    pub fn from_spec(spec: &ModelSpec, base: &str, auth: Option<Auth>) -> Result<GenerateContent, ModelError> {
        let model_id = model_id(spec)?;
        let path = format!("models/{}:generateContent", model_id.trim_start_matches("models/"));
        Ok(GenerateContent {
            url: join_url(base, &path),
            auth,
            model_id,
            extra_body: extra_body(spec),
            thinking: spec.config_flag("thinking_mode").then(|| thinking_budget(spec, DEFAULT_THINKING_BUDGET)),
            images: ImagePolicy::from_spec(spec),
        })
    }
}

fn parts(m: &Message) -> Result<Vec<Value>, String> {
    let mut parts = Vec::new();
    for source in &m.image {
        match Image::load(source)? {
            Image::Inline { media_type, base64 } => {
                parts.push(json!({"inline_data": {"mime_type": media_type, "data": base64}}));
            }
            Image::Url(url) => {
                return Err(format!(
                    "image {url}: the Gemini API does not fetch http(s) URLs; give a local file instead"
                ))
            }
        }
    }
    parts.push(json!({"text": m.content}));
    Ok(parts)
}

impl Adapter for GenerateContent {
    fn provider(&self) -> &'static str {
        "google"
    }

    fn build(&self, messages: &[Message], args: &GenArgs) -> Result<ApiRequest, RemoteError> {
        let invalid = |message: String| RemoteError::Invalid { provider: "google", message };
        self.images.check(&self.model_id, messages).map_err(invalid)?;
        let system: Vec<&str> =
            messages.iter().filter(|m| m.role == Role::System).map(|m| m.content.as_str()).collect();
        let contents = messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| {
                let role = if m.role == Role::Assistant { "model" } else { "user" };
                Ok(json!({"role": role, "parts": parts(m)?}))
            })
            .collect::<Result<Vec<Value>, String>>()
            .map_err(invalid)?;
        let mut config = Map::new();
        config.insert("temperature".into(), json!(args.temperature));
        config.insert("maxOutputTokens".into(), json!(args.max_tokens));
        if let Some(budget) = self.thinking {
            config.insert("thinkingConfig".into(), json!({"thinkingBudget": budget, "includeThoughts": true}));
        }
        if !args.stop.is_empty() {
            config.insert("stopSequences".into(), json!(args.stop));
        }
        merge_top_level(&mut config, &args.extra);
        let mut body = Map::new();
        body.insert("contents".into(), Value::Array(contents));
        if !system.is_empty() {
            body.insert("system_instruction".into(), json!({"parts": [{"text": system.join("\n\n")}]}));
        }
        body.insert("generationConfig".into(), Value::Object(config));
        merge_top_level(&mut body, &self.extra_body);
        Ok(ApiRequest {
            url: self.url.clone(),
            headers: Vec::new(),
            auth: self.auth.clone(),
            body: Value::Object(body),
        })
    }

    fn reply_text(&self, body: &Value) -> Result<String, String> {
        gemini_reply(body)
    }

    fn usage(&self, body: &Value) -> Option<Usage> {
        gemini_usage(body)
    }

    fn finish(&self, body: &Value) -> Option<FinishReason> {
        match body.pointer("/candidates/0/finishReason")?.as_str()? {
            "MAX_TOKENS" => Some(FinishReason::Length),
            _ => Some(FinishReason::Stop),
        }
    }
}

/// The `usageMetadata` of a generateContent response, normalised (see the module comment).
pub fn gemini_usage(body: &Value) -> Option<Usage> {
    let u = body.get("usageMetadata")?;
    let n = |key: &str| count(u.get(key)).unwrap_or(0);
    let prompt = count(u.get("promptTokenCount"))?.saturating_add(n("toolUsePromptTokenCount"));
    let thoughts = count(u.get("thoughtsTokenCount"));
    let completion = n("candidatesTokenCount").saturating_add(thoughts.unwrap_or(0));
    Some(Usage::new(prompt, completion).with_reasoning(thoughts))
}

/// The answer text of a generateContent response (thought parts left out).
pub fn gemini_reply(body: &Value) -> Result<String, String> {
    let Some(candidate) = body.get("candidates").and_then(Value::as_array).and_then(|c| c.first()) else {
        let reason = body.pointer("/promptFeedback/blockReason").and_then(Value::as_str);
        return Err(match reason {
            Some(r) => format!("the prompt was blocked ({r})"),
            None => "no candidates".to_string(),
        });
    };
    let Some(parts) = candidate.pointer("/content/parts").and_then(Value::as_array) else {
        let finish = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("none");
        return Err(format!("the candidate has no content (finishReason {finish})"));
    };
    Ok(parts
        .iter()
        .filter(|p| !p.get("thought").and_then(Value::as_bool).unwrap_or(false))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect())
}

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    let (section, key) = credentials(ctx, "google", name)?;
    let base = base_url(spec, Some(&section), Some(DEFAULT_BASE_URL)).unwrap_or_else(|| DEFAULT_BASE_URL.into());
    check_url(name, &base)?;
    let adapter = GenerateContent::from_spec(spec, &base, Some(Auth::header("x-goog-api-key", key)))?;
    Ok(Box::new(RemoteModel::new(spec, adapter, Some(&section))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(config: Value) -> GenerateContent {
        let spec: ModelSpec =
            serde_json::from_value(json!({"model_name": "g", "model_id": "gemini-x", "model_config": config}))
                .expect("spec");
        GenerateContent::from_spec(&spec, DEFAULT_BASE_URL, None).expect("adapter")
    }

    /// Before: `stop` was not sent (Gemini's field is `generationConfig.stopSequences`).
    #[test]
    fn stop_is_sent_as_stop_sequences() {
        let req = adapter(json!({}))
            .build(
                &[Message::user("hi")],
                &GenArgs { stop: vec!["END".into(), "\n\n".into()], ..GenArgs::new(0.0, 10) },
            )
            .expect("req");
        assert_eq!(req.body["generationConfig"]["stopSequences"], json!(["END", "\n\n"]));
    }

    #[test]
    fn roles_system_instruction_and_thinking() {
        let msgs = [Message::system("be brief"), Message::user("hi"), Message::assistant("yo"), Message::user("?")];
        let req = adapter(json!({})).build(&msgs, &GenArgs::new(0.0, 300)).expect("req");
        assert_eq!(req.url, "https://generativelanguage.googleapis.com/v1beta/models/gemini-x:generateContent");
        assert_eq!(
            req.body,
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "yo"}]},
                                {"role": "user", "parts": [{"text": "?"}]}],
                   "system_instruction": {"parts": [{"text": "be brief"}]},
                   "generationConfig": {"temperature": 0.0, "maxOutputTokens": 300}})
        );
        let req = adapter(json!({"thinking_mode": true})).build(&msgs, &GenArgs::new(0.0, 300)).expect("req");
        assert_eq!(
            req.body["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget": 4096, "includeThoughts": true})
        );
        let req = adapter(json!({"thinking_mode": true, "thinking_budget": 0})).build(&msgs, &GenArgs::default());
        assert_eq!(req.expect("req").body["generationConfig"]["thinkingConfig"]["thinkingBudget"], json!(0));
    }

    #[test]
    fn reply_skips_thoughts_and_explains_blocks() {
        let body = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "considering", "thought": true}, {"text": "Paris"}]}, "finishReason": "STOP"}]});
        assert_eq!(gemini_reply(&body).as_deref(), Ok("Paris"));
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}});
        assert!(gemini_reply(&blocked).expect_err("blocked").contains("SAFETY"));
        let empty = json!({"candidates": [{"finishReason": "MAX_TOKENS"}]});
        assert!(gemini_reply(&empty).expect_err("empty").contains("MAX_TOKENS"));
    }

    #[test]
    fn url_images_are_refused_files_inline() {
        let a = adapter(json!({"multimodality": {"single_image": true}}));
        let msg = Message { image: vec!["https://x/a.png".into()], ..Message::user("?") };
        assert!(a.build(&[msg], &GenArgs::default()).is_err());
        let msg = Message { image: vec!["data:image/png;base64,AAAA".into()], ..Message::user("?") };
        let req = a.build(&[msg], &GenArgs::default()).expect("req");
        assert_eq!(
            req.body["contents"][0]["parts"][0],
            json!({"inline_data": {"mime_type": "image/png", "data": "AAAA"}})
        );
    }

    #[test]
    fn usage_counts_thoughts_as_reasoning_output() {
        let a = adapter(json!({}));
        let body = json!({"candidates": [{"finishReason": "MAX_TOKENS"}], "usageMetadata": {"promptTokenCount": 8,
            "candidatesTokenCount": 10, "thoughtsTokenCount": 102, "totalTokenCount": 120}});
        assert_eq!(a.usage(&body), Some(Usage::new(8, 112).with_reasoning(Some(102))));
        assert_eq!(a.finish(&body), Some(FinishReason::Length));
        // Zero counts are left out by the API: thinking took the whole budget, no candidate tokens.
        let body = json!({"candidates": [{"finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 8, "thoughtsTokenCount": 30, "toolUsePromptTokenCount": 2}});
        assert_eq!(a.usage(&body), Some(Usage::new(10, 30).with_reasoning(Some(30))));
        assert_eq!(a.finish(&body), Some(FinishReason::Stop));
        assert_eq!(a.usage(&json!({"usageMetadata": {"candidatesTokenCount": 3}})), None);
    }
}
