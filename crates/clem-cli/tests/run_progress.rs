//! `clem run`'s progress and log (issue 17, item 6): with stderr not a terminal (captured here), one line per
//! episode (n/N, model, elapsed, ETA) as the run goes; `clem.log` in the run's folder with those lines, one line
//! per model call and the final tables; a run whose provider is down stops after 3 identical connection failures
//! with the reason instead of failing all 10 instances.

use std::path::Path;
use std::process::{Command, Output};

fn clem(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("CLEM_TEST_CALL_DELAY_MS")
        .output()
        .expect("clem runs")
}

/// Before: nothing reached stderr until the summary, and the run folder held no log.
#[test]
fn progress_lines_and_clem_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Scripted replies: the mock is then called as a model (else the game's own responder answers for it).
    let mock = r#"{"model_name": "mock", "replies": ["GREET: Hello Peter, welcome!"]}"#;
    let out = clem(dir.path(), &["run", "-g", "hellogame", "-m", mock, "-r", "res"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("clem: episode ")).collect();
    assert_eq!(lines.len(), 10, "{err}");
    for (i, line) in lines.iter().enumerate() {
        let want = format!("clem: episode {}/10 (greet_en instance_{i:05}) mock: completed, elapsed ", i + 1);
        assert!(line.starts_with(&want), "{line}");
        assert!(line.contains(", ETA "), "{line}");
    }
    assert!(lines[9].ends_with("ETA 0:00:00"), "{}", lines[9]);

    let log = std::fs::read_to_string(dir.path().join("res/mock/clem.log")).expect("clem.log in the run folder");
    assert!(log.lines().next().is_some_and(|l| l.contains("clem run -g hellogame -m mock (")), "{log}");
    for line in &lines {
        assert!(log.contains(line), "{line} not in the log:\n{log}");
    }
    // The Greeter (the mock) is asked once per episode; the Greeted is the game's scripted player.
    assert_eq!(log.lines().filter(|l| l.contains(" call mock: 1 request(s), ")).count(), 10, "{log}");
    assert!(log.contains("experiment  instances  completed"), "{log}");
    assert!(log.contains("results: res/mock"), "{log}");

    // A second invocation appends.
    let out = clem(dir.path(), &["run", "-g", "hellogame", "-m", mock, "-r", "res", "--resume"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(dir.path().join("res/mock/clem.log")).expect("clem.log");
    assert_eq!(log.lines().filter(|l| l.contains("clem run -g hellogame")).count(), 2, "{log}");
    assert!(log.contains("clem: resuming: 10 instance(s) already completed, 0 to run"), "{log}");
}

/// Before: all 10 instances were tried, each failing the same way, and the run went on to the end.
#[test]
fn a_run_whose_server_is_down_stops_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let registry = serde_json::json!([{"model_name": "down", "backend": "openai_compatible", "model_id": "x",
        "model_config": {"base_url": format!("http://127.0.0.1:{port}/v1"), "max_attempts": 1}}]);
    std::fs::write(dir.path().join("reg.json"), registry.to_string()).expect("write");
    std::fs::write(dir.path().join("keys.json"), r#"{"openai_compatible": {"api_key": "sk-x"}}"#).expect("write");
    std::fs::set_permissions(dir.path().join("keys.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let out = clem(
        dir.path(),
        &["--registry", "reg.json", "--keys", "keys.json", "run", "-g", "hellogame", "-m", "down", "-r", "res"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clem: error: run stopped after 3 instances in a row failed to reach"), "{err}");
    assert!(err.contains("connection failed"), "{err}");
    assert!(err.contains("7 instance(s) not played"), "{err}");
    let exp = dir.path().join("res/down/hellogame/greet_en");
    let failed = (0..10).filter(|i| exp.join(format!("instance_{i:05}/error.json")).is_file()).count();
    assert_eq!(failed, 3, "{err}");
    let log = std::fs::read_to_string(dir.path().join("res/down/clem.log")).expect("clem.log");
    assert!(log.contains("run stopped after 3 instances"), "{log}");
    assert_eq!(log.lines().filter(|l| l.contains(" call down: 1 request(s), ") && l.contains("1 failed")).count(), 3);
}
