//! The weight matrices of linear layers, packed for the CPU, and `x W^T` with f32 activations against them in
//! their stored dtype (f32, bf16 or f16), summed in f32.
//!
//! Why not candle's matmul: it multiplies bf16 by bf16 (activations rounded to bf16) or needs the weights widened
//! to f32, which doubles the bytes read per token (decoding reads every weight once per token, so it runs at
//! memory speed), and it runs a matrix-vector product on one thread.
//!
//! Layout: output rows in panels of [`PANEL`]; a panel stores, input by input, the weights of its 64 outputs
//! (zero-padded past the last output). Decoding reads each panel as one sequential stream, broadcasting one input
//! against 64 outputs held in registers; several rows take register tiles (16 outputs x 6 rows with AVX2, 64 x 6
//! with AVX-512), the panel staying in cache while the rows pass, so every weight is read from memory once per step
//! whatever the batch. bf16 weights are stored pairwise interleaved within 16 outputs so that one load, a shift and
//! a mask widen them. Panels are split across the current rayon pool's threads.
//!
//! The inner loops are picked at run time ([`dispatch`]): AVX-512 BF16 (bf16 weights only: [`bf16dot`], its own
//! layout, activations rounded to bf16), AVX-512, AVX2 + FMA (+ F16C), or portable. Every matrix keeps the
//! [`Path`] it was packed for; `CLEM_KERNELS` forces one. Prefetch distance and block size come from [`tuning`].
//!
//! On the f32-sum paths (all but the BF16 dot product) each (row, output) is one fused multiply-add chain over the
//! inputs in order, whatever the number of rows, the tile or the path that computed it: a batch gives
//! bit-identical logits to single runs, and the AVX-512, AVX2 and portable paths give the same bits.

pub mod activation;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod bf16dot;
pub mod dispatch;
pub mod rope;
pub mod tuning;
mod vmath;

use std::mem::MaybeUninit;

pub use dispatch::{path, Features, Path};
use half::{bf16, f16};
use rayon::prelude::*;
pub use tuning::Tuning;

/// A matrix or an input of the wrong size, or a kernel path this CPU cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("a ({out}, {inp}) matrix needs {} values, got {got}", out * inp)]
    MatrixSize { out: usize, inp: usize, got: usize },
    #[error("{got} values are not whole rows of {inp} inputs")]
    InputSize { inp: usize, got: usize },
    #[error("row {id} is outside the matrix's {rows} rows")]
    RowOutOfRange { id: u32, rows: usize },
    #[error("attention buffers are shorter than their shapes say")]
    AttentionShape,
    #[error(
        "the {path} kernels need {missing}, which this CPU lacks: set {} to a path it runs (or unset it)",
        dispatch::ENV
    )]
    Unsupported { path: &'static str, missing: String },
    #[error("{}={value:?} names no kernel path: use avx512bf16|avx512|avx2|portable, or auto", dispatch::ENV)]
    UnknownPath { value: String },
    #[error("{}={value:?}: use default (no calibration) or measure (calibrate anew), or unset it", tuning::ENV)]
    BadTuning { value: String },
}

pub type Result<T> = std::result::Result<T, KernelError>;

/// The element type a matrix is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    Bf16,
    F16,
}

/// Outputs per packed panel, and per pair of AVX2 registers (one AVX-512 register).
const PANEL: usize = 64;
const PAIR: usize = 16;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256, __m512};

/// One element type of stored weights.
pub trait Weight: Copy + Send + Sync + Default + 'static {
    /// Where output `q` (< 16) of a pair is stored within the pair's 16 elements.
    fn slot(q: usize) -> usize {
        q
    }
    fn widen(self) -> f32;
    /// The 16 outputs of one pair of one input, widened: outputs 0..8 and 8..16.
    ///
    /// # Safety
    /// `p..p + 16` must be readable, and the CPU must have AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> (__m256, __m256);
    /// The 32 outputs of two pairs of one input, widened, in the lane order of [`Weight::acc32`].
    ///
    /// # Safety
    /// `p..p + 32` must be readable, and the CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load32(p: *const Self) -> (__m512, __m512);
    /// Running sums of the 32 outputs at `y`, in [`Weight::load32`]'s lane order (outputs 0..16, 16..32).
    ///
    /// # Safety
    /// `y..y + 32` must be readable, and the CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn acc32(y: *const f32) -> (__m512, __m512) {
        use std::arch::x86_64::*;
        (_mm512_loadu_ps(y), _mm512_loadu_ps(y.add(16)))
    }
    /// Writes sums in [`Weight::acc32`]'s lane order back to the 32 outputs at `y`.
    ///
    /// # Safety
    /// `y..y + 32` must be writable, and the CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store32(acc: (__m512, __m512), y: *mut f32) {
        use std::arch::x86_64::*;
        _mm512_storeu_ps(y, acc.0);
        _mm512_storeu_ps(y.add(16), acc.1);
    }
}

impl Weight for f32 {
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load16(p: *const f32) -> (__m256, __m256) {
        use std::arch::x86_64::*;
        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load32(p: *const f32) -> (__m512, __m512) {
        use std::arch::x86_64::*;
        (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
    }
}

impl Weight for bf16 {
    /// Output q < 8 in the low half of 32-bit lane q, output 8 + q in its high half.
    fn slot(q: usize) -> usize {
        if q < 8 {
            2 * q
        } else {
            2 * (q - 8) + 1
        }
    }
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load16(p: *const bf16) -> (__m256, __m256) {
        use std::arch::x86_64::*;
        // bf16 is the top half of an f32: the low halves shift into place, the high halves are masked.
        let v = _mm256_loadu_si256(p.cast::<__m256i>());
        let lo = _mm256_slli_epi32::<16>(v);
        let hi = _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
        (_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi))
    }
    /// As [`Weight::load16`] on two pairs at once: lanes 0..8 of the first vector are outputs 0..8 of the first
    /// pair, lanes 8..16 outputs 0..8 of the second; the second vector holds both pairs' outputs 8..16.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load32(p: *const bf16) -> (__m512, __m512) {
        use std::arch::x86_64::*;
        let v = _mm512_loadu_si512(p.cast());
        let lo = _mm512_slli_epi32::<16>(v);
        let hi = _mm512_and_si512(v, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
        (_mm512_castsi512_ps(lo), _mm512_castsi512_ps(hi))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn acc32(y: *const f32) -> (__m512, __m512) {
        use std::arch::x86_64::*;
        let join = |a: *const f32, b: *const f32| {
            let low = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(a)));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(low, _mm256_castps_pd(_mm256_loadu_ps(b))))
        };
        (join(y, y.add(16)), join(y.add(8), y.add(24)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store32(acc: (__m512, __m512), y: *mut f32) {
        use std::arch::x86_64::*;
        let high = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        _mm256_storeu_ps(y, _mm512_castps512_ps256(acc.0));
        _mm256_storeu_ps(y.add(8), _mm512_castps512_ps256(acc.1));
        _mm256_storeu_ps(y.add(16), high(acc.0));
        _mm256_storeu_ps(y.add(24), high(acc.1));
    }
}

impl Weight for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load16(p: *const f16) -> (__m256, __m256) {
        use std::arch::x86_64::*;
        let lo = _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()));
        (lo, _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast::<__m128i>())))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load32(p: *const f16) -> (__m512, __m512) {
        use std::arch::x86_64::*;
        let lo = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast::<__m256i>()));
        (lo, _mm512_cvtph_ps(_mm256_loadu_si256(p.add(16).cast::<__m256i>())))
    }
}

