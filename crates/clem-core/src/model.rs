//! The `Model` interface every backend implements, its result and error types, and `LoadedModel`, the one
//! wrapper through which callers generate (message normalisation and the `clem_player` record live there).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cancel::Cancel;
use crate::message::{normalize_messages, GenArgs, Message};
use crate::schedule::SchedulerStats;
use crate::spec::ModelSpec;
use crate::usage::{FinishReason, Usage};

/// What one generation returns: the exact object sent, the exact object returned, and the cleaned reply; plus
/// what clem reads of it in normalised form (tokens, why it ended), which is never part of the recorded objects.
/// Build it with [`Generation::new`] so that adding a field here does not touch every backend.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generation {
    pub prompt: Value,
    pub response: Value,
    pub response_text: String,
    /// Tokens used, when the backend knows them (the provider's reply, or the local tokenizer).
    pub usage: Option<Usage>,
    /// Why generation stopped, when the backend knows it.
    pub finish_reason: Option<FinishReason>,
}

impl Generation {
    /// The triple, with no usage and no finish reason known.
    pub fn new(prompt: Value, response: Value, response_text: impl Into<String>) -> Generation {
        Generation { prompt, response, response_text: response_text.into(), usage: None, finish_reason: None }
    }

    pub fn with_usage(mut self, usage: Option<Usage>) -> Generation {
        self.usage = usage;
        self
    }

    pub fn with_finish(mut self, finish_reason: Option<FinishReason>) -> Generation {
        self.finish_reason = finish_reason;
        self
    }
}

/// The prompt did not fit: prompt tokens plus `max_tokens` exceed the context size.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "context limit of {model} exceeded{}: {tokens_used} tokens needed (prompt + max_tokens), {context_size} available ({tokens_left} left)",
    batch_index.map(|i| format!(" at batch index {i}")).unwrap_or_default()
)]
pub struct ContextExceeded {
    pub model: String,
    pub tokens_used: u64,
    pub tokens_left: i64,
    pub context_size: u64,
    pub batch_index: Option<usize>,
}

impl ContextExceeded {
    /// clemcore's check: `used = prompt + max_new_tokens`, fits when `used <= size`.
    pub fn check(model: &str, context_size: u64, prompt_tokens: u64, max_tokens: u32) -> Result<(), ContextExceeded> {
        let tokens_used = prompt_tokens.saturating_add(u64::from(max_tokens));
        if tokens_used <= context_size {
            return Ok(());
        }
        Err(ContextExceeded {
            model: model.into(),
            tokens_used,
            // Exact in i128, clamped to clemcore's int (sizes come from registries and configs: any u64).
            tokens_left: (i128::from(context_size) - i128::from(tokens_used)).clamp(i64::MIN.into(), i64::MAX.into())
                as i64,
            context_size,
            batch_index: None,
        })
    }
}

/// Why generating or loading failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    ContextExceeded(#[from] ContextExceeded),
    /// The registry entry cannot be used; the message lists its problems.
    #[error("model {model}: {message}")]
    Config { model: String, message: String },
    /// Anything the backend reports (network, provider, inference). The backend's own error is part of the
    /// message and not exposed as `source()`, so error chains do not print it twice.
    #[error("model {model}: {error}")]
    Backend { model: String, error: Box<dyn std::error::Error + Send + Sync> },
    /// The caller cancelled the request (its [`Cancel`] was set) before it finished.
    #[error("model {model}: the request was cancelled")]
    Cancelled { model: String },
}

impl ModelError {
    pub fn config(model: &str, message: impl Into<String>) -> Self {
        ModelError::Config { model: model.into(), message: message.into() }
    }
    pub fn backend(model: &str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ModelError::Backend { model: model.into(), error: source.into() }
    }
    pub fn cancelled(model: &str) -> Self {
        ModelError::Cancelled { model: model.into() }
    }
}

/// What a streaming generation reports while it runs (see [`Model::generate_stream`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// Newly generated text: raw model output, before the backend's cleaning (`eos_to_cull`,
    /// `output_split_prefix`, CoT tags), which applies to the final [`Generation`] only.
    Delta(String),
}

/// How a model runs a batch; the runner uses it to decide whether batching helps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchMode {
    /// One request after another (the default).
    Sequential,
    /// Requests in flight together (remote APIs).
    Concurrent,
    /// One padded forward pass (local inference).
    ForwardPass,
}

/// A loaded model, ready to generate. Backends implement this; callers use [`LoadedModel`].
///
/// Synchronous by design: a remote backend runs a batch's requests concurrently on its own executor, and a
/// local backend runs a batch as one forward pass, so callers need no async runtime.
pub trait Model: Send + Sync {
    fn spec(&self) -> &ModelSpec;

