//! `--threads` above the cores this process may use: clamped with a warning, and never the collapse it caused
//! before (issue #17: on 2 cores `--threads 3` took 22 s where 2 threads took 0.34 s, `--threads 8` did not finish
//! in a minute, because spinning workers took the cores from the thread doing the work). Both local backends on the
//! real SmolLM2 files; skipped with a printed reason when they are not in the HF cache (failing under CI).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn hub_cache() -> Option<PathBuf> {
    std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub")))
}

fn present(repo: &str, file: &str) -> bool {
    hub_cache().is_some_and(|h| {
        std::fs::read_dir(h.join(repo).join("snapshots"))
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().join(file).is_file())))
    })
}

fn skip(reason: &str) {
    assert!(std::env::var_os("CI").is_none(), "{reason} (required under CI)");
    eprintln!("SKIP: {reason}");
}

/// Runs `clem [threads] generate -m MODEL -l 16 ...`; its wall time and stderr.
fn generate(model: &str, threads: Option<usize>, rayon: Option<usize>) -> (Duration, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clem"));
    if let Some(n) = threads {
        cmd.args(["--threads", &n.to_string()]);
    }
    cmd.args(["generate", "-m", model, "-l", "16", "Name three colours."])
        .current_dir(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RAYON_NUM_THREADS");
    if let Some(cache) = hub_cache() {
        cmd.env("HF_HUB_CACHE", cache);
    }
    if let Some(n) = rayon {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let start = Instant::now();
    let out = cmd.output().expect("clem runs");
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "clem generate -m {model} failed: {err}");
    (took, err)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The two tests compare timings, so they run one at a time (in parallel, one's runs slowed the other's).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Four times the cores costs no more than twice as much as the cores (before: 65x at 3 threads on 2 cores).
fn check(model: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cores = cores();
    let (base, _) = generate(model, Some(cores), None);
    let (over, err) = generate(model, Some(4 * cores), None);
    assert!(
        err.contains(&format!("--threads {} is more than the {cores} core(s)", 4 * cores)),
        "no clamp warning: {err}"
    );
    assert!(
        over < base * 2 + Duration::from_secs(1),
        "{model}: --threads {} took {over:?}, {cores}: {base:?}",
        4 * cores
    );
    // The warning is for the flag only: as many threads as cores says nothing.
    let (_, err) = generate(model, Some(cores), None);
    assert!(!err.contains("more than the"), "{err}");
}

#[test]
fn too_many_threads_are_clamped_llamacpp() {
    if !present("models--QuantFactory--SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf") {
        return skip("SmolLM2-135M-Instruct.Q4_1.gguf is not in the HF cache: run scripts/fetch-smollm2.sh");
    }
    check("smollm2-135m");
}

#[test]
fn too_many_threads_are_clamped_huggingface_local() {
    if !present("models--HuggingFaceTB--SmolLM2-135M-Instruct", "model.safetensors") {
        return skip("SmolLM2-135M-Instruct (HF folder) is not in the HF cache: run scripts/prepare-smollm2-hf.sh");
    }
    check("smollm2-135m-hf");
    // A global pool larger than the cores (RAYON_NUM_THREADS without --threads): lowered as --threads is.
    let (base, _) = generate("smollm2-135m-hf", None, Some(cores()));
    let (over, err) = generate("smollm2-135m-hf", None, Some(8 * cores()));
    assert!(
        err.contains(&format!("RAYON_NUM_THREADS={} is more than the {} core(s)", 8 * cores(), cores())),
        "no clamp warning: {err}"
    );
    assert!(
        over < base * 2 + Duration::from_secs(1),
        "RAYON_NUM_THREADS={}: {over:?}, {}: {base:?}",
        8 * cores(),
        cores()
    );
}
