//! Attention of a few query rows against one KV head's keys and values, read in place from a cache buffer: the
//! decoding step, where a general matmul would pack the whole cache on every call to multiply it by a handful
//! of rows. Scores are scaled, optionally soft-capped (`tanh(s / cap) * cap`), masked additively, then softmaxed
//! (max subtracted) as transformers does.

use crate::{KernelError, Result};

/// The shapes of one [`attend`] call.
#[derive(Debug, Clone, Copy)]
pub struct AttendShape {
    /// Query rows (heads sharing this KV head x positions of the step, head-major).
    pub queries: usize,
    /// Positions of the step: query row `j` uses mask row `j % positions`.
    pub positions: usize,
    /// Keys so far.
    pub len: usize,
    pub head_dim: usize,
    /// Elements between consecutive keys (and values) in their buffers.
    pub kv_stride: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `out (queries, head_dim) = softmax(mask + cap(scale * q k^T)) v` for `q (queries, head_dim)`, keys and values
/// `len` rows of `head_dim` at `kv_stride`, `mask (positions, len)` additive.
pub fn attend(q: &[f32], k: &[f32], v: &[f32], mask: &[f32], s: &AttendShape, out: &mut [f32]) -> Result<()> {
    let d = s.head_dim;
    let kv_need = if s.len == 0 { 0 } else { (s.len - 1) * s.kv_stride + d };
    let sizes_ok = q.len() >= s.queries * d
        && out.len() >= s.queries * d
        && k.len() >= kv_need
        && v.len() >= kv_need
        && s.positions > 0
        && mask.len() >= s.positions * s.len
        && s.kv_stride >= d;
    if !sizes_ok {
        return Err(KernelError::AttentionShape);
    }
    let mut scores = vec![0f32; s.len];
    for j in 0..s.queries {
        let qj = &q[j * d..(j + 1) * d];
        let mrow = &mask[(j % s.positions) * s.len..][..s.len];
        for (t, (sc, m)) in scores.iter_mut().zip(mrow).enumerate() {
            let raw = dot(qj, &k[t * s.kv_stride..][..d]) * s.scale;
            let capped = match s.softcap {
                Some(cap) => (raw / cap).tanh() * cap,
                None => raw,
            };
            *sc = capped + m;
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        let oj = &mut out[j * d..(j + 1) * d];
        oj.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let p = p / sum;
            for (o, &vv) in oj.iter_mut().zip(&v[t * s.kv_stride..][..d]) {
                *o += p * vv;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_softmax_attention() -> Result<()> {
        let mut rng = fastrand::Rng::with_seed(3);
        let (queries, positions, len, d, stride) = (6, 2, 9, 12, 20);
        let q: Vec<f32> = (0..queries * d).map(|_| rng.f32() - 0.5).collect();
        let k: Vec<f32> = (0..len * stride).map(|_| rng.f32() - 0.5).collect();
        let v: Vec<f32> = (0..len * stride).map(|_| rng.f32() - 0.5).collect();
        let mut mask = vec![0f32; positions * len];
        mask[3] = -1e30;
        mask[len + 8] = -1e30;
        for softcap in [None, Some(0.7f32)] {
            let shape = AttendShape { queries, positions, len, head_dim: d, kv_stride: stride, scale: 0.3, softcap };
            let mut out = vec![0f32; queries * d];
            attend(&q, &k, &v, &mask, &shape, &mut out)?;
            for j in 0..queries {
                let s: Vec<f64> = (0..len)
                    .map(|t| {
                        let raw: f64 = (0..d).map(|i| f64::from(q[j * d + i]) * f64::from(k[t * stride + i])).sum();
                        let raw = raw * 0.3;
                        let raw = softcap.map_or(raw, |c| (raw / f64::from(c)).tanh() * f64::from(c));
                        raw + f64::from(mask[(j % positions) * len + t])
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for i in 0..d {
                    let want: f64 = (0..len).map(|t| e[t] / sum * f64::from(v[t * stride + i])).sum();
                    let got = f64::from(out[j * d + i]);
                    assert!((got - want).abs() < 1e-5, "row {j} dim {i}: {got} vs {want}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn short_buffers_are_an_error() {
        let shape =
            AttendShape { queries: 1, positions: 1, len: 3, head_dim: 4, kv_stride: 4, scale: 1.0, softcap: None };
        let mut out = [0f32; 4];
        assert!(attend(&[0.0; 4], &[0.0; 11], &[0.0; 12], &[0.0; 3], &shape, &mut out).is_err());
        assert!(attend(&[0.0; 4], &[0.0; 12], &[0.0; 12], &[0.0; 3], &shape, &mut out).is_ok());
    }
}