    /// Generates one reply. `messages` are already normalised when [`Model::normalizes_messages`] is true.
    /// A backend that can stop early checks `cancel` and then returns [`ModelError::Cancelled`].
    fn generate_response(
        &self,
        messages: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
    ) -> Result<Generation, ModelError>;

    /// Generates one reply per message list, in input order; one failure does not fail the others.
    /// `cancels[i]` cancels row `i` alone (a row without a flag is never cancelled).
    fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        batch
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let cancel = Cancel::of(cancels, i);
                if cancel.is_cancelled() {
                    return Err(ModelError::cancelled(self.spec().model_name().unwrap_or("?")));
                }
                self.generate_response(m, args, &cancel)
            })
            .collect()
    }

    /// [`Model::generate_response`] that reports text while it is generated: `sink` gets [`StreamEvent::Delta`]s
    /// on the calling thread, and the result is the same cleaned [`Generation`]. Local backends stream tokens as
    /// they are decoded; the default (remote backends) generates the reply and sends it as one delta.
    fn generate_stream(
        &self,
        messages: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
        sink: &mut dyn FnMut(StreamEvent),
    ) -> Result<Generation, ModelError> {
        let generation = self.generate_response(messages, args, cancel)?;
        if !generation.response_text.is_empty() {
            sink(StreamEvent::Delta(generation.response_text.clone()));
        }
        Ok(generation)
    }

    /// The counters of the model's step scheduler (local backends), for `/metrics`.
    fn scheduler_stats(&self) -> Option<SchedulerStats> {
        None
    }

    fn batch_mode(&self) -> BatchMode {
        BatchMode::Sequential
    }

    /// Whether messages go through clemcore's normalisation first (every model backend: yes; players: no).
    fn normalizes_messages(&self) -> bool {
        true
    }
}

/// The one way to call a model: normalises messages as clemcore does and records `clem_player`
/// (`call_start`, `call_duration`, `response`, `model_name`) in every response object.
pub struct LoadedModel {
    inner: Box<dyn Model>,
}

impl LoadedModel {
    pub fn new(inner: Box<dyn Model>) -> Self {
        LoadedModel { inner }
    }

    pub fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    pub fn name(&self) -> &str {
        self.inner.spec().model_name().unwrap_or("?")
    }

    pub fn batch_mode(&self) -> BatchMode {
        self.inner.batch_mode()
    }

    pub fn generate_response(&self, messages: &[Message], args: &GenArgs) -> Result<Generation, ModelError> {
        self.generate_response_cancellable(messages, args, &Cancel::new())
    }

    /// [`LoadedModel::generate_response`] that stops early with [`ModelError::Cancelled`] once `cancel` is set.
    pub fn generate_response_cancellable(
        &self,
        messages: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
    ) -> Result<Generation, ModelError> {
        if cancel.is_cancelled() {
            return Err(ModelError::cancelled(self.name()));
        }
        let start = chrono::Local::now();
        let clock = Instant::now();
        let messages = self.prepare(messages);
        let mut generation = self.inner.generate_response(&messages, args, cancel)?;
        stamp(&mut generation, self.name(), start, clock.elapsed());
        Ok(generation)
    }

    /// [`LoadedModel::generate_response_cancellable`] streaming: see [`Model::generate_stream`] (deltas are raw
    /// text; the returned generation is cleaned and carries `clem_player`).
    pub fn generate_stream(
        &self,
        messages: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
        sink: &mut dyn FnMut(StreamEvent),
    ) -> Result<Generation, ModelError> {
        if cancel.is_cancelled() {
            return Err(ModelError::cancelled(self.name()));
        }
        let start = chrono::Local::now();
        let clock = Instant::now();
        let messages = self.prepare(messages);
        let mut generation = self.inner.generate_stream(&messages, args, cancel, sink)?;
        stamp(&mut generation, self.name(), start, clock.elapsed());
        Ok(generation)
    }

    /// The model's scheduler counters, when it has a step scheduler.
    pub fn scheduler_stats(&self) -> Option<SchedulerStats> {
        self.inner.scheduler_stats()
    }

