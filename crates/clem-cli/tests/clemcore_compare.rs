//! clemrs against clemcore 3.7.2 itself, on clembench's hellogame (`../shared/fixtures/clembench`, commit
//! a717f23): `clem run -g hellogame -m mock` of both give the same results folder (the same files, the same
//! JSON values but for timestamps, durations and versions), also for a run whose Greeter aborts; `clem eval`
//! gives the same results.csv and results.html over runs of several models by both; Python's `json` and
//! clemcore's eval read clemrs's NaN; `clem transcribe` writes clemcore's transcript.tex byte for byte.
//!
//! clembench's hellogame has no scorer: the tests add the smallest one following clemcore's conventions (a
//! legacy `GameScorer`) to their copy of the game, scoring as clemrs's hellogame does, so that clemcore's
//! `clem score` writes the scores.json clemrs writes. The fixtures and clemcore's venv
//! (`$CARGO_TARGET_DIR/clemcore-venv`, made by scripts/install-test-deps.sh) live outside the repository:
//! without them a test prints `SKIP: <reason>` and passes, except in CI (env CI set), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The test-only scorer appended to the copy of clembench's hellogame/master.py.
const SCORER: &str = r#"

# --- added by clemrs's tests: the smallest scorer following clemcore's conventions ---
import numpy as np
from clemcore.clemgame.legacy.scorer import GameScorer
from clemcore.clemgame.metrics import BENCH_SCORE


class HelloGameScorer(GameScorer):
    """A request is a Greeter reply; "invalid format" aborts (Main Score NaN); success scores 100."""

    def score_turns(self, interactions):
        for idx, turn in enumerate(interactions["turns"]):
            requests = sum(e["from"] == "Player 1" for e in turn)
            violated = sum(e["action"]["type"] == "invalid format" for e in turn)
            self.log_turn_score(idx, "Request Count", requests)
            self.log_turn_score(idx, "Parsed Request Count", requests - violated)
            self.log_turn_score(idx, "Violated Request Count", violated)

    def score_game(self, interactions):
        events = [e for turn in interactions["turns"] for e in turn]
        requests = sum(e["from"] == "Player 1" for e in events)
        violated = sum(e["action"]["type"] == "invalid format" for e in events)
        success = any(e["action"]["type"] == "greeting successful" for e in events)
        # the counts a legacy game logs itself; the base class scores them
        super().score_game({**interactions, "Aborted": int(violated > 0), "Lose": int(not success),
                            "Request Count": requests, "Parsed Request Count": requests - violated,
                            "Violated Request Count": violated})

    def log_main_score(self, interactions):
        self.log_episode_score(BENCH_SCORE, np.nan if interactions["Aborted"] else 100 * (1 - interactions["Lose"]))


HelloGameBenchmark.create_game_scorer = lambda self, experiment, game_instance: \
    HelloGameScorer(self.game_name, experiment, game_instance)
"#;

/// Compares two results folders in Python: the same files (clemrs's run_summary.json aside), then the same
/// JSON values, types included (1 is not 1.0), with timestamps, durations and versions masked; NaN equals NaN.
const COMPARE: &str = r#"
import json, math, os, sys
MASK = {"timestamp", "created", "benchmark_start", "benchmark_end", "duration", "duration_seconds", "clem_version"}
def norm(v):
    if isinstance(v, dict): return {k: ("<masked>" if k in MASK else norm(x)) for k, x in v.items()}
    if isinstance(v, list): return [norm(x) for x in v]
    if isinstance(v, float) and math.isnan(v): return ("float", "NaN")
    return (type(v).__name__, v)
def tree(root):
    # clem.log is clemrs's text log of the run (clemcore writes its clembench.log to the working directory).
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if f != "clem.log")
a, b = sys.argv[1], sys.argv[2]
ta, tb = tree(a), [p for p in tree(b) if os.path.basename(p) != "run_summary.json"]
if ta != tb:
    print("trees differ:\n only clemcore:", sorted(set(ta) - set(tb)), "\n only clemrs:", sorted(set(tb) - set(ta)))
    sys.exit(1)
