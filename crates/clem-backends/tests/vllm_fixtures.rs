//! The vllm backend in attach mode against a fake server answering with recorded vLLM responses (vLLM's
//! OpenAI-compatible format, including its own fields: `prompt_logprobs`, `stop_reason`, `kv_transfer_params`,
//! `reasoning_content`, `service_tier`). Checks what is sent (template rendered here, `/v1/completions`,
//! model = huggingface_id, `extra_body`, bearer key from key.json `vllm`) and how replies are cleaned.

use std::path::Path;

use clem_backends::{load_spec, LoadContext};
use clem_core::keys::Keys;
use clem_core::{GenArgs, LoadedModel, Message, ModelSpec};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// `POST /v1/completions` as vLLM 0.10 answers it (trailing EOS kept: `skip_special_tokens=false` setups).
const COMPLETION: &str = r#"{
  "id": "cmpl-7f3d2c4b9a1e4e0f8d6b5a4c3b2a1908",
  "object": "text_completion",
  "created": 1732364512,
  "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
  "choices": [{
    "index": 0,
    "text": "GREET: Hello Ada, welcome!<|im_end|>",
    "logprobs": null,
    "finish_reason": "stop",
    "stop_reason": null,
    "prompt_logprobs": null
  }],
  "service_tier": null,
  "system_fingerprint": null,
  "usage": {"prompt_tokens": 31, "total_tokens": 40, "completion_tokens": 9, "prompt_tokens_details": null},
  "kv_transfer_params": null
}"#;

/// `POST /v1/chat/completions` from a server started with `--reasoning-parser deepseek_r1`.
const CHAT: &str = r#"{
  "id": "chatcmpl-1b2c3d4e5f60718293a4b5c6d7e8f901",
  "object": "chat.completion",
  "created": 1732364520,
  "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
  "choices": [{
    "index": 0,
    "message": {
      "role": "assistant",
      "reasoning_content": "The user wants a greeting for Ada.",
      "content": "GREET: Hello Ada, welcome!",
      "tool_calls": []
    },
    "logprobs": null,
    "finish_reason": "stop",
    "stop_reason": 128001
  }],
  "service_tier": null,
  "system_fingerprint": null,
  "usage": {"prompt_tokens": 25, "total_tokens": 34, "completion_tokens": 9, "prompt_tokens_details": null},
  "prompt_logprobs": null,
  "kv_transfer_params": null
}"#;

const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n\
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

struct Fake {
    rt: Runtime,
    server: MockServer,
}

impl Fake {
    fn start(route: &str, body: &str) -> Fake {
        let rt = Runtime::new().expect("runtime");
        let server = rt.block_on(MockServer::start());
        let body: Value = serde_json::from_str(body).expect("fixture is JSON");
        rt.block_on(
            Mock::given(method("POST"))
                .and(path(route))
                .and(header("authorization", "Bearer vllm-key"))
                .respond_with(ResponseTemplate::new(200).set_body_json(body))
                .mount(&server),
        );
        Fake { rt, server }
    }
    fn requests(&self) -> Vec<Request> {
        self.rt.block_on(self.server.received_requests()).unwrap_or_default()
    }
}

fn load(config: Value, base_url: &str) -> LoadedModel {
    let entry = json!({
        "model_name": "smol-vllm", "backend": "vllm", "huggingface_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "model_config": config,
    });
    let spec: ModelSpec = serde_json::from_value(entry).expect("spec");
    let keys = json!({"vllm": {"api_key": "vllm-key", "base_url": format!("{base_url}/v1")}});
    let keys = Keys::from_json_str(&keys.to_string(), Path::new("key.json")).expect("keys");
    load_spec(&spec, &LoadContext { keys, ..LoadContext::default() }).expect("loads")
}

fn messages() -> Vec<Message> {
    vec![Message::system(""), Message::user("Greet Ada."), Message::user("Start with GREET:")]
}

