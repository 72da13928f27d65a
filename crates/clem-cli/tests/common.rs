//! Helpers shared by the CLI integration tests: run the real `clem` binary in a scratch folder.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

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

/// A `clem serve` child on 127.0.0.1 with a free port; killed (and its scratch folder removed) on drop.
pub struct Served {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _dir: Option<tempfile::TempDir>,
}

impl Served {
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` (a `clem ... serve --port 0 ...` command) and reads the address from its first line; `dir` (its
/// working folder, when the test made one for it) lives as long as the server.
pub fn start_serve(mut cmd: Command, dir: Option<tempfile::TempDir>) -> Served {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("clem starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    let Some(base) = line.trim().strip_prefix("clem serve: listening on ").map(String::from) else {
        let _ = child.kill();
        panic!("clem serve did not start: {line:?}");
    };
    Served { child, base, _dir: dir }
}
