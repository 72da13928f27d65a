//! Every remote backend against a fake server on 127.0.0.1 that speaks the provider's real wire format (request
//! paths, auth headers, bodies, error bodies and rate-limit headers), plus the executor's fault handling.
//!
//! Each test asserts what was sent, how many attempts were made, and that the API key shows up nowhere but in
//! its header: not in the triple, not in errors (Display or Debug).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clem_backends::{load_spec, LoadContext};
use clem_core::keys::Keys;
use clem_core::{GenArgs, Generation, LoadedModel, Message, ModelSpec};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk-SECRET-4f9c2a7e1b3d5f60";

/// A fake provider: its own runtime keeps the server alive while the test calls the synchronous model.
struct Fake {
    rt: Runtime,
    server: MockServer,
}

impl Fake {
    fn start() -> Fake {
        let rt = Runtime::new().expect("runtime");
        let server = rt.block_on(MockServer::start());
        Fake { rt, server }
    }
    fn uri(&self) -> String {
        self.server.uri()
    }
    fn mount(&self, mock: Mock) {
        self.rt.block_on(mock.mount(&self.server));
    }
    fn requests(&self) -> Vec<Request> {
        self.rt.block_on(self.server.received_requests()).unwrap_or_default()
    }
}

fn keys(sections: Value) -> Keys {
    Keys::from_json_str(&sections.to_string(), Path::new("key.json")).expect("keys")
}

fn load(entry: Value, keys: Keys) -> LoadedModel {
    let spec: ModelSpec = serde_json::from_value(entry).expect("spec");
    load_spec(&spec, &LoadContext { keys, ..LoadContext::default() }).expect("loads")
}

/// Tiny retry delays so the suite stays fast.
fn fast(mut config: Value) -> Value {
    if let Value::Object(m) = &mut config {
        m.entry("retry_base_delay").or_insert(json!(0.001));
        m.entry("retry_max_delay").or_insert(json!(2));
        m.entry("timeout").or_insert(json!(10));
    }
    config
}

fn assert_no_key(text: &str) {
    assert!(!text.contains(KEY), "the API key leaked into: {text}");
    assert!(!text.contains("4f9c2a7e1b3d"), "part of the API key leaked into: {text}");
}

fn assert_generation_clean(g: &Generation) {
    assert_no_key(&g.prompt.to_string());
    assert_no_key(&g.response.to_string());
    assert_no_key(&format!("{g:?}"));
}

fn assert_error_clean(e: &clem_core::ModelError) {
    assert_no_key(&e.to_string());
    assert_no_key(&format!("{e:?}"));
}

fn chat_ok(content: &str) -> Value {
    json!({
        "id": "chatcmpl-abc123", "object": "chat.completion", "created": 1_741_569_952, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29},
        "system_fingerprint": "fp_1"
    })
}

