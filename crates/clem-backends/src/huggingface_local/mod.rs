//! The `huggingface_local` backend: Hugging Face model folders (`config.json`, safetensors, `tokenizer.json`,
//! chat template) run in-process on candle (CPU; CUDA with the `cuda` feature), behind the `huggingface_local` cargo
//! feature.
//!
//! Laid out as candle-transformers does, one concern per file:
//! - [`config`]: `config.json` / `generation_config.json` (architecture, RoPE base in both layouts, EOS ids);
//! - [`files`]: where the folder is, which weight files, and the memory check before loading;
//! - [`device`]: where the model runs (`model_config.device`; CUDA with the `cuda` feature) and how layers
//!   compute there;
//! - [`tokenizer`]: `tokenizer.json` encoding and decoding as transformers does here;
//! - [`weights`]: safetensors read tensor by tensor (low peak memory) as a `VarBuilder`;
//! - [`layers`]: what the architectures share: RMSNorm, RoPE (partial, linear, LongRoPE), step masks (causal,
//!   padding, sliding window), the KV cache, grouped-query attention, the gated MLP;
//! - one file per architecture, as candle-transformers: [`llama`] (the pre-norm decoder; also Mistral and Qwen2),
//!   [`qwen3`] and [`phi3`] (their weights in the llama decoder), [`gemma2`] (the Gemma decoder) and [`gemma3`];
//! - [`causal_lm`]: [`causal_lm::CausalLm`], the architecture chosen at load time, which is all generation sees;
//! - [`slots`]: [`slots::HfEngine`], the model as `clem_core::schedule`'s `StepEngine`: a KV cache per sequence
//!   slot (reused), prefill chunks and decoding steps as ragged forward passes (no padding; attention per slot),
//!   so a sequence's output does not depend on which others share its steps;
//! - [`generate`]: sampling, the model's thread pool, and transformers' left-padded batch (the reference the
//!   goldens check);
//! - [`model`]: the [`Model`] implementation: templates, context check, generation through the model's step
//!   scheduler (calls join one running batch; streaming), cleaning, recorded objects.
//!
//! - [`kernels`]: [`clem_kernels`] as candle ops: weights packed in their stored dtype, decoding attention, the
//!   gated activation, each on the kernel path chosen for the CPU (AVX-512 BF16, AVX-512, AVX2 or portable;
//!   `CLEM_KERNELS` forces one), whose prefetch distance and block size the loader calibrates once per CPU model.
//!
//! Compute dtype: weight matrices stay as stored (f32, bf16 or f16: half the memory and half the bytes read per
//! token for bf16/f16) and are multiplied with f32 activations, summed in f32 ([`clem_kernels`]; on the AVX-512
//! BF16 path bf16 weights meet activations rounded to bf16, as oneDNN does for transformers there); everything else
//! (norms, attention, softmax, RoPE) is f32, and the KV cache is kept in the weights' dtype as transformers keeps
//! it. That is more precise than transformers' bf16 compute, and a batched row gets bit-identical linear-layer
//! results to the same row run alone. On a GPU ([`device`]) matrices are multiplied in the weights' dtype by
//! candle's ops, as transformers does there.

pub mod causal_lm;
pub mod config;
pub mod device;
pub mod files;
pub mod gemma2;
pub mod gemma3;
pub mod generate;
pub mod kernels;
pub mod layers;
pub mod llama;
pub mod model;
pub mod phi3;
pub mod qwen3;
pub mod slots;
pub mod tokenizer;
pub mod weights;

use clem_core::{Model, ModelError, ModelSpec};
use serde_json::Value;

use crate::{Backend, LoadContext};

/// The kernels crate, for what reports on it (`clem list backends -v`: the path in use, the CPU's features).
pub use clem_kernels;
pub use model::HfLocalModel;

pub const BACKEND: Backend = Backend {
    schema: crate::planned::HUGGINGFACE_LOCAL_SCHEMA,
    key_section: Some("huggingface"),
    loader: Some(load),
    unavailable: "",
};

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    Ok(Box::new(HfLocalModel::load(spec, ctx)?))
}

/// An entry's huggingface_local settings, read and checked before anything is loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub huggingface_id: String,
    pub premade_chat_template: bool,
    pub custom_chat_template: Option<String>,
    /// `padding_side`: left unless the entry says right.
    pub left_padding: bool,
    /// `cot_effort` / `chat_template_kwargs`.
    pub template_kwargs: serde_json::Map<String, Value>,
    /// `cot_bypass`: text appended to the rendered prompt, after the generation prompt, so that a reasoning model
    /// starts in its answer (gpt-oss: an empty analysis channel, then the final channel).
    pub cot_bypass: Option<String>,
    /// `model_config.threads`; the `--threads` flag wins over it.
    pub threads: Option<usize>,
    /// `model_config.device` (auto unless given).
    pub device: device::DeviceSetting,
    /// The registry's `context_size`, used when config.json has none.
    pub registry_context_size: Option<u64>,
}

