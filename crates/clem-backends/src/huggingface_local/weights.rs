//! Safetensors weights read tensor by tensor into memory, as a [`VarBuilder`] backend. candle's mmap loader keeps
//! every page of the file mapped (and counted in the process's memory) while it copies each tensor out, so a load
//! peaked at file + copies (~1.1 GB for a 540 MB f32 model); reading one tensor at a time peaks at the copies plus
//! the largest tensor.
//!
//! Matrices (2-D and larger) stay in their stored dtype when it is f32, bf16 or f16: the linear layers multiply
//! them as stored ([`super::kernels`]), so bf16/f16 weights take half the memory and half the bytes read per token.
//! Everything else (norms, biases) is read as f32, the dtype activations are computed in.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Where one tensor is: file, dtype, shape, absolute byte range.
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// The tensors of a set of safetensors files, read on demand.
struct Weights {
    files: Vec<(PathBuf, Mutex<File>)>,
    entries: HashMap<String, Entry>,
}

fn dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

fn err(path: &Path, msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {msg}", path.display()))
}

impl Weights {
    fn open(paths: &[PathBuf]) -> Result<Weights> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let mut f = File::open(path).map_err(|e| err(path, e))?;
            let mut len = [0u8; 8];
            f.read_exact(&mut len).map_err(|e| err(path, e))?;
            let len = u64::from_le_bytes(len);
            let file_len = f.metadata().map_err(|e| err(path, e))?.len();
            if len > file_len.saturating_sub(8) {
                return Err(err(path, "safetensors header longer than the file"));
            }
            let mut header = vec![0u8; len as usize];
            f.read_exact(&mut header).map_err(|e| err(path, e))?;
            let header: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&header).map_err(|e| err(path, format!("safetensors header: {e}")))?;
            let data = 8 + len;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let bad = || err(path, format!("bad safetensors entry {name}"));
                let dt = info.get("dtype").and_then(|d| d.as_str()).ok_or_else(bad)?;
                let dt = dtype(dt).ok_or_else(|| err(path, format!("{name}: unsupported dtype {dt}")))?;
                let shape = info
                    .get("shape")
                    .and_then(|s| s.as_array())
                    .ok_or_else(bad)?
                    .iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad)?;
                let offsets = info.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(bad)?;
                let (start, end) = match offsets.as_slice() {
                    [s, e] => (s.as_u64().ok_or_else(bad)?, e.as_u64().ok_or_else(bad)?),
                    _ => return Err(bad()),
                };
                // Checked: a header is outside input, and its sizes may be anything.
                let bytes = shape
                    .iter()
                    .try_fold(dt.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64))
                    .ok_or_else(|| err(path, format!("{name}: shape {shape:?} too large")))?;
                if end < start || end - start != bytes || data.checked_add(end).is_none_or(|e| e > file_len) {
                    return Err(bad());
                }
                entries.insert(name, Entry { file: i, dtype: dt, shape, start: data + start, end: data + end });
            }
            files.push((path.clone(), Mutex::new(f)));
        }
        Ok(Weights { files, entries })
    }
}

/// What the safetensors files hold, from their headers alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// Elements in all tensors.
    pub params: u64,
    /// Bytes once loaded: matrices in [`Footprint::matrix_dtype`], the rest in f32.
    pub loaded_bytes: u64,
    /// The dtype matrices are kept in: the stored dtype of the largest one if it is bf16 or f16, else f32.
    pub matrix_dtype: DType,
}

/// The safetensors files of one model, headers read, tensors read on demand.
pub struct SafetensorsFiles(Weights);

impl SafetensorsFiles {
    pub fn open(files: &[PathBuf]) -> Result<SafetensorsFiles> {
        Weights::open(files).map(SafetensorsFiles)
    }

    pub fn footprint(&self) -> Footprint {
        let entries = self.0.entries.values();
        let largest = entries.clone().filter(|e| e.shape.len() >= 2).max_by_key(|e| e.end - e.start);
        let matrix_dtype = match largest.map(|e| e.dtype) {
            Some(d @ (DType::BF16 | DType::F16)) => d,
            _ => DType::F32,
        };
        let (mut params, mut loaded_bytes) = (0u64, 0u64);
        for e in entries {
            let n = e.shape.iter().product::<usize>() as u64;
            let size = if e.shape.len() >= 2 { matrix_dtype.size_in_bytes() } else { 4 };
            params += n;
            loaded_bytes += n * size as u64;
        }
        Footprint { params, loaded_bytes, matrix_dtype }
    }

    /// A [`VarBuilder`] giving tensors in [`Footprint::matrix_dtype`] (callers ask for f32 where they need it).
    pub fn var_builder(self, device: &Device) -> VarBuilder<'static> {
        let dtype = self.footprint().matrix_dtype;
        VarBuilder::from_backend(Box::new(self.0), dtype, device.clone())
    }
}

impl SimpleBackend for Weights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })?;
        if e.shape.as_slice() != s.dims() {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: e.shape.clone().into(),
            });
        }
        let (path, file) = &self.files[e.file];
        let mut buf = vec![0u8; (e.end - e.start) as usize];
        {
            let mut f = file.lock().map_err(|_| err(path, "file lock poisoned"))?;
            f.seek(SeekFrom::Start(e.start)).map_err(|ex| err(path, ex))?;
            f.read_exact(&mut buf).map_err(|ex| err(path, ex))?;
        }
        // A matrix stored in f32 next to half-precision ones stays f32 rather than lose bits.
        let dtype = if e.dtype == DType::F32 && matches!(dtype, DType::BF16 | DType::F16) { DType::F32 } else { dtype };
        Tensor::from_raw_buffer(&buf, e.dtype, &e.shape, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// A [`VarBuilder`] over the safetensors `files` (see [`SafetensorsFiles::var_builder`]).
pub fn var_builder(files: &[PathBuf], device: &Device) -> Result<VarBuilder<'static>> {
    Ok(SafetensorsFiles::open(files)?.var_builder(device))
}

/// `name` under `vb` as f32, whatever the builder's dtype: norms and biases.
pub fn get_f32(vb: &VarBuilder, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
    vb.get_with_hints_dtype(shape, name, candle_nn::Init::default(), DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_candle_writes_and_checks_shapes() -> Result<()> {
        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        let path = dir.path().join("model.safetensors");
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((2, 3))?.to_dtype(DType::BF16)?;
        let b = Tensor::new(&[7u32, 8], &Device::Cpu)?;
        candle_core::safetensors::save(&HashMap::from([("a.w".to_string(), a), ("b".to_string(), b)]), &path)?;
        let files = SafetensorsFiles::open(std::slice::from_ref(&path))?;
        let want = Footprint { params: 8, loaded_bytes: 6 * 2 + 2 * 4, matrix_dtype: DType::BF16 };
        assert_eq!(files.footprint(), want);
        let vb = files.var_builder(&Device::Cpu);
        // The matrix stays bf16; f32 on request.
        let a = vb.get((2, 3), "a.w")?;
        assert_eq!(a.dtype(), DType::BF16);
        assert_eq!(get_f32(&vb, (2, 3), "a.w")?.to_vec2::<f32>()?, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]);
        assert!(vb.contains_tensor("b") && !vb.contains_tensor("c"));
        assert!(vb.get((3, 2), "a.w").is_err());
        assert!(vb.get(2, "missing").is_err());
        Ok(())
    }
}