fn openai_error(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn body_of(r: &Request) -> Value {
    serde_json::from_slice(&r.body).expect("JSON request body")
}

fn openai_model(fake: &Fake, mut config: Value) -> LoadedModel {
    if let Value::Object(c) = &mut config {
        c.insert("base_url".into(), json!(format!("{}/v1", fake.uri())));
    }
    load(
        json!({"model_name": "gpt-test", "backend": "openai", "model_id": "gpt-4o", "model_config": fast(config)}),
        keys(json!({"openai": {"api_key": KEY, "organisation": "org-clem"}})),
    )
}

// ---------------------------------------------------------------- providers

#[test]
fn openai_sends_chat_completions_and_keeps_the_exact_response() {
    let fake = Fake::start();
    let reply = chat_ok("Paris");
    let expected_body = json!({"model": "gpt-4o", "messages": [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Capital of France?"}], "temperature": 0.0, "max_tokens": 50, "seed": 1});
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .and(header("openai-organization", "org-clem"))
            .and(header("content-type", "application/json"))
            .and(body_json(&expected_body))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(&reply)
                    .insert_header("x-ratelimit-remaining-requests", "499")
                    .insert_header("x-ratelimit-reset-requests", "120ms"),
            ),
    );
    let model = openai_model(&fake, json!({"extra_body": {"seed": 1}}));
    let messages = [Message::system(""), Message::system("Answer briefly."), Message::user("Capital of France?")];
    let g = model.generate_response(&messages, &GenArgs::new(0.0, 50)).expect("generates");
    assert_eq!(g.response_text, "Paris");
    assert_eq!(g.prompt, expected_body);
    let mut response = g.response.clone();
    let clem = response.as_object_mut().and_then(|o| o.remove("clem_player")).expect("clem_player");
    assert_eq!(response, reply, "the response is the provider's JSON, unchanged");
    assert_eq!(clem["attempts"], json!(1));
    assert_eq!(clem["model_name"], json!("gpt-test"));
    assert_eq!(clem["response"], json!("Paris"));
    assert!(clem["call_duration"].is_string() && clem["call_start"].is_string());
    assert_eq!(fake.requests().len(), 1);
    assert_generation_clean(&g);
}

#[test]
fn openai_compatible_tolerates_reasoning_fields_and_missing_usage() {
    let fake = Fake::start();
    let reply = json!({"id": "x", "object": "chat.completion", "model": "local",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Paris", "reasoning_content": "France's capital..."}}]});
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(&reply)),
    );
    let model = load(
        json!({"model_name": "local", "backend": "openai_compatible", "model_id": "qwen3",
               "model_config": fast(json!({}))}),
        keys(json!({"openai_compatible": {"api_key": KEY, "base_url": format!("{}/v1/", fake.uri())}})),
    );
    let g = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect("generates");
    assert_eq!(g.response_text, "Paris");
    assert_eq!(g.response["choices"][0]["message"]["reasoning_content"], json!("France's capital..."));
    assert_generation_clean(&g);
    // `reasoning` (vLLM, OpenRouter) instead of `reasoning_content`, and no key at all: no auth header.
    let fake = Fake::start();
    fake.mount(Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(
        ResponseTemplate::new(200).set_body_json(
            json!({"choices": [{"message": {"role": "assistant", "content": "Rome", "reasoning": "Italy..."}}]}),
        ),
    ));
    let model = load(
        json!({"model_name": "local", "backend": "openai_compatible", "model_id": "m",
               "model_config": {"base_url": format!("{}/v1", fake.uri())}}),
        Keys::from_env(vec![]),
    );
    let g = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect("generates");
    assert_eq!(g.response_text, "Rome");
    assert!(fake.requests()[0].headers.get("authorization").is_none());
}

#[test]
fn openrouter_adds_its_default_extra_body() {
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/api/v1/chat/completions"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(chat_ok("ok"))),
    );
    let model = load(
        json!({"model_name": "or", "backend": "openrouter", "model_id": "meta-llama/llama-3.3-70b-instruct",
               "model_config": fast(json!({}))}),
        keys(json!({"openrouter": {"api_key": KEY, "base_url": format!("{}/api/v1", fake.uri())}})),
    );
    let g = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect("generates");
    let sent = body_of(&fake.requests()[0]);
    assert_eq!(sent["provider"], json!({"quantizations": ["fp8"]}));
    assert_eq!(sent["model"], json!("meta-llama/llama-3.3-70b-instruct"));
    assert_eq!(g.prompt, sent);
}

#[test]
fn azure_gpt_and_claude_use_their_sections_and_api_key_header() {
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/openai/v1/chat/completions"))
            .and(header("api-key", KEY))
            .respond_with(ResponseTemplate::new(200).set_body_json(chat_ok("gpt says hi"))),
    );
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/anthropic/v1/messages"))
            .and(header("api-key", KEY))
            .and(header("anthropic-version", "2023-06-01"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "msg_1", "type": "message",
                "role": "assistant", "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "claude says hi"}],
                "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 4}}))),
    );
    let k = keys(json!({"azure_gpt": {"api_key": KEY, "base_url": fake.uri()},
                        "azure_claude": {"api_key": KEY, "base_url": format!("{}/anthropic", fake.uri())}}));
    let gpt = load(
        json!({"model_name": "az-gpt", "backend": "azure", "model_id": "gpt-4o", "model_config": fast(json!({}))}),
        k.clone(),
    );
    let claude = load(
        json!({"model_name": "az-claude", "backend": "azure", "model_id": "claude-sonnet-4-5", "model_config": fast(json!({}))}),
        k,
    );
    let args = GenArgs::default();
    assert_eq!(gpt.generate_response(&[Message::user("hi")], &args).expect("gpt").response_text, "gpt says hi");
    assert_eq!(
        claude.generate_response(&[Message::user("hi")], &args).expect("claude").response_text,
        "claude says hi"
    );
    // Missing section: the error names azure_claude and its variable.
    let spec: ModelSpec =
        serde_json::from_value(json!({"model_name": "c", "backend": "azure", "model_id": "claude-x"})).expect("spec");
    let e = load_spec(&spec, &LoadContext { keys: Keys::from_env(vec![]), ..LoadContext::default() })
        .err()
        .expect("no key")
        .to_string();
    assert!(e.contains("azure_claude") && e.contains("$AZURE_CLAUDE_API_KEY"), "{e}");
}

#[test]
fn anthropic_messages_api_with_thinking_and_overload_retry() {
    let fake = Fake::start();
    let reply = json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "thinking", "thinking": "The capital of France is Paris.", "signature": "sig"},
                    {"type": "text", "text": "Paris"}],
        "stop_reason": "end_turn", "stop_sequence": null, "usage": {"input_tokens": 20, "output_tokens": 30}});
    // 529 overloaded first (Anthropic's own status), then the reply.
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/v1/messages"))
            .respond_with(ResponseTemplate::new(529).set_body_json(
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ))
            .up_to_n_times(1),
    );
    let expected = json!({"model": "claude-sonnet-4-5", "max_tokens": 1124, "messages": [{"role": "user", "content": "Capital?"}],
        "system": "Be brief.", "temperature": 1, "thinking": {"type": "enabled", "budget_tokens": 1024}});
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/v1/messages"))
            .and(header("x-api-key", KEY))
            .and(header("anthropic-version", "2023-06-01"))
            .and(body_json(&expected))
            .respond_with(ResponseTemplate::new(200).set_body_json(&reply)),
    );
    let model = load(
        json!({"model_name": "claude", "backend": "anthropic", "model_id": "claude-sonnet-4-5",
               "model_config": fast(json!({"base_url": fake.uri(), "thinking_mode": true, "thinking_budget": 1024}))}),
        keys(json!({"anthropic": {"api_key": KEY}})),
    );
    let g = model
        .generate_response(&[Message::system("Be brief."), Message::user("Capital?")], &GenArgs::new(0.0, 100))
        .expect("generates");
    assert_eq!(g.response_text, "Paris");
    assert_eq!(g.response["content"][0]["thinking"], json!("The capital of France is Paris."), "reasoning kept");
    assert_eq!(g.response["clem_player"]["attempts"], json!(2));
    assert_eq!(fake.requests().len(), 2);
    assert_generation_clean(&g);
}

