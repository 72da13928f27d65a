//! Attention of a few query rows against one KV head's keys and values, read in place from a cache buffer: the
//! decoding step, where a general matmul would pack the whole cache on every call to multiply it by a handful
//! of rows. Scores are scaled, optionally soft-capped (`tanh(s / cap) * cap`), masked additively, then softmaxed
//! (max subtracted) as transformers does. Keys and values are f32, bf16 or f16 (a cache kept in the checkpoint's
//! dtype, as transformers keeps it), widened as they are read.

use half::{bf16, f16};

use crate::{KernelError, Path, Result, Weight};

/// The element type of cached keys and values: a [`Weight`] type (widened the same way), also narrowed into.
pub trait KvValue: Weight {
    /// `x` rounded to this type (to nearest even).
    fn narrow(x: f32) -> Self;
    /// 8 consecutive values, widened.
    ///
    /// # Safety
    /// `p..p + 8` must be readable, and the CPU must have AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvValue for f32 {
    fn narrow(x: f32) -> f32 {
        x
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl KvValue for bf16 {
    fn narrow(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // bf16 is the top half of an f32.
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast::<__m128i>()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
    }
}

impl KvValue for f16 {
    fn narrow(x: f32) -> f16 {
        f16::from_f32(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()))
    }
}

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

/// `out (queries, head_dim) = softmax(mask + cap(scale * q k^T)) v` for `q (queries, head_dim)`, keys and values
/// `len` rows of `head_dim` at `kv_stride`, `mask (positions, len)` additive; on the default [`crate::path`].
pub fn attend<T: KvValue>(q: &[f32], k: &[T], v: &[T], mask: &[f32], s: &AttendShape, out: &mut [f32]) -> Result<()> {
    attend_on(crate::path()?, q, k, v, mask, s, out)
}

/// [`attend`] on `path` (an error when this CPU cannot run it). On every SIMD path (all have AVX2 + FMA) with a
/// head size that is a multiple of 8, the query heads sharing this KV head read each key and value once and the
/// exponentials are computed 8 at a time (a step's attention is a few percent of its time: the AVX-512 paths run
/// these loops too); otherwise a portable loop computes the same.
pub fn attend_on<T: KvValue>(
    path: Path,
    q: &[f32],
    k: &[T],
    v: &[T],
    mask: &[f32],
    s: &AttendShape,
    out: &mut [f32],
) -> Result<()> {
    let path = path.check()?;
    let d = s.head_dim;
    let kv_need = rows_len(s.len, s);
    let sizes_ok = s.queries.checked_mul(d).is_some_and(|n| q.len() >= n && out.len() >= n)
        && kv_need.is_some_and(|n| k.len() >= n && v.len() >= n)
        && s.positions > 0
        && s.positions.checked_mul(s.len).is_some_and(|n| mask.len() >= n)
        && s.kv_stride >= d;
    if !sizes_ok {
        return Err(KernelError::AttentionShape);
    }
    let mut scores = vec![0f32; s.queries * s.len];
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) && path.has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (every path but the portable one needs them, and `path` runs
        // here); the sizes were checked above.
        unsafe { simd::attend(q, k, v, mask, s, &mut scores, out) };
        return Ok(());
    }
    let _ = path;
    portable(q, k, v, mask, s, &mut scores, out);
    Ok(())
}

