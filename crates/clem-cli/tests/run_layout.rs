//! `clem run` end to end with the mock player: every file and key of clemcore 3.7's results layout for
//! clembench's hellogame, Python's `json` reads every file (an aborted episode's NaN included), batching gives
//! the same files, failing models and bad instances, clemcore's `-i NAME` in a clembench checkout, `clem list
//! games`, `clem score`. (tests/clemcore_compare.rs compares the files with clemcore's own, value for value.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn clem(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(args)
        .current_dir(dir)
        .env_remove("CLEM_TEST_CALL_DELAY_MS")
        .output()
        .expect("clem runs")
}

/// A results file; Python's `NaN` (an aborted episode's Main Score) is read as the string "NaN".
fn read(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let text = text.replace(": NaN", ": \"NaN\"");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().expect("object").keys().map(String::as_str).collect()
}

/// Every results file but clem.log (the run's text log, not part of clemcore's layout).
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
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

fn is_iso(s: &Value) -> bool {
    let s = s.as_str().unwrap_or("");
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").is_ok() && !s.contains('+') && s.contains('T')
}

/// Timestamps and durations removed, for comparing two runs.
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

/// Python's `json` reads every file; `code` runs after each `v = json.load(...)` of path `p`.
fn python_reads_all(paths: &[PathBuf], code: &str) {
    let script = format!(
        "import json,math,sys\nfor p in sys.argv[1:]:\n    v = json.load(open(p, encoding='utf-8'))\n    {code}\n\
         print(len(sys.argv)-1)"
    );
    let out = Command::new("python3").arg("-c").arg(script).args(paths).output();
    match out {
        Ok(o) => {
            assert!(o.status.success(), "python json failed: {}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), paths.len().to_string());
        }
        Err(e) if std::env::var_os("CI").is_none() => eprintln!("SKIPPED python check: python3 not runnable: {e}"),
        Err(e) => panic!("python3 is needed in CI: {e}"),
    }
}

#[test]
fn mock_run_writes_clemcore_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = clem(tmp.path(), &["run", "-g", "hellogame", "-m", "mock", "-r", "res"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("greet_en") && stdout.contains(" 0.0"), "summary table: {stdout}");
    // A progress bar never reaches a pipe.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("instances,"), "no bar when stderr is not a terminal");

    let run = tmp.path().join("res/mock");
    let run_json = read(&run.join("run.json"));
    assert_eq!(keys(&run_json), ["clem_version", "created", "player_models", "games"]);
    assert!(is_iso(&run_json["created"]));
    let info = &run_json["player_models"]["0"];
    assert_eq!(keys(info), ["model_spec", "gen_args"]);
    // As clemcore records its mock: the name and the pseudo-backend.
    assert_eq!(info["model_spec"], serde_json::json!({"model_name": "mock", "backend": "_player_programmed"}));
    assert_eq!(info["gen_args"], serde_json::json!({"temperature": 0.0, "max_tokens": 300}));
    let g = &run_json["games"]["hellogame"];
    assert_eq!(
        keys(g),
        ["game_path", "benchmark_start", "benchmark_end", "duration", "duration_seconds", "num_instances"]
    );
    assert_eq!(g["game_path"], "clemrs:hellogame", "no ./hellogame folder here");
    assert!(is_iso(&g["benchmark_start"]) && is_iso(&g["benchmark_end"]));
    assert!(g["duration"].as_str().is_some_and(|d| d.starts_with("0:00:")), "str(timedelta): {}", g["duration"]);
    assert_eq!(g["num_instances"], 10);

    let exp_dir = run.join("hellogame/greet_en");
    let exp = read(&exp_dir.join("experiment.json"));
    assert_eq!(keys(&exp), ["name", "language", "timestamp", "game_name", "player_models"]);
    assert_eq!(exp["game_name"], "hellogame");
    assert_eq!(exp["player_models"], run_json["player_models"]);

    for id in 0..10u64 {
        let d = exp_dir.join(format!("instance_{id:05}"));
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .expect("instance dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "completed.json",
                "instance.json",
                "interactions.json",
                "player_1.requests.json",
                "player_2.requests.json",
                "scores.json"
            ],
            "{}",
            d.display()
        );
        let inst = read(&d.join("instance.json"));
        assert_eq!(keys(&inst), ["game_id", "prompt", "target_name"]);
        assert_eq!(inst["game_id"], id);
        let name = inst["target_name"].as_str().expect("name").to_string();

        let it = read(&d.join("interactions.json"));
        assert_eq!(keys(&it), ["meta", "player_models", "players", "turns"], "no count keys: a legacy game");
        assert_eq!(
            keys(&it["meta"]),
            ["game_name", "experiment_name", "game_id", "results_folder", "clem_version", "round_count", "completed"]
        );
        assert_eq!(it["meta"]["results_folder"], "mock");
        assert_eq!(it["meta"]["game_id"], id);
        assert_eq!((it["meta"]["round_count"].clone(), it["meta"]["completed"].clone()), (1.into(), true.into()));
        assert_eq!(
            it["players"],
            serde_json::json!({
                "GM": {"game_role": "Game Master", "model_name": "programmatic"},
                "Player 1": {"game_role": "Greeter", "model_name": "mock"},
                "Player 2": {"game_role": "Greeted", "model_name": "programmatic"},
            })
        );
        let turns = it["turns"].as_array().expect("turns");
        assert_eq!(turns.len(), 1);
        let events = turns[0].as_array().expect("round");
        for e in events {
            assert_eq!(keys(e), ["from", "to", "timestamp", "action"]);
            assert!(is_iso(&e["timestamp"]));
        }
        let actions: Vec<(&str, &str, Value)> = events
            .iter()
            .map(|e| (e["from"].as_str().unwrap_or(""), e["to"].as_str().unwrap_or(""), e["action"].clone()))
            .collect();
        let greeting = format!("{name}: Hi, thanks for having me!");
        let missing = format!("missing words=[welcome,{}]", name.to_lowercase());
        assert_eq!(
            actions,
            [
                (
                    "GM",
                    "Player 1",
                    serde_json::json!({"type": "send message", "content": inst["prompt"], "label": "context"})
                ),
                (
                    "Player 1",
                    "GM",
                    serde_json::json!({"type": "get message", "content": "GREET: Hello Ted!", "label": "response"})
                ),
                (
                    "GM",
                    "Player 2",
                    serde_json::json!({"type": "send message", "content": "GREET: Hello Ted!", "label": "context"})
                ),
                (
                    "Player 2",
                    "GM",
                    serde_json::json!({"type": "get message", "content": greeting, "label": "response"})
                ),
                ("GM", "GM", serde_json::json!({"type": "greeting failed", "content": missing})),
            ]
        );

        for (file, player, role, model, prompt, reply) in [
            (
                "player_1.requests.json",
                "Player 1",
                "Greeter",
                "mock",
                inst["prompt"].clone(),
                "GREET: Hello Ted!".to_string(),
            ),
            (
                "player_2.requests.json",
                "Player 2",
                "Greeted",
                "programmatic",
                "GREET: Hello Ted!".into(),
                greeting.clone(),
            ),
        ] {
            let req = read(&d.join(file));
            assert_eq!(keys(&req), ["meta", "calls"]);
            assert_eq!(
                keys(&req["meta"]),
                [
                    "game_name",
                    "experiment_name",
                    "game_id",
                    "player_name",
                    "game_role",
                    "model_name",
                    "round_count",
                    "completed"
                ]
            );
            assert_eq!(
                (req["meta"]["player_name"].as_str(), req["meta"]["game_role"].as_str()),
                (Some(player), Some(role))
            );
            assert_eq!(req["meta"]["model_name"], model);
            let calls = req["calls"].as_array().expect("calls");
            assert_eq!(calls.len(), 1);
            assert_eq!(keys(&calls[0]), ["round", "call"]);
            assert_eq!(calls[0]["round"], 0);
            let call = &calls[0]["call"];
            assert_eq!(keys(call), ["timestamp", "manipulated_prompt_obj", "raw_response_obj"]);
            // clemcore's programmatic players record the context message and the reply.
            assert_eq!(call["manipulated_prompt_obj"], serde_json::json!({"role": "user", "content": prompt}));
            assert_eq!(
                call["raw_response_obj"],
                serde_json::json!({"clem_player": {"response": reply, "model_name": model}})
            );
        }

        let done = read(&d.join("completed.json"));
        assert_eq!(keys(&done), ["timestamp"]);
        assert!(is_iso(&done["timestamp"]));
        let scores = read(&d.join("scores.json"));
        assert_eq!(keys(&scores), ["meta", "players", "turn scores", "episode scores", "player_models"]);
        assert_eq!(scores["meta"], it["meta"]);
        assert_eq!(
            scores["turn scores"],
            serde_json::json!({"0": {"Request Count": 1, "Parsed Request Count": 1, "Violated Request Count": 0}})
        );
        assert_eq!(
            scores["episode scores"],
            serde_json::json!({"Aborted": 0, "Lose": 1, "Success": 0, "Request Count": 1, "Parsed Request Count": 1,
                               "Violated Request Count": 0, "Request Success Ratio": 1.0, "Main Score": 0})
        );
    }
    let summary = read(&run.join("run_summary.json"));
    assert_eq!(summary["totals"]["completed"], 10);
    assert_eq!(summary["totals"]["successes"], 0);
    assert_eq!(summary["instances"].as_array().map(Vec::len), Some(10));

    let all = files(&tmp.path().join("res"));
    assert_eq!(all.len(), 10 * 6 + 3, "{all:?}");
    assert!(all.iter().all(|p| p.extension().is_some_and(|e| e == "json")));
    python_reads_all(&all, "pass");
}