#[test]
fn google_generate_content_honours_retry_info() {
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/v1beta/models/gemini-2.5-flash:generateContent"))
            .respond_with(ResponseTemplate::new(429).set_body_json(json!({"error": {"code": 429,
                "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0s"}]}})))
            .up_to_n_times(1),
    );
    let reply = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking...", "thought": true},
        {"text": "Paris"}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 1, "totalTokenCount": 9}, "modelVersion": "gemini-2.5-flash"});
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/v1beta/models/gemini-2.5-flash:generateContent"))
            .and(header("x-goog-api-key", KEY))
            .respond_with(ResponseTemplate::new(200).set_body_json(&reply)),
    );
    let model = load(
        json!({"model_name": "gemini", "backend": "google", "model_id": "gemini-2.5-flash",
               "model_config": fast(json!({"base_url": format!("{}/v1beta", fake.uri()), "thinking_mode": true}))}),
        keys(json!({"google": {"api_key": KEY}})),
    );
    let msgs =
        [Message::system("Be brief."), Message::user("Capital?"), Message::assistant("Of?"), Message::user("France")];
    let g = model.generate_response(&msgs, &GenArgs::new(0.0, 100)).expect("generates");
    assert_eq!(g.response_text, "Paris");
    let sent = body_of(&fake.requests()[1]);
    assert_eq!(sent["contents"][1], json!({"role": "model", "parts": [{"text": "Of?"}]}));
    assert_eq!(sent["system_instruction"], json!({"parts": [{"text": "Be brief."}]}));
    assert_eq!(sent["generationConfig"]["thinkingConfig"]["thinkingBudget"], json!(4096));
    assert!(!fake.requests()[1].url.as_str().contains("key="), "the key stays out of the URL");
    assert_eq!(g.response["clem_player"]["attempts"], json!(2));
    assert_generation_clean(&g);
}

