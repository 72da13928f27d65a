//! `clem run` of hellogame with a priced remote model on a fake provider (127.0.0.1) whose usage differs per
//! call: run_summary.json's totals equal the sums over the recorded requests files, the cost equals tokens x
//! prices (the entry's `model_config.pricing`, or `--prices FILE` before it), a `--resume` adds to the game's
//! totals, and `clem eval` shows the tokens and cost beside clemcore's columns.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

/// A fake OpenAI-compatible provider: call n answers a Greeter reply with prompt tokens = the request body's
/// length and completion tokens = 5 + n, one of them reasoning.
fn fake_provider() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(AtomicU64::new(0));
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
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let reply = json!({"id": format!("chatcmpl-{n}"), "object": "chat.completion", "model": "o-mini",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "GREET: Hello and welcome!"}}],
                "usage": {"prompt_tokens": length, "completion_tokens": 5 + n, "total_tokens": length as u64 + 5 + n,
                          "completion_tokens_details": {"reasoning_tokens": 1}}})
            .to_string();
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

fn clem(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(["--registry", "priced.json", "--keys", "priced_keys.json"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("clem runs");
    assert!(out.status.success(), "clem {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON")
}

/// (calls, prompt tokens, completion tokens) of the model over every requests file under `dir`, from the
/// provider's own `usage` in each recorded `raw_response_obj`.
fn recorded(dir: &Path) -> (u64, u64, u64) {
    let mut sums = (0, 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".requests.json") {
                for call in read(&path)["calls"].as_array().expect("calls") {
                    // The model's calls (the Greeted is the game's scripted player).
                    let response = &call["call"]["raw_response_obj"];
                    if response["clem_player"]["model_name"] != "fake-gpt" {
                        continue;
                    }
                    let usage = &response["usage"];
                    sums.0 += 1;
                    sums.1 += usage["prompt_tokens"].as_u64().expect("prompt_tokens");
                    sums.2 += usage["completion_tokens"].as_u64().expect("completion_tokens");
                }
            }
        }
    }
    sums
}

fn cost(prompt: u64, completion: u64, input: f64, output: f64) -> f64 {
    (prompt as f64 * input + completion as f64 * output) / 1e6
}

#[test]
fn run_totals_equal_the_requests_files_and_cost_is_tokens_times_prices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = json!([{"model_name": "fake-gpt", "backend": "openai_compatible", "model_id": "o-mini",
        "model_config": {"base_url": fake_provider(), "max_attempts": 1,
                         "pricing": {"input_per_million": 2.5, "output_per_million": 10}}}]);
    std::fs::write(dir.path().join("priced.json"), registry.to_string()).expect("registry");
    std::fs::write(dir.path().join("priced_keys.json"), r#"{"openai_compatible": {"api_key": "sk-fake"}}"#)
        .expect("keys");
    // Readable by us alone, as clem wants key files (else it warns).
    std::fs::set_permissions(dir.path().join("priced_keys.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");

    let out = clem(dir.path(), &["run", "-g", "hellogame", "-m", "fake-gpt", "-r", "results"]);
    let run_dir = dir.path().join("results/fake-gpt");
    let summary = read(&run_dir.join("run_summary.json"));
    let row = &summary["usage"][0];
    let (calls, prompt, completion) = recorded(&run_dir);
    assert_eq!(calls, 10, "one Greeter call per instance");
    assert_eq!(row["model"], "fake-gpt");
    assert_eq!((row["calls"].as_u64(), row["calls_without_usage"].as_u64()), (Some(calls), Some(0)));
    assert_eq!((row["prompt_tokens"].as_u64(), row["completion_tokens"].as_u64()), (Some(prompt), Some(completion)));
    assert_eq!(row["total_tokens"].as_u64(), Some(prompt + completion));
    assert_eq!(row["reasoning_tokens"].as_u64(), Some(calls));
    assert!(row["model_seconds"].as_f64().is_some_and(|s| s > 0.0), "{row}");
    let want = cost(prompt, completion, 2.5, 10.0);
    assert!((row["cost"].as_f64().expect("cost") - want).abs() < 1e-12, "{row} vs {want}");
    assert_eq!(summary["usage_by_game"]["hellogame"][0], *row);
    // The summary table's model row.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("fake-gpt ")).unwrap_or_default();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells.len(), 7, "{stdout}");
    assert_eq!(cells[1..5], [calls.to_string(), "0".into(), prompt.to_string(), completion.to_string()], "{stdout}");
    assert_eq!(cells[6], format!("${want:.4}"));

    // --resume after one episode lost its completed.json: one more call, added to the game's totals.
    let episode = run_dir.join("hellogame/greet_en/instance_00003");
    std::fs::remove_file(episode.join("completed.json")).expect("remove");
    clem(dir.path(), &["run", "-g", "hellogame", "-m", "fake-gpt", "-r", "results", "--resume"]);
    let summary = read(&run_dir.join("run_summary.json"));
    assert_eq!(summary["usage"][0]["calls"], 1);
    let game = &summary["usage_by_game"]["hellogame"][0];
    let again = summary["usage"][0]["prompt_tokens"].as_u64().expect("tokens");
    assert_eq!((game["calls"].as_u64(), game["prompt_tokens"].as_u64()), (Some(11), Some(prompt + again)));

    // clem eval: clemcore's columns, then the game's tokens and cost.
    let out = clem(dir.path(), &["eval", "-r", "results"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout.lines().next().unwrap_or_default();
    let words: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(words[words.len() - 3..], ["prompt_tokens", "completion_tokens", "cost"], "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("fake-gpt ")).unwrap_or_default();
    let cells: Vec<&str> = line.split_whitespace().collect();
    let eval_prompt = game["prompt_tokens"].as_u64().expect("tokens");
    let eval_completion = game["completion_tokens"].as_u64().expect("tokens");
    assert_eq!(cells[cells.len() - 3..cells.len() - 1], [eval_prompt.to_string(), eval_completion.to_string()]);
    assert_eq!(cells[cells.len() - 1], format!("${:.4}", cost(eval_prompt, eval_completion, 2.5, 10.0)));

    // --prices comes before the entry's pricing.
    std::fs::write(
        dir.path().join("prices.json"),
        r#"{"fake-gpt": {"input_per_million": 1, "output_per_million": 2}}"#,
    )
    .expect("prices");
    clem(dir.path(), &["run", "-g", "hellogame", "-m", "fake-gpt", "-r", "other", "--prices", "prices.json"]);
    let other = dir.path().join("other/fake-gpt");
    let row = &read(&other.join("run_summary.json"))["usage"][0];
    let (_, prompt, completion) = recorded(&other);
    assert_eq!(row["pricing"], json!({"input_per_million": 1.0, "output_per_million": 2.0}));
    assert!((row["cost"].as_f64().expect("cost") - cost(prompt, completion, 1.0, 2.0)).abs() < 1e-12, "{row}");
    // A bad prices file names itself and the model.
    std::fs::write(dir.path().join("bad.json"), r#"{"fake-gpt": {"input_per_million": 1}}"#).expect("bad");
    let out = Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(["--registry", "priced.json", "--keys", "priced_keys.json"])
        .args(["run", "-g", "hellogame", "-m", "fake-gpt", "-r", "third", "--prices", "bad.json"])
        .current_dir(dir.path())
        .output()
        .expect("clem runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.json: fake-gpt: output_per_million: missing"), "{err}");
}
