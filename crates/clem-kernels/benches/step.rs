use clem_kernels::{PackedMatrix, Result};
use half::bf16;
use std::time::Instant;
fn main() -> Result<()> {
    let shapes = [(960usize, 576usize), (576, 576), (3072, 576), (576, 1536)];
    let mut ms = Vec::new();
    let layers: usize = std::env::var("LAYERS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    for l in 0..layers {
        for &(out, inp) in &shapes {
            let w: Vec<bf16> =
                (0..out * inp).map(|i| bf16::from_f32(((i * 7919 + l) % 1000) as f32 * 1e-3 - 0.5)).collect();
            ms.push(PackedMatrix::from_bf16(&w, out, inp)?);
        }
    }
    let w: Vec<bf16> = (0..49152 * 576).map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 * 1e-3 - 0.5)).collect();
    ms.push(PackedMatrix::from_bf16(&w, 49152, 576)?);
    let macs: usize = ms.iter().map(|m| m.dims().0 * m.dims().1).sum();
    for rows in [1usize, 2, 4, 6, 8, 16] {
        let mut best = f64::MAX;
        let mut per = [0f64; 5];
        for _ in 0..5 {
            let t = Instant::now();
            for (k, m) in ms.iter().enumerate() {
                let t1 = Instant::now();
                let x: Vec<f32> = (0..rows * m.dims().1).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
                std::hint::black_box(m.matmul_t(&x, rows)?);
                per[if k == 4 * layers { 4 } else { k % 4 }] += t1.elapsed().as_secs_f64() / 5.0;
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "rows {rows}: step {:.2} ms, {:.1} GMAC/s; qkv {:.2} o {:.2} gate_up {:.2} down {:.2} lm_head {:.2} ms",
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