#[test]
fn mistral_chat_and_its_error_body() {
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .and(body_json(json!({"model": "mistral-large-latest", "messages": [{"role": "user", "content": "hi"}],
                "temperature": 0.0, "max_tokens": 300})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "m1", "object": "chat.completion",
                "model": "mistral-large-latest", "choices": [{"index": 0, "message": {"role": "assistant",
                "content": "Bonjour", "tool_calls": null}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "total_tokens": 7, "completion_tokens": 2}}))),
    );
    let k = keys(json!({"mistral": {"api_key": KEY}}));
    let entry = |id: &str| {
        json!({"model_name": "mistral", "backend": "mistral", "model_id": id,
               "model_config": fast(json!({"base_url": format!("{}/v1", fake.uri())}))})
    };
    let g = load(entry("mistral-large-latest"), k.clone())
        .generate_response(&[Message::user("hi")], &GenArgs::default())
        .expect("generates");
    assert_eq!(g.response_text, "Bonjour");
    // Mistral's 422 body shape, not retried.
    fake.mount(
        Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(ResponseTemplate::new(422).set_body_json(
            json!({"object": "error", "message": "Invalid model: nope", "type": "invalid_model", "param": null, "code": "1500"}),
        )),
    );
    let e = load(entry("nope"), k).generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("422");
    let text = e.to_string();
    assert!(
        text.contains("HTTP 422") && text.contains("Invalid model: nope") && text.contains("invalid_model"),
        "{text}"
    );
    assert!(text.contains("not retried"), "{text}");
    assert_eq!(fake.requests().len(), 2);
    assert_error_clean(&e);
}

#[test]
fn cohere_v2_chat() {
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST"))
            .and(path("/v2/chat"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .and(body_json(json!({"model": "command-a-03-2025", "messages": [{"role": "system", "content": "s"},
                {"role": "user", "content": "hi"}], "temperature": 0.0, "max_tokens": 300})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "c1", "finish_reason": "COMPLETE",
                "message": {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                "usage": {"billed_units": {"input_tokens": 2, "output_tokens": 1}, "tokens": {"input_tokens": 60, "output_tokens": 1}}}))),
    );
    let model = load(
        json!({"model_name": "command", "backend": "cohere", "model_id": "command-a-03-2025",
               "model_config": fast(json!({"base_url": fake.uri()}))}),
        keys(json!({"cohere": {"api_key": KEY}})),
    );
    let g =
        model.generate_response(&[Message::system("s"), Message::user("hi")], &GenArgs::default()).expect("generates");
    assert_eq!(g.response_text, "Hello");
    assert_generation_clean(&g);
}

