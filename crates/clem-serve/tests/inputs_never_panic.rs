//! Property tests of the server's readers of outside input: chat request bodies (`parse_chat`) and whole HTTP
//! requests (method, path, `Authorization`, `Content-Length`, body) driven through the router in-process, with
//! scripted models whose replies are arbitrary too (backends hand the server provider JSON).
//!
//! A panic (an index, an unwrap, an arithmetic overflow in this debug build) fails a test. Where the server
//! accepts a request, what it answers must agree with it; every refusal must be an OpenAI error body. Generators
//! build bodies along the fields the parser reads (`messages[i].content[j].image_url.url`, ...), each field
//! sometimes missing, of the wrong kind, or replaced by an arbitrary tree.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use clem_core::{
    BatchMode, Cancel, ContextExceeded, GenArgs, Generation, LoadedModel, Message, Model, ModelError, ModelSpec, Role,
};
use clem_json_strategies as strategies;
use clem_serve::{parse_chat, App, ServeConfig};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------------------------
// JSON generators

/// Keys the parser looks for, so that random objects hit them often.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "n",
    "stream",
    "stream_options",
    "include_usage",
    "stop",
    "seed",
    "top_p",
    "user",
    "response",
    "choices",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
];

/// Strings the parser compares against.
const WORDS: &[&str] =
    &["system", "developer", "user", "assistant", "tool", "text", "image_url", "", "seq", "fwd", "length", "stop"];

fn key() -> BoxedStrategy<String> {
    strategies::key(KEYS)
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..300).prop_map(Value::from),
        strategies::float(),
        (-1.0f64..3.0).prop_map(Value::from),
    ]
    .boxed()
}

fn scalar() -> BoxedStrategy<Value> {
    strategies::scalar(WORDS, number(), 2)
}

/// Any JSON, a few levels deep, with the parser's keys and words favoured.
fn tree() -> BoxedStrategy<Value> {
    strategies::tree(scalar(), key(), 3, 32, 5)
}

/// `Some(v)` from `good`, unless `mangle`: then now and then missing or anything.
fn field(mangle: bool, good: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    if !mangle {
        return good.prop_map(Some).boxed();
    }
    prop_oneof![24 => good.prop_map(Some), 1 => Just(None), 1 => tree().prop_map(Some)].boxed()
}

fn noise() -> BoxedStrategy<Vec<(String, Value)>> {
    prop::collection::vec((key(), tree()), 0..3).boxed()
}

/// A content part: `type`, `text` and `image_url` (a string, `{url}` or neither), each maybe wrong.
fn part(mangle: bool) -> BoxedStrategy<Value> {
    let ty = field(
        mangle,
        prop::sample::select(
            vec!["text", "text", "text", "image_url", "image_url", "input_audio"][..5 + usize::from(mangle)].to_vec(),
        )
        .prop_map(Value::from)
        .boxed(),
    );
    let text = field(mangle, any::<String>().prop_map(Value::from).boxed());
    let url = prop_oneof![
        any::<String>().prop_map(|u| json!({ "url": u })),
        any::<String>().prop_map(Value::from),
        (field(mangle, scalar()), noise()).prop_map(|(u, n)| strategies::object(vec![("url", u)], n)),
    ]
    .boxed();
    (ty, text, field(mangle, url), noise())
        .prop_map(|(ty, text, url, n)| strategies::object(vec![("type", ty), ("text", text), ("image_url", url)], n))
        .boxed()
}

fn message(mangle: bool) -> BoxedStrategy<Value> {
    let w = u32::from(mangle);
    let roles = prop::sample::select(vec!["system", "developer", "user", "assistant"]).prop_map(Value::from);
    let role = field(mangle, prop_oneof![12 => roles, w => prop::sample::select(WORDS).prop_map(Value::from)].boxed());
    let content = field(
        mangle,
        prop_oneof![
            2 => any::<String>().prop_map(Value::from),
            1 => Just(Value::Null),
            2 => prop::collection::vec(prop_oneof![8 => part(mangle), 1 => tree()], 0..4).prop_map(Value::Array),
        ]
        .boxed(),
    );
    (role, content, noise()).prop_map(|(r, c, n)| strategies::object(vec![("role", r), ("content", c)], n)).boxed()
}

