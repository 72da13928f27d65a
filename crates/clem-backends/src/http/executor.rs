//! The one place that sends HTTP requests: a process-wide tokio runtime, one reqwest client per model, and the
//! retry loop with its concurrency and requests-per-minute limits, its per-call deadline and its response size
//! limit.
//!
//! Redirects are followed here, not by reqwest, because reqwest strips only `Authorization` on a cross-host
//! redirect: the `x-api-key`, `x-goog-api-key` and `api-key` headers would follow a 307 to any host. The rule:
//! the credential ([`super::Auth`]) and the adapter's own headers go only to the configured origin (scheme, host
//! and port of the request's URL); a hop to any other origin carries the body and its content type, nothing
//! else, and no request ever carries a `Referer`.
//!
//! The `Model` trait is synchronous, so callers reach a runtime through [`run_sync`] or
//! [`run_sync_cancellable`] (whose futures end the moment their `Cancel` is set):
//! - one request from a thread outside any async runtime (clem's threads, every Python thread) runs on a
//!   current-thread runtime of that thread's own, with a client of its own per model, so the whole exchange
//!   (hyper's connection task included) runs on the caller's thread: no wake-up of another thread per request,
//!   which was most of a loopback call's cost;
//! - a batch, or a call from a thread inside some other runtime (clem serve's blocking pool), goes to the shared
//!   runtime's threads, the caller waiting on a plain channel (which works where `block_on` would panic).

use std::cell::{Cell, OnceCell, RefCell};
use std::future::Future;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use clem_core::Cancel;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode, Url};
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

