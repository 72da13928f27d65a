//! `POST /v1/chat/completions`: a request becomes `n` sequences, each generated through
//! `LoadedModel::generate_stream` (local models with a step scheduler stream their tokens as they are decoded; a
//! local model without one goes through the [`crate::batcher`]); the reply is one `chat.completion` or, with
//! `stream: true`, an SSE stream of chunks sent as the text comes ([`crate::stream`]).
//!
//! Cancellation: every sequence of a request shares one `Cancel`. It is set when the handler's future is dropped
//! (the client left while waiting), when the SSE body is dropped before its end (the client left while
//! streaming), and when a sequence's text has nowhere to go; a scheduled sequence leaves the running batch at the
//! next step. The headers of a stream are sent with the first text (or end) of any sequence, so a request that
//! fails at once (a prompt too long, a backend error) still gets its status code.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use clem_core::model::StreamEvent;
use clem_core::{BatchMode, Cancel, GenArgs, Generation, Message, ModelError};
use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::api;
use crate::error::ApiError;
use crate::inflight::Work;
use crate::metrics::SequenceGauge;
use crate::stream::{self, Holdback, SseBody};
use crate::{batcher, images, now, validate, AppState, Served};

/// What a sequence reports to its request.
enum SeqMsg {
    Text(usize, String),
    Done(usize, Result<Generation, ModelError>),
}

pub(crate) async fn chat(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let response = match chat_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    state.metrics.request(response.status().as_u16());
    response
}

async fn chat_inner(state: &Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let since = Instant::now();
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
    let index = state
        .models
        .iter()
        .position(|s| s.name == request.model)
        .ok_or_else(|| ApiError::model_not_found(&request.model))?;
    let served = &state.models[index];
    served.images.check(&served.name, &request.messages)?;
    validate::sampling_for_model(served.model.spec(), &served.name, &request.sampling, &mut request.args)?;
    // Each of the `n` sequences takes a concurrency slot: `n` cannot be a way around the limit.
    let n = request.n as usize;
    let mut slots = u32::try_from(n)
        .ok()
        .and_then(|k| state.permits.clone().try_acquire_many_owned(k).ok())
        .ok_or_else(|| ApiError::overloaded(state.config.max_concurrent))?;
    drop(received);
    // Dropping this handler's future (the client went away, or shutdown gave up on it) cancels the request.
    let cancel = Cancel::new();
    let cancel_on_drop = cancel.on_drop();
    let mut works: Vec<Work> = Vec::with_capacity(n);
    for _ in 1..n {
        let slot: Option<OwnedSemaphorePermit> = slots.split(1);
        let slot = slot.ok_or_else(|| ApiError::internal("concurrency slots miscounted"))?;
        works.push(state.inflight.register(&cancel, slot));
    }
    works.push(state.inflight.register(&cancel, slots));
    if served.images.inline_only {
        let limits = images::FetchLimits {
            max_bytes: limit,
            timeout: state.config.image_fetch_timeout,
            allow_private: state.config.allow_private_urls,
        };
        images::inline_http_images(&mut request.messages, &limits).await?;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<SeqMsg>();
    for (i, work) in works.into_iter().enumerate() {
        let seq = Sequence {
            index: i,
            messages: request.messages.clone(),
            args: args_for(&request.args, i),
            cancel: cancel.clone(),
            work,
            tx: tx.clone(),
            gauge: state.metrics.sequence(&served.name),
            since,
            state: state.clone(),
            model: index,
        };
        seq.start(served)?;
    }
    drop(tx);
    let id = api::completion_id();
    let created = now();
    let name = served.name.clone();
    // Raw deltas (a scheduled local model) are cleaned by the backend at the end: see `stream`'s rule.
    let raw = served.model.scheduler_stats().is_some();
    let holdback =
        |_| if raw { Holdback::raw(served.model.spec(), &request.args.stop) } else { Holdback::passthrough() };

    if !request.stream {
        let mut done: Vec<Option<Generation>> = vec![None; n];
        while let Some(msg) = rx.recv().await {
            if let SeqMsg::Done(i, result) = msg {
                // One failed sequence fails the request; dropping the guard cancels the others.
                let g = result.map_err(|e| ApiError::from_model(&e))?;
                if let Some(slot) = done.get_mut(i) {
                    *slot = Some(g);
                }
            }
        }
        cancel_on_drop.disarm();
        let gens: Vec<Generation> = done.into_iter().flatten().collect();
        if gens.len() != n {
            return Err(ApiError::internal("a sequence ended without a result"));
        }
        return Ok(json_response(&completion(&id, created, &name, &gens)));
    }

    // Headers go with the first event, so a request that fails at once still gets its status.
    let first = rx.recv().await.ok_or_else(|| ApiError::internal("the model's sequences ended without a result"))?;
    if let SeqMsg::Done(_, Err(e)) = &first {
        return Err(ApiError::from_model(e));
    }
    let (body_tx, body_rx) = mpsc::unbounded_channel::<Bytes>();
    let pump = Pump {
        id,
        created,
        model: name,
        holdbacks: (0..n).map(holdback).collect(),
        usages: Vec::with_capacity(n),
        include_usage: request.include_usage,
        out: body_tx,
        cancel: cancel.clone(),
    };
    tokio::spawn(pump.run(first, rx));
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::new(SseBody::new(body_rx, cancel_on_drop)),
    )
        .into_response())
}

