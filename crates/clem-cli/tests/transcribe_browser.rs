//! `clem transcribe` after a mock hellogame run: the HTML is self-contained and escaped, and headless
//! Chromium renders it (greeting visible, inline script ran, no console errors). The screenshot is kept under
//! target/tmp as a test artifact. Without chromium the browser part is skipped, except in CI (env CI set).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn clem(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clem"))
        .args(args)
        .current_dir(dir)
        .env_remove("CLEM_TEST_CALL_DELAY_MS")
        .output()
        .expect("clem runs")
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Runs headless chromium on a file URL with a time limit; returns (stdout, stderr).
fn headless(browser: &Path, profile: &Path, extra: &[String], file: &Path) -> (String, String) {
    let url = format!("file://{}", file.display());
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn console_errors(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("Uncaught") || (l.contains("CONSOLE") && l.contains("ERROR"))).collect()
}

#[test]
fn transcripts_are_self_contained_and_render_in_chromium() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A reply with markup in it must come out as text.
    let run = clem(tmp.path(), &["run", "-g", "hellogame", "-m", "mock", "-r", "res"]);
    assert!(run.status.success());
    let evil = r#"{"model_name": "mock", "replies": ["GREET: <script>alert(1)</script> & <b>hello</b>"]}"#;
    let run = clem(tmp.path(), &["run", "-g", "hellogame", "-m", evil, "-r", "res2"]);
    assert!(run.status.success());

    let out = clem(tmp.path(), &["transcribe", "-r", "res"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("10 transcripts"));
    let index = tmp.path().join("res/index.html");
    let page = tmp.path().join("res/mock/hellogame/greet_en/instance_00000/transcript.html");
    let html = std::fs::read_to_string(&page).expect("transcript written");
    // clembench's hellogame: the mock Greeter's greeting, then the scripted Greeted player's answer.
    assert!(html.contains("GREET: Hello Ted!") && html.contains("Peter: Hi, thanks for having me!"));
    let tex = std::fs::read_to_string(page.with_file_name("transcript.tex")).expect("transcript.tex written beside");
    assert!(tex.contains("\\texttt{GREET: Hello Ted!}"), "{tex}");
    assert!(html.contains("<details>"), "prompt and raw response one click away");
    assert!(html.contains("&quot;clem_player&quot;"), "raw response shown, escaped");
    for needle in ["http://", "https://", "src=\"", "<link"] {
        assert!(!html.contains(needle), "no external asset: {needle}");
    }
    let index_html = std::fs::read_to_string(&index).expect("index written");
    assert!(index_html.contains("mock/hellogame/greet_en/instance_00009/transcript.html"));

    let out = clem(tmp.path(), &["transcribe", "-r", "res2"]);
    assert!(out.status.success());
    let evil_html =
        std::fs::read_to_string(tmp.path().join("res2/mock/hellogame/greet_en/instance_00000/transcript.html"))
            .expect("written");
    assert!(evil_html.contains("GREET: &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;hello&lt;/b&gt;"));
    assert!(!evil_html.contains("<script>alert(1)"));
    assert_eq!(clem(tmp.path(), &["transcribe", "-r", "missing"]).status.code(), Some(1));

    let Some(browser) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "chromium is required in CI (apt-get install chromium)");
        eprintln!("SKIPPED browser check: chromium is not installed (apt-get install chromium)");
        return;
    };
    let profile = tmp.path().join("profile");
    let (dom, stderr) = headless(&browser, &profile, &["--dump-dom".into()], &page);
    assert!(dom.contains("GREET: Hello Ted!"), "rendered DOM shows the greeting:\n{dom}");
    assert!(dom.contains("data-transcript-ready=\"1\""), "the inline script ran:\n{dom}");
    assert!(console_errors(&stderr).is_empty(), "console errors: {:?}", console_errors(&stderr));

    let (dom, stderr) = headless(&browser, &profile, &["--dump-dom".into()], &index);
    assert!(dom.contains("instance_00009") && dom.contains("data-transcript-ready=\"1\""));
    assert!(console_errors(&stderr).is_empty(), "console errors: {:?}", console_errors(&stderr));

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("clem-transcript.png");
    let _ = std::fs::remove_file(&shot);
    let (_, stderr) = headless(
        &browser,
        &profile,
        &[format!("--screenshot={}", shot.display()), "--window-size=1000,900".into()],
        &page,
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "screenshot written ({size} bytes); chromium said:\n{stderr}");
    println!("transcript screenshot: {}", shot.display());
}
