//! huggingface_local benchmark on SmolLM2-135M-Instruct: a fixed chat prompt, exactly 128 new tokens, greedy;
//! prefill time, decode tokens/s, batch-8 throughput, peak RSS, and the memory-bandwidth ceiling (measured copy
//! bandwidth over the bytes of weights read per token) with the fraction of it reached.
//!
//! Run by `python3 bench/hf_local/run.py` (which sets RAYON_NUM_THREADS per run and runs transformers after
//! it); alone:
//! `cargo bench -p clem-backends --no-default-features --features huggingface_local --bench hf_local -- DIR`
//! where DIR is a model folder (default: the SmolLM2 snapshot in the Hugging Face cache).

use std::time::Instant;

use clem_backends::huggingface_local::HfLocalModel;
use clem_backends::LoadContext;
use clem_core::{GenArgs, Message, ModelSpec};

const NEW_TOKENS: usize = 128;

// The clem binary's allocator: the benchmark measures what `clem` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Bytes per second of a large memory copy (the bandwidth a decode step is bound by).
fn copy_bandwidth() -> f64 {
    let n = 64 << 20;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    // A copy reads and writes every byte.
    (2 * n * 4) as f64 / best
}

fn main() {
    let dir = std::env::args().skip(1).find(|a| !a.starts_with('-')).or_else(|| {
        clem_core::hf::cached_snapshot(&clem_core::hf::hub_cache_dir(), "HuggingFaceTB/SmolLM2-135M-Instruct")
            .map(|p| p.display().to_string())
    });
    let Some(dir) = dir else {
        eprintln!("no model folder: run scripts/prepare-smollm2-hf.sh or pass a folder");
        std::process::exit(2);
    };
    let serde_json::Value::Object(map) = serde_json::json!({
        "model_name": "bench", "backend": "huggingface_local", "huggingface_id": dir,
        "model_config": {"premade_chat_template": true, "eos_to_cull": "<\\|im_end\\|>"}
    }) else {
        unreachable!()
    };
    let t = Instant::now();
    let model = match HfLocalModel::load(&ModelSpec::new(map), &LoadContext::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let load = t.elapsed();
    let messages =
        vec![Message::user("Write a short story about a lighthouse keeper who finds a message in a bottle.")];
    let prompt = model.render(&messages).and_then(|p| model.encode(&p)).unwrap_or_default();
    let args = GenArgs::new(0.0, NEW_TOKENS as u32);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());

    // Warm-up, then batch 1: EOS ignored so exactly NEW_TOKENS are decoded.
    let _ = model.generate_tokens(std::slice::from_ref(&prompt), &[8], &args, Some(&[]));
    let (out, t1) = match model.generate_tokens(std::slice::from_ref(&prompt), &[NEW_TOKENS], &args, Some(&[])) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    assert_eq!(out[0].tokens.len(), NEW_TOKENS);
    let decode_tps = t1.decode_tokens as f64 / t1.decode.as_secs_f64();
    let batch: Vec<Vec<u32>> = vec![prompt.clone(); 8];
    let t = Instant::now();
    let (outs, t8) = match model.generate_tokens(&batch, &[NEW_TOKENS; 8], &args, Some(&[])) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let b8 = outs.iter().map(|o| o.tokens.len()).sum::<usize>() as f64 / t.elapsed().as_secs_f64();
    let b1 = NEW_TOKENS as f64 / (t1.prefill + t1.decode).as_secs_f64();

    // Every decode step reads every weight once as loaded (matrices as stored, the tied embedding once, as lm_head).
    let bytes_per_token = clem_backends::huggingface_local::files::weight_files(std::path::Path::new(&dir))
        .ok()
        .and_then(|f| clem_backends::huggingface_local::weights::SafetensorsFiles::open(&f).ok())
        .map_or(0, |w| w.footprint().loaded_bytes);
    // Before the bandwidth probe, whose two 256 MiB buffers would otherwise be the peak.
    let peak_rss = peak_rss_mib();
    let bw = copy_bandwidth();
    let ceiling = bw / bytes_per_token as f64;
    println!(
        "clemrs huggingface_local threads={threads} dir={dir}\n  load {:.2}s, prompt {} tokens, prefill {:.3}s, \
         decode {decode_tps:.1} tok/s ({} tokens)\n  batch 1 throughput {b1:.1} tok/s, batch 8 throughput {b8:.1} tok/s \
         ({:.2}x; its prefill {:.3}s, decode {:.1} steps/s)\n  peak RSS {} MiB\n  bandwidth {:.1} GB/s, {:.0} MB read per token -> ceiling {ceiling:.1} tok/s, \
         reached {:.0}%",
        load.as_secs_f64(),
        prompt.len(),
        t1.prefill.as_secs_f64(),
        t1.decode_tokens,
        b8 / b1,
        t8.prefill.as_secs_f64(),
        (NEW_TOKENS - 1) as f64 / t8.decode.as_secs_f64(),
        peak_rss,
        bw / 1e9,
        bytes_per_token as f64 / 1e6,
        100.0 * decode_tps / ceiling,
    );
    // One machine-readable line for bench/hf_local/run.py, which prints the side-by-side table.
    println!(
        "{}",
        serde_json::json!({"side": "clemrs", "threads": threads, "dir": dir, "prompt_tokens": prompt.len(),
            "prefill_s": t1.prefill.as_secs_f64(), "decode_tps": decode_tps, "batch1_tps": b1, "batch8_tps": b8,
            "peak_rss_mib": peak_rss, "ceiling_tps": ceiling})
    );
}
