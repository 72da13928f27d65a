//! `clem list`, `clem registry check`, `clem resolve` and `clem register` against real registries.
//! The clemcore registries are read from ../shared/fixtures (not copied into the repository).

mod common;

use common::{clem, fixture, stderr, stdout};
use serde_json::Value;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn lists_the_230_entries_in_file_order() {
    let Some(path) = fixture("clemcore-model-registry-230.json") else { return };
    let dir = scratch();
    let p = path.to_string_lossy();
    let out = clem(dir.path(), &["--registry", &p, "--no-default-registries", "list", "models"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let entries: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let expected: Vec<String> = entries
        .iter()
        .map(|e| format!("{}\t{}", e["model_name"].as_str().unwrap_or(""), e["backend"].as_str().unwrap_or("")))
        .collect();
    let got: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(got.len(), 230);
    assert_eq!(got, expected);
}

#[test]
fn check_reports_each_real_problem_of_the_230_registry() {
    let Some(path) = fixture("clemcore-model-registry-230.json") else { return };
    let dir = scratch();
    let out = clem(dir.path(), &["registry", "check", &path.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "errors must fail the check");
    let text = stdout(&out);
    let aleph: Vec<&str> = text.lines().filter(|l| l.contains("backend \"alephalpha\" does not exist")).collect();
    assert_eq!(aleph.len(), 4, "{text}");
    assert!(aleph.iter().all(|l| l.starts_with("error: ") && l.contains(": backend: ")));
    assert!(text.contains("entry 0 (slurk): release_date: missing"), "{text}");
    assert!(stderr(&out).contains("230 entries in 1 file"), "{}", stderr(&out));
    // Every problem line names file, entry and key.
    for line in text.lines() {
        assert!(line.contains(&*path.to_string_lossy()) && line.contains(": entry "), "{line}");
    }
}

#[test]
fn packaged_registry_is_clean_and_current_fixture_loads() {
    let dir = scratch();
    let out = clem(dir.path(), &["registry", "check"]);
    assert!(out.status.success(), "packaged registry has errors:\n{}", stdout(&out));
    let Some(path) = fixture("clemcore-model-registry-current.json") else { return };
    let out = clem(dir.path(), &["registry", "check", &path.to_string_lossy()]);
    assert!(stderr(&out).contains("18 entries in 1 file"), "{}", stderr(&out));
    // What the loader refuses, the check refuses too (#17): bitsandbytes flags set true.
    let text = stdout(&out);
    for entry in ["entry 7 (internvl3-14b)", "entry 8 (internvl3-38b)"] {
        assert!(
            text.contains(&format!("error: {}: {entry}: model_config.load_in_8bit: bitsandbytes", path.display())),
            "{text}"
        );
    }
}

#[test]
fn invalid_json_names_file_line_and_column() {
    let dir = scratch();
    std::fs::write(dir.path().join("model_registry.json"), "[\n  {\"model_name\": \"x\",}\n]").expect("write");
    let out = clem(dir.path(), &["list", "models"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("model_registry.json: invalid JSON at line 2, column"), "{}", stderr(&out));
}

#[test]
fn local_registry_comes_before_the_packaged_one() {
    let dir = scratch();
    std::fs::write(
        dir.path().join("model_registry.json"),
        r#"{"model_name": "gpt-4o", "backend": "openai", "model_id": "local-override"}"#,
    )
    .expect("write");
    let out = clem(dir.path(), &["resolve", "-m", "gpt-4o"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec: Value = serde_json::from_str(&stdout(&out)).expect("json on stdout");
    assert_eq!(spec["model_id"], "local-override");
    assert!(stderr(&out).contains("warning"), "missing metadata is warned about: {}", stderr(&out));
}

#[test]
fn resolve_partial_and_python_selectors() {
    let dir = scratch();
    let out = clem(dir.path(), &["resolve", "-m", r#"{"backend": "llamacpp"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(spec["model_name"], "smollm2-135m");
    let out = clem(dir.path(), &["resolve", "-m", "{'backend': 'anthropic', 'model_config': {'thinking_mode': 1}}"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(spec["model_name"], "claude-opus-4.5");
    let out = clem(dir.path(), &["resolve", "-m", "no-such-model"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no model entry unifies with {\"model_name\":\"no-such-model\"}"));
    assert!(stdout(&out).is_empty());
}

#[test]
fn filters_on_metadata() {
    let dir = scratch();
    let out = clem(dir.path(), &["list", "models", "--backend", "anthropic"]);
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| l.ends_with("\tanthropic")), "{lines:?}");
    let out = clem(dir.path(), &["list", "models", "--open-weight", "--min-context", "200k", "-v"]);
    for l in stdout(&out).lines() {
        let cols: Vec<&str> = l.split('\t').collect();
        assert_eq!(cols[3], "true", "{l}");
        let ctx = clem_core::schema::parse_count(cols[5]).expect("context size");
        assert!(ctx >= 200_000.0, "{l}");
    }
    assert!(!stdout(&out).is_empty());
}

/// `-v` ends with the entry's pricing (`-` without one). Before: no such column.
#[test]
fn verbose_listing_shows_pricing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("model_registry.json"),
        r#"[{"model_name": "priced", "backend": "openai", "model_id": "gpt-4o",
             "model_config": {"pricing": {"input_per_million": 2.5, "output_per_million": 10}}},
            {"model_name": "free", "backend": "openai", "model_id": "gpt-4o"}]"#,
    )
    .expect("write");
    let out = clem(dir.path(), &["list", "models", "-v", "--backend", "openai"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let last = |name: &str| {
        let text = stdout(&out);
        let line = text.lines().find(|l| l.starts_with(&format!("{name}\t"))).map(String::from);
        line.and_then(|l| l.rsplit('\t').next().map(String::from)).unwrap_or_default()
    };
    assert_eq!(last("priced"), "$2.5/$10 per 1M tokens");
    assert_eq!(last("free"), "-");
}

#[test]
fn register_key_and_model_and_list_keys_masked() {
    let dir = scratch();
    let secret = "sk-test-0123456789abcdefSECRET";
    let out = clem(
        dir.path(),
        &["register", "key", "openai", "--set", &format!("api_key={secret}"), "--set", "organisation=org-x"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains(secret) && !stderr(&out).contains(secret));
    let key_file = dir.path().join("key.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).expect("key.json").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let keys: Value = serde_json::from_str(&std::fs::read_to_string(&key_file).expect("read")).expect("json");
    assert_eq!(keys["openai"]["api_key"], secret);
    let out = clem(dir.path(), &["list", "keys"]);
    assert!(stdout(&out).contains("openai\tsk-t...CRET\t"), "{}", stdout(&out));
    assert!(!stdout(&out).contains(secret));
    let out = clem(dir.path(), &["list", "backends"]);
    assert!(stdout(&out).lines().any(|l| l.starts_with("openai\t") && l.contains("key.json (section openai)")));

    let out = clem(
        dir.path(),
        &[
            "register",
            "model",
            "my-model",
            "--backend",
            "openai",
            "--set",
            "model_id=gpt-x",
            "--set",
            "model_config.max_concurrency=4",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = clem(dir.path(), &["resolve", "-m", "my-model"]);
    let spec: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(spec["model_config"]["max_concurrency"], 4);
    assert_eq!(spec["backend"], "openai");
    let out = clem(dir.path(), &["register", "model", "my-model", "--backend", "openai", "--set", "model_id=gpt-y"]);
    assert!(stdout(&out).contains("entry 0 (my-model) updated"), "{}", stdout(&out));
}
