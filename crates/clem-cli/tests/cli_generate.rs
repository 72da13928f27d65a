//! `clem generate` from the shell: the reply, or the whole triple as JSON; clear errors for missing
//! credentials (naming key.json and the environment fallback) with no key in any output.

mod common;

use common::{clem, stderr, stdout};
use serde_json::Value;

#[test]
fn generate_with_the_mock_player() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = clem(dir.path(), &["generate", "-m", r#"{"model_name": "mock", "replies": ["GREET: hi"]}"#, "Say hi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim_end(), "GREET: hi");
    std::fs::write(dir.path().join("m.json"), r#"[{"role": "user", "content": "echo me"}]"#).expect("write");
    let out = clem(dir.path(), &["generate", "-m", "mock", "--messages", "m.json", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let triple: Value = serde_json::from_str(&stdout(&out)).expect("JSON triple");
    assert_eq!(triple["response_text"], "echo me");
    assert_eq!(triple["response"]["clem_player"]["model_name"], "mock");
    assert!(triple["prompt"].is_object());
    // The normalised usage beside the triple (the mock counts words), the recorded response without it.
    assert_eq!(triple["usage"], serde_json::json!({"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}));
    assert_eq!(triple["finish_reason"], "stop");
    assert!(triple["response"].get("usage").is_none());
}

#[test]
fn missing_credentials_and_bad_entries_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = clem(dir.path(), &["generate", "-m", "gpt-4o", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("openai") && err.contains("OPENAI_API_KEY"), "{err}");
    // An entry with errors fails with every error listed, naming file, entry and key.
    std::fs::write(
        dir.path().join("model_registry.json"),
        r#"[{"model_name": "bad", "backend": "openai", "model_config": {"max_concurrency": "many"}}]"#,
    )
    .expect("write");
    let out = clem(dir.path(), &["generate", "-m", "bad", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("model_registry.json: entry 0 (bad): model_id: missing"), "{err}");
    assert!(err.contains("model_config.max_concurrency: must be a non-negative integer"), "{err}");
}
