//! A new user's first hour with `clem` (#17 items 5, 7, 8, 9): careless input gets a clear refusal or a "did you
//! mean", clemcore registries import, `register` writes only what loads and where it is told, list and generate
//! say what they did. Each test runs the built binary with HOME in a scratch folder; each says what it showed
//! before the fix.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{clem, stderr, stdout};
use serde_json::Value;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// `clem ARGS` with `input` on standard input (a pipe, not a terminal).
fn clem_with_stdin(dir: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("clem starts");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("clem runs")
}

/// The 230-entry clemcore registry, or `None` after saying why; under CI its absence fails.
fn registry_230() -> Option<std::path::PathBuf> {
    let found = common::fixture("clemcore-model-registry-230.json");
    assert!(found.is_some() || std::env::var_os("CI").is_none(), "../shared/fixtures is required under CI");
    found
}

// ---- item 5: did you mean, and older registries ----

/// Before: "no model entry unifies with {...}" and nothing more.
#[test]
fn unknown_model_names_the_nearest_and_the_registries_searched() {
    let dir = scratch();
    let out = clem(dir.path(), &["generate", "-m", "smollm2-135", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("did you mean \"smollm2-135m\""), "{err}");
    assert!(err.contains("<packaged model_registry.json>"), "the registries searched are named: {err}");
    // A name far from every entry gets no guess.
    let out = clem(dir.path(), &["resolve", "-m", "zzzzzzzzzzzz"]);
    assert!(!stderr(&out).contains("did you mean"), "{}", stderr(&out));
}

/// Before: `backend "opnai" does not exist (known backends: ...)` without a suggestion.
#[test]
fn unknown_backend_in_an_entry_names_the_nearest() {
    let dir = scratch();
    std::fs::write(dir.path().join("r.json"), r#"[{"model_name": "m", "backend": "opnai", "model_id": "x"}]"#)
        .expect("write");
    let out = clem(dir.path(), &["registry", "check", "r.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("backend \"opnai\" does not exist; did you mean \"openai\"?"), "{}", stdout(&out));
}

/// Before: `registry import` did not exist; loading the old file gave 38 errors with no hint.
#[test]
fn registry_import_converts_clemcore_230_and_explains_the_rest() {
    let Some(old) = registry_230() else { return };
    let dir = scratch();
    let old = old.to_string_lossy();
    let out = clem(dir.path(), &["registry", "import", &old, "-o", "imported.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("imported.json: 192 of 230 entries"), "{err}");
    assert!(err.contains("38 entries not converted"), "{err}");
    for (count, what) in [
        ("27 entries", "huggingface_multimodal"),
        ("4 entries", "alephalpha"),
        ("1 entry", "slurk"),
        ("6 entries", "openrouter\" without model_id"),
    ] {
        let line = err.lines().position(|l| l.trim_start().starts_with(count)).expect(count);
        let why = err.lines().nth(line + 1).unwrap_or_default();
        let fix = err.lines().nth(line + 2).unwrap_or_default();
        assert!(why.contains("why: ") && why.contains(what), "{count}: {why}");
        assert!(fix.contains("to use: ") && fix.len() > 20, "{count}: {fix}");
    }
    // What was written loads cleanly, and the old names resolve.
    let written: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("imported.json")).expect("written"))
            .expect("json");
    assert_eq!(written.len(), 192);
    let out = clem(dir.path(), &["--registry", "imported.json", "--no-default-registries", "registry", "check"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let out = clem(dir.path(), &["--registry", "imported.json", "resolve", "-m", "gpt-4o-2024-08-06"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Without -o the registry goes to stdout; the input is never overwritten.
    let out = clem(dir.path(), &["registry", "import", &old]);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&stdout(&out)).expect("json on stdout").len(), 192);
    let copy = dir.path().join("copy.json");
    std::fs::copy(&*old, &copy).expect("copy");
    let out = clem(dir.path(), &["registry", "import", "copy.json", "-o", "./copy.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // clemcore 3.7's registry: its multimodal huggingface_local entries pass the check but would not load.
    let Some(current) = common::fixture("clemcore-model-registry-current.json") else { return };
    let out = clem(dir.path(), &["registry", "import", &current.to_string_lossy(), "-o", "current.json"]);
    let err = stderr(&out);
    assert!(out.status.success() && err.contains("15 of 18 entries"), "{err}");
    assert!(err.contains("2 entries: internvl3-14b (entry 7), internvl3-38b (entry 8)"), "{err}");
}

// ---- item 7: check and loader agree about templates ----

/// Before: `registry check` warned "a generic template will be used" (exit 0) and `generate` refused the entry.
#[test]
fn no_template_is_an_error_for_check_and_loader_alike() {
    let dir = scratch();
    let entry = r#"[{"model_name": "t", "backend": "llamacpp", "huggingface_id": "x/y",
        "release_date": "2024-01-01", "open_weight": true, "parameters": "1B", "languages": ["en"],
        "context_size": "4k", "license": {"name": "a", "url": "b"},
        "model_config": {"filename": "*.gguf", "premade_chat_template": false, "eos_to_cull": "x"}}]"#;
    std::fs::write(dir.path().join("r.json"), entry).expect("write");
    let out = clem(dir.path(), &["registry", "check", "r.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("error: r.json: entry 0 (t): model_config.custom_chat_template"), "{}", stdout(&out));
    let out = clem(dir.path(), &["--registry", "r.json", "generate", "-m", "t", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("custom_chat_template"), "{}", stderr(&out));
}

// ---- item 8: register ----

/// Before: the entry was written and clem exited 0.
#[test]
fn register_refuses_an_entry_the_loader_would_refuse() {
    let dir = scratch();
    let out = clem(dir.path(), &["register", "model", "x", "--backend", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("backend \"nosuch\" does not exist"), "{}", stderr(&out));
    assert!(!dir.path().join("model_registry.json").exists(), "nothing written");
}

/// Before: `--registry FILE` was ignored and ./model_registry.json written.
#[test]
fn register_writes_the_registry_named_by_registry() {
    let dir = scratch();
    let out = clem(
        dir.path(),
        &["--registry", "mine.json", "register", "model", "x", "--backend", "openai", "--set", "model_id=y"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.path().join("model_registry.json").exists());
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("mine.json")).expect("mine.json")).expect("json");
    assert_eq!(written[0]["model_id"], "y");
}

/// Before: the link was replaced by a plain file and the target left unchanged.
#[cfg(unix)]
#[test]
fn register_writes_through_a_symlinked_registry() {
    let dir = scratch();
    std::fs::create_dir(dir.path().join("real")).expect("mkdir");
    std::fs::write(dir.path().join("real/reg.json"), "[]").expect("write");
    std::os::unix::fs::symlink("real/reg.json", dir.path().join("model_registry.json")).expect("symlink");
    let out = clem(dir.path(), &["register", "model", "x", "--backend", "openai", "--set", "model_id=y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let link = dir.path().join("model_registry.json");
    assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink(), "the link stays a link");
    let target: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("real/reg.json")).expect("target"))
            .expect("json");
    assert_eq!(target[0]["model_name"], "x");
    // No temporary file is left beside the target or the link.
    for d in [dir.path().to_path_buf(), dir.path().join("real")] {
        let left: Vec<String> = std::fs::read_dir(&d)
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// The register command of docs/adding-models.md, run as written. Before: 5 metadata warnings on register and
/// on every later `resolve`, printed as `clem: warning: warning: ...`.
#[test]
fn the_docs_example_entry_gives_no_warning() {
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/adding-models.md"))
        .expect("docs/adding-models.md");
    let mut command = String::new();
    for line in docs.lines().skip_while(|l| !l.starts_with("clem register model")) {
        command.push_str(line);
        command.push('\n');
        if !line.ends_with('\\') {
            break;
        }
    }
    assert!(command.starts_with("clem register model my-gpt"), "{command}");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_clem")).parent().expect("bin dir").to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let dir = scratch();
    let out = Command::new("sh")
        .args(["-c", &command])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("PATH", path)
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "the docs' entry warns");
    let out = clem(dir.path(), &["resolve", "-m", "my-gpt"]);
    assert!(out.status.success() && !stderr(&out).contains("warning"), "{}", stderr(&out));
}

/// Before: `clem: warning: warning: ...` for every problem `resolve` showed.
#[test]
fn warnings_have_one_prefix() {
    let dir = scratch();
    std::fs::write(
        dir.path().join("model_registry.json"),
        r#"[{"model_name": "w", "backend": "openai", "model_id": "x"}]"#,
    )
    .expect("write");
    let out = clem(dir.path(), &["resolve", "-m", "w"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("clem: warning: model_registry.json: entry 0 (w): release_date"), "{err}");
    assert!(!err.contains("warning: warning"), "{err}");
}

/// Before: both were written to key.json and clem exited 0.
#[test]
fn register_key_refuses_unknown_and_empty_sections() {
    let dir = scratch();
    let out = clem(dir.path(), &["register", "key", "opneai", "--set", "api_key=sk-x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("did you mean \"openai\"?"), "{}", stderr(&out));
    let out = clem(dir.path(), &["register", "key", "", "--set", "api_key=sk-x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("section name is empty"), "{}", stderr(&out));
    assert!(!dir.path().join("key.json").exists(), "nothing written");
    // A known section, and then a custom one the file already has, are accepted.
    let out = clem(dir.path(), &["register", "key", "openai", "--set", "api_key=sk-x"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(dir.path().join("key.json"), r#"{"my_proxy": {"api_key": "a"}}"#).expect("write");
    let out = clem(dir.path(), &["register", "key", "my_proxy", "--set", "api_key=b"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A typo inside key.json: `list keys` says no backend reads the section and names the nearest (before: listed
/// as any other, while `openai` stayed missing without a word).
#[test]
fn list_keys_names_the_section_a_typo_meant() {
    let dir = scratch();
    std::fs::write(dir.path().join("key.json"), r#"{"opneai": {"api_key": "sk-abcdefghijkl"}}"#).expect("write");
    let out = clem(dir.path(), &["list", "keys"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: key.json section \"opneai\" is read by no backend; did you mean \"openai\"?"),
        "{}",
        stderr(&out)
    );
}

// ---- item 9: list, help, generate ----

/// Before: `missing (section huggingface)` for the local backends.
#[test]
fn list_backends_says_local_backends_need_no_key() {
    let dir = scratch();
    let out = clem(dir.path(), &["list", "backends"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for local in ["huggingface_local", "llamacpp"] {
        let line = text.lines().find(|l| l.starts_with(&format!("{local}\t"))).expect(local);
        assert!(line.ends_with("\tnot needed (optional section huggingface: missing)"), "{line}");
    }
    assert!(text.lines().any(|l| l == "openai\tbuilt\tmissing (section openai)"), "{text}");
}

/// Before: both printed nothing and exited 0.
#[test]
fn empty_lists_say_so() {
    let dir = scratch();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clem"));
    cmd.args(["list", "keys"]).current_dir(dir.path()).env("HOME", dir.path());
    for (_, var, _) in clem_core::keys::ENV_FALLBACK {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("runs");
    assert!(out.status.success());
    assert!(stderr(&out).contains("no keys: none in ./key.json, ~/.clemcore/key.json"), "{}", stderr(&out));
    let out = clem(dir.path(), &["list", "models", "--backend", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--backend \"nosuch\": no such backend"), "{}", stderr(&out));
    let out = clem(dir.path(), &["list", "models", "--backend", "opnai"]);
    assert!(stderr(&out).contains("did you mean \"openai\"?"), "{}", stderr(&out));
    // A real backend without entries is not an error, but is said.
    let out = clem(dir.path(), &["list", "models", "--backend", "human"]);
    assert!(out.status.success() && stderr(&out).contains("no model entry matches"), "{}", stderr(&out));
}

/// Before: `--registry`, `--no-default-registries`, `--keys`, `--threads` were described again in every
/// subcommand's help.
#[test]
fn global_options_are_described_once() {
    let dir = scratch();
    let top = stdout(&clem(dir.path(), &["--help"]));
    assert!(top.contains("Read only the --registry files"), "{top}");
    for sub in [&["list", "models", "--help"][..], &["generate", "--help"], &["register", "key", "--help"]] {
        let help = stdout(&clem(dir.path(), sub));
        assert!(!help.contains("Read only the --registry files"), "{sub:?}: {help}");
        assert!(help.contains("clem --help"), "{sub:?}: {help}");
    }
    // They still parse after the subcommand.
    let out = clem(dir.path(), &["list", "models", "--no-default-registries"]);
    assert!(out.status.success() && stdout(&out).is_empty(), "{}", stderr(&out));
}

/// Before: clap's "unexpected argument '-5' found ... to pass '-5' as a value, use '-- -5'".
#[test]
fn negative_max_tokens_is_a_clear_error() {
    let dir = scratch();
    let out = clem(dir.path(), &["generate", "-m", "mock", "-l", "-5", "hi"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("-5 is not a token count: give a whole number of at least 1"), "{err}");
    assert!(!err.contains("-- -5"), "{err}");
}

/// Before: `[]` was sent to the model.
#[test]
fn an_empty_messages_list_is_refused() {
    let dir = scratch();
    std::fs::write(dir.path().join("m.json"), "[]").expect("write");
    let out = clem(dir.path(), &["generate", "-m", "mock", "--messages", "m.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("m.json: the list of messages is empty"), "{}", stderr(&out));
}

/// Before: "give a PROMPT or --messages FILE".
#[test]
fn a_piped_prompt_is_read_from_stdin() {
    let dir = scratch();
    let out = clem_with_stdin(dir.path(), &["generate", "-m", "mock", "--json"], "q\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let triple: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert!(triple["prompt"].to_string().contains("\"content\":\"q\""), "{triple}");
    let out = clem_with_stdin(dir.path(), &["generate", "-m", "mock"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("standard input was empty"), "{}", stderr(&out));
}

/// Before: `cannot read: Not a directory (os error 20): Not a directory (os error 20)`.
#[test]
fn os_errors_are_printed_once() {
    let dir = scratch();
    std::fs::write(dir.path().join("plain"), "").expect("write");
    let out = clem(dir.path(), &["--registry", "plain/x.json", "list", "models"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("os error 20").count(), 1, "{err}");
    assert!(err.starts_with("clem: error: plain/x.json: cannot read: Not a directory"), "{err}");
}

/// Before: `clem list models | head -1` panicked ("failed printing to stdout: Broken pipe", exit 101) once the
/// reader left. Now the process ends as `cat` does, by SIGPIPE, with nothing on stderr.
#[test]
fn a_reader_that_leaves_early_ends_clem_quietly() {
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::process::ExitStatusExt as _;
    let dir = scratch();
    // Enough lines that the pipe's buffer (64 KiB) fills after the reader has gone.
    let registry = dir.path().join("many.json");
    let entries: Vec<Value> = (0..3000)
        .map(|i| {
            serde_json::json!({"model_name": format!("mock-model-with-a-long-name-{i:05}"), "backend": "mock",
            "release_date": "2024-01-01", "open_weight": true, "parameters": "1B", "languages": ["en"],
            "context_size": "8k", "license": {"name": "MIT", "url": "https://opensource.org/licenses/MIT"},
            "model_config": {}})
        })
        .collect();
    std::fs::write(&registry, serde_json::to_vec(&entries).expect("json")).expect("write registry");
    let mut child = Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(["--registry", registry.to_str().expect("utf-8 path"), "list", "models"])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("clem starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("one line");
    // The reader is dropped here: clem's next writes meet a closed pipe.
    let out = child.wait_with_output().expect("clem ends");
    let err = stderr(&out);
    assert!(!first.is_empty());
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc_sigpipe()), "status {:?}, stderr {err}", out.status);
}

/// SIGPIPE's number on Linux (13), without a libc dependency in the tests.
fn libc_sigpipe() -> i32 {
    13
}