/// Where a tile works: its band of `x` (the band's rows interleaved input by input: `x[i * ROWS + b]`), one
/// panel, the tile's first pair within the panel, the band's first row, and the inputs `i0..i1` it sums over
/// (continuing the sums already in `y` when `i0 > 0`). `X` is the activations' type (bf16 pairs for [`bf16dot`]).
struct At<'a, W, X = f32> {
    x: &'a [X],
    panel: &'a [W],
    pair0: usize,
    row0: usize,
    i0: usize,
    i1: usize,
    /// Weights to prefetch while this tile runs, spread over its inputs: each tile of a block fetches its share
    /// of the next block, so the weight stream overlaps the arithmetic.
    ahead: &'a [W],
}

/// Where one panel's outputs go: output `q` of the panel for row `b` at `ptr + b * ld + q`. The panels of a
/// product write disjoint columns of one `(rows, ld)` buffer, from several threads.
#[derive(Clone, Copy)]
struct PanelOut {
    ptr: *mut f32,
    ld: usize,
}

impl PanelOut {
    /// The same rows from column `c` on.
    fn columns_from(self, c: usize) -> PanelOut {
        PanelOut { ptr: self.ptr.wrapping_add(c), ..self }
    }
}

// SAFETY: a `PanelOut` is only written through by the one task computing its panel (see `split_panels`).
unsafe impl Send for PanelOut {}
unsafe impl Sync for PanelOut {}

/// Offset in `y` of row `b` and output `q` of pair `p` of `at`.
#[inline(always)]
fn y_index<W, X>(at: &At<W, X>, y: PanelOut, p: usize, b: usize, q: usize) -> usize {
    (at.row0 + b) * y.ld + (at.pair0 + p) * PAIR + q
}

/// Portable: sums of `PAIRS` pairs of outputs x `ROWS` rows, in the order the SIMD paths use.
///
/// # Safety
/// `y` must hold the tile's rows and outputs, written by no other thread meanwhile.
unsafe fn tile_portable<W: Weight, const PAIRS: usize, const ROWS: usize>(at: &At<W>, y: PanelOut) {
    let mut acc = [[[0f32; PAIR]; ROWS]; PAIRS];
    if at.i0 > 0 {
        for (p, acc_p) in acc.iter_mut().enumerate() {
            for (b, acc_pb) in acc_p.iter_mut().enumerate() {
                acc_pb.copy_from_slice(std::slice::from_raw_parts(y.ptr.add(y_index(at, y, p, b, 0)), PAIR));
            }
        }
    }
    for i in at.i0..at.i1 {
        for (p, acc_p) in acc.iter_mut().enumerate() {
            let w = &at.panel[i * PANEL + (at.pair0 + p) * PAIR..][..PAIR];
            for (b, acc_pb) in acc_p.iter_mut().enumerate() {
                let x = at.x[i * ROWS + b];
                for (q, a) in acc_pb.iter_mut().enumerate() {
                    // The SIMD path fuses multiply and add (one rounding): so does this.
                    *a = w[W::slot(q)].widen().mul_add(x, *a);
                }
            }
        }
    }
    for (p, acc_p) in acc.iter().enumerate() {
        for (b, acc_pb) in acc_p.iter().enumerate() {
            std::slice::from_raw_parts_mut(y.ptr.add(y_index(at, y, p, b, 0)), PAIR).copy_from_slice(acc_pb);
        }
    }
}

/// AVX2 + FMA form of [`tile_portable`]; `PF`: prefetch `at.ahead` (several rows: the next block; one row: the
/// stream ahead, when the tuning asks for it).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `at` and `y` must hold the tile's rows, pairs and inputs (the callers'
/// loops ensure it), `y` written by no other thread meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<W: Weight, const PAIRS: usize, const ROWS: usize, const PF: bool>(at: &At<W>, y: PanelOut) {
    use std::arch::x86_64::*;
    let xp = at.x.as_ptr();
    let wp = at.panel.as_ptr().add(at.pair0 * PAIR);
    let yp = y.ptr;
    let mut acc = [[[_mm256_setzero_ps(); 2]; ROWS]; PAIRS];
    if at.i0 > 0 {
        for (p, acc_p) in acc.iter_mut().enumerate() {
            for (b, acc_pb) in acc_p.iter_mut().enumerate() {
                let at_y = yp.add(y_index(at, y, p, b, 0));
                *acc_pb = [_mm256_loadu_ps(at_y), _mm256_loadu_ps(at_y.add(8))];
            }
        }
    }
    // The prefetches spread evenly over the inputs, Bresenham-style (no division in the loop).
    let ahead = at.ahead.as_ptr().cast::<i8>();
    let lines = std::mem::size_of_val(at.ahead).div_ceil(64);
    let steps = at.i1 - at.i0;
    let (mut fetched, mut credit) = (0, 0);
    for i in at.i0..at.i1 {
        credit += lines;
        while PF && credit >= steps {
            credit -= steps;
            prefetch::<ROWS>(ahead.add(fetched * 64));
            fetched += 1;
        }
        for (p, acc_p) in acc.iter_mut().enumerate() {
            let (lo, hi) = W::load16(wp.add(i * PANEL + p * PAIR));
            for (b, acc_pb) in acc_p.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*xp.add(i * ROWS + b));
                acc_pb[0] = _mm256_fmadd_ps(lo, x, acc_pb[0]);
                acc_pb[1] = _mm256_fmadd_ps(hi, x, acc_pb[1]);
            }
        }
    }
    for (p, acc_p) in acc.iter().enumerate() {
        for (b, acc_pb) in acc_p.iter().enumerate() {
            let at_y = yp.add(y_index(at, y, p, b, 0));
            _mm256_storeu_ps(at_y, acc_pb[0]);
            _mm256_storeu_ps(at_y.add(8), acc_pb[1]);
        }
    }
}

