//! huggingface_local benchmark on SmolLM2-135M-Instruct: a fixed chat prompt, exactly 128 new tokens, greedy;
//! prefill time, decode tokens/s, batch-8 throughput, peak RSS, the memory-bandwidth ceiling of decoding (measured
//! copy bandwidth over the bytes of weights read per token) and the compute ceiling of batch 8 (measured
//! multiply-add rate over the multiply-adds of each row's prefill and decoding steps, per token generated), with
//! the fractions of them reached, and the fraction of the FMA peak that batch 8 at 3x batch 1 would need. Each timed run is
//! repeated (`BENCH_REPEATS`, default 3) and the fastest kept: single runs on this shared machine vary by ±20%. Every
//! figure comes with the CPU model, its features, the kernel path the model ran on (`CLEM_KERNELS` forces one) and the
//! kernels' tuning (calibrated at the first load on a machine, then cached).
//!
//! Run by `python3 bench/hf_local/run.py` (which sets RAYON_NUM_THREADS per run and runs transformers after
//! it); alone:
//! `cargo bench -p clem-backends --no-default-features --features huggingface_local --bench hf_local -- DIR`
//! where DIR is a model folder (default: the SmolLM2 snapshot in the Hugging Face cache).

use std::time::Instant;

use clem_backends::huggingface_local::{clem_kernels, HfLocalModel};
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

