//! The remote executor against hostile or broken upstreams on 127.0.0.1 (issue 14): credentials that must not
//! follow a redirect to another host (every provider's own header, and the hub's token), a body that never
//! ends, a server that never answers, a port that never accepts, error bodies full of terminal escapes, and
//! calls cancelled while the upstream holds them or while they wait to retry.
//!
//! Fake providers speak each provider's real wire format (paths, auth headers, bodies); the raw TCP servers
//! count what they accept and send, so that "nothing more was read" and "no retry came" are measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clem_backends::hub::{Hub, Snapshot};
use clem_backends::{load_spec, LoadContext};
use clem_core::keys::{Keys, Secret};
use clem_core::{GenArgs, LoadedModel, Message, ModelError, ModelSpec};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use wiremock::matchers::{any, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk-SECRET-4f9c2a7e1b3d5f60";
const KEY_PART: &str = "4f9c2a7e1b3d";

/// wiremock servers with the runtime that keeps them alive while the test calls the synchronous model.
struct Fakes {
    rt: Runtime,
}

impl Fakes {
    fn new() -> Fakes {
        Fakes { rt: Runtime::new().expect("runtime") }
    }
    fn server(&self) -> MockServer {
        self.rt.block_on(MockServer::start())
    }
    fn mount(&self, server: &MockServer, mock: Mock) {
        self.rt.block_on(mock.mount(server));
    }
    fn requests(&self, server: &MockServer) -> Vec<Request> {
        self.rt.block_on(server.received_requests()).unwrap_or_default()
    }
}

fn port(server: &MockServer) -> u16 {
    server.address().port()
}

fn load(entry: Value, keys: Keys) -> LoadedModel {
    let spec: ModelSpec = serde_json::from_value(entry).expect("spec");
    load_spec(&spec, &LoadContext { keys, ..LoadContext::default() }).expect("loads")
}

fn keys(sections: Value) -> Keys {
    Keys::from_json_str(&sections.to_string(), Path::new("key.json")).expect("keys")
}

/// An openai model at `base` (`http://host:port`) with `config` on top of fast retries.
fn openai_at(base: &str, config: Value) -> LoadedModel {
    let mut c = json!({"base_url": format!("{base}/v1"), "retry_base_delay": 0.001, "timeout": 10});
    if let (Value::Object(c), Value::Object(extra)) = (&mut c, config) {
        c.extend(extra);
    }
    load(
        json!({"model_name": "gpt-test", "backend": "openai", "model_id": "gpt-4o", "model_config": c}),
        keys(json!({"openai": {"api_key": KEY}})),
    )
}

fn chat_ok(content: &str) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_741_569_952, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}})
}

fn assert_no_key(text: &str) {
    assert!(!text.contains(KEY) && !text.contains(KEY_PART), "the API key leaked into: {text}");
}

// ---------------------------------------------------------------- credentials and redirects

/// One provider as the executor meets it: where its requests go, how it authenticates, what it answers.
struct Provider {
    backend: &'static str,
    model_id: &'static str,
    section: &'static str,
    /// Appended to the fake's address to make `base_url`.
    base: &'static str,
    /// The request path under the fake's address.
    path: &'static str,
    header: &'static str,
    value: String,
    reply: Value,
}