impl Settings {
    pub fn from_spec(spec: &ModelSpec) -> Result<Settings, String> {
        let huggingface_id = spec
            .get_str("huggingface_id")
            .filter(|s| !s.is_empty())
            .ok_or("the entry needs \"huggingface_id\" (a Hugging Face id or a local folder)")?
            .to_string();
        let premade_chat_template = spec.config_flag("premade_chat_template");
        let custom_chat_template = spec.config_str("custom_chat_template").map(String::from);
        if !premade_chat_template && custom_chat_template.as_deref().is_none_or(str::is_empty) {
            return Err("model_config.premade_chat_template is false and there is no custom_chat_template: \
                        set one of them"
                .into());
        }
        let left_padding = match spec.config_str("padding_side").map(str::to_ascii_lowercase).as_deref() {
            None | Some("left") => true,
            Some("right") => false,
            Some(other) => {
                return Err(format!("model_config.padding_side must be \"left\" or \"right\", not {other:?}"))
            }
        };
        if spec.config_flag("load_in_8bit") || spec.config_flag("load_in_4bit") {
            return Err("model_config.load_in_8bit/load_in_4bit (bitsandbytes) are not supported by clemrs; remove \
                        them (weights run as stored: f32, bf16 or f16)"
                .into());
        }
        let mut template_kwargs = match spec.config("chat_template_kwargs") {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("model_config.chat_template_kwargs must be an object".into()),
        };
        let device = match spec.config("device") {
            None | Some(Value::Null) => device::DeviceSetting::Auto,
            Some(Value::String(s)) => device::DeviceSetting::parse(s)?,
            Some(v) => {
                return Err(format!("model_config.device must be a string such as \"cpu\" or \"cuda:0\", not {v}"))
            }
        };
        if let Some(effort) = spec.config_str("cot_effort").filter(|s| !s.is_empty()) {
            template_kwargs.entry("reasoning_effort").or_insert_with(|| Value::String(effort.into()));
        }
        let cot_bypass = spec.config_str("cot_bypass").filter(|s| !s.is_empty()).map(String::from);
        let threads = match spec.config("threads") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n >= 1 => Some(n),
                _ => return Err(format!("model_config.threads must be a whole number of at least 1, not {v}")),
            },
        };
        Ok(Settings {
            huggingface_id,
            premade_chat_template,
            custom_chat_template,
            left_padding,
            template_kwargs,
            cot_bypass,
            threads,
            device,
            registry_context_size: config::registry_context_size(spec.get("context_size")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::device::DeviceSetting;
    use super::*;
    use serde_json::json;

    fn settings(config: Value) -> Result<Settings, String> {
        let entry = json!({"model_name": "m", "backend": "huggingface_local", "huggingface_id": "/models/m",
                           "model_config": config});
        let Value::Object(map) = entry else { unreachable!("an object literal") };
        Settings::from_spec(&ModelSpec::new(map))
    }

    #[test]
    fn device_is_read_from_model_config_and_bad_values_are_named() {
        let with = |device: Value| settings(json!({"premade_chat_template": true, "device": device}));
        assert_eq!(settings(json!({"premade_chat_template": true})).map(|s| s.device), Ok(DeviceSetting::Auto));
        assert_eq!(with(json!("cpu")).map(|s| s.device), Ok(DeviceSetting::Cpu));
        assert_eq!(with(json!("cuda:2")).map(|s| s.device), Ok(DeviceSetting::Cuda(2)));
        for bad in [json!("tpu"), json!(0), json!(["cuda"])] {
            let e = with(bad.clone()).expect_err("refused");
            assert!(e.contains("model_config.device"), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cuda_device_without_the_feature_fails_before_anything_is_read() {
        let entry = json!({"model_name": "m", "backend": "huggingface_local", "huggingface_id": "/nowhere/m",
                           "model_config": {"premade_chat_template": true, "device": "cuda"}});
        let Value::Object(map) = entry else { unreachable!("an object literal") };
        let e = HfLocalModel::load(&ModelSpec::new(map), &LoadContext::default()).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains("--features cuda") && !msg.contains("/nowhere"), "{msg}");
    }
}
