//! The llama.cpp runtime of one model: loading it, tokenizing, and generating for a batch of prompts as parallel
//! sequences of one llama.cpp context (one batch per step, one sequence id per prompt).
//!
//! Batched results equal single runs at temperature 0, bit for bit. That takes three choices, because llama.cpp's
//! kernels are not batch-invariant otherwise:
//! - every sequence has its own KV stream (`kv_unified = false`), so its cells sit where a single run puts them;
//! - prompts are evaluated one sequence at a time (the way a single run evaluates them); only the decode steps,
//!   where batching pays, run all sequences in one `llama_decode`;
//! - flash attention is off: its CPU kernel switches between a KV-split path (one query token), a tiled path
//!   (many query rows) and a plain one depending on the batch shape, and each rounds differently.
//!
//! The context is kept between calls (its KV cache cleared) and only rebuilt when a call needs more cells per
//! sequence or more sequences than it has, so a call costs what llama.cpp costs.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use clem_core::Cancel;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::gguf::GgufContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

/// Tokens submitted to llama.cpp in one `llama_decode` call.
const N_BATCH: usize = 512;
/// Contexts grow in steps of this many cells (llama.cpp pads the KV cache to 256 anyway).
const CELL_STEP: u32 = 256;
/// Prompts longer than this many bytes are refused before tokenizing (llama.cpp takes an i32 length).
const MAX_PROMPT_BYTES: usize = 1 << 30;

/// What went wrong inside llama.cpp.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("llama.cpp could not be initialised: {0}")]
    Backend(String),
    #[error("llama.cpp could not load {path}{}", last_log())]
    Load { path: String },
    #[error("llama.cpp could not create a context of {n_ctx} tokens for {n_seq} sequences{}", last_log())]
    Context { n_ctx: u32, n_seq: u32 },
    #[error("llama.cpp failed to decode: {message}{}", last_log())]
    Decode { message: String },
    #[error("the prompt is {0} bytes long, more than llama.cpp takes")]
    PromptTooLong(usize),
    #[error("the prompt is empty after tokenization")]
    EmptyPrompt,
}

// ------------------------------------------------------------------------------------------------
// Process-wide llama.cpp state
// ------------------------------------------------------------------------------------------------

/// llama.cpp's backend may be initialised once per process.
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The last error lines llama.cpp logged, for error messages (its log is otherwise silent).
static LOG_TAIL: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

fn backend() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            install_log_handler();
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

/// Whether this build of llama.cpp can offload layers to a GPU.
pub fn supports_gpu() -> Result<bool, EngineError> {
    Ok(backend()?.supports_gpu_offload())
}

/// Routes llama.cpp's log into [`LOG_TAIL`] (warnings and errors), and to stderr when `CLEM_LLAMA_LOG` is set.
fn install_log_handler() {
    // SAFETY: the callback is a plain function valid for the whole process and ignores the user data pointer.
    unsafe { llama_cpp_sys_2::llama_log_set(Some(log_callback), std::ptr::null_mut()) }
}

unsafe extern "C" fn log_callback(level: llama_cpp_sys_2::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that lives for the duration of the call.
    let line = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if std::env::var_os("CLEM_LLAMA_LOG").is_some() {
        eprint!("{line}");
    }
    if level == llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR || level == llama_cpp_sys_2::GGML_LOG_LEVEL_WARN {
        if let Ok(mut tail) = LOG_TAIL.lock() {
            let line = line.trim();
            if !line.is_empty() {
                if tail.len() == 4 {
                    tail.pop_front();
                }
                tail.push_back(line.to_string());
            }
        }
    }
}

/// `": <last log lines>"`, or nothing when llama.cpp said nothing.
fn last_log() -> String {
    match LOG_TAIL.lock() {
        Ok(mut tail) if !tail.is_empty() => {
            let lines: Vec<String> = tail.drain(..).collect();
            format!(" (llama.cpp: {})", lines.join(" / "))
        }
        _ => String::new(),
    }
}

// ------------------------------------------------------------------------------------------------
// GGUF metadata, read before loading
// ------------------------------------------------------------------------------------------------