/// Runs each future of `futs` at once and waits for all of them, on this thread's own runtime when it is outside
/// any runtime, else on the shared one (see the module's comment). Each races its flag in `cancels`: once the
/// flag is set the future is dropped at once (which aborts its connection) and its place holds `None`, as does a
/// future that vanished (panicked). Results are in input order.
pub fn run_sync_cancellable<T: Send + 'static>(
    futs: Vec<impl Future<Output = T> + Send + 'static>,
    cancels: &[Cancel],
) -> Result<Vec<Option<T>>, String> {
    let check = INTERRUPT_CHECK.with(|c| c.borrow().clone());
    // A batch is spread over the shared runtime's threads: one thread parsing every answer halved the
    // requests/s of a 5000-request batch at concurrency 32 against a loopback server.
    let alone = futs.len() <= 1;
    let mut futs = Some(futs);
    if alone && tokio::runtime::Handle::try_current().is_err() {
        let here = local::block_on(|| join_on_this_runtime(futs.take().unwrap_or_default(), cancels, check.clone()));
        if let Some(out) = here {
            return Ok(out);
        }
    }
    let futs = futs.unwrap_or_default();
    let rt = runtime()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let n = futs.len();
    for (i, fut) in futs.into_iter().enumerate() {
        let tx = tx.clone();
        let cancel = Cancel::of(cancels, i);
        rt.spawn(async move {
            let value = unless_cancelled(&cancel, fut).await;
            let _ = tx.send((i, value));
        });
    }
    drop(tx);
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    // Ends when every task has answered (or vanished: its sender is dropped without a message).
    loop {
        let got = match &check {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(_) => rx.recv_timeout(INTERRUPT_POLL),
        };
        match got {
            // A future that ended with its flag set (e.g. on its own check of the flag) counts as cancelled.
            Ok((i, value)) => out[i] = value.filter(|_| !Cancel::of(cancels, i).is_cancelled()),
            Err(RecvTimeoutError::Timeout) => {
                if check.as_ref().is_some_and(|interrupted| interrupted()) {
                    // Every task then ends at once (its future races its flag) and answers `None`.
                    (0..n).for_each(|i| Cancel::of(cancels, i).cancel());
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(out)
}

/// [`run_sync_cancellable`] inside the runtime it runs on: every future a task of its own (a panic ends that
/// task alone), the interrupt check called every [`INTERRUPT_POLL`] while they run.
async fn join_on_this_runtime<T: Send + 'static>(
    futs: Vec<impl Future<Output = T> + Send + 'static>,
    cancels: &[Cancel],
    check: Option<InterruptCheck>,
) -> Vec<Option<T>> {
    let n = futs.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, fut) in futs.into_iter().enumerate() {
        let cancel = Cancel::of(cancels, i);
        tasks.spawn(async move { (i, unless_cancelled(&cancel, fut).await) });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    loop {
        let next = match &check {
            None => tasks.join_next().await,
            Some(interrupted) => match tokio::time::timeout(INTERRUPT_POLL, tasks.join_next()).await {
                Ok(next) => next,
                Err(_) => {
                    if interrupted() {
                        // Every task then ends at once (its future races its flag) and answers `None`.
                        (0..n).for_each(|i| Cancel::of(cancels, i).cancel());
                    }
                    continue;
                }
            },
        };
        match next {
            None => return out,
            // A future that ended with its flag set (e.g. on its own check of the flag) counts as cancelled.
            Some(Ok((i, value))) => out[i] = value.filter(|_| !Cancel::of(cancels, i).is_cancelled()),
            // A task that panicked keeps `None`.
            Some(Err(_)) => {}
        }
    }
}

/// The runtime and clients of a thread that calls from outside any runtime (see the module's comment).
mod local {
    use super::*;

    thread_local! {
        /// Built on the thread's first call; `None` when it could not be (the shared runtime serves then).
        static RUNTIME: OnceCell<Option<Runtime>> = const { OnceCell::new() };
        /// Whether this thread is inside [`block_on`]: its futures then use this thread's clients.
        static ACTIVE: Cell<bool> = const { Cell::new(false) };
        /// One client per executor (by its token), bound to this thread's runtime: a connection's task lives on
        /// the runtime that opened it, and this one runs only while this thread waits for a call.
        static CLIENTS: RefCell<Vec<(Weak<()>, reqwest::Client)>> = const { RefCell::new(Vec::new()) };
    }

    /// Runs the future `make` returns to its end on this thread's runtime (built on first use); `None`, without
    /// calling `make`, when this thread cannot have one.
    pub fn block_on<F: Future>(make: impl FnOnce() -> F) -> Option<F::Output> {
        /// Puts the flag back, also on a panic.
        struct Reset(bool);
        impl Drop for Reset {
            fn drop(&mut self) {
                ACTIVE.with(|a| a.set(self.0));
            }
        }
        RUNTIME.with(|rt| {
            let rt = rt.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().ok());
            let rt = rt.as_ref()?;
            let _reset = Reset(ACTIVE.with(|a| a.replace(true)));
            Some(rt.block_on(make()))
        })
    }

    /// The client to use here for the executor owning `token`: this thread's own inside [`block_on`] (built with
    /// `build` the first time), else `None` (the executor's shared client). Clients of dropped executors go.
    pub fn client(
        token: &Arc<()>,
        build: impl FnOnce() -> Result<reqwest::Client, String>,
    ) -> Option<Result<reqwest::Client, String>> {
        if !ACTIVE.with(Cell::get) {
            return None;
        }
        CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            clients.retain(|(owner, _)| owner.strong_count() > 0);
            let mine = Arc::downgrade(token);
            if let Some((_, client)) = clients.iter().find(|(owner, _)| owner.ptr_eq(&mine)) {
                return Some(Ok(client.clone()));
            }
            Some(build().inspect(|client| clients.push((mine, client.clone()))))
        })
    }
}

/// How often [`run_sync_cancellable`] calls the thread's interrupt check while it waits.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);

/// A check that says whether the waiting caller was interrupted; see [`with_interrupt_check`].
pub type InterruptCheck = Arc<dyn Fn() -> bool + Send + Sync>;

