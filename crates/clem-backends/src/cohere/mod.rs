//! The `cohere` backend: Cohere's v2 chat (`POST {base}/v2/chat`, base `https://api.cohere.com`).
//!
//! Request: `{"model", "messages", "temperature", "max_tokens"}` with the same roles as Chat Completions
//! (images as `image_url` parts); `thinking_mode` adds `{"thinking": {"type": "enabled", "token_budget"}}` when
//! `thinking_budget` is set, else `{"type": "enabled"}`. Response: the text items of `message.content` joined;
//! thinking items stay in the response object.
//!
//! Usage: `usage.billed_units` (`input_tokens`, `output_tokens`: what is paid for, so what cost is computed
//! from), else `usage.tokens` (every token processed, the prompt template included). `finish_reason`
//! `MAX_TOKENS` is a length cut.

use clem_core::usage::count;
use clem_core::{FinishReason, GenArgs, Message, Model, ModelError, ModelSpec, Usage};
use serde_json::{json, Map, Value};

use crate::http::images::ImagePolicy;
use crate::http::remote::{base_url, check_url, credentials, extra_body, model_id};
use crate::http::{join_url, merge_top_level, remote_schema, Adapter, ApiRequest, Auth, RemoteError, RemoteModel};
use crate::openai::chat::{chat_messages, ImageUrlStyle};
use crate::{Backend, LoadContext};

pub const BACKEND: Backend =
    Backend { schema: remote_schema("cohere"), key_section: Some("cohere"), loader: Some(load), unavailable: "" };

pub const DEFAULT_BASE_URL: &str = "https://api.cohere.com";

/// A v2 chat endpoint for one model.
#[derive(Clone, Debug)]
pub struct CohereChat {
    pub url: String,
    pub auth: Option<Auth>,
    pub model_id: String,
    pub extra_body: Map<String, Value>,
    pub thinking: Option<Value>,
    pub images: ImagePolicy,
}

impl CohereChat {
    pub fn from_spec(spec: &ModelSpec, base: &str, auth: Option<Auth>) -> Result<CohereChat, ModelError> {
        let thinking = spec.config_flag("thinking_mode").then(|| match spec.config("thinking_budget") {
            Some(b) if b.is_u64() => json!({"type": "enabled", "token_budget": b}),
            _ => json!({"type": "enabled"}),
        });
        Ok(CohereChat {
            url: join_url(base, "v2/chat"),
            auth,
            model_id: model_id(spec)?,
            extra_body: extra_body(spec),
            thinking,
            images: ImagePolicy::from_spec(spec),
        })
    }
}

impl Adapter for CohereChat {
    fn provider(&self) -> &'static str {
        "cohere"
    }

    fn build(&self, messages: &[Message], args: &GenArgs) -> Result<ApiRequest, RemoteError> {
        let invalid = |message: String| RemoteError::Invalid { provider: "cohere", message };
        self.images.check(&self.model_id, messages).map_err(invalid)?;
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model_id));
        body.insert("messages".into(), Value::Array(chat_messages(messages, ImageUrlStyle::Object).map_err(invalid)?));
        body.insert("temperature".into(), json!(args.temperature));
        body.insert("max_tokens".into(), json!(args.max_tokens));
        if let Some(thinking) = &self.thinking {
            body.insert("thinking".into(), thinking.clone());
        }
        if !args.stop.is_empty() {
            body.insert("stop_sequences".into(), json!(args.stop));
        }
        merge_top_level(&mut body, &args.extra);
        merge_top_level(&mut body, &self.extra_body);
        Ok(ApiRequest {
            url: self.url.clone(),
            headers: Vec::new(),
            auth: self.auth.clone(),
            body: Value::Object(body),
        })
    }

    fn reply_text(&self, body: &Value) -> Result<String, String> {
        cohere_reply(body)
    }

    fn usage(&self, body: &Value) -> Option<Usage> {
        cohere_usage(body)
    }

    fn finish(&self, body: &Value) -> Option<FinishReason> {
        match body.get("finish_reason")?.as_str()? {
            "MAX_TOKENS" => Some(FinishReason::Length),
            _ => Some(FinishReason::Stop),
        }
    }
}

