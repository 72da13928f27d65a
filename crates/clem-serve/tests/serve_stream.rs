//! Token streaming over loopback with a scripted model that decodes one piece of text per 20 ms "step" and cleans
//! its reply as the local backends do (`eos_to_cull`): chunks arrive while it decodes, concatenate to the
//! non-streaming reply (a cull token split over two steps never reaches the client), `n` choices are indexed; a
//! client that leaves after its first chunk stops its sequence within one step, and `/metrics` counts it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clem_core::cleaning::Cleaner;
use clem_core::schedule::SchedulerStats;
use clem_core::{
    BatchMode, Cancel, FinishReason, GenArgs, Generation, LoadedModel, Message, Model, ModelError, ModelSpec,
    StreamEvent, Usage,
};
use clem_serve::{App, ServeConfig};
use serde_json::{json, Value};

/// The raw pieces the model decodes, one per step: `<|im_end|>` arrives in two pieces mid-reply.
const PIECES: &[&str] = &["Once", " upon", " a", " time", " <|im", "_end|>", " there", " was", " a", " dragon", "  "];
const STEP: Duration = Duration::from_millis(20);

/// Streams [`PIECES`] (cycled up to `max_tokens`), a step apart; counts the steps it ran.
struct Decoder {
    spec: ModelSpec,
    steps: Arc<AtomicUsize>,
}

impl Model for Decoder {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    fn generate_response(&self, m: &[Message], args: &GenArgs, cancel: &Cancel) -> Result<Generation, ModelError> {
        self.generate_stream(m, args, cancel, &mut |_| {})
    }
    fn generate_stream(
        &self,
        _: &[Message],
        args: &GenArgs,
        cancel: &Cancel,
        sink: &mut dyn FnMut(StreamEvent),
    ) -> Result<Generation, ModelError> {
        let mut raw = String::new();
        for i in 0..args.max_tokens as usize {
            if cancel.is_cancelled() {
                return Err(ModelError::cancelled("decoder"));
            }
            std::thread::sleep(STEP);
            self.steps.fetch_add(1, Ordering::SeqCst);
            let piece = PIECES[i % PIECES.len()];
            raw.push_str(piece);
            sink(StreamEvent::Delta(piece.to_string()));
        }
        let cleaned = Cleaner::from_spec(&self.spec).expect("cleaner").clean(&raw, "", None).expect("clean");
        Ok(Generation::new(json!({}), json!({"response": raw}), cleaned.text)
            .with_usage(Some(Usage::new(5, u64::from(args.max_tokens))))
            .with_finish(Some(FinishReason::Length)))
    }
    /// A scheduled local model: its deltas are raw text, cleaned at the end.
    fn scheduler_stats(&self) -> Option<SchedulerStats> {
        Some(SchedulerStats::default())
    }
    fn batch_mode(&self) -> BatchMode {
        BatchMode::ForwardPass
    }
}