fn providers() -> Vec<Provider> {
    let bearer = format!("Bearer {KEY}");
    let claude = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1}});
    let gemini = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
        "finishReason": "STOP", "index": 0}], "modelVersion": "gemini-2.5-flash"});
    let cohere = json!({"id": "c1", "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}});
    let p = |backend, model_id, section, base, path, header, value: &str, reply: &Value| Provider {
        backend,
        model_id,
        section,
        base,
        path,
        header,
        value: value.to_string(),
        reply: reply.clone(),
    };
    vec![
        p("openai", "gpt-4o", "openai", "/v1", "/v1/chat/completions", "authorization", &bearer, &chat_ok("ok")),
        p(
            "openai_compatible",
            "qwen3",
            "openai_compatible",
            "/v1",
            "/v1/chat/completions",
            "authorization",
            &bearer,
            &chat_ok("ok"),
        ),
        p(
            "openrouter",
            "meta-llama/llama-3.3-70b-instruct",
            "openrouter",
            "/api/v1",
            "/api/v1/chat/completions",
            "authorization",
            &bearer,
            &chat_ok("ok"),
        ),
        p("azure", "gpt-4o", "azure_gpt", "", "/openai/v1/chat/completions", "api-key", KEY, &chat_ok("ok")),
        p("anthropic", "claude-sonnet-4-5", "anthropic", "", "/v1/messages", "x-api-key", KEY, &claude),
        p(
            "google",
            "gemini-2.5-flash",
            "google",
            "/v1beta",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "x-goog-api-key",
            KEY,
            &gemini,
        ),
        p(
            "mistral",
            "mistral-large-latest",
            "mistral",
            "/v1",
            "/v1/chat/completions",
            "authorization",
            &bearer,
            &chat_ok("ok"),
        ),
        p("cohere", "command-a-03-2025", "cohere", "", "/v2/chat", "authorization", &bearer, &cohere),
    ]
}

impl Provider {
    fn model(&self, origin: &str) -> LoadedModel {
        // openai's organisation header is account data too: it must stay home with the key.
        let section = json!({"api_key": KEY, "organisation": "org-clem"});
        load(
            json!({"model_name": "m", "backend": self.backend, "model_id": self.model_id,
                   "model_config": {"base_url": format!("{origin}{}", self.base), "max_attempts": 1}}),
            keys(json!({ self.section: section })),
        )
    }
}

/// Every header a request carried, with any whose value holds the key or whose name is a credential.
fn leaks(r: &Request) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(name, value)| {
            let v = value.to_str().unwrap_or("");
            v.contains(KEY_PART)
                || v.contains("org-clem")
                || ["authorization", "x-api-key", "x-goog-api-key", "api-key", "openai-organization", "referer"]
                    .contains(&name.as_str())
        })
        .map(|(name, value)| format!("{name}: {value:?}"))
        .collect()
}