/// The metadata of a GGUF file that matters before loading it.
#[derive(Clone, Debug, Default)]
pub struct GgufInfo {
    pub architecture: Option<String>,
    pub context_length: Option<u64>,
    pub block_count: Option<u64>,
    pub embedding_length: Option<u64>,
    pub head_count: Option<u64>,
    pub head_count_kv: Option<u64>,
    pub key_length: Option<u64>,
    pub value_length: Option<u64>,
    pub chat_template: Option<String>,
    pub has_bos_id: bool,
    pub has_eos_id: bool,
}

impl GgufInfo {
    /// Reads the header of a GGUF file; `None` when it is not one.
    pub fn read(path: &Path) -> Option<GgufInfo> {
        // The gguf reader needs no backend, but llama.cpp's log handler should be in place first.
        let _ = backend();
        let ctx = GgufContext::from_file(path)?;
        let uint = |key: &str| -> Option<u64> {
            let idx = ctx.find_key(key);
            if idx < 0 {
                return None;
            }
            // Reading a value as the wrong type aborts inside llama.cpp: check the type first.
            match ctx.kv_type(idx) {
                llama_cpp_sys_2::GGUF_TYPE_UINT32 => Some(u64::from(ctx.val_u32(idx))),
                llama_cpp_sys_2::GGUF_TYPE_INT32 => u64::try_from(ctx.val_i32(idx)).ok(),
                llama_cpp_sys_2::GGUF_TYPE_UINT64 => Some(ctx.val_u64(idx)),
                _ => None,
            }
        };
        let string = |key: &str| -> Option<String> {
            let idx = ctx.find_key(key);
            (idx >= 0 && ctx.kv_type(idx) == llama_cpp_sys_2::GGUF_TYPE_STRING)
                .then(|| ctx.val_str(idx).map(String::from))
                .flatten()
        };
        let architecture = string("general.architecture");
        let arch = architecture.clone().unwrap_or_default();
        Some(GgufInfo {
            context_length: uint(&format!("{arch}.context_length")),
            block_count: uint(&format!("{arch}.block_count")),
            embedding_length: uint(&format!("{arch}.embedding_length")),
            head_count: uint(&format!("{arch}.attention.head_count")),
            head_count_kv: uint(&format!("{arch}.attention.head_count_kv")),
            key_length: uint(&format!("{arch}.attention.key_length")),
            value_length: uint(&format!("{arch}.attention.value_length")),
            chat_template: string("tokenizer.chat_template"),
            has_bos_id: ctx.find_key("tokenizer.ggml.bos_token_id") >= 0,
            has_eos_id: ctx.find_key("tokenizer.ggml.eos_token_id") >= 0,
            architecture,
        })
    }

    /// Bytes of an f16 KV cache for `n_ctx` cells (an upper bound when the head layout is unknown).
    pub fn kv_cache_bytes(&self, n_ctx: u64) -> u64 {
        let n_embd = self.embedding_length.unwrap_or(4096);
        let heads = self.head_count.unwrap_or(1).max(1);
        let kv_heads = self.head_count_kv.unwrap_or(heads).max(1);
        let head_dim = n_embd / heads;
        let k = self.key_length.unwrap_or(head_dim) * kv_heads;
        let v = self.value_length.unwrap_or(head_dim) * kv_heads;
        let layers = self.block_count.unwrap_or(32);
        (k + v).saturating_mul(layers).saturating_mul(n_ctx).saturating_mul(2)
    }
}

// ------------------------------------------------------------------------------------------------
// The engine
// ------------------------------------------------------------------------------------------------

/// The KV cache and scratch buffers of a model, kept between calls.
struct Slot<'m> {
    ctx: LlamaContext<'m>,
    /// KV cells of each sequence's stream.
    per_seq: u32,
    n_seq: u32,
}

self_cell::self_cell!(
    /// A loaded model and the context that borrows it.
    struct ModelCell {
        owner: LlamaModel,
        #[covariant]
        dependent: OptionalSlot,
    }
);

type OptionalSlot<'m> = Option<Slot<'m>>;

/// How to pick each next token.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    pub seed: u32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    /// Keep generating through end-of-generation tokens (benchmarks that need exactly max_tokens).
    pub ignore_eos: bool,
    /// Stop strings: a sequence ends when its text contains one, and its text is cut before it.
    pub stop: Vec<String>,
}