/// One row against two neighbouring panels (`data` starts with the first), all inputs, AVX2: two weight streams
/// in flight instead of one (see [`Tuning::row_panels`]). Each output sums in [`tile_avx2`]'s order, so the
/// results are bit-identical.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `data` must hold two panels of `inp` inputs and `x` `inp` values; `y`
/// must hold row 0 of both panels' outputs, written by no other thread meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn two_panels_avx2<W: Weight>(x: &[f32], data: &[W], inp: usize, y: PanelOut) {
    use std::arch::x86_64::*;
    let xp = x.as_ptr();
    let first = data.as_ptr();
    let second = first.add(PANEL * inp);
    let mut acc = [[_mm256_setzero_ps(); 2]; 8];
    // The panels take turns every CHUNK inputs (1 KiB of bf16 weights each), so each turn's 8 sums stay in
    // registers: both panels' 16 at once spilled and halved the speed of matrices that fit in cache.
    const CHUNK: usize = 8;
    for c in (0..inp).step_by(CHUNK) {
        let end = (c + CHUNK).min(inp);
        for (half, base) in [(0, first), (4, second)] {
            let (acc_half, _) = acc[half..].split_at_mut(4);
            for i in c..end {
                let xi = _mm256_broadcast_ss(&*xp.add(i));
                for (p, acc_p) in acc_half.iter_mut().enumerate() {
                    let (lo, hi) = W::load16(base.add(i * PANEL + p * PAIR));
                    acc_p[0] = _mm256_fmadd_ps(lo, xi, acc_p[0]);
                    acc_p[1] = _mm256_fmadd_ps(hi, xi, acc_p[1]);
                }
            }
        }
    }
    for (p, acc_p) in acc.iter().enumerate() {
        // Pair p of the first panel, then of the second: the second panel's columns follow the first's.
        let at_y = y.ptr.add(p * PAIR);
        _mm256_storeu_ps(at_y, acc_p[0]);
        _mm256_storeu_ps(at_y.add(8), acc_p[1]);
    }
}

/// Prefetches one cache line for a tile of `ROWS` rows: several rows fetch the next block into L2 (it is read
/// `ROWS` times from L1 later); one row streaming ahead fetches into L1, where it reads next.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch<const ROWS: usize>(line: *const i8) {
    use std::arch::x86_64::*;
    if ROWS == 1 {
        _mm_prefetch::<_MM_HINT_T0>(line);
    } else {
        _mm_prefetch::<_MM_HINT_T1>(line);
    }
}

/// One tile of 16-output pairs on `path` (AVX2 for every SIMD path: they all have it).
///
/// # Safety
/// As [`tile_portable`]; `path` must be one this CPU runs.
#[inline(always)]
unsafe fn tile<W: Weight, const PAIRS: usize, const ROWS: usize, const PF: bool>(at: &At<W>, path: Path, y: PanelOut) {
    #[cfg(target_arch = "x86_64")]
    if path.has_avx2() {
        // SAFETY: every path but the portable one needs AVX2, FMA and F16C, and `path` runs on this CPU; the rest
        // is the caller's contract.
        unsafe { tile_avx2::<W, PAIRS, ROWS, PF>(at, y) };
        return;
    }
    let _ = path;
    tile_portable::<W, PAIRS, ROWS>(at, y);
}

/// The pairs of a panel's outputs one task computes: all 4, or one half when a product is split finely between
/// threads.
type Pairs = std::ops::Range<usize>;

/// Rows `row0..row0 + ROWS` against `pairs` of a panel over inputs `i0..i1`, `PAIRS` pairs at a time; the tiles
/// prefetch `ahead` between them.
///
/// # Safety
/// As [`tile`], for the band's rows and the panel's `pairs`.
#[inline(always)]
unsafe fn band<W: Weight, const PAIRS: usize, const ROWS: usize, const PF: bool>(
    x: &[f32],
    panel: &[W],
    (row0, i0, i1, pairs): (usize, usize, usize, Pairs),
    ahead: &[W],
    path: Path,
    y: PanelOut,
) {
    let tiles = (pairs.len() / PAIRS).max(1);
    let share = ahead.len().div_ceil(tiles);
    for (t, pair0) in pairs.step_by(PAIRS).enumerate() {
        let ahead = &ahead[(t * share).min(ahead.len())..((t + 1) * share).min(ahead.len())];
        tile::<W, PAIRS, ROWS, PF>(&At { x, panel, pair0, row0, i0, i1, ahead }, path, y);
    }
}

/// The rows of each band [`panel_outputs`] takes, in order: 6 at a time, then the rest.
fn bands(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..rows).step_by(6).map(move |r| (r, 6.min(rows - r)))
}

/// `x` (row-major) with each band's rows interleaved input by input, as tiles read them.
fn interleave_bands<T: Copy + Default>(x: &[T], rows: usize, inp: usize, out: &mut Vec<T>) {
    // Every value is overwritten: only the length matters.
    out.resize(rows * inp, T::default());
    for (r0, n) in bands(rows) {
        let band = &mut out[r0 * inp..(r0 + n) * inp];
        for (b, row) in x[r0 * inp..(r0 + n) * inp].chunks_exact(inp).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                band[i * n + b] = v;
            }
        }
    }
}

