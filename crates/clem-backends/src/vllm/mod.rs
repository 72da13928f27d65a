//! The `vllm` backend: models served by vLLM, the distributed engine (tensor and pipeline parallel, multi-node
//! with Ray), used through its OpenAI-compatible server.
//!
//! Launch mode (no `base_url`): clemrs runs `vllm serve HUGGINGFACE_ID --host 127.0.0.1 --port FREE
//! --tensor-parallel-size number_gpus [--pipeline-parallel-size N] VLLM_ARGS...` as a child ([`launcher`]),
//! logs its output to a file, waits for `/health`, and stops it (the whole process group) when the model is
//! dropped or clemrs dies. The program is `model_config.launcher` (a string or list), else
//! `$CLEM_VLLM_COMMAND` (split on whitespace), else `vllm`. A launcher from `./model_registry.json` is refused
//! (a registry in the working directory is data, not code): it must come from `~/.clemcore/model_registry.json`,
//! a `--registry` file, the selector or the environment.
//! Attach mode: with `model_config.base_url` or `base_url` in the key.json section `vllm`, nothing is started.
//!
//! Requests go through the shared executor ([`crate::http::RemoteModel`]): by default the chat template is
//! rendered here and sent to `/v1/completions`, cleaned like huggingface_local; with `use_chat_endpoint` the
//! server's `/v1/chat/completions` is used (and cleaned the same way).

pub mod adapter;
pub mod launcher;

use std::path::PathBuf;
use std::time::Duration;

use clem_core::cleaning::Cleaner;
use clem_core::hf::{resolve_model_dir, TokenizerFiles};
use clem_core::schema::{BackendSchema, KeyType as T};
use clem_core::template::ChatTemplate;
use clem_core::{BatchMode, Cancel, GenArgs, Generation, Message, Model, ModelError, ModelSpec};
use serde_json::Value;

use crate::http::remote::extra_body;
use crate::http::RemoteModel;
use crate::{Backend, LoadContext};
use adapter::{Endpoint, VllmAdapter};
use launcher::LaunchSpec;

pub const BACKEND: Backend = Backend {
    schema: BackendSchema {
        name: "vllm",
        aliases: &[],
        entry_required: &[("huggingface_id", T::Str)],
        entry_optional: &[],
        config_required: &[("number_gpus", T::Count), ("premade_chat_template", T::Bool), ("eos_to_cull", T::Regex)],
        config_optional: &[
            ("pipeline_parallel_size", T::Count),
            ("vllm_args", T::Any),
            ("custom_chat_template", T::Template),
            ("output_split_prefix", T::Str),
            ("cot_output", T::Bool),
            ("cot_start_tag", T::Str),
            ("cot_end_tag", T::Regex),
            ("use_chat_endpoint", T::Bool),
            ("base_url", T::Str),
            ("extra_body", T::Object),
            // clemrs: the program standing for `vllm`, startup limit, log file, and executor limits.
            ("launcher", T::Any),
            ("startup_timeout", T::Number),
            ("log_file", T::Str),
            ("requires_api_key", T::Bool),
            ("timeout", T::Number),
            ("connect_timeout", T::Number),
            ("deadline", T::Number),
            ("max_response_bytes", T::Count),
            ("max_attempts", T::Count),
            ("max_concurrency", T::Count),
        ],
    },
    key_section: Some("vllm"),
    loader: Some(load),
    unavailable: "",
};

/// A vLLM-served model; owns the server child in launch mode (dropped after the client).
pub struct VllmModel {
    remote: RemoteModel,
    child: Option<launcher::Child>,
}

impl VllmModel {
    /// The process id (and process group) of the server clemrs started; `None` in attach mode.
    pub fn server_pid(&self) -> Option<i32> {
        self.child.as_ref().map(launcher::Child::pid)
    }
}

impl Model for VllmModel {
    fn spec(&self) -> &ModelSpec {
        self.remote.spec()
    }
    fn generate_response(
        &self,
        messages: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
    ) -> Result<Generation, ModelError> {
        self.remote.generate_response(messages, args, cancel)
    }
    fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        self.remote.generate_batch_response(batch, args, cancels)
    }
    fn batch_mode(&self) -> BatchMode {
        // vLLM batches continuously on the server: send requests concurrently.
        BatchMode::Concurrent
    }
}

