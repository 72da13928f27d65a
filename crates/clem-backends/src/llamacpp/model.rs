//! The llamacpp [`Model`]: renders the chat template with the GGUF's special tokens, checks the context with
//! llama.cpp's tokenizer, generates (a batch as one set of parallel sequences), cleans the output, and records
//! what clemcore's llamacpp backend records.
//!
//! Recorded objects, as clemcore: the prompt is `{inputs, max_new_tokens, temperature, return_full_text}`; the
//! response is `{"response": <completion>}` with llama-cpp-python's completion object (`id`, `object`,
//! `created`, `model`, `choices: [{text, index, logprobs, finish_reason}]`, `usage`), plus `cot_content` when the
//! entry has `cot_output`.
//!
//! Usage (the `Generation`'s, equal to the recorded `usage`): the rendered prompt's tokens, and the generated
//! tokens without the end-of-generation token that stopped them (as llama-cpp-python counts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use clem_core::cleaning::Cleaner;
use clem_core::message::messages_to_json;
use clem_core::template::{ChatTemplate, RenderOptions};
use clem_core::{
    BatchMode, Cancel, ContextExceeded, FinishReason, GenArgs, Generation, Message, Model, ModelError, ModelSpec, Usage,
};
use llama_cpp_2::token::LlamaToken;
use serde_json::{json, Map, Value};

use super::engine::{BatchOutput, Engine, Finish, GgufInfo, Sampling, SeqOutput, SpecialToken};
use super::files::{self, GgufFiles};
use super::{GpuRequest, Settings};
use crate::LoadContext;

/// A loaded GGUF model.
pub struct LlamaCppModel {
    spec: ModelSpec,
    name: String,
    engine: Engine,
    template: ChatTemplate,
    /// `bos_token`/`eos_token` for the template.
    template_vars: Map<String, Value>,
    cleaner: Cleaner,
    /// The most tokens one sequence may use (prompt + max_tokens).
    context_size: u32,
    files: GgufFiles,
    info: GgufInfo,
    /// The most KV cells a call has needed so far (its memory is already taken).
    cells_checked: AtomicU64,
}

impl LlamaCppModel {
    /// Resolves the GGUF, checks the entry and the memory, and loads the model.
    pub fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<LlamaCppModel, ModelError> {
        let name = spec.model_name().unwrap_or("?").to_string();
        let config = |m: String| ModelError::config(&name, m);
        let settings = Settings::from_spec(spec, ctx.threads).map_err(config)?;
        let cleaner = Cleaner::from_spec(spec).map_err(|e| config(e.to_string()))?;

        // The template is known before loading, so a bad entry fails before the weights are read.
        let (files, info, source) = locate(spec, &settings, ctx).map_err(config)?;
        let template = ChatTemplate::new(&source, &name).map_err(|e| config(e.to_string()))?;

        let n_ctx_train = info.context_length.and_then(|n| u32::try_from(n).ok());
        let context_size = match (n_ctx_train, settings.context_size) {
            (Some(train), Some(limit)) => train.min(limit),
            (Some(train), None) => train,
            (None, Some(limit)) => limit,
            (None, None) => {
                return Err(config(format!(
                    "{} does not say its context length; set model_config.context_size",
                    files.main.display()
                )))
            }
        };
        files::check_memory(
            &name,
            files.total_bytes,
            info.kv_cache_bytes(u64::from(context_size)),
            u64::from(context_size),
            crate::memory::mem_available(),
        )
        .map_err(|e| ModelError::backend(&name, e))?;

        let gpu_layers = match settings.gpu {
            GpuRequest::Cpu => 0,
            GpuRequest::Gpu(n) => {
                if !super::engine::supports_gpu().map_err(|e| ModelError::backend(&name, e))? {
                    return Err(config(
                        "execute_on/gpu_layers_offloaded ask for the GPU, but this build of clemrs has no GPU \
                         backend compiled into llama.cpp (CPU only); set model_config.execute_on to \"cpu\", or \
                         build clemrs with a GPU backend of llama-cpp-2 (cuda, vulkan, metal)"
                            .to_string(),
                    ));
                }
                n
            }
            GpuRequest::Auto => {
                if super::engine::supports_gpu().map_err(|e| ModelError::backend(&name, e))? {
                    super::ALL_LAYERS
                } else {
                    0
                }
            }
        };
        let engine =
            Engine::load(&files.main, gpu_layers, settings.threads).map_err(|e| ModelError::backend(&name, e))?;

        let bos = engine.token_text(SpecialToken::Bos);
        let eos = engine.token_text(SpecialToken::Eos);
        let template_vars = template_variables(&info, bos, eos, &settings);
        Ok(LlamaCppModel {
            spec: spec.clone(),
            name,
            engine,
            template,
            template_vars,
            cleaner,
            context_size,
            files,
            info,
            cells_checked: AtomicU64::new(0),
        })
    }