thread_local! {
    /// The calling thread's buffer for [`interleave_bands`]: reused, since a fresh multi-megabyte allocation per
    /// product (a prompt's rows) costs page faults that zero it.
    static BANDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` with the calling thread's reusable buffer in `cell`, or a fresh one when that buffer is in use (re-entered
/// on this thread: a product inside a product's task).
fn with_scratch<T, R>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    cell.with(|buf| match buf.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

/// How a product runs: the path of its f32-sum tiles and the tuning of that path.
#[derive(Clone, Copy)]
struct Run {
    path: Path,
    tuning: Tuning,
}

/// All rows against `pairs` of one panel (the first `PANEL * inp` values of `data`; what follows is the next
/// panels), into `y` (`rows x PANEL`). One row sweeps the whole panel once. More rows take tiles over blocks of
/// inputs whose slice of the panel stays in L1 while every row passes, prefetching the next block meanwhile. `x`
/// is laid out by [`interleave_bands`].
///
/// # Safety
/// `y` must hold `rows` rows of the panel's outputs in `pairs`, written by no other thread meanwhile; one row
/// takes whole panels; `run.path` must be one this CPU runs.
unsafe fn panel_outputs<W: Weight>(
    x: &[f32],
    data: &[W],
    (inp, rows, pairs): (usize, usize, Pairs),
    run: Run,
    y: PanelOut,
) {
    let panel = &data[..PANEL * inp];
    let path = run.path;
    if rows == 1 {
        // With a prefetch distance, one row fetches that far ahead in the matrix (the next panels follow this one).
        let ahead = run.tuning.stream_ahead(data, PANEL * inp);
        #[cfg(target_arch = "x86_64")]
        if path == Path::Avx512 {
            avx512::band(x, panel, (0, 0, inp, pairs), ahead, 1, y);
            return;
        }
        if ahead.is_empty() {
            band::<W, 4, 1, false>(x, panel, (0, 0, inp, 0..4), &[], path, y);
        } else {
            band::<W, 4, 1, true>(x, panel, (0, 0, inp, 0..4), ahead, path, y);
        }
        return;
    }
    let block = run.tuning.block_inputs(PANEL * std::mem::size_of::<W>());
    for i0 in (0..inp).step_by(block) {
        let i1 = (i0 + block).min(inp);
        let next = &data[(i1 * PANEL).min(data.len())..((i1 + block) * PANEL).min(data.len())];
        for (r, n) in bands(rows) {
            let xb = &x[r * inp..(r + n) * inp];
            let at = (r, i0, i1, pairs.clone());
            let ahead = &next[r * next.len() / rows..(r + n) * next.len() / rows];
            #[cfg(target_arch = "x86_64")]
            if path == Path::Avx512 {
                avx512::band(xb, panel, at, ahead, n, y);
                continue;
            }
            match n {
                6 => band::<W, 1, 6, true>(xb, panel, at, ahead, path, y),
                5 => band::<W, 1, 5, true>(xb, panel, at, ahead, path, y),
                4 => band::<W, 1, 4, true>(xb, panel, at, ahead, path, y),
                3 => band::<W, 2, 3, true>(xb, panel, at, ahead, path, y),
                2 => band::<W, 2, 2, true>(xb, panel, at, ahead, path, y),
                _ if pairs.len() == 4 => band::<W, 4, 1, false>(xb, panel, at, ahead, path, y),
                _ => band::<W, 2, 1, false>(xb, panel, at, ahead, path, y),
            }
        }
    }
}

/// Runs `panel(p, pairs)` for each of `panels` panels of a product of `rows` rows, split over the current rayon
/// pool: several rows are compute-bound, so threads split half panels (small matrices, 9 panels say, divide
/// evenly); one row streams whole panels. `work` (weights x rows) below 2^16 stays on the calling thread.
fn split_panels(panels: usize, rows: usize, work: usize, panel: impl Fn(usize, Pairs) + Sync) {
    let threads = rayon::current_num_threads();
    let halves = if rows > 1 { 2 } else { 1 };
    let units = panels * halves;
    let run = |u0: usize, u1: usize| {
        for p in u0 / halves..u1.div_ceil(halves) {
            let (from, to) = (u0.max(p * halves) - p * halves, u1.min((p + 1) * halves) - p * halves);
            panel(p, from * 4 / halves..to * 4 / halves);
        }
    };
    let per_task = if threads <= 1 || work < 1 << 16 { units } else { units.div_ceil(threads) };
    if per_task >= units {
        run(0, units);
    } else {
        (0..units.div_ceil(per_task))
            .into_par_iter()
            .for_each(|t| run(t * per_task, (t * per_task + per_task).min(units)));
    }
}

/// `x (rows, inp) . W^T` over packed panels into `y`, `(rows, panels * PANEL)` row-major.
/// Every value of `y` is written (each panel writes all its columns of every row), so it may start uninitialised.
fn products<W: Weight>(data: &[W], x: &[f32], rows: usize, inp: usize, run: Run, y: &mut [MaybeUninit<f32>]) {
    let panel_len = PANEL * inp;
    let panels = data.len() / panel_len.max(1);
    let ld = panels * PANEL;
    assert!(y.len() >= rows * ld, "products: output buffer too short");
    let out = PanelOut { ptr: y.as_mut_ptr().cast::<f32>(), ld };
    #[cfg(target_arch = "x86_64")]
    if rows == 1 && matches!(run.path, Path::Avx2 | Path::Avx512) && run.tuning.row_panels == 2 {
        split_panels(panels.div_ceil(2), 1, data.len(), |q, _| {
            let p = 2 * q;
            // SAFETY: as below, for panels p and p + 1 (a unit of two panels is run by one task); the path was
            // checked against the CPU when the matrix was packed.
            unsafe {
                if p + 1 < panels {
                    let (two, y) = (&data[p * panel_len..], out.columns_from(p * PANEL));
                    if run.path == Path::Avx512 {
                        avx512::two_panels(x, two, inp, y);
                    } else {
                        two_panels_avx2(x, two, inp, y);
                    }
                } else {
                    panel_outputs(x, &data[p * panel_len..], (inp, 1, 0..4), run, out.columns_from(p * PANEL));
                }
            }
        });
        return;
    }
    split_panels(panels, rows, data.len() * rows, |p, pairs| {
        // SAFETY: panel p writes `pairs` of columns p * PANEL.. p * PANEL + PANEL of the rows of `y` (checked
        // above), and each unit (a panel's half, or the panel) is run by one task; the matrix's path was checked
        // against the CPU when it was packed.
        unsafe { panel_outputs(x, &data[p * panel_len..], (inp, rows, pairs), run, out.columns_from(p * PANEL)) };
    });
}

#[derive(Debug)]
enum Packed {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    /// bf16 in [`bf16dot`]'s layout (pairs of inputs side by side), for the AVX-512 BF16 path.
    Bf16Pairs(Vec<bf16>),
}

/// Index of weight `(o, i)` in the packed data of a matrix with `inp` inputs.
fn packed_index<W: Weight>(o: usize, i: usize, inp: usize) -> usize {
    let within = o % PANEL;
    (o / PANEL) * PANEL * inp + i * PANEL + (within / PAIR) * PAIR + W::slot(within % PAIR)
}

/// A `(out, inp)` weight matrix packed as the module doc says, in its stored dtype (other dtypes as f32), for
/// the [`Path`] that multiplies it.
#[derive(Debug)]
pub struct PackedMatrix {
    data: Packed,
    out: usize,
    inp: usize,
    path: Path,
}

fn pack<W: Weight>(w: &[W], out: usize, inp: usize) -> Vec<W> {
    let mut data = vec![W::default(); out.div_ceil(PANEL) * PANEL * inp];
    // Panel by panel (in parallel): each panel's rows are read once, its block written in order.
    data.par_chunks_mut((PANEL * inp).max(1)).enumerate().for_each(|(p, panel)| {
        for q in 0..PANEL.min(out.saturating_sub(p * PANEL)) {
            let row = &w[(p * PANEL + q) * inp..][..inp];
            let at = (q / PAIR) * PAIR + W::slot(q % PAIR);
            for (i, &v) in row.iter().enumerate() {
                panel[i * PANEL + at] = v;
            }
        }
    });
    data
}

impl PackedMatrix {
    fn check(len: usize, out: usize, inp: usize) -> Result<()> {
        if out.checked_mul(inp) == Some(len) {
            Ok(())
        } else {
            Err(KernelError::MatrixSize { out, inp, got: len })
        }
    }

    /// Packs a row-major `(out, inp)` f32 matrix for the default [`path`].
    pub fn from_f32(w: &[f32], out: usize, inp: usize) -> Result<PackedMatrix> {
        Self::from_f32_on(path()?, w, out, inp)
    }

    /// Packs a row-major `(out, inp)` bf16 matrix, kept in bf16, for the default [`path`].
    pub fn from_bf16(w: &[bf16], out: usize, inp: usize) -> Result<PackedMatrix> {
        Self::from_bf16_on(path()?, w, out, inp)
    }

    /// Packs a row-major `(out, inp)` f16 matrix, kept in f16, for the default [`path`].
    pub fn from_f16(w: &[f16], out: usize, inp: usize) -> Result<PackedMatrix> {
        Self::from_f16_on(path()?, w, out, inp)
    }

    /// [`PackedMatrix::from_f32`] for `path` (an error when this CPU cannot run it).
    pub fn from_f32_on(path: Path, w: &[f32], out: usize, inp: usize) -> Result<PackedMatrix> {
        Self::check(w.len(), out, inp)?;
        Ok(PackedMatrix { data: Packed::F32(pack(w, out, inp)), out, inp, path: path.check()? })
    }

    /// [`PackedMatrix::from_bf16`] for `path`: the AVX-512 BF16 path packs pairs of inputs side by side.
    pub fn from_bf16_on(path: Path, w: &[bf16], out: usize, inp: usize) -> Result<PackedMatrix> {
        Self::check(w.len(), out, inp)?;
        let path = path.check()?;
        let data = match path {
            Path::Avx512Bf16 => Packed::Bf16Pairs(bf16dot::pack(w, out, inp)),
            _ => Packed::Bf16(pack(w, out, inp)),
        };
        Ok(PackedMatrix { data, out, inp, path })
    }

    /// [`PackedMatrix::from_f16`] for `path`.
    pub fn from_f16_on(path: Path, w: &[f16], out: usize, inp: usize) -> Result<PackedMatrix> {
        Self::check(w.len(), out, inp)?;
        Ok(PackedMatrix { data: Packed::F16(pack(w, out, inp)), out, inp, path: path.check()? })
    }

    /// `(out, inp)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    pub fn dtype(&self) -> StoredDtype {
        match self.data {
            Packed::F32(_) => StoredDtype::F32,
            Packed::Bf16(_) | Packed::Bf16Pairs(_) => StoredDtype::Bf16,
            Packed::F16(_) => StoredDtype::F16,
        }
    }

    /// The path this matrix was packed for, which multiplies it.
    pub fn path(&self) -> Path {
        self.path
    }

    /// `x (rows, inp) . W^T` -> `(rows, out)`.
    pub fn matmul_t(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        if rows.checked_mul(self.inp) != Some(x.len()) {
            return Err(KernelError::InputSize { inp: self.inp, got: x.len() });
        }
        Ok(self.matmul_tuned(x, rows, tuning::get(self.path)))
    }

    /// [`PackedMatrix::matmul_t`] with `tuning`, `x` of the right size.
    fn matmul_tuned(&self, x: &[f32], rows: usize, tuning: Tuning) -> Vec<f32> {
        if self.inp == 0 || rows == 0 {
            return vec![0f32; rows * self.out];
        }
        if let Packed::Bf16Pairs(d) = &self.data {
            // SAFETY: the matrix's path (the only one packing pairs) was checked against the CPU when packed.
            return self.rows_of(rows, |y| unsafe { bf16dot::matmul(d, x, (rows, self.inp), tuning, false, y) });
        }
        let run = Run { path: self.path.f32_sums(), tuning };
        if rows == 1 {
            return self.products_into_rows(x, 1, run);
        }
        with_scratch(&BANDED, |banded| {
            interleave_bands(x, rows, self.inp, banded);
            self.products_into_rows(banded, rows, run)
        })
    }

    /// [`products`] of `x` (laid out by [`interleave_bands`] when `rows > 1`) as `(rows, out)` row-major.
    fn products_into_rows(&self, x: &[f32], rows: usize, run: Run) -> Vec<f32> {
        self.rows_of(rows, |y| match &self.data {
            Packed::F32(d) => products(d, x, rows, self.inp, run, y),
            Packed::Bf16(d) => products(d, x, rows, self.inp, run, y),
            Packed::F16(d) => products(d, x, rows, self.inp, run, y),
            Packed::Bf16Pairs(_) => unreachable!("matmul_t takes the BF16 dot product for this layout"),
        })
    }

    /// The `(rows, out)` row-major result of `fill`, which must write all of a `(rows, ld)` buffer (`ld`: the
    /// outputs rounded up to whole panels, which tiles write).
    fn rows_of(&self, rows: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
        let ld = self.out.div_ceil(PANEL) * PANEL;
        let mut y: Vec<f32> = Vec::with_capacity(rows * ld);
        fill(&mut y.spare_capacity_mut()[..rows * ld]);
        // SAFETY: `fill` wrote all `rows * ld` values (every product writes every column of every row).
        unsafe { y.set_len(rows * ld) };
        if ld != self.out {
            for r in 1..rows {
                y.copy_within(r * ld..r * ld + self.out, r * self.out);
            }
            y.truncate(rows * self.out);
        }
        y
    }

    /// Rows `ids` of the matrix, widened to f32 (an embedding lookup), `(ids.len(), inp)` row-major.
    pub fn rows_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        fn gather<W: Weight>(
            d: &[W],
            ids: &[u32],
            m: &PackedMatrix,
            index: impl Fn(usize, usize) -> usize,
        ) -> Result<Vec<f32>> {
            let mut y = Vec::with_capacity(ids.len() * m.inp);
            for &id in ids {
                let o = id as usize;
                if o >= m.out {
                    return Err(KernelError::RowOutOfRange { id, rows: m.out });
                }
                y.extend((0..m.inp).map(|i| d[index(o, i)].widen()));
            }
            Ok(y)
        }
        let inp = self.inp;
        match &self.data {
            Packed::F32(d) => gather(d, ids, self, |o, i| packed_index::<f32>(o, i, inp)),
            Packed::Bf16(d) => gather(d, ids, self, |o, i| packed_index::<bf16>(o, i, inp)),
            Packed::F16(d) => gather(d, ids, self, |o, i| packed_index::<f16>(o, i, inp)),
            Packed::Bf16Pairs(d) => gather(d, ids, self, |o, i| bf16dot::index(o, i, inp)),
        }
    }
}

