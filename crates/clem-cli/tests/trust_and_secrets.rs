//! What `clem` trusts and how it keeps secrets (issue 14): a registry in the working directory runs no program,
//! picks no log file or program arguments and sends no key to a base URL of its own, and says when it shadows an
//! entry; key files open to others are warned about; `list keys` masks every
//! field; `register` writes through no file placed beforehand; a results folder has one writer at a time and
//! only plain model names name folders. Each test says what it showed before the change.

#![cfg(unix)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{clem, stderr, stdout};
use serde_json::{json, Value};

/// A vllm entry whose launcher is a script that leaves `marker` beside itself and exits (no server). No
/// `log_file`: an entry of ./model_registry.json may not choose one.
fn vllm_entry(name: &str, launcher: Option<&Path>) -> Value {
    let mut config = json!({
        "number_gpus": 1, "premade_chat_template": false, "eos_to_cull": "</s>",
        "custom_chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
        "startup_timeout": 20,
    });
    if let Some(l) = launcher {
        config["launcher"] = json!([l.display().to_string()]);
    }
    json!({"model_name": name, "backend": "vllm", "huggingface_id": "org/m", "model_config": config})
}

fn marker_script(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("launch.sh");
    std::fs::write(&script, "#!/bin/sh\ntouch \"$(dirname \"$0\")/marker\"\nexit 3\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// Before: `clem generate` in a folder holding this model_registry.json ran launch.sh (the marker appeared).
#[test]
fn a_working_directory_registry_runs_no_launcher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, script) = (dir.path(), marker_script(dir.path()));
    let marker = d.join("marker");
    std::fs::write(d.join("model_registry.json"), json!([vllm_entry("evil", Some(&script))]).to_string())
        .expect("registry");
    let out = clem(d, &["generate", "-m", "evil", "hi"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("model_registry.json: entry 0 (evil): model_config.launcher"), "{err}");
    assert!(err.contains("~/.clemcore/model_registry.json") && err.contains("--registry"), "{err}");
    assert!(!marker.exists(), "the launcher ran");

    // The same entry from a file named on the command line, or from ~/.clemcore, is launched as before.
    std::fs::rename(d.join("model_registry.json"), d.join("mine.json")).expect("move");
    let out = clem(d, &["--registry", "mine.json", "generate", "-m", "evil", "hi"]);
    assert!(!out.status.success(), "the script starts no server");
    assert!(marker.exists(), "--registry: launched ({})", stderr(&out));
    std::fs::remove_file(&marker).expect("rm");
    std::fs::create_dir_all(d.join(".clemcore")).expect("mkdir");
    std::fs::rename(d.join("mine.json"), d.join(".clemcore/model_registry.json")).expect("move");
    let out = clem(d, &["generate", "-m", "evil", "hi"]); // HOME is the scratch folder
    assert!(marker.exists(), "home registry: launched ({})", stderr(&out));
    std::fs::remove_file(&marker).expect("rm");
    std::fs::remove_file(d.join(".clemcore/model_registry.json")).expect("rm");

    // A launcher the user types in the selector is theirs, even for an entry of the working directory.
    std::fs::write(d.join("model_registry.json"), json!([vllm_entry("plain", None)]).to_string()).expect("reg");
    let selector = json!({"model_name": "plain", "model_config": {"launcher": [script.display().to_string()]}});
    let out = clem(d, &["generate", "-m", &selector.to_string(), "hi"]);
    assert!(marker.exists(), "selector: launched ({})", stderr(&out));
}

/// A provider on 127.0.0.1 that answers every chat request with "pong" and keeps each request's head.
fn recording_provider() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let (mut head, mut length) = (String::new(), 0usize);
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
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen.lock().expect("lock").push(head);
            let reply = json!({"id": "c", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "pong"}}]})
            .to_string();
            let _ = write!(
                reader.into_inner(),
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (format!("http://{addr}/v1"), heads)
}