/// Every provider's usage, from its own field names, becomes one normalised `Usage` (reasoning tokens included
/// where the provider counts them) and a finish reason, while the recorded response keeps the provider's JSON
/// unchanged.
#[test]
fn usage_and_finish_reason_of_every_provider_are_normalised() {
    use clem_core::{FinishReason, Usage};
    let fake = Fake::start();
    let chat = |finish: &str, usage: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_741_569_952, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": finish}],
               "usage": usage})
    };
    // (backend, route, reply, config, key sections, expected usage, expected finish)
    let openai_usage = json!({"prompt_tokens": 19, "completion_tokens": 1034, "total_tokens": 1053,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 1024, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}});
    let openrouter_usage = json!({"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52, "cost": 0.00012,
        "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 30}});
    let claude = |stop: &str| {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "ok"}],
               "stop_reason": stop, "stop_sequence": null,
               "usage": {"input_tokens": 20, "cache_creation_input_tokens": 7, "cache_read_input_tokens": 3,
                         "output_tokens": 30, "service_tier": "standard"}})
    };
    let gemini = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hm", "thought": true},
        {"text": "ok"}]}, "finishReason": "MAX_TOKENS", "index": 0}],
        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 10, "thoughtsTokenCount": 102,
                          "totalTokenCount": 120, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]},
        "modelVersion": "gemini-2.5-flash"});
    let cohere = json!({"id": "c1", "finish_reason": "MAX_TOKENS",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 418},
                  "tokens": {"input_tokens": 71, "output_tokens": 418}}});
    let base = fake.uri();
    let cases = [
        (
            "openai",
            "/oa/chat/completions",
            chat("stop", openai_usage),
            json!({"base_url": format!("{base}/oa")}),
            Usage::new(19, 1034).with_reasoning(Some(1024)),
            FinishReason::Stop,
        ),
        (
            "openai_compatible",
            "/oc/chat/completions",
            chat("length", json!({"prompt_tokens": 4, "completion_tokens": 50, "total_tokens": 54})),
            json!({"base_url": format!("{base}/oc")}),
            Usage::new(4, 50),
            FinishReason::Length,
        ),
        (
            "openrouter",
            "/or/chat/completions",
            chat("stop", openrouter_usage),
            json!({"base_url": format!("{base}/or")}),
            Usage::new(12, 40).with_reasoning(Some(30)),
            FinishReason::Stop,
        ),
        (
            "mistral",
            "/mi/chat/completions",
            chat("model_length", json!({"prompt_tokens": 5, "total_tokens": 7, "completion_tokens": 2})),
            json!({"base_url": format!("{base}/mi")}),
            Usage::new(5, 2),
            FinishReason::Length,
        ),
        (
            "azure",
            "/openai/v1/chat/completions",
            chat(
                "stop",
                json!({"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
                             "completion_tokens_details": {"reasoning_tokens": 0}}),
            ),
            json!({}),
            Usage::new(9, 3).with_reasoning(Some(0)),
            FinishReason::Stop,
        ),
        (
            "anthropic",
            "/an/v1/messages",
            claude("max_tokens"),
            json!({"base_url": format!("{base}/an")}),
            Usage::new(30, 30),
            FinishReason::Length,
        ),
        (
            "google",
            "/go/models/gemini-2.5-flash:generateContent",
            gemini,
            json!({"base_url": format!("{base}/go")}),
            Usage::new(8, 112).with_reasoning(Some(102)),
            FinishReason::Length,
        ),
        (
            "cohere",
            "/co/v2/chat",
            cohere,
            json!({"base_url": format!("{base}/co")}),
            Usage::new(5, 418),
            FinishReason::Length,
        ),
    ];
    let k = keys(json!({"openai": {"api_key": KEY}, "openai_compatible": {"api_key": KEY},
        "openrouter": {"api_key": KEY}, "mistral": {"api_key": KEY}, "azure_gpt": {"api_key": KEY, "base_url": base},
        "anthropic": {"api_key": KEY}, "google": {"api_key": KEY}, "cohere": {"api_key": KEY}}));
    for (backend, route, reply, config, usage, finish) in cases {
        fake.mount(
            Mock::given(method("POST")).and(path(route)).respond_with(ResponseTemplate::new(200).set_body_json(&reply)),
        );
        let model_id = if backend == "google" { "gemini-2.5-flash" } else { "m" };
        let model = load(
            json!({"model_name": backend, "backend": backend, "model_id": model_id, "model_config": fast(config)}),
            k.clone(),
        );
        let g = model.generate_response(&[Message::user("hi")], &GenArgs::new(0.0, 50)).expect(backend);
        assert_eq!(g.response_text, "ok", "{backend}");
        assert_eq!((g.usage, g.finish_reason), (Some(usage), Some(finish)), "{backend}");
        let mut recorded = g.response.clone();
        recorded.as_object_mut().and_then(|o| o.remove("clem_player")).expect("clem_player");
        assert_eq!(recorded, reply, "{backend}: the response is the provider's JSON, unchanged");
    }
    // A provider that sends no usage: none, not zeros.
    fake.mount(Mock::given(method("POST")).and(path("/none/chat/completions")).respond_with(
        ResponseTemplate::new(200).set_body_json(
            json!({"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": null}]}),
        ),
    ));
    let model = load(
        json!({"model_name": "n", "backend": "openai_compatible", "model_id": "m",
               "model_config": fast(json!({"base_url": format!("{base}/none")}))}),
        k,
    );
    let g = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect("generates");
    assert_eq!((g.usage, g.finish_reason), (None, None));
}

