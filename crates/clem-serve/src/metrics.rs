//! `/metrics` in Prometheus' text format: sequences waiting and running, generated tokens, cancelled
//! sequences, requests by status, and time to first token. One registry per server (tests run several), built
//! with the `prometheus` crate.
//!
//! A sequence is *waiting* from its submission until the model reports its first piece of text, then *running*
//! until it ends; a request with `n` > 1 is `n` sequences. Models with a step scheduler (the local backends)
//! also show the scheduler's own counters as `clem_scheduler_*{model}`: sequences in the running batch and
//! waiting for a slot, slots, decoding steps, prompt tokens prefilled and reused, generated tokens, finished and
//! cancelled sequences.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use clem_core::schedule::SchedulerStats;
use prometheus::{Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::AppState;

/// Time-to-first-token buckets, in seconds: a small model's prefill takes milliseconds, a queue minutes.
const TTFT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The server's counters.
pub struct Metrics {
    registry: Registry,
    waiting: IntGaugeVec,
    running: IntGaugeVec,
    tokens: IntCounterVec,
    cancelled: IntCounterVec,
    requests: IntCounterVec,
    ttft: Histogram,
    sequences: IntCounter,
}

/// `GET /metrics` (the API key, when the server has one, is required: the counters tell how the server is used).
pub(crate) async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = state.authorize(&headers) {
        return e.into_response();
    }
    let mut page = state.metrics.render();
    let stats: Vec<(&str, SchedulerStats)> =
        state.models.iter().filter_map(|s| Some((s.name.as_str(), s.model.scheduler_stats()?))).collect();
    page.push_str(&scheduler_page(&stats));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], page).into_response()
}

/// The schedulers' counters, read now, in the text format.
fn scheduler_page(stats: &[(&str, SchedulerStats)]) -> String {
    let build = || -> Result<String, prometheus::Error> {
        let registry = Registry::new();
        let gauges = [
            (
                "clem_scheduler_running",
                "Sequences in the model's running batch.",
                (|s: &SchedulerStats| s.running) as fn(&SchedulerStats) -> u64,
            ),
            ("clem_scheduler_waiting", "Sequences waiting for a slot or their prefill.", |s| s.waiting),
            ("clem_scheduler_slots", "Sequence slots of the model.", |s| s.slots),
        ];
        let counters = [
            (
                "clem_scheduler_steps_total",
                "Decoding steps run.",
                (|s: &SchedulerStats| s.steps) as fn(&SchedulerStats) -> u64,
            ),
            ("clem_scheduler_prompt_tokens_total", "Prompt tokens prefilled.", |s| s.prompt_tokens),
            (
                "clem_scheduler_reused_prompt_tokens_total",
                "Prompt tokens not prefilled: a slot's cache held them from an earlier sequence.",
                |s| s.reused_tokens,
            ),
            ("clem_scheduler_generated_tokens_total", "Tokens generated, cancelled sequences included.", |s| {
                s.generated_tokens
            }),
            ("clem_scheduler_finished_total", "Sequences finished.", |s| s.finished),
            ("clem_scheduler_cancelled_total", "Sequences cancelled.", |s| s.cancelled),
        ];
        for (name, help, get) in gauges {
            let g = IntGaugeVec::new(Opts::new(name, help), &["model"])?;
            for (model, s) in stats {
                g.with_label_values(&[*model]).set(i64::try_from(get(s)).unwrap_or(i64::MAX));
            }
            registry.register(Box::new(g))?;
        }
        for (name, help, get) in counters {
            let c = IntCounterVec::new(Opts::new(name, help), &["model"])?;
            for (model, s) in stats {
                c.with_label_values(&[*model]).inc_by(get(s));
            }
            registry.register(Box::new(c))?;
        }
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&registry.gather(), &mut out)?;
        Ok(String::from_utf8(out).unwrap_or_default())
    };
    if stats.is_empty() {
        return String::new();
    }
    build().unwrap_or_default()
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["model"]);
        let counter = |name: &str, help: &str, label: &str| IntCounterVec::new(Opts::new(name, help), &[label]);
        let waiting = gauge("clem_serve_sequences_waiting", "Sequences submitted that have produced no text yet.")?;
        let running = gauge("clem_serve_sequences_running", "Sequences producing text.")?;
        let tokens = counter("clem_serve_generated_tokens_total", "Tokens generated (finished sequences).", "model")?;
        let cancelled =
            counter("clem_serve_sequences_cancelled_total", "Sequences that ended cancelled (client gone).", "model")?;
        let requests = counter("clem_serve_requests_total", "Chat completion requests answered, by status.", "status")?;
        let ttft = Histogram::with_opts(
            HistogramOpts::new("clem_serve_time_to_first_token_seconds", "From a request's arrival to its first text.")
                .buckets(TTFT_BUCKETS.to_vec()),
        )?;
        let sequences = IntCounter::new("clem_serve_sequences_total", "Sequences submitted to a model.")?;
        registry.register(Box::new(waiting.clone()))?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(cancelled.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(sequences.clone()))?;
        Ok(Metrics { registry, waiting, running, tokens, cancelled, requests, ttft, sequences })
    }

    /// Every metric in the text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own, valid metrics into a Vec cannot fail; an empty page is the harmless fallback.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn request(&self, status: u16) {
        self.requests.with_label_values(&[status.to_string().as_str()]).inc();
    }

    pub fn first_token(&self, since: Instant) {
        self.ttft.observe(since.elapsed().as_secs_f64());
    }

    /// Registers a new sequence of `model` as waiting.
    pub fn sequence(&self, model: &str) -> SequenceGauge {
        self.sequences.inc();
        let waiting = self.waiting.with_label_values(&[model]);
        waiting.inc();
        SequenceGauge {
            waiting,
            running: self.running.with_label_values(&[model]),
            tokens: self.tokens.with_label_values(&[model]),
            cancelled: self.cancelled.with_label_values(&[model]),
            started: false,
            left: false,
        }
    }
}