/// A chat request body: every field the parser reads (with `mangle`, each maybe missing or wrong), and unknown
/// fields.
fn chat_body(mangle: bool) -> BoxedStrategy<Value> {
    // Values the parser refuses, only when mangling.
    let w = u32::from(mangle);
    let names =
        prop_oneof![16 => prop::sample::select(vec!["seq", "fwd"]), w => prop::sample::select(vec!["nope", ""])];
    let model = field(mangle, names.prop_map(Value::from).boxed());
    let list = |n| prop::collection::vec(prop_oneof![24 => message(mangle), 1 => tree()], n).prop_map(Value::Array);
    let messages = field(mangle, prop_oneof![16 => list(1..4), w => list(0..1)].boxed());
    let tokens = || {
        let plausible = prop_oneof![8 => 1u64..=CAP.into(), w => 0u64..=120].prop_map(Value::from);
        field(mangle, prop_oneof![6 => plausible, w => number()].boxed())
    };
    let temperature = field(mangle, prop_oneof![3 => (0.0f64..=2.0).prop_map(Value::from), w => number()].boxed());
    let n = field(
        mangle,
        prop_oneof![
            3 => Just(json!(1)),
            w => prop::sample::select(vec![json!(2), json!(0), json!(1.0), json!("1")]),
        ]
        .boxed(),
    );
    let stream = field(mangle, prop_oneof![3 => any::<bool>().prop_map(Value::from), w => scalar()].boxed());
    let options = field(
        mangle,
        (field(mangle, scalar()), noise()).prop_map(|(u, n)| strategies::object(vec![("include_usage", u)], n)).boxed(),
    );
    let passed = prop::collection::vec(
        (prop::sample::select(vec!["top_p", "seed", "stop", "presence_penalty", "top_k", "min_p"]), tree()),
        0..3,
    );
    (model, messages, (tokens(), tokens()), temperature, n, (stream, options), passed, noise())
        .prop_map(|(model, messages, (mt, mct), temperature, n, (stream, options), passed, noise)| {
            let mut body = strategies::object(
                vec![
                    ("model", model),
                    ("messages", messages),
                    ("max_tokens", mt),
                    ("max_completion_tokens", mct),
                    ("temperature", temperature),
                    ("n", n),
                    ("stream", stream),
                    ("stream_options", options),
                ],
                noise,
            );
            if let Value::Object(m) = &mut body {
                m.extend(passed.into_iter().map(|(k, v)| (k.to_string(), v)));
            }
            body
        })
        .boxed()
}

/// Request body bytes: a chat body, any JSON, or any bytes.
fn body_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => chat_body(false).prop_map(|v| v.to_string().into_bytes()),
        6 => chat_body(true).prop_map(|v| v.to_string().into_bytes()),
        1 => tree().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        // Deeper than serde_json's recursion limit.
        1 => (1usize..400).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------------------------
// What a valid request means, written out from the API's documentation

const CAP: u32 = 100;

fn config() -> ServeConfig {
    ServeConfig {
        api_key: Some("sk-test-key".into()),
        max_tokens_cap: CAP,
        max_body_bytes: 3000,
        batch_window: Duration::from_millis(0),
        ..ServeConfig::default()
    }
}

fn role_of(v: &Value) -> Option<Role> {
    match v.get("role")?.as_str()? {
        "system" | "developer" => Some(Role::System),
        "user" => Some(Role::User),
        "assistant" => Some(Role::Assistant),
        _ => None,
    }
}

/// The text parts of a content list, joined, and its image URLs.
fn parts_of(parts: &[Value]) -> (String, Vec<String>) {
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => texts.extend(p.get("text").and_then(Value::as_str).map(String::from)),
            _ => {
                let u = p.get("image_url");
                images.extend(u.and_then(|u| u.get("url").or(Some(u))).and_then(Value::as_str).map(String::from));
            }
        }
    }
    (texts.join("\n"), images)
}

