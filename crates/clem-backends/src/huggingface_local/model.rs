//! The huggingface_local [`Model`]: renders the chat template with the tokenizer's special tokens, checks the
//! context, generates through the model's step [`Scheduler`] (its [`HfEngine`] slots: a call's sequences join the
//! running batch and leave it as each ends, and text streams as it is decoded), cleans the output, and records
//! what clemcore's huggingface_local backend records.
//!
//! Recorded objects, as clemcore: the prompt is `{inputs, max_new_tokens, temperature}` where `inputs` is the
//! decoded prompt tokens (with the batch's padding, as `batch_decode` gives it); the response is
//! `{"response": <decoded prompt + output, special tokens kept>}`, plus `cot_content` with `cot_output`.
//!
//! Usage (the `Generation`'s only: clemcore records none): the rendered prompt's tokens (no padding), and the
//! generated ids without the EOS that stopped them, as the llamacpp backend counts; cleaning does not change
//! the counts.

use std::path::PathBuf;
use std::sync::Arc;

use clem_core::cleaning::Cleaner;
use clem_core::hf::TokenizerFiles;
use clem_core::message::messages_to_json;
use clem_core::template::{ChatTemplate, RenderOptions};
use clem_core::{
    BatchMode, Cancel, ContextExceeded, FinishReason, GenArgs, Generation, Message, Model, ModelError, ModelSpec, Usage,
};
use serde_json::{json, Map, Value};

use super::causal_lm::CausalLm;
use super::config::{GenerationConfig, ModelConfig};
use super::device::Placement;
use super::files::{self, MemoryNeed};
use super::generate::{RowOutput, Sampling, Timings};
use super::slots::HfEngine;
use super::tokenizer::HfTokenizer;
use super::weights::SafetensorsFiles;
use super::Settings;
use crate::LoadContext;
use clem_core::schedule::{
    Finish, SamplingParams, ScheduleError, Scheduler, SchedulerConfig, SchedulerStats, SeqOutput, SeqRequest,
};
use clem_core::StreamEvent;

/// A loaded Hugging Face model.
pub struct HfLocalModel {
    spec: ModelSpec,
    name: String,
    dir: PathBuf,
    model: Arc<CausalLm>,
    tokenizer: Arc<HfTokenizer>,
    template: ChatTemplate,
    template_vars: Map<String, Value>,
    cleaner: Cleaner,
    settings: Settings,
    context_size: u64,
    eos_ids: Vec<u32>,
    pad_id: u32,
    top_p: f64,
    cot_output: bool,
    /// Runs every generation: the model's slots on a thread of their own, stepping the running batch.
    scheduler: Scheduler,
}

impl HfLocalModel {
    /// Resolves the folder, checks the entry and the memory, and loads the model on the device the entry's
    /// `model_config.device` names.
    pub fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<HfLocalModel, ModelError> {
        Self::load_placed(spec, ctx, None)
    }

    /// [`HfLocalModel::load`] on `placement`, whatever the entry says (tests run the GPU's candle path on the CPU).
    pub fn load_on(spec: &ModelSpec, ctx: &LoadContext, placement: Placement) -> Result<HfLocalModel, ModelError> {
        Self::load_placed(spec, ctx, Some(placement))
    }

