//! Helpers shared by the CLI integration tests: run the real `clem` binary in a scratch folder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The fixtures folder beside the repository (`../shared/fixtures`), if present.
pub fn fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    dir.is_dir().then_some(dir)
}

/// A fixture file, or `None` after printing why the test is skipped. The fixtures live outside the repository
/// and a checkout may not have them, CI included, so their absence is a printed skip, never a failure; a folder
/// that is there but lacks the file is a failure.
pub fn fixture(name: &str) -> Option<PathBuf> {
    match fixtures().map(|d| d.join(name)) {
        Some(p) if p.is_file() => Some(p),
        Some(p) => panic!("{} is missing from the fixtures folder", p.display()),
        None => {
            eprintln!("SKIP: ../shared/fixtures/{name} not found beside the repository");
            None
        }
    }
}

/// Runs `clem` with `args` in `dir`, with HOME pointed into `dir` so no user key.json leaks in.
pub fn clem(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .expect("clem runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
