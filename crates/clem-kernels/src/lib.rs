//! The weight matrices of linear layers, packed for the CPU, and `x W^T` with f32 activations against them in
//! their stored dtype (f32, bf16 or f16), summed in f32.
//!
//! Why not candle's matmul: it multiplies bf16 by bf16 (activations rounded to bf16) or needs the weights widened
//! to f32, which doubles the bytes read per token (decoding reads every weight once per token, so it runs at
//! memory speed), and it runs a matrix-vector product on one thread.
//!
//! Layout: output rows in panels of [`PANEL`]; a panel stores, input by input, the weights of its 64 outputs
//! (zero-padded past the last output). Decoding reads each panel as one sequential stream, broadcasting one input
//! against 64 outputs held in 8 registers; several rows take register tiles of 16 outputs x 6 rows, the panel
//! staying in cache while the rows pass, so every weight is read from memory once per step whatever the batch.
//! bf16 weights are stored pairwise interleaved within 16 outputs so that one load, a shift and a mask widen
//! them. Panels are split across the current rayon pool's threads. With AVX2 + FMA (+ F16C) the inner loops are
//! SIMD; elsewhere a portable loop computes the same sums in the same order.
//!
//! Each (row, output) is one fused multiply-add chain over the inputs in order, whatever the number of rows or
//! the tile that computed it, so a batch gives bit-identical logits to single runs.

pub mod activation;
pub mod attention;
pub mod rope;
mod vmath;

use std::mem::MaybeUninit;

use half::{bf16, f16};
use rayon::prelude::*;

/// A matrix or an input of the wrong size.
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
}

pub type Result<T> = std::result::Result<T, KernelError>;

/// The element type a matrix is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    Bf16,
    F16,
}

/// Outputs per packed panel, and per pair of AVX2 registers.
const PANEL: usize = 64;
const PAIR: usize = 16;

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
    unsafe fn load16(p: *const Self) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256);
}

impl Weight for f32 {
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load16(p: *const f32) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
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
    unsafe fn load16(p: *const bf16) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        // bf16 is the top half of an f32: the low halves shift into place, the high halves are masked.
        let v = _mm256_loadu_si256(p.cast::<__m256i>());
        let lo = _mm256_slli_epi32::<16>(v);
        let hi = _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
        (_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi))
    }
}

impl Weight for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load16(p: *const f16) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        let lo = _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()));
        (lo, _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast::<__m128i>())))
    }
}

/// Where a tile works: its band of `x` (the band's rows interleaved input by input: `x[i * ROWS + b]`), one
/// panel, the tile's first pair within the panel, the band's first row, and the inputs `i0..i1` it sums over
/// (continuing the sums already in `y` when `i0 > 0`).
struct At<'a, W> {
    x: &'a [f32],
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

// SAFETY: a `PanelOut` is only written through by the one task computing its panel (see `products`).
unsafe impl Send for PanelOut {}
unsafe impl Sync for PanelOut {}

/// Offset in `y` of row `b` and output `q` of pair `p` of `at`.
#[inline(always)]
fn y_index<W>(at: &At<W>, y: PanelOut, p: usize, b: usize, q: usize) -> usize {
    (at.row0 + b) * y.ld + (at.pair0 + p) * PAIR + q
}

/// Portable: sums of `PAIRS` pairs of outputs x `ROWS` rows, in the order the SIMD path uses.
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

/// AVX2 + FMA form of [`tile_portable`].
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `at` and `y` must hold the tile's rows, pairs and inputs (the callers'
/// loops ensure it), `y` written by no other thread meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<W: Weight, const PAIRS: usize, const ROWS: usize>(at: &At<W>, y: PanelOut) {
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
        // One row streams the panel without prefetching: the hardware prefetcher keeps up with it.
        while ROWS > 1 && credit >= steps {
            credit -= steps;
            _mm_prefetch::<_MM_HINT_T1>(ahead.add(fetched * 64));
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

/// One tile on the path the CPU allows.
///
/// # Safety
/// As [`tile_portable`].
#[inline(always)]
unsafe fn tile<W: Weight, const PAIRS: usize, const ROWS: usize>(at: &At<W>, simd: bool, y: PanelOut) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when the CPU has AVX2, FMA and F16C; the rest is the caller's contract.
        unsafe { tile_avx2::<W, PAIRS, ROWS>(at, y) };
        return;
    }
    let _ = simd;
    tile_portable::<W, PAIRS, ROWS>(at, y);
}

