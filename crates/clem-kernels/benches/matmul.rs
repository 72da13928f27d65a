//! The packed kernels on SmolLM2-135M's matrix shapes, 1 and 8 rows, f32 and bf16 weights, on every kernel path
//! this CPU runs: time per product and GMAC/s (multiply-adds per second). A development aid for the kernels;
//! `bench/hf_local/run.py` is the benchmark against transformers. `cargo bench -p clem-kernels --bench matmul`
//! (RAYON_NUM_THREADS sets the threads; `CLEM_KERNELS=avx2` etc. measures one path only).

use std::time::Instant;

use clem_kernels::dispatch::{cpu_model, Features, Path};
use clem_kernels::{PackedMatrix, Result};
use half::bf16;

fn time(m: &PackedMatrix, x: &[f32], rows: usize) -> Result<f64> {
    let n = 100;
    m.matmul_t(x, rows)?;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(m.matmul_t(x, rows)?);
    }
    Ok(t.elapsed().as_secs_f64() / f64::from(n))
}

fn main() -> Result<()> {
    println!("CPU {}: {}", cpu_model(), Features::detect().describe());
    let paths: Vec<Path> = match std::env::var(clem_kernels::dispatch::ENV) {
        Ok(_) => vec![clem_kernels::path()?],
        Err(_) => Path::ALL.into_iter().filter(|p| p.supported()).collect(),
    };
    for path in paths {
        let calibration = clem_kernels::tuning::calibrate(path)?;
        let tuning = calibration.tuning;
        println!("{path}: {tuning:?}, {}", calibration.source);
        for (inp, out) in [(576usize, 1536usize), (1536, 576), (576, 49152)] {
            let x: Vec<f32> = (0..8 * inp).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
            let w: Vec<f32> = (0..out * inp).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let m32 = PackedMatrix::from_f32_on(path, &w, out, inp)?;
            let m16 = PackedMatrix::from_bf16_on(path, &wb, out, inp)?;
            for rows in [1usize, 8] {
                let (a, b) = (time(&m32, &x[..rows * inp], rows)?, time(&m16, &x[..rows * inp], rows)?);
                let macs = (rows * inp * out) as f64;
                println!(
                    "[{path} {tuning:?}] ({out}, {inp}) x {rows} rows: f32 {:7.1} us {:5.1} GMAC/s | bf16 {:7.1} us {:5.1} GMAC/s",
                    a * 1e6,
                    macs / a / 1e9,
                    b * 1e6,
                    macs / b / 1e9
                );
            }
        }
    }
    Ok(())
}