/// Before the fix: anthropic, google and azure sent their key to the other host (reqwest strips only
/// `Authorization`), openai sent `OpenAI-Organization`, and every provider sent a `Referer` naming the first URL.
#[test]
fn credentials_never_follow_a_redirect_to_another_host() {
    let fakes = Fakes::new();
    let mut failures = Vec::new();
    for p in providers() {
        let (home, elsewhere) = (fakes.server(), fakes.server());
        // Another host name for the same machine: `localhost` is not `127.0.0.1`.
        let target = format!("http://localhost:{}{}", port(&elsewhere), p.path);
        fakes.mount(
            &home,
            Mock::given(method("POST"))
                .and(path(p.path))
                .respond_with(ResponseTemplate::new(307).insert_header("location", target.as_str())),
        );
        fakes.mount(&elsewhere, Mock::given(any()).respond_with(ResponseTemplate::new(200).set_body_json(&p.reply)));
        let g = p.model(&home.uri()).generate_response(&[Message::user("hi")], &GenArgs::default());
        let g = g.unwrap_or_else(|e| panic!("{}: the 307 was not followed: {e}", p.backend));
        assert_eq!(g.response_text, "ok", "{}", p.backend);
        let sent = fakes.requests(&home);
        assert_eq!(sent.len(), 1, "{}", p.backend);
        assert_eq!(sent[0].headers.get(p.header).and_then(|v| v.to_str().ok()), Some(p.value.as_str()));
        let got = fakes.requests(&elsewhere);
        assert_eq!(got.len(), 1, "{}", p.backend);
        assert_eq!(got[0].method.as_str(), "POST", "{}: a 307 repeats the request", p.backend);
        assert_eq!(got[0].body, sent[0].body, "{}: a 307 repeats the body", p.backend);
        let leaked = leaks(&got[0]);
        if !leaked.is_empty() {
            failures.push(format!("{} sent to another host: {}", p.backend, leaked.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_same_origin_redirect_keeps_the_credential() {
    let fakes = Fakes::new();
    for p in providers() {
        let home = fakes.server();
        let moved = format!("/moved{}", p.path);
        fakes.mount(
            &home,
            Mock::given(method("POST"))
                .and(path(p.path))
                .respond_with(ResponseTemplate::new(308).insert_header("location", format!("{}{moved}", home.uri()))),
        );
        fakes.mount(
            &home,
            Mock::given(method("POST"))
                .and(path(moved.as_str()))
                .and(header(p.header, p.value.as_str()))
                .respond_with(ResponseTemplate::new(200).set_body_json(&p.reply)),
        );
        let g = p.model(&home.uri()).generate_response(&[Message::user("hi")], &GenArgs::default());
        assert_eq!(g.unwrap_or_else(|e| panic!("{}: {e}", p.backend)).response_text, "ok");
        let sent = fakes.requests(&home);
        assert_eq!(sent.len(), 2, "{}", p.backend);
        assert!(sent[1].headers.get("referer").is_none(), "{}", p.backend);
    }
}

/// The same host on another port is another origin (before the fix: the x-api-key went there).
#[test]
fn another_port_is_another_origin_and_redirect_loops_end() {
    let fakes = Fakes::new();
    let p = providers().into_iter().find(|p| p.backend == "anthropic").expect("anthropic");
    let (home, other) = (fakes.server(), fakes.server());
    fakes.mount(
        &home,
        Mock::given(any())
            .respond_with(ResponseTemplate::new(307).insert_header("location", format!("{}{}", other.uri(), p.path))),
    );
    fakes.mount(&other, Mock::given(any()).respond_with(ResponseTemplate::new(200).set_body_json(&p.reply)));
    p.model(&home.uri()).generate_response(&[Message::user("hi")], &GenArgs::default()).expect("followed");
    let got = fakes.requests(&other);
    assert!(leaks(&got[0]).is_empty(), "{:?}", leaks(&got[0]));

    // A redirect loop ends after 10 hops with an error that says so.
    let looping = fakes.server();
    fakes.mount(
        &looping,
        Mock::given(any()).respond_with(ResponseTemplate::new(307).insert_header("location", "/v1/chat/completions")),
    );
    let e = openai_at(&looping.uri(), json!({"max_attempts": 1}))
        .generate_response(&[Message::user("hi")], &GenArgs::default())
        .expect_err("loops");
    assert!(e.to_string().contains("redirects"), "{e}");
    assert_eq!(fakes.requests(&looping).len(), 11);
}

/// The hub's token: the revision API and a file download redirected (307) to another host carry neither the
/// token nor a Referer. Before the fix the token was already dropped (reqwest strips `Authorization`), but
/// both requests carried `Referer: http://127.0.0.1:P/...`.
#[test]
fn hub_token_never_follows_a_redirect_to_another_host() {
    const TOKEN: &str = "hf_SECRETtoken4f9c2a7e1b3d";
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    let fakes = Fakes::new();
    let (hub, cdn) = (fakes.server(), fakes.server());
    let elsewhere = format!("http://localhost:{}", port(&cdn));
    fakes.mount(
        &hub,
        Mock::given(method("GET")).and(path("/api/models/org/tiny/revision/main")).respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{elsewhere}/api/models/org/tiny/revision/main").as_str()),
        ),
    );
    fakes.mount(
        &cdn,
        Mock::given(method("GET"))
            .and(path("/api/models/org/tiny/revision/main"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "org/tiny", "sha": SHA,
                "siblings": [{"rfilename": "config.json"}]}))),
    );
    let etag = "a".repeat(40);
    let resolve = format!("/org/tiny/resolve/{SHA}/config.json");
    fakes.mount(
        &hub,
        Mock::given(method("HEAD")).and(path(resolve.as_str())).respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-repo-commit", SHA)
                .insert_header("etag", format!("\"{etag}\"").as_str())
                .insert_header("x-linked-size", "2"),
        ),
    );
    fakes.mount(
        &hub,
        Mock::given(method("GET"))
            .and(path(resolve.as_str()))
            .respond_with(ResponseTemplate::new(307).insert_header("location", format!("{elsewhere}/blob").as_str())),
    );
    fakes.mount(
        &cdn,
        Mock::given(method("GET")).and(path("/blob")).respond_with(ResponseTemplate::new(200).set_body_string("{}")),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut h = Hub::new(hub.uri(), tmp.path());
    h.progress = false;
    h.token = Some(Secret::new(TOKEN));
    let snap = Snapshot::open(&h, "org/tiny", "main").expect("revision");
    let file = snap.fetch("config.json").expect("downloads");
    assert_eq!(std::fs::read_to_string(file).expect("file"), "{}");
    assert!(fakes.requests(&hub).iter().all(|r| r.headers.get("authorization").is_some()), "the hub gets it");
    let got = fakes.requests(&cdn);
    assert_eq!(got.len(), 2);
    for r in &got {
        let bad: Vec<String> = r
            .headers
            .iter()
            .filter(|(n, v)| {
                ["authorization", "referer"].contains(&n.as_str()) || v.to_str().is_ok_and(|v| v.contains("SECRET"))
            })
            .map(|(n, v)| format!("{n}: {v:?}"))
            .collect();
        assert!(bad.is_empty(), "{} got {}", r.url.path(), bad.join(", "));
    }
}

// ---------------------------------------------------------------- raw servers

/// A TCP server on 127.0.0.1 running `handle` on each connection in its own thread; counts connections and
/// stops accepting when dropped.
struct RawServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RawServer {
    fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped, handle) = (Arc::clone(&accepted), Arc::clone(&stop), Arc::new(handle));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let handle = Arc::clone(&handle);
                std::thread::spawn(move || handle(stream));
            }
        });
        RawServer { addr, accepted, stop }
    }
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Reads one request's head and its `content-length` body; `None` when the peer closed first.
fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return Some(data);
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// Blocks until the peer closes the connection (or 30 s pass).
fn wait_for_close(stream: &mut TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 1024];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