#[test]
fn missing_key_names_section_and_env_variable() {
    for (backend, section, var) in [
        ("openai", "openai", "OPENAI_API_KEY"),
        ("anthropic", "anthropic", "ANTHROPIC_API_KEY"),
        ("google", "google", "GEMINI_API_KEY"),
        ("mistral", "mistral", "MISTRAL_API_KEY"),
        ("cohere", "cohere", "CO_API_KEY"),
        ("openrouter", "openrouter", "OPENROUTER_API_KEY"),
        ("azure", "azure_gpt", "AZURE_OPENAI_API_KEY"),
    ] {
        let spec: ModelSpec =
            serde_json::from_value(json!({"model_name": "m", "backend": backend, "model_id": "x"})).expect("spec");
        let e = load_spec(&spec, &LoadContext { keys: Keys::from_env(vec![]), ..LoadContext::default() })
            .err()
            .expect("no key")
            .to_string();
        assert!(e.contains(&format!("{section:?}")) && e.contains(&format!("${var}")), "{backend}: {e}");
    }
    let spec: ModelSpec =
        serde_json::from_value(json!({"model_name": "m", "backend": "openai_compatible", "model_id": "x"}))
            .expect("spec");
    let e = load_spec(&spec, &LoadContext::default()).err().expect("no base_url").to_string();
    assert!(e.contains("base_url") && e.contains("openai_compatible"), "{e}");
}

// ---------------------------------------------------------------- faults

#[test]
fn fault_429_with_retry_after_is_honoured() {
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(429)
                    .insert_header("retry-after", "1")
                    .insert_header("x-ratelimit-remaining-requests", "0")
                    .insert_header("x-ratelimit-reset-requests", "1s")
                    .set_body_json(openai_error("Rate limit reached for requests", "requests", "rate_limit_exceeded")),
            )
            .up_to_n_times(1),
    );
    fake.mount(Mock::given(method("POST")).respond_with(ResponseTemplate::new(200).set_body_json(chat_ok("ok"))));
    let model = openai_model(&fake, json!({}));
    let start = Instant::now();
    let g = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect("second attempt succeeds");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(950), "Retry-After: 1 was not honoured ({waited:?})");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(g.response["clem_player"]["attempts"], json!(2));
    assert_eq!(fake.requests().len(), 2);
    assert_generation_clean(&g);
}

#[test]
fn fault_500_then_success() {
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500).set_body_json(openai_error(
                "The server had an error while processing your request.",
                "server_error",
                "",
            )))
            .up_to_n_times(1),
    );
    fake.mount(Mock::given(method("POST")).respond_with(ResponseTemplate::new(200).set_body_json(chat_ok("fine"))));
    let g = openai_model(&fake, json!({})).generate_response(&[Message::user("hi")], &GenArgs::default()).expect("ok");
    assert_eq!(g.response_text, "fine");
    assert_eq!(g.response["clem_player"]["attempts"], json!(2));
    assert_eq!(fake.requests().len(), 2);
    // The prompt is the exact body sent, the same on both attempts.
    let reqs = fake.requests();
    assert_eq!(body_of(&reqs[0]), body_of(&reqs[1]));
    assert_eq!(g.prompt, body_of(&reqs[1]));
}