/// Sequence `i`'s arguments: with a `seed`, sequence `i` > 0 gets `seed ^ i` (distinct, reproducible, within the
/// seed's power-of-two range); everything else is the request's.
fn args_for(args: &GenArgs, i: usize) -> GenArgs {
    let mut args = args.clone();
    if i > 0 {
        for key in ["seed", "random_seed"] {
            if let Some(seed) = args.extra.get(key).and_then(Value::as_i64) {
                args.extra.insert(key.to_string(), json!(seed ^ i as i64));
            }
        }
    }
    args
}

/// One sequence of a request, until it is started.
struct Sequence {
    index: usize,
    messages: Vec<Message>,
    args: GenArgs,
    cancel: Cancel,
    work: Work,
    tx: mpsc::UnboundedSender<SeqMsg>,
    gauge: SequenceGauge,
    since: Instant,
    state: Arc<AppState>,
    model: usize,
}

impl Sequence {
    fn start(self, served: &Served) -> Result<(), ApiError> {
        match &served.batcher {
            Some(b) => {
                let (reply, rx) = oneshot::channel();
                let Sequence { index, messages, args, cancel, work, tx, mut gauge, since, state, .. } = self;
                let job = batcher::Job { messages, args, cancel, reply, work };
                b.submit(job).ok_or_else(|| ApiError::internal("the model's worker has stopped"))?;
                tokio::spawn(async move {
                    let result = rx.await.unwrap_or_else(|_| Err(ModelError::backend("?", "the worker dropped it")));
                    if result.is_ok() {
                        // A batch answers whole replies: its first text is its end.
                        gauge.started();
                        state.metrics.first_token(since);
                    }
                    finish(&mut gauge, &result);
                    let _ = tx.send(SeqMsg::Done(index, result));
                });
            }
            None => match &served.gate {
                None => {
                    tokio::task::spawn_blocking(move || self.generate());
                }
                Some(gate) => {
                    let permits = gate.permits.clone();
                    let mut seq = self;
                    tokio::spawn(async move {
                        // Waits for a place in the model's batch, or until nobody reads the request any more.
                        let permit = tokio::select! {
                            p = permits.acquire_owned() => p.ok(),
                            () = seq.tx.closed() => None,
                        };
                        if permit.is_none() {
                            seq.gauge.end(0, true);
                            let _ = seq.tx.send(SeqMsg::Done(seq.index, Err(ModelError::cancelled("?"))));
                            return;
                        }
                        let _ = tokio::task::spawn_blocking(move || {
                            let _permit = permit;
                            seq.generate();
                        })
                        .await;
                    });
                }
            },
        }
        Ok(())
    }