    /// The most tokens one generation may use (prompt + max_tokens).
    pub fn context_size(&self) -> u32 {
        self.context_size
    }

    /// The variables the template is rendered with (`bos_token`, `eos_token`).
    pub fn template_variables(&self) -> &Map<String, Value> {
        &self.template_vars
    }

    /// The chat template as the model renders it, with the generation prompt.
    pub fn render(&self, messages: &[Message]) -> Result<String, ModelError> {
        let opts = RenderOptions { add_generation_prompt: true, variables: self.template_vars.clone(), now: None };
        self.template
            .render(&messages_to_json(messages), &opts)
            .map_err(|e| ModelError::config(&self.name, e.to_string()))
    }

    /// Token ids of a rendered prompt, as generation counts them (for tests and tools).
    pub fn tokenize(&self, text: &str) -> Result<Vec<i32>, ModelError> {
        let tokens = self.engine.tokenize(text).map_err(|e| ModelError::backend(&self.name, e))?;
        Ok(tokens.into_iter().map(|t| t.0).collect())
    }

    /// Tokenizes a rendered prompt and checks it against the context size.
    fn tokens_for(&self, prompt: &str, max_tokens: u32, index: Option<usize>) -> Result<Vec<LlamaToken>, ModelError> {
        let tokens = self.engine.tokenize(prompt).map_err(|e| ModelError::backend(&self.name, e))?;
        ContextExceeded::check(&self.name, u64::from(self.context_size), tokens.len() as u64, max_tokens).map_err(
            |mut e| {
                e.batch_index = index;
                ModelError::from(e)
            },
        )?;
        Ok(tokens)
    }

    /// Generates for rendered prompts as one batch, without cleaning: the raw engine output with its timings
    /// (for benchmarks). `ignore_eos` keeps generating through end-of-generation tokens.
    pub fn generate_rendered(
        &self,
        prompts: &[String],
        args: &GenArgs,
        ignore_eos: bool,
    ) -> Result<BatchOutput, ModelError> {
        let tokens = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| self.tokens_for(p, args.max_tokens, (prompts.len() > 1).then_some(i)))
            .collect::<Result<Vec<_>, _>>()?;
        self.run(&tokens, args, ignore_eos, &[])
    }

    fn run(
        &self,
        prompts: &[Vec<LlamaToken>],
        args: &GenArgs,
        ignore_eos: bool,
        cancels: &[Cancel],
    ) -> Result<BatchOutput, ModelError> {
        self.check_batch_memory(prompts, args.max_tokens)?;
        let mut sampling = sampling_for(args).map_err(|m| ModelError::config(&self.name, m))?;
        sampling.ignore_eos = ignore_eos;
        self.engine
            .generate(prompts, args.max_tokens, &sampling, cancels)
            .map_err(|e| ModelError::backend(&self.name, e))
    }

    /// A batch needs a KV stream per sequence, each as long as the longest need; check the memory when that is
    /// more than any call before (and more than the full context checked at loading).
    fn check_batch_memory(&self, prompts: &[Vec<LlamaToken>], max_tokens: u32) -> Result<(), ModelError> {
        let longest = prompts.iter().map(|p| p.len() as u64).max().unwrap_or(0) + u64::from(max_tokens);
        let cells = longest * prompts.len() as u64;
        let before = self.cells_checked.load(Ordering::Relaxed);
        if cells <= before.max(u64::from(self.context_size)) {
            return Ok(());
        }
        let grow = self.info.kv_cache_bytes(cells).saturating_sub(self.info.kv_cache_bytes(before));
        files::check_memory(&self.name, 0, grow, cells, crate::memory::mem_available())
            .map_err(|e| ModelError::backend(&self.name, e))?;
        self.cells_checked.fetch_max(cells, Ordering::Relaxed);
        Ok(())
    }

    /// The triple for one finished sequence.
    fn generation(&self, prompt_text: String, out: SeqOutput, args: &GenArgs) -> Result<Generation, ModelError> {
        if out.finish == Finish::Cancelled {
            return Err(ModelError::cancelled(&self.name));
        }
        let cleaned =
            self.cleaner.clean(&out.text, &prompt_text, None).map_err(|e| ModelError::backend(&self.name, e))?;
        let completion_tokens = out.tokens.len();
        let completion = json!({
            "id": format!("cmpl-{}", uuid4()),
            "object": "text_completion",
            "created": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "model": self.files.main.display().to_string(),
            "choices": [{
                "text": out.text,
                "index": 0,
                "logprobs": null,
                "finish_reason": out.finish.as_str(),
            }],
            "usage": {
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": out.prompt_tokens + completion_tokens,
            },
        });
        let mut response = Map::new();
        response.insert("response".into(), completion);
        if let Some(cot) = cleaned.cot_content {
            response.insert("cot_content".into(), Value::String(cot));
        }
        let prompt = json!({
            "inputs": prompt_text,
            "max_new_tokens": args.max_tokens,
            "temperature": args.temperature,
            "return_full_text": false,
        });
        let finish = if out.finish == Finish::Length { FinishReason::Length } else { FinishReason::Stop };
        Ok(Generation::new(prompt, Value::Object(response), cleaned.text)
            .with_usage(Some(Usage::new(out.prompt_tokens as u64, completion_tokens as u64)))
            .with_finish(Some(finish)))
    }
}