fn repeats() -> usize {
    std::env::var("BENCH_REPEATS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(3)
}

/// Multiply-adds per second one core sustains: 12 independent chains of 8-lane fused multiply-adds on registers
/// (the peak the matrix kernels are bound by when a batch makes them compute-bound). x86-64 with FMA only.
#[cfg(target_arch = "x86_64")]
fn peak_macs_per_core() -> Option<f64> {
    if !std::arch::is_x86_feature_detected!("fma") || !std::arch::is_x86_feature_detected!("avx") {
        return None;
    }
    let mut best = f64::MAX;
    let iterations: u64 = 20_000_000;
    for _ in 0..5 {
        let t = Instant::now();
        // SAFETY: only ymm registers named as clobbered and one counter are touched; AVX and FMA are present.
        unsafe {
            std::arch::asm!(
                "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1", "vxorps ymm2, ymm2, ymm2",
                "vxorps ymm3, ymm3, ymm3", "vxorps ymm4, ymm4, ymm4", "vxorps ymm5, ymm5, ymm5",
                "vxorps ymm6, ymm6, ymm6", "vxorps ymm7, ymm7, ymm7", "vxorps ymm8, ymm8, ymm8",
                "vxorps ymm9, ymm9, ymm9", "vxorps ymm10, ymm10, ymm10", "vxorps ymm11, ymm11, ymm11",
                "vxorps ymm12, ymm12, ymm12", "vxorps ymm13, ymm13, ymm13",
                "2:",
                "vfmadd231ps ymm0, ymm12, ymm13", "vfmadd231ps ymm1, ymm12, ymm13", "vfmadd231ps ymm2, ymm12, ymm13",
                "vfmadd231ps ymm3, ymm12, ymm13", "vfmadd231ps ymm4, ymm12, ymm13", "vfmadd231ps ymm5, ymm12, ymm13",
                "vfmadd231ps ymm6, ymm12, ymm13", "vfmadd231ps ymm7, ymm12, ymm13", "vfmadd231ps ymm8, ymm12, ymm13",
                "vfmadd231ps ymm9, ymm12, ymm13", "vfmadd231ps ymm10, ymm12, ymm13", "vfmadd231ps ymm11, ymm12, ymm13",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iterations => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
                out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm12") _, out("ymm13") _,
                options(nostack, nomem),
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Some((iterations * 12 * 8) as f64 / best)
}

#[cfg(not(target_arch = "x86_64"))]
fn peak_macs_per_core() -> Option<f64> {
    None
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
    let cpu = clem_kernels::dispatch::cpu_model();
    let features = clem_kernels::Features::detect().describe();
    let (path_name, tuning) = match model.causal_lm().config().compute.kernel_path() {
        Some(p) => (p.name().to_string(), format!("{:?}", clem_kernels::tuning::get(p))),
        None => ("candle".to_string(), "-".to_string()),
    };
    let messages =
        vec![Message::user("Write a short story about a lighthouse keeper who finds a message in a bottle.")];
    let prompt = model.render(&messages).and_then(|p| model.encode(&p)).unwrap_or_default();
    let args = GenArgs::new(0.0, NEW_TOKENS as u32);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());

    // The fastest of `repeats()` runs of a batch: its wall time, timings and tokens generated. EOS ignored, so
    // exactly NEW_TOKENS per row.
    let fastest = |batch: &[Vec<u32>]| {
        let mut best: Option<(f64, clem_backends::huggingface_local::generate::Timings, usize)> = None;
        for _ in 0..repeats() {
            let t = Instant::now();
            let (outs, timings) = match model.generate_tokens(batch, &vec![NEW_TOKENS; batch.len()], &args, true, &[]) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            };
            let wall = t.elapsed().as_secs_f64();
            assert!(outs.iter().all(|o| o.tokens.len() == NEW_TOKENS));
            if best.as_ref().is_none_or(|b| wall < b.0) {
                best = Some((wall, timings, outs.len() * NEW_TOKENS));
            }
        }
        best.unwrap_or_default()
    };
    let _ = model.generate_tokens(std::slice::from_ref(&prompt), &[8], &args, true, &[]);
    let (_, t1, _) = fastest(std::slice::from_ref(&prompt));
    let decode_tps = t1.decode_tokens as f64 / t1.decode.as_secs_f64();
    let (wall8, t8, tokens8) = fastest(&vec![prompt.clone(); 8]);
    let b8 = tokens8 as f64 / wall8;
    let b1 = NEW_TOKENS as f64 / (t1.prefill + t1.decode).as_secs_f64();

    // Every decode step reads every weight once as loaded (matrices as stored, the tied embedding once, as
    // lm_head), and multiplies it once per row (attention's own products, a few percent here, not counted).
    let footprint = clem_backends::huggingface_local::files::weight_files(std::path::Path::new(&dir))
        .ok()
        .and_then(|f| clem_backends::huggingface_local::weights::SafetensorsFiles::open(&f).ok())
        .map(|w| w.footprint());
    let bytes_per_token = footprint.as_ref().map_or(0, |f| f.loaded_bytes);
    let macs_per_token = footprint.as_ref().map_or(0, |f| f.params) as f64;
    let cores = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let peak = peak_macs_per_core().unwrap_or(0.0);
    // A batch's work: each row's prompt through every matrix but the output projection (run for its last position
    // only), then NEW_TOKENS - 1 full decoding steps. At the FMA peak that bounds batch throughput from above.
    let lm_head = clem_backends::huggingface_local::config::ModelConfig::load(std::path::Path::new(&dir))
        .map_or(0.0, |c| (c.hidden_size * c.vocab_size) as f64);
    let macs_per_row =
        prompt.len() as f64 * (macs_per_token - lm_head) + lm_head + (NEW_TOKENS - 1) as f64 * macs_per_token;
    let compute_ceiling = peak * cores as f64 * NEW_TOKENS as f64 / macs_per_row;
    // Before the bandwidth probe, whose two 256 MiB buffers would otherwise be the peak.
    let peak_rss = peak_rss_mib();
    let bw = copy_bandwidth();
    let ceiling = bw / bytes_per_token as f64;
    println!(
        "clemrs huggingface_local threads={threads} dir={dir}\n  CPU {cpu} ({features}), kernels {path_name}, \
         {tuning}\n  load {:.2}s, prompt {} tokens, prefill {:.3}s, \
         decode {decode_tps:.1} tok/s ({} tokens)\n  batch 1 throughput {b1:.1} tok/s, batch 8 throughput {b8:.1} tok/s \
         ({:.2}x; its prefill {:.3}s, decode {:.1} steps/s)\n  peak RSS {} MiB\n  bandwidth {:.1} GB/s, {:.0} MB read per token -> ceiling {ceiling:.1} tok/s, \
         reached {:.0}%\n  compute {:.1} GMAC/s per core x {cores}, {:.0} M multiply-adds per token ({:.0} M per row with its \
         prefill) -> batch ceiling {compute_ceiling:.1} tok/s ({:.2}x batch 1), batch 8 reached {:.0}%; 3x batch 1 \
         needs {:.0}% of the FMA peak",
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
        peak / 1e9,
        macs_per_token / 1e6,
        macs_per_row / NEW_TOKENS as f64 / 1e6,
        compute_ceiling / b1,
        100.0 * b8 / compute_ceiling,
        100.0 * 3.0 * b1 / compute_ceiling,
    );
    // One machine-readable line for bench/hf_local/run.py, which prints the side-by-side table.
    println!(
        "{}",
        serde_json::json!({"side": "clemrs", "threads": threads, "dir": dir, "prompt_tokens": prompt.len(),
            "prefill_s": t1.prefill.as_secs_f64(), "decode_tps": decode_tps, "batch1_tps": b1, "batch8_tps": b8,
            "peak_rss_mib": peak_rss, "ceiling_tps": ceiling, "compute_ceiling_tps": compute_ceiling,
            "cpu": cpu, "features": features, "kernels": path_name, "tuning": tuning})
    );
}