thread_local! {
    static INTERRUPT_CHECK: RefCell<Option<InterruptCheck>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread with `check` called every [`INTERRUPT_POLL`] by [`run_sync_cancellable`] while it
/// waits; when it returns true, every request of that call is cancelled. This lets a caller that must look
/// for signals itself (Python's main thread, for Ctrl-C) wait for a remote call on its own thread instead of
/// handing the call to another one, which cost a wake-up each way.
pub fn with_interrupt_check<R>(check: InterruptCheck, f: impl FnOnce() -> R) -> R {
    /// Puts back the check that was there, also when `f` panics.
    struct Restore(Option<InterruptCheck>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            INTERRUPT_CHECK.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(INTERRUPT_CHECK.with(|c| c.borrow_mut().replace(check)));
    f()
}

/// `fut`'s output, or `None` as soon as `cancel` is set (the flag is looked at first, so work that ends with
/// the flag set counts as cancelled).
pub async fn unless_cancelled<T>(cancel: &Cancel, fut: impl Future<Output = T>) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    let mut cancelled = cancel.cancelled();
    std::future::poll_fn(|cx| {
        if std::pin::Pin::new(&mut cancelled).poll(cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
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

/// Redirects followed within one attempt (reqwest's own default).
const MAX_REDIRECTS: usize = 10;
/// How much of an error status's body is read; the rest is left unread (its head says what went wrong).
const MAX_ERROR_BODY: u64 = 1 << 20;

/// One model's HTTP client with its policy and limits.
pub struct Executor {
    provider: &'static str,
    /// The client of calls on the shared runtime; a thread that calls from outside any runtime uses its own.
    client: reqwest::Client,
    accept_invalid_certs: bool,
    /// Names this executor's clients in the threads' caches; they go when it does.
    token: Arc<()>,
    /// The last URL sent to, parsed: a model's adapter sends to one or two URLs, and parsing one (IDNA
    /// included) was a visible part of a loopback call.
    last_url: Mutex<Option<(String, Url)>>,
    policy: Policy,
    permits: Semaphore,
    /// The minimum spacing between request starts, and the next free start.
    pace: Option<(Duration, Mutex<Instant>)>,
}

/// Why one attempt failed before a whole response came back.
enum Failure {
    /// The attempt's time ran out; `cut` when it was cut short by the call's deadline.
    Timeout {
        cut: bool,
    },
    ConnectTimeout,
    Connection(String),
    /// The body is larger than `max_response_bytes`.
    TooLarge,
    Invalid(String),
}

/// What one attempt got: the final status (after redirects), its headers and body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The body of an error status was longer than [`MAX_ERROR_BODY`] and cut there.
    truncated: bool,
}

impl Executor {
    /// `accept_invalid_certs` turns TLS certificate checks off (the documented, explicit opt-out only).
    pub fn new(
        provider: &'static str,
        policy: Policy,
        limits: &Limits,
        accept_invalid_certs: bool,
    ) -> Result<Executor, RemoteError> {
        let client = build_client(&policy, accept_invalid_certs)
            .map_err(|message| RemoteError::Internal { provider, message })?;
        let pace = limits
            .requests_per_minute
            .filter(|&rpm| rpm > 0)
            .map(|rpm| (Duration::from_secs(60) / rpm, Mutex::new(Instant::now())));
        Ok(Executor {
            provider,
            client,
            accept_invalid_certs,
            token: Arc::new(()),
            last_url: Mutex::new(None),
            policy,
            permits: Semaphore::new(limits.max_concurrency.max(1)),
            pace,
        })
    }

    /// The client for a request sent from here: the calling thread's own on its runtime, else the shared one.
    fn client(&self) -> Result<reqwest::Client, Failure> {
        match local::client(&self.token, || build_client(&self.policy, self.accept_invalid_certs)) {
            None => Ok(self.client.clone()),
            Some(built) => built.map_err(Failure::Invalid),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Sends `req` until it succeeds, fails for good, attempts run out, the call's deadline passes or `cancel` is
    /// set. The flag is looked at on getting a concurrency slot and before every attempt: a request queued behind
    /// `max_concurrency` whose caller left must not take the slot another one's abort frees.
    pub async fn send(&self, req: &ApiRequest, cancel: &Cancel) -> Result<Exchange, RemoteError> {
        let provider = self.provider;
        let policy = &self.policy;
        let key = req.auth.as_ref().map(|a| &a.key);
        let body = serde_json::to_vec(&req.body)
            .map_err(|e| RemoteError::Invalid { provider, message: format!("cannot serialise the request: {e}") })?;
        let origin = self.parse_url(&req.url)?;
        let deadline = |attempts: u32, last: Option<RemoteError>| RemoteError::Deadline {
            provider,
            deadline: policy.deadline,
            attempts,
            last: last.map(Box::new),
        };
        // Timed from the first attempt's start, so queueing behind max_concurrency is not counted.
        let mut start: Option<Instant> = None;
        let left =
            |start: Option<Instant>| start.map_or(policy.deadline, |s| policy.deadline.saturating_sub(s.elapsed()));
        let max_attempts = policy.max_attempts.max(1);
        let mut last: Option<RemoteError> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = {
                let slot = async {
                    let permit = self.permits.acquire().await;
                    self.pace().await;
                    permit
                };
                // Before the first attempt the deadline has not started; after it, waiting for a slot counts.
                let _permit = match start {
                    None => slot.await,
                    Some(_) => match tokio::time::timeout(left(start), slot).await {
                        Ok(permit) => permit,
                        Err(_) => return Err(deadline(attempt - 1, last)),
                    },
                };
                if cancel.is_cancelled() {
                    return Err(RemoteError::Cancelled { provider, attempts: attempt - 1 });
                }
                start.get_or_insert_with(Instant::now);
                let budget = policy.timeout.min(left(start));
                if budget.is_zero() {
                    return Err(deadline(attempt - 1, last));
                }
                match tokio::time::timeout(budget, self.attempt(req, &origin, &body)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(Failure::Timeout { cut: budget < policy.timeout }),
                }
            };
            let (server_wait, error) = match outcome {
                Ok(answer) if (200..300).contains(&answer.status) => {
                    let elapsed = start.map(|s| s.elapsed()).unwrap_or_default();
                    return Ok(Exchange { status: answer.status, body: answer.body, attempts: attempt, elapsed });
                }
                Ok(Answer { status, headers, body: bytes, truncated }) => {
                    let mut body = redact(&String::from_utf8_lossy(&bytes), key);
                    if truncated {
                        // The cut may have split the key, out of reach of `redact`: drop a trailing part of it.
                        body.truncate(body.len() - key_prefix_at_end(&body, key));
                    }
                    let (message, kind) = error_details(&body);
                    let message = match message {
                        Some(m) => redact(&m, key),
                        None if body.trim().is_empty() => "(empty body)".to_string(),
                        None => body.clone(),
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
                Err(Failure::Timeout { cut: true }) => return Err(deadline(attempt, last)),
                Err(Failure::Timeout { cut: false }) => {
                    (None, RemoteError::Timeout { provider, timeout: policy.timeout, attempts: attempt })
                }
                Err(Failure::ConnectTimeout) => {
                    (None, RemoteError::ConnectTimeout { provider, timeout: policy.connect_timeout, attempts: attempt })
                }
                Err(Failure::Connection(detail)) => {
                    (None, RemoteError::Connection { provider, detail: redact(&detail, key), attempts: attempt })
                }
                Err(Failure::TooLarge) => {
                    return Err(RemoteError::TooLarge { provider, limit: policy.max_response_bytes, attempts: attempt })
                }
                Err(Failure::Invalid(message)) => return Err(RemoteError::Invalid { provider, message }),
            };
            if attempt >= max_attempts {
                return Err(error);
            }
            let wait = policy.delay(attempt, server_wait);
            if wait >= left(start) {
                // The next attempt could not start before the deadline: say so now rather than sleep first.
                return Err(deadline(attempt, Some(error)));
            }
            last = Some(error);
            if unless_cancelled(cancel, tokio::time::sleep(wait)).await.is_none() {
                return Err(RemoteError::Cancelled { provider, attempts: attempt });
            }
        }
    }

    /// `url` parsed, from the cache of the last one when it is the same.
    fn parse_url(&self, url: &str) -> Result<Url, RemoteError> {
        let mut last = self.last_url.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, parsed)) = last.as_ref().filter(|(text, _)| text == url) {
            return Ok(parsed.clone());
        }
        let parsed = Url::parse(url).map_err(|e| RemoteError::Invalid {
            provider: self.provider,
            message: format!("invalid URL {url:?}: {e}"),
        })?;
        *last = Some((url.to_owned(), parsed.clone()));
        Ok(parsed)
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

    /// One attempt: the request, the redirects it meets (see the module's comment for what each hop carries),
    /// and the final answer's body, read up to the size limit.
    async fn attempt(&self, req: &ApiRequest, origin: &Url, body: &[u8]) -> Result<Answer, Failure> {
        let credential = match &req.auth {
            Some(auth) => {
                let mut value =
                    HeaderValue::from_str(&format!("{}{}", auth.prefix, auth.key.expose())).map_err(|_| {
                        Failure::Invalid("the API key holds characters that cannot go into an HTTP header".into())
                    })?;
                value.set_sensitive(true);
                Some((auth.header, value))
            }
            None => None,
        };
        let client = self.client()?;
        let mut url = origin.clone();
        let mut method = Method::POST;
        let mut with_body = true;
        let mut hops = 0;
        loop {
            let mut builder = client.request(method.clone(), url.clone());
            if with_body {
                builder = builder.header(CONTENT_TYPE, "application/json").body(body.to_vec());
            }
            if same_origin(&url, origin) {
                for (name, value) in &req.headers {
                    builder = builder.header(name.as_str(), value.as_str());
                }
                if let Some((name, value)) = &credential {
                    builder = builder.header(*name, value.clone());
                }
            }
            let response = builder.send().await.map_err(classify)?;
            let status = response.status();
            if let Some(next) = redirect_target(&response, &url)? {
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(Failure::Connection(format!("more than {MAX_REDIRECTS} redirects")));
                }
                // As reqwest (and browsers) do: 301/302/303 turn the request into a GET without a body; 307 and
                // 308 repeat it as it was.
                if matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER) {
                    method = Method::GET;
                    with_body = false;
                }
                url = next;
                continue;
            }
            let success = status.is_success();
            let limit = if success {
                self.policy.max_response_bytes
            } else {
                MAX_ERROR_BODY.min(self.policy.max_response_bytes)
            };
            let headers = response.headers().clone();
            let (body, truncated) = read_body(response, limit, !success).await?;
            return Ok(Answer { status: status.as_u16(), headers, body, truncated });
        }
    }
}

/// The HTTP client every executor uses, on whichever runtime: redirects are followed by [`Executor::attempt`].
fn build_client(policy: &Policy, accept_invalid_certs: bool) -> Result<reqwest::Client, String> {
    // ring is the only crypto provider compiled in; installing it twice is harmless (the first one stays).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // No client-wide timeout: each attempt gets min(timeout, time left before the deadline), see `send`.
    reqwest::Client::builder()
        .connect_timeout(policy.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .user_agent(concat!("clemrs/", env!("CARGO_PKG_VERSION")))
        .tls_danger_accept_invalid_certs(accept_invalid_certs)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Whether two URLs share scheme, host and port (the port a scheme implies counts as given).
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// Where a redirect answer points, or `None` when `response` is not one to follow (a redirect status without
/// a `Location` is an answer like any other).
fn redirect_target(response: &Response, current: &Url) -> Result<Option<Url>, Failure> {
    let follow = matches!(
        response.status(),
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    );
    let Some(location) = response.headers().get(LOCATION).filter(|_| follow) else { return Ok(None) };
    let bad = |why: &str| Failure::Connection(format!("HTTP {} redirect {why}", response.status().as_u16()));
    let location = location.to_str().map_err(|_| bad("with a Location that is not text"))?;
    let next = current.join(location).map_err(|e| bad(&format!("to an invalid Location: {e}")))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(bad(&format!("to a {}: URL, which is not followed", next.scheme())));
    }
    Ok(Some(next))
}

/// Reads a body chunk by chunk up to `limit` bytes: a `Content-Length` above it fails before any byte is read,
/// and reading stops as soon as the limit is passed. With `truncate`, the first `limit` bytes are kept instead
/// of failing (the flag says so).
async fn read_body(mut response: Response, limit: u64, truncate: bool) -> Result<(Vec<u8>, bool), Failure> {
    let announced = response.content_length();
    if !truncate && announced.is_some_and(|n| n > limit) {
        return Err(Failure::TooLarge);
    }
    // Room for what is announced, never more than the limit nor a first guess of 1 MiB.
    let capacity = announced.unwrap_or(0).min(limit).min(1 << 20);
    let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        let room = usize::try_from(limit.saturating_sub(body.len() as u64)).unwrap_or(usize::MAX);
        if chunk.len() > room {
            if !truncate {
                return Err(Failure::TooLarge);
            }
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// How many bytes at the end of `text` are the start of the key (a body cut in the middle of an echoed key).
fn key_prefix_at_end(text: &str, key: Option<&clem_core::keys::Secret>) -> usize {
    let Some(key) = key.map(|k| k.expose()) else { return 0 };
    (1..key.len()).rev().find(|&n| key.is_char_boundary(n) && text.ends_with(&key[..n])).unwrap_or(0)
}

fn classify(e: reqwest::Error) -> Failure {
    // reqwest's connect_timeout is both a connect error and a timeout: it is reported with its own setting.
    if e.is_connect() && e.is_timeout() {
        return Failure::ConnectTimeout;
    }
    if e.is_timeout() {
        return Failure::Timeout { cut: false };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_flag_set_while_waiting_ends_its_future_at_once() {
        let cancel = Cancel::new();
        let flag = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            flag.cancel();
        });
        let clock = Instant::now();
        let out = run_sync_cancellable(vec![std::future::pending::<u8>()], &[cancel]).expect("runs");
        assert_eq!(out, [None]);
        assert!(clock.elapsed() < Duration::from_secs(2), "{:?}", clock.elapsed());
        assert_eq!(run_sync_cancellable(vec![async { 7 }], &[]).expect("runs"), [Some(7)]);
    }

    /// A thread outside any runtime runs its single calls itself (no hand-over to another thread per request); a
    /// batch, or a thread inside a runtime's context (clem serve's blocking pool), goes to the shared runtime, where
    /// `block_on` would panic; a panicking future answers `None` either way; a thread that ran calls exits cleanly.
    #[test]
    fn calls_run_on_the_calling_thread_unless_it_is_inside_a_runtime() {
        let where_run = |n: usize| (0..n).map(|_| async { std::thread::current().id() }).collect::<Vec<_>>();
        let here = std::thread::current().id();
        assert_eq!(run_sync_cancellable(where_run(1), &[]).expect("runs"), [Some(here)]);
        // A batch is spread over the shared runtime's threads.
        let out = run_sync_cancellable(where_run(2), &[]).expect("runs");
        assert!(out.iter().all(|id| id.is_some_and(|id| id != here)), "{out:?} ran on the caller {here:?}");

        let rt = runtime().expect("the shared runtime");
        let on_blocking_pool = rt
            .block_on(rt.spawn_blocking(move || {
                let me = std::thread::current().id();
                (me, run_sync_cancellable(where_run(1), &[]).expect("runs"))
            }))
            .expect("the blocking task ends");
        let (me, out) = on_blocking_pool;
        assert!(out.iter().all(|id| id.is_some_and(|id| id != me)), "{out:?} ran on the caller {me:?}");

        let panicking = vec![Box::pin(async { 1u8 }) as std::pin::Pin<Box<dyn Future<Output = u8> + Send>>, {
            Box::pin(async { panic!("a backend bug") })
        }];
        assert_eq!(run_sync_cancellable(panicking, &[]).expect("runs"), [Some(1), None]);

        let thread = std::thread::spawn(|| run_sync_cancellable(vec![async { 5 }], &[]).expect("runs"));
        assert_eq!(thread.join().expect("the thread exits without a panic"), [Some(5)]);
    }

    /// Python's main thread waits for remote calls itself, checking for Ctrl-C through the interrupt check.
    #[test]
    fn the_threads_interrupt_check_cancels_the_call_it_waits_for() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let check: InterruptCheck = Arc::new(move || seen.fetch_add(1, Ordering::SeqCst) >= 1);
        let cancels = [Cancel::new(), Cancel::new()];
        let futs = vec![std::future::pending::<u8>(), std::future::pending::<u8>()];
        let out = with_interrupt_check(check, || run_sync_cancellable(futs, &cancels)).expect("runs");
        assert_eq!(out, [None, None]);
        assert!(cancels.iter().all(Cancel::is_cancelled));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "interrupted at the second look");
        // The check was this call's only: the thread has none any more.
        assert!(INTERRUPT_CHECK.with(|c| c.borrow().is_none()));
    }
}
