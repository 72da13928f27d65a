//! The server over loopback with scripted models: wire format, limits and status codes, and dynamic batching
//! (grouping by generation arguments, `max_batch`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clem_core::{BatchMode, Cancel, GenArgs, Generation, LoadedModel, Message, Model, ModelError, ModelSpec};
use clem_serve::{App, ServeConfig};
use serde_json::{json, Value};

/// Replies `echo: <last content> t=<temperature>`; records the size of every call; optionally slow.
struct Echo {
    spec: ModelSpec,
    mode: BatchMode,
    delay: Duration,
    calls: Arc<Mutex<Vec<usize>>>,
}

impl Echo {
    fn new(name: &str, mode: BatchMode, delay_ms: u64) -> (Echo, Arc<Mutex<Vec<usize>>>) {
        let mut map = serde_json::Map::new();
        map.insert("model_name".into(), json!(name));
        map.insert("backend".into(), json!("test"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        (Echo { spec: ModelSpec::new(map), mode, delay: Duration::from_millis(delay_ms), calls: calls.clone() }, calls)
    }

    fn reply(messages: &[Message], args: &GenArgs) -> Result<Generation, ModelError> {
        let last = messages.last().map(|m| m.content.clone()).unwrap_or_default();
        if last == "too long" {
            return Err(clem_core::ContextExceeded::check("echo", 10, 20, 5).expect_err("exceeds").into());
        }
        Ok(Generation::new(
            json!({}),
            json!({"response": {"choices": [{"finish_reason": "stop"}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 3}}}),
            format!("echo: {last} t={}", args.temperature),
        ))
    }
}

impl Model for Echo {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    fn generate_response(&self, messages: &[Message], args: &GenArgs, _: &Cancel) -> Result<Generation, ModelError> {
        self.calls.lock().expect("lock").push(1);
        std::thread::sleep(self.delay);
        Echo::reply(messages, args)
    }
    fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        args: &GenArgs,
        _: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        self.calls.lock().expect("lock").push(batch.len());
        std::thread::sleep(self.delay);
        batch.iter().map(|m| Echo::reply(m, args)).collect()
    }
    fn batch_mode(&self) -> BatchMode {
        self.mode
    }
}

struct Server {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(models: Vec<Box<dyn Model>>, config: ServeConfig) -> Server {
    // reqwest is built without a default TLS provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = App::new(models.into_iter().map(LoadedModel::new).collect(), config).expect("app");
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
    Server { base, stop: Some(tx) }
}

fn chat_body(model: &str, content: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": content}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

async fn post(base: &str, body: &Value, key: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().post(format!("{base}/v1/chat/completions")).body(body.to_string());
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = req.send().await.expect("send");
    (resp.status().as_u16(), resp.text().await.expect("text"))
}

async fn get_json(url: &str) -> Value {
    let text = reqwest::get(url).await.expect("get").text().await.expect("text");
    serde_json::from_str(&text).expect("json")
}

fn error_of(text: &str) -> Value {
    let v: Value = serde_json::from_str(text).expect("error body is JSON");
    for key in ["message", "type", "param", "code"] {
        assert!(v["error"].get(key).is_some(), "error body lacks {key}: {v}");
    }
    v["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_plain_streaming_models_and_health() {
    let (echo, _) = Echo::new("echo", BatchMode::Sequential, 0);
    let server = start(vec![Box::new(echo)], ServeConfig::default()).await;

    let (status, text) = post(&server.base, &chat_body("echo", "hi", json!({"temperature": 0.5})), None).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hi t=0.5");
    assert_eq!(v["usage"]["total_tokens"], 7);

    let (status, text) = post(&server.base, &chat_body("echo", "hello you", json!({"stream": true})), None).await;
    assert_eq!(status, 200);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let content: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).expect("chunk"))
        .filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str).map(String::from))
        .collect();
    // No temperature given: OpenAI's default 1 (before: 0).
    assert_eq!(content, "echo: hello you t=1");

