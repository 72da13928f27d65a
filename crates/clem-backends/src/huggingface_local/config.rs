//! What a model folder's `config.json` and `generation_config.json` say: the architecture and its sizes, the
//! RoPE base (both layouts: `rope_theta` and transformers 5's `rope_parameters`), the context size and the
//! generation defaults (EOS ids, `top_p`).

use std::path::Path;

use clem_core::hf::{read_json, HfError};
use serde_json::{json, Value};

use super::device::Compute;

/// The architectures this backend runs (transformers' `model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2.
    Llama,
    /// Mistral: llama's layout; every layer slides when `sliding_window` is set.
    Mistral,
    /// Qwen2 / Qwen2.5: llama's layout with q/k/v biases.
    Qwen2,
    /// Qwen3: llama's layout with RMSNorm on each query and key head.
    Qwen3,
    /// Gemma 2: (1 + weight) RMSNorm around both blocks, scaled embeddings, soft-capped logits.
    Gemma2,
    /// Gemma 3's language model (`gemma3_text`, or `gemma3` with a `text_config`): Gemma 2 plus q/k norms and a
    /// sliding/global layer pattern with its own RoPE base for local layers.
    Gemma3,
    /// Phi-3 / Phi-4-mini: fused qkv and gate/up projections, partial rotary, LongRoPE.
    Phi3,
}

impl Arch {
    const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, gemma2, gemma3, gemma3_text, phi3";

    fn from_model_type(t: &str) -> Option<Arch> {
        match t {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "gemma2" => Some(Arch::Gemma2),
            "gemma3" | "gemma3_text" => Some(Arch::Gemma3),
            "phi3" => Some(Arch::Phi3),
            _ => None,
        }
    }

    /// Gemma's conventions: (1 + weight) RMSNorm, scaled embeddings, norms after each block too.
    pub fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }
}

/// The MLP's activation (`hidden_act`; Gemma's `hidden_activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact (erf) form.
    Gelu,
}

/// Which keys a layer attends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerType {
    /// Every earlier token.
    Full,
    /// The last `sliding_window` tokens, itself included.
    Sliding,
}

/// How RoPE frequencies are scaled.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Frequencies divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Phi-3's LongRoPE: per-frequency divisors, `short_factor` while the sequence fits in `original_max` tokens and
    /// `long_factor` beyond; cos and sin are multiplied by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max: usize,
        attention_factor: f64,
    },
}

/// The RoPE of one kind of layer.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    /// Leading dimensions of each head that rotate (`partial_rotary_factor` x head_dim); the rest pass through.
    pub rotary_dim: usize,
    pub scaling: RopeScaling,
}

/// The transformer's sizes and behaviour, read from `config.json`.
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
    /// The RoPE base of full-attention layers (`rope_full.theta`).
    pub rope_theta: f64,
    pub rope_full: RopeSpec,
    /// The RoPE of sliding-window layers (Gemma 3's `rope_local_base_freq`; else the same as `rope_full`).
    pub rope_sliding: RopeSpec,
    /// Biases on q/k/v projections (qwen2; `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (`attention_bias`).
    pub o_bias: bool,
    pub tie_word_embeddings: bool,
    pub activation: Activation,
    /// One per layer.
    pub layer_types: Vec<LayerType>,
    /// The window of [`LayerType::Sliding`] layers (set whenever one exists).
    pub sliding_window: Option<usize>,
    /// RMSNorm on each query and key head before RoPE (qwen3, gemma3).
    pub qk_norm: bool,
    /// Multiplies q·k: 1/sqrt(head_dim), or Gemma's 1/sqrt(query_pre_attn_scalar).
    pub attn_scale: f64,
    /// Gemma 2's `attn_logit_softcapping`: scores become cap * tanh(scores / cap).
    pub attn_softcap: Option<f64>,
    /// Gemma 2's `final_logit_softcapping`, on the logits.
    pub final_softcap: Option<f64>,
    /// `max_position_embeddings`, `n_positions` or `text_config.max_position_embeddings`.
    pub context_size: Option<u64>,
    /// `eos_token_id` (a number or a list).
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `torch_dtype` / `dtype` as written.
    pub dtype: Option<String>,
    /// The dtype the KV cache is kept in: the weights' (f32, bf16 or f16), as transformers keeps it. f32 until the
    /// weights are opened ([`super::model`] sets it).
    pub kv_dtype: candle_core::DType,
    /// How the layers compute: [`Compute::Kernels`] on the CPU's best path until the loader places the model.
    pub compute: Compute,
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

