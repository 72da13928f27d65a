//! Vector math shared by the kernels: the exponential, 8 lanes at a time (AVX2) or 16 (AVX-512, the same
//! operations lane by lane, so the same values).

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

/// [`exp8`] on 16 lanes: the same operations in the same order, so each lane gets the bits `exp8` gives it.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
    let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.336_55));
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.336_55)), _mm512_set1_ps(88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0));
    let two_n =
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127))));
    _mm512_maskz_mov_ps(!tiny, _mm512_mul_ps(y, two_n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_exponential_is_within_two_ulp() {
        if !crate::Path::Avx2.supported() {
            crate::skip("the vector exponential: this CPU lacks AVX2/FMA");
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_16_lane_exponential_gives_the_8_lane_bits() {
        if !crate::Path::Avx512.supported() {
            crate::skip("the 16-lane exponential: this CPU lacks avx512f");
            return;
        }
        let xs: Vec<f32> =
            (0..=64_000).map(|i| 90.0 - 180.0 * i as f32 / 64_000.0).chain([f32::NAN, -1e30, 1e30]).collect();
        for c in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..c.len()].copy_from_slice(c);
            let (mut wide, mut narrow) = ([0f32; 16], [0f32; 16]);
            // SAFETY: AVX-512F (checked above) and AVX2 + FMA (every AVX-512 CPU has them; the path checks both).
            unsafe {
                _mm512_storeu_ps(wide.as_mut_ptr(), exp16(_mm512_loadu_ps(lanes.as_ptr())));
                _mm256_storeu_ps(narrow.as_mut_ptr(), exp8(_mm256_loadu_ps(lanes.as_ptr())));
                _mm256_storeu_ps(narrow.as_mut_ptr().add(8), exp8(_mm256_loadu_ps(lanes.as_ptr().add(8))));
            }
            let bits = |v: &[f32; 16]| v.map(f32::to_bits);
            assert_eq!(bits(&wide), bits(&narrow), "{lanes:?}");
        }
    }
}
