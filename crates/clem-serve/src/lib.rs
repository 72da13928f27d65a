//! clem-serve: any clemrs model behind an OpenAI-compatible HTTP server (`clem serve`).
//!
//! Routes: `POST /v1/chat/completions` (plain and `stream: true` SSE, `n` choices; [`chat`]), `GET /v1/models`,
//! `GET /health`, `GET /metrics` (Prometheus text; [`metrics`]). Replies are the backend's cleaned
//! `response_text`. Every sequence runs through `LoadedModel::generate_stream`: local models with a step
//! scheduler stream tokens as they are decoded and batch per step by themselves; a local model without one gets
//! a batching worker ([`batcher`]); other models run on the blocking pool (remote backends are I/O bound).
//! Streamed text and the cleaned reply: [`stream`].
//!
//! Limits, each with a `ServeConfig` field and a `clem serve` flag: header read timeout and open connections
//! ([`listen`]); body read timeout (408), body size (413) and bytes of bodies being received at once (503), all
//! before a request takes a concurrency slot; `max_tokens` cap (400); `n` at most `max_n` (400); concurrent
//! sequences (503 + `Retry-After`; a request takes `n`); `--api-key` (401; `/health` without it says only
//! `{"status": "ok"}`; `/metrics` needs it). Images only as `data:` or `http(s)` URLs ([`images`]). A client that
//! disconnects cancels its request, waiting or streaming ([`chat`]); shutdown drains within a deadline, then
//! cancels the rest ([`inflight`]). Model failures reach clients as a short, escaped message, never a provider's
//! raw body.

mod api;
mod batcher;
mod chat;
mod error;
mod images;
mod inflight;
mod listen;
mod metrics;
mod stream;
mod validate;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clem_core::LoadedModel;
use serde_json::json;
use tokio::sync::Semaphore;

pub use api::{parse_chat, ChatRequest};
pub use batcher::Stats;
pub use error::{ApiError, ServeError};
pub use images::is_public;
pub use listen::raise_fd_limit;

/// Requests a local model without a step scheduler batches together unless told otherwise.
pub const DEFAULT_MAX_BATCH: usize = 8;

/// The server's limits and defaults.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Clients must send `Authorization: Bearer KEY` when set (an empty key is refused by [`App::new`]).
    pub api_key: Option<String>,
    /// Most sequences a local model decodes together (1 = one at a time): a model with a step scheduler gets at
    /// most this many at once (the rest wait in the server), a model without one batches up to this many. `None`:
    /// a scheduled model runs as many as its scheduler has slots for, a model without one batches up to
    /// [`DEFAULT_MAX_BATCH`].
    pub max_batch: Option<usize>,
    /// How long a local model's worker waits for more requests after the first one.
    pub batch_window: Duration,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_cap: u32,
    /// Largest `n` (choices per request); each choice is a sequence and takes a concurrency slot.
    pub max_n: u32,
    /// `max_tokens` when a request gives none (clemcore's default).
    pub default_max_tokens: u32,
    /// `temperature` when a request gives none: OpenAI's 1.0, as clients written for OpenAI expect.
    pub default_temperature: f64,
    pub max_body_bytes: usize,
    /// Sequences in flight (queued or generating; a request is `n` of them) across all models; more get 503.
    pub max_concurrent: usize,
    /// Bytes of request bodies being received at once, across connections (at least `max_body_bytes`); more get
    /// 503. Bodies are read before a request takes a concurrency slot, so this is what bounds their memory.
    pub max_body_buffer_bytes: usize,
    /// A connection that has not sent a whole request head within this is closed (idle keep-alive too).
    pub header_read_timeout: Duration,
    /// A request whose body has not fully arrived within this gets 408.
    pub body_read_timeout: Duration,
    /// Open connections; at the cap the server stops accepting until one closes.
    pub max_connections: usize,
    /// On shutdown, how long requests in flight may take to finish before they are cancelled.
    pub shutdown_timeout: Duration,
    /// Let the server fetch images (for providers that take them inline only) from private, loopback and
    /// link-local addresses.
    pub allow_private_urls: bool,
    /// Longest time the server spends fetching one image (its size is capped at `max_body_bytes`).
    pub image_fetch_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            api_key: None,
            max_batch: None,
            batch_window: Duration::from_millis(2),
            max_tokens_cap: 4096,
            max_n: 16,
            default_max_tokens: 300,
            default_temperature: 1.0,
            max_body_bytes: 4 << 20,
            max_concurrent: 256,
            max_body_buffer_bytes: 256 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            shutdown_timeout: Duration::from_secs(10),
            allow_private_urls: false,
            image_fetch_timeout: Duration::from_secs(10),
        }
    }
}

struct Served {
    name: String,
    model: Arc<LoadedModel>,
    batcher: Option<batcher::Batcher>,
    /// For a model with a step scheduler: at most `max_batch` of its sequences submitted at once.
    gate: Option<chat::Gate>,
    images: images::Policy,
}