/// `SKIP: <what>` on stderr, written directly: the test harness hides what a passing test prints, and a skipped
/// check must not pass silently.
#[cfg(test)]
fn skip(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], rows: usize, inp: usize, w: &[f32], out: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let dot: f64 = (0..inp).map(|i| f64::from(x[r * inp + i]) * f64::from(w[o * inp + i])).sum();
                y[r * out + o] = dot as f32;
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// The matrix in each stored dtype, and its values as f32 after rounding to that dtype, for the default path's
    /// f32 sums (`CLEM_KERNELS` picks another; the BF16 dot product has its own tests below).
    fn each_dtype(w: &[f32], out: usize, inp: usize) -> Result<Vec<(PackedMatrix, Vec<f32>)>> {
        let path = path()?.f32_sums();
        let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        Ok(vec![
            (PackedMatrix::from_f32_on(path, w, out, inp)?, w.to_vec()),
            (PackedMatrix::from_bf16_on(path, &b, out, inp)?, b.iter().map(|v| v.to_f32()).collect()),
            (PackedMatrix::from_f16_on(path, &h, out, inp)?, h.iter().map(|v| v.to_f32()).collect()),
        ])
    }

    #[test]
    fn every_tile_shape_and_dtype_matches_a_plain_product() -> Result<()> {
        let shapes = [(1, 8, 3), (1, 67, 300), (2, 40, 17), (3, 33, 64), (4, 9, 70), (5, 576, 130), (8, 100, 1000)];
        for (rows, inp, out) in shapes.into_iter().chain([(13, 19, 9), (6, 1, 65), (7, 30, 128)]) {
            let x = values(rows * inp, 1);
            for (m, w) in each_dtype(&values(out * inp, 7), out, inp)? {
                assert_eq!(m.dims(), (out, inp));
                let want = naive(&x, rows, inp, &w, out);
                for (g, w) in m.matmul_t(&x, rows)?.iter().zip(&want) {
                    let dtype = m.dtype();
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{dtype:?} {rows}x{inp}x{out}: {g} vs {w}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn random_shapes_match_a_plain_product() -> Result<()> {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let (rows, inp, out) = (rng.usize(0..20), rng.usize(0..70), rng.usize(0..140));
            let x: Vec<f32> = (0..rows * inp).map(|_| rng.f32() - 0.5).collect();
            let w: Vec<f32> = (0..out * inp).map(|_| rng.f32() - 0.5).collect();
            let want = naive(&x, rows, inp, &w, out);
            let got = PackedMatrix::from_f32(&w, out, inp)?.matmul_t(&x, rows)?;
            assert_eq!(got.len(), want.len(), "{rows}x{inp}x{out}");
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{rows}x{inp}x{out}: {g} vs {w}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_as_in_any_batch() -> Result<()> {
        let (inp, out) = (203, 77);
        for (m, _) in each_dtype(&values(out * inp, 3), out, inp)? {
            let x = values(9 * inp, 5);
            let all = m.matmul_t(&x, 9)?;
            for r in 0..9 {
                let alone = m.matmul_t(&x[r * inp..(r + 1) * inp], 1)?;
                assert_eq!(alone, all[r * out..(r + 1) * out], "{:?} row {r}", m.dtype());
            }
            // The portable path sums in the same order as the SIMD one.
            let mut portable = vec![MaybeUninit::new(f32::NAN); out.div_ceil(PANEL) * PANEL];
            let run = Run { path: Path::Portable, tuning: Tuning::DEFAULT };
            match &m.data {
                Packed::F32(d) => products(d, &x[..inp], 1, inp, run, &mut portable),
                Packed::Bf16(d) => products(d, &x[..inp], 1, inp, run, &mut portable),
                Packed::F16(d) => products(d, &x[..inp], 1, inp, run, &mut portable),
                Packed::Bf16Pairs(_) => continue,
            }
            // SAFETY: initialised above (and overwritten by `products`).
            let portable: Vec<f32> = portable.iter().map(|v| unsafe { v.assume_init() }).collect();
            assert_eq!(portable[..out], all[..out], "{:?}", m.dtype());
        }
        Ok(())
    }

    #[test]
    fn splitting_between_threads_gives_the_same_bits() -> std::result::Result<(), Box<dyn std::error::Error>> {
        // 9 panels: 2 and 4 threads split some panels in halves between them; every band shape.
        let (inp, out) = (120, 9 * 64 - 5);
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build();
        let (one, two, four) = (pool(1)?, pool(2)?, pool(4)?);
        for (m, w) in each_dtype(&values(out * inp, 4), out, inp)? {
            for rows in [1, 2, 3, 5, 7, 8, 13] {
                let x = values(rows * inp, 6);
                let alone = one.install(|| m.matmul_t(&x, rows))?;
                assert_eq!(alone, two.install(|| m.matmul_t(&x, rows))?, "{:?}, {rows} rows, 2 threads", m.dtype());
                assert_eq!(alone, four.install(|| m.matmul_t(&x, rows))?, "{:?}, {rows} rows, 4 threads", m.dtype());
                for (g, w) in alone.iter().zip(&naive(&x, rows, inp, &w, out)) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{:?}, {rows} rows: {g} vs {w}", m.dtype());
                }
            }
        }
        Ok(())
    }

    #[test]
    fn rows_come_back_as_stored() -> Result<()> {
        let (inp, out) = (19, 70);
        for (m, w) in each_dtype(&values(out * inp, 9), out, inp)? {
            let got = m.rows_f32(&[69, 0, 3])?;
            assert_eq!(got, [&w[69 * inp..70 * inp], &w[..inp], &w[3 * inp..4 * inp]].concat());
            assert_eq!(m.rows_f32(&[70]), Err(KernelError::RowOutOfRange { id: 70, rows: 70 }));
        }
        Ok(())
    }

    #[test]
    fn wrong_sizes_are_an_error() -> Result<()> {
        assert_eq!(
            PackedMatrix::from_f32(&[1.0; 7], 2, 4).err(),
            Some(KernelError::MatrixSize { out: 2, inp: 4, got: 7 })
        );
        let m = PackedMatrix::from_f32(&[1.0; 8], 2, 4)?;
        assert_eq!(m.matmul_t(&[1.0; 5], 1), Err(KernelError::InputSize { inp: 4, got: 5 }));
        // Sizes that overflow are wrong sizes too.
        assert!(m.matmul_t(&[1.0; 4], usize::MAX).is_err());
        assert!(PackedMatrix::from_f32(&[1.0; 4], usize::MAX, 2).is_err());
        assert_eq!(m.matmul_t(&[1.0; 8], 2)?, [4.0; 4]);
        // Degenerate shapes: no inputs sums to zero, no rows gives nothing.
        assert_eq!(PackedMatrix::from_f32(&[], 3, 0)?.matmul_t(&[], 2)?, [0.0; 6]);
        assert_eq!(m.matmul_t(&[], 0)?, Vec::<f32>::new());
        assert_eq!(PackedMatrix::from_bf16(&[], 0, 5)?.matmul_t(&[0.0; 5], 1)?, Vec::<f32>::new());
        Ok(())
    }

    /// Runs `f` for each path this CPU runs; prints `SKIP:` with `what` and the missing features for the others.
    fn each_path(what: &str, mut f: impl FnMut(Path) -> Result<()>) -> Result<()> {
        for p in Path::ALL {
            let missing = p.missing(Features::detect());
            if missing.is_empty() {
                f(p)?;
            } else {
                skip(&format!("{what} on the {p} path: this CPU lacks {}", missing.join(", ")));
            }
        }
        Ok(())
    }

    /// The matrix packed for `path` in each stored dtype the path sums in f32 (bf16 on the BF16 path is tested
    /// below), with its values rounded to that dtype.
    fn each_f32_sum_dtype(path: Path, w: &[f32], out: usize, inp: usize) -> Result<Vec<(PackedMatrix, Vec<f32>)>> {
        let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let mut all = vec![
            (PackedMatrix::from_f32_on(path, w, out, inp)?, w.to_vec()),
            (PackedMatrix::from_f16_on(path, &h, out, inp)?, h.iter().map(|v| v.to_f32()).collect()),
        ];
        if path != Path::Avx512Bf16 {
            all.push((PackedMatrix::from_bf16_on(path, &b, out, inp)?, b.iter().map(|v| v.to_f32()).collect()));
        }
        Ok(all)
    }

    #[test]
    fn every_f32_sum_path_gives_the_portable_bits_in_any_batch_and_split(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build();
        let (one, two, four) = (pool(1)?, pool(2)?, pool(4)?);
        // Odd sizes, several blocks of inputs (bf16: 128 inputs a block), 9 panels split in halves by threads.
        let shapes = [(203, 77), (300, 9 * 64 - 5), (37, 130), (1, 64)];
        each_path("products equal to the portable path's", |path| {
            for (inp, out) in shapes {
                let w = values(out * inp, 11);
                let reference = each_f32_sum_dtype(Path::Portable, &w, out, inp)?;
                for ((m, wr), (r, _)) in each_f32_sum_dtype(path, &w, out, inp)?.iter().zip(&reference) {
                    assert_eq!((m.path(), m.dtype()), (path, r.dtype()));
                    for rows in [1, 2, 3, 5, 6, 7, 8, 13] {
                        let x = values(rows * inp, 13);
                        let want = one.install(|| r.matmul_t(&x, rows))?;
                        let at = format!("{path} {:?} {rows}x{inp}x{out}", m.dtype());
                        for pool in [&one, &two, &four] {
                            assert_eq!(
                                pool.install(|| m.matmul_t(&x, rows))?,
                                want,
                                "{at}, {} threads",
                                pool.current_num_threads()
                            );
                        }
                        for (g, w) in want.iter().zip(&naive(&x, rows, inp, wr, out)) {
                            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{at}: {g} vs {w}");
                        }
                    }
                }
            }
            println!("{path}: the portable path's bits");
            Ok(())
        })?;
        Ok(())
    }

    #[test]
    fn a_prefetch_distance_block_size_or_panels_at_once_changes_no_bit() -> Result<()> {
        each_path("tuning changes no bit", |path| {
            // An even number of panels, and an odd one (the last panel read alone) with inputs that end within
            // a turn of the two-panel loop.
            for (inp, out) in [(300, 200), (37, 130)] {
                for (m, _) in each_f32_sum_dtype(path, &values(out * inp, 2), out, inp)? {
                    for rows in [1, 7] {
                        let x = values(rows * inp, 3);
                        let want = m.matmul_tuned(&x, rows, Tuning::DEFAULT);
                        for block_bytes in Tuning::BLOCKS {
                            for row_ahead in Tuning::AHEADS {
                                for row_panels in Tuning::ROW_PANELS {
                                    let t = Tuning { block_bytes, row_ahead, row_panels };
                                    let got = m.matmul_tuned(&x, rows, t);
                                    assert_eq!(got, want, "{path} {:?} {rows} rows {t:?}", m.dtype());
                                }
                            }
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// `x . W^T` as the BF16 path defines it, from the row-major weights: the activations rounded to bf16, then
    /// per (row, output) one [`bf16dot::dot_pair`] per pair of inputs, in order.
    fn bf16_dot_reference(x: &[f32], rows: usize, inp: usize, w: &[bf16], out: usize) -> Vec<f32> {
        let bits = |v: Option<bf16>| u32::from(v.map_or(0, bf16::to_bits));
        let mut y = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let mut acc = 0f32;
                for k in 0..inp.div_ceil(2) {
                    let at = |i: usize| (i < inp).then_some(i);
                    let wp =
                        bits(at(2 * k).map(|i| w[o * inp + i])) | bits(at(2 * k + 1).map(|i| w[o * inp + i])) << 16;
                    let xv = |i: Option<usize>| i.map(|i| bf16::from_f32(x[r * inp + i]));
                    let xp = bits(xv(at(2 * k))) | bits(xv(at(2 * k + 1))) << 16;
                    acc = bf16dot::dot_pair(acc, wp, xp);
                }
                y[r * out + o] = acc;
            }
        }
        y
    }

    /// The BF16 path's product of `m` (its pairs layout) with `emulate` as [`bf16dot::matmul`] takes it.
    fn bf16_dot(m: &PackedMatrix, x: &[f32], rows: usize, emulate: bool) -> Vec<f32> {
        let Packed::Bf16Pairs(d) = &m.data else { panic!("not the pairs layout") };
        // SAFETY: emulated, or the caller checked that the CPU has AVX-512 BF16.
        m.rows_of(rows, |y| unsafe { bf16dot::matmul(d, x, (rows, m.inp), Tuning::DEFAULT, emulate, y) })
    }

    /// A matrix in the BF16 path's layout whatever the CPU (its products run emulated, or where the CPU has it).
    fn pairs_matrix(w: &[bf16], out: usize, inp: usize) -> PackedMatrix {
        PackedMatrix { data: Packed::Bf16Pairs(bf16dot::pack(w, out, inp)), out, inp, path: Path::Avx512Bf16 }
    }

    #[test]
    fn the_bf16_dot_product_layout_blocks_and_bands_match_its_definition(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        // Emulated (runs on any CPU): packing, odd inputs, blocks of input pairs (64 a block), bands, thread splits.
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build();
        let (one, three) = (pool(1)?, pool(3)?);
        for (inp, out) in [(1, 3), (7, 64), (203, 77), (300, 9 * 64 - 5)] {
            let w: Vec<bf16> = values(out * inp, 17).iter().map(|&v| bf16::from_f32(v)).collect();
            let m = pairs_matrix(&w, out, inp);
            for rows in [1, 2, 5, 6, 7, 13] {
                let x = values(rows * inp, 19);
                let want = bf16_dot_reference(&x, rows, inp, &w, out);
                assert_eq!(one.install(|| bf16_dot(&m, &x, rows, true)), want, "{rows}x{inp}x{out}");
                assert_eq!(three.install(|| bf16_dot(&m, &x, rows, true)), want, "{rows}x{inp}x{out}, 3 threads");
            }
        }
        Ok(())
    }

    #[test]
    fn one_bf16_pair_product_rounds_once_per_sum() {
        let pair =
            |lo: f32, hi: f32| u32::from(bf16::from_f32(lo).to_bits()) | u32::from(bf16::from_f32(hi).to_bits()) << 16;
        // 3 * 5 = 15 first (the high halves), then + 1.5 * 2 = 3: exact.
        assert_eq!(bf16dot::dot_pair(0.5, pair(1.5, 3.0), pair(2.0, 5.0)), 18.5);
        // Each sum rounds to f32: 2^24 + 1 is not an f32, so adding 1 to 2^24 leaves it.
        assert_eq!(bf16dot::dot_pair(16_777_216.0, pair(1.0, 0.0), pair(1.0, 0.0)), 16_777_216.0);
        // Subnormal bf16 inputs count as zero.
        let tiny = f32::from_bits(0x0001_0000);
        assert!(tiny.is_subnormal());
        assert_eq!(bf16dot::dot_pair(0.0, pair(tiny, 0.0), pair(1e30, 0.0)), 0.0);
    }

    #[test]
    fn the_avx512_bf16_path_rounds_activations_and_keeps_batches_equal_to_single_runs() -> Result<()> {
        if !Path::Avx512Bf16.supported() {
            skip(&format!(
                "the avx512bf16 path: this CPU lacks {}",
                Path::Avx512Bf16.missing(Features::detect()).join(", ")
            ));
            return Ok(());
        }
        for (inp, out) in [(1, 3), (7, 64), (203, 77), (576, 9 * 64 - 5)] {
            let w: Vec<bf16> = values(out * inp, 23).iter().map(|&v| bf16::from_f32(v)).collect();
            let m = PackedMatrix::from_bf16_on(Path::Avx512Bf16, &w, out, inp)?;
            assert!(matches!(m.data, Packed::Bf16Pairs(_)));
            for rows in [1, 2, 5, 6, 7, 13] {
                let x = values(rows * inp, 29);
                let got = m.matmul_t(&x, rows)?;
                // Batched rows equal their single runs, bit for bit.
                for r in 0..rows {
                    assert_eq!(m.matmul_t(&x[r * inp..(r + 1) * inp], 1)?, got[r * out..(r + 1) * out], "row {r}");
                }
                // The instruction against its definition (Intel's pseudo-code): equal up to how the hardware
                // orders its two roundings, far below bf16's resolution.
                let emulated = bf16_dot(&m, &x, rows, true);
                let xw: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
                let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
                let scale = naive(
                    &xw.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                    rows,
                    inp,
                    &wf.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                    out,
                );
                let exact = naive(&xw, rows, inp, &wf, out);
                for (((g, e), s), x) in got.iter().zip(&emulated).zip(&scale).zip(&exact) {
                    assert!((g - e).abs() <= 1e-6 * s + 1e-30, "{rows}x{inp}x{out}: {g} vs emulated {e}");
                    assert!((g - x).abs() <= 1e-5 * s + 1e-30, "{rows}x{inp}x{out}: {g} vs exact {x}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bf16_pairs_come_back_as_stored() -> Result<()> {
        for (inp, out) in [(19, 70), (1, 1), (2, 65)] {
            let w: Vec<bf16> = values(out * inp, 9).iter().map(|&v| bf16::from_f32(v)).collect();
            let m = pairs_matrix(&w, out, inp);
            let wide: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let got = m.rows_f32(&[(out - 1) as u32, 0])?;
            assert_eq!(got, [&wide[(out - 1) * inp..out * inp], &wide[..inp]].concat());
            assert_eq!(m.rows_f32(&[out as u32]), Err(KernelError::RowOutOfRange { id: out as u32, rows: out }));
        }
        Ok(())
    }

    #[test]
    fn a_path_this_cpu_lacks_is_refused_not_run() {
        for p in Path::ALL.into_iter().filter(|p| !p.supported()) {
            let e = PackedMatrix::from_f32_on(p, &[1.0; 4], 2, 2).expect_err("refused");
            assert!(matches!(e, KernelError::Unsupported { path, .. } if path == p.name()), "{e}");
            assert!(PackedMatrix::from_bf16_on(p, &[bf16::ONE; 4], 2, 2).is_err());
            assert!(activation::silu_mul_on(p, &[0.0; 4], 2).is_err());
            println!("{p}: refused ({e})");
        }
    }
}