    /// Runs on the blocking pool: the model calls the sink on this thread as text comes.
    fn generate(mut self) {
        let served = &self.state.models[self.model];
        let model = served.model.clone();
        if let Some(gate) = &served.gate {
            let now = gate.active.fetch_add(1, Ordering::Relaxed) + 1;
            gate.largest.fetch_max(now, Ordering::Relaxed);
        }
        let (index, tx, cancel) = (self.index, self.tx.clone(), self.cancel.clone());
        let mut first = true;
        let mut sink = |event: StreamEvent| {
            let StreamEvent::Delta(text) = event else { return };
            if first {
                first = false;
                self.gauge.started();
                self.state.metrics.first_token(self.since);
            }
            // Nobody reads this request any more: stop generating it.
            if tx.send(SeqMsg::Text(index, text)).is_err() {
                cancel.cancel();
            }
        };
        let result = model.generate_stream(&self.messages, &self.args, &self.cancel, &mut sink);
        if let Some(gate) = &self.state.models[self.model].gate {
            gate.active.fetch_sub(1, Ordering::Relaxed);
        }
        finish(&mut self.gauge, &result);
        let _ = self.tx.send(SeqMsg::Done(index, result));
        drop(self.work);
    }
}

/// Counts a finished sequence's tokens, or its cancellation.
fn finish(gauge: &mut SequenceGauge, result: &Result<Generation, ModelError>) {
    match result {
        Ok(g) => gauge.end(g.usage.map_or(0, |u| u.completion_tokens), false),
        Err(ModelError::Cancelled { .. }) => gauge.end(0, true),
        Err(_) => gauge.end(0, false),
    }
}

/// Turns a request's sequence messages into SSE events.
struct Pump {
    id: String,
    created: u64,
    model: String,
    holdbacks: Vec<Holdback>,
    usages: Vec<Option<Value>>,
    include_usage: bool,
    out: mpsc::UnboundedSender<Bytes>,
    cancel: Cancel,
}

impl Pump {
    async fn run(mut self, first: SeqMsg, mut rx: mpsc::UnboundedReceiver<SeqMsg>) {
        for i in 0..self.holdbacks.len() {
            self.send(&self.chunk(i, json!({"role": "assistant", "content": ""}), None));
        }
        let mut next = Some(first);
        while let Some(msg) = next {
            if !self.handle(msg) {
                // The client is gone or a sequence failed: stop the others.
                self.cancel.cancel();
                return;
            }
            next = rx.recv().await;
        }
        if self.include_usage {
            let usage = sum_usage(&self.usages);
            self.send(&stream::usage_chunk(&self.id, self.created, &self.model, usage));
        }
        let _ = self.out.send(Bytes::from_static(stream::DONE.as_bytes()));
    }

    /// False when the stream must end.
    fn handle(&mut self, msg: SeqMsg) -> bool {
        match msg {
            SeqMsg::Text(i, text) => {
                let Some(h) = self.holdbacks.get_mut(i) else { return true };
                let out = h.push(&text);
                out.is_empty() || self.send(&self.chunk(i, json!({"content": out}), None))
            }
            SeqMsg::Done(i, Ok(g)) => {
                let Some(h) = self.holdbacks.get_mut(i) else { return true };
                let rest = h.finish(&g.response_text).unwrap_or_else(|rest| {
                    eprintln!("clem serve: {}: streamed text diverged from the cleaned reply", self.model);
                    rest
                });
                if !rest.is_empty() && !self.send(&self.chunk(i, json!({"content": rest}), None)) {
                    return false;
                }
                self.usages.push(api::usage(&g));
                self.send(&self.chunk(i, json!({}), Some(api::finish_reason(&g))))
            }
            SeqMsg::Done(_, Err(e)) => {
                // Headers are sent: the error goes in the stream, as OpenAI sends one.
                self.send(&ApiError::from_model(&e).body());
                false
            }
        }
    }