#[test]
fn batched_run_writes_the_same_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Scripted replies go through the mock model, in batches of 4 in the second run.
    let model = r#"{"model_name": "mock", "replies": ["GREET: Hello Peter, welcome!"]}"#;
    let seq = clem(tmp.path(), &["run", "-g", "hellogame", "-m", model, "-r", "seq"]);
    assert!(seq.status.success());
    let bat = clem(tmp.path(), &["run", "-g", "hellogame", "-m", model, "-r", "bat", "-b", "4"]);
    assert!(bat.status.success(), "{}", String::from_utf8_lossy(&bat.stderr));
    let (a, b) = (files(&tmp.path().join("seq")), files(&tmp.path().join("bat")));
    assert_eq!(a.len(), b.len());
    for (fa, fb) in a.iter().zip(&b) {
        let rel = fa.strip_prefix(tmp.path().join("seq")).expect("rel");
        assert_eq!(rel, fb.strip_prefix(tmp.path().join("bat")).expect("rel"));
        if rel.ends_with("run_summary.json") {
            continue; // records the batch size
        }
        assert_eq!(strip_times(&read(fa)), strip_times(&read(fb)), "{}", rel.display());
    }
    let won = read(&tmp.path().join("seq/mock/hellogame/greet_en/instance_00000/scores.json"));
    assert_eq!(won["episode scores"]["Main Score"], 100, "Peter is greeted and welcomed");
}

