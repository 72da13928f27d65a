//! candle's side of [`clem_kernels`], each on the kernel path the model was placed with: a weight tensor packed in
//! its stored dtype for that path, multiplied as a candle op (f32
//! activations in, f32 out) and read back by rows for embedding lookups; decoding attention read from the KV
//! cache buffers in place, after a decoding step's fused q/k/v projection is split, rotated and written into them in
//! one pass; the gated SiLU of an MLP in one pass.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, InplaceOp1, Layout, Result, Shape, Storage, Tensor};
use clem_kernels::attention::{self, AttendShape};
use clem_kernels::rope;
use clem_kernels::{PackedMatrix, Path as KernelPath};
use half::{bf16, f16};
use rayon::prelude::*;

/// A `(out, inp)` weight packed by [`clem_kernels`]: bf16 and f16 kept as stored, anything else as f32.
#[derive(Debug)]
pub struct PackedWeight(PackedMatrix);

fn kernel_err(e: clem_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl PackedWeight {
    /// `w` packed for the kernels' `path` (an error when this CPU cannot run it).
    pub fn new(w: &Tensor, path: KernelPath) -> Result<PackedWeight> {
        let (out, inp) = w.dims2()?;
        let flat = w.flatten_all()?;
        let packed = match w.dtype() {
            DType::BF16 => PackedMatrix::from_bf16_on(path, &flat.to_vec1::<bf16>()?, out, inp),
            DType::F16 => PackedMatrix::from_f16_on(path, &flat.to_vec1::<f16>()?, out, inp),
            _ => PackedMatrix::from_f32_on(path, &flat.to_dtype(DType::F32)?.to_vec1::<f32>()?, out, inp),
        };
        packed.map(PackedWeight).map_err(kernel_err)
    }

    /// `(out, inp)`.
    pub fn dims(&self) -> (usize, usize) {
        self.0.dims()
    }

    /// Rows `ids` `(n)` u32 as an f32 `(n, inp)` tensor.
    pub fn rows(&self, ids: &Tensor, device: &Device) -> Result<Tensor> {
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let rows = self.0.rows_f32(&ids).map_err(kernel_err)?;
        Tensor::from_vec(rows, (ids.len(), self.dims().1), device)
    }
}

/// `x.apply_op1_no_bwd(&weight)`: `x (.., inp)` f32 times the weight transposed -> `(.., out)` f32, on the CPU.
impl CustomOp1 for PackedWeight {
    fn name(&self) -> &'static str {
        "packed-matmul-t"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, inp) = self.dims();
        let dims = xl.shape().dims();
        let Some((x0, x1)) = xl.contiguous_offsets() else { candle_core::bail!("packed matmul needs contiguous x") };
        if dims.last() != Some(&inp) || xs.dtype() != DType::F32 {
            candle_core::bail!("packed matmul: x {dims:?} {:?} against a ({out}, {inp}) weight", xs.dtype());
        }
        let rows = xl.shape().elem_count() / inp.max(1);
        let y = self.0.matmul_t(&xs.as_slice::<f32>()?[x0..x1], rows).map_err(kernel_err)?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }
}

/// `silu(gate) * up` of `gate_up (.., 2 * inter)` (the gate then the up projection) -> `(.., inter)`, for f32
/// tensors on the CPU, on the kernels' `path`.
pub fn silu_mul(path: KernelPath, gate_up: &Tensor, inter: usize) -> Result<Tensor> {
    let gate_up = gate_up.contiguous()?;
    let (store, layout) = gate_up.storage_and_layout();
    let values = contiguous_f32(&store, layout)?;
    let out = clem_kernels::activation::silu_mul_on(path, values, inter).map_err(kernel_err)?;
    let mut shape = gate_up.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = inter;
    }
    Tensor::from_vec(out, shape, gate_up.device())
}

/// The values of a CPU tensor's storage.
fn cpu_values<T: candle_core::WithDType>(storage: &Storage) -> Result<&[T]> {
    match storage {
        Storage::Cpu(cpu) => cpu.as_slice::<T>(),
        _ => candle_core::bail!("the kernels run on the CPU only"),
    }
}

/// The values of a contiguous f32 CPU tensor, read in place.
fn contiguous_f32<'a>(store: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("the kernels need contiguous input") };
    Ok(&cpu_values::<f32>(store)?[a..b])
}

/// `s` from `at` on (empty past the end: the kernel then reports the short buffer).
fn tail<T>(s: &[T], at: usize) -> &[T] {
    s.get(at..).unwrap_or_default()
}

/// One part of [`attend_parts`]: `q (b, kv_heads, queries, d)` against `k`, `v` `(b, kv_heads, len, d)` (views of
/// a cache's buffers; the last dimension contiguous) with the additive `mask (b, 1, positions, len)`.
pub struct AttendPart {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub mask: Tensor,
}

