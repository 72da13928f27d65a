//! clem-backends: every backend clemrs knows, one folder each, and the one table that registers them.
//!
//! A backend is a [`Backend`] value: its registry schema (what its entries must hold), the key.json
//! section it reads, and a loader. Adding one is a folder and a line in [`BACKENDS`].

pub mod anthropic;
pub mod azure;
pub mod cohere;
pub mod cpu;
pub mod google;
pub mod http;
pub mod hub;
#[cfg(feature = "huggingface_local")]
pub mod huggingface_local;
pub mod human;
#[cfg(feature = "llamacpp")]
pub mod llamacpp;
pub mod memory;
pub mod mistral;
pub mod mock;
pub mod openai;
pub mod openai_compatible;
pub mod openrouter;
mod planned;
pub mod trust;
pub mod vllm;

use std::io::BufRead;
use std::sync::{Arc, Mutex};

use clem_core::keys::Keys;
use clem_core::registry::{has_errors, Entry, Registry};
use clem_core::schema::{BackendSchema, Severity};
use clem_core::{LoadedModel, Message, Model, ModelError, ModelSpec};

/// Builds a loaded model from its unified spec.
pub type Loader = fn(&ModelSpec, &LoadContext) -> Result<Box<dyn Model>, ModelError>;

/// One backend: its schema, its credentials section, and how to load its models.
#[derive(Clone, Copy)]
pub struct Backend {
    pub schema: BackendSchema,
    /// The key.json section it reads, if it needs credentials.
    pub key_section: Option<&'static str>,
    /// `None` when this build does not include the backend; `unavailable` says why.
    pub loader: Option<Loader>,
    pub unavailable: &'static str,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        self.schema.name
    }
}

#[cfg(feature = "huggingface_local")]
use huggingface_local::BACKEND as HUGGINGFACE_LOCAL;
#[cfg(feature = "llamacpp")]
use llamacpp::BACKEND as LLAMACPP;
#[cfg(not(feature = "huggingface_local"))]
use planned::HUGGINGFACE_LOCAL;
#[cfg(not(feature = "llamacpp"))]
use planned::LLAMACPP;

/// The registration table: one line per backend.
pub static BACKENDS: &[Backend] = &[
    mock::BACKEND,
    human::BACKEND,
    openai::BACKEND,
    openai_compatible::BACKEND,
    openrouter::BACKEND,
    azure::BACKEND,
    anthropic::BACKEND,
    google::BACKEND,
    mistral::BACKEND,
    cohere::BACKEND,
    HUGGINGFACE_LOCAL,
    LLAMACPP,
    vllm::BACKEND,
];

/// The schemas of every registered backend, for `Registry::check`.
pub fn schemas() -> Vec<BackendSchema> {
    BACKENDS.iter().map(|b| b.schema).collect()
}

/// The backend that answers to a name.
pub fn backend(name: &str) -> Option<&'static Backend> {
    BACKENDS.iter().find(|b| b.schema.answers_to(name))
}

/// A function that answers for a scripted player (the game's own replies, as clemcore's `_custom_response`).
pub type Responder = Arc<dyn Fn(&[Message]) -> String + Send + Sync>;

/// How many lanes a local model runs: independent step schedulers, each with its own context and its share of
/// the threads, each sequence given to the one with the least outstanding work. One lane decodes a lone request
/// fastest; a lane per thread serves many at once faster, with no thread barrier inside a step (llama.cpp's CPU
/// threads wait for each other after every operation). Outputs do not depend on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lanes {
    /// One lane with every thread (`generate`, `run`, the Python package).
    #[default]
    One,
    /// One lane per thread (`clem serve`'s default).
    PerThread,
    /// This many, at most one per thread.
    Count(usize),
}

impl Lanes {
    /// Lanes for `threads` threads (at least one, at most `threads`).
    pub fn count(self, threads: usize) -> usize {
        let threads = threads.max(1);
        match self {
            Lanes::One => 1,
            Lanes::PerThread => threads,
            Lanes::Count(n) => n.clamp(1, threads),
        }
    }