#[test]
fn a_failing_model_is_not_an_error_but_a_bad_instance_is() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A scripted reply without the prefix: every episode aborts, the run itself is fine.
    let out = clem(
        tmp.path(),
        &["run", "-g", "hellogame", "-m", r#"{"model_name": "mock", "replies": ["Hi there"]}"#, "-e", "greet_en"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = tmp.path().join("results/mock/hellogame/greet_en/instance_00003");
    let it = read(&d.join("interactions.json"));
    // As clembench's hellogame: the Greeted still answers; then "invalid format" and "greeting failed".
    assert_eq!(it["turns"][0][4]["action"], serde_json::json!({"type": "invalid format", "content": "abort game"}));
    assert_eq!(
        it["turns"][0][5]["action"],
        serde_json::json!({"type": "greeting failed", "content": "missing words=[]"})
    );
    let text = std::fs::read_to_string(d.join("scores.json")).expect("scores.json");
    assert!(
        text.contains("\"Main Score\": NaN"),
        "an aborted episode's Main Score is NaN, as Python writes it:\n{text}"
    );
    let ep = &read(&d.join("scores.json"))["episode scores"];
    assert_eq!(
        (ep["Aborted"].clone(), ep["Success"].clone(), ep["Lose"].clone(), ep["Violated Request Count"].clone()),
        (1.into(), 0.into(), 0.into(), 1.into())
    );
    // Python's json reads it back as NaN (before: 0.0, which halves a clemscore).
    python_reads_all(&[d.join("scores.json")], "assert math.isnan(v['episode scores']['Main Score']), v");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("total") && l.trim_end().ends_with('-')),
        "no played episode: {stdout}"
    );

    // Wrong words but the right prefix: lost, not aborted.
    let out = clem(
        tmp.path(),
        &["run", "-g", "hellogame", "-m", r#"{"model_name": "mock", "replies": ["GREET: Hi Bob"]}"#, "-r", "lost"],
    );
    assert!(out.status.success());
    let it = read(&tmp.path().join("lost/mock/hellogame/greet_en/instance_00000/interactions.json"));
    assert_eq!(it["turns"][0][4]["action"]["type"], "greeting failed");
    assert_eq!(it["turns"][0][4]["action"]["content"], "missing words=[welcome,hello,peter]");

    // An instances file given with -i (without .json), one instance unusable: error.json and exit 1.
    std::fs::write(
        tmp.path().join("mine.json"),
        r#"{"experiments": [{"name": "x", "language": "en", "game_instances": [
            {"game_id": 0, "prompt": "Greet the person with the name:\n\nAnn\n", "target_name": "Ann"},
            {"game_id": 1, "prompt": "no name here"}]}]}"#,
    )
    .expect("write");
    let out = clem(tmp.path(), &["run", "-g", "hellogame", "-m", "mock", "-i", "mine", "-r", "bad"]);
    assert_eq!(out.status.code(), Some(1), "an instance error fails the run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("instance_00001"));
    let base = tmp.path().join("bad/mock/hellogame/x");
    assert!(base.join("instance_00000/completed.json").is_file());
    let err = read(&base.join("instance_00001/error.json"));
    assert_eq!(keys(&err), ["timestamp", "error", "message"]);
    assert!(err["message"].as_str().is_some_and(|m| m.contains("target_name")));
    assert!(!base.join("instance_00001/completed.json").exists());
    assert!(!base.join("instance_00001/instance.json").exists(), "as clemcore: no instance.json when setup fails");

    // Unknown experiment, unknown game, too many models: clear errors.
    for (args, needles) in [
        (vec!["run", "-g", "hellogame", "-m", "mock", "-e", "nope"], vec!["no experiment named \"nope\""]),
        (
            vec!["run", "-g", "guesswhat", "-m", "mock"],
            vec![
                "unknown game \"guesswhat\"",
                "clemrs plays: hellogame",
                "pip install",
                "python -m clemrs.clemcore install",
            ],
        ),
        (
            vec!["run", "-g", "hellogme", "-m", "mock"],
            vec!["unknown game \"hellogme\"; did you mean \"hellogame\"? clemrs plays: hellogame."],
        ),
        (vec!["run", "-g", "hellogame", "-m", "mock", "mock"], vec!["needs 1 player model"]),
        (vec!["run", "-g", "hellogame", "-m", "mock", "-i", "absent"], vec!["absent.json", "hellogame/in/absent.json"]),
    ] {
        let out = clem(tmp.path(), &args);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} in {stderr}");
        }
    }
}