    fn chunk(&self, index: usize, delta: Value, finish: Option<&str>) -> Value {
        stream::chunk(&self.id, self.created, &self.model, index, delta, finish)
    }

    fn send(&self, event: &Value) -> bool {
        self.out.send(stream::event(event)).is_ok()
    }
}

/// One `chat.completion` with a choice per generation, in order.
fn completion(id: &str, created: u64, model: &str, gens: &[Generation]) -> Value {
    let Some(first) = gens.first() else { return json!({}) };
    let mut body = api::completion(id, created, model, first);
    let choices: Vec<Value> = gens
        .iter()
        .enumerate()
        .map(|(i, g)| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": g.response_text, "refusal": null},
                "logprobs": null,
                "finish_reason": api::finish_reason(g),
            })
        })
        .collect();
    body["choices"] = Value::Array(choices);
    if gens.len() > 1 {
        match sum_usage(&gens.iter().map(api::usage).collect::<Vec<_>>()) {
            Some(u) => body["usage"] = u,
            None => {
                if let Value::Object(o) = &mut body {
                    o.remove("usage");
                }
            }
        }
    }
    body
}

/// The usage of `n` sequences of one prompt: the prompt counted once (as OpenAI does), completions summed;
/// `None` unless every sequence has one.
fn sum_usage(usages: &[Option<Value>]) -> Option<Value> {
    let count = |u: &Value, key: &str| u.get(key).and_then(Value::as_u64);
    let mut prompt = 0;
    let (mut completion, mut reasoning, mut any_reasoning) = (0u64, 0u64, false);
    for (i, u) in usages.iter().enumerate() {
        let u = u.as_ref()?;
        if i == 0 {
            prompt = count(u, "prompt_tokens")?;
        }
        completion = completion.checked_add(count(u, "completion_tokens")?)?;
        if let Some(r) = u.pointer("/completion_tokens_details/reasoning_tokens").and_then(Value::as_u64) {
            reasoning = reasoning.checked_add(r)?;
            any_reasoning = true;
        }
    }
    if usages.is_empty() {
        return None;
    }
    let mut out = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt.checked_add(completion)?});
    if any_reasoning {
        out["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
    }
    Some(out)
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

pub(crate) fn json_response(body: &Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// At most `max_batch` sequences of a scheduled model submitted at once (the scheduler runs them in one batch);
/// the largest number seen together, for `/health`.
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    active: AtomicU64,
    pub largest: AtomicU64,
}

impl Gate {
    pub fn new(max_batch: usize) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(max_batch.max(1))),
            active: AtomicU64::new(0),
            largest: AtomicU64::new(0),
        }
    }
}

/// Whether a model's requests go through the batching worker: a local model without a step scheduler.
pub(crate) fn uses_batcher(model: &clem_core::LoadedModel) -> bool {
    model.batch_mode() == BatchMode::ForwardPass && model.scheduler_stats().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_n_counts_the_prompt_once() {
        let u = |c: u64| Some(json!({"prompt_tokens": 10, "completion_tokens": c, "total_tokens": 10 + c}));
        assert_eq!(
            sum_usage(&[u(3), u(4)]),
            Some(json!({"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}))
        );
        assert_eq!(sum_usage(&[u(3), None]), None);
        assert_eq!(sum_usage(&[]), None);
    }

    #[test]
    fn seeds_differ_per_sequence_and_stay_in_range() {
        let mut args = GenArgs::default();
        args.extra.insert("seed".into(), json!(u32::MAX));
        let seeds: Vec<Value> = (0..3).map(|i| args_for(&args, i).extra["seed"].clone()).collect();
        assert_eq!(seeds, vec![json!(u32::MAX), json!(u32::MAX - 1), json!(u32::MAX - 2)]);
        assert!(!args_for(&GenArgs::default(), 2).extra.contains_key("seed"));
    }
}
