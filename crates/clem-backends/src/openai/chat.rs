//! The Chat Completions wire format (`POST {base}/chat/completions`), shared by openai, openai_compatible,
//! openrouter, azure (GPT deployments) and mistral, which differ only in URL, auth header and small details.
//!
//! Request: `{"model", "messages", "temperature", "max_tokens", ...further generation args, ...extra_body}`;
//! with `reasoning_model` the temperature must be above 0 (clemcore's rule; OpenAI's reasoning models take
//! only 1) and `max_tokens` becomes `max_completion_tokens`. Images become `image_url` content parts.
//! Response: `choices[0].message.content`, a string or (Mistral) a list of chunks; `reasoning_content` or
//! `reasoning` beside it is left in the response object, and a missing `usage` is fine. Usage is read from
//! `usage.prompt_tokens`/`completion_tokens` and `usage.completion_tokens_details.reasoning_tokens` (OpenAI,
//! OpenRouter, Azure; Mistral and vLLM send the first two); `finish_reason` `length` (Mistral also
//! `model_length`) means the token budget cut the reply.

use clem_core::usage::count;
use clem_core::{FinishReason, GenArgs, Message, ModelError, ModelSpec, Usage};
use serde_json::{json, Map, Value};

use crate::http::images::{Image, ImagePolicy};
use crate::http::remote::{extra_body, model_id};
use crate::http::{merge_top_level, Adapter, ApiRequest, Auth, RemoteError};

/// How a provider wants an `image_url` part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageUrlStyle {
    /// `{"type": "image_url", "image_url": {"url": "..."}}` (OpenAI and most).
    Object,
    /// `{"type": "image_url", "image_url": "..."}` (Mistral).
    String,
}

/// A Chat Completions endpoint for one model.
#[derive(Clone, Debug)]
pub struct ChatCompletions {
    pub provider: &'static str,
    pub url: String,
    pub auth: Option<Auth>,
    pub headers: Vec<(String, String)>,
    pub model_id: String,
    pub extra_body: Map<String, Value>,
    pub reasoning_model: bool,
    pub images: ImagePolicy,
    pub image_style: ImageUrlStyle,
}

impl ChatCompletions {
    /// The adapter for `spec` (its `model_id`, `extra_body`, `reasoning_model`, `multimodality`).
    pub fn from_spec(
        provider: &'static str,
        spec: &ModelSpec,
        url: String,
        auth: Option<Auth>,
    ) -> Result<ChatCompletions, ModelError> {
        Ok(ChatCompletions {
            provider,
            url,
            auth,
            headers: Vec::new(),
            model_id: model_id(spec)?,
            extra_body: extra_body(spec),
            reasoning_model: spec.config_flag("reasoning_model"),
            images: ImagePolicy::from_spec(spec),
            image_style: ImageUrlStyle::Object,
        })
    }
}

/// Messages as Chat Completions takes them: plain `{"role", "content"}`, or content parts with images.
pub fn chat_messages(messages: &[Message], style: ImageUrlStyle) -> Result<Vec<Value>, String> {
    messages
        .iter()
        .map(|m| {
            if m.image.is_empty() {
                return Ok(json!({ "role": m.role.as_str(), "content": m.content }));
            }
            let mut parts = vec![json!({ "type": "text", "text": m.content })];
            for source in &m.image {
                let url = Image::load(source)?.url();
                parts.push(match style {
                    ImageUrlStyle::Object => json!({ "type": "image_url", "image_url": { "url": url } }),
                    ImageUrlStyle::String => json!({ "type": "image_url", "image_url": url }),
                });
            }
            Ok(json!({ "role": m.role.as_str(), "content": parts }))
        })
        .collect()
}

