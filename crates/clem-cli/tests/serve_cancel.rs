//! `clem serve` cancels work nobody waits for (issue #14): an `openai_compatible` model in front of a fake
//! upstream on 127.0.0.1 that never answers. Clients that disconnect must take their upstream requests with
//! them (connections closed, queued requests never sent); shutdown must drain within its deadline, then cancel
//! the rest, and return only once nothing more goes upstream. The server runs in-process (`clem_serve::run`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clem_backends::{load_spec, LoadContext};
use clem_core::keys::Keys;
use clem_core::{BatchMode, Cancel, GenArgs, Generation, LoadedModel, Message, Model, ModelError, ModelSpec};
use clem_serve::{App, ServeConfig};
use serde_json::{json, Value};

/// An upstream that reads requests and never answers; counts request heads and open connections.
struct Hang {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

fn hang() -> Hang {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (requests, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, o) = (requests.clone(), open.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let (r, o) = (r.clone(), o.clone());
            o.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            seen.extend_from_slice(&buf[..n]);
                            // Each request head counts once (a keep-alive connection may carry several).
                            while let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                                r.fetch_add(1, Ordering::SeqCst);
                                seen.drain(..at + 4);
                            }
                        }
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Hang { addr, requests, open }
}

/// The `openai_compatible` model in front of `upstream`: at most 10 requests upstream at once (the rest queue in
/// the executor), long timeouts so that only cancellation can end a request.
fn remote(upstream: SocketAddr) -> LoadedModel {
    let spec: ModelSpec = serde_json::from_value(json!({
        "model_name": "remote", "backend": "openai_compatible", "model_id": "m",
        "model_config": {"max_concurrency": 10, "timeout": 120}
    }))
    .expect("spec");
    let keys = json!({"openai_compatible": {"api_key": "sk-test", "base_url": format!("http://{upstream}/v1")}});
    let keys = Keys::from_json_str(&keys.to_string(), Path::new("key.json")).expect("keys");
    load_spec(&spec, &LoadContext { keys, ..LoadContext::default() }).expect("loads")
}

/// A fast unrelated model, optionally slow by `delay`.
struct Echo {
    spec: ModelSpec,
    delay: Duration,
}

impl Model for Echo {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    fn generate_response(&self, messages: &[Message], _: &GenArgs, _: &Cancel) -> Result<Generation, ModelError> {
        std::thread::sleep(self.delay);
        let text = messages.last().map(|m| m.content.clone()).unwrap_or_default();
        Ok(Generation::new(json!({}), json!({}), text))
    }
    fn batch_mode(&self) -> BatchMode {
        BatchMode::Sequential
    }
}

fn echo(delay_ms: u64) -> LoadedModel {
    let spec = serde_json::from_value(json!({"model_name": "echo", "backend": "test"})).expect("spec");
    LoadedModel::new(Box::new(Echo { spec, delay: Duration::from_millis(delay_ms) }))
}