/// transformers' class default of a key that a config.json may leave out (only keys this backend reads).
/// Gemma 3's sizes are here because multimodal Gemma 3 configs leave most of `text_config` to its defaults.
fn arch_default(arch: Arch, key: &str) -> Option<Value> {
    use Arch::*;
    let v = match (arch, key) {
        (Gemma2 | Gemma3, "hidden_activation") => json!("gelu_pytorch_tanh"),
        (_, "hidden_act") => json!("silu"),
        (Phi3, "rms_norm_eps") => json!(1e-5),
        (_, "rms_norm_eps") => json!(1e-6),
        (Mistral | Qwen2 | Qwen3 | Gemma2 | Gemma3, "sliding_window") => json!(4096),
        (Qwen2 | Qwen3, "max_window_layers") => json!(28),
        (Gemma2 | Gemma3, "query_pre_attn_scalar") => json!(256),
        (Gemma2, "final_logit_softcapping") => json!(30.0),
        (Gemma2, "attn_logit_softcapping") => json!(50.0),
        (Gemma3, "sliding_window_pattern") => json!(6),
        (Gemma3, "rope_theta") => json!(1_000_000.0),
        (Gemma3, "rope_local_base_freq") => json!(10_000.0),
        (_, "rope_theta") => json!(10_000.0),
        (Phi3, "original_max_position_embeddings") => json!(4096),
        (Gemma3, "vocab_size") => json!(262_208),
        (Gemma3, "hidden_size") => json!(2304),
        (Gemma3, "intermediate_size") => json!(9216),
        (Gemma3, "num_hidden_layers") => json!(26),
        (Gemma3, "num_attention_heads") => json!(8),
        (Gemma3, "num_key_value_heads") => json!(4),
        (Gemma3, "head_dim") => json!(256),
        (Gemma3, "max_position_embeddings") => json!(131_072),
        _ => return None,
    };
    Some(v)
}

/// The largest size (layers, heads, widths, vocabulary, window) a config.json may give: 2^24.
const MAX_SIZE: usize = 1 << 24;

/// The language model's keys (`text_config` for multimodal configs), with transformers' defaults behind them.
struct Keys<'a> {
    text: &'a Value,
    arch: Arch,
}