fn check_accepted(body: &Value, r: &clem_serve::ChatRequest, config: &ServeConfig) -> Result<(), TestCaseError> {
    prop_assert_eq!(Some(r.model.as_str()), body["model"].as_str());
    let list = body["messages"].as_array().expect("accepted messages are a list");
    prop_assert_eq!(r.messages.len(), list.len());
    for (m, v) in r.messages.iter().zip(list) {
        prop_assert_eq!(Some(m.role), role_of(v));
        match &v["content"] {
            Value::String(s) => prop_assert_eq!(&m.content, s),
            Value::Array(parts) => {
                let (text, images) = parts_of(parts);
                prop_assert_eq!(&m.content, &text);
                prop_assert_eq!(&m.image, &images);
                // Never a local path or file: URL (backends read those from disk).
                for u in &m.image {
                    let data = u.starts_with("data:image/") && u.contains(";base64,");
                    prop_assert!(data || u.starts_with("http://") || u.starts_with("https://"), "{:?}", u);
                }
            }
            other => prop_assert!(other.is_null() && m.content.is_empty()),
        }
    }
    let tokens = [&body["max_completion_tokens"], &body["max_tokens"]].into_iter().find(|v| !v.is_null());
    match tokens {
        Some(v) => prop_assert_eq!(Some(u64::from(r.args.max_tokens)), v.as_u64()),
        None => prop_assert_eq!(r.args.max_tokens, config.default_max_tokens.min(config.max_tokens_cap)),
    }
    prop_assert!((1..=config.max_tokens_cap).contains(&r.args.max_tokens));
    match body["temperature"].as_f64() {
        Some(t) => prop_assert_eq!(r.args.temperature, t),
        None => prop_assert_eq!(r.args.temperature, config.default_temperature),
    }
    prop_assert!((0.0..=2.0).contains(&r.args.temperature));
    prop_assert_eq!(r.stream, body["stream"] == json!(true));
    prop_assert_eq!(r.include_usage, body["stream_options"]["include_usage"] == json!(true));
    prop_assert!(r.args.extra.is_empty());
    for (k, v) in &r.sampling {
        prop_assert_eq!(Some(v), body.get(k));
        prop_assert!(!v.is_null());
    }
    for s in &r.args.stop {
        prop_assert!(
            body["stop"].as_str() == Some(s.as_str()) || body["stop"].as_array().is_some_and(|l| l.contains(&json!(s)))
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The router, with scripted models

/// What the scripted models answer next: the provider's raw response and the cleaned text, or an error.
#[derive(Clone, Debug)]
enum Script {
    Reply { response: Value, text: String },
    TooLong,
    Fails,
}

static SCRIPT: Mutex<Option<Script>> = Mutex::new(None);

fn script() -> MutexGuard<'static, Option<Script>> {
    SCRIPT.lock().unwrap_or_else(|e| e.into_inner())
}

struct Scripted {
    spec: ModelSpec,
    mode: BatchMode,
}

impl Scripted {
    fn answer(&self) -> Result<Generation, ModelError> {
        match script().clone() {
            Some(Script::Reply { response, text }) => Ok(Generation::new(json!({}), response, text)),
            Some(Script::TooLong) => Err(ContextExceeded::check("m", 10, 20, 5).expect_err("exceeds").into()),
            Some(Script::Fails) | None => Err(ModelError::backend("m", "scripted failure")),
        }
    }
}

impl Model for Scripted {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    fn generate_response(&self, _: &[Message], _: &GenArgs, _: &Cancel) -> Result<Generation, ModelError> {
        self.answer()
    }
    fn generate_batch_response(
        &self,
        batch: &[Vec<Message>],
        _: &GenArgs,
        _: &[Cancel],
    ) -> Vec<Result<Generation, ModelError>> {
        batch.iter().map(|_| self.answer()).collect()
    }
    fn batch_mode(&self) -> BatchMode {
        self.mode
    }
}

fn scripted(name: &str, mode: BatchMode) -> LoadedModel {
    let mut map = Map::new();
    map.insert("model_name".into(), json!(name));
    map.insert("backend".into(), json!("test"));
    LoadedModel::new(Box::new(Scripted { spec: ModelSpec::new(map), mode }))
}

/// One runtime and one server for every case (a batching worker thread per server).
fn server() -> &'static (tokio::runtime::Runtime, App) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, App)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let models = vec![scripted("seq", BatchMode::Sequential), scripted("fwd", BatchMode::ForwardPass)];
        let app = App::new(models, config()).expect("app");
        (rt, app)
    })
}

