//! clem-serve: any clemrs model behind an OpenAI-compatible HTTP server (`clem serve`).
//!
//! Routes: `POST /v1/chat/completions` (plain and `stream: true` SSE), `GET /v1/models`, `GET /health`.
//! Replies are the backend's cleaned `response_text`. Local models (`BatchMode::ForwardPass`) get a batching
//! worker ([`batcher`]); other models run each request on the blocking pool (remote backends are I/O bound).
//! Limits: body size (413), `max_tokens` cap (400), concurrent requests (503 + `Retry-After`), `--api-key` (401).

mod api;
mod batcher;
mod error;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clem_core::{BatchMode, LoadedModel};
use serde_json::json;
use tokio::sync::{oneshot, Semaphore};

pub use api::{parse_chat, ChatRequest};
pub use batcher::Stats;
pub use error::{ApiError, ServeError};

/// The server's limits and defaults.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Clients must send `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// Most requests in one forward pass of a local model (1 = one at a time).
    pub max_batch: usize,
    /// How long a local model's worker waits for more requests after the first one.
    pub batch_window: Duration,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_cap: u32,
    /// `max_tokens` when a request gives none (clemcore's default).
    pub default_max_tokens: u32,
    /// `temperature` when a request gives none (clemcore's default, not OpenAI's 1.0: runs stay reproducible).
    pub default_temperature: f64,
    pub max_body_bytes: usize,
    /// Requests in flight (queued or generating) across all models; more get 503.
    pub max_concurrent: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            api_key: None,
            max_batch: 8,
            batch_window: Duration::from_millis(2),
            max_tokens_cap: 4096,
            default_max_tokens: 300,
            default_temperature: 0.0,
            max_body_bytes: 4 << 20,
            max_concurrent: 256,
        }
    }
}

struct Served {
    name: String,
    model: Arc<LoadedModel>,
    batcher: Option<batcher::Batcher>,
}

struct AppState {
    config: ServeConfig,
    models: Vec<Served>,
    permits: Arc<Semaphore>,
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
            served.push(Served { name, model, batcher });
        }
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Ok(App { state: Arc::new(AppState { config, models: served, permits, started: now() }) })
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

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: &App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, app.router()).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    // Two waiters racing to one channel (tokio's `select!` needs the `macros` feature this crate avoids).
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
    let _permit =
        state.permits.clone().try_acquire_owned().map_err(|_| ApiError::overloaded(state.config.max_concurrent))?;
    let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
        // axum reports an exceeded limit as a wrapped `LengthLimitError`; anything else is a broken upload.
        if format!("{e:?}").contains("LengthLimit") {
            ApiError::too_large(limit)
        } else {
            ApiError::invalid(None, format!("could not read the request body: {e}"))
        }
    })?;
    let request = api::parse_chat(&bytes, &state.config)?;
    let served = state
        .models
        .iter()
        .find(|s| s.name == request.model)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    let generation = match &served.batcher {
        Some(b) => {
            let (tx, rx) = oneshot::channel();
            b.submit(batcher::Job { messages: request.messages, args: request.args, reply: tx })
                .ok_or_else(|| ApiError::internal("the model's worker has stopped"))?;
            rx.await.map_err(|_| ApiError::internal("the model's worker dropped the request"))?
        }
        None => {
            let model = served.model.clone();
            let (messages, args) = (request.messages, request.args);
            tokio::task::spawn_blocking(move || model.generate_response(&messages, &args))
                .await
                .map_err(|_| ApiError::internal("the backend panicked"))?
        }
    }
    .map_err(|e| ApiError::from_model(&e))?;
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

async fn health(State(state): State<Arc<AppState>>) -> Response {
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