/// The entry's GGUF, its metadata and the template source: the GGUF's `tokenizer.chat_template` with
/// `premade_chat_template`, else `custom_chat_template`. The message is the entry's problem.
fn locate(spec: &ModelSpec, settings: &Settings, ctx: &LoadContext) -> Result<(GgufFiles, GgufInfo, String), String> {
    let token = crate::hub::token_for(spec, &ctx.keys);
    let dir = files::model_dir(&settings.huggingface_id, &settings.filename, &settings.additional_files, token)
        .map_err(|e| e.to_string())?;
    let files = files::resolve_in(&dir, &settings.filename, &settings.additional_files).map_err(|e| e.to_string())?;
    let info = GgufInfo::read(&files.main)
        .ok_or_else(|| format!("{} is not a GGUF file llama.cpp can read", files.main.display()))?;
    let source = if settings.premade_chat_template {
        info.chat_template.clone().filter(|t| !t.is_empty()).ok_or_else(|| {
            format!(
                "premade_chat_template is true but {} has no tokenizer.chat_template; set \
                 premade_chat_template to false and give custom_chat_template",
                files.main.display()
            )
        })?
    } else {
        settings.custom_chat_template.clone().unwrap_or_default()
    };
    Ok((files, info, source))
}

/// A llamacpp entry's chat template and its `bos_token`/`eos_token`, as a loaded model renders with them, without
/// loading the weights (`clem template`): the GGUF's tokens when its metadata names them, else the entry's strings.
pub fn chat_template(spec: &ModelSpec, ctx: &LoadContext) -> Result<(String, Map<String, Value>), ModelError> {
    let name = spec.model_name().unwrap_or("?").to_string();
    let config = |m: String| ModelError::config(&name, m);
    let settings = Settings::from_spec(spec, ctx.threads).map_err(config)?;
    let (files, info, source) = locate(spec, &settings, ctx).map_err(config)?;
    let (bos, eos) = super::engine::vocab_special_texts(&files.main).map_err(|e| ModelError::backend(&name, e))?;
    Ok((source, template_variables(&info, bos, eos, &settings)))
}

/// clemcore: the GGUF's bos/eos tokens when its metadata names them, else the entry's strings.
fn template_variables(
    info: &GgufInfo,
    bos: Option<String>,
    eos: Option<String>,
    settings: &Settings,
) -> Map<String, Value> {
    let mut vars = Map::new();
    let bos = info.has_bos_id.then_some(bos).flatten().or_else(|| settings.bos_string.clone());
    let eos = info.has_eos_id.then_some(eos).flatten().or_else(|| settings.eos_string.clone());
    if let Some(bos) = bos {
        vars.insert("bos_token".into(), Value::String(bos));
    }
    if let Some(eos) = eos {
        vars.insert("eos_token".into(), Value::String(eos));
    }
    vars
}

