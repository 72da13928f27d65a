//! The OpenAI Chat Completions wire format: parsing a request into messages and generation arguments, and
//! building the reply, either one `chat.completion` object or a `chat.completion.chunk` SSE stream, with the
//! generation's `usage` and exact `finish_reason`. Image parts are accepted only as `data:` or `http(s)` URLs
//! ([`crate::images::check_source`]).

use clem_core::{GenArgs, Generation, Message, Role};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::ServeConfig;

/// A validated chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// `stop` is in `args.stop`; `args.extra` is empty until [`crate::validate::sampling_for_model`] fills it
    /// from `sampling` for the model the request names.
    pub args: GenArgs,
    /// The sampling parameters given (`seed`, `top_p`, penalties, ...), checked, under OpenAI's names.
    pub sampling: Map<String, Value>,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices to generate (1 to `ServeConfig::max_n`).
    pub n: u32,
}

/// Parses and validates a request body. Fields that ask for something no backend here does are refused
/// ([`crate::validate`]); other unknown fields are ignored, as OpenAI clients send fields (`user`, `metadata`,
/// ...) that mean nothing to a model.
pub fn parse_chat(body: &[u8], config: &ServeConfig) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("The request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid(None, "The request body must be a JSON object."));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(ApiError::invalid(Some("model"), "`model` must be a non-empty string.")),
    };
    let messages = match obj.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => {
            list.iter().enumerate().map(|(i, m)| parse_message(i, m)).collect::<Result<Vec<_>, _>>()?
        }
        _ => return Err(ApiError::invalid(Some("messages"), "`messages` must be a non-empty list.")),
    };
    crate::validate::refuse_unsupported(&obj)?;
    let max_tokens = parse_max_tokens(&obj, config)?;
    let temperature = match obj.get("temperature") {
        None | Some(Value::Null) => config.default_temperature,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => t,
            _ => return Err(ApiError::invalid(Some("temperature"), "`temperature` must be a number from 0 to 2.")),
        },
    };
    let n = match obj.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= u64::from(config.max_n) => n as u32,
            _ => {
                return Err(ApiError::invalid(
                    Some("n"),
                    format!("`n` must be an integer from 1 to {} (this server's limit).", config.max_n),
                ))
            }
        },
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid(Some("stream"), "`stream` must be a boolean.")),
    };
    let include_usage =
        obj.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let stop = crate::validate::parse_stop(&obj)?;
    let sampling = crate::validate::parse_sampling(&obj)?;
    let args = GenArgs { temperature, max_tokens, stop, extra: Map::new() };
    Ok(ChatRequest { model, messages, args, sampling, stream, include_usage, n })
}

fn parse_max_tokens(obj: &Map<String, Value>, config: &ServeConfig) -> Result<u32, ApiError> {
    // Newer clients send `max_completion_tokens`; it wins when both are there, as in OpenAI's API.
    let (param, value) = match (obj.get("max_completion_tokens"), obj.get("max_tokens")) {
        (Some(v), _) if !v.is_null() => ("max_completion_tokens", v),
        (_, Some(v)) if !v.is_null() => ("max_tokens", v),
        _ => return Ok(config.default_max_tokens.min(config.max_tokens_cap)),
    };
    let n = value
        .as_u64()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::invalid(Some(param), format!("`{param}` must be a positive integer.")))?;
    if n > u64::from(config.max_tokens_cap) {
        return Err(ApiError::invalid(
            Some(param),
            format!("`{param}` is {n}, above this server's limit of {}.", config.max_tokens_cap),
        )
        .with_code("max_tokens_exceeded"));
    }
    Ok(n as u32)
}

fn parse_message(i: usize, m: &Value) -> Result<Message, ApiError> {
    let bad = |what: &str| ApiError::invalid(Some("messages"), format!("messages[{i}]: {what}"));
    let role = match m.get("role").and_then(Value::as_str) {
        Some("system") | Some("developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some(other) => return Err(bad(&format!("role {other:?} is not supported (system, user, assistant)"))),
        None => return Err(bad("`role` must be a string")),
    };
    let mut images = Vec::new();
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text").and_then(Value::as_str) {
                        Some(t) => texts.push(t.to_string()),
                        None => return Err(bad("a text part needs a string `text`")),
                    },
                    Some("image_url") => {
                        let url = part.get("image_url").and_then(|u| u.get("url").or(Some(u))).and_then(Value::as_str);
                        match url {
                            Some(u) => {
                                // Never a local path: backends read those from disk (trusted callers' files).
                                crate::images::check_source(u)?;
                                images.push(u.to_string());
                            }
                            None => return Err(bad("an image_url part needs `image_url.url`")),
                        }
                    }
                    _ => return Err(bad("content parts must be of type text or image_url")),
                }
            }
            texts.join("\n")
        }
        Some(_) => return Err(bad("`content` must be a string or a list of parts")),
    };
    let mut message = Message::new(role, content);
    message.image = images;
    Ok(message)
}

/// `chatcmpl-` and 24 random characters, as OpenAI's ids look.
pub fn completion_id() -> String {
    let tail: String = std::iter::repeat_with(fastrand::alphanumeric).take(24).collect();
    format!("chatcmpl-{tail}")
}