async fn start() -> (String, Arc<AtomicUsize>, tokio::sync::oneshot::Sender<()>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let spec: ModelSpec = serde_json::from_value(json!({
        "model_name": "decoder", "backend": "test", "model_config": {"eos_to_cull": "<\\|im_end\\|>"}
    }))
    .expect("spec");
    let steps = Arc::new(AtomicUsize::new(0));
    let model = LoadedModel::new(Box::new(Decoder { spec, steps: steps.clone() }));
    let app = App::new(vec![model], ServeConfig::default()).expect("app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        clem_serve::run(listener, &app, async move {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    (base, steps, tx)
}

fn request(max_tokens: u32, extra: Value) -> Value {
    let mut body = json!({"model": "decoder", "max_tokens": max_tokens, "temperature": 0,
                          "messages": [{"role": "user", "content": "tell a story"}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

/// The `data:` payloads of an SSE body, each with the time it arrived.
async fn events(resp: &mut reqwest::Response, start: Instant) -> Vec<(f64, Value)> {
    let (mut buf, mut out) = (String::new(), Vec::new());
    while let Some(bytes) = resp.chunk().await.expect("chunk") {
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(at) = buf.find("\n\n") {
            let event: String = buf.drain(..at + 2).collect();
            if let Some(data) = event.trim().strip_prefix("data: ") {
                let v = if data == "[DONE]" { json!("[DONE]") } else { serde_json::from_str(data).expect("json") };
                out.push((start.elapsed().as_secs_f64(), v));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_come_as_decoded_and_equal_the_reply() {
    let (base, _, _stop) = start().await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");
    let plain = client.post(&url).body(request(11, json!({})).to_string()).send().await.expect("send");
    let plain: Value = serde_json::from_str(&plain.text().await.expect("text")).expect("json");
    let reply = plain["choices"][0]["message"]["content"].as_str().expect("content").to_string();
    assert_eq!(reply, "Once upon a time  there was a dragon");

    let start = Instant::now();
    let body = request(11, json!({"stream": true, "stream_options": {"include_usage": true}}));
    let mut resp = client.post(&url).body(body.to_string()).send().await.expect("send");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let got = events(&mut resp, start).await;
    let content: Vec<(f64, &str)> = got
        .iter()
        .filter_map(|(t, v)| Some((*t, v.pointer("/choices/0/delta/content")?.as_str().filter(|c| !c.is_empty())?)))
        .collect();
    let text: String = content.iter().map(|(_, c)| *c).collect();
    assert_eq!(text, reply, "{got:?}");
    // No piece of the cull token ever reached the client.
    assert!(content.iter().all(|(_, c)| !c.contains('<') && !c.contains('|')), "{content:?}");
    let (first, last) = (content[0].0, content[content.len() - 1].0);
    // Before (the reply sent once generated): all chunks came together, after all 11 steps.
    assert!(first < 3.0 * STEP.as_secs_f64() + 0.1 && last - first > 5.0 * STEP.as_secs_f64(), "{content:?}");
    assert_eq!(got[0].1["choices"][0]["delta"]["role"], "assistant");
    let n = got.len();
    assert_eq!(got[n - 3].1["choices"][0]["finish_reason"], "length");
    assert_eq!(got[n - 2].1["usage"], json!({"prompt_tokens": 5, "completion_tokens": 11, "total_tokens": 16}));
    assert_eq!(got[n - 1].1, json!("[DONE]"));

    // n = 3: three indexed choices, plain and streamed; the prompt counted once.
    let body = request(4, json!({"n": 3}));
    let plain: Value = serde_json::from_str(
        &client.post(&url).body(body.to_string()).send().await.expect("send").text().await.expect("text"),
    )
    .expect("json");
    let indices: Vec<&Value> = plain["choices"].as_array().expect("choices").iter().map(|c| &c["index"]).collect();
    assert_eq!(indices, vec![&json!(0), &json!(1), &json!(2)], "{plain}");
    assert_eq!(plain["usage"], json!({"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}));
    let body = request(4, json!({"n": 3, "stream": true}));
    let mut resp = client.post(&url).body(body.to_string()).send().await.expect("send");
    let got = events(&mut resp, Instant::now()).await;
    for i in 0..3 {
        let text: String = got
            .iter()
            .filter_map(|(_, v)| {
                let c = v.pointer("/choices/0")?;
                (c["index"] == json!(i)).then(|| c.pointer("/delta/content")?.as_str().map(String::from))?
            })
            .collect();
        assert_eq!(text, "Once upon a time", "choice {i}: {got:?}");
    }
    let status = client.post(&url).body(request(4, json!({"n": 17})).to_string()).send().await.expect("send");
    assert_eq!(status.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_its_sequence_within_a_step() {
    let (base, steps, _stop) = start().await;
    let client = reqwest::Client::new();
    let body = request(500, json!({"stream": true}));
    let mut resp =
        client.post(format!("{base}/v1/chat/completions")).body(body.to_string()).send().await.expect("send");
    // Read until the first content chunk, then leave.
    let mut seen = String::new();
    while !seen.contains("\"content\":\"Once") {
        let bytes = resp.chunk().await.expect("chunk").expect("more");
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    drop(resp);
    drop(client);
    let left_at = steps.load(Ordering::SeqCst);
    let metrics = |base: String| async move {
        reqwest::get(format!("{base}/metrics")).await.expect("get").text().await.expect("text")
    };
    let clock = Instant::now();
    loop {
        let page = metrics(base.clone()).await;
        if page.contains("clem_serve_sequences_cancelled_total{model=\"decoder\"} 1") {
            assert!(page.contains("clem_serve_sequences_running{model=\"decoder\"} 0"), "{page}");
            assert!(page.contains("clem_serve_requests_total{status=\"200\"} 1"), "{page}");
            break;
        }
        assert!(clock.elapsed() < Duration::from_secs(10), "not cancelled: {page}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Before (the reply streamed once generated): the first chunk came after all 500 steps, and nothing was ever
    // counted as cancelled (the loop above timed out).
    let ran = steps.load(Ordering::SeqCst) - left_at;
    assert!(ran <= 1, "{ran} steps after the client left");
}