// ---------------------------------------------------------------- response size

/// A 200 whose chunked JSON body never ends (made on the fly, 64 KiB at a time, up to 96 MiB), with the limit
/// at 1 MiB. Before the fix the client read all 96 MiB, twice (the cut-off body counted as a broken connection
/// and was retried); a 1 GB body took 3.1 GB of memory.
#[test]
fn an_endless_body_stops_at_max_response_bytes() {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let server = RawServer::start(move |mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        let filler = "a".repeat(64 << 10);
        let first = format!(r#"{{"id": "x", "choices": [{{"message": {{"role": "assistant", "content": "{filler}"#);
        let mut chunk = first;
        for _ in 0..(96 << 20) / (64 << 10) {
            if s.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes()).is_err() {
                return;
            }
            counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            chunk.clone_from(&filler);
        }
    });
    let model = openai_at(&server.base(), json!({"max_response_bytes": 1 << 20, "max_attempts": 2}));
    let start = Instant::now();
    let e = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("too large");
    let took = start.elapsed();
    let text = e.to_string();
    assert!(text.contains("model_config.max_response_bytes") && text.contains("1048576 bytes (1 MiB"), "{text}");
    assert!(text.contains("not retried"), "{text}");
    // The server writes into socket buffers ahead of the reader: a few MiB past the limit, not 96.
    std::thread::sleep(Duration::from_millis(200));
    let written = sent.load(Ordering::SeqCst);
    assert!(written < 16 << 20, "the server got to write {written} bytes");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(server.accepted(), 1, "not retried");
}

/// A Content-Length above the limit fails at once, before the body is read (before: the client waited for the
/// announced 10 GiB until its timeout, twice).
#[test]
fn a_content_length_above_the_limit_fails_before_reading() {
    let server = RawServer::start(|mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10737418240\r\n\r\n{\"id\":";
        let _ = s.write_all(head.as_bytes());
        wait_for_close(&mut s);
    });
    let model = openai_at(&server.base(), json!({"max_response_bytes": 1 << 20, "timeout": 3, "max_attempts": 2}));
    let start = Instant::now();
    let e = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("too large");
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    assert!(e.to_string().contains("model_config.max_response_bytes"), "{e}");
    assert_eq!(server.accepted(), 1, "not retried");
}

// ---------------------------------------------------------------- deadline and connect timeout

/// A server that accepts and never answers, timeout 1 s, 5 attempts, deadline 2.5 s. Before the fix the call
/// took 5 s (5 x 1 s) and said only "no response within 1 s (model_config.timeout)".
#[test]
fn the_deadline_bounds_a_call_across_attempts() {
    let server = RawServer::start(|mut s| wait_for_close(&mut s));
    let model = openai_at(&server.base(), json!({"timeout": 1, "max_attempts": 5, "deadline": 2.5}));
    let start = Instant::now();
    let e = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("never answers");
    let took = start.elapsed();
    let text = e.to_string();
    assert!(took >= Duration::from_millis(2400) && took < Duration::from_millis(3500), "{took:?}");
    assert!(text.contains("deadline of 2.5 s (model_config.deadline)"), "{text}");
    assert!(text.contains("after 3 attempt(s)") && text.contains("no response within 1 s"), "{text}");
    assert_eq!(server.accepted(), 3);
    assert_no_key(&text);
}