impl Keys<'_> {
    /// The key's value: written (an explicit null is None), else the architecture's default.
    fn get(&self, key: &str) -> Option<Value> {
        match self.text.get(key) {
            Some(Value::Null) => None,
            Some(v) => Some(v.clone()),
            None => arch_default(self.arch, key),
        }
    }

    /// A positive size, at most [`MAX_SIZE`]: larger ones belong to no model, and would only make the
    /// allocations sized by them fail.
    fn opt_usize(&self, key: &str) -> Result<Option<usize>, String> {
        self.get(key)
            .map(|v| match v.as_u64().filter(|&n| n > 0) {
                None => Err(format!("\"{key}\" must be a positive integer, not {v}")),
                Some(n) if n > MAX_SIZE as u64 => {
                    Err(format!("\"{key}\" is {n}, larger than any model's (at most {MAX_SIZE})"))
                }
                Some(n) => Ok(n as usize),
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize, String> {
        self.opt_usize(key)?.ok_or_else(|| format!("\"{key}\" must be a positive integer"))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, String> {
        self.get(key)
            .map(|v| {
                v.as_f64().filter(|x| *x > 0.0).ok_or_else(|| format!("\"{key}\" must be a positive number, not {v}"))
            })
            .transpose()
    }

    fn f64(&self, key: &str) -> Result<f64, String> {
        self.opt_f64(key)?.ok_or_else(|| format!("\"{key}\" must be a positive number"))
    }

    fn flag(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(format!("\"{key}\" must be true or false, not {v}")),
        }
    }
}

impl ModelConfig {
    /// Reads `config.json` in `dir`.
    pub fn load(dir: &Path) -> Result<ModelConfig, ConfigError> {
        let path = dir.join("config.json");
        let json = read_json(&path)?;
        Self::from_json(&json).map_err(|m| invalid(&path, m))
    }

    /// Reads a parsed config.json; the error says which key is wrong or not supported.
    pub fn from_json(json: &Value) -> Result<ModelConfig, String> {
        // Multimodal configs nest the language model's keys in text_config.
        let text = json.get("text_config").filter(|v| v.is_object()).unwrap_or(json);
        let model_type = text.get("model_type").or_else(|| json.get("model_type")).and_then(Value::as_str);
        let model_type = model_type.ok_or("no \"model_type\"")?;
        let arch = Arch::from_model_type(model_type).ok_or_else(|| {
            format!("model_type {model_type:?} is not supported by this build (supported: {})", Arch::SUPPORTED)
        })?;
        let k = Keys { text, arch };
        let hidden_size = k.usize("hidden_size")?;
        let num_heads = k.usize("num_attention_heads")?;
        let num_kv_heads = k.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = k.opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads);
        let num_layers = k.usize("num_hidden_layers")?;
        if num_heads % num_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            ));
        }
        if head_dim == 0 {
            return Err(format!("head_dim is 0 (hidden_size {hidden_size} / num_attention_heads {num_heads})"));
        }
        let context_size = ["max_position_embeddings", "n_positions"]
            .iter()
            .find_map(|key| json.get(*key).and_then(Value::as_u64))
            .or_else(|| k.get("max_position_embeddings").and_then(|v| v.as_u64()));
        let (rope_full, rope_sliding) = rope(&k, json, head_dim, context_size)?;
        let (layer_types, sliding_window) = layer_types(&k, num_layers)?;
        let attention_bias = k.flag("attention_bias")?;
        if k.flag("mlp_bias")? {
            return Err("\"mlp_bias\": true is not supported".into());
        }
        if arch.is_gemma() && k.flag("use_bidirectional_attention")? {
            return Err("\"use_bidirectional_attention\": true is not supported (causal attention only)".into());
        }
        let act_key = if arch.is_gemma() { "hidden_activation" } else { "hidden_act" };
        let activation = match k.get(act_key).as_ref().and_then(Value::as_str) {
            Some("silu" | "swish") => Activation::Silu,
            Some("gelu_pytorch_tanh" | "gelu_new") => Activation::GeluTanh,
            Some("gelu") => Activation::Gelu,
            other => {
                return Err(format!(
                "\"{act_key}\" {other:?} is not supported (supported: silu, swish, gelu, gelu_pytorch_tanh, gelu_new)"
            ))
            }
        };
        let (attn_scale, attn_softcap, final_softcap) = if arch.is_gemma() {
            let scalar = k.f64("query_pre_attn_scalar")?;
            (1.0 / scalar.sqrt(), k.opt_f64("attn_logit_softcapping")?, k.opt_f64("final_logit_softcapping")?)
        } else {
            (1.0 / (head_dim as f64).sqrt(), None, None)
        };
        let tie_default = arch.is_gemma();
        let tie_word_embeddings = match json.get("tie_word_embeddings").or_else(|| text.get("tie_word_embeddings")) {
            None | Some(Value::Null) => tie_default,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(format!("\"tie_word_embeddings\" must be true or false, not {v}")),
        };
        Ok(ModelConfig {
            arch,
            hidden_size,
            intermediate_size: k.usize("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: k.usize("vocab_size")?,
            rms_norm_eps: k.f64("rms_norm_eps")?,
            rope_theta: rope_full.theta,
            rope_full,
            rope_sliding,
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: attention_bias,
            tie_word_embeddings,
            activation,
            layer_types,
            sliding_window,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            attn_scale,
            attn_softcap,
            final_softcap,
            context_size,
            eos_token_ids: token_ids(text.get("eos_token_id").or_else(|| json.get("eos_token_id"))),
            pad_token_id: token_ids(text.get("pad_token_id").or_else(|| json.get("pad_token_id"))).first().copied(),
            dtype: ["dtype", "torch_dtype"]
                .iter()
                .find_map(|key| text.get(*key).or_else(|| json.get(*key)).and_then(Value::as_str))
                .map(String::from),
            kv_dtype: candle_core::DType::F32,
            compute: Compute::Kernels(clem_kernels::dispatch::choose(clem_kernels::Features::detect())),
        })
    }

    /// Bytes of KV cache one token takes, in [`ModelConfig::kv_dtype`].
    pub fn kv_bytes_per_token(&self) -> u64 {
        // Saturating: sizes come from config.json, and a saturated need fails the memory check, as it should.
        [self.num_layers, self.num_kv_heads, self.head_dim, self.kv_dtype.size_in_bytes()]
            .iter()
            .fold(2u64, |n, &d| n.saturating_mul(d as u64))
    }

    /// The sequence length at which the KV cache must be computed anew: LongRoPE switches every position to its
    /// long factors once the sequence exceeds `original_max`, and transformers' Phi-3 then recomputes the cache.
    pub fn cache_rebuild_len(&self) -> Option<usize> {
        match &self.rope_full.scaling {
            RopeScaling::LongRope { original_max, .. } => Some(original_max + 1),
            _ => None,
        }
    }

    /// The RoPE of a layer of this type.
    pub fn rope_for(&self, t: LayerType) -> &RopeSpec {
        match t {
            LayerType::Full => &self.rope_full,
            LayerType::Sliding => &self.rope_sliding,
        }
    }
}

