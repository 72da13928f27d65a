//! clem-serve: any clemrs model behind an OpenAI-compatible HTTP server (`clem serve`).
//!
//! Routes: `POST /v1/chat/completions` (plain and `stream: true` SSE), `GET /v1/models`, `GET /health`.
//! Replies are the backend's cleaned `response_text`. Local models (`BatchMode::ForwardPass`) get a batching
//! worker ([`batcher`]); other models run each request on the blocking pool (remote backends are I/O bound).
//!
//! Limits, each with a `ServeConfig` field and a `clem serve` flag: header read timeout and open connections
//! ([`listen`]); body read timeout (408), body size (413) and bytes of bodies being received at once (503), all
//! before a request takes a concurrency slot; `max_tokens` cap (400); concurrent requests (503 +
//! `Retry-After`); `--api-key` (401; `/health` without it says only `{"status": "ok"}`). Images only as `data:`
//! or `http(s)` URLs ([`images`]). A client that disconnects cancels its request (its handler's future is
//! dropped, and with it a guard that sets the request's `Cancel`); shutdown drains within a deadline, then
//! cancels the rest ([`inflight`]). Model failures reach clients as a short, escaped message, never a provider's
//! raw body.

mod api;
mod batcher;
mod error;
mod images;
mod inflight;
mod listen;
mod validate;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clem_core::{BatchMode, Cancel, LoadedModel};
use serde_json::json;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub use api::{parse_chat, ChatRequest};
pub use batcher::Stats;
pub use error::{ApiError, ServeError};
pub use images::is_public;
pub use listen::raise_fd_limit;

/// The server's limits and defaults.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Clients must send `Authorization: Bearer KEY` when set (an empty key is refused by [`App::new`]).
    pub api_key: Option<String>,
    /// Most requests in one forward pass of a local model (1 = one at a time).
    pub max_batch: usize,
    /// How long a local model's worker waits for more requests after the first one.
    pub batch_window: Duration,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_cap: u32,
    /// `max_tokens` when a request gives none (clemcore's default).
    pub default_max_tokens: u32,
    /// `temperature` when a request gives none: OpenAI's 1.0, as clients written for OpenAI expect.
    pub default_temperature: f64,
    pub max_body_bytes: usize,
    /// Requests in flight (queued or generating) across all models; more get 503.
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
            max_batch: 8,
            batch_window: Duration::from_millis(2),
            max_tokens_cap: 4096,
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
    images: images::Policy,
}

