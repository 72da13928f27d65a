//! The gated activation of an MLP, `act(gate) * up`, in one pass over the fused gate/up projection's output:
//! instead of slicing the gate out, activating it and multiplying by the (strided) up half as three tensor ops.

use rayon::prelude::*;

use crate::{KernelError, Path, Result};

/// `silu(g) * u` for each row of `gate_up (rows, 2 * inter)` holding the gate then the up projection:
/// `(rows, inter)`, on the default [`crate::path`]. silu as torch computes it on the CPU: `g / (1 + e^-g)`.
pub fn silu_mul(gate_up: &[f32], inter: usize) -> Result<Vec<f32>> {
    silu_mul_on(crate::path()?, gate_up, inter)
}

/// [`silu_mul`] on `path` (an error when this CPU cannot run it): 16 lanes with a masked tail on the AVX-512
/// paths, 8 on AVX2 (the same values: the same exponential lane by lane), else a portable loop.
pub fn silu_mul_on(path: Path, gate_up: &[f32], inter: usize) -> Result<Vec<f32>> {
    let path = path.check()?;
    if inter == 0 || !gate_up.len().is_multiple_of(2 * inter) {
        return Err(KernelError::InputSize { inp: 2 * inter, got: gate_up.len() });
    }
    let mut out = vec![0f32; gate_up.len() / 2];
    let row = |(row, o): (&[f32], &mut [f32])| {
        let (gate, up) = row.split_at(inter);
        #[cfg(target_arch = "x86_64")]
        match path {
            // SAFETY (both): `path` runs on this CPU (checked above); the three slices have `inter` values.
            Path::Avx512 | Path::Avx512Bf16 => return unsafe { simd::silu_mul16(gate, up, o) },
            Path::Avx2 => return unsafe { simd::silu_mul(gate, up, o) },
            Path::Portable => {}
        }
        let _ = path;
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

    use crate::vmath::{exp16, exp8};

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

    /// [`silu_mul`] 16 lanes at a time, the last (partial) group under a mask: no scalar tail.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul16(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let one = _mm512_set1_ps(1.0);
        let n = out.len().min(gate.len()).min(up.len());
        for i in (0..n).step_by(16) {
            let m: __mmask16 = if n - i >= 16 { 0xFFFF } else { (1u16 << (n - i)) - 1 };
            let g = _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i));
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
            let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, _mm512_mul_ps(silu, u));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_silu_times_up_on_every_path() -> Result<()> {
        for path in Path::ALL {
            if !path.supported() {
                crate::skip(&format!(
                    "silu on the {path} path: this CPU lacks {}",
                    path.missing(crate::Features::detect()).join(", ")
                ));
                continue;
            }
            let mut rng = fastrand::Rng::with_seed(11);
            // Tails of every length for the 8- and 16-lane loops.
            for inter in [1, 7, 8, 15, 16, 17, 24, 64, 1539] {
                let rows = 3;
                let mut gu: Vec<f32> = (0..rows * 2 * inter).map(|_| (rng.f32() - 0.5) * 40.0).collect();
                // Extremes: far below e^-87, and large positive gates.
                gu[0] = -200.0;
                gu[inter - 1] = 150.0;
                let got = silu_mul_on(path, &gu, inter)?;
                for r in 0..rows {
                    for i in 0..inter {
                        let (g, u) = (f64::from(gu[r * 2 * inter + i]), f64::from(gu[r * 2 * inter + inter + i]));
                        let want = g / (1.0 + (-g).exp()) * u;
                        let got = f64::from(got[r * inter + i]);
                        assert!(
                            (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                            "{path} inter {inter} ({r}, {i}): {got} vs {want}"
                        );
                    }
                }
                // The AVX-512 loop computes what the AVX2 one does, lane by lane (whole groups of 8).
                if path != Path::Avx2 && path != Path::Portable && inter % 8 == 0 {
                    assert_eq!(got, silu_mul_on(Path::Avx2, &gu, inter)?, "{path} inter {inter}");
                }
            }
            assert_eq!(silu_mul_on(path, &[0.0; 5], 2), Err(KernelError::InputSize { inp: 4, got: 5 }));
            assert!(silu_mul_on(path, &[], 0).is_err());
        }
        Ok(())
    }
}