struct Server {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

fn start(models: Vec<LoadedModel>, config: ServeConfig) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let app = App::new(models, config).expect("app");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = rt.spawn(async move {
        clem_serve::run(listener, &app, async move {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Server { rt, addr, stop: Some(tx), done: Some(done) }
}

/// Sends a chat request and leaves the connection open (the reply is read later, or never).
fn send(addr: SocketAddr, model: &str) -> TcpStream {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    s
}

/// The status of the reply on `s`, read to its end (0 when the connection closed without one).
fn status_of(mut s: TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn wait_until(limit: Duration, what: &str, ok: impl Fn() -> bool) -> Duration {
    let clock = Instant::now();
    while !ok() {
        assert!(clock.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    clock.elapsed()
}

fn in_flight(addr: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str::<Value>(body).ok().and_then(|v| v["in_flight"].as_u64()).unwrap_or(u64::MAX)
}

/// How many of the 40 queued requests may still go out while the server notices the 50 disconnects one at a
/// time: 0 or 1 on an idle machine, up to 8 seen with the load average at 11 on 2 cores (the server's own
/// tasks are late to see the closes); before the fix 21 to 42. The executor alone is held to none in
/// `queued_requests_whose_caller_left_take_no_freed_slot`.
const QUEUED_SENT_AT_MOST: usize = 12;

/// Before: a disconnected client freed its slot but its generation went on; the 10 upstream connections stayed
/// open (until the 120 s timeout, then retries) and the 40 queued requests were sent one after another. Run
/// before the fix: "every upstream connection closed: not within 1s".
#[test]
fn clients_that_disconnect_cancel_their_upstream_requests() {
    let upstream = hang();
    let server = start(vec![remote(upstream.addr), echo(0)], ServeConfig::default());
    let clients: Vec<TcpStream> = (0..50).map(|_| send(server.addr, "remote")).collect();
    wait_until(Duration::from_secs(10), "10 requests upstream", || upstream.requests.load(Ordering::SeqCst) == 10);

    let clock = Instant::now();
    assert_eq!(status_of(send(server.addr, "echo")), 200);
    let fast = clock.elapsed();
    eprintln!("an unrelated model answered in {fast:?} with 50 requests hanging");
    assert!(fast < Duration::from_millis(500), "{fast:?}");

    drop(clients);
    let closed = wait_until(Duration::from_secs(1), "every upstream connection closed", || {
        upstream.open.load(Ordering::SeqCst) == 0
    });
    wait_until(Duration::from_secs(1), "no request in flight", || in_flight(server.addr) == 0);
    // The 40 queued requests must not take the slots the aborted ones free: each looks at its flag on getting
    // a slot and before every attempt. The server notices the 50 disconnects one by one, so a queued request
    // whose client's close is not yet seen may still go out; a few, not dozens. Before (the executor looked
    // at the flags every 20 ms from outside the request): 26, 26 and 35 of the 40 were sent. From now on
    // nothing may go upstream.
    let sent = upstream.requests.load(Ordering::SeqCst);
    eprintln!("upstream connections closed {closed:?} after the clients left; {sent} of 50 requests were sent");
    assert!(
        sent <= 10 + QUEUED_SENT_AT_MOST,
        "{} of the 40 queued requests went upstream after their clients left",
        sent - 10
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(upstream.requests.load(Ordering::SeqCst), sent, "requests went upstream after their clients left");
    assert_eq!(upstream.open.load(Ordering::SeqCst), 0);
    let clock = Instant::now();
    assert_eq!(status_of(send(server.addr, "echo")), 200);
    assert!(clock.elapsed() < Duration::from_millis(500), "{:?}", clock.elapsed());
}

/// An upstream that never answers and keeps the `call N` marker of every request it reads.
fn hang_recording() -> (SocketAddr, Arc<std::sync::Mutex<Vec<usize>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let (mut text, mut buf) = (String::new(), [0u8; 4096]);
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    while let Some(at) = text.find("call ") {
                        let digits: String = text[at + 5..].chars().take_while(char::is_ascii_digit).collect();
                        if text[at + 5 + digits.len()..].is_empty() {
                            break; // the number may go on in the next read
                        }
                        seen.lock().expect("lock").extend(digits.parse::<usize>().ok());
                        text.drain(..at + 5 + digits.len());
                    }
                }
            });
        }
    });
    (addr, calls)
}

/// The executor alone, as `clem serve` calls it (one thread and one `Cancel` per request): 30 callers, 10 in
/// flight, 20 queued. The queued callers leave, then at once the ones in flight: the freed slots must go to
/// nobody. Before (each waiting thread looked at its flag every 20 ms, from outside the request): a queued
/// request whose flag was already set took a slot freed at another thread's look and was sent.
#[test]
fn queued_requests_whose_caller_left_take_no_freed_slot() {
    let (addr, calls) = hang_recording();
    let model = Arc::new(remote(addr));
    let cancels: Vec<Cancel> = (0..30).map(|_| Cancel::new()).collect();
    let callers: Vec<_> = cancels
        .iter()
        .enumerate()
        .map(|(i, cancel)| {
            let (model, cancel) = (model.clone(), cancel.clone());
            std::thread::spawn(move || {
                let messages = [Message::user(format!("call {i}"))];
                model.generate_response_cancellable(&messages, &GenArgs::new(0.0, 300), &cancel)
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "10 requests upstream", || calls.lock().expect("lock").len() == 10);
    std::thread::sleep(Duration::from_millis(100)); // the other 20 are queued by now
    let in_flight = calls.lock().expect("lock").clone();
    let (running, queued): (Vec<usize>, Vec<usize>) = (0..30).partition(|i| in_flight.contains(i));
    for i in queued.iter().chain(&running) {
        cancels[*i].cancel();
    }
    for caller in callers {
        assert!(matches!(caller.join().expect("joins"), Err(ModelError::Cancelled { .. })));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = calls.lock().expect("lock").clone();
    assert_eq!(sent.len(), 10, "queued requests sent after their callers left: {:?}", &sent[10..]);
}

/// Before: axum's graceful shutdown waited for every request in flight, so `run` did not return while the
/// upstream hung. Run before the fix: "run() returned within the deadline ...: Elapsed(())".
#[test]
fn shutdown_drains_then_cancels_and_nothing_goes_upstream_after_it() {
    let upstream = hang();
    let config = ServeConfig { shutdown_timeout: Duration::from_millis(800), ..ServeConfig::default() };
    let mut server = start(vec![remote(upstream.addr), echo(300)], config);
    let hanging: Vec<TcpStream> = (0..15).map(|_| send(server.addr, "remote")).collect();
    wait_until(Duration::from_secs(10), "10 requests upstream", || upstream.requests.load(Ordering::SeqCst) == 10);
    let finishing = send(server.addr, "echo");
    std::thread::sleep(Duration::from_millis(50));

    let clock = Instant::now();
    let _ = server.stop.take().map(|s| s.send(()));
    // A request that finishes within the deadline is answered; the listener is closed at once.
    assert_eq!(status_of(finishing), 200);
    assert!(TcpStream::connect(server.addr).is_err(), "still accepting after shutdown");
    let done = server.done.take().expect("running");
    server
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), done).await })
        .expect("run() returned within the deadline and the cancellation grace")
        .expect("join");
    let stopped = clock.elapsed();
    eprintln!("stopped {stopped:?} after the signal");
    assert!(stopped >= Duration::from_millis(800), "stopped before the deadline: {stopped:?}");
    // "stopped" is printed here: nothing may reach the upstream from now on.
    let sent = upstream.requests.load(Ordering::SeqCst);
    wait_until(Duration::from_millis(300), "every upstream connection closed", || {
        upstream.open.load(Ordering::SeqCst) == 0
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(upstream.requests.load(Ordering::SeqCst), sent, "requests went upstream after stopping");
    eprintln!("{sent} of 15 requests were sent before the server stopped");
    for client in hanging {
        assert_ne!(status_of(client), 200);
    }
}