/// Each layer's type and the sliding window, as transformers derives them per architecture: `layer_types` where the
/// architecture reads it, else Mistral and Phi-3 slide everywhere when `sliding_window` is set, Qwen from
/// `max_window_layers` on when `use_sliding_window`, Gemma 2 on every other layer, Gemma 3 by
/// `sliding_window_pattern` (every n-th layer global).
fn layer_types(k: &Keys, num_layers: usize) -> Result<(Vec<LayerType>, Option<usize>), String> {
    use Arch::*;
    let window = match k.arch {
        Llama => None,
        Qwen2 | Qwen3 if !k.flag("use_sliding_window")? => None,
        _ => k.opt_usize("sliding_window")?,
    };
    let explicit = match k.arch {
        Qwen2 | Qwen3 | Gemma2 | Gemma3 => k.text.get("layer_types").filter(|v| !v.is_null()),
        Llama | Mistral | Phi3 => None,
    };
    let types: Vec<LayerType> = if let Some(v) = explicit {
        let items = v.as_array().ok_or("\"layer_types\" must be a list")?;
        if items.len() != num_layers {
            return Err(format!("\"layer_types\" has {} entries for {num_layers} layers", items.len()));
        }
        items
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(LayerType::Full),
                Some("sliding_attention") => Ok(LayerType::Sliding),
                _ => Err(format!(
                    "\"layer_types\" entry {t} is not supported (supported: full_attention, sliding_attention)"
                )),
            })
            .collect::<Result<_, _>>()?
    } else {
        let sliding = |i: usize| -> Result<bool, String> {
            Ok(match k.arch {
                Llama => false,
                Mistral | Phi3 => window.is_some(),
                Qwen2 | Qwen3 => window.is_some() && i >= max_window_layers(k)?,
                Gemma2 => !(i + 1).is_multiple_of(2),
                Gemma3 => !(i + 1).is_multiple_of(k.usize("sliding_window_pattern")?),
            })
        };
        (0..num_layers)
            .map(|i| Ok(if sliding(i)? { LayerType::Sliding } else { LayerType::Full }))
            .collect::<Result<_, String>>()?
    };
    if types.contains(&LayerType::Sliding) && window.is_none() {
        return Err(
            "there are sliding_attention layers but no \"sliding_window\" (or use_sliding_window is false)".into()
        );
    }
    Ok((types, window))
}

/// Qwen's `max_window_layers`: the layers below it attend fully (0 is valid: all slide).
fn max_window_layers(k: &Keys) -> Result<usize, String> {
    match k.get("max_window_layers") {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("\"max_window_layers\" must be a non-negative integer, not {v}")),
    }
}

