//! bf16 weights on the AVX-512 BF16 path: `vdpbf16ps` multiplies a pair of bf16 weights by a pair of bf16
//! activations and adds both products to an f32 sum, 16 lanes at once, without widening anything. The activations
//! are rounded to bf16 first (to nearest even, as oneDNN does for transformers on such CPUs); the products of two
//! bf16 values are exact in f32, so the only other roundings are the sums'.
//!
//! Layout: panels of 64 outputs as in the crate doc, but a panel stores, pair of inputs by pair of inputs, each
//! output's two weights side by side (one 32-bit lane: input `2k` in the low half, `2k + 1` in the high half, a
//! zero past an odd last input), so one 64-byte load is 16 outputs' pairs.
//!
//! Each (row, output) is one chain over the input pairs in order (per pair the high product, then the low one, as
//! the instruction adds them), whatever the batch, tile or thread split: a batched row equals its single run.
//! [`matmul`] with `emulate` runs the same loops with a scalar model of the instruction, which tests the layout,
//! blocks and bands on CPUs without it.

use std::mem::MaybeUninit;

use half::bf16;
use rayon::prelude::*;

use crate::{bands, interleave_bands, split_panels, with_scratch, At, Pairs, PanelOut, Tuning, PAIR, PANEL};

/// Packs a row-major `(out, inp)` matrix in this module's layout.
pub(crate) fn pack(w: &[bf16], out: usize, inp: usize) -> Vec<bf16> {
    let panel_len = 2 * PANEL * inp.div_ceil(2);
    let mut data = vec![bf16::ZERO; out.div_ceil(PANEL) * panel_len];
    data.par_chunks_mut(panel_len.max(1)).enumerate().for_each(|(p, panel)| {
        for q in 0..PANEL.min(out.saturating_sub(p * PANEL)) {
            let row = &w[(p * PANEL + q) * inp..][..inp];
            for (i, &v) in row.iter().enumerate() {
                panel[(i / 2) * 2 * PANEL + 2 * q + i % 2] = v;
            }
        }
    });
    data
}

/// Index of weight `(o, i)` in the packed data of a matrix with `inp` inputs.
pub(crate) fn index(o: usize, i: usize, inp: usize) -> usize {
    (o / PANEL) * 2 * PANEL * inp.div_ceil(2) + (i / 2) * 2 * PANEL + 2 * (o % PANEL) + i % 2
}

/// The activations rounded to bf16 and paired as the weights are: `(rows, inp.div_ceil(2))` lanes, input `2k` in
/// the low half (a zero past an odd last input).
fn pair_up(x: &[f32], rows: usize, inp: usize, out: &mut Vec<u32>) {
    let kp = inp.div_ceil(2);
    out.clear();
    out.reserve(rows * kp);
    for row in x.chunks_exact(inp).take(rows) {
        out.extend(row.chunks(2).map(|p| {
            let lo = u32::from(bf16::from_f32(p[0]).to_bits());
            let hi = p.get(1).map_or(0, |&v| u32::from(bf16::from_f32(v).to_bits()));
            lo | hi << 16
        }));
    }
}