/// Provider responses: usage counts and finish reasons where the server reads them, nested or not.
fn provider_response() -> BoxedStrategy<Value> {
    let count = prop_oneof![any::<u64>().prop_map(Value::from), (0u64..1000).prop_map(Value::from), scalar()];
    let usage = (field(true, count.clone().boxed()), field(true, count.boxed()), noise())
        .prop_map(|(p, c, n)| strategies::object(vec![("prompt_tokens", p), ("completion_tokens", c)], n));
    let finish = field(true, prop::sample::select(vec!["stop", "length", "tool_calls"]).prop_map(Value::from).boxed())
        .prop_map(|f| json!([strategies::object(vec![("finish_reason", f)], Vec::new())]));
    let completion = (field(true, usage.boxed()), field(true, finish.boxed()), noise())
        .prop_map(|(u, f, n)| strategies::object(vec![("usage", u), ("choices", f)], n));
    prop_oneof![
        2 => completion.clone().prop_map(|c| json!({ "response": c })),
        2 => completion,
        1 => tree(),
    ]
    .boxed()
}

fn script_strategy() -> BoxedStrategy<Script> {
    prop_oneof![
        6 => (provider_response(), any::<String>()).prop_map(|(response, text)| Script::Reply { response, text }),
        1 => Just(Script::TooLong),
        1 => Just(Script::Fails),
    ]
    .boxed()
}

const ROUTES: &[&str] = &["/v1/chat/completions", "/chat/completions", "/v1/models", "/health"];

fn any_method() -> BoxedStrategy<Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
    ])
    .boxed()
}

/// A method and a path: mostly a route with its own method (chat most of all), else anything.
fn method_and_path() -> BoxedStrategy<(Method, String)> {
    let query = "[a-z0-9=&%/._-]{0,12}";
    prop_oneof![
        8 => (prop::sample::select(&ROUTES[..2]), prop::option::weighted(0.1, query)).prop_map(|(r, q)| {
            (Method::POST, q.map_or(r.to_string(), |q| format!("{r}?{q}")))
        }),
        2 => (prop::sample::select(vec![Method::GET, Method::HEAD]), prop::sample::select(&ROUTES[2..]))
            .prop_map(|(m, r)| (m, r.to_string())),
        2 => (any_method(), prop::sample::select(ROUTES)).prop_map(|(m, r)| (m, r.to_string())),
        1 => (any_method(), prop::collection::vec("[A-Za-z0-9%._~-]{0,8}", 0..4))
            .prop_map(|(m, s)| (m, format!("/{}", s.join("/")))),
    ]
    .boxed()
}

/// `Authorization` values: the key, near misses, anything (values no client could send are left out).
fn auth() -> BoxedStrategy<Option<Vec<u8>>> {
    prop_oneof![
        12 => Just(Some(b"Bearer sk-test-key".to_vec())),
        1 => Just(None),
        1 => prop::sample::select(vec![
            "Bearer  sk-test-key ", "bearer sk-test-key", "Bearer sk-test-ke", "Bearer sk-test-keyy", "Bearer ",
            "sk-test-key", "Basic c2stdGVzdC1rZXk=", "Bearer sk-test-kez", "Bearer \u{e9}sk-test-key",
        ])
        .prop_map(|s| Some(s.as_bytes().to_vec())),
        1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Some),
    ]
    .boxed()
}