    let models = get_json(&format!("{}/v1/models", server.base)).await;
    assert_eq!(models["data"][0]["id"], "echo");
    let health = reqwest::get(format!("{}/health", server.base)).await.expect("get");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_openai_bodies_and_status_codes() {
    let (echo, _) = Echo::new("echo", BatchMode::Sequential, 0);
    let config = ServeConfig {
        api_key: Some("sekrit".into()),
        max_body_bytes: 2000,
        max_tokens_cap: 100,
        ..ServeConfig::default()
    };
    let server = start(vec![Box::new(echo)], config).await;
    let key = Some("sekrit");

    let (s, t) = post(&server.base, &chat_body("echo", "hi", json!({})), None).await;
    assert_eq!((s, error_of(&t)["code"].clone()), (401, json!("invalid_api_key")));
    let (s, _) = post(&server.base, &chat_body("echo", "hi", json!({})), Some("wrong")).await;
    assert_eq!(s, 401);
    let r = reqwest::get(format!("{}/v1/models", server.base)).await.expect("get");
    assert_eq!(r.status(), 401);

    let (s, t) = post(&server.base, &chat_body("nope", "hi", json!({})), key).await;
    assert_eq!((s, error_of(&t)["code"].clone()), (404, json!("model_not_found")));
    let (s, t) = post(&server.base, &chat_body("echo", &"x".repeat(5000), json!({})), key).await;
    assert_eq!((s, error_of(&t)["code"].clone()), (413, json!("request_too_large")));
    let (s, t) = post(&server.base, &chat_body("echo", "hi", json!({"max_tokens": 101})), key).await;
    assert_eq!((s, error_of(&t)["param"].clone()), (400, json!("max_tokens")));
    let (s, t) = post(&server.base, &chat_body("echo", "too long", json!({})), key).await;
    assert_eq!((s, error_of(&t)["code"].clone()), (400, json!("context_length_exceeded")));
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .header("authorization", "Bearer sekrit")
        .body("{oops")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    error_of(&resp.text().await.expect("text"));
    let (s, _) = post(&server.base, &chat_body("echo", "hi", json!({"max_tokens": 100})), key).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_is_503_with_retry_after() {
    let (slow, _) = Echo::new("slow", BatchMode::Concurrent, 400);
    let server = start(vec![Box::new(slow)], ServeConfig { max_concurrent: 1, ..ServeConfig::default() }).await;
    let first = tokio::spawn({
        let base = server.base.clone();
        async move { post(&base, &chat_body("slow", "a", json!({})), None).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .body(chat_body("slow", "b", json!({})).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(first.await.expect("join").0, 200);
}

async fn burst(base: &str, n: usize, temps: &[f64]) -> Vec<(u16, String)> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (base, t) = (base.to_string(), temps[i % temps.len()]);
        tasks.push(tokio::spawn(async move {
            post(&base, &chat_body("local", &format!("q{i}"), json!({"temperature": t})), None).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_models_batch_requests_that_arrive_together_grouped_by_arguments() {
    let (local, calls) = Echo::new("local", BatchMode::ForwardPass, 150);
    let config = ServeConfig { max_batch: Some(4), batch_window: Duration::from_millis(50), ..ServeConfig::default() };
    let server = start(vec![Box::new(local)], config).await;
    let replies = burst(&server.base, 12, &[0.0, 1.0]).await;
    for (i, (status, text)) in replies.iter().enumerate() {
        assert_eq!(*status, 200, "{text}");
        let v: Value = serde_json::from_str(text).expect("json");
        // Each reply carries its own prompt and temperature: groups never mix arguments.
        let want = format!("echo: q{i} t={}", if i % 2 == 0 { "0" } else { "1" });
        assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    }
    let sizes = calls.lock().expect("lock").clone();
    assert_eq!(sizes.iter().sum::<usize>(), 12);
    assert!(sizes.iter().all(|s| *s <= 4), "{sizes:?}");
    assert!(sizes.iter().any(|s| *s > 1), "no batching happened: {sizes:?}");
    let health = get_json(&format!("{}/health", server.base)).await;
    assert_eq!(health["models"][0]["batched_requests"], 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_one_serves_one_at_a_time() {
    let (local, calls) = Echo::new("local", BatchMode::ForwardPass, 20);
    let config = ServeConfig { max_batch: Some(1), batch_window: Duration::from_millis(20), ..ServeConfig::default() };
    let server = start(vec![Box::new(local)], config).await;
    let replies = burst(&server.base, 6, &[0.0]).await;
    assert!(replies.iter().all(|(s, _)| *s == 200));
    assert_eq!(*calls.lock().expect("lock"), vec![1; 6]);
}
