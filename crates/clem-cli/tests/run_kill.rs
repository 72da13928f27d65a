//! A run killed with SIGKILL in the middle keeps every finished call on disk, and `--resume` completes it with
//! the same files as an uninterrupted run (timestamps aside).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn clem() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clem"));
    c.env_remove("CLEM_TEST_CALL_DELAY_MS");
    c
}

/// Every results file but clem.log (the run's text log, not part of clemcore's layout).
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if !e.path().ends_with("clem.log") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn read(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", p.display()))
}

fn strip_times(v: &Value) -> Value {
    const TIMES: &[&str] = &[
        "timestamp",
        "created",
        "benchmark_start",
        "benchmark_end",
        "duration",
        "duration_seconds",
        "call_start",
        "call_duration",
    ];
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !TIMES.contains(&k.as_str())).map(|(k, v)| (k.clone(), strip_times(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_times).collect()),
        other => other.clone(),
    }
}

fn completed(exp: &Path) -> usize {
    (0..10).filter(|i| exp.join(format!("instance_{i:05}/completed.json")).is_file()).count()
}

#[test]
fn sigkill_mid_run_then_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let baseline = clem()
        .args(["run", "-g", "hellogame", "-m", "mock", "-r", "full"])
        .current_dir(tmp.path())
        .output()
        .expect("runs");
    assert!(baseline.status.success());

    // A slow run: 150 ms before each reply (two per episode: the Greeter's, the Greeted's).
    let mut child = clem()
        .args(["run", "-g", "hellogame", "-m", "mock", "-r", "killed"])
        .current_dir(tmp.path())
        .env("CLEM_TEST_CALL_DELAY_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    let exp = tmp.path().join("killed/mock/hellogame/greet_en");
    let start = Instant::now();
    while completed(&exp) < 3 {
        assert!(start.elapsed() < Duration::from_secs(60), "the slow run made no progress");
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    child.wait().expect("reaped");
    let done_at_kill = completed(&exp);
    assert!(done_at_kill < 10, "killed mid-run ({done_at_kill} of 10 done)");

    // Every file on disk parses; every finished call is recorded; completed instances are whole.
    let mut calls = 0;
    for f in files(&tmp.path().join("killed")) {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with(".clem-tmp-") {
            continue; // an unfinished write: never the real file
        }
        let v = read(&f);
        if name == "player_1.requests.json" {
            let n = v["calls"].as_array().map_or(0, Vec::len);
            assert_eq!(n, 1, "{}", f.display());
            calls += n;
        }
    }
    assert!(calls >= done_at_kill, "{calls} calls on disk for {done_at_kill} completed episodes");
    for i in 0..10 {
        let d = exp.join(format!("instance_{i:05}"));
        if d.join("completed.json").is_file() {
            for f in [
                "instance.json",
                "interactions.json",
                "player_1.requests.json",
                "player_2.requests.json",
                "scores.json",
            ] {
                assert!(d.join(f).is_file(), "{} lacks {f}", d.display());
            }
            assert_eq!(read(&d.join("interactions.json"))["meta"]["completed"], true);
        }
    }

    let resumed = clem()
        .args(["run", "-g", "hellogame", "-m", "mock", "-r", "killed", "--resume"])
        .current_dir(tmp.path())
        .output()
        .expect("runs");
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains(&format!("{done_at_kill} instance(s) already completed")), "{stderr}");
    let summary = read(&tmp.path().join("killed/mock/run_summary.json"));
    assert_eq!(summary["totals"]["skipped"], done_at_kill);
    // clembench's mock Greeter never wins: every episode is completed and lost.
    assert_eq!(summary["totals"]["completed"].as_u64().map(|c| c + done_at_kill as u64), Some(10));
    assert_eq!(summary["totals"]["successes"], 0);

    // The same final files as the uninterrupted run, temp leftovers cleared.
    let real = |root: &Path| -> Vec<PathBuf> {
        files(root)
            .into_iter()
            .filter(|p| !p.ends_with("run_summary.json"))
            .map(|p| p.strip_prefix(root).expect("rel").to_path_buf())
            .collect()
    };
    let (full, killed) = (tmp.path().join("full"), tmp.path().join("killed"));
    assert_eq!(real(&full), real(&killed));
    for rel in real(&full) {
        assert_eq!(strip_times(&read(&full.join(&rel))), strip_times(&read(&killed.join(&rel))), "{}", rel.display());
    }
}