impl Adapter for ChatCompletions {
    fn provider(&self) -> &'static str {
        self.provider
    }

    fn build(&self, messages: &[Message], args: &GenArgs) -> Result<ApiRequest, RemoteError> {
        let invalid = |message: String| RemoteError::Invalid { provider: self.provider, message };
        self.images.check(&self.model_id, messages).map_err(invalid)?;
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model_id));
        body.insert("messages".into(), Value::Array(chat_messages(messages, self.image_style).map_err(invalid)?));
        if self.reasoning_model {
            if args.temperature <= 0.0 {
                return Err(invalid(format!(
                    "model {} is a reasoning model (model_config.reasoning_model): it needs a temperature above 0 \
                     (OpenAI's reasoning models take only 1), got {}",
                    self.model_id, args.temperature
                )));
            }
            body.insert("temperature".into(), json!(args.temperature));
            body.insert("max_completion_tokens".into(), json!(args.max_tokens));
        } else {
            body.insert("temperature".into(), json!(args.temperature));
            body.insert("max_tokens".into(), json!(args.max_tokens));
        }
        if !args.stop.is_empty() {
            body.insert("stop".into(), json!(args.stop));
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
        chat_reply(body)
    }

    fn usage(&self, body: &Value) -> Option<Usage> {
        openai_usage(body)
    }

    fn finish(&self, body: &Value) -> Option<FinishReason> {
        openai_finish(body)
    }
}

/// The `usage` of a Chat Completions or Completions response: prompt and completion tokens (both needed), and
/// the reasoning tokens when `completion_tokens_details` has them.
pub fn openai_usage(body: &Value) -> Option<Usage> {
    let u = body.get("usage")?;
    let usage = Usage::new(count(u.get("prompt_tokens"))?, count(u.get("completion_tokens"))?);
    Some(usage.with_reasoning(count(u.pointer("/completion_tokens_details/reasoning_tokens"))))
}

/// `choices[0].finish_reason`: `length` (or Mistral's `model_length`) is [`FinishReason::Length`], any other
/// reason [`FinishReason::Stop`].
pub fn openai_finish(body: &Value) -> Option<FinishReason> {
    match body.pointer("/choices/0/finish_reason")?.as_str()? {
        "length" | "model_length" => Some(FinishReason::Length),
        _ => Some(FinishReason::Stop),
    }
}

