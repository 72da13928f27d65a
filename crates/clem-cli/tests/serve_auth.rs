//! `clem serve` refuses an empty API key (issue #14): before, `--api-key ""` and an empty CLEM_SERVE_API_KEY
//! were taken as "no key" and the server started without authentication (this test then saw it still running
//! after 20 s and killed it). Refused before any model loads or any port opens.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn an_empty_api_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, env) in [(vec!["--api-key", ""], None), (vec!["--api-key", "  "], None), (vec![], Some(""))] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clem"));
        cmd.args(["serve", "-m", "mock", "--port", "0"]).args(&args).current_dir(dir.path()).env("HOME", dir.path());
        match env {
            Some(v) => cmd.env("CLEM_SERVE_API_KEY", v),
            None => cmd.env_remove("CLEM_SERVE_API_KEY"),
        };
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("clem runs");
        let clock = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if clock.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} {env:?}: clem serve started without authentication");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (mut out, mut err) = (String::new(), String::new());
        child.stdout.take().expect("stdout").read_to_string(&mut out).expect("stdout");
        child.stderr.take().expect("stderr").read_to_string(&mut err).expect("stderr");
        assert!(!status.success(), "{args:?} {env:?}");
        assert!(err.contains("the API key is empty"), "{err}");
        assert!(out.is_empty(), "it listened: {out}");
    }
}