/// Attention of one part ([`AttendPart`]'s shapes): `(b, kv_heads, queries, d)` out, on the kernels' `path`.
pub fn attend(
    path: KernelPath,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let part = AttendPart { q: q.clone(), k: k.clone(), v: v.clone(), mask: mask.clone() };
    let mut out = attend_parts(path, &[part], scale, softcap)?;
    out.pop().ok_or_else(|| candle_core::Error::Msg("kernel attention returned nothing".into()))
}

/// Attention of several parts, each against its own cache (a decoding step's sequence slots), as one parallel
/// pass over every (part, row, KV head) on the current rayon pool: a step of many short sequences costs one
/// dispatch per layer and spreads over the threads, where a pass per sequence would leave threads idle (three KV
/// heads on two threads). Each (row, KV head) computes what it computes alone. Every cache must share one dtype.
pub fn attend_parts(path: KernelPath, parts: &[AttendPart], scale: f64, softcap: Option<f64>) -> Result<Vec<Tensor>> {
    let Some(first) = parts.first() else { return Ok(Vec::new()) };
    let contiguous: Vec<(Tensor, Tensor)> =
        parts.iter().map(|p| Ok((p.q.contiguous()?, p.mask.contiguous()?))).collect::<Result<_>>()?;
    let (scale, softcap) = (scale as f32, softcap.map(|c| c as f32));
    match first.k.dtype() {
        DType::F32 => attend_rows::<f32>(path, parts, &contiguous, scale, softcap),
        DType::BF16 => attend_rows::<bf16>(path, parts, &contiguous, scale, softcap),
        DType::F16 => attend_rows::<f16>(path, parts, &contiguous, scale, softcap),
        other => candle_core::bail!("kernel attention: a {other:?} KV cache"),
    }
}

/// One part's values, read in place, for [`attend_rows`].
struct PartView<'a, T> {
    qs: &'a [f32],
    ms: &'a [f32],
    ks: &'a [T],
    vs: &'a [T],
    shape: AttendShape,
    kv_heads: usize,
    /// Elements between rows and between KV heads in the cache buffers.
    strides: (usize, usize),
    /// Rows times KV heads.
    tasks: usize,
}

impl<T> PartView<'_, T> {
    /// Where (row, KV head) `i`'s keys and values start.
    fn kv_at(&self, i: usize) -> usize {
        (i / self.kv_heads) * self.strides.0 + (i % self.kv_heads) * self.strides.1
    }
}

/// [`attend_parts`] for caches of `T`; `contiguous` holds each part's `q` and `mask` made contiguous.
fn attend_rows<T: attention::KvValue + candle_core::WithDType>(
    path: KernelPath,
    parts: &[AttendPart],
    contiguous: &[(Tensor, Tensor)],
    scale: f32,
    softcap: Option<f32>,
) -> Result<Vec<Tensor>> {
    let guards: Vec<_> = parts
        .iter()
        .zip(contiguous)
        .map(|(p, (q, m))| {
            (q.storage_and_layout(), m.storage_and_layout(), p.k.storage_and_layout(), p.v.storage_and_layout())
        })
        .collect();
    let mut views = Vec::with_capacity(parts.len());
    for ((p, (q, mask)), ((q_store, q_lay), (m_store, m_lay), (k_store, k_lay), (v_store, v_lay))) in
        parts.iter().zip(contiguous).zip(&guards)
    {
        let (b, kv_heads, queries, d) = q.dims4()?;
        let kst = k_lay.stride();
        if kst.len() != 4 || kst[3] != 1 || kst != v_lay.stride() {
            candle_core::bail!("kernel attention needs K and V laid out alike, rows contiguous");
        }
        views.push(PartView {
            qs: tail(cpu_values::<f32>(q_store)?, q_lay.start_offset()),
            ms: tail(cpu_values::<f32>(m_store)?, m_lay.start_offset()),
            ks: tail(cpu_values::<T>(k_store)?, k_lay.start_offset()),
            vs: tail(cpu_values::<T>(v_store)?, v_lay.start_offset()),
            shape: AttendShape {
                queries,
                positions: mask.dim(2)?,
                len: p.k.dim(2)?,
                head_dim: d,
                kv_stride: kst[2],
                scale,
                softcap,
            },
            kv_heads,
            strides: (kst[0], kst[1]),
            tasks: if queries * d == 0 { 0 } else { b * kv_heads },
        });
    }
    let sizes: Vec<usize> = views.iter().map(|w| w.tasks * w.shape.queries * w.shape.head_dim).collect();
    let mut out = vec![0f32; sizes.iter().sum()];
    // Every (part, row, KV head) with its output rows, in order.
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(views.iter().map(|w| w.tasks).sum());
    let mut rest = out.as_mut_slice();
    for (n, w) in views.iter().enumerate() {
        for i in 0..w.tasks {
            let (o, after) = std::mem::take(&mut rest).split_at_mut(w.shape.queries * w.shape.head_dim);
            tasks.push((n, i, o));
            rest = after;
        }
    }
    let order: Vec<(usize, usize)> = tasks.iter().map(|(n, i, _)| (*n, *i)).collect();
    tasks.into_par_iter().enumerate().try_for_each(|(at, (n, i, o))| {
        // The next task is most often this thread's next call.
        if let Some(w) = order.get(at + 1).and_then(|&(n, i)| views.get(n).map(|w| (w, i))) {
            attention::prefetch(tail(w.0.ks, w.0.kv_at(w.1)), &w.0.shape);
        }
        let w = &views[n];
        let s = &w.shape;
        let (q_at, m_at) = (i * s.queries * s.head_dim, (i / w.kv_heads) * s.positions * s.len);
        attention::attend_on(
            path,
            tail(w.qs, q_at),
            tail(w.ks, w.kv_at(i)),
            tail(w.vs, w.kv_at(i)),
            tail(w.ms, m_at),
            s,
            o,
        )
        .map_err(kernel_err)
    })?;
    let mut at = 0;
    parts
        .iter()
        .zip(sizes)
        .map(|(p, n)| {
            let t = Tensor::from_vec(out[at..at + n].to_vec(), p.q.dims4()?, p.q.device());
            at += n;
            t
        })
        .collect()
}