/// Sampling settings from the generation arguments: greedy at temperature 0; `seed`, `top_k`, `top_p` and
/// `min_p` from the extra arguments (a random seed when none is given).
pub fn sampling_for(args: &GenArgs) -> Result<Sampling, String> {
    let mut s = Sampling::greedy();
    if !args.temperature.is_finite() || args.temperature < 0.0 {
        return Err(format!("temperature must be a number >= 0, not {}", args.temperature));
    }
    s.temperature = args.temperature as f32;
    let number = |key: &str| args.extra.get(key).and_then(Value::as_f64);
    s.seed = match args.extra.get("seed") {
        None | Some(Value::Null) => fastrand::u32(..),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("seed must be an integer from 0 to {}, not {v}", u32::MAX))?,
    };
    if let Some(k) = number("top_k") {
        s.top_k = k.clamp(0.0, f64::from(i32::MAX)) as i32;
    }
    if let Some(p) = number("top_p") {
        s.top_p = p.clamp(0.0, 1.0) as f32;
    }
    if let Some(p) = number("min_p") {
        s.min_p = p.clamp(0.0, 1.0) as f32;
    }
    s.stop = args.stop.clone();
    Ok(s)
}

/// A random UUID (version 4) for completion ids, as llama-cpp-python makes them.
fn uuid4() -> String {
    let mut b = [0u8; 16];
    b.iter_mut().for_each(|x| *x = fastrand::u8(..));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

impl Model for LlamaCppModel {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn generate_response(
        &self,
        messages: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
    ) -> Result<Generation, ModelError> {
        let prompt = self.render(messages)?;
        let tokens = self.tokens_for(&prompt, args.max_tokens, None)?;
        let mut out = self.run(std::slice::from_ref(&tokens), args, false, std::slice::from_ref(cancel))?;
        let seq = out.outputs.pop().ok_or_else(|| ModelError::backend(&self.name, "llama.cpp returned no output"))?;
        self.generation(prompt, seq, args)
    }

    /// Renders and checks every item; the ones that can run are decoded together as parallel sequences.
    fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        let mut results: Vec<Option<Result<Generation, ModelError>>> = Vec::with_capacity(batch.len());
        let mut ready: Vec<(usize, String, Vec<LlamaToken>)> = Vec::new();
        for (i, messages) in batch.iter().enumerate() {
            match self.render(messages).and_then(|p| self.tokens_for(&p, args.max_tokens, Some(i)).map(|t| (p, t))) {
                Ok((prompt, tokens)) => {
                    ready.push((i, prompt, tokens));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let token_lists: Vec<Vec<LlamaToken>> = ready.iter().map(|(_, _, t)| t.clone()).collect();
        let row_cancels: Vec<Cancel> = ready.iter().map(|(i, _, _)| Cancel::of(cancels, *i)).collect();
        match self.run(&token_lists, args, false, &row_cancels) {
            Ok(out) => {
                for ((i, prompt, _), seq) in ready.into_iter().zip(out.outputs) {
                    results[i] = Some(self.generation(prompt, seq, args));
                }
            }
            Err(e) => {
                // One failure of the shared decode fails every item that was in it.
                let message = e.to_string();
                for (i, _, _) in ready {
                    results[i] = Some(Err(ModelError::backend(&self.name, message.clone())));
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(ModelError::backend(&self.name, "no result")))).collect()
    }

    fn batch_mode(&self) -> BatchMode {
        BatchMode::ForwardPass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_arguments() {
        let s = sampling_for(&GenArgs::new(0.0, 10)).expect("valid");
        assert_eq!(s.temperature, 0.0);
        let mut args = GenArgs::new(0.7, 10);
        args.extra.insert("seed".into(), json!(42));
        args.extra.insert("top_p".into(), json!(0.5));
        let s = sampling_for(&args).expect("valid");
        assert_eq!((s.seed, s.top_p), (42, 0.5));
        args.extra.insert("seed".into(), json!("x"));
        assert!(sampling_for(&args).expect_err("bad seed").contains("seed"));
        assert!(sampling_for(&GenArgs::new(-1.0, 10)).is_err());
        assert!(sampling_for(&GenArgs::new(f64::NAN, 10)).is_err());
    }

    #[test]
    fn uuid_shape() {
        let u = uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