struct AppState {
    config: ServeConfig,
    models: Vec<Served>,
    permits: Arc<Semaphore>,
    body_budget: Arc<Semaphore>,
    inflight: Arc<inflight::Inflight>,
    metrics: metrics::Metrics,
    started: u64,
}

/// The models and limits a server answers with; [`App::router`] gives the axum router.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl App {
    /// Serves each model under its registry name; local models get a batching worker thread.
    pub fn new(models: Vec<LoadedModel>, config: ServeConfig) -> Result<App, ServeError> {
        if models.is_empty() {
            return Err(ServeError::NoModels);
        }
        if config.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(ServeError::EmptyApiKey);
        }
        let mut served: Vec<Served> = Vec::new();
        for model in models {
            let name = model.name().to_string();
            if served.iter().any(|s| s.name == name) {
                return Err(ServeError::DuplicateModel(name));
            }
            let model = Arc::new(model);
            // A model with a step scheduler batches by itself, per decoding step.
            let batcher = match chat::uses_batcher(&model) {
                true => {
                    let max_batch = config.max_batch.unwrap_or(DEFAULT_MAX_BATCH);
                    Some(batcher::Batcher::start(model.clone(), max_batch, config.batch_window)?)
                }
                false => None,
            };
            let images = images::Policy::of(model.spec());
            // Without `max_batch` the gate only counts, for /health (`max_concurrent` bounds every model already).
            let gate = (batcher.is_none() && model.scheduler_stats().is_some())
                .then(|| chat::Gate::new(config.max_batch.unwrap_or(config.max_concurrent)));
            served.push(Served { name, model, batcher, gate, images });
        }
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        // At least one whole body fits, or large requests could never be read.
        let budget = config.max_body_buffer_bytes.max(config.max_body_bytes).clamp(1, Semaphore::MAX_PERMITS);
        let body_budget = Arc::new(Semaphore::new(budget));
        let metrics = metrics::Metrics::new().map_err(|e| ServeError::Metrics(e.to_string()))?;
        let state = AppState {
            config,
            models: served,
            permits,
            body_budget,
            inflight: Arc::default(),
            metrics,
            started: now(),
        };
        Ok(App { state: Arc::new(state) })
    }

    pub fn model_names(&self) -> Vec<String> {
        self.state.models.iter().map(|s| s.name.clone()).collect()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat::chat))
            .route("/chat/completions", post(chat::chat))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(metrics::metrics))
            .fallback(|req: Request| async move { ApiError::not_found_route(req.uri().path()) })
            .method_not_allowed_fallback(|req: Request| async move {
                ApiError::method_not_allowed(req.method().as_str(), req.uri().path())
            })
            .with_state(self.state.clone())
    }
}

/// Serves until `shutdown` resolves; then stops accepting, lets the requests in flight finish within
/// `shutdown_timeout`, cancels the rest and returns once they have stopped (nothing is sent to a provider after).
pub async fn run(
    listener: tokio::net::TcpListener,
    app: &App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    listen::serve(listener, app.router(), &app.state.config, app.state.inflight.clone(), shutdown).await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    // Two waiters racing to one channel: a waiter whose signal cannot be installed just never sends.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(2);
    let on_ctrl_c = tx.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = on_ctrl_c.send(()).await;
        }
    });
    #[cfg(unix)]
    tokio::spawn(async move {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
            let _ = tx.send(()).await;
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx.recv().await;
}

impl AppState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.config.api_key else { return Ok(()) };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Constant-time comparison: the key is a secret and the server may face a network.
        match given {
            Some(g) if g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0 => {
                Ok(())
            }
            _ => Err(ApiError::unauthorized()),
        }
    }
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = state.authorize(&headers) {
        return e.into_response();
    }
    let data: Vec<_> = state
        .models
        .iter()
        .map(|s| json!({"id": s.name, "object": "model", "created": state.started, "owned_by": "clemrs"}))
        .collect();
    chat::json_response(&json!({"object": "list", "data": data}))
}

/// `{"status": "ok"}`; with a valid key (or when none is required) also the models, batching counters and
/// requests in flight.
async fn health(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if state.authorize(&headers).is_err() {
        return chat::json_response(&json!({"status": "ok"}));
    }
    let models: Vec<_> = state
        .models
        .iter()
        .map(|s| {
            let mut m = json!({"id": s.name, "batching": s.batcher.is_some() || s.gate.is_some()});
            if let Some(g) = &s.gate {
                m["scheduled"] = json!(true);
                m["largest_batch"] = json!(g.largest.load(Ordering::Relaxed));
            }
            if let Some(b) = &s.batcher {
                m["batches"] = json!(b.stats.batches.load(Ordering::Relaxed));
                m["batched_requests"] = json!(b.stats.requests.load(Ordering::Relaxed));
                m["largest_batch"] = json!(b.stats.largest.load(Ordering::Relaxed));
            }
            m
        })
        .collect();
    let in_flight = state.config.max_concurrent.max(1).saturating_sub(state.permits.available_permits());
    chat::json_response(&json!({"status": "ok", "models": models, "in_flight": in_flight}))
}