/// The pairs of a panel's outputs one task computes: all 4, or one half when a product is split finely between
/// threads.
type Pairs = std::ops::Range<usize>;

/// Rows `row0..row0 + ROWS` against `pairs` of a panel over inputs `i0..i1`, `PAIRS` pairs at a time; the tiles
/// prefetch `ahead` between them.
///
/// # Safety
/// As [`tile_portable`], for the band's rows and the panel's `pairs`.
#[inline(always)]
unsafe fn band<W: Weight, const PAIRS: usize, const ROWS: usize>(
    x: &[f32],
    panel: &[W],
    (row0, i0, i1, pairs): (usize, usize, usize, Pairs),
    ahead: &[W],
    simd: bool,
    y: PanelOut,
) {
    let tiles = (pairs.len() / PAIRS).max(1);
    let share = ahead.len().div_ceil(tiles);
    for (t, pair0) in pairs.step_by(PAIRS).enumerate() {
        let ahead = &ahead[(t * share).min(ahead.len())..((t + 1) * share).min(ahead.len())];
        tile::<W, PAIRS, ROWS>(&At { x, panel, pair0, row0, i0, i1, ahead }, simd, y);
    }
}

/// The rows of each band [`panel_outputs`] takes, in order: 6 at a time, then the rest.
fn bands(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..rows).step_by(6).map(move |r| (r, 6.min(rows - r)))
}

