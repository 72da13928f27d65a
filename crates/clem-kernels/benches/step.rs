//! The kernels over one decoding step of SmolLM2-135M: 30 layers of distinct matrices plus the output projection
//! (so the weights stream from memory, as in a model; a repeated matrix would stay in cache), for 1 to 16 rows, in
//! f32 and bf16; then the decoding attention of 8 rows at 110 positions over distinct f32 and bf16 KV buffers.
//! Time per step, GMAC/s and the time per matrix shape. A development aid for the kernels; `bench/hf_local/run.py`
//! is the benchmark against transformers. `cargo bench -p clem-kernels --bench step` (RAYON_NUM_THREADS sets the
//! threads, `CLEM_KERNELS` the kernel path; every line names the path and its tuning, the first the CPU).

use std::time::Instant;

use clem_kernels::attention::{attend, prefetch, AttendShape, KvValue};
use clem_kernels::dispatch::{cpu_model, Features};
use clem_kernels::{PackedMatrix, Result};
use half::bf16;

/// (out, inp) of one layer's fused q/k/v, o, fused gate/up and down projections, and of the output projection.
const LAYER: [(usize, usize); 4] = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
const LM_HEAD: (usize, usize) = (49152, 576);
const LAYERS: usize = 30;

fn matrix(out: usize, inp: usize, seed: usize, as_bf16: bool) -> Result<PackedMatrix> {
    let w: Vec<f32> = (0..out * inp).map(|i| ((i * 7919 + seed) % 1000) as f32 * 1e-3 - 0.5).collect();
    if as_bf16 {
        let w: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        PackedMatrix::from_bf16(&w, out, inp)
    } else {
        PackedMatrix::from_f32(&w, out, inp)
    }
}

fn steps(as_bf16: bool) -> Result<()> {
    let mut ms = Vec::new();
    for l in 0..LAYERS {
        for &(out, inp) in &LAYER {
            ms.push(matrix(out, inp, l, as_bf16)?);
        }
    }
    ms.push(matrix(LM_HEAD.0, LM_HEAD.1, 0, as_bf16)?);
    let macs: usize = ms.iter().map(|m| m.dims().0 * m.dims().1).sum();
    for rows in [1usize, 2, 4, 6, 8, 16] {
        let xs: Vec<Vec<f32>> =
            ms.iter().map(|m| (0..rows * m.dims().1).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect()).collect();
        let (mut best, mut per) = (f64::MAX, [f64::MAX; 5]);
        for _ in 0..5 {
            let mut shape_time = [0f64; 5];
            let t = Instant::now();
            for (k, (m, x)) in ms.iter().zip(&xs).enumerate() {
                let t1 = Instant::now();
                std::hint::black_box(m.matmul_t(x, rows)?);
                shape_time[if k == LAYERS * 4 { 4 } else { k % 4 }] += t1.elapsed().as_secs_f64();
            }
            best = best.min(t.elapsed().as_secs_f64());
            for (p, s) in per.iter_mut().zip(shape_time) {
                *p = p.min(s);
            }
        }
        println!(
            "[{}] {} rows {rows:2}: step {:6.2} ms, {:5.1} GMAC/s; qkv {:.2} o {:.2} gate_up {:.2} down {:.2} lm_head {:.2} ms",
            label()?,
            if as_bf16 { "bf16" } else { "f32 " },
            best * 1e3,
            (macs * rows) as f64 / best / 1e9,
            per[0] * 1e3,
            per[1] * 1e3,
            per[2] * 1e3,
            per[3] * 1e3,
            per[4] * 1e3
        );
    }
    Ok(())
}

/// 8 rows x 30 layers x 3 KV heads, each attending 3 query heads to 110 keys of 64 dimensions, over a cache of
/// `T` (f32 for f32 checkpoints, bf16 for bf16 ones).
fn attention<T: KvValue>(dtype: &str) -> Result<()> {
    let (len, d, calls, cap) = (110usize, 64usize, 8 * LAYERS * 3, 256usize);
    let fill =
        |c: usize, m: usize| -> Vec<T> { (0..cap * d).map(|i| T::narrow(((i + c) % m) as f32 * 0.01)).collect() };
    let k: Vec<Vec<T>> = (0..calls).map(|c| fill(c, 13)).collect();
    let v: Vec<Vec<T>> = (0..calls).map(|c| fill(2 * c, 11)).collect();
    let q: Vec<f32> = (0..3 * d).map(|i| (i % 5) as f32 * 0.1).collect();
    let mask = vec![0f32; len];
    let s = AttendShape { queries: 3, positions: 1, len, head_dim: d, kv_stride: d, scale: 0.125, softcap: None };
    let mut out = vec![0f32; 3 * d];
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        for (i, (k_i, v_i)) in k.iter().zip(&v).enumerate() {
            if let Some(next) = k.get(i + 1) {
                prefetch(next, &s);
            }
            attend(&q, k_i, v_i, &mask, &s, &mut out)?;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("[{}] {dtype} attention of a step (8 rows, {calls} calls, {len} keys): {:.2} ms", label()?, best * 1e3);
    Ok(())
}

/// The kernel path and its tuning, for every figure.
fn label() -> Result<String> {
    let path = clem_kernels::path()?;
    Ok(format!("{path} {:?}", clem_kernels::tuning::get(path)))
}

fn main() -> Result<()> {
    // The tuning `clem` runs with: cached, or measured now (CLEM_KERNELS_TUNING=default: today's constants).
    let calibration = clem_kernels::tuning::calibrate(clem_kernels::path()?)?;
    println!(
        "CPU {}: {}; kernel path {} ({})",
        cpu_model(),
        Features::detect().describe(),
        label()?,
        calibration.source
    );
    steps(false)?;
    steps(true)?;
    attention::<f32>("f32")?;
    attention::<bf16>("bf16")
}