#[test]
fn completions_endpoint_renders_our_template_and_cleans() {
    let fake = Fake::start("/v1/completions", COMPLETION);
    let model = load(
        json!({"number_gpus": 2, "premade_chat_template": false, "custom_chat_template": TEMPLATE,
               "eos_to_cull": "<\\|im_end\\|>", "extra_body": {"top_k": 20}}),
        &fake.server.uri(),
    );
    let g = model.generate_response(&messages(), &GenArgs::new(0.0, 50)).expect("generates");
    assert_eq!(g.response_text, "GREET: Hello Ada, welcome!");
    let sent: Value = serde_json::from_slice(&fake.requests()[0].body).expect("json body");
    // Normalised (empty system dropped, same-role merged), then rendered by clemrs.
    let want = "<|im_start|>user\nGreet Ada.\n\nStart with GREET:<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(sent["prompt"], want);
    assert_eq!(sent["model"], "HuggingFaceTB/SmolLM2-135M-Instruct");
    assert_eq!((sent["max_tokens"].clone(), sent["top_k"].clone()), (json!(50), json!(20)));
    assert!(sent.get("messages").is_none());
    // The raw vLLM object is kept whole in the record, its own fields included.
    assert!(g.response.get("kv_transfer_params").is_some());
    assert_eq!(g.response["choices"][0]["stop_reason"], Value::Null);
    assert_eq!(g.prompt, sent);
    // vLLM's own counts, normalised.
    assert_eq!(g.usage, Some(clem_core::Usage::new(31, 9)));
    assert_eq!(g.finish_reason, Some(clem_core::FinishReason::Stop));
}

#[test]
fn chat_endpoint_when_the_entry_says_so() {
    let fake = Fake::start("/v1/chat/completions", CHAT);
    let model = load(
        json!({"number_gpus": 1, "premade_chat_template": true, "use_chat_endpoint": true,
               "eos_to_cull": "<\\|im_end\\|>"}),
        &fake.server.uri(),
    );
    let g = model.generate_response(&messages(), &GenArgs::new(0.5, 20)).expect("generates");
    // The answer, not the reasoning (vLLM's reasoning parser put that in `reasoning_content`).
    assert_eq!(g.response_text, "GREET: Hello Ada, welcome!");
    assert_eq!(g.response["choices"][0]["message"]["reasoning_content"], "The user wants a greeting for Ada.");
    assert_eq!(g.usage, Some(clem_core::Usage::new(25, 9)));
    let sent: Value = serde_json::from_slice(&fake.requests()[0].body).expect("json body");
    assert_eq!(sent["messages"][0]["content"], "Greet Ada.\n\nStart with GREET:");
    assert_eq!(sent["temperature"], 0.5);
}

#[test]
fn a_broken_reply_is_an_error_not_a_panic() {
    let fake = Fake::start("/v1/completions", r#"{"object": "text_completion", "choices": []}"#);
    let model = load(
        json!({"number_gpus": 1, "premade_chat_template": false, "custom_chat_template": TEMPLATE,
               "eos_to_cull": "x", "max_attempts": 1}),
        &fake.server.uri(),
    );
    let e = model.generate_response(&messages(), &GenArgs::default()).expect_err("no text");
    assert!(e.to_string().contains("choices[0]"), "{e}");
}

/// `POST /v1/completions` from a reasoning model served without a reasoning parser: the thinking is in the text.
const THINKING: &str = r#"{
  "id": "cmpl-0a1b2c3d4e5f", "object": "text_completion", "created": 1732364530,
  "model": "Qwen/Qwen3-8B",
  "choices": [{"index": 0, "text": "<think>\nThe user wants a greeting for Ada.\n</think>\n\nGREET: Hello Ada, welcome!<|im_end|>",
               "logprobs": null, "finish_reason": "stop", "stop_reason": null, "prompt_logprobs": null}],
  "usage": {"prompt_tokens": 31, "total_tokens": 52, "completion_tokens": 21}
}"#;

#[test]
fn cot_output_is_cut_from_the_reply_and_kept_as_cot_content() {
    let fake = Fake::start("/v1/completions", THINKING);
    let model = load(
        json!({"number_gpus": 1, "premade_chat_template": false, "custom_chat_template": TEMPLATE,
               "eos_to_cull": "<\\|im_end\\|>", "cot_output": true, "cot_start_tag": "<think>",
               "cot_end_tag": "</think>"}),
        &fake.server.uri(),
    );
    let g = model.generate_response(&messages(), &GenArgs::new(0.0, 200)).expect("generates");
    assert_eq!(g.response_text.trim(), "GREET: Hello Ada, welcome!");
    assert_eq!(g.response["cot_content"].as_str().map(str::trim), Some("The user wants a greeting for Ada."));
    // The provider's own object stays whole beside it.
    assert!(g.response["choices"][0]["text"].as_str().is_some_and(|t| t.starts_with("<think>")));
}