/// `x` (row-major) with each band's rows interleaved input by input, as tiles read them.
fn interleave_bands(x: &[f32], rows: usize, inp: usize, out: &mut Vec<f32>) {
    // Every value is overwritten: only the length matters.
    out.resize(rows * inp, 0.0);
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

/// All rows against `pairs` of one panel (the first `PANEL * inp` values of `data`; what follows is the next
/// panels), into `y` (`rows x PANEL`). One row sweeps the whole panel once with 8 running sums. More rows take
/// tiles of 6 rows x 16 outputs (smaller at the end), over blocks of inputs whose slice of the panel stays in L1
/// while every row passes, prefetching the next block meanwhile. `x` is laid out by [`interleave_bands`].
///
/// # Safety
/// `y` must hold `rows` rows of the panel's outputs in `pairs`, written by no other thread meanwhile; one row
/// takes whole panels.
unsafe fn panel_outputs<W: Weight>(
    x: &[f32],
    data: &[W],
    (inp, rows, pairs): (usize, usize, Pairs),
    simd: bool,
    y: PanelOut,
) {
    let panel = &data[..PANEL * inp];
    if rows == 1 {
        band::<W, 4, 1>(x, panel, (0, 0, inp, 0..4), &[], simd, y);
        return;
    }
    let block = (16 * 1024 / (PANEL * std::mem::size_of::<W>())).max(1);
    for i0 in (0..inp).step_by(block) {
        let i1 = (i0 + block).min(inp);
        let next = &data[(i1 * PANEL).min(data.len())..((i1 + block) * PANEL).min(data.len())];
        for (r, n) in bands(rows) {
            let xb = &x[r * inp..(r + n) * inp];
            let at = (r, i0, i1, pairs.clone());
            let ahead = &next[r * next.len() / rows..(r + n) * next.len() / rows];
            match n {
                6 => band::<W, 1, 6>(xb, panel, at, ahead, simd, y),
                5 => band::<W, 1, 5>(xb, panel, at, ahead, simd, y),
                4 => band::<W, 1, 4>(xb, panel, at, ahead, simd, y),
                3 => band::<W, 2, 3>(xb, panel, at, ahead, simd, y),
                2 => band::<W, 2, 2>(xb, panel, at, ahead, simd, y),
                _ if pairs.len() == 4 => band::<W, 4, 1>(xb, panel, at, ahead, simd, y),
                _ => band::<W, 2, 1>(xb, panel, at, ahead, simd, y),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn simd_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn simd_available() -> bool {
    false
}

/// `x (rows, inp) . W^T` over packed panels into `y`, `(rows, panels * PANEL)` row-major.
/// Every value of `y` is written (each panel writes all its columns of every row), so it may start uninitialised.
fn products<W: Weight>(data: &[W], x: &[f32], rows: usize, inp: usize, simd: bool, y: &mut [MaybeUninit<f32>]) {
    let panel_len = PANEL * inp;
    let panels = data.len() / panel_len.max(1);
    let ld = panels * PANEL;
    assert!(y.len() >= rows * ld, "products: output buffer too short");
    let out = PanelOut { ptr: y.as_mut_ptr().cast::<f32>(), ld };
    let threads = rayon::current_num_threads();
    // Several rows are compute-bound: threads split half panels, so that small matrices (9 panels, say) divide
    // evenly. One row streams whole panels.
    let halves = if rows > 1 { 2 } else { 1 };
    let units = panels * halves;
    let run = |u0: usize, u1: usize| {
        for p in u0 / halves..u1.div_ceil(halves) {
            let (from, to) = (u0.max(p * halves) - p * halves, u1.min((p + 1) * halves) - p * halves);
            let pairs = from * 4 / halves..to * 4 / halves;
            // SAFETY: panel p writes `pairs` of columns p * PANEL.. p * PANEL + PANEL of the rows of `y` (checked
            // above), and each unit (a panel's half, or the panel) is run by one task.
            unsafe { panel_outputs(x, &data[p * panel_len..], (inp, rows, pairs), simd, out.columns_from(p * PANEL)) };
        }
    };
    let per_task = if threads <= 1 || data.len() * rows < 1 << 16 { units } else { units.div_ceil(threads) };
    if per_task >= units {
        run(0, units);
    } else {
        (0..units.div_ceil(per_task))
            .into_par_iter()
            .for_each(|t| run(t * per_task, (t * per_task + per_task).min(units)));
    }
}

#[derive(Debug)]
enum Packed {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

/// Index of weight `(o, i)` in the packed data of a matrix with `inp` inputs.
fn packed_index<W: Weight>(o: usize, i: usize, inp: usize) -> usize {
    let within = o % PANEL;
    (o / PANEL) * PANEL * inp + i * PANEL + (within / PAIR) * PAIR + W::slot(within % PAIR)
}

/// A `(out, inp)` weight matrix packed as the module doc says, in its stored dtype (other dtypes as f32).
#[derive(Debug)]
pub struct PackedMatrix {
    data: Packed,
    out: usize,
    inp: usize,
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

    /// Packs a row-major `(out, inp)` f32 matrix.
    pub fn from_f32(w: &[f32], out: usize, inp: usize) -> Result<PackedMatrix> {
        Self::check(w.len(), out, inp)?;
        Ok(PackedMatrix { data: Packed::F32(pack(w, out, inp)), out, inp })
    }

    /// Packs a row-major `(out, inp)` bf16 matrix, kept in bf16.
    pub fn from_bf16(w: &[bf16], out: usize, inp: usize) -> Result<PackedMatrix> {
        Self::check(w.len(), out, inp)?;
        Ok(PackedMatrix { data: Packed::Bf16(pack(w, out, inp)), out, inp })
    }

    /// Packs a row-major `(out, inp)` f16 matrix, kept in f16.
    pub fn from_f16(w: &[f16], out: usize, inp: usize) -> Result<PackedMatrix> {
        Self::check(w.len(), out, inp)?;
        Ok(PackedMatrix { data: Packed::F16(pack(w, out, inp)), out, inp })
    }

    /// `(out, inp)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    pub fn dtype(&self) -> StoredDtype {
        match self.data {
            Packed::F32(_) => StoredDtype::F32,
            Packed::Bf16(_) => StoredDtype::Bf16,
            Packed::F16(_) => StoredDtype::F16,
        }
    }

    /// `x (rows, inp) . W^T` -> `(rows, out)`.
    pub fn matmul_t(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        if rows.checked_mul(self.inp) != Some(x.len()) {
            return Err(KernelError::InputSize { inp: self.inp, got: x.len() });
        }
        if self.inp == 0 || rows == 0 {
            return Ok(vec![0f32; rows * self.out]);
        }
        let simd = simd_available();
        if rows == 1 {
            return Ok(self.products_into_rows(x, 1, simd));
        }
        BANDED.with(|banded| match banded.try_borrow_mut() {
            Ok(mut banded) => {
                interleave_bands(x, rows, self.inp, &mut banded);
                Ok(self.products_into_rows(&banded, rows, simd))
            }
            // Re-entered on this thread (a product inside a product's task): a buffer of its own.
            Err(_) => {
                let mut own = Vec::new();
                interleave_bands(x, rows, self.inp, &mut own);
                Ok(self.products_into_rows(&own, rows, simd))
            }
        })
    }

    /// [`products`] of `x` (laid out by [`interleave_bands`] when `rows > 1`) as `(rows, out)` row-major.
    fn products_into_rows(&self, x: &[f32], rows: usize, simd: bool) -> Vec<f32> {
        // Tiles write whole panels: rows of `ld` outputs, compacted to `out` after.
        let ld = self.out.div_ceil(PANEL) * PANEL;
        let mut y: Vec<f32> = Vec::with_capacity(rows * ld);
        let uninit = &mut y.spare_capacity_mut()[..rows * ld];
        match &self.data {
            Packed::F32(d) => products(d, x, rows, self.inp, simd, uninit),
            Packed::Bf16(d) => products(d, x, rows, self.inp, simd, uninit),
            Packed::F16(d) => products(d, x, rows, self.inp, simd, uninit),
        }
        // SAFETY: `products` wrote all `rows * ld` values.
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
        fn gather<W: Weight>(d: &[W], ids: &[u32], m: &PackedMatrix) -> Result<Vec<f32>> {
            let mut y = Vec::with_capacity(ids.len() * m.inp);
            for &id in ids {
                let o = id as usize;
                if o >= m.out {
                    return Err(KernelError::RowOutOfRange { id, rows: m.out });
                }
                y.extend((0..m.inp).map(|i| d[packed_index::<W>(o, i, m.inp)].widen()));
            }
            Ok(y)
        }
        match &self.data {
            Packed::F32(d) => gather(d, ids, self),
            Packed::Bf16(d) => gather(d, ids, self),
            Packed::F16(d) => gather(d, ids, self),
        }
    }
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

    /// The matrix in each stored dtype, and its values as f32 after rounding to that dtype.
    fn each_dtype(w: &[f32], out: usize, inp: usize) -> Result<Vec<(PackedMatrix, Vec<f32>)>> {
        let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        Ok(vec![
            (PackedMatrix::from_f32(w, out, inp)?, w.to_vec()),
            (PackedMatrix::from_bf16(&b, out, inp)?, b.iter().map(|v| v.to_f32()).collect()),
            (PackedMatrix::from_f16(&h, out, inp)?, h.iter().map(|v| v.to_f32()).collect()),
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
            match &m.data {
                Packed::F32(d) => products(d, &x[..inp], 1, inp, false, &mut portable),
                Packed::Bf16(d) => products(d, &x[..inp], 1, inp, false, &mut portable),
                Packed::F16(d) => products(d, &x[..inp], 1, inp, false, &mut portable),
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
}