/// The usage of a v2 chat response: billed units, else the processed tokens.
pub fn cohere_usage(body: &Value) -> Option<Usage> {
    let of = |units: &Value| Some(Usage::new(count(units.get("input_tokens"))?, count(units.get("output_tokens"))?));
    let u = body.get("usage")?;
    u.get("billed_units").and_then(of).or_else(|| u.get("tokens").and_then(of))
}

/// The text items of a v2 chat response's `message.content`, joined.
pub fn cohere_reply(body: &Value) -> Result<String, String> {
    let content = body
        .pointer("/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| "no message.content list".to_string())?;
    Ok(content
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|c| c.get("text").and_then(Value::as_str))
        .collect())
}

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    let (section, key) = credentials(ctx, "cohere", name)?;
    let base = base_url(spec, Some(&section), Some(DEFAULT_BASE_URL)).unwrap_or_else(|| DEFAULT_BASE_URL.into());
    check_url(name, &base)?;
    let adapter = CohereChat::from_spec(spec, &base, Some(Auth::bearer(key)))?;
    Ok(Box::new(RemoteModel::new(spec, adapter, Some(&section))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_chat_request_and_reply() {
        let spec: ModelSpec = serde_json::from_value(json!({"model_name": "c", "model_id": "command-a",
            "model_config": {"thinking_mode": true, "thinking_budget": 2000}}))
        .expect("spec");
        let a = CohereChat::from_spec(&spec, DEFAULT_BASE_URL, None).expect("adapter");
        let req = a.build(&[Message::system("s"), Message::user("hi")], &GenArgs::new(0.0, 10)).expect("req");
        assert_eq!(req.url, "https://api.cohere.com/v2/chat");
        assert_eq!(
            req.body,
            json!({"model": "command-a", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
                   "temperature": 0.0, "max_tokens": 10, "thinking": {"type": "enabled", "token_budget": 2000}})
        );
        let body = json!({"id": "x", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Paris"}]}});
        assert_eq!(cohere_reply(&body).as_deref(), Ok("Paris"));
        assert!(cohere_reply(&json!({"id": "x"})).is_err());
    }

    /// Before: `stop` was not sent at all (the v2 chat API calls it `stop_sequences`).
    #[test]
    fn stop_is_sent_as_stop_sequences() {
        let spec: ModelSpec =
            serde_json::from_value(json!({"model_name": "c", "model_id": "command-a"})).expect("spec");
        let a = CohereChat::from_spec(&spec, DEFAULT_BASE_URL, None).expect("adapter");
        let req = a
            .build(
                &[Message::user("hi")],
                &GenArgs { stop: vec!["END".into(), "\n\n".into()], ..GenArgs::new(0.0, 10) },
            )
            .expect("req");
        assert_eq!(req.body["stop_sequences"], json!(["END", "\n\n"]));
    }

    #[test]
    fn usage_prefers_billed_units() {
        let spec: ModelSpec =
            serde_json::from_value(json!({"model_name": "c", "model_id": "command-a"})).expect("spec");
        let a = CohereChat::from_spec(&spec, DEFAULT_BASE_URL, None).expect("adapter");
        let body = json!({"finish_reason": "MAX_TOKENS", "usage": {
            "billed_units": {"input_tokens": 5, "output_tokens": 418}, "tokens": {"input_tokens": 71, "output_tokens": 420}}});
        assert_eq!(a.usage(&body), Some(Usage::new(5, 418)));
        assert_eq!(a.finish(&body), Some(FinishReason::Length));
        let body =
            json!({"finish_reason": "COMPLETE", "usage": {"tokens": {"input_tokens": 71.0, "output_tokens": 9}}});
        assert_eq!(a.usage(&body), Some(Usage::new(71, 9)));
        assert_eq!(a.finish(&body), Some(FinishReason::Stop));
        assert_eq!(a.usage(&json!({"usage": {"billed_units": {}}})), None);
    }
}