    /// The threads of each of `count(threads)` lanes: `threads` shared out, the first lanes taking the rest.
    pub fn split(self, threads: usize) -> Vec<usize> {
        let threads = threads.max(1);
        let n = self.count(threads);
        (0..n).map(|i| threads / n + usize::from(i < threads % n)).collect()
    }
}

/// What a loader may use besides the spec.
#[derive(Clone, Default)]
pub struct LoadContext {
    pub keys: Keys,
    /// Replies for `mock`/`programmatic` when the selector has no `replies` list.
    pub responder: Option<Responder>,
    /// Where a `human` player reads; standard input when `None`.
    pub human_input: Option<Arc<Mutex<dyn BufRead + Send>>>,
    /// Threads for local inference (`None`: the backend's default).
    pub threads: Option<usize>,
    /// How a local model splits its threads among independent schedulers (llamacpp on CPU).
    pub lanes: Lanes,
    /// The registry entry the spec was resolved from (set by [`load_model`]), so a loader can refuse what the
    /// entry's [`Origin`](clem_core::registry::Origin) may not ask for; `None` for a spec built by the caller.
    pub entry: Option<Entry>,
}

/// Resolves a selector and loads its model: reserved names first, then the first unifying registry entry,
/// whose problems (if any are errors) make loading fail with every problem listed; an entry of
/// `./model_registry.json` is refused what [`trust`] keeps for the user's own registry.
pub fn load_model(registry: &Registry, selector: &ModelSpec, ctx: &LoadContext) -> Result<LoadedModel, ModelError> {
    let (spec, entry) = resolve_entry(registry, selector)?;
    match entry {
        Some(entry) => {
            let name = spec.model_name().unwrap_or("?");
            trust::check_entry(entry, registry, &ctx.keys).map_err(|m| ModelError::config(name, m))?;
            load_spec(&spec, &LoadContext { entry: Some(entry.clone()), ..ctx.clone() })
        }
        None => load_spec(&spec, ctx),
    }
}

/// The spec a selector stands for: reserved names as they are, else the unified registry entry; entry errors
/// are reported here.
pub fn resolve(registry: &Registry, selector: &ModelSpec) -> Result<ModelSpec, ModelError> {
    resolve_entry(registry, selector).map(|(spec, _)| spec)
}

/// [`resolve`], with the entry picked (`None` for reserved names).
fn resolve_entry<'r>(
    registry: &'r Registry,
    selector: &ModelSpec,
) -> Result<(ModelSpec, Option<&'r Entry>), ModelError> {
    if selector.is_mock() || selector.is_human() {
        let mut spec = selector.clone().into_map();
        let backend = if selector.is_mock() { "mock" } else { "human" };
        spec.entry("backend").or_insert_with(|| backend.into());
        return Ok((ModelSpec::new(spec), None));
    }
    let name = selector.model_name().unwrap_or("?").to_string();
    let (spec, entry) = registry.select(selector).map_err(|e| ModelError::config(&name, e.to_string()))?;
    let problems = entry.check(&schemas());
    if has_errors(&problems) {
        let lines: Vec<String> =
            problems.iter().filter(|p| p.severity == Severity::Error).map(ToString::to_string).collect();
        return Err(ModelError::config(
            spec.model_name().unwrap_or(&name),
            format!("its registry entry cannot be used:\n  {}", lines.join("\n  ")),
        ));
    }
    Ok((spec, Some(entry)))
}

/// Loads an already resolved spec.
pub fn load_spec(spec: &ModelSpec, ctx: &LoadContext) -> Result<LoadedModel, ModelError> {
    let name = spec.model_name().unwrap_or("?");
    let backend_name = spec.backend().ok_or_else(|| ModelError::config(name, "the entry names no backend"))?;
    let backend = backend(backend_name)
        .ok_or_else(|| ModelError::config(name, format!("backend {backend_name:?} does not exist")))?;
    let loader = backend
        .loader
        .ok_or_else(|| ModelError::config(name, format!("backend {backend_name:?}: {}", backend.unavailable)))?;
    Ok(LoadedModel::new(loader(spec, ctx)?))
}
