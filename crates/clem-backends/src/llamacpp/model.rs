//! The llamacpp [`Model`]: renders the chat template with the GGUF's special tokens, checks the context with
//! llama.cpp's tokenizer, generates through the model's step scheduler (`clem_core::schedule`: every call's
//! sequences join one running batch, whatever thread they come from; see `step.rs`; with [`crate::Lanes`] on the
//! CPU, one batch per lane, each lane a context on its share of the threads), cleans the output, and records what
//! clemcore's llamacpp backend records. `generate_stream` sends the raw text as it is decoded.
//!
//! Recorded objects, as clemcore: the prompt is `{inputs, max_new_tokens, temperature, return_full_text}`; the
//! response is `{"response": <completion>}` with llama-cpp-python's completion object (`id`, `object`,
//! `created`, `model`, `choices: [{text, index, logprobs, finish_reason}]`, `usage`), plus `cot_content` when the
//! entry has `cot_output`.
//!
//! Usage (the `Generation`'s, equal to the recorded `usage`): the rendered prompt's tokens, and the generated
//! tokens without the end-of-generation token that stopped them (as llama-cpp-python counts).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clem_core::cleaning::Cleaner;
use clem_core::message::messages_to_json;
use clem_core::schedule::{
    Finish, SamplingParams, ScheduleError, Scheduler, SchedulerConfig, SchedulerStats, SeqOutput, SeqRequest,
};
use clem_core::template::{ChatTemplate, RenderOptions};
use clem_core::{
    BatchMode, Cancel, ContextExceeded, FinishReason, GenArgs, Generation, Message, Model, ModelError, ModelSpec,
    StreamEvent, Usage,
};
use serde_json::{json, Map, Value};

use super::engine::{Engine, GgufInfo, SpecialToken, N_BATCH};
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
    /// Runs every generation: its thread owns the llama.cpp context.
    scheduler: Scheduler,
}

/// Sequences decoded together at most, over all lanes. On CPU a decoding step costs as much per token at 32
/// sequences as at 8 (examples/llama_steps.rs), and a request that waits for a slot waits for whole replies, so a
/// wide batch cuts the time to first token under load; 64 cut it further but cost throughput on mixed lengths
/// (bench/serve).
const MAX_SLOTS: usize = 32;

/// A batch's results and where the time went (benchmarks).
#[derive(Clone, Debug)]
pub struct BatchOutput {
    pub outputs: Vec<SeqOutput>,
    /// Until the last sequence had its first token (its prompt evaluated).
    pub prefill: Duration,
    /// The rest.
    pub decode: Duration,
    /// Tokens evaluated after each sequence's first (one per sequence per decode step).
    pub decoded_tokens: usize,
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
        let engine = Engine::load(&files.main, gpu_layers).map_err(|e| ModelError::backend(&name, e))?;

