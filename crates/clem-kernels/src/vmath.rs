//! Vector math shared by the kernels: the exponential, 8 lanes at a time.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `e^x` of 8 lanes, Cephes' single-precision polynomial: within 2 ulp; 0 below e^-87.3, and e^88 above 88
/// (callers divide by it or subtract the maximum first).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
    let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.336_55));
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.336_55)), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
    let two_n =
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
    _mm256_andnot_ps(tiny, _mm256_mul_ps(y, two_n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_exponential_is_within_two_ulp() {
        if !crate::simd_available() {
            println!("skipped: this CPU has no AVX2/FMA, the vector exponential is not used");
            return;
        }
        let xs: Vec<f32> =
            (0..=300_000).map(|i| 88.0 - 178.0 * i as f32 / 300_000.0).chain([0.0, -0.0, -1e30]).collect();
        for c in xs.chunks(8) {
            let mut lanes = [0f32; 8];
            lanes[..c.len()].copy_from_slice(c);
            let mut got = [0f32; 8];
            // SAFETY: AVX2 and FMA are available (checked above).
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(lanes.as_ptr())));
            }
            for (&x, &g) in lanes.iter().zip(&got) {
                let want = f64::from(x).exp();
                if want < f64::from(f32::MIN_POSITIVE) * 1.1 {
                    assert!(g == 0.0 || f64::from(g) < 1.3e-38, "e^{x}: {g}");
                } else {
                    let ulp = f64::from(f32::EPSILON) * want;
                    assert!((f64::from(g) - want).abs() <= 2.0 * ulp, "e^{x}: {g} vs {want}");
                }
            }
        }
    }
}