/// The RoPE of full-attention and of sliding layers. Layouts: transformers 4's `rope_theta` + `rope_scaling` (and
/// Gemma 3's `rope_local_base_freq`, its scaling on global layers only), transformers 5's `rope_parameters` (flat,
/// or keyed by layer type as Gemma 3 writes it). Types: default, linear, and Phi-3's longrope ("su"); any other is
/// refused, since computing a scaled RoPE as plain RoPE would be silently wrong.
fn rope(k: &Keys, json: &Value, head_dim: usize, context: Option<u64>) -> Result<(RopeSpec, RopeSpec), String> {
    let params = k.text.get("rope_parameters").filter(|v| !v.is_null());
    if params.is_some_and(|p| !p.is_object()) {
        return Err("\"rope_parameters\" must be an object".into());
    }
    let scaling = k.text.get("rope_scaling").filter(|v| !v.is_null());
    if scaling.is_some_and(|p| !p.is_object()) {
        return Err("\"rope_scaling\" must be an object".into());
    }
    let nested = params.filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some());
    let global_theta = k.f64("rope_theta")?;
    let local_theta = if k.arch == Arch::Gemma3 { k.f64("rope_local_base_freq")? } else { global_theta };
    if let Some(p) = nested {
        let full = p.get("full_attention").filter(|v| !v.is_null());
        let local = p.get("sliding_attention").filter(|v| !v.is_null());
        let full = rope_spec(k, json, full, "rope_parameters.full_attention", global_theta, head_dim, context)?;
        let local = rope_spec(k, json, local, "rope_parameters.sliding_attention", local_theta, head_dim, context)?;
        return Ok((full, local));
    }
    if k.arch == Arch::Gemma3 {
        if params.is_some() {
            return Err(
                "gemma3: \"rope_parameters\" must be keyed by layer type (full_attention, sliding_attention)".into()
            );
        }
        let full = rope_spec(k, json, scaling, "rope_scaling", global_theta, head_dim, context)?;
        let local = rope_spec(k, json, None, "rope_local_base_freq", local_theta, head_dim, context)?;
        return Ok((full, local));
    }
    // transformers 5 lets rope_scaling replace rope_parameters when both are written.
    let (p, key) = match scaling {
        Some(s) => (Some(s), "rope_scaling"),
        None => (params, "rope_parameters"),
    };
    let spec = rope_spec(k, json, p, key, global_theta, head_dim, context)?;
    Ok((spec.clone(), spec))
}