    fn load_placed(
        spec: &ModelSpec,
        ctx: &LoadContext,
        placement: Option<Placement>,
    ) -> Result<HfLocalModel, ModelError> {
        let name = spec.model_name().unwrap_or("?").to_string();
        let config_err = |m: String| ModelError::config(&name, m);
        let settings = Settings::from_spec(spec).map_err(config_err)?;
        let placement = match placement {
            Some(p) => p,
            None => Placement::from_setting(settings.device).map_err(config_err)?,
        };
        let mut cleaner = Cleaner::from_spec(spec).map_err(|e| config_err(e.to_string()))?;
        let token = crate::hub::token_for(spec, &ctx.keys);
        let dir = files::model_dir(&settings.huggingface_id, token).map_err(|e| config_err(e.to_string()))?;
        let mut config = ModelConfig::load(&dir).map_err(|e| config_err(e.to_string()))?;
        let gen_config = GenerationConfig::load(&dir).map_err(|e| config_err(e.to_string()))?;
        let tok_files = TokenizerFiles::load(&dir).map_err(|e| config_err(e.to_string()))?;

        // The template is known before loading, so a bad entry fails before the weights are read.
        let source = if settings.premade_chat_template {
            tok_files.chat_template(None).filter(|t| !t.is_empty()).map(String::from).ok_or_else(|| {
                config_err(format!(
                    "premade_chat_template is true but {} has no chat template (tokenizer_config.json or \
                     chat_template.jinja); set premade_chat_template to false and give custom_chat_template",
                    dir.display()
                ))
            })?
        } else {
            settings.custom_chat_template.clone().unwrap_or_default()
        };
        let template = ChatTemplate::new(&source, &name).map_err(|e| config_err(e.to_string()))?;
        let mut template_vars = tok_files.template_variables();
        template_vars.extend(settings.template_kwargs.clone());

        let context_size = config.context_size.or(settings.registry_context_size).ok_or_else(|| {
            config_err(format!(
                "{}/config.json does not say its context size; set the entry's context_size",
                dir.display()
            ))
        })?;

        let weight_files = files::weight_files(&dir).map_err(|e| config_err(e.to_string()))?;
        let safetensors = SafetensorsFiles::open(&weight_files).map_err(|e| config_err(e.to_string()))?;
        let footprint = safetensors.footprint();
        config.kv_dtype = footprint.matrix_dtype;
        config.compute = placement.compute;
        files::check_memory(
            &MemoryNeed {
                model: &name,
                weights: footprint.loaded_bytes,
                dtype: footprint.matrix_dtype.as_str(),
                kv_bytes_per_token: config.kv_bytes_per_token(),
                tokens: context_size,
                batch: 1,
                work_per_token: (config.vocab_size as u64).saturating_mul(4),
            },
            placement.available_memory(),
        )
        .map_err(|e| ModelError::backend(&name, e))?;

        let clean_up = tok_files.config.get("clean_up_tokenization_spaces").and_then(Value::as_bool).unwrap_or(false);
        let tokenizer = HfTokenizer::load(&dir, clean_up).map_err(|e| config_err(e.to_string()))?;
        let eos_token = tok_files.special_token("eos_token");
        // clemcore: no pad token means the EOS token pads.
        let pad_token = tok_files.special_token("pad_token").or_else(|| eos_token.clone());
        let pad_id = pad_token
            .as_deref()
            .and_then(|t| tokenizer.token_id(t))
            .or(gen_config.pad_token_id)
            .or(config.pad_token_id)
            .unwrap_or(0);
        cleaner.pad_token = pad_token;
        let mut eos_ids = if gen_config.eos_token_ids.is_empty() {
            config.eos_token_ids.clone()
        } else {
            gen_config.eos_token_ids.clone()
        };
        if eos_ids.is_empty() {
            eos_ids.extend(eos_token.as_deref().and_then(|t| tokenizer.token_id(t)));
        }

        if let Some(path) = placement.compute.kernel_path() {
            // The kernels' prefetch distance and block size for this CPU: cached, else measured once (a second).
            clem_kernels::tuning::calibrate(path).map_err(|e| config_err(e.to_string()))?;
        }
        // Matrices stay as stored (f32, bf16 or f16); activations are computed in f32 (see `device`).
        let vb = safetensors.var_builder(&placement.device);
        let model = CausalLm::load(vb, &config).map_err(|e| ModelError::backend(&name, e))?;
        // Never more threads than cores: the workers poll for work during a generation (see crate::cpu).
        let pool = match ctx.threads.or(settings.threads).map(|n| crate::cpu::clamp_threads(n).0) {
            None => None,
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("clem-hf-{i}"))
                    .build()
                    .map_err(|e| ModelError::backend(&name, format!("cannot start {n} threads: {e}")))?,
            )),
        };
        let model = Arc::new(model);
        let tokenizer = Arc::new(tokenizer);
        let schedule = SchedulerConfig {
            max_capacity: usize::try_from(context_size).unwrap_or(usize::MAX),
            ..SchedulerConfig::default()
        };
        let detokenize = {
            let tokenizer = tokenizer.clone();
            Box::new(move |ids: &[u32]| tokenizer.decode_plain(ids).unwrap_or_default())
        };
        let memory = memory_check(&name, model.config(), &placement, schedule.prefill_chunk);
        let engine = HfEngine::new(model.clone(), pool, eos_ids.clone(), detokenize, Some(memory));
        Ok(HfLocalModel {
            spec: spec.clone(),
            name,
            dir,
            model,
            tokenizer,
            template,
            template_vars,
            cleaner,
            settings,
            context_size,
            eos_ids,
            pad_id,
            top_p: gen_config.top_p.unwrap_or(1.0),
            cot_output: spec.config_flag("cot_output"),
            scheduler: Scheduler::new(engine, schedule),
        })
    }

    /// The most tokens one generation may use (prompt + max_tokens).
    pub fn context_size(&self) -> u64 {
        self.context_size
    }

    /// The model folder in use.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The loaded network (for tests and tools that work on token ids and logits).
    pub fn causal_lm(&self) -> &CausalLm {
        &self.model
    }

    /// The RoPE base the model runs with.
    pub fn rope_theta(&self) -> f64 {
        self.model.config().rope_theta
    }

    /// The ids that stop generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The chat template as the model renders it, with the generation prompt.
    pub fn render(&self, messages: &[Message]) -> Result<String, ModelError> {
        let opts = RenderOptions { add_generation_prompt: true, variables: self.template_vars.clone(), now: None };
        let mut prompt = self
            .template
            .render(&messages_to_json(messages), &opts)
            .map_err(|e| ModelError::config(&self.name, e.to_string()))?;
        if let Some(bypass) = &self.settings.cot_bypass {
            prompt.push_str(bypass);
        }
        Ok(prompt)
    }

    /// Tokenizes a rendered prompt and checks it against the context size.
    fn tokens_for(&self, prompt: &str, max_tokens: u32, index: Option<usize>) -> Result<Vec<u32>, ModelError> {
        let tokens = self.tokenizer.encode(prompt).map_err(|e| ModelError::backend(&self.name, e))?;
        if tokens.is_empty() {
            return Err(ModelError::backend(&self.name, "the rendered prompt has no tokens"));
        }
        ContextExceeded::check(&self.name, self.context_size, tokens.len() as u64, max_tokens).map_err(|mut e| {
            e.batch_index = index;
            ModelError::from(e)
        })?;
        Ok(tokens)
    }

    fn sampling(&self, args: &GenArgs) -> Result<Sampling, ModelError> {
        if !args.temperature.is_finite() || args.temperature < 0.0 {
            return Err(ModelError::config(&self.name, format!("temperature must be >= 0, not {}", args.temperature)));
        }
        let seed = match args.extra.get("seed") {
            None | Some(Value::Null) => fastrand::u64(..),
            Some(v) => v.as_u64().ok_or_else(|| {
                ModelError::config(&self.name, format!("seed must be a non-negative integer, not {v}"))
            })?,
        };
        // The request's top_p when it gives one, else generation_config.json's.
        let top_p = match args.extra.get("top_p") {
            None | Some(Value::Null) => self.top_p,
            Some(v) => v.as_f64().filter(|p| *p > 0.0 && *p <= 1.0).ok_or_else(|| {
                ModelError::config(&self.name, format!("top_p must be a number above 0 and at most 1, not {v}"))
            })?,
        };
        Ok(Sampling { temperature: args.temperature, top_p, seed })
    }

    /// The scheduler's request for a prompt: its budget (`max_tokens`, or with `cot_output`, as clemcore, up to
    /// the context size), its sampling (row `row` of a call samples with seed + row: a single run is row 0), the
    /// call's stop strings and the row's flag.
    fn request(&self, prompt: Vec<u32>, args: &GenArgs, sampling: &Sampling, row: usize, cancel: Cancel) -> SeqRequest {
        let budget = match self.cot_output {
            true => self.context_size.saturating_sub(prompt.len() as u64),
            false => u64::from(args.max_tokens),
        };
        SeqRequest {
            prompt,
            max_tokens: u32::try_from(budget).unwrap_or(u32::MAX),
            sampling: SamplingParams {
                temperature: sampling.temperature as f32,
                top_k: 0,
                top_p: sampling.top_p as f32,
                min_p: 0.0,
                seed: sampling.seed.wrapping_add(row as u64),
                // transformers' order: the temperature, then top-p.
                temperature_first: true,
            },
            stop: args.stop.clone(),
            ignore_eos: false,
            cancel,
        }
    }

    /// Generates for token prompts through the scheduler, without cleaning (for benchmarks and tests): `budgets`
    /// per row, `ignore_eos` generates through end tokens (exactly the budget), `cancels[i]` stops row `i`.
    /// Timings: prefill up to the last row's first token, decode the rest.
    pub fn generate_tokens(
        &self,
        prompts: &[Vec<u32>],
        budgets: &[usize],
        args: &GenArgs,
        ignore_eos: bool,
        cancels: &[Cancel],
    ) -> Result<(Vec<RowOutput>, Timings), ModelError> {
        if budgets.len() != prompts.len() {
            let m = format!("{} prompts but {} token budgets", prompts.len(), budgets.len());
            return Err(ModelError::backend(&self.name, m));
        }
        let sampling = self.sampling(args)?;
        let requests = prompts
            .iter()
            .zip(budgets)
            .enumerate()
            .map(|(i, (p, &budget))| SeqRequest {
                max_tokens: u32::try_from(budget).unwrap_or(u32::MAX),
                ignore_eos,
                ..self.request(p.clone(), args, &sampling, i, Cancel::of(cancels, i))
            })
            .collect();
        let clock = std::time::Instant::now();
        let outputs = self.scheduler.generate_batch(requests);
        let wall = clock.elapsed();
        let mut timings = Timings::default();
        let mut rows = Vec::with_capacity(outputs.len());
        for out in outputs {
            let out = out.map_err(|e| ModelError::backend(&self.name, e))?;
            timings.prefill = timings.prefill.max(out.time_to_first_token.unwrap_or_default());
            timings.decode_tokens += out.tokens.len().saturating_sub(1);
            rows.push(row_output(out));
        }
        timings.decode = wall.saturating_sub(timings.prefill);
        Ok((rows, timings))
    }

    /// Token ids of a rendered prompt (for benchmarks).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer.encode(text).map_err(|e| ModelError::backend(&self.name, e))
    }

    /// A finished sequence's triple, or why it has none; `width` and `out_width` as [`Self::generation`].
    fn outcome(
        &self,
        prompt: &[u32],
        out: Result<SeqOutput, ScheduleError>,
        (width, out_width): (usize, usize),
        args: &GenArgs,
    ) -> Result<Generation, ModelError> {
        match out {
            Err(e) => Err(ModelError::backend(&self.name, e)),
            Ok(out) if out.finish == Finish::Cancelled => Err(ModelError::cancelled(&self.name)),
            Ok(out) => self.generation(prompt, &row_output(out), width, out_width, args),
        }
    }

    /// One row's triple. As transformers' `batch_decode` in clemcore: the prompt is padded to the batch width
    /// and the output to the longest output (finished rows continue with padding).
    fn generation(
        &self,
        prompt: &[u32],
        out: &RowOutput,
        width: usize,
        out_width: usize,
        args: &GenArgs,
    ) -> Result<Generation, ModelError> {
        let pad = |n: usize| std::iter::repeat_n(self.pad_id, n);
        let padded: Vec<u32> = if self.settings.left_padding {
            pad(width - prompt.len()).chain(prompt.iter().copied()).collect()
        } else {
            prompt.iter().copied().chain(pad(width - prompt.len())).collect()
        };
        let full: Vec<u32> =
            padded.iter().copied().chain(out.tokens.iter().copied()).chain(pad(out_width - out.tokens.len())).collect();
        let err = |e: super::tokenizer::TokenizerError| ModelError::backend(&self.name, e);
        let prompt_text = self.tokenizer.decode(&padded).map_err(err)?;
        let output_text = self.tokenizer.decode(&full).map_err(err)?;
        // clemcore cuts a chain-of-thought answer to max_tokens by re-tokenizing it.
        let cut = |answer: &str| -> String {
            match self.tokenizer.encode(answer) {
                Ok(ids) if ids.len() > args.max_tokens as usize => {
                    self.tokenizer.decode(&ids[..args.max_tokens as usize]).unwrap_or_else(|_| answer.to_string())
                }
                _ => answer.to_string(),
            }
        };
        let mut cleaned = self
            .cleaner
            .clean(&output_text, &prompt_text, Some(&cut))
            .map_err(|e| ModelError::backend(&self.name, e))?;
        if out.stopped_by_string {
            cleaned.text = clem_core::message::cut_at_stop(&cleaned.text, &args.stop).0.to_string();
        }
        let recorded = json!({
            "inputs": prompt_text,
            "max_new_tokens": args.max_tokens,
            "temperature": args.temperature,
        });
        let generated = out.tokens.len() - usize::from(out.stopped_by_eos && !out.tokens.is_empty());
        let finish =
            if out.stopped_by_eos || out.stopped_by_string { FinishReason::Stop } else { FinishReason::Length };
        Ok(Generation::new(recorded, clem_core::cleaning::response_object(&output_text, &cleaned), cleaned.text)
            .with_usage(Some(Usage::new(prompt.len() as u64, generated as u64)))
            .with_finish(Some(finish)))
    }
}