impl Sampling {
    pub fn greedy() -> Sampling {
        Sampling { temperature: 0.0, seed: 0, top_k: 40, top_p: 0.95, min_p: 0.05, ignore_eos: false, stop: Vec::new() }
    }

    fn sampler(&self) -> LlamaSampler {
        if self.temperature <= 0.0 {
            return LlamaSampler::greedy();
        }
        // llama-cpp-python's default order and values (what clemcore samples with).
        LlamaSampler::chain_simple([
            LlamaSampler::top_k(self.top_k),
            LlamaSampler::top_p(self.top_p, 1),
            LlamaSampler::min_p(self.min_p, 1),
            LlamaSampler::temp(self.temperature),
            LlamaSampler::dist(self.seed),
        ])
    }
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token came.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The caller's [`Cancel`] flag took it out of the batch.
    Cancelled,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// One sequence's result.
#[derive(Clone, Debug)]
pub struct SeqOutput {
    /// The generated tokens, without the end-of-generation token.
    pub tokens: Vec<LlamaToken>,
    /// The generated text (special tokens not rendered, as llama-cpp-python's completion text).
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
}

/// A batch's results and where the time went.
#[derive(Clone, Debug)]
pub struct BatchOutput {
    pub outputs: Vec<SeqOutput>,
    /// Evaluating the prompts (and sampling each first token).
    pub prefill: Duration,
    /// Every later step.
    pub decode: Duration,
    /// Tokens evaluated in the decode steps (one per active sequence per step).
    pub decoded_tokens: usize,
}

/// A loaded model with its llama.cpp context.
pub struct Engine {
    cell: Mutex<ModelCell>,
    threads: i32,
    /// The largest context one sequence may use (prompt + new tokens).
    pub n_ctx_train: u32,
}

impl Engine {
    /// Loads a GGUF (the first part of a split one) with `n_gpu_layers` layers on the GPU.
    pub fn load(path: &Path, n_gpu_layers: u32, threads: usize) -> Result<Engine, EngineError> {
        let backend = backend()?;
        let params = LlamaModelParams::default().with_n_gpu_layers(n_gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|_| EngineError::Load { path: path.display().to_string() })?;
        let n_ctx_train = model.n_ctx_train();
        Ok(Engine {
            cell: Mutex::new(ModelCell::new(model, |_| None)),
            threads: i32::try_from(threads.max(1)).unwrap_or(1),
            n_ctx_train,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ModelCell> {
        // A panic while holding the lock leaves nothing half-done that matters: the context is cleared per call.
        self.cell.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tokenizes a rendered prompt: special tokens parsed, BOS added only when the model asks for it and the
    /// text does not already start with it.
    pub fn tokenize(&self, text: &str) -> Result<Vec<LlamaToken>, EngineError> {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(EngineError::PromptTooLong(text.len()));
        }
        let cell = self.lock();
        let vocab = cell.borrow_owner().vocab();
        let mut tokens = vocab.tokenize(text.as_bytes(), false, true);
        let bos = vocab.bos();
        if vocab.should_add_bos() && bos.0 >= 0 && tokens.first() != Some(&bos) {
            tokens.insert(0, bos);
        }
        Ok(tokens)
    }

    /// The text of a token id as the vocabulary stores it (`<|im_start|>`), as llama-cpp-python's
    /// `token_get_text`.
    pub fn token_text(&self, kind: SpecialToken) -> Option<String> {
        let cell = self.lock();
        special_text(cell.borrow_owner(), kind)
    }

    /// Generates up to `max_tokens` for each prompt, all prompts as parallel sequences of one context.
    /// Each prompt must fit: prompt tokens + max_tokens <= n_ctx_train (the caller checks). A sequence whose
    /// flag in `cancels` is set leaves at the next step.
    pub fn generate(
        &self,
        prompts: &[Vec<LlamaToken>],
        max_tokens: u32,
        sampling: &Sampling,
        cancels: &[Cancel],
    ) -> Result<BatchOutput, EngineError> {
        if prompts.is_empty() {
            return Ok(BatchOutput {
                outputs: Vec::new(),
                prefill: Duration::ZERO,
                decode: Duration::ZERO,
                decoded_tokens: 0,
            });
        }
        let mut cell = self.lock();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) as u64 + u64::from(max_tokens);
        let per_seq = u32::try_from(longest.div_ceil(u64::from(CELL_STEP)) * u64::from(CELL_STEP))
            .map_err(|_| EngineError::Context { n_ctx: u32::MAX, n_seq: prompts.len() as u32 })?
            .max(CELL_STEP);
        let n_seq = u32::try_from(prompts.len()).unwrap_or(u32::MAX).max(1);
        let threads = self.threads;
        let mut failure = None;
        cell.with_dependent_mut(|model, slot| {
            let fits = slot.as_ref().is_some_and(|s| s.per_seq >= per_seq && s.n_seq >= n_seq);
            if !fits {
                // Sized to this call only (a long prompt after a wide batch must not get both); the old cache is
                // freed first.
                *slot = None;
                match new_context(model, per_seq, n_seq, threads) {
                    Ok(ctx) => *slot = Some(Slot { ctx, per_seq, n_seq }),
                    Err(e) => failure = Some(e),
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let mut result = Err(EngineError::Context { n_ctx: per_seq.saturating_mul(n_seq), n_seq });
        cell.with_dependent_mut(|model, slot| {
            if let Some(slot) = slot.as_mut() {
                slot.ctx.clear_kv_cache();
                result = run_batch(model, &mut slot.ctx, prompts, max_tokens, sampling, cancels);
            }
        });
        result
    }
}

/// Which special token.
#[derive(Clone, Copy, Debug)]
pub enum SpecialToken {
    Bos,
    Eos,
}

fn special_text(model: &LlamaModel, kind: SpecialToken) -> Option<String> {
    let vocab = model.vocab();
    let token = match kind {
        SpecialToken::Bos => vocab.bos(),
        SpecialToken::Eos => vocab.eos(),
    };
    if token.0 < 0 || token.0 >= vocab.n_tokens() {
        return None;
    }
    vocab.text(token).map(|t| t.to_string_lossy().into_owned())
}

/// The texts of a GGUF's BOS and EOS tokens, read from its vocabulary alone (no weights are loaded).
pub fn vocab_special_texts(path: &Path) -> Result<(Option<String>, Option<String>), EngineError> {
    let backend = backend()?;
    let params = LlamaModelParams::default().with_vocab_only(true);
    let model = LlamaModel::load_from_file(backend, path, &params)
        .map_err(|_| EngineError::Load { path: path.display().to_string() })?;
    Ok((special_text(&model, SpecialToken::Bos), special_text(&model, SpecialToken::Eos)))
}

/// A context of `n_seq` KV streams of `per_seq` cells each (see the module doc for why these settings).
fn new_context<'m>(
    model: &'m LlamaModel,
    per_seq: u32,
    n_seq: u32,
    threads: i32,
) -> Result<LlamaContext<'m>, EngineError> {
    let backend = backend()?;
    let n_ctx = per_seq.saturating_mul(n_seq);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(N_BATCH as u32)
        .with_n_ubatch(N_BATCH as u32)
        .with_n_seq_max(n_seq)
        .with_kv_unified(false)
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    model.new_context(backend, params).map_err(|_| EngineError::Context { n_ctx, n_seq })
}

/// Per-sequence generation state.
struct Seq {
    sampler: LlamaSampler,
    /// Position of the next token to evaluate.
    pos: i32,
    tokens: Vec<LlamaToken>,
    finish: Option<Finish>,
    /// The token sampled last, to be evaluated in the next step.
    pending: Option<LlamaToken>,
    /// Where this sequence's logits are in the last decoded batch.
    logits_at: Option<i32>,
    /// The text so far, kept only when there are stop strings to look for.
    text: Vec<u8>,
}

fn decode_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Decode { message: e.to_string() }
}

fn run_batch(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    prompts: &[Vec<LlamaToken>],
    max_tokens: u32,
    sampling: &Sampling,
    cancels: &[Cancel],
) -> Result<BatchOutput, EngineError> {
    let vocab = model.vocab();
    let cancelled = |id: usize| Cancel::of(cancels, id).is_cancelled();
    let mut seqs: Vec<Seq> = prompts
        .iter()
        .map(|_| Seq {
            sampler: sampling.sampler(),
            pos: 0,
            tokens: Vec::new(),
            finish: (max_tokens == 0).then_some(Finish::Length),
            pending: None,
            logits_at: None,
            text: Vec::new(),
        })
        .collect();
    let longest_stop = sampling.stop.iter().map(String::len).max().unwrap_or(0);
    if prompts.iter().any(Vec::is_empty) {
        return Err(EngineError::EmptyPrompt);
    }
    // Every token belongs to exactly one sequence.
    let mut batch = LlamaBatch::new(N_BATCH, 1);

    // Sample the next token of every sequence whose logits the last decode produced.
    let sample_ready = |seqs: &mut [Seq], ctx: &LlamaContext<'_>| {
        for seq in seqs.iter_mut() {
            let Some(at) = seq.logits_at.take() else { continue };
            let token = seq.sampler.sample(ctx, at);
            if vocab.is_eog(token) && !sampling.ignore_eos {
                seq.finish = Some(Finish::Stop);
            } else {
                seq.tokens.push(token);
                if longest_stop > 0 {
                    // Only the new piece and the bytes a stop string could share with it need looking at.
                    let before = seq.text.len();
                    vocab.token_to_piece_into(token, &mut seq.text, false, None);
                    let from = before.saturating_sub(longest_stop);
                    let tail = &seq.text[from..];
                    let hit =
                        sampling.stop.iter().any(|s| !s.is_empty() && tail.windows(s.len()).any(|w| w == s.as_bytes()));
                    if hit {
                        seq.finish = Some(Finish::Stop);
                        continue;
                    }
                }
                if seq.tokens.len() >= max_tokens as usize {
                    seq.finish = Some(Finish::Length);
                } else {
                    seq.pending = Some(token);
                }
            }
        }
    };

    // Prefill: one sequence at a time, in chunks of N_BATCH, logits only for the prompt's last token.
    let started = Instant::now();
    if max_tokens > 0 {
        for (id, prompt) in prompts.iter().enumerate() {
            if cancelled(id) {
                seqs[id].finish = Some(Finish::Cancelled);
                continue;
            }
            for (chunk_no, chunk) in prompt.chunks(N_BATCH).enumerate() {
                batch.clear();
                let offset = chunk_no * N_BATCH;
                for (i, &token) in chunk.iter().enumerate() {
                    let pos = offset + i;
                    let last = pos + 1 == prompt.len();
                    batch.add(token, pos as i32, &[id as i32], last).map_err(decode_err)?;
                }
                ctx.decode(&mut batch).map_err(decode_err)?;
            }
            seqs[id].logits_at = Some(batch.n_tokens() - 1);
            seqs[id].pos = prompt.len() as i32;
            sample_ready(&mut seqs, &*ctx);
        }
    }
    let prefill = started.elapsed();

    // Decode: one token per unfinished sequence per step, all in one batch.
    let started = Instant::now();
    let mut decoded_tokens = 0;
    loop {
        batch.clear();
        for (id, seq) in seqs.iter_mut().enumerate() {
            if seq.finish.is_some() {
                continue;
            }
            if cancelled(id) {
                seq.finish = Some(Finish::Cancelled);
                continue;
            }
            let Some(token) = seq.pending.take() else { continue };
            batch.add(token, seq.pos, &[id as i32], true).map_err(decode_err)?;
            seq.logits_at = Some(batch.n_tokens() - 1);
            seq.pos += 1;
        }
        if batch.n_tokens() == 0 {
            break;
        }
        decoded_tokens += batch.n_tokens() as usize;
        ctx.decode(&mut batch).map_err(decode_err)?;
        sample_ready(&mut seqs, &*ctx);
    }
    let decode = started.elapsed();

    let outputs = seqs
        .into_iter()
        .zip(prompts)
        .map(|(seq, prompt)| {
            let mut bytes = Vec::new();
            for &t in &seq.tokens {
                vocab.token_to_piece_into(t, &mut bytes, false, None);
            }
            let text = String::from_utf8_lossy(&bytes);
            SeqOutput {
                // As llama-cpp-python: the text ends before the stop string that ended it.
                text: clem_core::message::cut_at_stop(&text, &sampling.stop).0.to_string(),
                tokens: seq.tokens,
                finish: seq.finish.unwrap_or(Finish::Length),
                prompt_tokens: prompt.len(),
            }
        })
        .collect();
    Ok(BatchOutput { outputs, prefill, decode, decoded_tokens })
}
