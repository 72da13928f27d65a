//! The registry schemas of the feature-gated local backends (`huggingface_local`, `llamacpp`), and the stand-in
//! `Backend` values a build without the feature registers instead.
//!
//! Their entries are checked whatever the build; loading one in a build without the feature says plainly which
//! cargo feature to enable.

use clem_core::schema::{BackendSchema, KeyType as T};

use crate::Backend;

/// Why `load_in_8bit`/`load_in_4bit` are refused (the loader says the same).
const BITSANDBYTES: &str = "bitsandbytes quantisation is not supported by clemrs; remove it (weights run as stored: \
                            f32, bf16 or f16), or use a GGUF quantisation with the llamacpp backend";

/// The `huggingface_local` registry schema; the backend itself is `crate::huggingface_local` (feature
/// `huggingface_local`).
pub const HUGGINGFACE_LOCAL_SCHEMA: BackendSchema = BackendSchema {
    name: "huggingface_local",
    aliases: &[],
    entry_required: &[("huggingface_id", T::Str)],
    entry_optional: &[],
    config_required: &[("premade_chat_template", T::Bool), ("eos_to_cull", T::Regex)],
    config_optional: &[
        ("requires_api_key", T::Bool),
        ("custom_chat_template", T::Template),
        ("slow_tokenizer", T::Bool),
        ("output_split_prefix", T::Str),
        ("padding_side", T::OneOf(&["left", "right"])),
        ("cot_output", T::Bool),
        ("cot_start_tag", T::Str),
        ("cot_end_tag", T::Regex),
        ("cot_bypass", T::Str),
        ("cot_effort", T::Str),
        ("chat_template_kwargs", T::Object),
        ("trust_remote_code", T::Bool),
        ("load_in_8bit", T::Unsupported(BITSANDBYTES)),
        ("load_in_4bit", T::Unsupported(BITSANDBYTES)),
        ("attn_implementation", T::Str),
        ("multimodality", T::Object),
        ("dtype", T::OneOf(&["auto", "f32", "bf16", "f16", "float32", "bfloat16", "float16"])),
        ("threads", T::Count),
        // "auto", "cpu", "cuda" or "cuda:N" (clemrs only; read by huggingface_local::device).
        ("device", T::Str),
    ],
};

/// `huggingface_local` in a build without its feature: entries are checked, loading says why it cannot.
#[cfg_attr(feature = "huggingface_local", allow(dead_code))]
pub const HUGGINGFACE_LOCAL: Backend = Backend {
    schema: HUGGINGFACE_LOCAL_SCHEMA,
    key_section: Some("huggingface"),
    loader: None,
    unavailable: "built without the `huggingface_local` feature",
};

/// The `llamacpp` registry schema; the backend itself is `crate::llamacpp` (feature `llamacpp`).
pub const LLAMACPP_SCHEMA: BackendSchema = BackendSchema {
    name: "llamacpp",
    aliases: &[],
    entry_required: &[("huggingface_id", T::Str)],
    entry_optional: &[],
    config_required: &[("filename", T::Str), ("premade_chat_template", T::Bool), ("eos_to_cull", T::Regex)],
    config_optional: &[
        ("requires_api_key", T::Bool),
        ("custom_chat_template", T::Template),
        ("output_split_prefix", T::Str),
        ("bos_string", T::Str),
        ("eos_string", T::Str),
        ("execute_on", T::OneOf(&["cpu", "gpu"])),
        ("gpu_layers_offloaded", T::Count),
        ("additional_files", T::StrList),
        ("cot_output", T::Bool),
        ("cot_start_tag", T::Str),
        ("cot_end_tag", T::Regex),
        ("threads", T::Count),
        // A limit below the GGUF's training context (clemrs only).
        ("context_size", T::Count),
    ],
};

/// `llamacpp` in a build without the `llamacpp` feature: entries are checked, loading says why it cannot.
#[cfg_attr(feature = "llamacpp", allow(dead_code))]
pub const LLAMACPP: Backend = Backend {
    schema: LLAMACPP_SCHEMA,
    key_section: Some("huggingface"),
    loader: None,
    unavailable: "built without the `llamacpp` feature",
};