/// `Content-Length`: none, the truth, a lie, or garbage.
fn content_length() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        4 => Just(None),
        2 => Just(Some("true".into())),
        1 => any::<u64>().prop_map(|n| Some(n.to_string())),
        1 => prop::sample::select(vec!["-1", "", "1e3", "99999999999999999999999", "0x10"]).prop_map(|s| Some(s.into())),
    ]
    .boxed()
}

/// What the server's key check accepts: `Bearer ` and the key, surrounding blanks aside.
fn authorized(value: Option<&HeaderValue>) -> bool {
    value.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) == Some("sk-test-key")
}

/// An OpenAI error body: `{"error": {message, type, param, code}}` with a non-empty message.
fn check_error_body(body: &[u8]) -> Result<Value, TestCaseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TestCaseError::fail(format!("error body: {e}")))?;
    for k in ["message", "type", "param", "code"] {
        prop_assert!(v["error"].get(k).is_some(), "error body lacks {}: {}", k, v);
    }
    prop_assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", v);
    Ok(v["error"].clone())
}

/// The completion object the server reads usage and the finish reason from.
fn completion_object(response: &Value) -> &Value {
    match response.get("response") {
        Some(inner) if inner.is_object() => inner,
        _ => response,
    }
}

fn check_usage(usage: &Value, response: &Value) -> Result<(), TestCaseError> {
    let u = &completion_object(response)["usage"];
    let (p, c) = (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64());
    match (p, c.zip(p).and_then(|(c, p)| c.checked_add(p))) {
        (Some(p), Some(total)) => {
            prop_assert_eq!(usage, &json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": total}));
        }
        _ => prop_assert!(usage.is_null(), "usage {} from {}", usage, response),
    }
    Ok(())
}

fn finish_reason(response: &Value) -> &'static str {
    match completion_object(response).pointer("/choices/0/finish_reason").and_then(Value::as_str) {
        Some("length") => "length",
        _ => "stop",
    }
}

