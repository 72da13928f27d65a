//! candle's side of [`clem_kernels`]: a weight tensor packed in its stored dtype, multiplied as a candle op (f32
//! activations in, f32 out) and read back by rows for embedding lookups.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use clem_kernels::PackedMatrix;
use half::{bf16, f16};

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