/// The shapes of a decoding step's attention heads.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Writes one part of a decoding step's projection into a cache buffer `(b, kv_heads, cap, d)` at positions
/// `at..at + seq`: the keys rotated, or the values as they are.
struct CacheWrite<'a> {
    qkv: &'a [f32],
    shape: (usize, usize, usize),
    heads: Heads,
    at: usize,
    /// `Some((cos, sin))` `(b, seq, d / 2)`: the keys; `None`: the values.
    rope: Option<(&'a [f32], &'a [f32])>,
}

impl InplaceOp1 for CacheWrite<'_> {
    fn name(&self) -> &'static str {
        "cache-write"
    }

    fn cpu_fwd(&self, buf: &mut CpuStorage, bl: &Layout) -> Result<()> {
        match buf {
            CpuStorage::F32(buf) => self.write(buf, bl),
            CpuStorage::BF16(buf) => self.write(buf, bl),
            CpuStorage::F16(buf) => self.write(buf, bl),
            other => candle_core::bail!("cache-write: a {:?} cache", other.dtype()),
        }
    }
}

impl CacheWrite<'_> {
    /// [`InplaceOp1::cpu_fwd`] into a cache of `T`, each value rounded to it (to nearest, as torch's casts).
    fn write<T: attention::KvValue>(&self, buf: &mut [T], bl: &Layout) -> Result<()> {
        let (b, kvh, cap, d) = bl.shape().dims4()?;
        let Some((o0, o1)) = bl.contiguous_offsets() else { candle_core::bail!("cache-write: a strided cache") };
        let buf = &mut buf[o0..o1];
        let (rows, seq, width) = self.shape;
        let Heads { heads, kv_heads, head_dim } = self.heads;
        if (rows, kvh, d) != (b, kv_heads, head_dim) || self.at + seq > cap || width != (heads + 2 * kvh) * d {
            candle_core::bail!("cache-write: a ({b}, {kvh}, {cap}, {d}) cache for a ({rows}, {seq}, {width}) step");
        }
        let first = if self.rope.is_some() { heads } else { heads + kvh };
        let mut rotated = vec![0f32; d];
        for r in 0..b {
            for t in 0..seq {
                let step = r * seq + t;
                for g in 0..kvh {
                    let src = &self.qkv[step * width + (first + g) * d..][..d];
                    let dst = &mut buf[((r * kvh + g) * cap + self.at + t) * d..][..d];
                    let src = match self.rope {
                        Some((cos, sin)) => {
                            let half = d / 2;
                            rope::rotate_half(
                                src,
                                &cos[step * half..][..half],
                                &sin[step * half..][..half],
                                &mut rotated,
                            );
                            &rotated
                        }
                        None => src,
                    };
                    rope::store(src, dst);
                }
            }
        }
        Ok(())
    }
}