/// One sequence's place in the waiting/running gauges; leaves them when it ends, or when dropped.
pub struct SequenceGauge {
    waiting: prometheus::IntGauge,
    running: prometheus::IntGauge,
    tokens: IntCounter,
    cancelled: IntCounter,
    started: bool,
    left: bool,
}

impl SequenceGauge {
    /// The model reported text: waiting -> running (once).
    pub fn started(&mut self) {
        if !self.started {
            self.started = true;
            self.waiting.dec();
            self.running.inc();
        }
    }

    /// The sequence ended with `tokens` generated, or `cancelled`: it leaves the gauges first, then is counted,
    /// so that a reader who sees it counted never sees it still waiting or running.
    pub fn end(&mut self, tokens: u64, cancelled: bool) {
        self.leave();
        self.tokens.inc_by(tokens);
        if cancelled {
            self.cancelled.inc();
        }
    }

    fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        if self.started {
            self.running.dec();
        } else {
            self.waiting.dec();
        }
    }
}

impl Drop for SequenceGauge {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_follow_a_sequence_and_the_page_is_prometheus_text() {
        let m = Metrics::new().expect("metrics");
        let mut s = m.sequence("m");
        assert!(m.render().contains("clem_serve_sequences_waiting{model=\"m\"} 1"));
        s.started();
        s.started();
        let page = m.render();
        assert!(page.contains("clem_serve_sequences_waiting{model=\"m\"} 0"), "{page}");
        assert!(page.contains("clem_serve_sequences_running{model=\"m\"} 1"), "{page}");
        // Counted as it leaves the gauges, never before: the running gauge is down when the count is up.
        s.end(5, true);
        let page = m.render();
        assert!(page.contains("clem_serve_generated_tokens_total{model=\"m\"} 5"), "{page}");
        assert!(page.contains("clem_serve_sequences_cancelled_total{model=\"m\"} 1"), "{page}");
        assert!(page.contains("clem_serve_sequences_running{model=\"m\"} 0"), "{page}");
        // Dropping it after the end leaves the gauges as they are (it left once).
        drop(s);
        let waiting_left = m.sequence("m");
        drop(waiting_left);
        assert!(m.render().contains("clem_serve_sequences_waiting{model=\"m\"} 0"));
        m.request(200);
        m.first_token(Instant::now());
        let page = m.render();
        assert!(page.contains("clem_serve_sequences_running{model=\"m\"} 0"), "{page}");
        assert!(page.contains("clem_serve_requests_total{status=\"200\"} 1"), "{page}");
        assert!(page.contains("# TYPE clem_serve_time_to_first_token_seconds histogram"), "{page}");
        assert!(page.contains("clem_serve_time_to_first_token_seconds_count 1"), "{page}");
    }
}
