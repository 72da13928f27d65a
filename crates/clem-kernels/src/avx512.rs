//! The AVX-512F tiles of the packed product: 16 lanes per register, so one tile covers a whole panel (64 outputs,
//! 4 registers per row) or half of one, for up to 6 rows: 24 running sums of the 32 registers, the activations
//! broadcast from memory into the multiply-adds. The same layout as the AVX2 tiles ([`Weight::load32`] reads two
//! pairs at once) and the same fused multiply-add chain per (row, output), so the same bits.

use std::arch::x86_64::*;

use crate::{y_index, At, Pairs, PanelOut, Weight, PAIR, PANEL};

/// Rows `row0..row0 + rows` (at most 6) against `pairs` of a panel (all 4, or a half: one tile covers them) over
/// inputs `i0..i1`, prefetching `ahead` meanwhile (nothing when it is empty).
///
/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C; `x` holds the band's `rows` rows interleaved as
/// [`crate::interleave_bands`] lays them out, `y` the band's rows of the panel's `pairs`, written by no other
/// thread meanwhile; `pairs` is even.
pub(crate) unsafe fn band<W: Weight>(
    x: &[f32],
    panel: &[W],
    (row0, i0, i1, pairs): (usize, usize, usize, Pairs),
    ahead: &[W],
    rows: usize,
    y: PanelOut,
) {
    debug_assert!(pairs.len() % 2 == 0 && pairs.end <= PANEL / PAIR && (1..=6).contains(&rows));
    let at = At { x, panel, pair0: pairs.start, row0, i0, i1, ahead };
    let fetch = !ahead.is_empty();
    macro_rules! tiles {
        ($($quads:literal, $rows:literal);* $(;)?) => {
            match (pairs.len() / 2, rows, fetch) {
                $(
                    ($quads, $rows, true) => tile::<W, $quads, $rows, true>(&at, y),
                    ($quads, $rows, false) => tile::<W, $quads, $rows, false>(&at, y),
                )*
                _ => unreachable!("a band has 1 to 6 rows and 2 or 4 pairs"),
            }
        };
    }
    tiles!(2, 1; 2, 2; 2, 3; 2, 4; 2, 5; 2, 6; 1, 1; 1, 2; 1, 3; 1, 4; 1, 5; 1, 6);
}

/// One row against two neighbouring panels (`data` starts with the first), all inputs: two weight streams in
/// flight, as [`crate::two_panels_avx2`] (8 running sums, in registers). Each output sums in [`tile`]'s order.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C; `data` must hold two panels of `inp` inputs and `x` `inp`
/// values; `y` must hold row 0 of both panels' outputs, written by no other thread meanwhile.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn two_panels<W: Weight>(x: &[f32], data: &[W], inp: usize, y: PanelOut) {
    let xp = x.as_ptr();
    let first = data.as_ptr();
    let second = first.add(PANEL * inp);
    // Groups of 32 outputs: two of the first panel, then two of the second.
    let mut acc = [(_mm512_setzero_ps(), _mm512_setzero_ps()); 4];
    for i in 0..inp {
        let x = _mm512_set1_ps(*xp.add(i));
        for (g, acc_g) in acc.iter_mut().enumerate() {
            let panel = if g < 2 { first } else { second };
            let (a, b) = W::load32(panel.add(i * PANEL + 2 * (g % 2) * PAIR));
            acc_g.0 = _mm512_fmadd_ps(a, x, acc_g.0);
            acc_g.1 = _mm512_fmadd_ps(b, x, acc_g.1);
        }
    }
    for (g, acc_g) in acc.iter().enumerate() {
        // The second panel's outputs follow the first's: group g starts at output 32 g.
        W::store32(*acc_g, y.ptr.add(g * 2 * PAIR));
    }
}

/// Sums of `QUADS` groups of 32 outputs (two pairs) x `ROWS` rows; `PF`: prefetch `at.ahead`, spread over the
/// inputs as the AVX2 tile does.
///
/// # Safety
/// As [`band`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn tile<W: Weight, const QUADS: usize, const ROWS: usize, const PF: bool>(at: &At<W>, y: PanelOut) {
    let xp = at.x.as_ptr();
    let wp = at.panel.as_ptr().add(at.pair0 * PAIR);
    let mut acc = [[(_mm512_setzero_ps(), _mm512_setzero_ps()); ROWS]; QUADS];
    if at.i0 > 0 {
        for (g, acc_g) in acc.iter_mut().enumerate() {
            for (b, acc_gb) in acc_g.iter_mut().enumerate() {
                *acc_gb = W::acc32(y.ptr.add(y_index(at, y, 2 * g, b, 0)));
            }
        }
    }
    let ahead = at.ahead.as_ptr().cast::<i8>();
    let lines = std::mem::size_of_val(at.ahead).div_ceil(64);
    let steps = at.i1 - at.i0;
    let (mut fetched, mut credit) = (0, 0);
    for i in at.i0..at.i1 {
        credit += lines;
        while PF && credit >= steps {
            credit -= steps;
            crate::prefetch::<ROWS>(ahead.add(fetched * 64));
            fetched += 1;
        }
        for (g, acc_g) in acc.iter_mut().enumerate() {
            let (a, b) = W::load32(wp.add(i * PANEL + 2 * g * PAIR));
            for (r, acc_gr) in acc_g.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*xp.add(i * ROWS + r));
                acc_gr.0 = _mm512_fmadd_ps(a, x, acc_gr.0);
                acc_gr.1 = _mm512_fmadd_ps(b, x, acc_gr.1);
            }
        }
    }
    for (g, acc_g) in acc.iter().enumerate() {
        for (b, acc_gb) in acc_g.iter().enumerate() {
            W::store32(*acc_gb, y.ptr.add(y_index(at, y, 2 * g, b, 0)));
        }
    }
}
