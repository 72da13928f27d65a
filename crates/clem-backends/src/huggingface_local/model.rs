//! The huggingface_local [`Model`]: renders the chat template with the tokenizer's special tokens, checks the
//! context, generates (a batch as one padded forward pass), cleans the output, and records what clemcore's
//! huggingface_local backend records.
//!
//! Recorded objects, as clemcore: the prompt is `{inputs, max_new_tokens, temperature}` where `inputs` is the
//! decoded prompt tokens (with the batch's padding, as `batch_decode` gives it); the response is
//! `{"response": <decoded prompt + output, special tokens kept>}`, plus `cot_content` with `cot_output`.
//!
//! Usage (the `Generation`'s only: clemcore records none): the rendered prompt's tokens (no padding), and the
//! generated ids without the EOS that stopped them, as the llamacpp backend counts; cleaning does not change
//! the counts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

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
use super::generate::{self, RowOutput, Sampling, Timings};
use super::tokenizer::HfTokenizer;
use super::weights::SafetensorsFiles;
use super::Settings;
use crate::LoadContext;

/// A loaded Hugging Face model.
pub struct HfLocalModel {
    spec: ModelSpec,
    name: String,
    dir: PathBuf,
    model: CausalLm,
    tokenizer: HfTokenizer,
    template: ChatTemplate,
    template_vars: Map<String, Value>,
    cleaner: Cleaner,
    settings: Settings,
    context_size: u64,
    eos_ids: Vec<u32>,
    pad_id: u32,
    top_p: f64,
    cot_output: bool,
    placement: Placement,
    /// This model's threads (`--threads`, else `model_config.threads`); `None`: rayon's global pool, which
    /// `RAYON_NUM_THREADS` sizes (all cores by default).
    pool: Option<rayon::ThreadPool>,
    /// The most KV tokens (rows x length) a call has needed so far (its memory is already checked).
    tokens_checked: AtomicU64,
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
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("clem-hf-{i}"))
                    .build()
                    .map_err(|e| ModelError::backend(&name, format!("cannot start {n} threads: {e}")))?,
            ),
        };
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
            placement,
            pool,
            tokens_checked: AtomicU64::new(0),
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

    /// Each row's token budget: `max_tokens`, or (with `cot_output`, as clemcore) up to the context size.
    fn budgets(&self, prompts: &[Vec<u32>], args: &GenArgs) -> Vec<usize> {
        prompts
            .iter()
            .map(|p| {
                let n = if self.cot_output {
                    self.context_size.saturating_sub(p.len() as u64)
                } else {
                    u64::from(args.max_tokens)
                };
                usize::try_from(n).unwrap_or(usize::MAX)
            })
            .collect()
    }

    /// A batch needs KV cache and attention scores for every row; check memory when it is more than before.
    fn check_batch_memory(&self, prompts: &[Vec<u32>], budgets: &[usize]) -> Result<(), ModelError> {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0) as u64;
        // Saturating: budgets may be as large as a registry's context size says.
        let longest = width.saturating_add(budgets.iter().copied().max().unwrap_or(0) as u64);
        let rows = prompts.len() as u64;
        let tokens = longest.saturating_mul(rows);
        if tokens <= self.tokens_checked.load(Ordering::Relaxed).max(self.context_size) {
            return Ok(());
        }
        let c = self.model.config();
        // Prefill holds scores and probabilities of every head: rows x heads x width^2, twice.
        let scores = [c.num_heads as u64, width, width, 4 * 2].iter().fold(rows, |n, &d| n.saturating_mul(d));
        files::check_memory(
            &MemoryNeed {
                model: &self.name,
                weights: 0,
                dtype: "f32",
                kv_bytes_per_token: c.kv_bytes_per_token().saturating_mul(2),
                tokens: longest,
                batch: rows,
                work_per_token: (scores / rows.max(1)).saturating_add((c.vocab_size as u64).saturating_mul(4)),
            },
            self.placement.available_memory(),
        )
        .map_err(|e| ModelError::backend(&self.name, e))?;
        self.tokens_checked.fetch_max(tokens, Ordering::Relaxed);
        Ok(())
    }

    /// Generates for token prompts as one batch, without cleaning (for benchmarks and tests); `budgets` are
    /// per row, `eos` replaces the model's EOS ids when given (an empty list never stops); `cancels[i]` stops
    /// row `i`.
    pub fn generate_tokens(
        &self,
        prompts: &[Vec<u32>],
        budgets: &[usize],
        args: &GenArgs,
        eos: Option<&[u32]>,
        cancels: &[Cancel],
    ) -> Result<(Vec<RowOutput>, Timings), ModelError> {
        self.check_batch_memory(prompts, budgets)?;
        let sampling = self.sampling(args)?;
        let eos = eos.unwrap_or(&self.eos_ids);
        // A row's generated text is decoded after each token only when there are stop strings to look for.
        let stop = &args.stop;
        let stopped = |tokens: &[u32]| {
            !stop.is_empty()
                && self.tokenizer.decode(tokens).is_ok_and(|text| clem_core::message::cut_at_stop(&text, stop).1)
        };
        generate::on_pool(self.pool.as_ref(), || {
            let device = &self.placement.device;
            generate::generate_until(
                &self.model,
                prompts,
                budgets,
                &sampling,
                eos,
                self.pad_id,
                device,
                cancels,
                &stopped,
            )
        })
        .map_err(|e| ModelError::backend(&self.name, e))
    }

    /// Token ids of a rendered prompt (for benchmarks).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer.encode(text).map_err(|e| ModelError::backend(&self.name, e))
    }

    /// Runs rendered and tokenized rows as one batch and builds each row's triple.
    fn run(
        &self,
        rows: &[(String, Vec<u32>)],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Result<Vec<Result<Generation, ModelError>>, ModelError> {
        let prompts: Vec<Vec<u32>> = rows.iter().map(|(_, t)| t.clone()).collect();
        let budgets = self.budgets(&prompts, args);
        let (outputs, _) = self.generate_tokens(&prompts, &budgets, args, None, cancels)?;
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let out_width = outputs.iter().filter(|o| !o.cancelled).map(|o| o.tokens.len()).max().unwrap_or(0);
        Ok(prompts
            .iter()
            .zip(outputs)
            .map(|(prompt, out)| match out.cancelled {
                true => Err(ModelError::cancelled(&self.name)),
                false => self.generation(prompt, &out, width, out_width, args),
            })
            .collect())
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
        let prompt = self.render(messages)?;
        let tokens = self.tokens_for(&prompt, args.max_tokens, None)?;
        self.run(&[(prompt, tokens)], args, std::slice::from_ref(cancel))?
            .pop()
            .unwrap_or_else(|| Err(ModelError::backend(&self.name, "no output")))
    }

    /// Renders and checks every item; the ones that can run are generated together as one padded batch.
    fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        let mut results: Vec<Option<Result<Generation, ModelError>>> = Vec::with_capacity(batch.len());
        let mut ready: Vec<(usize, (String, Vec<u32>))> = Vec::new();
        for (i, messages) in batch.iter().enumerate() {
            match self.render(messages).and_then(|p| self.tokens_for(&p, args.max_tokens, Some(i)).map(|t| (p, t))) {
                Ok(row) => {
                    ready.push((i, row));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !ready.is_empty() {
            let rows: Vec<(String, Vec<u32>)> = ready.iter().map(|(_, r)| r.clone()).collect();
            let row_cancels: Vec<Cancel> = ready.iter().map(|(i, _)| Cancel::of(cancels, *i)).collect();
            match self.run(&rows, args, &row_cancels) {
                Ok(generations) => {
                    for ((i, _), g) in ready.iter().zip(generations) {
                        results[*i] = Some(g);
                    }
                }
                Err(e) => {
                    // One failure of the shared forward pass fails every item that was in it.
                    let message = e.to_string();
                    for (i, _) in &ready {
                        results[*i] = Some(Err(ModelError::backend(&self.name, message.clone())));
                    }
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(ModelError::backend(&self.name, "no result")))).collect()
    }

    fn batch_mode(&self) -> BatchMode {
        BatchMode::ForwardPass
    }
}