/// In a clembench checkout (`./hellogame/clemgame.json`): run.json records the game's folder as clemcore does,
/// its `in/instances.json` is played, and `-i NAME` names a file in its `in/` folder.
#[test]
fn a_clembench_checkout_is_used_as_clemcore_uses_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let game = tmp.path().join("hellogame");
    std::fs::create_dir_all(game.join("in")).expect("mkdir");
    std::fs::write(game.join("clemgame.json"), r#"{"game_name": "hellogame", "players": 1}"#).expect("write");
    let one = |name: &str| {
        format!(
            r#"{{"experiments": [{{"name": "greet_en", "language": "en", "game_instances": [
               {{"game_id": 7, "prompt": "Greet {name}", "target_name": "{name}"}}]}}]}}"#
        )
    };
    std::fs::write(game.join("in/instances.json"), one("Ann")).expect("write");
    std::fs::write(game.join("in/instances_small.json"), one("Bo")).expect("write");

    let out = clem(tmp.path(), &["run", "-g", "hellogame", "-m", "mock", "-r", "a"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run_json = read(&tmp.path().join("a/mock/run.json"));
    let cwd = tmp.path().canonicalize().expect("canonical");
    assert_eq!(run_json["games"]["hellogame"]["game_path"], cwd.join("hellogame").display().to_string());
    let inst = read(&tmp.path().join("a/mock/hellogame/greet_en/instance_00007/instance.json"));
    assert_eq!(inst["target_name"], "Ann");

    let out = clem(tmp.path(), &["run", "-g", "hellogame", "-m", "mock", "-r", "b", "-i", "instances_small"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inst = read(&tmp.path().join("b/mock/hellogame/greet_en/instance_00007/instance.json"));
    assert_eq!(inst["target_name"], "Bo");
}

#[test]
fn list_games_names_hellogame() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = clem(tmp.path(), &["list", "games"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hellogame\tHello game between a greeter and a greeted players\n");
}

/// `clem score` writes scores.json again from the records: the same file as the run's, for every completed
/// episode; episodes of games clemrs does not have are named, not touched.
#[test]
fn score_rewrites_scores_from_the_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = r#"{"model_name": "mock", "replies": ["GREET: Hello Peter, welcome!", "Hi", "GREET: Hi"]}"#;
    assert!(clem(tmp.path(), &["run", "-g", "hellogame", "-m", model, "-r", "res"]).status.success());
    let exp = tmp.path().join("res/mock/hellogame/greet_en");
    let before: Vec<String> = (0..10)
        .map(|i| std::fs::read_to_string(exp.join(format!("instance_{i:05}/scores.json"))).expect("scores"))
        .collect();
    for i in 0..10 {
        std::fs::remove_file(exp.join(format!("instance_{i:05}/scores.json"))).expect("rm");
    }
    let other = tmp.path().join("res/mock/guesswhat/Level_1/instance_00000");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("interactions.json"), "{}").expect("write");

    let out = clem(tmp.path(), &["score", "-r", "res"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "10 episodes scored\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 episode(s) of \"guesswhat\" not scored"));
    for (i, b) in before.iter().enumerate() {
        let after = std::fs::read_to_string(exp.join(format!("instance_{i:05}/scores.json"))).expect("rescored");
        assert_eq!(&after, b, "instance {i}");
    }
    assert!(!other.join("scores.json").exists());
    assert!(before[1].contains("\"Main Score\": NaN") && before[0].contains("\"Main Score\": 100"));

    // A broken record is named and fails the command; -g names an unknown game.
    std::fs::write(exp.join("instance_00002/interactions.json"), "{\"turns\": 5}").expect("write");
    let out = clem(tmp.path(), &["score", "-r", "res", "-g", "hellogame"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("instance_00002"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = clem(tmp.path(), &["score", "-r", "res", "-g", "taboo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("clemrs scores: hellogame"));
}