/// The reply of a Chat Completions response.
pub fn chat_reply(body: &Value) -> Result<String, String> {
    let choice = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| "no choices[0]".to_string())?;
    let message = choice.get("message").ok_or_else(|| "choices[0] has no message".to_string())?;
    match message.get("content") {
        Some(Value::String(s)) => Ok(s.clone()),
        // Mistral's chunks: text chunks make the reply, thinking chunks stay in the response object.
        Some(Value::Array(chunks)) => Ok(chunks
            .iter()
            .filter(|c| c.get("type").and_then(Value::as_str).is_none_or(|t| t == "text"))
            .filter_map(|c| c.get("text").and_then(Value::as_str))
            .collect()),
        _ => {
            let finish = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("none");
            match message.get("refusal").and_then(Value::as_str) {
                Some(refusal) => Err(format!("the model refused: {refusal}")),
                None => Err(format!("choices[0].message.content is missing or null (finish_reason {finish})")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clem_core::keys::Secret;

    fn adapter(config: Value) -> ChatCompletions {
        let spec: ModelSpec =
            serde_json::from_value(json!({"model_name": "m", "model_id": "gpt-x", "model_config": config}))
                .expect("spec");
        ChatCompletions::from_spec(
            "openai",
            &spec,
            "https://api.openai.com/v1/chat/completions".into(),
            Some(Auth::bearer(Secret::new("sk-test-0123456789"))),
        )
        .expect("adapter")
    }

    #[test]
    fn builds_the_documented_body() {
        let a = adapter(json!({"extra_body": {"seed": 7, "temperature": 0.5}}));
        let mut args = GenArgs::new(0.0, 100);
        args.extra.insert("top_p".into(), json!(0.9));
        let req = a.build(&[Message::system("be brief"), Message::user("hi")], &args).expect("builds");
        assert_eq!(
            req.body,
            json!({"model": "gpt-x", "messages": [{"role": "system", "content": "be brief"},
                   {"role": "user", "content": "hi"}], "temperature": 0.5, "max_tokens": 100, "top_p": 0.9, "seed": 7})
        );
        assert!(!req.body.to_string().contains("sk-test"));
        // Stop sequences under OpenAI's own field (before: GenArgs had no `stop`).
        let req = a
            .build(
                &[Message::user("hi")],
                &GenArgs { stop: vec!["END".into(), "\n\n".into()], ..GenArgs::new(0.0, 10) },
            )
            .expect("builds");
        assert_eq!(req.body["stop"], json!(["END", "\n\n"]));
        assert_eq!(req.url, "https://api.openai.com/v1/chat/completions");
    }

    #[test]
    fn reasoning_models_take_max_completion_tokens_and_positive_temperature() {
        let a = adapter(json!({"reasoning_model": true}));
        let req = a.build(&[Message::user("hi")], &GenArgs::new(1.0, 50)).expect("builds");
        assert_eq!(req.body["max_completion_tokens"], json!(50));
        assert!(req.body.get("max_tokens").is_none());
        let e = a.build(&[Message::user("hi")], &GenArgs::new(0.0, 50)).expect_err("temperature 0");
        assert!(e.to_string().contains("temperature above 0"), "{e}");
    }

    #[test]
    fn images_need_multimodality() {
        let msg = Message { image: vec!["https://x/cat.png".into()], ..Message::user("what is it?") };
        let e = adapter(json!({})).build(std::slice::from_ref(&msg), &GenArgs::default()).expect_err("refused");
        assert!(e.to_string().contains("multimodality"), "{e}");
        let req = adapter(json!({"multimodality": {"single_image": true}}))
            .build(&[msg], &GenArgs::default())
            .expect("allowed");
        assert_eq!(
            req.body["messages"][0]["content"],
            json!([{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}])
        );
    }

    #[test]
    fn parses_replies_of_every_flavour() {
        let ok = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris",
                        "reasoning_content": "thinking..."}, "finish_reason": "stop"}]});
        assert_eq!(chat_reply(&ok).as_deref(), Ok("Paris"));
        let chunks = json!({"choices": [{"message": {"content": [
            {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}, {"type": "text", "text": "Rome"}]}}]});
        assert_eq!(chat_reply(&chunks).as_deref(), Ok("Rome"));
        let null = json!({"choices": [{"message": {"content": null}, "finish_reason": "length"}]});
        assert!(chat_reply(&null).expect_err("null").contains("length"));
        let refusal = json!({"choices": [{"message": {"content": null, "refusal": "no"}}]});
        assert!(chat_reply(&refusal).expect_err("refused").contains("refused"));
        assert!(chat_reply(&json!({"object": "list"})).is_err());
        assert!(chat_reply(&json!({"choices": []})).is_err());
    }

    #[test]
    fn usage_and_finish_of_every_flavour() {
        // OpenAI's documented reply of a reasoning model.
        let o = json!({"choices": [{"finish_reason": "length"}], "usage": {"prompt_tokens": 19,
            "completion_tokens": 1034, "total_tokens": 1053, "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 1024, "accepted_prediction_tokens": 0}}});
        assert_eq!(openai_usage(&o), Some(Usage::new(19, 1034).with_reasoning(Some(1024))));
        assert_eq!(openai_finish(&o), Some(FinishReason::Length));
        // Mistral: no details; its own length reason.
        let m = json!({"choices": [{"finish_reason": "model_length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}});
        assert_eq!(openai_usage(&m), Some(Usage::new(5, 7)));
        assert_eq!(openai_finish(&m), Some(FinishReason::Length));
        assert_eq!(openai_finish(&json!({"choices": [{"finish_reason": "stop"}]})), Some(FinishReason::Stop));
        assert_eq!(openai_finish(&json!({"choices": [{"finish_reason": null}]})), None);
        for none in [
            json!({}),
            json!({"usage": null}),
            json!({"usage": {"prompt_tokens": 5}}),
            json!({"usage": {"prompt_tokens": -1, "completion_tokens": 2}}),
        ] {
            assert_eq!(openai_usage(&none), None, "{none}");
        }
    }
}
