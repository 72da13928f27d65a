//! `clem serve` with SmolLM2-135M (the packaged `smollm2-135m` llamacpp entry) against clients no one here
//! wrote: the official `openai` package (plain and streaming), clemcore's own `openai_compatible` backend, and
//! a concurrent load (bench/serve/load.py) with and without dynamic batching.
//!
//! Skipped with a printed reason when the GGUF is not in the HF cache (scripts/fetch-smollm2.sh) or a Python
//! package is missing; under CI (env `CI` set) those fail instead. clemcore is looked up in `$CLEMCORE_PYTHON`,
//! then `$CARGO_TARGET_DIR/clemcore-venv/bin/python` (default `target/`), then `python3`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Served;
use serde_json::Value;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (required under CI)");
    }
    eprintln!("SKIP: {reason}");
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn serve(extra: &[&str]) -> Option<Served> {
    let cache = clem_core_cache();
    if !cache {
        skip("SmolLM2-135M-Instruct.Q4_1.gguf is not in the HF cache: run scripts/fetch-smollm2.sh");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clem"));
    cmd.args(["--threads", "2", "serve", "-m", "smollm2-135m", "--port", "0"]).args(extra).current_dir(dir.path());
    Some(common::start_serve(cmd, Some(dir)))
}

fn clem_core_cache() -> bool {
    let home = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub")));
    home.is_some_and(|h| {
        let snaps = h.join("models--QuantFactory--SmolLM2-135M-Instruct-GGUF/snapshots");
        std::fs::read_dir(snaps)
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file())))
    })
}

/// Runs a bench/serve script; `None` (skip) when it exits 3, i.e. a Python package is missing.
fn python(interpreter: &str, script: &str, args: &[&str]) -> Option<Output> {
    let out = Command::new(interpreter)
        .arg(root().join("bench/serve").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {interpreter}: {e}"));
    if out.status.code() == Some(3) {
        skip(&format!("{script}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        return None;
    }
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out)
}

fn last_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("script prints JSON")
}

#[test]
fn official_openai_package_plain_and_streaming() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(server) = serve(&["--api-key", "test-key"]) else { return };
    let Some(out) = python("python3", "openai_client.py", &[&server.base, "smollm2-135m", "test-key"]) else {
        return;
    };
    let v = last_json(&out);
    eprintln!("openai package: {v}");
    assert!(v["plain"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["chunks"].as_u64().is_some_and(|n| n >= 3));
}

#[test]
fn clemcore_openai_compatible_backend() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let venv = target.join("clemcore-venv/bin/python");
    let interpreter = std::env::var("CLEMCORE_PYTHON").ok().unwrap_or_else(|| {
        if venv.is_file() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let Some(server) = serve(&[]) else { return };
    let Some(out) = python(&interpreter, "clemcore_client.py", &[&server.base, "smollm2-135m"]) else { return };
    let v = last_json(&out);
    eprintln!("clemcore: {v}");
    assert_eq!(v["backend"], "openai_compatible");
    assert!(v["text"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn concurrent_load_batched_and_one_at_a_time() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut rps = Vec::new();
    for batch in ["8", "1"] {
        let Some(server) = serve(&["--max-batch", batch]) else { return };
        let args = [&server.base, "smollm2-135m", "--clients", "32", "--max-tokens", "8"];
        let Some(out) = python("python3", "load.py", &args) else { return };
        let v = last_json(&out);
        assert_eq!(v["errors"], 0, "{v}");
        let largest = v["health"]["models"][0]["largest_batch"].as_u64().unwrap_or(0);
        if batch == "1" {
            assert_eq!(largest, 1, "{v}");
        } else {
            assert!(largest > 1, "32 concurrent clients never batched: {v}");
        }
        rps.push(v["rps"].as_f64().unwrap_or(0.0));
    }
    eprintln!("32 clients: batched {} req/s, one at a time {} req/s, ratio {:.2}", rps[0], rps[1], rps[0] / rps[1]);
}
