//! candle's side of [`clem_kernels`]: a weight tensor packed in its stored dtype, multiplied as a candle op (f32
//! activations in, f32 out) and read back by rows for embedding lookups; decoding attention read from the KV
//! cache buffers in place.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor};
use clem_kernels::attention::{self, AttendShape};
use clem_kernels::PackedMatrix;
use half::{bf16, f16};
use rayon::prelude::*;

/// A `(out, inp)` weight packed by [`clem_kernels`]: bf16 and f16 kept as stored, anything else as f32.
#[derive(Debug)]
pub struct PackedWeight(PackedMatrix);

fn kernel_err(e: clem_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl PackedWeight {
    pub fn new(w: &Tensor) -> Result<PackedWeight> {
        let (out, inp) = w.dims2()?;
        let flat = w.flatten_all()?;
        let packed = match w.dtype() {
            DType::BF16 => PackedMatrix::from_bf16(&flat.to_vec1::<bf16>()?, out, inp),
            DType::F16 => PackedMatrix::from_f16(&flat.to_vec1::<f16>()?, out, inp),
            _ => PackedMatrix::from_f32(&flat.to_dtype(DType::F32)?.to_vec1::<f32>()?, out, inp),
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

/// The f32 values of `t`'s storage and its layout's strides and start (CPU tensors only).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32], &[usize], usize) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu.as_slice::<f32>()?, layout.stride(), layout.start_offset()),
        _ => candle_core::bail!("kernel attention runs on the CPU only"),
    }
}

/// Attention of `q (b, kv_heads, queries, d)` against `k`, `v` `(b, kv_heads, len, d)` (views of the cache
/// buffers; the last dimension contiguous) with the additive `mask (b, 1, positions, len)`; `(b, kv_heads,
/// queries, d)` out. Each (row, KV head) runs on the current rayon pool.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, softcap: Option<f64>) -> Result<Tensor> {
    let q = q.contiguous()?;
    let mask = mask.contiguous()?;
    let (b, kvh, queries, d) = q.dims4()?;
    let (len, positions) = (k.dim(2)?, mask.dim(2)?);
    let mut out = vec![0f32; b * kvh * queries * d];
    with_f32(&q, |qs, _, q0| {
        with_f32(&mask, |ms, _, m0| {
            with_f32(k, |ks, kst, k0| {
                with_f32(v, |vs, vst, v0| {
                    if kst.len() != 4 || kst[3] != 1 || kst != vst {
                        candle_core::bail!("kernel attention needs K and V laid out alike, rows contiguous");
                    }
                    let shape = AttendShape {
                        queries,
                        positions,
                        len,
                        head_dim: d,
                        kv_stride: kst[2],
                        scale: scale as f32,
                        softcap: softcap.map(|c| c as f32),
                    };
                    out.par_chunks_mut((queries * d).max(1)).enumerate().try_for_each(|(i, o)| {
                        let (bi, g) = (i / kvh, i % kvh);
                        let kv_at = bi * kst[0] + g * kst[1];
                        let q_at = q0 + i * queries * d;
                        let m_at = m0 + bi * positions * len;
                        attention::attend(
                            qs.get(q_at..).unwrap_or_default(),
                            ks.get(k0 + kv_at..).unwrap_or_default(),
                            vs.get(v0 + kv_at..).unwrap_or_default(),
                            ms.get(m_at..).unwrap_or_default(),
                            &shape,
                            o,
                        )
                        .map_err(kernel_err)
                    })
                })
            })
        })
    })?;
    Tensor::from_vec(out, (b, kvh, queries, d), q.device())
}