thread_local! {
    /// The calling thread's buffers for the paired activations, and for them interleaved by bands.
    static PAIRED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    static BANDED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `x (rows, inp) . W^T` for `data` packed by [`pack`], into `y` (`rows` rows of whole panels), which every
/// value is written to. With `emulate`, a scalar model of `vdpbf16ps` runs instead of it (tests).
///
/// # Safety
/// Unless `emulate`, the CPU must have AVX-512F and AVX-512 BF16 (the matrix's path was checked when packed).
pub(crate) unsafe fn matmul(
    data: &[bf16],
    x: &[f32],
    (rows, inp): (usize, usize),
    tuning: Tuning,
    emulate: bool,
    y: &mut [MaybeUninit<f32>],
) {
    let kp = inp.div_ceil(2);
    with_scratch(&PAIRED, |paired| {
        pair_up(x, rows, inp, paired);
        if rows == 1 {
            return products(data, paired, (rows, kp), tuning, emulate, y);
        }
        with_scratch(&BANDED, |banded| {
            interleave_bands(paired, rows, kp, banded);
            products(data, banded, (rows, kp), tuning, emulate, y)
        })
    })
}

/// [`matmul`] on paired activations `x` over `kp` input pairs, split across the pool as the f32 products are.
unsafe fn products(
    data: &[bf16],
    x: &[u32],
    (rows, kp): (usize, usize),
    tuning: Tuning,
    emulate: bool,
    y: &mut [MaybeUninit<f32>],
) {
    let panel_len = 2 * PANEL * kp;
    let panels = data.len() / panel_len.max(1);
    let ld = panels * PANEL;
    assert!(y.len() >= rows * ld, "products: output buffer too short");
    let out = PanelOut { ptr: y.as_mut_ptr().cast::<f32>(), ld };
    split_panels(panels, rows, data.len() * rows, |p, pairs| {
        // SAFETY: panel p writes `pairs` of its columns of every row of `y` (checked above), each by one task;
        // the CPU is the caller's contract.
        unsafe {
            panel_outputs(x, &data[p * panel_len..], (kp, rows, pairs), tuning, emulate, out.columns_from(p * PANEL))
        };
    });
}

/// All rows against `pairs` of one panel (the first `2 * PANEL * kp` values of `data`), as
/// [`crate::panel_outputs`] does for f32 sums: one row streams the panel; more rows take tiles of up to 6 rows over
/// blocks of input pairs, prefetching the next block.
///
/// # Safety
/// As [`matmul`]; `y` holds the rows of the panel's `pairs`, written by no other thread meanwhile.
unsafe fn panel_outputs(
    x: &[u32],
    data: &[bf16],
    (kp, rows, pairs): (usize, usize, Pairs),
    tuning: Tuning,
    emulate: bool,
    y: PanelOut,
) {
    let panel = &data[..2 * PANEL * kp];
    if rows == 1 {
        let ahead = tuning.stream_ahead(data, 2 * PANEL * kp);
        band(x, panel, (0, 0, kp, pairs), ahead, (1, emulate), y);
        return;
    }
    // 4 bytes per output per input pair.
    let block = tuning.block_inputs(4 * PANEL);
    for k0 in (0..kp).step_by(block) {
        let k1 = (k0 + block).min(kp);
        let next = &data[(2 * PANEL * k1).min(data.len())..(2 * PANEL * (k1 + block)).min(data.len())];
        for (r, n) in bands(rows) {
            let ahead = &next[r * next.len() / rows..(r + n) * next.len() / rows];
            band(&x[r * kp..(r + n) * kp], panel, (r, k0, k1, pairs.clone()), ahead, (n, emulate), y);
        }
    }
}

/// Rows `row0..row0 + rows` (at most 6) against `pairs` (2 or 4) of a panel over input pairs `k0..k1`, one tile.
///
/// # Safety
/// As [`panel_outputs`].
unsafe fn band(
    x: &[u32],
    panel: &[bf16],
    (row0, k0, k1, pairs): (usize, usize, usize, Pairs),
    ahead: &[bf16],
    (rows, emulate): (usize, bool),
    y: PanelOut,
) {
    let at = At { x, panel, pair0: pairs.start, row0, i0: k0, i1: k1, ahead };
    if emulate {
        return tile_emulated(&at, pairs.len(), rows, y);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let fetch = !ahead.is_empty();
        macro_rules! tiles {
            ($($pairs:literal, $rows:literal);* $(;)?) => {
                match (pairs.len(), rows, fetch) {
                    $(
                        ($pairs, $rows, true) => tile::<$pairs, $rows, true>(&at, y),
                        ($pairs, $rows, false) => tile::<$pairs, $rows, false>(&at, y),
                    )*
                    _ => unreachable!("a band has 1 to 6 rows and 2 or 4 pairs"),
                }
            };
        }
        tiles!(4, 1; 4, 2; 4, 3; 4, 4; 4, 5; 4, 6; 2, 1; 2, 2; 2, 3; 2, 4; 2, 5; 2, 6);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the AVX-512 BF16 path exists on x86-64 only");
}

/// `PAIRS` pairs of 16 outputs x `ROWS` rows with `vdpbf16ps`; `PF`: prefetch `at.ahead` spread over the inputs.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16; `at` and `y` as [`band`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const PAIRS: usize, const ROWS: usize, const PF: bool>(at: &At<bf16, u32>, y: PanelOut) {
    use std::arch::x86_64::*;
    let xp = at.x.as_ptr();
    let wp = at.panel.as_ptr().add(2 * at.pair0 * PAIR);
    let at_y = |p: usize, b: usize| y.ptr.add((at.row0 + b) * y.ld + (at.pair0 + p) * PAIR);
    let mut acc = [[_mm512_setzero_ps(); ROWS]; PAIRS];
    if at.i0 > 0 {
        for (p, acc_p) in acc.iter_mut().enumerate() {
            for (b, a) in acc_p.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(at_y(p, b));
            }
        }
    }
    let ahead = at.ahead.as_ptr().cast::<i8>();
    let lines = std::mem::size_of_val(at.ahead).div_ceil(64);
    let steps = at.i1 - at.i0;
    let (mut fetched, mut credit) = (0, 0);
    for k in at.i0..at.i1 {
        credit += lines;
        while PF && credit >= steps {
            credit -= steps;
            crate::prefetch::<ROWS>(ahead.add(fetched * 64));
            fetched += 1;
        }
        for (p, acc_p) in acc.iter_mut().enumerate() {
            let w: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(2 * (k * PANEL + p * PAIR)).cast()));
            for (b, a) in acc_p.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xp.add(k * ROWS + b) as i32));
                *a = _mm512_dpbf16_ps(*a, w, x);
            }
        }
    }
    for (p, acc_p) in acc.iter().enumerate() {
        for (b, a) in acc_p.iter().enumerate() {
            _mm512_storeu_ps(at_y(p, b), *a);
        }
    }
}