/// `clem` in `dir` (HOME there too) with extra environment variables.
fn clem_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clem"));
    cmd.args(args).current_dir(dir).env("HOME", dir).env_remove("CLEM_TRUST_CWD_REGISTRY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("clem runs")
}

/// Before: `clem generate -m evil` sent the request, and the key.json key in its Authorization header, to the
/// base_url of ./model_registry.json (the evil provider saw "authorization: Bearer sk-mine-..."); a vllm entry
/// of that file passed its vllm_args to the program and had its log written where it said.
#[test]
fn a_working_directory_registry_sends_no_key_elsewhere_and_picks_no_files_or_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (mine, mine_heads) = recording_provider();
    let (evil, evil_heads) = recording_provider();
    let key = "sk-mine-0123456789abcdef";
    std::fs::write(d.join("key.json"), json!({"openai_compatible": {"api_key": key, "base_url": mine}}).to_string())
        .expect("key.json");
    std::fs::set_permissions(d.join("key.json"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let entry = |name: &str, url: &str| {
        json!({"model_name": name, "backend": "openai_compatible", "model_id": "m",
               "model_config": {"base_url": url, "max_attempts": 1}})
    };
    // The key file's own base_url (a trailing slash aside) is the user's: allowed from the working directory.
    let local = json!([entry("evil", &evil), entry("same", &format!("{mine}/"))]);
    std::fs::write(d.join("model_registry.json"), local.to_string()).expect("registry");

    let out = clem_env(d, &[], &["generate", "-m", "evil", "hi"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("model_registry.json: entry 0 (evil): model_config.base_url \"{evil}\"")), "{err}");
    assert!(err.contains("~/.clemcore/model_registry.json") && err.contains("--registry"), "{err}");
    assert!(err.contains("CLEM_TRUST_CWD_REGISTRY=1"), "{err}");
    assert!(evil_heads.lock().expect("lock").is_empty(), "a request reached the working directory's base_url");

    let out = clem_env(d, &[], &["generate", "-m", "same", "hi"]);
    assert_eq!(stdout(&out).trim(), "pong", "{}", stderr(&out));
    assert_eq!(mine_heads.lock().expect("lock").len(), 1);

    // Consent: the environment variable, or the entry in the user's own registry.
    let out = clem_env(d, &[("CLEM_TRUST_CWD_REGISTRY", "1")], &["generate", "-m", "evil", "hi"]);
    assert_eq!(stdout(&out).trim(), "pong", "{}", stderr(&out));
    std::fs::create_dir_all(d.join(".clemcore")).expect("mkdir");
    std::fs::rename(d.join("model_registry.json"), d.join(".clemcore/model_registry.json")).expect("move");
    let out = clem_env(d, &[], &["generate", "-m", "evil", "hi"]);
    assert_eq!(stdout(&out).trim(), "pong", "{}", stderr(&out));
    let evil_seen = evil_heads.lock().expect("lock").clone();
    assert_eq!(evil_seen.len(), 2);
    assert!(evil_seen.iter().all(|h| h.contains(key)), "{evil_seen:?}");
    std::fs::remove_file(d.join(".clemcore/model_registry.json")).expect("rm");

    // vllm: the program is the user's ($CLEM_VLLM_COMMAND), the arguments and the log file are the folder's.
    let script = d.join("vllm.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\necho started\nexit 3\n")
        .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let command = script.display().to_string();
    let planted = d.join("planted.log");
    let mut with_args = vllm_entry("args", None);
    with_args["model_config"]["vllm_args"] = json!(["--trust-remote-code"]);
    let mut with_log = vllm_entry("log", None);
    with_log["model_config"]["log_file"] = json!(planted.display().to_string());
    std::fs::write(d.join("model_registry.json"), json!([with_args, with_log]).to_string()).expect("registry");
    for (model, key) in [("args", "vllm_args"), ("log", "log_file")] {
        let out = clem_env(d, &[("CLEM_VLLM_COMMAND", &command)], &["generate", "-m", model, "hi"]);
        let err = stderr(&out);
        let index = if model == "args" { 0 } else { 1 };
        assert!(err.contains(&format!("model_registry.json: entry {index} ({model}): model_config.{key}")), "{err}");
        assert!(!d.join("args").exists() && !planted.exists(), "{model}: the program ran");
    }
    let trusted = [("CLEM_VLLM_COMMAND", command.as_str()), ("CLEM_TRUST_CWD_REGISTRY", "1")];
    clem_env(d, &trusted, &["generate", "-m", "args", "hi"]);
    let args = std::fs::read_to_string(d.join("args")).expect("the program ran with consent");
    assert!(args.contains("--trust-remote-code"), "{args}");
    clem_env(d, &trusted, &["generate", "-m", "log", "hi"]);
    assert!(planted.exists(), "the log file was not written with consent");
}

/// Before: an entry of ./model_registry.json replaced a packaged or home entry of the same name silently.
#[test]
fn shadowing_entries_are_reported_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let listed = clem(d, &["list", "models"]);
    let packaged = stdout(&listed).lines().next().and_then(|l| l.split('\t').next()).expect("a model").to_string();
    let local = json!([
        {"model_name": "only-here", "backend": "mock"},
        {"model_name": packaged, "backend": "openai_compatible", "model_id": "x",
         "model_config": {"base_url": "http://127.0.0.1:9/v1"}},
        {"model_name": "mine", "backend": "mock"},
    ]);
    std::fs::write(d.join("model_registry.json"), local.to_string()).expect("registry");
    std::fs::create_dir_all(d.join(".clemcore")).expect("mkdir");
    std::fs::write(
        d.join(".clemcore/model_registry.json"),
        json!([{"model_name": "mine", "backend": "mock"}]).to_string(),
    )
    .expect("home registry");
    for args in [&["list", "models"][..], &["resolve", "-m", &packaged], &["registry", "check"]] {
        let out = clem(d, args);
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("shadows")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("clem: warning: model_registry.json: entry 1 ("), "{}", lines[0]);
        assert!(
            lines[0].contains("in the working directory shadows <packaged model_registry.json>: entry"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("and 1 more entry"), "{}", lines[0]);
    }
    // --registry files are the user's choice: nothing to say when the local file is not read.
    let out = clem(d, &["--no-default-registries", "--registry", "model_registry.json", "list", "models"]);
    assert!(!stderr(&out).contains("shadows"), "{}", stderr(&out));
}

