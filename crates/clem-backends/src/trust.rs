//! What an entry of `./model_registry.json` may not ask for without the user's consent. That file is found in
//! whatever folder `clem` runs in (it may have come with a cloned repository), so besides running no program
//! (vllm's `launcher`, refused by the vllm loader) it may not pick where a file is written (`log_file`), add
//! arguments to a program clemrs starts (`vllm_args`), or send requests, and with them the user's key, to a
//! `base_url` the user's own configuration does not already use for that backend.
//!
//! The user consents by moving the entry into `~/.clemcore/model_registry.json` (or a file named with
//! `--registry`), or for every entry of the working directory at once with `CLEM_TRUST_CWD_REGISTRY=1`.

use clem_core::keys::Keys;
use clem_core::registry::{Entry, Origin, Registry};
use serde_json::Value;

/// Set to `1`, entries of `./model_registry.json` may ask for everything an entry of the user's own registry may.
pub const TRUST_ENV: &str = "CLEM_TRUST_CWD_REGISTRY";

/// `model_config` keys an entry of the working directory may not set at all.
const UNTRUSTED_KEYS: [&str; 2] = ["log_file", "vllm_args"];

/// Refuses `entry` when it comes from the working directory and asks for what only the user may (see the
/// module's comment); the message names file, entry and key and how to allow it. `registry` and `keys` give the
/// base URLs the user already uses.
pub fn check_entry(entry: &Entry, registry: &Registry, keys: &Keys) -> Result<(), String> {
    if entry.origin != Origin::WorkingDir || std::env::var(TRUST_ENV).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    let Some(config) = entry.value.get("model_config").and_then(Value::as_object) else { return Ok(()) };
    let mut refused = Vec::new();
    for key in UNTRUSTED_KEYS.iter().filter(|k| config.contains_key(**k)) {
        refused.push(format!("model_config.{key}: may only come from your own registry"));
    }
    if let Some(url) = config.get("base_url") {
        let backend = entry.backend().and_then(crate::backend);
        let known = backend.map(|b| known_base_urls(b, registry, keys)).unwrap_or_default();
        if !url.as_str().is_some_and(|u| known.iter().any(|k| same_url(k, u))) {
            let name = backend.map_or("this backend", |b| b.name());
            refused.push(format!(
                "model_config.base_url {url}: differs from {name}'s default and from every base_url your own \
                 registry or key file gives it (your key would be sent there)"
            ));
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}: {}; an entry of ./model_registry.json is data found in the working directory, not your configuration: \
         move the entry into ~/.clemcore/model_registry.json or a file named with --registry FILE, or set \
         {TRUST_ENV}=1 to trust this folder's registry",
        entry.location(),
        refused.join("; ")
    ))
}

/// The base URLs the user's configuration already sends `backend`'s requests to: its default, the key file's
/// (or environment's) sections for it, and the entries of every registry but the working directory's.
fn known_base_urls(backend: &crate::Backend, registry: &Registry, keys: &Keys) -> Vec<String> {
    let mut known: Vec<String> = default_base_url(backend.name()).map(String::from).into_iter().collect();
    let prefix = format!("{}_", backend.name());
    for section in keys.section_names() {
        if Some(section.as_str()) == backend.key_section || section == backend.name() || section.starts_with(&prefix) {
            known.extend(keys.section(&section).and_then(|s| s.extra_str("base_url").map(String::from)));
        }
    }
    for e in registry.entries().iter().filter(|e| e.origin != Origin::WorkingDir) {
        if e.backend().and_then(crate::backend).is_some_and(|b| b.name() == backend.name()) {
            known.extend(e.value.pointer("/model_config/base_url").and_then(Value::as_str).map(String::from));
        }
    }
    known
}

fn default_base_url(backend: &str) -> Option<&'static str> {
    Some(match backend {
        "openai" => crate::openai::DEFAULT_BASE_URL,
        "openrouter" => crate::openrouter::DEFAULT_BASE_URL,
        "anthropic" => crate::anthropic::DEFAULT_BASE_URL,
        "google" => crate::google::DEFAULT_BASE_URL,
        "mistral" => crate::mistral::DEFAULT_BASE_URL,
        "cohere" => crate::cohere::DEFAULT_BASE_URL,
        _ => return None,
    })
}

/// Equal but for surrounding space and a trailing slash.
fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn registry(cwd: Value, home: Value) -> Registry {
        let mut r = Registry::default();
        r.add_str_from(&cwd.to_string(), "model_registry.json", Origin::WorkingDir).expect("cwd");
        r.add_str_from(&home.to_string(), "home.json", Origin::Home).expect("home");
        r
    }

    #[test]
    fn working_directory_entries_keep_to_the_users_base_urls() {
        let r = registry(
            serde_json::json!([
                {"model_name": "a", "backend": "openai", "model_config": {"base_url": "https://api.openai.com/v1/"}},
                {"model_name": "b", "backend": "openai", "model_config": {"base_url": "http://evil/v1"}},
                {"model_name": "c", "backend": "openai_compatible", "model_config": {"base_url": "http://mine/v1"}},
                {"model_name": "d", "backend": "openai_compatible", "model_config": {"base_url": "http://keys/v1"}},
                {"model_name": "e", "backend": "vllm", "model_config": {"vllm_args": ["--x"], "log_file": "/f"}},
                {"model_name": "f", "backend": "mock"},
            ]),
            serde_json::json!([{"model_name": "h", "backend": "openai_compatible",
                                "model_config": {"base_url": "http://mine/v1"}}]),
        );
        let keys = Keys::from_json_str(
            r#"{"openai_compatible": {"api_key": "k", "base_url": "http://keys/v1"}}"#,
            Path::new("key.json"),
        )
        .expect("keys");
        let verdicts: Vec<Result<(), String>> = r.entries().iter().map(|e| check_entry(e, &r, &keys)).collect();
        assert!(verdicts[0].is_ok() && verdicts[2].is_ok() && verdicts[3].is_ok() && verdicts[5].is_ok());
        let b = verdicts[1].as_ref().expect_err("evil base_url");
        assert!(b.starts_with("model_registry.json: entry 1 (b): model_config.base_url \"http://evil/v1\""), "{b}");
        assert!(b.contains("~/.clemcore/model_registry.json") && b.contains("CLEM_TRUST_CWD_REGISTRY=1"), "{b}");
        let e = verdicts[4].as_ref().expect_err("vllm keys");
        assert!(e.contains("entry 4 (e): model_config.log_file") && e.contains("model_config.vllm_args"), "{e}");
        // The user's own registry may ask for all of it.
        assert!(r.entries()[6..].iter().all(|e| check_entry(e, &r, &keys).is_ok()));
    }
}
