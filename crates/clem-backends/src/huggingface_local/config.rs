//! What a model folder's `config.json` and `generation_config.json` say: the architecture and its sizes, the
//! RoPE base (both layouts: `rope_theta` and transformers 5's `rope_parameters`), the context size and the
//! generation defaults (EOS ids, `top_p`).

use std::path::Path;

use clem_core::hf::{read_json, HfError};
use serde_json::Value;

/// The architectures this backend runs (transformers' `model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2.
    Llama,
    /// Mistral: llama's layout (sliding window ignored: the context check keeps prompts within it or not).
    Mistral,
    /// Qwen2 / Qwen2.5: llama's layout with q/k/v biases.
    Qwen2,
}

impl Arch {
    fn from_model_type(t: &str) -> Option<Arch> {
        match t {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }
}

/// The transformer's sizes, read from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Biases on q/k/v projections (qwen2; llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (llama's `attention_bias`).
    pub o_bias: bool,
    pub tie_word_embeddings: bool,
    /// `max_position_embeddings`, `n_positions` or `text_config.max_position_embeddings`.
    pub context_size: Option<u64>,
    /// `eos_token_id` (a number or a list).
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `torch_dtype` / `dtype` as written.
    pub dtype: Option<String>,
}

/// A config.json that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Read(#[from] HfError),
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { file: path.display().to_string(), message: message.into() }
}

/// Token ids given as a number or a list of numbers.
pub fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect(),
        Some(Value::Array(items)) => {
            items.iter().filter_map(|i| i.as_u64().and_then(|n| u32::try_from(n).ok())).collect()
        }
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads `config.json` in `dir`.
    pub fn load(dir: &Path) -> Result<ModelConfig, ConfigError> {
        let path = dir.join("config.json");
        let json = read_json(&path)?;
        Self::from_json(&json).map_err(|m| invalid(&path, m))
    }

    /// Reads a parsed config.json; the error says which key is wrong.
    pub fn from_json(json: &Value) -> Result<ModelConfig, String> {
        // Multimodal configs nest the language model's keys in text_config.
        let text = json.get("text_config").filter(|v| v.is_object()).unwrap_or(json);
        let model_type = text.get("model_type").or_else(|| json.get("model_type")).and_then(Value::as_str);
        let model_type = model_type.ok_or("no \"model_type\"")?;
        let arch = Arch::from_model_type(model_type).ok_or_else(|| {
            format!("model_type {model_type:?} is not supported by this build (supported: llama, mistral, qwen2)")
        })?;
        let usize_key = |key: &str| -> Result<usize, String> {
            text.get(key)
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("\"{key}\" must be a positive integer"))
        };
        let hidden_size = usize_key("hidden_size")?;
        let num_heads = usize_key("num_attention_heads")?;
        let num_kv_heads = if text.get("num_key_value_heads").is_some_and(|v| !v.is_null()) {
            usize_key("num_key_value_heads")?
        } else {
            num_heads
        };
        let head_dim = if text.get("head_dim").is_some_and(|v| !v.is_null()) {
            usize_key("head_dim")?
        } else {
            hidden_size / num_heads
        };
        if num_heads % num_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            ));
        }
        if head_dim % 2 != 0 {
            return Err(format!("head_dim {head_dim} must be even for RoPE"));
        }
        let rope_theta = rope_theta(text)?;
        let attention_bias = text.get("attention_bias").and_then(Value::as_bool).unwrap_or(false);
        let context_size = ["max_position_embeddings", "n_positions"]
            .iter()
            .find_map(|k| json.get(*k).and_then(Value::as_u64))
            .or_else(|| text.get("max_position_embeddings").and_then(Value::as_u64));
        Ok(ModelConfig {
            arch,
            hidden_size,
            intermediate_size: usize_key("intermediate_size")?,
            num_layers: usize_key("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: usize_key("vocab_size")?,
            rms_norm_eps: text.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: attention_bias,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .or_else(|| text.get("tie_word_embeddings"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            context_size,
            eos_token_ids: token_ids(text.get("eos_token_id").or_else(|| json.get("eos_token_id"))),
            pad_token_id: token_ids(text.get("pad_token_id").or_else(|| json.get("pad_token_id"))).first().copied(),
            dtype: ["dtype", "torch_dtype"]
                .iter()
                .find_map(|k| text.get(*k).or_else(|| json.get(*k)).and_then(Value::as_str))
                .map(String::from),
        })
    }

    /// Bytes of KV cache one token takes, at `elem_bytes` per element.
    pub fn kv_bytes_per_token(&self, elem_bytes: u64) -> u64 {
        2 * self.num_layers as u64 * self.num_kv_heads as u64 * self.head_dim as u64 * elem_bytes
    }
}

/// The RoPE base: `rope_theta` (transformers 4), or `rope_parameters.rope_theta` (transformers 5); only the
/// default RoPE type is supported (a scaled RoPE computed as plain RoPE would be a silent quality bug).
fn rope_theta(text: &Value) -> Result<f64, String> {
    let params = text.get("rope_parameters").filter(|v| v.is_object());
    let scaling = text.get("rope_scaling").filter(|v| v.is_object());
    for p in [params, scaling].into_iter().flatten() {
        let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
        if kind != "default" {
            return Err(format!("rope type {kind:?} is not supported (only \"default\")"));
        }
    }
    let theta = params.and_then(|p| p.get("rope_theta")).or_else(|| text.get("rope_theta"));
    match theta {
        None | Some(Value::Null) => Ok(10_000.0),
        Some(v) => {
            v.as_f64().filter(|t| *t > 0.0).ok_or_else(|| format!("rope_theta must be a positive number, not {v}"))
        }
    }
}

/// `generation_config.json`: EOS ids and `top_p` (absent file: nothing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub top_p: Option<f64>,
}

