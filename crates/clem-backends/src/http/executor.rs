//! The one place that sends HTTP requests: a process-wide tokio runtime, one reqwest client per model, and the
//! retry loop with its concurrency and requests-per-minute limits.
//!
//! The `Model` trait is synchronous, so callers reach the runtime through [`run_sync`], which hands the work to
//! the runtime's threads and waits on a plain channel. Unlike `Runtime::block_on`, that works from any thread,
//! including one that is itself inside some other async runtime.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use super::error::{error_details, redact, RemoteError};
use super::retry::{is_retryable, server_delay, why_final, Policy};
use super::ApiRequest;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The process's runtime for remote calls, built on first use.
pub fn runtime() -> Result<&'static Runtime, String> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    // Network-bound work: a few threads are plenty, whatever the core count.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("clem-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    // Another thread may have won the race; its runtime is as good as ours (ours is dropped).
    let _ = RUNTIME.set(rt);
    RUNTIME.get().ok_or_else(|| "the HTTP runtime vanished".to_string())
}

/// Runs `fut` on the shared runtime and waits for its result from synchronous code.
pub fn run_sync<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T, String> {
    let rt = runtime()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| "the call's task ended without an answer".to_string())
}

/// How many requests of one model may run at once, and how often they may start.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_concurrency: usize,
    pub requests_per_minute: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_concurrency: 8, requests_per_minute: None }
    }
}

/// A successful exchange: a 2xx status and its body.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub body: Vec<u8>,
    pub attempts: u32,
    /// From the start of the first attempt to the last byte, waits between attempts included (queueing for a
    /// concurrency slot before the first attempt is not).
    pub elapsed: Duration,
}

/// One model's HTTP client with its policy and limits.
pub struct Executor {
    provider: &'static str,
    client: reqwest::Client,
    policy: Policy,
    permits: Semaphore,
    /// The minimum spacing between request starts, and the next free start.
    pace: Option<(Duration, Mutex<Instant>)>,
}

/// Why one attempt failed before a status came back.
enum Failure {
    Timeout,
    Connection(String),
    Invalid(String),
}

impl Executor {
    /// `accept_invalid_certs` turns TLS certificate checks off (the documented, explicit opt-out only).
    pub fn new(
        provider: &'static str,
        policy: Policy,
        limits: &Limits,
        accept_invalid_certs: bool,
    ) -> Result<Executor, RemoteError> {
        // ring is the only crypto provider compiled in; installing it twice is harmless (the first one stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.timeout)
            .user_agent(concat!("clemrs/", env!("CARGO_PKG_VERSION")))
            .tls_danger_accept_invalid_certs(accept_invalid_certs)
            .build()
            .map_err(|e| RemoteError::Internal { provider, message: format!("cannot build the HTTP client: {e}") })?;
        let pace = limits
            .requests_per_minute
            .filter(|&rpm| rpm > 0)
            .map(|rpm| (Duration::from_secs(60) / rpm, Mutex::new(Instant::now())));
        Ok(Executor { provider, client, policy, permits: Semaphore::new(limits.max_concurrency.max(1)), pace })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Sends `req` until it succeeds, fails for good, or attempts run out.
    pub async fn send(&self, req: &ApiRequest) -> Result<Exchange, RemoteError> {
        let provider = self.provider;
        let key = req.auth.as_ref().map(|a| &a.key);
        let body = serde_json::to_vec(&req.body)
            .map_err(|e| RemoteError::Invalid { provider, message: format!("cannot serialise the request: {e}") })?;
        // Timed from the first attempt's start, so queueing behind max_concurrency is not counted.
        let mut start: Option<Instant> = None;
        let max_attempts = self.policy.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = {
                let _permit = self.permits.acquire().await;
                self.pace().await;
                start.get_or_insert_with(Instant::now);
                self.attempt(req, body.clone()).await
            };
            let (server_wait, error) = match outcome {
                Ok((status, _, bytes)) if (200..300).contains(&status) => {
                    let elapsed = start.map(|s| s.elapsed()).unwrap_or_default();
                    return Ok(Exchange { status, body: bytes, attempts: attempt, elapsed });
                }
                Ok((status, headers, bytes)) => {
                    let body = redact(&String::from_utf8_lossy(&bytes), key);
                    let (message, kind) = error_details(&body);
                    let message = match message {
                        Some(m) => redact(&m, key),
                        None if body.trim().is_empty() => "(empty body)".to_string(),
                        None => body.chars().take(500).collect(),
                    };
                    let retryable = is_retryable(status);
                    let outcome = if retryable {
                        format!("gave up after {attempt} attempt(s)")
                    } else {
                        format!("{} ({attempt} attempt(s))", why_final(status))
                    };
                    let wait = server_delay(&headers, &body, SystemTime::now());
                    let error =
                        RemoteError::Status { provider, status, message, kind, body, attempts: attempt, outcome };
                    if !retryable {
                        return Err(error);
                    }
                    (wait, error)
                }
                Err(Failure::Timeout) => {
                    (None, RemoteError::Timeout { provider, timeout: self.policy.timeout, attempts: attempt })
                }
                Err(Failure::Connection(detail)) => {
                    (None, RemoteError::Connection { provider, detail: redact(&detail, key), attempts: attempt })
                }
                Err(Failure::Invalid(message)) => return Err(RemoteError::Invalid { provider, message }),
            };
            if attempt >= max_attempts {
                return Err(error);
            }
            tokio::time::sleep(self.policy.delay(attempt, server_wait)).await;
        }
    }

    /// Waits for this model's next request slot under `requests_per_minute`.
    async fn pace(&self) {
        let Some((interval, next)) = &self.pace else { return };
        let slot = {
            let mut next = next.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + *interval;
            slot
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(slot)).await;
    }

    async fn attempt(&self, req: &ApiRequest, body: Vec<u8>) -> Result<(u16, HeaderMap, Vec<u8>), Failure> {
        let mut builder = self.client.post(&req.url).header(CONTENT_TYPE, "application/json").body(body);
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(auth) = &req.auth {
            let mut value = HeaderValue::from_str(&format!("{}{}", auth.prefix, auth.key.expose())).map_err(|_| {
                Failure::Invalid("the API key holds characters that cannot go into an HTTP header".into())
            })?;
            value.set_sensitive(true);
            builder = builder.header(auth.header, value);
        }
        let response = builder.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(classify)?;
        Ok((status, headers, bytes.to_vec()))
    }
}

fn classify(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        return Failure::Timeout;
    }
    if e.is_builder() {
        return Failure::Invalid(chain(&e));
    }
    Failure::Connection(chain(&e))
}

/// An error and its causes on one line (reqwest's own message alone says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Shares an executor between the synchronous model and the tasks it spawns.
pub type SharedExecutor = Arc<Executor>;
