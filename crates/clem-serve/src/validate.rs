//! What a request may ask of the model it names: nothing is silently ignored. OpenAI parameters no clemrs backend
//! honours (`tools`, `response_format` other than text, `logprobs`, ...) are refused with a 400 naming the field;
//! `stop` becomes [`GenArgs::stop`] (each backend sends it as its provider's field, local ones stop their loop);
//! the sampling parameters (`seed`, `top_p`, `presence_penalty`, `frequency_penalty`, and `top_k`/`min_p`) are
//! checked, then renamed to the backend's own field (`random_seed` for Mistral, `topP` for Gemini, `p` for
//! Cohere, ...) or refused when the backend has none.

use clem_core::{GenArgs, ModelSpec};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// OpenAI's limit on stop sequences.
const MAX_STOP: usize = 4;

/// Fields that ask for something no backend here does, refused when they ask for it (`null`, `false`, an empty
/// list and the plain-text defaults ask for nothing).
pub fn refuse_unsupported(obj: &Map<String, Value>) -> Result<(), ApiError> {
    let asks = |key: &str| match obj.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    };
    let refuse = |param: &'static str, what: &str| {
        Err(ApiError::invalid(Some(param), format!("`{param}` is not supported by this server: {what}."))
            .with_code("unsupported_parameter"))
    };
    for (param, what) in [
        ("tools", "models are served for plain chat, without tool calls"),
        ("functions", "models are served for plain chat, without function calls"),
        ("logprobs", "no backend here returns token log probabilities"),
        ("top_logprobs", "no backend here returns token log probabilities"),
        ("logit_bias", "no backend here takes token biases"),
        ("audio", "replies are text only"),
        ("prediction", "predicted outputs are not supported"),
        ("web_search_options", "there is no web search"),
    ] {
        if asks(param) {
            return refuse(param, what);
        }
    }
    match obj.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(_) => return refuse("tool_choice", "models are served for plain chat, without tool calls"),
    }
    match obj.get("function_call") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(_) => return refuse("function_call", "models are served for plain chat, without function calls"),
    }
    match obj.get("response_format") {
        None | Some(Value::Null) => {}
        Some(f) if f.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => {
            return refuse("response_format", "only {\"type\": \"text\"}; JSON modes and schemas are not enforced")
        }
    }
    match obj.get("modalities") {
        None | Some(Value::Null) => {}
        Some(Value::Array(m)) if m.iter().all(|x| x.as_str() == Some("text")) => {}
        Some(_) => return refuse("modalities", "replies are text only"),
    }
    Ok(())
}

/// `stop`: a string or a list of at most four strings (empty strings ask for nothing).
pub fn parse_stop(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let bad =
        || ApiError::invalid(Some("stop"), format!("`stop` must be a string or a list of at most {MAX_STOP} strings."));
    match obj.get("stop") {
        Some(Value::Array(list)) if list.len() > MAX_STOP => Err(bad()),
        Some(v) => clem_core::message::stop_sequences(v).ok_or_else(bad),
        None => Ok(Vec::new()),
    }
}

/// The sampling parameters a request may give, with their range, in OpenAI's names.
const SAMPLING: &[(&str, Range)] = &[
    ("seed", Range::Integer),
    ("top_p", Range::Number(0.0, 1.0)),
    ("presence_penalty", Range::Number(-2.0, 2.0)),
    ("frequency_penalty", Range::Number(-2.0, 2.0)),
    ("top_k", Range::Integer),
    ("min_p", Range::Number(0.0, 1.0)),
];

#[derive(Clone, Copy)]
enum Range {
    Integer,
    Number(f64, f64),
}

/// The sampling parameters of a request body, checked (type and range), under OpenAI's names.
pub fn parse_sampling(obj: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (param, range) in SAMPLING {
        let Some(v) = obj.get(*param).filter(|v| !v.is_null()) else { continue };
        let ok = match range {
            Range::Integer => v.as_u64().is_some() || v.as_i64().is_some(),
            Range::Number(lo, hi) => v.as_f64().is_some_and(|x| (*lo..=*hi).contains(&x)),
        };
        if !ok {
            let want = match range {
                Range::Integer => "an integer".to_string(),
                Range::Number(lo, hi) => format!("a number from {lo} to {hi}"),
            };
            return Err(ApiError::invalid(Some(param), format!("`{param}` must be {want}.")));
        }
        out.insert((*param).to_string(), v.clone());
    }
    Ok(out)
}

