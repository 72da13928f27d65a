//! Shared helpers of the llamacpp tests: skipping (or failing under CI) when a prerequisite is missing, making
//! tiny GGUFs with `make_tiny_gguf.py`, and loading a model from a spec.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use clem_backends::LoadContext;
use clem_core::{LoadedModel, ModelError, ModelSpec};
use serde_json::Value;

/// A prerequisite is missing: the test is skipped with the reason, except under CI, where it fails.
pub fn missing(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

pub fn support_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("support")
}

/// Writes a tiny random GGUF into `dir` as `name` with the script's `args`; `None` (after [`missing`]) when
/// python3 or the `gguf` package is not there.
pub fn tiny_gguf(dir: &Path, name: &str, args: &[&str]) -> Option<PathBuf> {
    let out = dir.join(name);
    let result = Command::new("python3").arg(support_dir().join("make_tiny_gguf.py")).arg(&out).args(args).output();
    match result {
        Err(e) => {
            missing(&format!("python3 cannot run: {e}"));
            None
        }
        Ok(o) if o.status.code() == Some(3) => {
            missing(String::from_utf8_lossy(&o.stderr).trim());
            None
        }
        Ok(o) if !o.status.success() => {
            panic!("make_tiny_gguf.py failed: {}", String::from_utf8_lossy(&o.stderr))
        }
        Ok(_) => Some(out),
    }
}

/// A llamacpp spec for a GGUF folder, with `config` merged into a minimal model_config.
pub fn spec(dir: &Path, config: Value) -> ModelSpec {
    let mut model_config = serde_json::json!({
        "filename": "*.gguf",
        "premade_chat_template": true,
        "eos_to_cull": "<\\|im_end\\|>",
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut model_config, config) {
        base.extend(extra);
    }
    let Value::Object(map) = serde_json::json!({
        "model_name": "tiny",
        "backend": "llamacpp",
        "huggingface_id": dir.display().to_string(),
        "model_config": model_config,
    }) else {
        unreachable!("a JSON object literal")
    };
    ModelSpec::new(map)
}

pub fn load(spec: &ModelSpec) -> Result<LoadedModel, ModelError> {
    clem_backends::load_spec(spec, &LoadContext { threads: Some(1), ..Default::default() })
}