/// A 200 chat answer: one `chat.completion`, or an SSE stream of chunks ending in `[DONE]`, carrying the text.
fn check_completion(
    body: &[u8],
    model: &str,
    stream: bool,
    include_usage: bool,
    response: &Value,
    text: &str,
) -> Result<(), TestCaseError> {
    let body = std::str::from_utf8(body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    if !stream {
        let v: Value = serde_json::from_str(body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&v["object"], "chat.completion");
        prop_assert_eq!(&v["model"], model);
        prop_assert_eq!(&v["choices"][0]["message"]["content"], text);
        prop_assert_eq!(&v["choices"][0]["finish_reason"], finish_reason(response));
        return check_usage(&v["usage"], response);
    }
    prop_assert!(body.ends_with("data: [DONE]\n\n"), "{}", body);
    let chunks = body
        .split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| {
            let data = e.strip_prefix("data: ").ok_or_else(|| TestCaseError::fail(format!("event {e:?}")))?;
            serde_json::from_str::<Value>(data).map_err(|err| TestCaseError::fail(format!("{err}: {data}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    prop_assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == model));
    let content: String =
        chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str)).collect();
    prop_assert_eq!(content, text);
    let finish: Vec<&str> =
        chunks.iter().filter_map(|c| c.pointer("/choices/0/finish_reason").and_then(Value::as_str)).collect();
    prop_assert_eq!(finish, vec![finish_reason(response)]);
    let last = chunks.last().ok_or_else(|| TestCaseError::fail("no chunk"))?;
    prop_assert_eq!(include_usage, last.get("usage").is_some());
    if include_usage {
        check_usage(&last["usage"], response)?;
    }
    Ok(())
}

/// One case at a time drives the shared server and its script.
static CASE: Mutex<()> = Mutex::new(());

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Request bodies of every shape: an accepted one agrees with the body field by field; a refused one is a
    /// 400 naming a parameter the API has.
    #[test]
    fn chat_bodies_parse_or_are_refused(bytes in body_bytes()) {
        let config = config();
        match parse_chat(&bytes, &config) {
            Ok(r) => {
                let body: Value = serde_json::from_slice(&bytes).expect("accepted bodies are JSON");
                check_accepted(&body, &r, &config)?;
            }
            Err(e) => {
                prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                let known = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "n", "stream",
                    "stop", "seed", "top_p", "presence_penalty", "frequency_penalty", "top_k", "min_p"];
                prop_assert!(e.param.is_none_or(|p| known.contains(&p)), "{:?}", e);
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whole requests through the router (any method, path, key, `Content-Length` and body) with scripted
    /// models replying anything: a 200 is a completion (or stream) carrying the model's text, a models list or
    /// the health report; anything else is an OpenAI error body, a 500 or 502 only when the model failed.
    #[test]
    fn router_answers_every_request_in_openai_format(
        (method, path) in method_and_path(),
        auth in auth(),
        length in content_length(),
        bytes in prop_oneof![8 => body_bytes(), 1 => (2900usize..3200).prop_map(|n| vec![b' '; n])],
        script_now in script_strategy(),
    ) {
        let _case = CASE.lock().unwrap_or_else(|e| e.into_inner());
        *script() = Some(script_now.clone());
        let mut builder = Request::builder().method(method.clone()).uri(path.as_str());
        let auth_value = auth.and_then(|a| HeaderValue::from_bytes(&a).ok());
        if let Some(v) = &auth_value {
            builder = builder.header(header::AUTHORIZATION, v.clone());
        }
        if let Some(l) = length {
            let l = if l == "true" { bytes.len().to_string() } else { l };
            builder = builder.header(header::CONTENT_LENGTH, l);
        }
        let request = builder.body(Body::from(bytes.clone())).expect("request");
        let (rt, app) = server();
        let (status, headers, answer) = rt.block_on(async {
            let response = app.router().oneshot(request).await.expect("the router is infallible");
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("answer body");
            (parts.status, parts.headers, bytes)
        });

        let route = path.split('?').next().unwrap_or_default();
        let is_chat = route.ends_with("chat/completions");
        let allowed = if is_chat { method == Method::POST } else { [Method::GET, Method::HEAD].contains(&method) };
        if !ROUTES.contains(&route) {
            prop_assert_eq!(status, StatusCode::NOT_FOUND);
        } else if !allowed {
            prop_assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            // RFC 9110: a 405 names the methods the resource answers.
            let allow = headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or_default();
            prop_assert!(allow.contains(if is_chat { "POST" } else { "GET" }), "Allow: {:?}", allow);
        } else if route != "/health" && !authorized(auth_value.as_ref()) {
            prop_assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        if method == Method::HEAD {
            return Ok(());
        }
        if status != StatusCode::OK {
            prop_assert_eq!(headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()), Some(&b"application/json"[..]));
            let error = check_error_body(&answer)?;
            if status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::BAD_GATEWAY {
                prop_assert!(matches!(script_now, Script::Fails), "{} without a model failure: {}", status, error);
            }
            return Ok(());
        }
        match route {
            "/v1/models" => {
                let v: Value = serde_json::from_slice(&answer).expect("models JSON");
                prop_assert_eq!(&v["data"][0]["id"], "seq");
            }
            "/health" => {
                let v: Value = serde_json::from_slice(&answer).expect("health JSON");
                prop_assert_eq!(&v["status"], "ok");
            }
            _ => {
                let request = parse_chat(&bytes, &config()).expect("a 200 answers a valid request");
                let Script::Reply { response, text } = &script_now else {
                    return Err(TestCaseError::fail("200 from a failing model"));
                };
                prop_assert!(["seq", "fwd"].contains(&request.model.as_str()));
                check_completion(&answer, &request.model, request.stream, request.include_usage, response, text)?;
            }
        }
    }
}