/// One RoPE from a flat parameter object `p` (written as `key`).
fn rope_spec(
    k: &Keys,
    json: &Value,
    p: Option<&Value>,
    key: &str,
    default_theta: f64,
    head_dim: usize,
    context: Option<u64>,
) -> Result<RopeSpec, String> {
    if p.is_some_and(|p| !p.is_object()) {
        return Err(format!("\"{key}\" must be an object"));
    }
    let field = |name: &str| p.and_then(|p| p.get(name)).filter(|v| !v.is_null());
    let positive = |name: &str| -> Result<Option<f64>, String> {
        field(name)
            .map(|v| v.as_f64().filter(|x| *x > 0.0).ok_or_else(|| format!("{key}.{name} must be a positive number")))
            .transpose()
    };
    let theta = positive("rope_theta")?.unwrap_or(default_theta);
    let factor = match positive("partial_rotary_factor")? {
        Some(f) => f,
        None => k.opt_f64("partial_rotary_factor")?.unwrap_or(1.0),
    };
    if factor > 1.0 {
        return Err(format!("partial_rotary_factor {factor} must be at most 1"));
    }
    // Python's int(): truncation.
    let rotary_dim = (head_dim as f64 * factor) as usize;
    if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
        return Err(format!(
            "the rotary dimension {rotary_dim} (head_dim {head_dim} x partial_rotary_factor {factor}) must be even and \
             positive"
        ));
    }
    let kind = field("rope_type").or_else(|| field("type")).and_then(Value::as_str).unwrap_or("default");
    let kind = match (k.arch, kind) {
        // transformers renames Phi-3's old names.
        (Arch::Phi3, "su" | "yarn") => "longrope",
        (_, kind) => kind,
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: positive("factor")?.ok_or_else(|| format!("{key}: rope type \"linear\" needs \"factor\""))?,
        },
        "longrope" if k.arch == Arch::Phi3 => {
            let list = |name: &str| -> Result<Vec<f64>, String> {
                let v = field(name).and_then(Value::as_array).ok_or_else(|| format!("{key}.{name} must be a list"))?;
                let v: Vec<f64> = v.iter().filter_map(Value::as_f64).filter(|x| *x > 0.0).collect();
                if v.len() != rotary_dim / 2 {
                    return Err(format!("{key}.{name} must be {} positive numbers", rotary_dim / 2));
                }
                Ok(v)
            };
            // Phi-3 writes the pretraining length next to the RoPE parameters, and transformers prefers it there.
            let top =
                json.get("original_max_position_embeddings").or_else(|| k.text.get("original_max_position_embeddings"));
            let original_max = match top.filter(|v| !v.is_null()).or_else(|| field("original_max_position_embeddings"))
            {
                Some(v) => {
                    v.as_u64().filter(|n| *n > 1).ok_or("original_max_position_embeddings must be an integer > 1")?
                }
                None => k
                    .opt_usize("original_max_position_embeddings")?
                    .map(|n| n as u64)
                    .or(context)
                    .ok_or("longrope needs original_max_position_embeddings or max_position_embeddings")?,
            };
            let factor = match positive("factor")? {
                Some(f) => f,
                None => context.ok_or("longrope needs max_position_embeddings")? as f64 / original_max as f64,
            };
            let attention_factor = match positive("attention_factor")? {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original_max as f64).ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                original_max: usize::try_from(original_max)
                    .map_err(|_| "original_max_position_embeddings is too large")?,
                attention_factor,
            }
        }
        other => {
            return Err(format!(
                "{key}: rope type {other:?} is not supported for {:?} (supported: default, linear{})",
                k.arch,
                if k.arch == Arch::Phi3 { ", longrope" } else { "" }
            ))
        }
    };
    Ok(RopeSpec { theta, rotary_dim, scaling })
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
    fn err(c: &Value) -> String {
        ModelConfig::from_json(c).expect_err("refused")
    }

    #[test]
    fn sparse_multimodal_gemma3_config_uses_transformers_defaults() {
        // As google/gemma-3-4b-it writes it: most of text_config is left to Gemma3TextConfig's defaults.
        let c = json!({"model_type": "gemma3", "eos_token_id": [1, 106], "text_config": {
            "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}});
        let c = ModelConfig::from_json(&c).expect("valid");
        assert_eq!((c.arch, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size), (Arch::Gemma3, 8, 4, 256, 262_208));
        assert_eq!((c.context_size, c.sliding_window, c.tie_word_embeddings), (Some(131_072), Some(1024), true));
        assert_eq!(c.eos_token_ids, vec![1, 106]);
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.attn_scale, 1.0 / 16.0);
        assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
        // Every 6th layer is global; local layers rotate with base 10k unscaled, global ones 1M scaled by 8.
        assert_eq!(c.layer_types.iter().filter(|t| **t == LayerType::Full).count(), 5);
        assert_eq!((c.layer_types[4], c.layer_types[5]), (LayerType::Sliding, LayerType::Full));
        assert_eq!(c.rope_full, RopeSpec { theta: 1e6, rotary_dim: 256, scaling: RopeScaling::Linear { factor: 8.0 } });
        assert_eq!(c.rope_sliding, RopeSpec { theta: 1e4, rotary_dim: 256, scaling: RopeScaling::None });
    }

    #[test]
    fn layer_types_per_architecture() {
        let mut g2 = base();
        g2["model_type"] = json!("gemma2");
        g2["num_hidden_layers"] = json!(4);
        let c = ModelConfig::from_json(&g2).expect("valid");
        use LayerType::{Full, Sliding};
        assert_eq!(c.layer_types, vec![Sliding, Full, Sliding, Full]);
        assert_eq!((c.sliding_window, c.attn_softcap, c.final_softcap), (Some(4096), Some(50.0), Some(30.0)));
        // Qwen slides only with use_sliding_window, from max_window_layers on.
        let mut q = base();
        q["model_type"] = json!("qwen3");
        q["num_hidden_layers"] = json!(3);
        q["sliding_window"] = json!(64);
        q["max_window_layers"] = json!(1);
        assert_eq!(ModelConfig::from_json(&q).expect("valid").layer_types, vec![Full; 3]);
        q["use_sliding_window"] = json!(true);
        assert_eq!(ModelConfig::from_json(&q).expect("valid").layer_types, vec![Full, Sliding, Sliding]);
        // Mistral slides everywhere unless sliding_window is null; llama never.
        let mut m = base();
        m["model_type"] = json!("mistral");
        m["sliding_window"] = json!(null);
        assert_eq!(ModelConfig::from_json(&m).expect("valid").layer_types, vec![Full; 2]);
        m["sliding_window"] = json!(16);
        assert_eq!(ModelConfig::from_json(&m).expect("valid").layer_types, vec![Sliding; 2]);
        assert_eq!(ModelConfig::from_json(&base()).expect("valid").layer_types, vec![Full; 2]);
        let mut bad = q.clone();
        bad["layer_types"] = json!(["full_attention"]);
        assert!(err(&bad).contains("layer_types"));
        bad["layer_types"] = json!(["sliding_attention", "full_attention", "full_attention"]);
        bad["use_sliding_window"] = json!(false);
        assert!(err(&bad).contains("sliding_window"));
    }

    #[test]
    fn phi3_longrope_and_partial_rotary() {
        let mut p = base();
        p["model_type"] = json!("phi3");
        p["max_position_embeddings"] = json!(131_072);
        p["original_max_position_embeddings"] = json!(4096);
        p["partial_rotary_factor"] = json!(0.75);
        // head_dim 16 x 0.75 = 12 rotating dims: 6 factors.
        p["rope_scaling"] = json!({"type": "su", "short_factor": vec![1.0; 6], "long_factor": vec![2.0; 6]});
        let c = ModelConfig::from_json(&p).expect("valid");
        let RopeScaling::LongRope { original_max, attention_factor, .. } = &c.rope_full.scaling else {
            panic!("not longrope: {:?}", c.rope_full)
        };
        let expected = (1.0 + 32f64.ln() / 4096f64.ln()).sqrt();
        assert_eq!((*original_max, c.rope_full.rotary_dim, c.rms_norm_eps), (4096, 12, 1e-5));
        assert!((attention_factor - expected).abs() < 1e-12);
        assert_eq!(c.cache_rebuild_len(), Some(4097));
        p["rope_scaling"]["long_factor"] = json!(vec![2.0; 5]);
        assert!(err(&p).contains("long_factor"));
        p["partial_rotary_factor"] = json!(0.7);
        assert!(err(&p).contains("partial_rotary_factor"));
        // LongRoPE elsewhere is refused: transformers' cache recomputation at the switch is Phi-3's alone.
        let mut l = base();
        l["rope_scaling"] = json!({"rope_type": "longrope", "short_factor": vec![1.0; 8], "long_factor": vec![1.0; 8]});
        assert!(err(&l).contains("longrope"));
    }

    #[test]
    fn unsupported_keys_are_named() {
        for (key, value, needle) in [
            ("rope_scaling", json!({"rope_type": "llama3", "factor": 8.0}), "llama3"),
            ("rope_scaling", json!({"rope_type": "dynamic", "factor": 2.0}), "dynamic"),
            ("mlp_bias", json!(true), "mlp_bias"),
            ("hidden_act", json!("relu"), "hidden_act"),
            ("rope_theta", json!(-1), "rope_theta"),
            // Sizes no model has would size allocations (layer lists, tables) that fail.
            ("num_hidden_layers", json!(1u64 << 40), "num_hidden_layers\" is 1099511627776, larger than any"),
            ("vocab_size", json!(u64::MAX), "vocab_size"),
        ] {
            let mut c = base();
            c[key] = value;
            assert!(err(&c).contains(needle), "{key}: {}", err(&c));
        }
        let mut g = base();
        g["model_type"] = json!("gemma3_text");
        g["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e6});
        assert!(err(&g).contains("rope_parameters"));
        g["rope_parameters"] = json!({"full_attention": {"rope_type": "yarn", "factor": 4.0}});
        assert!(err(&g).contains("rope_parameters.full_attention"));
        g.as_object_mut().expect("object").remove("rope_parameters");
        g["use_bidirectional_attention"] = json!(true);
        assert!(err(&g).contains("use_bidirectional_attention"));
    }
}