/// A decoding step's fused projection `qkv (b, seq, (heads + 2 kv_heads) d)` split in one pass: keys rotated with
/// `cos`/`sin` `(b, seq, d / 2)` and values written into the cache buffers `k`, `v` `(b, kv_heads, cap, d)` at
/// positions `at..`, and the rotated queries returned as `(b, kv_heads, heads / kv_heads * seq, d)` (the query
/// heads of each KV head stacked, as [`attend`] takes them). Replaces slicing, transposing, rotating and copying
/// as separate tensor ops.
pub fn split_step(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: Heads,
    (k, v, at): (&Tensor, &Tensor, usize),
) -> Result<Tensor> {
    // Read in place (the step's values are not copied): contiguous f32 on the CPU.
    let (qkv, cos, sin) = (qkv.contiguous()?, cos.contiguous()?, sin.contiguous()?);
    let ((qkv_store, qkv_lay), (cos_store, cos_lay), (sin_store, sin_lay)) =
        (qkv.storage_and_layout(), cos.storage_and_layout(), sin.storage_and_layout());
    let values = contiguous_f32(&qkv_store, qkv_lay)?;
    let (cos, sin) = (contiguous_f32(&cos_store, cos_lay)?, contiguous_f32(&sin_store, sin_lay)?);
    let shape = qkv.dims3()?;
    let (b, seq, width) = shape;
    let Heads { heads: h, kv_heads: kvh, head_dim: d } = heads;
    if width != (h + 2 * kvh) * d || cos.len() != b * seq * d / 2 || sin.len() != cos.len() || kvh == 0 {
        candle_core::bail!("split_step: a ({b}, {seq}, {width}) step for {h} heads, {kvh} KV heads of {d}");
    }
    k.inplace_op1(&CacheWrite { qkv: values, shape, heads, at, rope: Some((cos, sin)) })?;
    v.inplace_op1(&CacheWrite { qkv: values, shape, heads, at, rope: None })?;
    let mut q = vec![0f32; b * h * seq * d];
    for r in 0..b {
        for hh in 0..h {
            for t in 0..seq {
                let step = r * seq + t;
                let src = &values[step * width + hh * d..][..d];
                let dst = &mut q[((r * h + hh) * seq + t) * d..][..d];
                rope::rotate_half(src, &cos[step * d / 2..][..d / 2], &sin[step * d / 2..][..d / 2], dst);
            }
        }
    }
    Tensor::from_vec(q, (b, kvh, h / kvh * seq, d), qkv.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoding step's split: keys rotated as candle's `rope` rotates them and values copied into the cache at
    /// the step's position, rounded to the cache's dtype; queries rotated and stacked by KV head.
    #[test]
    fn a_step_is_split_rotated_and_cached_in_the_cache_dtype() -> Result<()> {
        let dev = Device::Cpu;
        let heads = Heads { heads: 4, kv_heads: 2, head_dim: 8 };
        let (b, seq, cap, at) = (2, 1, 6, 3);
        let width = (heads.heads + 2 * heads.kv_heads) * heads.head_dim;
        let qkv = Tensor::randn(0f32, 1.0, (b, seq, width), &dev)?;
        let cos = Tensor::randn(0f32, 1.0, (b, seq, 4), &dev)?;
        let sin = Tensor::randn(0f32, 1.0, (b, seq, 4), &dev)?;
        // What the prefill path computes: (b, heads, seq, d) parts, candle's rope.
        let part = |from: usize, n: usize| -> Result<Tensor> {
            qkv.narrow(2, from * 8, n * 8)?.reshape((b, seq, n, 8))?.transpose(1, 2)?.contiguous()
        };
        let q_want = candle_nn::rotary_emb::rope(&part(0, 4)?, &cos, &sin)?;
        let k_want = candle_nn::rotary_emb::rope(&part(4, 2)?, &cos, &sin)?;
        let v_want = part(6, 2)?;
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let k = Tensor::zeros((b, 2, cap, 8), dtype, &dev)?;
            let v = Tensor::zeros((b, 2, cap, 8), dtype, &dev)?;
            let q = split_step(&qkv, &cos, &sin, heads, (&k, &v, at))?;
            assert_eq!(q.dims(), [b, 2, 2 * seq, 8]);
            let same = |got: &Tensor, want: &Tensor| -> Result<bool> {
                let got = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let want = want.to_dtype(dtype)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(got == want)
            };
            assert!(same(&k.narrow(2, at, seq)?, &k_want)?, "{dtype:?} keys");
            assert!(same(&v.narrow(2, at, seq)?, &v_want)?, "{dtype:?} values");
            // Nothing else written.
            let before = k.narrow(2, 0, at)?.to_dtype(DType::F32)?.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert_eq!(before, 0.0);
        }
        // Queries stay f32 whatever the cache.
        let k = Tensor::zeros((b, 2, cap, 8), DType::BF16, &dev)?;
        let q = split_step(&qkv, &cos, &sin, heads, (&k, &k.clone(), 0))?;
        let q_f32 = q.reshape((b, 4, seq, 8))?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(q_f32, q_want.flatten_all()?.to_vec1::<f32>()?);
        // A cache too short for the step is an error, not a panic.
        assert!(split_step(&qkv, &cos, &sin, heads, (&k, &k.clone(), cap)).is_err());
        Ok(())
    }
}
