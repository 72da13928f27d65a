//! The `llamacpp` backend: GGUF models run in-process by llama.cpp (the `llama-cpp-2` crate, built from the
//! source it ships), behind the `llamacpp` cargo feature.
//!
//! Every registry key is honoured, including the three clemcore ignores (`execute_on`, `gpu_layers_offloaded`,
//! `additional_files`). Chat templates are rendered by our renderer (`clem_core::template`), never by llama.cpp's
//! built-in template heuristics. Generations run through a step scheduler (continuous batching): every call's
//! sequences join one running batch, as parallel sequences of one llama.cpp context (or of one per lane, see
//! [`crate::Lanes`]).
//!
//! - [`files`]: where the GGUF is (`huggingface_id`, `filename`, `additional_files`) and the memory check;
//! - [`engine`]: llama.cpp itself: loading, tokenizing, GGUF metadata, context settings;
//! - [`step`]: the llama.cpp context as the scheduler's step engine (one sequence id per slot);
//! - [`model`]: the [`Model`] implementation: templates, context check, cleaning, recorded objects.

pub mod engine;
pub mod files;
pub mod model;
pub mod step;

use clem_core::{Model, ModelError, ModelSpec};
use serde_json::Value;

use crate::{Backend, LoadContext};

pub use model::LlamaCppModel;

pub const BACKEND: Backend = Backend {
    schema: crate::planned::LLAMACPP_SCHEMA,
    key_section: Some("huggingface"),
    loader: Some(load),
    unavailable: "",
};

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    Ok(Box::new(LlamaCppModel::load(spec, ctx)?))
}

/// Layers offloaded when a GPU is wanted and no count is given ("all", as llama.cpp's `-ngl 999`).
const ALL_LAYERS: u32 = 999;

/// An entry's llamacpp settings, read and checked before anything is loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub huggingface_id: String,
    pub filename: String,
    pub additional_files: Vec<String>,
    pub premade_chat_template: bool,
    pub custom_chat_template: Option<String>,
    pub bos_string: Option<String>,
    pub eos_string: Option<String>,
    pub gpu: GpuRequest,
    pub threads: usize,
    /// `model_config.context_size`: a limit below the GGUF's training context.
    pub context_size: Option<u32>,
}

/// Where the layers should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuRequest {
    /// `execute_on: cpu` (or `gpu_layers_offloaded: 0`).
    Cpu,
    /// `execute_on: gpu` or `gpu_layers_offloaded: N`: N layers (or all) must go to a GPU.
    Gpu(u32),
    /// Nothing asked: all layers on a GPU when one is compiled in, else the CPU.
    Auto,
}

impl Settings {
    /// Reads the keys of a spec; `threads_flag` (the `--threads` flag) wins over `model_config.threads`.
    pub fn from_spec(spec: &ModelSpec, threads_flag: Option<usize>) -> Result<Settings, String> {
        let huggingface_id = spec
            .get_str("huggingface_id")
            .filter(|s| !s.is_empty())
            .ok_or("the entry needs \"huggingface_id\" (a Hugging Face id or a local folder)")?
            .to_string();
        let string = |key: &str| -> Result<Option<String>, String> {
            match spec.config(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("model_config.{key} must be a string, not {other}")),
            }
        };
        let count = |key: &str| -> Result<Option<u64>, String> {
            match spec.config(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| format!("model_config.{key} must be a non-negative integer, not {v}")),
            }
        };
        let filename = string("filename")?
            .filter(|s| !s.is_empty())
            .ok_or("model_config.filename is required: a glob naming the GGUF file, e.g. \"*Q4_K_M.gguf\"")?;
        let additional_files = match spec.config("additional_files") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or("model_config.additional_files must be a list of strings")?,
            Some(_) => return Err("model_config.additional_files must be a list of strings".into()),
        };
        let premade_chat_template = spec.config_flag("premade_chat_template");
        let custom_chat_template = string("custom_chat_template")?;
        if !premade_chat_template && custom_chat_template.as_deref().is_none_or(str::is_empty) {
            return Err("model_config.premade_chat_template is false and there is no custom_chat_template: \
                        set one of them"
                .into());
        }
        let layers = count("gpu_layers_offloaded")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let gpu = match string("execute_on")?.as_deref() {
            Some("cpu") if layers.is_some_and(|n| n > 0) => {
                return Err("model_config.execute_on is \"cpu\" but gpu_layers_offloaded asks for GPU layers".into())
            }
            Some("cpu") => GpuRequest::Cpu,
            Some("gpu") => GpuRequest::Gpu(layers.filter(|&n| n > 0).unwrap_or(ALL_LAYERS)),
            Some(other) => return Err(format!("model_config.execute_on must be \"cpu\" or \"gpu\", not {other:?}")),
            None => match layers {
                Some(0) => GpuRequest::Cpu,
                Some(n) => GpuRequest::Gpu(n),
                None => GpuRequest::Auto,
            },
        };
        let threads = match threads_flag {
            Some(n) => n,
            None => count("threads")?.map_or_else(default_threads, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        if threads == 0 {
            return Err("threads must be at least 1".into());
        }
        // More spinning workers than cores collapses llama.cpp's throughput (see crate::cpu).
        let threads = crate::cpu::clamp_threads(threads).0;
        let context_size = match count("context_size")? {
            None => None,
            Some(0) => return Err("model_config.context_size must be at least 1".into()),
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        };
        Ok(Settings {
            huggingface_id,
            filename,
            additional_files,
            premade_chat_template,
            custom_chat_template,
            bos_string: string("bos_string")?,
            eos_string: string("eos_string")?,
            gpu,
            threads,
            context_size,
        })
    }
}