/// Before: a key.json readable by everyone was used without a word.
#[test]
fn a_key_file_open_to_others_is_warned_about_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let key_file = d.join("key.json");
    std::fs::write(&key_file, r#"{"openai": {"api_key": "sk-test-0123456789abcdef"}}"#).expect("key.json");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    for args in [&["list", "keys"][..], &["list", "backends"]] {
        let err = stderr(&clem(d, args));
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("chmod 600")).collect();
        assert_eq!(lines, ["clem: warning: key.json: key file is accessible to other users (mode 0644); restrict it to yourself: chmod 600 key.json"], "{args:?}");
    }
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(!stderr(&clem(d, &["list", "keys"])).contains("chmod"));
}

/// Before: `base_url` was printed whole (user, password, path, query) and a `bearer` extra in clear.
#[test]
fn list_keys_masks_every_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let keys = json!({"openai_compatible": {
        "api_key": "sk-test-0123456789abcdef",
        "base_url": "https://alice:hunter2pass@api.example.com:8443/v1/secretpath?token=querytoken#frag",
        "bearer": "bearer-value-0123456789",
        "organisation": "org-abcdefghijkl",
        "retries": 3,
    }});
    let key_file = d.join("key.json");
    std::fs::write(&key_file, keys.to_string()).expect("key.json");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = clem(d, &["list", "keys"]);
    let text = stdout(&out);
    assert!(text.contains("base_url=https://api.example.com:8443,"), "{text}");
    for secret in ["alice", "hunter2", "secretpath", "querytoken", "frag", "value-0123", "abcdefgh", "0123456789abcdef"]
    {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    assert!(text.contains("bearer=bear...6789") && text.contains("organisation=org-...ijkl"), "{text}");
}