/// A listening socket whose accept queue is full: connecting hangs until `connect_timeout`. Before the fix the
/// error said "no response within 10 s (model_config.timeout)".
#[test]
fn a_connect_timeout_is_reported_as_such() {
    let rt = Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Fill the queue (nobody accepts) until a connection attempt hangs.
    let mut held = Vec::new();
    let full = (0..64).any(|_| match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        Ok(s) => {
            held.push(s);
            false
        }
        Err(_) => true,
    });
    assert!(full, "the accept queue never filled");
    let model = openai_at(&format!("http://{addr}"), json!({"connect_timeout": 0.3, "max_attempts": 2}));
    let start = Instant::now();
    let e = model.generate_response(&[Message::user("hi")], &GenArgs::default()).expect_err("cannot connect");
    let text = e.to_string();
    assert!(text.contains("could not connect within 0.3 s (model_config.connect_timeout)"), "{text}");
    assert!(text.contains("after 2 attempt(s)") && !text.contains("model_config.timeout"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    drop(listener);
}

// ---------------------------------------------------------------- hostile error bodies

/// ESC sequences (clear screen, set the window title) and 1 MB of text in error bodies: escaped and capped in
/// what reaches a terminal. Before the fix the escapes came through raw and a non-JSON body's first 500
/// characters were shown as they were.
#[test]
fn hostile_error_bodies_reach_terminals_escaped_and_short() {
    let hostile = format!("\x1b[2J\x1b]0;pwned\x07{}", "z".repeat(1_000_000));
    let escaped = "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}";
    let fakes = Fakes::new();
    let json_body = json!({"error": {"message": hostile, "type": "\x1b[31minvalid_request_error", "code": null}});
    let cases = [
        ResponseTemplate::new(400).set_body_json(json_body),
        ResponseTemplate::new(502).set_body_raw(hostile.clone().into_bytes(), "text/html"),
        ResponseTemplate::new(200).set_body_raw(hostile.clone().into_bytes(), "application/json"),
    ];
    for response in cases {
        let server = fakes.server();
        fakes.mount(&server, Mock::given(any()).respond_with(response));
        let e = openai_at(&server.uri(), json!({"max_attempts": 1}))
            .generate_response(&[Message::user("hi")], &GenArgs::default())
            .expect_err("fails");
        let text = e.to_string();
        assert!(!text.chars().any(char::is_control), "{:?}", &text[..200.min(text.len())]);
        assert!(text.contains(escaped), "{}", &text[..200.min(text.len())]);
        assert!(text.len() < 5000 && text.contains("more bytes)"), "{} bytes", text.len());
    }
}

// ---------------------------------------------------------------- cancellation

/// Cancelled while the upstream holds the request: `Cancelled` within ~100 ms, the upstream sees the
/// connection close, and no retry arrives.
#[test]
fn cancelling_a_held_request_aborts_it_and_sends_no_retry() {
    let (closed_tx, closed_rx) = mpsc::channel::<Instant>();
    let closed_tx = std::sync::Mutex::new(closed_tx);
    let server = RawServer::start(move |mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        wait_for_close(&mut s);
        let _ = closed_tx.lock().map(|tx| tx.send(Instant::now()));
    });
    let model = openai_at(&server.base(), json!({"max_attempts": 5, "timeout": 20}));
    let cancel = clem_core::Cancel::new();
    let setter = cancel.clone();
    let cancelled_at = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        setter.cancel();
        Instant::now()
    });
    let result = model.generate_response_cancellable(&[Message::user("hi")], &GenArgs::default(), &cancel);
    let returned = Instant::now();
    let cancelled_at = cancelled_at.join().expect("setter");
    assert!(matches!(result, Err(ModelError::Cancelled { .. })), "{result:?}");
    let late = returned.duration_since(cancelled_at);
    assert!(late < Duration::from_millis(250), "returned {late:?} after the cancel");
    let closed = closed_rx.recv_timeout(Duration::from_secs(5)).expect("the upstream saw the connection close");
    assert!(closed.duration_since(cancelled_at) < Duration::from_secs(1), "{:?}", closed.duration_since(cancelled_at));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(server.accepted(), 1, "a request arrived after the cancel");
}

/// Cancelled while waiting out a 500's `Retry-After: 5`: `Cancelled` at once, and no second request, even
/// after the 5 s.
#[test]
fn cancelling_during_a_retry_wait_sends_nothing_more() {
    let requests = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&requests);
    let server = RawServer::start(move |mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        count.fetch_add(1, Ordering::SeqCst);
        let body = json!({"error": {"message": "The server had an error while processing your request.",
            "type": "server_error", "param": null, "code": null}})
        .to_string();
        let answer = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\nretry-after: 5\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(answer.as_bytes());
    });
    let model = openai_at(&server.base(), json!({"max_attempts": 5}));
    let cancel = clem_core::Cancel::new();
    let setter = cancel.clone();
    let seen = Arc::clone(&requests);
    let cancelled_at = std::thread::spawn(move || {
        while seen.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        setter.cancel();
        Instant::now()
    });
    let start = Instant::now();
    let result = model.generate_response_cancellable(&[Message::user("hi")], &GenArgs::default(), &cancel);
    let returned = Instant::now();
    let cancelled_at = cancelled_at.join().expect("setter");
    assert!(matches!(result, Err(ModelError::Cancelled { .. })), "{result:?}");
    assert!(returned.duration_since(cancelled_at) < Duration::from_millis(250));
    // Past the 5 s the server asked for: still one request.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(start.elapsed()) + Duration::from_millis(700));
    assert_eq!(requests.load(Ordering::SeqCst), 1, "a retry was sent after the cancel");
    assert_eq!(server.accepted(), 1);
}