/// Threads for inference when neither the entry nor the flag says: one per physical core, never more than
/// this process may use. More threads than cores makes llama.cpp's spinning workers fight each other (and any
/// other busy process) and collapses throughput.
pub fn default_threads() -> usize {
    let allowed = crate::cpu::usable_cores();
    let physical = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| physical_cores(&t));
    physical.map_or(allowed, |p| p.min(allowed)).max(1)
}

/// Distinct (physical id, core id) pairs in /proc/cpuinfo; `None` when it does not say.
fn physical_cores(cpuinfo: &str) -> Option<usize> {
    let mut cores = std::collections::BTreeSet::new();
    for block in cpuinfo.split("\n\n") {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        if let Some(core) = field("core id") {
            cores.insert((field("physical id").unwrap_or_default(), core));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(config: Value) -> ModelSpec {
        let Value::Object(map) = json!({
            "model_name": "m", "backend": "llamacpp", "huggingface_id": "org/m", "model_config": config
        }) else {
            unreachable!()
        };
        ModelSpec::new(map)
    }

    #[test]
    fn settings_read_every_key() {
        let s = Settings::from_spec(
            &spec(json!({"filename": "*.gguf", "premade_chat_template": true, "eos_to_cull": "x",
                         "additional_files": ["a", "b"], "execute_on": "gpu", "gpu_layers_offloaded": 12,
                         "threads": 3, "context_size": 2048, "bos_string": "<s>"})),
            None,
        )
        .expect("valid");
        assert_eq!(s.additional_files, vec!["a", "b"]);
        assert_eq!(s.gpu, GpuRequest::Gpu(12));
        assert_eq!((s.threads, s.context_size), (crate::cpu::clamp_threads(3).0, Some(2048)));
        assert_eq!(s.bos_string.as_deref(), Some("<s>"));
        let s = Settings::from_spec(&spec(json!({"filename": "x", "premade_chat_template": true})), Some(1))
            .expect("valid");
        assert_eq!((s.gpu, s.threads), (GpuRequest::Auto, 1));
        let cpu = |c: Value| Settings::from_spec(&spec(c), None).map(|s| s.gpu);
        assert_eq!(
            cpu(json!({"filename": "x", "premade_chat_template": true, "execute_on": "cpu"})),
            Ok(GpuRequest::Cpu)
        );
        assert_eq!(
            cpu(json!({"filename": "x", "premade_chat_template": true, "gpu_layers_offloaded": 0})),
            Ok(GpuRequest::Cpu)
        );
        assert_eq!(
            cpu(json!({"filename": "x", "premade_chat_template": true, "execute_on": "gpu"})),
            Ok(GpuRequest::Gpu(ALL_LAYERS))
        );
    }

    #[test]
    fn settings_errors_say_what_to_change() {
        let err = |c: Value| Settings::from_spec(&spec(c), None).expect_err("invalid");
        assert!(err(json!({"premade_chat_template": true})).contains("filename"));
        assert!(err(json!({"filename": "x", "premade_chat_template": false})).contains("custom_chat_template"));
        assert!(err(json!({"filename": "x", "premade_chat_template": true, "execute_on": "tpu"})).contains("tpu"));
        assert!(err(json!({"filename": "x", "premade_chat_template": true, "execute_on": "cpu",
                           "gpu_layers_offloaded": 3}))
        .contains("cpu"));
        assert!(err(json!({"filename": "x", "premade_chat_template": true, "threads": 0})).contains("threads"));
        assert!(err(json!({"filename": "x", "premade_chat_template": true, "threads": -1})).contains("threads"));
    }

    #[test]
    fn threads_default_to_physical_cores() {
        let two_cores_four_threads = "processor: 0\nphysical id: 0\ncore id: 0\n\nprocessor: 1\nphysical id: 0\n\
            core id: 0\n\nprocessor: 2\nphysical id: 0\ncore id: 1\n\nprocessor: 3\nphysical id: 0\ncore id: 1\n";
        assert_eq!(physical_cores(two_cores_four_threads), Some(2));
        assert_eq!(physical_cores("processor: 0\n"), None);
        let n = default_threads();
        assert!(n >= 1 && n <= std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
}