/// `vllm_args` as command-line arguments: a list as is, a string split on whitespace, an object as
/// `--key-with-dashes value` (`true`: a bare flag, `false`/null: left out, lists/objects as JSON).
pub fn vllm_args(value: Option<&Value>) -> Result<Vec<String>, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(String::from).collect()),
        Some(Value::Array(items)) => Ok(items.iter().map(scalar).collect()),
        Some(Value::Object(map)) => {
            let mut out = Vec::new();
            for (k, v) in map {
                let flag = if k.starts_with("--") { k.clone() } else { format!("--{}", k.replace('_', "-")) };
                match v {
                    Value::Bool(false) | Value::Null => {}
                    Value::Bool(true) => out.push(flag),
                    other => {
                        out.push(flag);
                        out.push(scalar(other));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err("vllm_args must be a list of strings, a string or an object".into()),
    }
}

/// The program standing for `vllm`; refused when the entry that names it comes from the working directory.
fn launcher_command(spec: &ModelSpec, ctx: &LoadContext) -> Result<Vec<String>, String> {
    if let Some(entry) = ctx.entry.as_ref().filter(|e| !e.origin.may_name_programs()) {
        if entry.value.get("model_config").and_then(|c| c.get("launcher")).is_some() {
            return Err(format!(
                "{}: model_config.launcher: a program to run is not taken from a registry in the working directory \
                 (it is data and may have come with the folder); put the entry in ~/.clemcore/model_registry.json \
                 or a file named with --registry FILE, or set $CLEM_VLLM_COMMAND",
                entry.location()
            ));
        }
    }
    let from_entry: Vec<String> = match spec.config("launcher") {
        Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => Vec::new(),
    };
    if !from_entry.is_empty() {
        return Ok(from_entry);
    }
    Ok(match std::env::var("CLEM_VLLM_COMMAND") {
        Ok(s) if !s.trim().is_empty() => s.split_whitespace().map(String::from).collect(),
        _ => vec!["vllm".into()],
    })
}

/// A new log file in the temporary folder, created exclusively (mode 0600) under a random name, so another
/// local user cannot have put a file or link there first.
fn new_log_file(name: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir();
    let stem = name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut tries = 0;
    loop {
        let path = dir.join(format!("clem-vllm-{stem}-{}-{:016x}.log", std::process::id(), fastrand::u64(..)));
        match opts.open(&path) {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(format!("cannot create a log file in {}: {e}", dir.display())),
        }
    }
}

/// Everything after `serve MODEL --host --port`.
pub fn launch_args(spec: &ModelSpec) -> Result<Vec<String>, String> {
    let count = |key: &str| spec.config(key).and_then(Value::as_u64);
    let mut args = vec!["--tensor-parallel-size".into(), count("number_gpus").unwrap_or(1).max(1).to_string()];
    if let Some(pp) = count("pipeline_parallel_size") {
        args.extend(["--pipeline-parallel-size".into(), pp.max(1).to_string()]);
    }
    args.extend(vllm_args(spec.config("vllm_args"))?);
    Ok(args)
}

fn template(spec: &ModelSpec, name: &str, hf_id: &str) -> Result<Endpoint, ModelError> {
    let config = |m: String| ModelError::config(name, m);
    if spec.config_flag("premade_chat_template") {
        let dir = resolve_model_dir(hf_id).map_err(|e| {
            config(format!(
                "premade_chat_template needs the tokenizer files of {hf_id} locally ({e}); download them \
                 (`huggingface-cli download {hf_id} tokenizer_config.json`), or set use_chat_endpoint"
            ))
        })?;
        let files = TokenizerFiles::load(&dir).map_err(|e| config(e.to_string()))?;
        let source =
            files.chat_template(None).ok_or_else(|| config(format!("{} has no chat template", dir.display())))?;
        let template = ChatTemplate::new(source, name).map_err(|e| config(e.to_string()))?;
        Ok(Endpoint::Completions { template: Box::new(template), variables: files.template_variables() })
    } else {
        let source = spec
            .config_str("custom_chat_template")
            .ok_or_else(|| config("premade_chat_template is false and there is no custom_chat_template".into()))?;
        let template = ChatTemplate::new(source, name).map_err(|e| config(e.to_string()))?;
        Ok(Endpoint::Completions { template: Box::new(template), variables: Default::default() })
    }
}

/// Strips `/v1` so the root serves both `/health` and `/v1/...`.
fn server_root(base: &str) -> String {
    let b = base.trim_end_matches('/');
    b.strip_suffix("/v1").unwrap_or(b).to_string()
}

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("?").to_string();
    let config = |m: String| ModelError::config(&name, m);
    let hf_id = spec.get_str("huggingface_id").ok_or_else(|| config("the entry has no huggingface_id".into()))?;
    let section = ctx.keys.section("vllm");
    let endpoint = if spec.config_flag("use_chat_endpoint") { Endpoint::Chat } else { template(spec, &name, hf_id)? };
    let cleaner = Cleaner::from_spec(spec).map_err(|e| config(e.to_string()))?;
    let attach = spec
        .config_str("base_url")
        .map(String::from)
        .or_else(|| section.as_ref().and_then(|s| s.extras.get("base_url")).and_then(Value::as_str).map(String::from));
    let child = match attach {
        Some(_) => None,
        None => {
            let args = launch_args(spec).map_err(config)?;
            let command = launcher_command(spec, ctx).map_err(config)?;
            let log = match spec.config_str("log_file") {
                Some(p) => PathBuf::from(p),
                None => new_log_file(&name).map_err(config)?,
            };
            let secs = spec.config("startup_timeout").and_then(Value::as_f64).filter(|s| *s > 0.0).unwrap_or(1800.0);
            let launch = LaunchSpec {
                command,
                args,
                model: hf_id.to_string(),
                log,
                startup_timeout: Duration::from_secs_f64(secs.min(86_400.0)),
            };
            Some(launcher::launch(&launch).map_err(|e| ModelError::backend(&name, e))?)
        }
    };
    let root = match (&child, &attach) {
        (Some(c), _) => c.root.clone(),
        (None, Some(base)) => server_root(base),
        (None, None) => return Err(config("no server".into())),
    };
    let adapter = VllmAdapter {
        root,
        model: hf_id.to_string(),
        endpoint,
        cleaner,
        extra_body: extra_body(spec),
        api_key: section.as_ref().and_then(|s| s.api_key.clone()),
    };
    let remote = RemoteModel::new(spec, adapter, section.as_ref())?;
    Ok(Box::new(VllmModel { remote, child }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vllm_args_forms() {
        assert_eq!(vllm_args(Some(&json!(["--max-model-len", 4096]))).expect("list"), ["--max-model-len", "4096"]);
        assert_eq!(vllm_args(Some(&json!("--enforce-eager --seed 1"))).expect("str").len(), 3);
        let obj = vllm_args(Some(&json!({"max_model_len": 4096, "enforce_eager": true, "x": false})));
        assert_eq!(obj.expect("obj"), ["--max-model-len", "4096", "--enforce-eager"]);
        assert!(vllm_args(Some(&json!(3))).is_err());
    }

    #[test]
    fn launch_arguments_and_roots() {
        let spec = ModelSpec::new(
            json!({"model_name": "m", "backend": "vllm", "huggingface_id": "org/m",
                   "model_config": {"number_gpus": 4, "pipeline_parallel_size": 2, "vllm_args": ["--seed", "1"]}})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
        assert_eq!(
            launch_args(&spec).expect("args"),
            ["--tensor-parallel-size", "4", "--pipeline-parallel-size", "2", "--seed", "1"]
        );
        assert_eq!(server_root("http://h:8000/v1/"), "http://h:8000");
        assert_eq!(server_root("http://h:8000"), "http://h:8000");
    }
}