        let bos = engine.token_text(SpecialToken::Bos);
        let eos = engine.token_text(SpecialToken::Eos);
        let template_vars = template_variables(&info, bos, eos, &settings);
        // Contexts up to one full context were checked above; a wider layout (several sequences) is checked
        // when the scheduler asks for it, and refused when it does not fit (the scheduler then runs fewer).
        let afford = {
            let (name, info, full) = (name.clone(), info.clone(), u64::from(context_size));
            Box::new(move |cells: u64| {
                if cells <= full {
                    return Ok(());
                }
                let grow = info.kv_cache_bytes(cells).saturating_sub(info.kv_cache_bytes(full));
                files::check_memory(&name, 0, grow, cells, crate::memory::mem_available()).map_err(|e| e.to_string())
            })
        };
        let config = SchedulerConfig {
            max_slots: MAX_SLOTS,
            max_capacity: context_size as usize,
            step_tokens: N_BATCH,
            prefill_chunk: N_BATCH,
        };
        // MAX_SLOTS sequences wide in all from the first context (when memory allows): a context cannot grow under
        // running sequences, so a narrower one made requests arriving just after the first wait for it to finish.
        // One sequence decodes as fast in a 64-stream context as in a 1-stream one (examples/llama_steps.rs).
        // Lanes run on the CPU only (a GPU runs one context best).
        let lanes = if gpu_layers == 0 { ctx.lanes } else { crate::Lanes::One };
        let threads = lanes.split(settings.threads);
        let width = MAX_SLOTS.div_ceil(threads.len());
        let (afford, lanes) = (Arc::new(afford), threads.len() as u64);
        let engines = threads
            .iter()
            .map(|&t| {
                let afford = afford.clone();
                // Every lane's context as large as this one: what it may use is its share.
                let share: super::step::Afford = Box::new(move |cells| afford(cells.saturating_mul(lanes)));
                engine.steps(share, width, context_size as usize, t)
            })
            .collect();
        let scheduler = Scheduler::with_lanes(engines, SchedulerConfig { max_slots: width, ..config });
        Ok(LlamaCppModel {
            spec: spec.clone(),
            name,
            engine,
            template,
            template_vars,
            cleaner,
            context_size,
            files,
            scheduler,
        })
    }

    /// Each lane's scheduler counters (one lane unless loaded with [`crate::Lanes`] on the CPU).
    pub fn lane_stats(&self) -> Vec<SchedulerStats> {
        self.scheduler.lane_stats()
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
    fn tokens_for(&self, prompt: &str, max_tokens: u32, index: Option<usize>) -> Result<Vec<u32>, ModelError> {
        let tokens = self.engine.tokenize(prompt).map_err(|e| ModelError::backend(&self.name, e))?;
        ContextExceeded::check(&self.name, u64::from(self.context_size), tokens.len() as u64, max_tokens).map_err(
            |mut e| {
                e.batch_index = index;
                ModelError::from(e)
            },
        )?;
        // Vocabulary ids are never negative.
        Ok(tokens.into_iter().map(|t| u32::try_from(t.0).unwrap_or(0)).collect())
    }

    /// The scheduler's request for a tokenized prompt.
    fn request(&self, prompt: Vec<u32>, args: &GenArgs, cancel: &Cancel) -> Result<SeqRequest, ModelError> {
        Ok(SeqRequest {
            prompt,
            max_tokens: args.max_tokens,
            sampling: sampling_for(args).map_err(|m| ModelError::config(&self.name, m))?,
            stop: args.stop.clone(),
            ignore_eos: false,
            cancel: cancel.clone(),
        })
    }

    fn schedule_err(&self, e: ScheduleError) -> ModelError {
        ModelError::backend(&self.name, e)
    }

    /// Generates for rendered prompts as one batch, without cleaning: the raw outputs with their timings (for
    /// benchmarks). `ignore_eos` keeps generating through end-of-generation tokens.
    pub fn generate_rendered(
        &self,
        prompts: &[String],
        args: &GenArgs,
        ignore_eos: bool,
    ) -> Result<BatchOutput, ModelError> {
        let mut reqs = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let tokens = self.tokens_for(p, args.max_tokens, (prompts.len() > 1).then_some(i))?;
            let mut req = self.request(tokens, args, &Cancel::new())?;
            req.ignore_eos = ignore_eos;
            reqs.push(req);
        }
        let start = Instant::now();
        let outputs = self
            .scheduler
            .generate_batch(reqs)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.schedule_err(e))?;
        let total = start.elapsed();
        let prefill = outputs.iter().filter_map(|o| o.time_to_first_token).max().unwrap_or_default().min(total);
        let decoded_tokens = outputs.iter().map(|o| o.tokens.len().saturating_sub(1)).sum();
        Ok(BatchOutput { outputs, prefill, decode: total - prefill, decoded_tokens })
    }

    /// The triple for one finished sequence.
    fn generation(&self, prompt_text: String, out: SeqOutput, args: &GenArgs) -> Result<Generation, ModelError> {
        let finish = match out.finish {
            Finish::Cancelled => return Err(ModelError::cancelled(&self.name)),
            Finish::Length => FinishReason::Length,
            Finish::Eos | Finish::StopString => FinishReason::Stop,
        };
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
                "finish_reason": finish.as_str(),
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
/// `min_p` from the extra arguments (a random seed when none is given), with llama-cpp-python's defaults
/// (top-k 40, top-p 0.95, min-p 0.05) and order (the filters, then the temperature).
pub fn sampling_for(args: &GenArgs) -> Result<SamplingParams, String> {
    let mut s = SamplingParams { top_k: 40, top_p: 0.95, min_p: 0.05, ..SamplingParams::greedy() };
    if !args.temperature.is_finite() || args.temperature < 0.0 {
        return Err(format!("temperature must be a number >= 0, not {}", args.temperature));
    }
    s.temperature = args.temperature as f32;
    let number = |key: &str| args.extra.get(key).and_then(Value::as_f64);
    s.seed = match args.extra.get("seed") {
        None | Some(Value::Null) => u64::from(fastrand::u32(..)),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= u64::from(u32::MAX))
            .ok_or_else(|| format!("seed must be an integer from 0 to {}, not {v}", u32::MAX))?,
    };
    if let Some(k) = number("top_k") {
        s.top_k = k.clamp(0.0, f64::from(i32::MAX)) as usize;
    }
    if let Some(p) = number("top_p") {
        s.top_p = p.clamp(0.0, 1.0) as f32;
    }
    if let Some(p) = number("min_p") {
        s.min_p = p.clamp(0.0, 1.0) as f32;
    }
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
        self.generate_stream(messages, args, cancel, &mut |_| {})
    }

    /// Deltas are sent as the scheduler decodes them (raw text, before cleaning).
    fn generate_stream(
        &self,
        messages: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
        sink: &mut dyn FnMut(StreamEvent),
    ) -> Result<Generation, ModelError> {
        let prompt = self.render(messages)?;
        let tokens = self.tokens_for(&prompt, args.max_tokens, None)?;
        let req = self.request(tokens, args, cancel)?;
        let out = self
            .scheduler
            .generate(req, &mut |d| sink(StreamEvent::Delta(d.to_string())))
            .map_err(|e| self.schedule_err(e))?;
        self.generation(prompt, out, args)
    }

    /// Renders and checks every item; the ones that can run join the running batch together.
    fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        let mut results: Vec<Option<Result<Generation, ModelError>>> = Vec::with_capacity(batch.len());
        let mut ready: Vec<(usize, String)> = Vec::new();
        let mut reqs = Vec::new();
        for (i, messages) in batch.iter().enumerate() {
            let prepared = self.render(messages).and_then(|p| {
                let tokens = self.tokens_for(&p, args.max_tokens, Some(i))?;
                Ok((p, self.request(tokens, args, &Cancel::of(cancels, i))?))
            });
            match prepared {
                Ok((prompt, req)) => {
                    ready.push((i, prompt));
                    reqs.push(req);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        for ((i, prompt), out) in ready.into_iter().zip(self.scheduler.generate_batch(reqs)) {
            results[i] = Some(out.map_err(|e| self.schedule_err(e)).and_then(|o| self.generation(prompt, o, args)));
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(ModelError::backend(&self.name, "no result")))).collect()
    }

    fn scheduler_stats(&self) -> Option<SchedulerStats> {
        Some(self.scheduler.stats())
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