    pub fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
    ) -> Vec<Result<Generation, ModelError>> {
        self.generate_batch_response_cancellable(batch, args, &[])
    }

    /// [`LoadedModel::generate_batch_response`] where `cancels[i]` cancels row `i` alone.
    pub fn generate_batch_response_cancellable(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        cancels: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        let start = chrono::Local::now();
        let clock = Instant::now();
        let batch: Vec<Vec<Message>> = batch.iter().map(|m| self.prepare(m)).collect();
        let cancels: Vec<Cancel> = (0..batch.len()).map(|i| Cancel::of(cancels, i)).collect();
        let mut results = self.inner.generate_batch_response(&batch, args, &cancels);
        let elapsed = clock.elapsed();
        for generation in results.iter_mut().flatten() {
            stamp(generation, self.name(), start, elapsed);
        }
        results
    }

    fn prepare(&self, messages: &[Message]) -> Vec<Message> {
        if self.inner.normalizes_messages() {
            normalize_messages(messages)
        } else {
            messages.to_vec()
        }
    }
}

/// Adds `clem_player` to the response object, keeping what the backend already put there (e.g. `attempts`).
fn stamp(generation: &mut Generation, model_name: &str, start: chrono::DateTime<chrono::Local>, took: Duration) {
    if !generation.response.is_object() {
        generation.response = json!({ "response": generation.response.take() });
    }
    let record = json!({
        "call_start": python_datetime(&start),
        "call_duration": python_timedelta(took),
        "response": generation.response_text,
        "model_name": model_name,
    });
    if let Value::Object(resp) = &mut generation.response {
        match resp.get_mut("clem_player") {
            Some(Value::Object(existing)) => {
                if let Value::Object(rec) = record {
                    existing.extend(rec);
                }
            }
            _ => {
                resp.insert("clem_player".into(), record);
            }
        }
    }
}

/// `str(datetime.now())` in Python: `2024-05-01 12:00:00.123456` (no fraction when it is zero). Written field by
/// field: a strftime pattern is parsed again on every call, which showed in the per-call cost of remote models.
pub fn python_datetime(t: &chrono::DateTime<chrono::Local>) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write as _;
    let mut out = String::with_capacity(26);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let micros = t.timestamp_subsec_micros();
    if micros > 0 {
        // A leap second's nanoseconds run past 1e9 (chrono's way); Python has no leap seconds.
        let _ = write!(out, ".{:06}", micros.min(999_999));
    }
    out
}

/// `str(timedelta)` in Python: `0:00:01.250000` (no fraction when it is zero; days as `N day(s), `).
pub fn python_timedelta(d: Duration) -> String {
    use std::fmt::Write as _;
    let total = d.as_secs();
    let micros = d.subsec_micros();
    let (days, rem) = (total / 86_400, total % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let mut out = String::with_capacity(16);
    if days > 0 {
        let _ = write!(out, "{days} day{}, ", if days == 1 { "" } else { "s" });
    }
    let _ = write!(out, "{h}:{m:02}:{s:02}");
    if micros > 0 {
        let _ = write!(out, ".{micros:06}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_time_formats() {
        assert_eq!(python_timedelta(Duration::from_micros(1_250_000)), "0:00:01.250000");
        assert_eq!(python_timedelta(Duration::from_secs(3725)), "1:02:05");
        assert_eq!(python_timedelta(Duration::from_secs(90_000)), "1 day, 1:00:00");
        assert_eq!(python_timedelta(Duration::from_secs(3 * 86_400)), "3 days, 0:00:00");
        let at = |s: &str| {
            let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").expect("a time");
            naive.and_local_timezone(chrono::Local).earliest().expect("a local time")
        };
        assert_eq!(python_datetime(&at("2024-05-01 09:03:07.000250")), "2024-05-01 09:03:07.000250");
        assert_eq!(python_datetime(&at("0999-12-31 23:59:59")), "0999-12-31 23:59:59");
        // chrono's own rendering, which this one replaced, agrees on every field.
        let now = chrono::Local::now();
        let theirs = format!("{}.{:06}", now.format("%Y-%m-%d %H:%M:%S"), now.timestamp_subsec_micros());
        assert_eq!(python_datetime(&now), theirs.trim_end_matches(".000000"));
    }

    #[test]
    fn context_check_matches_clemcore() {
        assert!(ContextExceeded::check("m", 100, 50, 50).is_ok());
        let e = ContextExceeded::check("m", 100, 51, 50).expect_err("exceeds");
        assert_eq!((e.tokens_used, e.tokens_left, e.context_size), (101, -1, 100));
        assert!(e.to_string().contains("101 tokens needed"));
        // Any sizes: no overflow, the shortfall clamped.
        let e = ContextExceeded::check("m", 0, u64::MAX, u32::MAX).expect_err("exceeds");
        assert_eq!((e.tokens_used, e.tokens_left), (u64::MAX, i64::MIN));
        assert!(ContextExceeded::check("m", u64::MAX, u64::MAX - 1, 1).is_ok());
    }
}
