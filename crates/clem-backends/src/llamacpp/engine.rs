//! The llama.cpp runtime of one model: loading it, tokenizing, its GGUF metadata, and the context settings the
//! step engine (`step.rs`) runs with: one llama.cpp context whose sequences are the scheduler's slots.
//!
//! Batched results equal single runs at temperature 0, bit for bit. That takes three choices, because llama.cpp's
//! kernels are not batch-invariant otherwise:
//! - every sequence has its own KV stream (`kv_unified = false`), so its cells sit where a single run puts them;
//! - prompts are evaluated one sequence at a time, in chunks at fixed offsets (the way a single run evaluates
//!   them); only the decode steps, where batching pays, run all sequences in one `llama_decode`;
//! - flash attention is off: its CPU kernel switches between a KV-split path (one query token), a tiled path
//!   (many query rows) and a plain one depending on the batch shape, and each rounds differently.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::gguf::GgufContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// Tokens submitted to llama.cpp in one `llama_decode` call.
pub(super) const N_BATCH: usize = 512;
/// Contexts grow in steps of this many cells (llama.cpp pads the KV cache to 256 anyway).
pub(super) const CELL_STEP: u32 = 256;
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
    /// A wider KV cache than memory allows.
    #[error("{0}")]
    Memory(String),
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

/// A loaded model: its vocabulary serves callers on any thread; [`Engine::steps`] makes the one step engine that
/// owns its llama.cpp context (see `step.rs`).
pub struct Engine {
    model: Arc<LlamaModel>,
    /// The largest context one sequence may use (prompt + new tokens).
    pub n_ctx_train: u32,
}

impl Engine {
    /// Loads a GGUF (the first part of a split one) with `n_gpu_layers` layers on the GPU.
    pub fn load(path: &Path, n_gpu_layers: u32) -> Result<Engine, EngineError> {
        let backend = backend()?;
        let params = LlamaModelParams::default().with_n_gpu_layers(n_gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|_| EngineError::Load { path: path.display().to_string() })?;
        let n_ctx_train = model.n_ctx_train();
        Ok(Engine { model: Arc::new(model), n_ctx_train })
    }

    /// A step engine over this model on `threads` threads, `width` sequences wide, none longer than `max_cells`;
    /// `afford(cells)` says whether a KV cache of that many cells fits in memory. A model may have several (lanes).
    pub fn steps(
        &self,
        afford: super::step::Afford,
        width: usize,
        max_cells: usize,
        threads: usize,
    ) -> super::step::LlamaSteps {
        let threads = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
        super::step::LlamaSteps::new(self.model.clone(), threads, afford, width, max_cells)
    }

    /// Tokenizes a rendered prompt: special tokens parsed, BOS added only when the model asks for it and the
    /// text does not already start with it.
    pub fn tokenize(&self, text: &str) -> Result<Vec<LlamaToken>, EngineError> {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(EngineError::PromptTooLong(text.len()));
        }
        let vocab = self.model.vocab();
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
        special_text(&self.model, kind)
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
pub(super) fn new_context<'m>(
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