/// Each sampling parameter's field in a backend's requests; `None`: the backend cannot honour it.
fn backend_field(spec: &ModelSpec, param: &'static str) -> Option<&'static str> {
    let backend = spec.backend().unwrap_or_default();
    let claude =
        backend == "azure" && spec.get_str("model_id").is_some_and(|id| id.to_ascii_lowercase().starts_with("claude"));
    match (backend, param) {
        // The mock and human players have no sampling: every value is honoured trivially.
        ("mock" | "programmatic" | "human" | "terminal", p) => Some(p),
        ("anthropic", "top_p" | "top_k") => Some(param),
        ("anthropic", _) => None,
        ("azure", "top_p" | "top_k") if claude => Some(param),
        ("azure", _) if claude => None,
        // Chat Completions servers take OpenAI's names; `top_k`/`min_p` are extensions some of them take.
        ("openai" | "azure", "top_k" | "min_p") => None,
        ("openai" | "azure" | "openai_compatible" | "openrouter" | "vllm", p) => Some(p),
        ("mistral", "seed") => Some("random_seed"),
        ("mistral", "top_p" | "presence_penalty" | "frequency_penalty") => Some(param),
        ("mistral", _) => None,
        ("google", "seed") => Some("seed"),
        ("google", "top_p") => Some("topP"),
        ("google", "top_k") => Some("topK"),
        ("google", "presence_penalty") => Some("presencePenalty"),
        ("google", "frequency_penalty") => Some("frequencyPenalty"),
        ("google", _) => None,
        ("cohere", "top_p") => Some("p"),
        ("cohere", "top_k") => Some("k"),
        ("cohere", "seed" | "presence_penalty" | "frequency_penalty") => Some(param),
        ("cohere", _) => None,
        ("llamacpp", "seed" | "top_p" | "top_k" | "min_p") => Some(param),
        ("huggingface_local", "seed" | "top_p") => Some(param),
        _ => None,
    }
}

/// Puts the request's sampling parameters into `args.extra` under the served model's own field names, or refuses
/// the first one its backend cannot honour.
pub fn sampling_for_model(
    spec: &ModelSpec,
    model: &str,
    sampling: &Map<String, Value>,
    args: &mut GenArgs,
) -> Result<(), ApiError> {
    for (param, _) in SAMPLING {
        let Some(v) = sampling.get(*param) else { continue };
        match backend_field(spec, param) {
            Some(field) => {
                args.extra.insert(field.to_string(), v.clone());
            }
            None => {
                return Err(ApiError::invalid(
                    Some(param),
                    format!(
                        "`{param}` is not supported by model `{model}` (backend {}).",
                        spec.backend().unwrap_or("?")
                    ),
                )
                .with_code("unsupported_parameter"))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// Before: each of these was answered 200 as if it had been honoured.
    #[test]
    fn refuses_what_no_backend_does() {
        for (body, param) in [
            (json!({"tools": [{"type": "function", "function": {"name": "f"}}]}), "tools"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"response_format": {"type": "json_object"}}), "response_format"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
        ] {
            let e = refuse_unsupported(&obj(body.clone())).expect_err(&body.to_string());
            assert_eq!((e.status.as_u16(), e.param), (400, Some(param)), "{body}");
        }
        for body in [
            json!({"tools": [], "tool_choice": "none", "logprobs": false, "response_format": {"type": "text"},
                   "logit_bias": {}, "modalities": ["text"], "user": "u"}),
            json!({}),
        ] {
            assert!(refuse_unsupported(&obj(body.clone())).is_ok(), "{body}");
        }
    }

    #[test]
    fn stop_is_a_string_or_a_short_list() {
        assert_eq!(parse_stop(&obj(json!({"stop": "\n"}))), Ok(vec!["\n".to_string()]));
        assert_eq!(parse_stop(&obj(json!({"stop": ["a", "", "b"]}))), Ok(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(parse_stop(&obj(json!({"stop": null}))), Ok(vec![]));
        for bad in [json!(3), json!(["a", 1]), json!(["a", "b", "c", "d", "e"])] {
            assert_eq!(parse_stop(&obj(json!({"stop": bad}))).expect_err("bad").param, Some("stop"));
        }
    }

    #[test]
    fn sampling_is_renamed_or_refused_per_backend() {
        let spec = |backend: &str| {
            ModelSpec::parse_selector(&json!({"model_name": "m", "backend": backend, "model_id": "x"}).to_string())
                .expect("spec")
        };
        let sampling = parse_sampling(&obj(json!({"seed": 7, "top_p": 0.5}))).expect("valid");
        let fields = |backend: &str| -> Result<Vec<String>, Option<&'static str>> {
            let mut args = GenArgs::default();
            sampling_for_model(&spec(backend), "m", &sampling, &mut args).map_err(|e| e.param)?;
            Ok(args.extra.keys().cloned().collect())
        };
        assert_eq!(fields("openai"), Ok(vec!["seed".into(), "top_p".into()]));
        assert_eq!(fields("mistral"), Ok(vec!["random_seed".into(), "top_p".into()]));
        assert_eq!(fields("google"), Ok(vec!["seed".into(), "topP".into()]));
        assert_eq!(fields("cohere"), Ok(vec!["seed".into(), "p".into()]));
        assert_eq!(fields("llamacpp"), Ok(vec!["seed".into(), "top_p".into()]));
        assert_eq!(fields("anthropic"), Err(Some("seed")));
        let penalty = parse_sampling(&obj(json!({"presence_penalty": 0.5}))).expect("valid");
        for backend in ["llamacpp", "huggingface_local", "anthropic"] {
            let e = sampling_for_model(&spec(backend), "m", &penalty, &mut GenArgs::default()).expect_err(backend);
            assert_eq!(e.param, Some("presence_penalty"));
        }
        for bad in [json!({"top_p": 1.5}), json!({"seed": "x"}), json!({"frequency_penalty": -3})] {
            assert!(parse_sampling(&obj(bad.clone())).is_err(), "{bad}");
        }
    }
}