/// One lane of `vdpbf16ps` as Intel's pseudo-code defines it: `acc + hi_w * hi_x`, then `+ lo_w * lo_x`, each a
/// fused multiply-add (the products of bf16 values are exact in f32), bf16 subnormals read as zero and subnormal
/// results flushed to zero.
pub(crate) fn dot_pair(acc: f32, w: u32, x: u32) -> f32 {
    let value = |half: u32| {
        let v = f32::from_bits((half & 0xFFFF) << 16);
        if v.is_subnormal() {
            0.0
        } else {
            v
        }
    };
    let flush = |v: f32| if v.is_subnormal() { 0.0 * v } else { v };
    let acc = flush(value(w >> 16).mul_add(value(x >> 16), flush(acc)));
    flush(value(w).mul_add(value(x), acc))
}

/// The scalar model of [`tile`] ([`dot_pair`] per lane), for `pairs` (2 or 4) pairs and `rows` rows.
///
/// # Safety
/// `y` as [`band`].
unsafe fn tile_emulated(at: &At<bf16, u32>, pairs: usize, rows: usize, y: PanelOut) {
    for p in 0..pairs {
        for b in 0..rows {
            let out = y.ptr.add((at.row0 + b) * y.ld + (at.pair0 + p) * PAIR);
            for q in 0..PAIR {
                let mut acc = if at.i0 > 0 { *out.add(q) } else { 0.0 };
                for k in at.i0..at.i1 {
                    let lane = 2 * (k * PANEL + (at.pair0 + p) * PAIR + q);
                    let w = u32::from(at.panel[lane].to_bits()) | u32::from(at.panel[lane + 1].to_bits()) << 16;
                    acc = dot_pair(acc, w, at.x[k * rows + b]);
                }
                *out.add(q) = acc;
            }
        }
    }
}