impl Model for HfLocalModel {
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

    /// The sequence joins the model's running batch; its text reaches `sink` as it is decoded.
    fn generate_stream(
        &self,
        messages: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
        sink: &mut dyn FnMut(StreamEvent),
    ) -> Result<Generation, ModelError> {
        let prompt = self.render(messages)?;
        let tokens = self.tokens_for(&prompt, args.max_tokens, None)?;
        let request = self.request(tokens.clone(), args, &self.sampling(args)?, 0, cancel.clone());
        let out = self.scheduler.generate(request, &mut |delta| sink(StreamEvent::Delta(delta.to_string())));
        let out_width = out.as_ref().map_or(0, |o| o.tokens.len() + usize::from(o.end_token.is_some()));
        self.outcome(&tokens, out, (tokens.len(), out_width), args)
    }

    /// Renders and checks every item; the ones that can run join the model's running batch together, each
    /// leaving it when it ends.
    fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        let mut results: Vec<Option<Result<Generation, ModelError>>> = Vec::with_capacity(batch.len());
        let mut ready: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, messages) in batch.iter().enumerate() {
            match self.render(messages).and_then(|p| self.tokens_for(&p, args.max_tokens, Some(i))) {
                Ok(tokens) => {
                    ready.push((i, tokens));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !ready.is_empty() {
            match self.sampling(args) {
                Ok(sampling) => {
                    let requests: Vec<SeqRequest> = ready
                        .iter()
                        .enumerate()
                        .map(|(row, (i, t))| self.request(t.clone(), args, &sampling, row, Cancel::of(cancels, *i)))
                        .collect();
                    let outputs = self.scheduler.generate_batch(requests);
                    // Recorded as clemcore's batch_decode: prompts padded to the widest, outputs to the longest.
                    let width = ready.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
                    let out_width = outputs
                        .iter()
                        .flatten()
                        .filter(|o| o.finish != Finish::Cancelled)
                        .map(|o| o.tokens.len() + usize::from(o.end_token.is_some()))
                        .max()
                        .unwrap_or(0);
                    for ((i, tokens), out) in ready.iter().zip(outputs) {
                        results[*i] = Some(self.outcome(tokens, out, (width, out_width), args));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for (i, _) in &ready {
                        results[*i] = Some(Err(ModelError::config(&self.name, message.clone())));
                    }
                }
            }
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

/// A finished sequence as a row of [`HfLocalModel::generate_tokens`]: its tokens with the end token that stopped
/// it.
fn row_output(out: SeqOutput) -> RowOutput {
    let mut tokens = out.tokens;
    tokens.extend(out.end_token);
    RowOutput {
        tokens,
        stopped_by_eos: out.finish == Finish::Eos,
        cancelled: out.finish == Finish::Cancelled,
        stopped_by_string: out.finish == Finish::StopString,
    }
}

/// The check before the scheduler lays out `slots` sequences of `capacity` tokens: their KV cache (twice: a
/// cache grows by doubling) and a prefill chunk's attention scores and probabilities per slot.
fn memory_check(name: &str, c: &ModelConfig, placement: &Placement, chunk: usize) -> super::slots::MemoryCheck {
    let (name, placement) = (name.to_string(), placement.clone());
    let (kv, heads, vocab) = (c.kv_bytes_per_token(), c.num_heads as u64, c.vocab_size as u64);
    Box::new(move |slots, capacity| {
        let (slots, capacity) = (slots as u64, capacity as u64);
        let scores = [heads, (chunk as u64).min(capacity), 4 * 2].iter().fold(capacity, |n, &d| n.saturating_mul(d));
        let need = MemoryNeed {
            model: &name,
            weights: 0,
            dtype: "f32",
            kv_bytes_per_token: kv.saturating_mul(2),
            tokens: capacity,
            batch: slots,
            work_per_token: scores.saturating_add(vocab.saturating_mul(4)),
        };
        files::check_memory(&need, placement.available_memory()).map_err(|e| e.to_string())
    })
}
