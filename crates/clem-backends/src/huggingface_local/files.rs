//! The files of a model folder: where `huggingface_id` points (a local folder, or the HF hub cache, downloading
//! what is missing through [`crate::hub`]), which safetensors files hold the weights (single or sharded by
//! `model.safetensors.index.json`), and the memory check before loading.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clem_core::hf::{read_json, HfError};
use serde_json::Value;

/// A problem with the model folder's files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(transparent)]
    Hf(#[from] HfError),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> FilesError {
    FilesError::Invalid { path: path.into(), message: message.into() }
}

/// Resolves `huggingface_id` to a folder: a local folder as given, else the hub snapshot holding config,
/// tokenizer and safetensors files (downloaded when missing and the hub is reachable).
pub fn model_dir(huggingface_id: &str, token: Option<clem_core::keys::Secret>) -> Result<PathBuf, FilesError> {
    Ok(crate::hub::model_dir(huggingface_id, &crate::hub::Want::HfFolder, token)?)
}

/// The safetensors files of a folder: `model.safetensors`, or the shards an index names.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, FilesError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(invalid(dir, "has neither model.safetensors nor model.safetensors.index.json"));
    }
    let json = read_json(&index)?;
    let map = json.get("weight_map").and_then(Value::as_object).ok_or_else(|| invalid(&index, "no weight_map"))?;
    let names: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
    let mut files = Vec::new();
    for name in names {
        let p = dir.join(name);
        if name.contains("..") || !p.is_file() {
            return Err(invalid(&index, format!("names shard {name:?}, which is missing")));
        }
        files.push(p);
    }
    if files.is_empty() {
        return Err(invalid(&index, "weight_map names no file"));
    }
    Ok(files)
}

/// The model would not fit in memory.
#[derive(Debug, thiserror::Error)]
#[error(
    "{model}: needs about {} MiB (weights {} MiB as {dtype} + KV cache {} MiB for {tokens} tokens x batch {batch} + \
     {} MiB working memory) but only {} MiB are available ({origin}); free memory, lower \
     model_config.context_size or the batch size, or pick a smaller model",
    mib(self.needed()), mib(*weights), mib(*kv_cache), mib(*overhead), mib(*available)
)]
pub struct MemoryError {
    pub model: String,
    pub weights: u64,
    pub dtype: &'static str,
    pub kv_cache: u64,
    pub tokens: u64,
    pub batch: u64,
    pub overhead: u64,
    pub available: u64,
    /// Where `available` was read ("MemAvailable in /proc/meminfo", "free memory of cuda:0").
    pub origin: String,
}

impl MemoryError {
    pub fn needed(&self) -> u64 {
        self.weights.saturating_add(self.kv_cache).saturating_add(self.overhead)
    }
}

use crate::memory::mib;

/// What loading and running needs, compared with what is available.
pub struct MemoryNeed<'a> {
    pub model: &'a str,
    pub weights: u64,
    pub dtype: &'static str,
    pub kv_bytes_per_token: u64,
    pub tokens: u64,
    pub batch: u64,
    /// Bytes of activations per token in flight (logits and intermediate tensors).
    pub work_per_token: u64,
}

/// Fails when weights + KV cache + working memory exceed `available` (when known; read from `origin`).
pub fn check_memory(need: &MemoryNeed, (available, origin): (Option<u64>, String)) -> Result<(), MemoryError> {
    let Some(available) = available else { return Ok(()) };
    let kv_cache = need.kv_bytes_per_token.saturating_mul(need.tokens).saturating_mul(need.batch);
    let overhead = (64u64 << 20).saturating_add(need.work_per_token.saturating_mul(need.batch));
    let err = MemoryError {
        model: need.model.into(),
        weights: need.weights,
        dtype: need.dtype,
        kv_cache,
        tokens: need.tokens,
        batch: need.batch,
        overhead,
        available,
        origin,
    };
    if err.needed() > available {
        Err(err)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_check_says_needed_available_and_what_to_change() {
        let need = MemoryNeed {
            model: "m",
            weights: 500 << 20,
            dtype: "f32",
            kv_bytes_per_token: 1 << 10,
            tokens: 8192,
            batch: 4,
            work_per_token: 0,
        };
        let ram = |n: Option<u64>| (n, "MemAvailable in /proc/meminfo".to_string());
        assert!(check_memory(&need, ram(None)).is_ok());
        assert!(check_memory(&need, ram(Some(4 << 30))).is_ok());
        let e = check_memory(&need, ram(Some(300 << 20))).expect_err("too small");
        let msg = e.to_string();
        assert!(msg.contains("weights 500 MiB") && msg.contains("KV cache 32 MiB"), "{msg}");
        assert!(msg.contains("only 300 MiB") && msg.contains("context_size"), "{msg}");
        assert!(msg.contains("(MemAvailable in /proc/meminfo)"), "{msg}");
        let e = check_memory(&need, (Some(300 << 20), "free memory of cuda:1".into())).expect_err("too small");
        assert!(e.to_string().contains("available (free memory of cuda:1)"), "{e}");
    }

    #[test]
    fn shards_named_by_the_index() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let header = br#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 24]);
        std::fs::write(tmp.path().join("s1.safetensors"), &bytes).expect("write");
        assert!(weight_files(tmp.path()).is_err());
        std::fs::write(
            tmp.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}"#,
        )
        .expect("write");
        let e = weight_files(tmp.path()).expect_err("s2 missing");
        assert!(e.to_string().contains("s2.safetensors"), "{e}");
        std::fs::write(tmp.path().join("s2.safetensors"), &bytes).expect("write");
        assert_eq!(weight_files(tmp.path()).expect("both").len(), 2);
    }
}