struct AppState {
    config: ServeConfig,
    models: Vec<Served>,
    permits: Arc<Semaphore>,
    body_budget: Arc<Semaphore>,
    inflight: Arc<inflight::Inflight>,
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
            let batcher = match model.batch_mode() {
                BatchMode::ForwardPass => {
                    Some(batcher::Batcher::start(model.clone(), config.max_batch, config.batch_window)?)
                }
                _ => None,
            };
            let images = images::Policy::of(model.spec());
            served.push(Served { name, model, batcher, images });
        }
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        // At least one whole body fits, or large requests could never be read.
        let budget = config.max_body_buffer_bytes.max(config.max_body_bytes).clamp(1, Semaphore::MAX_PERMITS);
        let body_budget = Arc::new(Semaphore::new(budget));
        let state = AppState { config, models: served, permits, body_budget, inflight: Arc::default(), started: now() };
        Ok(App { state: Arc::new(state) })
    }

    pub fn model_names(&self) -> Vec<String> {
        self.state.models.iter().map(|s| s.name.clone()).collect()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .route("/health", get(health))
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

async fn chat(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match chat_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    state.authorize(req.headers())?;
    let limit = state.config.max_body_bytes;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    // The body is read before a concurrency slot is taken: slow uploads must not hold the slots.
    let (bytes, received) = read_body(state, req.into_body()).await?;
    let mut request = api::parse_chat(&bytes, &state.config)?;
    drop(bytes);
    let served = state
        .models
        .iter()
        .find(|s| s.name == request.model)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    served.images.check(&served.name, &request.messages)?;
    validate::sampling_for_model(served.model.spec(), &served.name, &request.sampling, &mut request.args)?;
    let slot =
        state.permits.clone().try_acquire_owned().map_err(|_| ApiError::overloaded(state.config.max_concurrent))?;
    drop(received);
    // Dropping this handler's future (the client went away, or shutdown gave up on it) cancels the request.
    let cancel = Cancel::new();
    let cancel_on_drop = cancel.on_drop();
    let work = state.inflight.register(&cancel, slot);
    if served.images.inline_only {
        let limits = images::FetchLimits {
            max_bytes: limit,
            timeout: state.config.image_fetch_timeout,
            allow_private: state.config.allow_private_urls,
        };
        images::inline_http_images(&mut request.messages, &limits).await?;
    }
    let generation = match &served.batcher {
        Some(b) => {
            let (tx, rx) = oneshot::channel();
            let job = batcher::Job { messages: request.messages, args: request.args, cancel, reply: tx, work };
            b.submit(job).ok_or_else(|| ApiError::internal("the model's worker has stopped"))?;
            rx.await.map_err(|_| ApiError::internal("the model's worker dropped the request"))?
        }
        None => {
            let model = served.model.clone();
            let (messages, args) = (request.messages, request.args);
            tokio::task::spawn_blocking(move || {
                let _work = work;
                model.generate_response_cancellable(&messages, &args, &cancel)
            })
            .await
            .map_err(|_| ApiError::internal("the backend panicked"))?
        }
    }
    .map_err(|e| ApiError::from_model(&e))?;
    cancel_on_drop.disarm();
    let id = api::completion_id();
    let created = now();
    if request.stream {
        let body = api::stream_body(&id, created, &served.name, &generation, request.include_usage);
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
            Body::from(body),
        )
            .into_response());
    }
    Ok(json_response(&api::completion(&id, created, &served.name, &generation)))
}

/// Reads the whole body within `body_read_timeout` and `max_body_bytes`, each chunk counted against the
/// server's budget for bodies being received (given back when the returned permit drops).
async fn read_body(state: &AppState, mut body: Body) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), ApiError> {
    let limit = state.config.max_body_bytes;
    let mut bytes = Vec::new();
    let mut received: Option<OwnedSemaphorePermit> = None;
    let read = async {
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(|e| ApiError::invalid(None, format!("could not read the request body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            if data.len() > limit - bytes.len() {
                return Err(ApiError::too_large(limit));
            }
            let n = u32::try_from(data.len()).map_err(|_| ApiError::too_large(limit))?;
            if n > 0 {
                let more =
                    state.body_budget.clone().try_acquire_many_owned(n).map_err(|_| ApiError::busy_receiving())?;
                match &mut received {
                    Some(held) => held.merge(more),
                    None => received = Some(more),
                }
            }
            bytes.extend_from_slice(&data);
        }
        Ok(())
    };
    tokio::time::timeout(state.config.body_read_timeout, read)
        .await
        .map_err(|_| ApiError::body_timeout(state.config.body_read_timeout))??;
    Ok((bytes, received))
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
    json_response(&json!({"object": "list", "data": data}))
}

/// `{"status": "ok"}`; with a valid key (or when none is required) also the models, batching counters and
/// requests in flight.
async fn health(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if state.authorize(&headers).is_err() {
        return json_response(&json!({"status": "ok"}));
    }
    let models: Vec<_> = state
        .models
        .iter()
        .map(|s| {
            let mut m = json!({"id": s.name, "batching": s.batcher.is_some()});
            if let Some(b) = &s.batcher {
                m["batches"] = json!(b.stats.batches.load(Ordering::Relaxed));
                m["batched_requests"] = json!(b.stats.requests.load(Ordering::Relaxed));
                m["largest_batch"] = json!(b.stats.largest.load(Ordering::Relaxed));
            }
            m
        })
        .collect();
    let in_flight = state.config.max_concurrent.max(1).saturating_sub(state.permits.available_permits());
    json_response(&json!({"status": "ok", "models": models, "in_flight": in_flight}))
}

fn json_response(body: &serde_json::Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
