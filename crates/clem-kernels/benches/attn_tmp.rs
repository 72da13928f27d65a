use clem_kernels::attention::{attend, AttendShape};
use std::time::Instant;
fn main() {
    let (len, d, calls) = (110usize, 64usize, 720usize);
    let cap = 256;
    let kv: Vec<Vec<f32>> = (0..calls).map(|c| (0..cap * d).map(|i| ((i + c) % 13) as f32 * 0.01).collect()).collect();
    let q: Vec<f32> = (0..3 * d).map(|i| (i % 5) as f32 * 0.1).collect();
    let mask = vec![0f32; len];
    let s = AttendShape { queries: 3, positions: 1, len, head_dim: d, kv_stride: d, scale: 0.125, softcap: None };
    let mut out = vec![0f32; 3 * d];
    for distinct in [true, false] {
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            for c in 0..calls {
                let b = if distinct { &kv[c] } else { &kv[0] };
                attend(&q, b, b, &mask, &s, &mut out).unwrap();
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("distinct {distinct}: {:.2} ms per step of {calls} calls", best * 1e3);
    }
}
