//! The gated activation of an MLP, `act(gate) * up`, in one pass over the fused gate/up projection's output:
//! instead of slicing the gate out, activating it and multiplying by the (strided) up half as three tensor ops.

use rayon::prelude::*;

use crate::{KernelError, Result};

/// `silu(g) * u` for each row of `gate_up (rows, 2 * inter)` holding the gate then the up projection:
/// `(rows, inter)`. silu as torch computes it on the CPU: `g / (1 + e^-g)`.
pub fn silu_mul(gate_up: &[f32], inter: usize) -> Result<Vec<f32>> {
    if inter == 0 || !gate_up.len().is_multiple_of(2 * inter) {
        return Err(KernelError::InputSize { inp: 2 * inter, got: gate_up.len() });
    }
    let mut out = vec![0f32; gate_up.len() / 2];
    let simd = crate::simd_available();
    let row = |(row, o): (&[f32], &mut [f32])| {
        let (gate, up) = row.split_at(inter);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the CPU has AVX2 and FMA; the three slices have `inter` values.
            unsafe { simd::silu_mul(gate, up, o) };
            return;
        }
        let _ = simd;
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    };
    // Prompts (many rows) on the pool's threads; a decoding step's few rows are not worth the hand-off.
    if gate_up.len() >= 1 << 16 {
        gate_up.par_chunks_exact(2 * inter).zip(out.par_chunks_exact_mut(inter)).for_each(row);
    } else {
        gate_up.chunks_exact(2 * inter).zip(out.chunks_exact_mut(inter)).for_each(row);
    }
    Ok(out)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use crate::vmath::exp8;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        let n = out.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i))));
        }
        for i in n..out.len() {
            out[i] = gate[i] / (1.0 + (-gate[i]).exp()) * up[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_silu_times_up() -> Result<()> {
        let mut rng = fastrand::Rng::with_seed(11);
        for inter in [1, 7, 8, 64, 1539] {
            let rows = 3;
            let mut gu: Vec<f32> = (0..rows * 2 * inter).map(|_| (rng.f32() - 0.5) * 40.0).collect();
            // Extremes: far below e^-87, and large positive gates.
            gu[0] = -200.0;
            gu[inter - 1] = 150.0;
            let got = silu_mul(&gu, inter)?;
            for r in 0..rows {
                for i in 0..inter {
                    let (g, u) = (f64::from(gu[r * 2 * inter + i]), f64::from(gu[r * 2 * inter + inter + i]));
                    let want = g / (1.0 + (-g).exp()) * u;
                    let got = f64::from(got[r * inter + i]);
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "inter {inter} ({r}, {i}): {got} vs {want}"
                    );
                }
            }
        }
        assert_eq!(silu_mul(&[0.0; 5], 2), Err(KernelError::InputSize { inp: 4, got: 5 }));
        assert!(silu_mul(&[], 0).is_err());
        Ok(())
    }
}