/// Before: `register key` opened key.json.tmp with O_CREAT|O_TRUNC and renamed it over key.json, so a link
/// placed there in advance received the key, and key.json became that link.
#[test]
fn register_writes_through_no_planted_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let victim = d.join("elsewhere.txt");
    std::fs::write(&victim, "untouched").expect("victim");
    std::os::unix::fs::symlink(&victim, d.join("key.json.tmp")).expect("plant a link");
    std::fs::write(d.join("model_registry.json.tmp"), "planted").expect("plant a file");
    let secret = "sk-test-0123456789abcdefSECRET";
    let out = clem(d, &["register", "key", "openai", "--set", &format!("api_key={secret}")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = clem(d, &["register", "model", "m", "--backend", "mock"]);
    assert!(out.status.success(), "{}", stderr(&out));

    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "untouched");
    assert_eq!(std::fs::read_to_string(d.join("model_registry.json.tmp")).expect("planted"), "planted");
    let key_file = d.join("key.json");
    let meta = std::fs::symlink_metadata(&key_file).expect("key.json");
    assert!(meta.file_type().is_file(), "key.json is a plain file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&key_file).expect("read").contains(secret));
    let leftovers: Vec<String> = std::fs::read_dir(d)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".clem-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn slow_run(dir: &Path, model: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clem"));
    c.args(["run", "-g", "hellogame", "-m", model, "-r", "res"])
        .current_dir(dir)
        .env("HOME", dir)
        .env("CLEM_TEST_CALL_DELAY_MS", "2000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Before: a second run on the same results folder started too, and the two cleared each other's instances.
#[test]
fn one_run_at_a_time_per_results_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Scripted replies go through the model call (and its test delay), which the game's own mock replies skip.
    let model = r#"{"model_name": "mock", "replies": ["GREET: hello"]}"#;
    let mut first = slow_run(d, model).spawn().expect("first run");
    let lock = d.join("res/mock/.clem-run.lock");
    let start = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == first.id().to_string()) {
        assert!(start.elapsed() < Duration::from_secs(30), "the first run never locked its folder");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = clem(d, &["run", "-g", "hellogame", "-m", model, "-r", "res"]);
    assert!(!second.status.success(), "the second run started");
    let err = stderr(&second);
    assert!(err.contains(&format!("another clem run (pid {}) is writing this results folder", first.id())), "{err}");
    // Another model's folder under the same results root is another folder.
    let other = clem(d, &["run", "-g", "hellogame", "-m", "programmatic", "-r", "res"]);
    assert!(other.status.success(), "{}", stderr(&other));

    // A holder killed with SIGKILL leaves its lock file, but the kernel has released the lock.
    assert!(first.try_wait().expect("wait").is_none(), "the first run ended before it could be killed");
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    assert!(lock.exists());
    let resumed = clem(d, &["run", "-g", "hellogame", "-m", model, "-r", "res", "--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(!lock.exists(), "removed by the run that ends");
}

/// Before: `model_name: ".."` made `<results>/..` the run folder: run.json landed beside the results folder.
#[test]
fn model_names_that_are_not_one_folder_name_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let reg = json!([{"model_name": "..", "backend": "mock"}, {"model_name": "a/b", "backend": "mock"}]);
    std::fs::write(d.join("reg.json"), reg.to_string()).expect("registry");
    std::fs::create_dir_all(d.join("work/res")).expect("mkdir");
    for name in ["..", "a/b"] {
        let out =
            clem(&d.join("work"), &["--registry", "../reg.json", "run", "-g", "hellogame", "-m", name, "-r", "res"]);
        assert!(!out.status.success(), "{name}");
        let err = stderr(&out);
        assert!(err.contains(&format!("model name {name:?} cannot name a results folder")), "{err}");
    }
    assert!(!d.join("work/run.json").exists() && !d.join("work/hellogame").exists(), "written outside -r");
    assert_eq!(std::fs::read_dir(d.join("work/res")).expect("ls").count(), 0);
}