#[test]
fn fault_503_forever_gives_up_after_max_attempts() {
    let fake = Fake::start();
    fake.mount(Mock::given(method("POST")).respond_with(ResponseTemplate::new(503).set_body_json(openai_error(
        "The engine is currently overloaded, please try again later",
        "server_error",
        "",
    ))));
    let model = openai_model(&fake, json!({"max_attempts": 3}));
    let e = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("never succeeds");
    let text = e.to_string();
    assert!(text.contains("HTTP 503 Service Unavailable"), "{text}");
    assert!(text.contains("currently overloaded") && text.contains("server_error"), "{text}");
    assert!(text.contains("gave up after 3 attempt(s)"), "{text}");
    assert_eq!(fake.requests().len(), 3);
    assert_error_clean(&e);
}

#[test]
fn fault_401_is_not_retried_and_the_echoed_key_is_scrubbed() {
    let fake = Fake::start();
    // A server that echoes the key it got (OpenAI masks it; a careless proxy might not).
    fake.mount(
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(401).set_body_json(openai_error(
            &format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."),
            "invalid_request_error",
            "invalid_api_key",
        ))),
    );
    let e =
        openai_model(&fake, json!({})).generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("401");
    let text = e.to_string();
    assert!(text.contains("HTTP 401 Unauthorized") && text.contains("Incorrect API key provided"), "{text}");
    assert!(text.contains("invalid_request_error") && text.contains("not retried: authentication failed"), "{text}");
    assert!(text.contains("(1 attempt(s))"), "{text}");
    assert_eq!(fake.requests().len(), 1);
    assert_error_clean(&e);
}

#[test]
fn fault_400_403_404_are_not_retried() {
    for status in [400u16, 403, 404] {
        let fake = Fake::start();
        fake.mount(Mock::given(method("POST")).respond_with(
            ResponseTemplate::new(status).set_body_json(openai_error("nope", "invalid_request_error", "x")),
        ));
        let e = openai_model(&fake, json!({})).generate_response(&[Message::user("hi")], &GenArgs::default());
        let text = e.expect_err("fails").to_string();
        assert!(text.contains(&format!("HTTP {status}")) && text.contains("not retried"), "{text}");
        assert_eq!(fake.requests().len(), 1, "{status}");
    }
}

#[test]
fn fault_truncated_json_keeps_the_raw_body() {
    let fake = Fake::start();
    let truncated = r#"{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "mess"#;
    fake.mount(
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(truncated.as_bytes().to_vec(), "application/json")),
    );
    let e =
        openai_model(&fake, json!({})).generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("bad");
    let text = e.to_string();
    assert!(text.contains("not valid JSON") && text.contains(truncated), "{text}");
    assert_eq!(fake.requests().len(), 1);
    assert_error_clean(&e);
    // Valid JSON without a reply in it: an error that also keeps the body.
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list"}))),
    );
    let e =
        openai_model(&fake, json!({})).generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("bad");
    assert!(e.to_string().contains("no reply") && e.to_string().contains(r#"{"object":"list"}"#), "{e}");
}

#[test]
fn fault_slow_response_times_out_and_is_retried_boundedly() {
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(chat_ok("late")).set_delay(Duration::from_secs(3))),
    );
    let model = openai_model(&fake, json!({"timeout": 0.2, "max_attempts": 2}));
    let start = Instant::now();
    let e = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("times out");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    let text = e.to_string();
    assert!(text.contains("no response within 0.2 s") && text.contains("gave up after 2 attempt(s)"), "{text}");
    assert_eq!(fake.requests().len(), 2);
    assert_error_clean(&e);
}