/// The backend's completion object: llamacpp and huggingface_local nest it under `response`, remote backends
/// return it as is.
fn completion_object(g: &Generation) -> &Value {
    match g.response.get("response") {
        Some(inner) if inner.is_object() => inner,
        _ => &g.response,
    }
}

/// `length` when `max_tokens` cut the reply, else `stop`: the generation's normalised finish reason (every
/// built-in backend sets it), else the completion object's `finish_reason` (`stop` when it says nothing).
pub fn finish_reason(g: &Generation) -> &'static str {
    if let Some(f) = g.finish_reason {
        return f.as_str();
    }
    let reason = completion_object(g).pointer("/choices/0/finish_reason").and_then(Value::as_str);
    match reason {
        Some("length") => "length",
        _ => "stop",
    }
}

/// Token usage: the generation's normalised usage (the provider's counts, the local tokenizer's, the mock's
/// words; reasoning tokens as `completion_tokens_details.reasoning_tokens`), else the completion object's
/// `usage` (counts whose sum overflows are nonsense: no usage); `None` when the backend counted nothing.
pub fn usage(g: &Generation) -> Option<Value> {
    if let Some(u) = &g.usage {
        return Some(u.to_openai());
    }
    let u = completion_object(g).get("usage")?;
    let prompt = u.get("prompt_tokens").and_then(Value::as_u64)?;
    let completion = u.get("completion_tokens").and_then(Value::as_u64)?;
    let total = prompt.checked_add(completion)?;
    Some(json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}))
}

/// One `chat.completion` object carrying the cleaned reply.
pub fn completion(id: &str, created: u64, model: &str, g: &Generation) -> Value {
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": g.response_text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason(g),
        }],
    });
    if let (Some(u), Value::Object(o)) = (usage(g), &mut body) {
        o.insert("usage".into(), u);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ServeConfig {
        ServeConfig::default()
    }

    #[test]
    fn parses_parts_roles_and_arguments() {
        let body = json!({
            "model": "m", "temperature": 0.5, "max_completion_tokens": 7, "max_tokens": 999999, "seed": 3,
            "user": "ignored",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
            ],
        });
        let r = parse_chat(body.to_string().as_bytes(), &cfg()).expect("valid");
        assert_eq!(r.args.max_tokens, 7);
        assert_eq!(r.args.temperature, 0.5);
        assert_eq!(r.sampling.get("seed"), Some(&json!(3)));
        assert!(!r.sampling.contains_key("user"));
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.messages[1].image, vec!["http://x/y.png".to_string()]);
    }

    #[test]
    fn image_parts_are_never_local_paths() {
        // Before: each of these was accepted and reached the backend, which read the file from disk.
        for url in ["/etc/passwd", "/no/such/file.png", "file:///etc/passwd", "/dev/zero", "pic.png"] {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]});
            let e = parse_chat(body.to_string().as_bytes(), &cfg()).expect_err(url);
            assert_eq!(e, crate::images::refused_source(), "{url}");
        }
    }

    #[test]
    fn rejects_bad_requests_with_the_parameter() {
        let cases = [
            (json!([1]), None),
            (json!({"messages": [{"role": "user", "content": "x"}]}), Some("model")),
            (json!({"model": "m", "messages": []}), Some("messages")),
            (json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}), Some("messages")),
            (json!({"model": "m", "messages": [{"role": "user", "content": 3}]}), Some("messages")),
            (json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user"}]}), Some("max_tokens")),
            (json!({"model": "m", "max_tokens": 1e9, "messages": [{"role": "user"}]}), Some("max_tokens")),
            (json!({"model": "m", "temperature": 3, "messages": [{"role": "user"}]}), Some("temperature")),
            (json!({"model": "m", "n": 0, "messages": [{"role": "user"}]}), Some("n")),
            (json!({"model": "m", "n": 17, "messages": [{"role": "user"}]}), Some("n")),
            (json!({"model": "m", "n": 1.5, "messages": [{"role": "user"}]}), Some("n")),
        ];
        for (body, param) in cases {
            let e = parse_chat(body.to_string().as_bytes(), &cfg()).expect_err(&body.to_string());
            assert_eq!(e.status, 400);
            assert_eq!(e.param, param, "{body}");
        }
        assert!(parse_chat(b"{not json", &cfg()).is_err());
    }

    /// The generation's normalised usage and finish reason win over its response object, which for a
    /// huggingface_local model holds neither (before: such replies had no `usage` and always said `stop`).
    #[test]
    fn usage_and_finish_reason_come_from_the_generation() {
        use clem_core::{FinishReason, Usage};
        let hf = Generation::new(json!({}), json!({"response": "<|im_start|>...Hello"}), "Hello")
            .with_usage(Some(Usage::new(30, 20).with_reasoning(Some(4))))
            .with_finish(Some(FinishReason::Length));
        let want = json!({"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50,
                          "completion_tokens_details": {"reasoning_tokens": 4}});
        let body = completion("id", 1, "m", &hf);
        assert_eq!((&body["usage"], &body["choices"][0]["finish_reason"]), (&want, &json!("length")));
        // A generation that says `stop` is `stop`, whatever a response object claims.
        let g = Generation::new(json!({}), json!({"choices": [{"finish_reason": "length"}]}), "x")
            .with_finish(Some(FinishReason::Stop));
        assert_eq!(finish_reason(&g), "stop");
        assert!(usage(&Generation::new(json!({}), json!({"response": "x"}), "x")).is_none());
    }
}