impl GenerationConfig {
    pub fn load(dir: &Path) -> Result<GenerationConfig, ConfigError> {
        let path = dir.join("generation_config.json");
        if !path.is_file() {
            return Ok(GenerationConfig::default());
        }
        let json = read_json(&path)?;
        Ok(GenerationConfig {
            eos_token_ids: token_ids(json.get("eos_token_id")),
            pad_token_id: token_ids(json.get("pad_token_id")).first().copied(),
            top_p: json.get("top_p").and_then(Value::as_f64),
        })
    }
}

/// The registry's `context_size` (a number or a string such as `"8k"` or `"128K"`).
pub fn registry_context_size(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            match s.strip_suffix('k') {
                Some(n) => n.trim().parse::<f64>().ok().map(|k| (k * 1024.0) as u64),
                None => s.parse().ok(),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "rms_norm_eps": 1e-5,
               "max_position_embeddings": 512, "eos_token_id": [2, 7]})
    }

    #[test]
    fn rope_base_from_both_layouts() {
        let mut c = base();
        assert_eq!(ModelConfig::from_json(&c).expect("valid").rope_theta, 10_000.0);
        c["rope_theta"] = json!(100_000.0);
        assert_eq!(ModelConfig::from_json(&c).expect("valid").rope_theta, 100_000.0);
        let mut c5 = base();
        c5["rope_parameters"] = json!({"rope_theta": 500_000.0, "rope_type": "default"});
        assert_eq!(ModelConfig::from_json(&c5).expect("valid").rope_theta, 500_000.0);
        c5["rope_parameters"] = json!({"rope_theta": 500_000.0, "rope_type": "yarn"});
        assert!(ModelConfig::from_json(&c5).expect_err("yarn").contains("yarn"));
    }

    #[test]
    fn sizes_ids_and_context() {
        let c = ModelConfig::from_json(&base()).expect("valid");
        assert_eq!((c.head_dim, c.num_kv_heads, c.context_size), (16, 2, Some(512)));
        assert_eq!(c.eos_token_ids, vec![2, 7]);
        let mut t = json!({"model_type": "qwen2", "text_config": base()});
        t["text_config"]["model_type"] = json!("qwen2");
        t["text_config"].as_object_mut().expect("object").remove("max_position_embeddings");
        t["text_config"]["max_position_embeddings"] = json!(4096);
        let c = ModelConfig::from_json(&t).expect("valid");
        assert_eq!((c.arch, c.qkv_bias, c.context_size), (Arch::Qwen2, true, Some(4096)));
        let mut bad = base();
        bad["model_type"] = json!("gpt_neox");
        assert!(ModelConfig::from_json(&bad).expect_err("unsupported").contains("gpt_neox"));
        assert_eq!(registry_context_size(Some(&json!("8k"))), Some(8192));
        assert_eq!(registry_context_size(Some(&json!(4096))), Some(4096));
    }
}