#[test]
fn fault_connection_reset_is_retried_then_reported() {
    // A server that reads each request and hangs up without answering.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{\"id\": ");
            drop(stream);
        }
    });
    let model = load(
        json!({"model_name": "gpt-test", "backend": "openai", "model_id": "gpt-4o",
               "model_config": fast(json!({"base_url": format!("http://{addr}/v1"), "max_attempts": 3}))}),
        keys(json!({"openai": {"api_key": KEY}})),
    );
    let e = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("resets");
    let text = e.to_string();
    assert!(text.contains("connection failed") && text.contains("gave up after 3 attempt(s)"), "{text}");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_error_clean(&e);
    // Nothing listening at all: refused connections, also bounded.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let model = load(
        json!({"model_name": "gpt-test", "backend": "openai", "model_id": "gpt-4o",
               "model_config": fast(json!({"base_url": format!("http://{addr}/v1"), "max_attempts": 2}))}),
        keys(json!({"openai": {"api_key": KEY}})),
    );
    let e = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("refused");
    assert!(e.to_string().contains("gave up after 2 attempt(s)"), "{e}");
    assert_error_clean(&e);
}

// ---------------------------------------------------------------- concurrency

/// Echoes the last user message back, after a delay.
fn echo(delay: Duration) -> impl Fn(&Request) -> ResponseTemplate + Send + Sync + 'static {
    move |r: &Request| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let last = body["messages"].as_array().and_then(|m| m.last()).map(|m| m["content"].clone()).unwrap_or_default();
        ResponseTemplate::new(200).set_body_json(chat_ok(last.as_str().unwrap_or(""))).set_delay(delay)
    }
}

#[test]
fn batch_runs_concurrently_within_the_limit_and_keeps_order() {
    let fake = Fake::start();
    fake.mount(Mock::given(method("POST")).respond_with(echo(Duration::from_millis(200))));
    let model = openai_model(&fake, json!({"max_concurrency": 4}));
    let batch: Vec<Vec<Message>> = (0..16).map(|i| vec![Message::user(format!("item {i}"))]).collect();
    let start = Instant::now();
    let results = model.generate_batch_response(&batch, &GenArgs::default());
    let took = start.elapsed();
    let texts: Vec<String> = results.into_iter().map(|r| r.expect("ok").response_text).collect();
    let expected: Vec<String> = (0..16).map(|i| format!("item {i}")).collect();
    assert_eq!(texts, expected, "results come back in input order");
    // 16 requests of 200 ms, 4 at a time: about 800 ms; one at a time would be 3.2 s, all at once 200 ms.
    assert!(took >= Duration::from_millis(750), "more than 4 at once? {took:?}");
    assert!(took < Duration::from_millis(2500), "not concurrent? {took:?}");
    assert_eq!(fake.requests().len(), 16);
}

#[test]
fn batch_failures_stay_in_their_slot() {
    let fake = Fake::start();
    fake.mount(
        Mock::given(method("POST"))
            .and(body_json(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "bad"}],
                "temperature": 0.0, "max_tokens": 300})))
            .respond_with(ResponseTemplate::new(400).set_body_json(openai_error(
                "bad input",
                "invalid_request_error",
                "x",
            ))),
    );
    fake.mount(Mock::given(method("POST")).respond_with(echo(Duration::ZERO)));
    let model = openai_model(&fake, json!({}));
    let batch = vec![vec![Message::user("a")], vec![Message::user("bad")], vec![Message::user("c")]];
    let results = model.generate_batch_response(&batch, &GenArgs::default());
    assert_eq!(results[0].as_ref().expect("a").response_text, "a");
    assert!(results[1].as_ref().expect_err("bad").to_string().contains("bad input"));
    assert_eq!(results[2].as_ref().expect("c").response_text, "c");
}

#[test]
fn requests_per_minute_spaces_request_starts() {
    let fake = Fake::start();
    fake.mount(Mock::given(method("POST")).respond_with(echo(Duration::ZERO)));
    // 1200 per minute: one start every 50 ms, whatever the concurrency.
    let model = openai_model(&fake, json!({"requests_per_minute": 1200, "max_concurrency": 8}));
    let batch: Vec<Vec<Message>> = (0..6).map(|i| vec![Message::user(format!("{i}"))]).collect();
    let start = Instant::now();
    let results = model.generate_batch_response(&batch, &GenArgs::default());
    assert!(results.iter().all(Result::is_ok));
    assert!(start.elapsed() >= Duration::from_millis(240), "{:?}", start.elapsed());
}
