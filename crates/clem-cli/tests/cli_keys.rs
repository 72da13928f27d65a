//! Key files that exist but do not parse are errors naming the file, line and column, never skipped (issue 17,
//! item 2): `./key.json` first, then `~/.clemcore/key.json` (HOME points into a scratch folder).

#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::{clem, stderr, stdout};

/// A key file readable by us alone (else clem warns about its mode).
fn write_key(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

const BROKEN: &str = "{\n  \"openai\": {\"api_key\": \"sk-local-0123456789\",}\n}\n";

/// Before: `clem list keys` listed the key of ~/.clemcore/key.json (another account's, maybe) and exited 0,
/// printing only a warning that ./key.json was not used.
#[test]
fn a_broken_local_key_file_stops_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_key(&dir.path().join("key.json"), BROKEN);
    write_key(&dir.path().join(".clemcore/key.json"), r#"{"openai": {"api_key": "sk-home-account-0123456789"}}"#);
    let out = clem(dir.path(), &["list", "keys"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("key.json: invalid JSON at line 2, column 47"), "{err}");
    assert!(!stdout(&out).contains("sk-h"), "the home file's key was used: {}", stdout(&out));

    // A command that calls a model stops before any call, with the same message.
    let registry = serde_json::json!([{"model_name": "remote", "backend": "openai_compatible", "model_id": "x",
        "model_config": {"base_url": "http://127.0.0.1:9/v1", "max_attempts": 1}}]);
    std::fs::write(dir.path().join("reg.json"), registry.to_string()).expect("write");
    let out = clem(dir.path(), &["--registry", "reg.json", "generate", "-m", "remote", "hi"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("key.json: invalid JSON at line 2, column 47"), "{}", stderr(&out));
}

/// Before: a broken ~/.clemcore/key.json was skipped and the error said "no key file found".
#[test]
fn a_broken_home_key_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join(".clemcore/key.json");
    write_key(&home, "{\"openai\": [}");
    let out = clem(dir.path(), &["list", "keys"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}: invalid JSON at line 1, column 13", home.display())), "{err}");

    // A good file is used as before.
    write_key(&home, r#"{"openai": {"api_key": "sk-home-account-0123456789"}}"#);
    let out = clem(dir.path(), &["list", "keys"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("openai\tsk-h...6789"), "{}", stdout(&out));
}