/// Asks the CPU to fetch the first keys [`attend`] reads from `k` (at most its look-ahead): called for the next
/// (row, KV head) before attending to this one, so that the next call does not start by waiting on memory.
pub fn prefetch<T: KvValue>(k: &[T], s: &AttendShape) {
    #[cfg(target_arch = "x86_64")]
    {
        let keys = simd::AHEAD.min(s.len);
        if rows_len(keys, s).is_some_and(|n| k.len() >= n) {
            // SAFETY: SSE is part of x86-64; the rows prefetched lie within `k` (checked).
            unsafe { simd::fetch_rows(k.as_ptr(), keys, s) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (k, s);
}

/// Elements spanned by `keys` key rows at the shape's stride (None when the sizes overflow).
fn rows_len(keys: usize, s: &AttendShape) -> Option<usize> {
    match keys.checked_sub(1) {
        None => Some(0),
        Some(last) => last.checked_mul(s.kv_stride)?.checked_add(s.head_dim),
    }
}

/// Scores of one query from its raw dot products in `row`: scaled, capped, masked.
fn scores_row(row: &mut [f32], mask_row: &[f32], s: &AttendShape) {
    for (sc, m) in row.iter_mut().zip(mask_row) {
        let raw = *sc * s.scale;
        let capped = match s.softcap {
            Some(cap) => (raw / cap).tanh() * cap,
            None => raw,
        };
        *sc = capped + m;
    }
}

fn portable<T: KvValue>(
    q: &[f32],
    k: &[T],
    v: &[T],
    mask: &[f32],
    s: &AttendShape,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = s.head_dim;
    if s.len == 0 {
        out[..s.queries * d].fill(0.0);
        return;
    }
    for (j, row) in scores.chunks_exact_mut(s.len.max(1)).enumerate().take(s.queries) {
        let qj = &q[j * d..(j + 1) * d];
        for (t, sc) in row.iter_mut().enumerate() {
            *sc = qj.iter().zip(&k[t * s.kv_stride..][..d]).map(|(a, b)| a * b.widen()).sum();
        }
        let mrow = &mask[(j % s.positions) * s.len..][..s.len];
        scores_row(row, mrow, s);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = row.iter_mut().fold(0f32, |sum, x| {
            *x = (*x - max).exp();
            sum + *x
        });
        for p in row.iter_mut() {
            *p /= sum;
        }
        let oj = &mut out[j * d..(j + 1) * d];
        oj.fill(0.0);
        for (t, &p) in row.iter().enumerate() {
            for (o, &vv) in oj.iter_mut().zip(&v[t * s.kv_stride..][..d]) {
                *o += p * vv.widen();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{AttendShape, KvValue};
    use crate::vmath::exp8;

    /// Keys [`dots`] fetches ahead of the block it reads.
    pub(super) const AHEAD: usize = 16;

    /// Prefetches all cache lines of one key (or value) row.
    #[inline(always)]
    unsafe fn fetch_row<T>(row: *const T, bytes: usize) {
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(row.cast::<i8>().wrapping_add(line));
        }
    }

    /// Prefetches the first `keys` rows at `k`.
    pub(super) unsafe fn fetch_rows<T>(k: *const T, keys: usize, s: &AttendShape) {
        for t in 0..keys {
            fetch_row(k.wrapping_add(t * s.kv_stride), s.head_dim * std::mem::size_of::<T>());
        }
    }

    /// Sum of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// [`super::softmax_row`] 8 lanes at a time: the same scores (scaled, capped, masked), `e^(x - max)` by
    /// [`exp8`] for every element, each divided by the sum.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_row(row: &mut [f32], mask_row: &[f32], s: &AttendShape) {
        let n = row.len() / 8 * 8;
        let (rp, mp) = (row.as_mut_ptr(), mask_row.as_ptr());
        match s.softcap {
            Some(_) => super::scores_row(row, mask_row, s),
            None => {
                let scale = _mm256_set1_ps(s.scale);
                for i in (0..n).step_by(8) {
                    let x = _mm256_mul_ps(_mm256_loadu_ps(rp.add(i)), scale);
                    _mm256_storeu_ps(rp.add(i), _mm256_add_ps(x, _mm256_loadu_ps(mp.add(i))));
                }
                super::scores_row(&mut row[n..], &mask_row[n..], s);
            }
        }
        let mut maxv = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..n).step_by(8) {
            maxv = _mm256_max_ps(maxv, _mm256_loadu_ps(rp.add(i)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), maxv);
        let max = lanes.iter().chain(&row[n..]).copied().fold(f32::NEG_INFINITY, f32::max);
        let m = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        for i in (0..n).step_by(8) {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(rp.add(i)), m));
            _mm256_storeu_ps(rp.add(i), e);
            sum = _mm256_add_ps(sum, e);
        }
        let rest = &mut row[n..];
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..rest.len()].copy_from_slice(rest);
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), m));
        _mm256_storeu_ps(tail.as_mut_ptr(), e);
        rest.copy_from_slice(&tail[..rest.len()]);
        let total = _mm256_set1_ps(hsum(_mm256_add_ps(sum, e)));
        for i in (0..n).step_by(8) {
            _mm256_storeu_ps(rp.add(i), _mm256_div_ps(_mm256_loadu_ps(rp.add(i)), total));
        }
        let total = _mm256_cvtss_f32(total);
        for p in rest.iter_mut() {
            *p /= total;
        }
    }

    /// The sum of one key's 8 partial sums, in the order [`dots`] reduces 4 keys at once:
    /// `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`, so a key's score does not depend on its block.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum_tree(v: __m256) -> f32 {
        let h = _mm256_hadd_ps(v, v);
        let h = _mm256_hadd_ps(h, h);
        _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h)))
    }

    /// Dot products of `QN` queries (`d` values each, rows at `q`) with every key: `scores[j * len + t]`. Each
    /// key chunk is read and widened once for all the queries; four keys at a time, each with its own partial
    /// sums, reduced together in [`hsum_tree`]'s order.
    ///
    /// A cache is read once per step, too briefly for the hardware prefetcher to ramp up: each block fetches the
    /// keys [`AHEAD`] keys on and, when `v` is given, its own keys' values (read next, by [`weighted`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dots<T: KvValue, const QN: usize>(
        q: *const f32,
        (k, v): (*const T, Option<*const T>),
        s: &AttendShape,
        scores: *mut f32,
    ) {
        let (d, st) = (s.head_dim, s.kv_stride);
        let row_bytes = d * std::mem::size_of::<T>();
        let fetch = |row: *const T| fetch_row(row, row_bytes);
        fetch_rows(k, AHEAD.min(s.len), s);
        let blocks = s.len / 4 * 4;
        for t0 in (0..blocks).step_by(4) {
            let kt = k.add(t0 * st);
            for u in 0..4 {
                // Prefetches never fault: past the end, they fetch nothing useful and do no harm.
                fetch(kt.wrapping_add((u + AHEAD) * st));
                if let Some(v) = v {
                    fetch(v.wrapping_add((t0 + u) * st));
                }
            }
            let mut acc = [[_mm256_setzero_ps(); 4]; QN];
            for c in (0..d).step_by(8) {
                for u in 0..4 {
                    let kc = T::load8(kt.add(u * st + c));
                    for (j, acc_j) in acc.iter_mut().enumerate() {
                        acc_j[u] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j * d + c)), kc, acc_j[u]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                let sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                _mm_storeu_ps(scores.add(j * s.len + t0), sums);
            }
        }
        for t in blocks..s.len {
            let kt = k.add(t * st);
            if let Some(v) = v {
                fetch(v.wrapping_add(t * st));
            }
            let mut acc = [_mm256_setzero_ps(); QN];
            for c in (0..d).step_by(8) {
                let kc = T::load8(kt.add(c));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j * d + c)), kc, *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                *scores.add(j * s.len + t) = hsum_tree(*a);
            }
        }
    }

    /// `out[j][c..c + 8 CN] = sum_t p[j][t] v[t][c..]` for `QN` queries (probabilities at `p`, rows of `len`).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted<T: KvValue, const QN: usize, const CN: usize>(
        p: *const f32,
        v: *const T,
        s: &AttendShape,
        out: *mut f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); CN]; QN];
        for t in 0..s.len {
            let vt = v.add(t * s.kv_stride);
            let pt: [__m256; QN] = std::array::from_fn(|j| _mm256_broadcast_ss(&*p.add(j * s.len + t)));
            for c in 0..CN {
                let vc = T::load8(vt.add(8 * c));
                for (acc_j, &pj) in acc.iter_mut().zip(&pt) {
                    acc_j[c] = _mm256_fmadd_ps(pj, vc, acc_j[c]);
                }
            }
        }
        for (j, acc_j) in acc.iter().enumerate() {
            for (c, a) in acc_j.iter().enumerate() {
                _mm256_storeu_ps(out.add(j * s.head_dim + 8 * c), *a);
            }
        }
    }

    /// Dispatches [`weighted`] on the group's queries (<= 3) and chunks of 8 dimensions (<= 4).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_any<T: KvValue>(
        qn: usize,
        cn: usize,
        p: *const f32,
        v: *const T,
        s: &AttendShape,
        out: *mut f32,
    ) {
        match (qn, cn) {
            (1, 1) => weighted::<T, 1, 1>(p, v, s, out),
            (1, 2) => weighted::<T, 1, 2>(p, v, s, out),
            (1, 3) => weighted::<T, 1, 3>(p, v, s, out),
            (1, _) => weighted::<T, 1, 4>(p, v, s, out),
            (2, 1) => weighted::<T, 2, 1>(p, v, s, out),
            (2, 2) => weighted::<T, 2, 2>(p, v, s, out),
            (2, 3) => weighted::<T, 2, 3>(p, v, s, out),
            (2, _) => weighted::<T, 2, 4>(p, v, s, out),
            (_, 1) => weighted::<T, 3, 1>(p, v, s, out),
            (_, 2) => weighted::<T, 3, 2>(p, v, s, out),
            (_, 3) => weighted::<T, 3, 3>(p, v, s, out),
            _ => weighted::<T, 3, 4>(p, v, s, out),
        }
    }

    /// [`super::attend`] with AVX2 + FMA; `head_dim` is a multiple of 8 and the sizes are checked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend<T: KvValue>(
        q: &[f32],
        k: &[T],
        v: &[T],
        mask: &[f32],
        s: &AttendShape,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let d = s.head_dim;
        let sp = scores.as_mut_ptr();
        for j0 in (0..s.queries).step_by(3) {
            let (qj, sj) = (q.as_ptr().add(j0 * d), sp.add(j0 * s.len));
            let kv = (k.as_ptr(), (j0 == 0).then_some(v.as_ptr()));
            match s.queries - j0 {
                1 => dots::<T, 1>(qj, kv, s, sj),
                2 => dots::<T, 2>(qj, kv, s, sj),
                _ => dots::<T, 3>(qj, kv, s, sj),
            }
        }
        if s.len == 0 {
            out[..s.queries * d].fill(0.0);
            return;
        }
        for (j, row) in scores.chunks_exact_mut(s.len).enumerate() {
            let mrow = &mask[(j % s.positions) * s.len..][..s.len];
            softmax_row(row, mrow, s);
        }
        for j0 in (0..s.queries).step_by(3) {
            for c0 in (0..d).step_by(32) {
                let (qn, cn) = ((s.queries - j0).min(3), (d - c0).min(32) / 8);
                let o = out.as_mut_ptr().add(j0 * d + c0);
                weighted_any(qn, cn, scores.as_ptr().add(j0 * s.len), v.as_ptr().add(c0), s, o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `attend` against an f64 softmax attention; the mask hides a few keys, and all keys of one query row
    /// when `hide_row` (a padding row: softmax over equal scores).
    fn check(queries: usize, positions: usize, len: usize, d: usize, softcap: Option<f32>, seed: u64) -> Result<()> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let stride = d + 8;
        let q: Vec<f32> = (0..queries * d).map(|_| rng.f32() - 0.5).collect();
        let k: Vec<f32> = (0..len * stride).map(|_| rng.f32() - 0.5).collect();
        let v: Vec<f32> = (0..len * stride).map(|_| rng.f32() - 0.5).collect();
        let mut mask = vec![0f32; positions * len];
        for _ in 0..len / 3 {
            mask[rng.usize(0..positions * len)] = -1e30;
        }
        if positions > 1 {
            mask[..len].fill(-1e30);
        }
        let shape = AttendShape { queries, positions, len, head_dim: d, kv_stride: stride, scale: 0.3, softcap };
        // Each cache dtype, against the reference on the values it holds.
        let (kb, vb): (Vec<bf16>, Vec<bf16>) =
            (k.iter().map(|&x| bf16::from_f32(x)).collect(), v.iter().map(|&x| bf16::from_f32(x)).collect());
        let (kh, vh): (Vec<f16>, Vec<f16>) =
            (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
        let widen = |xs: &[f32]| xs.to_vec();
        for path in Path::ALL.into_iter().filter(|p| p.supported()) {
            let mut out = vec![f32::NAN; queries * d];
            attend_on(path, &q, &k, &v, &mask, &shape, &mut out)?;
            compare(&q, (&widen(&k), &widen(&v)), &mask, &shape, &out, &format!("{path} f32"));
            attend_on(path, &q, &kb, &vb, &mask, &shape, &mut out)?;
            let wide = |xs: &[bf16]| xs.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            compare(&q, (&wide(&kb), &wide(&vb)), &mask, &shape, &out, &format!("{path} bf16"));
            attend_on(path, &q, &kh, &vh, &mask, &shape, &mut out)?;
            let wide = |xs: &[f16]| xs.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            compare(&q, (&wide(&kh), &wide(&vh)), &mask, &shape, &out, &format!("{path} f16"));
        }
        Ok(())
    }

    /// `out` against an f64 softmax attention over keys and values `(k, v)`.
    fn compare(q: &[f32], (k, v): (&[f32], &[f32]), mask: &[f32], shape: &AttendShape, out: &[f32], dtype: &str) {
        let AttendShape { queries, positions, len, head_dim: d, kv_stride: stride, softcap, .. } = *shape;
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
                let at = format!("{dtype} {queries}q {positions}p {len} keys d {d} {softcap:?}: row {j} dim {i}");
                assert!((got - want).abs() < 2e-6, "{at}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn matches_a_plain_softmax_attention() -> Result<()> {
        // Head sizes off the SIMD path (12) and on it; query groups and dimension blocks of every size.
        for (d, len) in [(12, 9), (8, 1), (64, 5), (64, 173), (96, 40), (128, 300), (40, 17)] {
            for (queries, positions) in [(1, 1), (2, 2), (3, 1), (4, 2), (7, 1), (9, 3)] {
                for softcap in [None, Some(0.7f32)] {
                    check(queries, positions, len, d, softcap, (d * len + queries) as u64)?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn paths_this_cpu_lacks_are_refused_and_the_others_listed() {
        let shape =
            AttendShape { queries: 1, positions: 1, len: 1, head_dim: 8, kv_stride: 8, scale: 1.0, softcap: None };
        for path in Path::ALL {
            let result = attend_on(path, &[0.0; 8], &[0f32; 8], &[0f32; 8], &[0.0], &shape, &mut [0.0; 8]);
            if path.supported() {
                assert_eq!(result, Ok(()));
            } else {
                crate::skip(&format!(
                    "attention on the {path} path: this CPU lacks {}",
                    path.missing(crate::Features::detect()).join(", ")
                ));
                assert!(matches!(result, Err(KernelError::Unsupported { .. })), "{path}: {result:?}");
            }
        }
    }

    #[test]
    fn short_buffers_are_an_error() {
        let shape =
            AttendShape { queries: 1, positions: 1, len: 3, head_dim: 4, kv_stride: 4, scale: 1.0, softcap: None };
        let mut out = [0f32; 4];
        assert!(attend(&[0.0; 4], &[0.0; 11], &[0.0; 12], &[0.0; 3], &shape, &mut out).is_err());
        assert!(attend(&[0.0; 4], &[0.0; 12], &[0.0; 12], &[0.0; 3], &shape, &mut out).is_ok());
        // Shapes whose sizes overflow are refused, not a panic; prefetching them does nothing.
        for absurd in [
            AttendShape { kv_stride: usize::MAX, ..shape },
            AttendShape { queries: usize::MAX, ..shape },
            AttendShape { positions: usize::MAX, ..shape },
        ] {
            assert!(attend(&[0.0; 4], &[0.0; 12], &[0.0; 12], &[0.0; 3], &absurd, &mut out).is_err());
            prefetch(&[0f32; 12], &absurd);
        }
    }
}