bad = 0
for rel in ta:
    x, y = (norm(json.load(open(os.path.join(r, rel), encoding="utf-8"))) for r in (a, b))
    if x != y:
        bad += 1
        print("differs:", rel, "\n clemcore:", json.dumps(x)[:3000], "\n clemrs:  ", json.dumps(y)[:3000])
print(len(ta), "files compared,", bad, "differ")
sys.exit(1 if bad else 0)
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Prints why a test is skipped, or fails it in CI.
fn skip(reason: &str) {
    assert!(std::env::var_os("CI").is_none(), "{reason} (required in CI)");
    eprintln!("SKIP: {reason}");
}

/// clembench's games beside the repository, and clemcore's venv; `None` (after a SKIP) when one is absent.
fn setup() -> Option<(PathBuf, PathBuf)> {
    let fixtures = repo().join("../shared/fixtures/clembench");
    if !fixtures.join("hellogame/master.py").is_file() {
        skip(&format!("clembench's games not found at {}", fixtures.display()));
        return None;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    let venv = target.join("clemcore-venv/bin");
    if !venv.join("clem").is_file() {
        skip(&format!("clemcore's venv not found at {} (scripts/install-test-deps.sh makes it)", venv.display()));
        return None;
    }
    Some((fixtures, venv))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("ls").flatten() {
        if e.file_name() == "__pycache__" {
            continue;
        }
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// A folder holding clembench's hellogame with the test scorer (and `patch` applied to master.py).
fn checkout(fixtures: &Path, dir: &Path, patch: Option<(&str, &str)>) {
    copy_dir(&fixtures.join("hellogame"), &dir.join("hellogame"));
    let master = dir.join("hellogame/master.py");
    let mut text = std::fs::read_to_string(&master).expect("master.py");
    if let Some((from, to)) = patch {
        assert!(text.contains(from), "master.py has {from:?}");
        text = text.replace(from, to);
    }
    text.push_str(SCORER);
    std::fs::write(&master, text).expect("write master.py");
}

fn ok(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// clemcore's `clem` in `dir` (no user files: HOME is the folder).
fn clemcore(venv: &Path, dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(venv.join("clem")).args(args).current_dir(dir).env("HOME", dir).output();
    ok(&format!("clemcore clem {args:?}"), out.expect("clemcore's clem runs"))
}

/// clemrs's `clem` in `dir`.
fn clemrs(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("CLEM_TEST_CALL_DELAY_MS")
        .output();
    ok(&format!("clem {args:?}"), out.expect("clem runs"))
}

fn python(venv: &Path, script: &str, args: &[&Path]) -> Output {
    let out = Command::new(venv.join("python")).arg("-c").arg(script).args(args).output();
    out.expect("python runs")
}

/// clemcore's run + score of `model` and clemrs's run of `clemrs_model` in one clembench checkout; the
/// folders must not differ.
fn compare_runs(patch: Option<(&str, &str)>, clemcore_model: &str, clemrs_model: &str) {
    let Some((fixtures, venv)) = setup() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    checkout(&fixtures, dir, patch);
    clemcore(&venv, dir, &["run", "-g", "hellogame", "-m", clemcore_model, "-r", "clemcore"]);
    clemcore(&venv, dir, &["score", "-g", "hellogame", "-r", "clemcore"]);
    clemrs(dir, &["run", "-g", "hellogame", "-m", clemrs_model, "-r", "clemrs"]);
    let out = python(&venv, COMPARE, &[&dir.join("clemcore"), &dir.join("clemrs")]);
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the results folders differ:\n{report}");
    assert!(report.contains("62 files compared, 0 differ"), "{report}");
}

/// The comparison itself can fail: a changed value, a missing file, an int for a float are differences.
#[test]
fn the_comparison_finds_differences() {
    let Some((_, venv)) = setup() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (name, va, vb) in [
        ("x.json", r#"{"v": 1, "timestamp": "t1"}"#, r#"{"v": 1, "timestamp": "t2"}"#),
        ("y.json", r#"{"Main Score": NaN}"#, r#"{"Main Score": NaN}"#),
    ] {
        std::fs::create_dir_all(&a).expect("mkdir");
        std::fs::create_dir_all(&b).expect("mkdir");
        std::fs::write(a.join(name), va).expect("write");
        std::fs::write(b.join(name), vb).expect("write");
    }
    assert!(python(&venv, COMPARE, &[&a, &b]).status.success(), "masked keys and NaN are equal");
    std::fs::write(b.join("y.json"), r#"{"Main Score": 0}"#).expect("write");
    assert!(!python(&venv, COMPARE, &[&a, &b]).status.success(), "NaN is not 0");
    std::fs::write(b.join("y.json"), r#"{"Main Score": NaN}"#).expect("write");
    std::fs::write(b.join("x.json"), r#"{"v": 1.0, "timestamp": "t2"}"#).expect("write");
    assert!(!python(&venv, COMPARE, &[&a, &b]).status.success(), "1.0 is not 1");
    std::fs::remove_file(b.join("x.json")).expect("rm");
    assert!(!python(&venv, COMPARE, &[&a, &b]).status.success(), "a missing file");
}

/// `-m mock`: clemcore's mock Greeter says "GREET: Hello Ted!" and loses every episode. Before: clemrs's own
/// one-player hellogame won every episode, wrote no player_2.requests.json, recorded the mock's backend as
/// `mock` and its prompt as a message list, and scores.json had no `meta` nor `players`.
#[test]
fn mock_run_equals_clemcores() {
    compare_runs(None, "mock", "mock");
}

/// A Greeter reply without "GREET:": every episode aborts (Main Score NaN). clemcore's mock is patched in the
/// test's copy of the game; clemrs's mock is given the same reply. Before: Main Score 0, no Greeted turn.
#[test]
fn aborting_run_equals_clemcores() {
    compare_runs(
        Some(("return \"GREET: Hello Ted!\"", "return \"Hello Ted!\"")),
        "mock",
        r#"{"model_name": "mock", "replies": ["Hello Ted!"]}"#,
    );
}

/// `clem eval` over runs of several models by clemcore and by clemrs (wins, losses and aborts, two games):
/// clemrs's results.csv and results.html are clemcore's, with and without --std and --sort clemscore. The
/// NaN clemrs writes is read as NaN by Python's json and by clemcore's eval (whose numbers would differ
/// otherwise: Quality Score counts played episodes only). Before: clemrs had no `clem eval`, and its 0 for an
/// aborted episode gave programmatic a Quality Score of 10.0 instead of 14.29.
#[test]
fn eval_equals_clemcores() {
    let Some((fixtures, venv)) = setup() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    checkout(&fixtures, dir, None);
    copy_dir(&fixtures.join("guesswhat"), &dir.join("guesswhat"));
    // clemcore: its mock on hellogame (all lost) and guesswhat (which has its own scorer).
    clemcore(&venv, dir, &["run", "-g", "hellogame", "-m", "mock", "-r", "res"]);
    clemcore(&venv, dir, &["run", "-g", "guesswhat", "-m", "mock", "-r", "res", "-i", "instances_small"]);
    clemcore(&venv, dir, &["score", "-r", "res"]);
    // clemrs: a scripted model that wins, loses and aborts; another registered under its own name.
    let mixed = r#"{"model_name": "programmatic", "replies": ["GREET: Hello Peter, welcome!", "GREET: hi", "nope"]}"#;
    clemrs(dir, &["run", "-g", "hellogame", "-m", mixed, "-r", "res"]);
    std::fs::write(
        dir.join("registry.json"),
        r#"[{"model_name": "scripted-b", "backend": "mock", "replies": ["GREET: Hello Max, welcome!", "x", "GREET: x"]}]"#,
    )
    .expect("write");
    clemrs(dir, &["--registry", "registry.json", "run", "-g", "hellogame", "-m", "scripted-b", "-r", "res", "-b", "3"]);

    let aborted = dir.join("res/programmatic/hellogame/greet_en/instance_00002/scores.json");
    let nan = "import json,math,sys\nv = json.load(open(sys.argv[1]))['episode scores']['Main Score']\n\
               assert isinstance(v, float) and math.isnan(v), v";
    let out = python(&venv, nan, &[&aborted]);
    assert!(out.status.success(), "Python reads NaN: {}", String::from_utf8_lossy(&out.stderr));

    for flags in [&[][..], &["--std", "--sort", "clemscore"][..]] {
        let theirs = dir.join("theirs");
        let ours = dir.join("ours");
        for d in [&theirs, &ours] {
            let _ = std::fs::remove_dir_all(d);
            copy_dir(&dir.join("res"), d);
        }
        let mut args = vec!["eval", "-r", "theirs"];
        args.extend(flags);
        clemcore(&venv, dir, &args);
        args[2] = "ours";
        let out = clemrs(dir, &args);
        for file in ["results.csv", "results.html"] {
            let a = std::fs::read_to_string(theirs.join(file)).expect("clemcore's");
            let b = std::fs::read_to_string(ours.join(file)).expect("clemrs's");
            assert_eq!(a, b, "{file} with {flags:?}");
        }
        let csv = std::fs::read_to_string(ours.join("results.csv")).expect("csv");
        // programmatic: 10 episodes, 3 aborted (NaN), one won: % Played 70, Quality 14.29, clemscore 10.
        assert!(csv.contains("programmatic,10.0,70.0,14.29,"), "{csv}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("programmatic"), "a table on the terminal");
    }
}

/// `clem transcribe` writes clemcore's transcript.tex, byte for byte: for the runs above (two tracks) and for
/// hand-made records of one and of three players with LaTeX's special characters, blank lines and non-text
/// content. Before: clemrs wrote no transcript.tex.
#[test]
fn transcript_tex_equals_clemcores() {
    let Some((fixtures, venv)) = setup() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    checkout(&fixtures, dir, None);
    clemrs(
        dir,
        &[
            "run",
            "-g",
            "hellogame",
            "-m",
            r#"{"model_name": "mock", "replies": ["GREET: {50%} & $x_1 #~^\\[a]-\n\n\tb\r\nc"]}"#,
            "-r",
            "res",
            "-i",
            "instances_small",
        ],
    );
    let event = |from: &str, to: &str, content: serde_json::Value| serde_json::json!({"from": from, "to": to, "timestamp": "t", "action": {"type": "send message", "content": content}});
    for (name, players) in [("one", 1), ("three", 3)] {
        let mut ps = serde_json::Map::new();
        ps.insert("GM".into(), serde_json::json!({"game_role": "Game Master", "model_name": "programmatic"}));
        let mut turn = vec![event("GM", "GM", serde_json::json!({"k": [1, 2.5, true, null], "s": "it's"}))];
        for p in 1..=players {
            let who = format!("Player {p}");
            ps.insert(who.clone(), serde_json::json!({"game_role": "R", "model_name": "m"}));
            turn.push(event("GM", &who, serde_json::json!("a\u{a0}b ~ line\n \nnext\u{2028}x")));
            turn.push(event(&who, "GM", serde_json::json!("")));
        }
        let interactions = serde_json::json!({
            "meta": {"game_name": "g_1", "experiment_name": "e&1", "game_id": 3, "results_folder": "m--n"},
            "players": ps, "turns": [turn, []],
        });
        let d = dir.join(format!("res/{name}/g/e/instance_00000"));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("interactions.json"), interactions.to_string()).expect("write");
    }
    let theirs = dir.join("theirs");
    let ours = dir.join("ours");
    copy_dir(&dir.join("res"), &theirs);
    copy_dir(&dir.join("res"), &ours);
    clemcore(&venv, dir, &["transcribe", "-r", "theirs"]);
    clemrs(dir, &["transcribe", "-r", "ours"]);
    let mut compared = 0;
    let mut stack = vec![theirs.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.file_name() == "transcript.tex" {
                let rel = e.path().strip_prefix(&theirs).expect("rel").to_path_buf();
                let a = std::fs::read_to_string(e.path()).expect("clemcore's");
                let b = std::fs::read_to_string(ours.join(&rel))
                    .unwrap_or_else(|_| panic!("clemrs wrote no {}", rel.display()));
                assert_eq!(a, b, "{}", rel.display());
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 5, "3 hellogame episodes and the two hand-made ones");
}
