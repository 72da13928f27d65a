//! Rotary position embedding of one head, half-split style (transformers' `rotate_half`), and the rounding of
//! cached values: the per-element loops of a decoding step's cache write, kept here so they are compiled
//! optimised even where the calling crate is not (tests).

use crate::attention::KvValue;

/// Rotates `x` into `out` with `cos`/`sin` (half as many values as `x`): `out[i] = x[i] cos[i] - x[i + h] sin[i]`,
/// `out[i + h] = x[i] sin[i] + x[i + h] cos[i]`, computed exactly as candle's `rope` computes it (no fused
/// multiply-add), so keys rotated here and by a prompt's candle ops are the same bits.
pub fn rotate_half(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = cos.len().min(sin.len()).min(x.len() / 2).min(out.len() / 2);
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        o1[i] = a * cos[i] - b * sin[i];
        o2[i] = a * sin[i] + b * cos[i];
    }
}

/// `src` rounded into `dst` (to nearest even, as torch's casts).
pub fn store<T: KvValue>(src: &[f32], dst: &mut [T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = T::narrow(s);
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    #[test]
    fn rotates_pairs_of_halves() {
        let mut out = [0f32; 4];
        rotate_half(&[1.0, 2.0, 3.0, 4.0], &[0.5, 0.0], &[0.25, 1.0], &mut out);
        assert_eq!(out, [1.0 * 0.5 - 3.0 * 0.25, 2.0 * 0.0 - 4.0 * 1.0, 1.0 * 0.25 + 3.0 * 0.5, 2.0 * 1.0 + 4.0 * 0.0]);
    }

    #[test]
    fn stores_rounded_to_nearest() {
        let mut dst = [bf16::ZERO; 3];
        store(&[1.0, 1.0 + 1.0 / 256.0, -3.3], &mut dst);
        assert_eq!(dst, [bf16::from_f32(1.0), bf16::from_f32(1.0 + 1.0 / 256.0), bf16::from_f32(-3.3)]);
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0).
        assert_eq!(dst[1], bf16::ONE);
    }
}
