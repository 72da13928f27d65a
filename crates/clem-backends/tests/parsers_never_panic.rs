//! Property tests of the remote backends' readers of outside input: provider reply bodies, error bodies, retry
//! headers, message images, and the Hugging Face hub's answers (headers, JSON, resumed downloads) and cache.
//!
//! A panic (an index, an unwrap, an arithmetic overflow in this debug build) fails a test. Where a reader
//! accepts its input, what it returns must also agree with that input. Generators build JSON along the paths
//! the readers walk (`choices[0].message.content`, ...), each step sometimes replaced by an arbitrary tree, so
//! that near-misses are as common as valid bodies.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clem_backends::anthropic::{messages_reply, Messages};
use clem_backends::cohere::{cohere_reply, CohereChat};
use clem_backends::google::{gemini_reply, GenerateContent};
use clem_backends::http::error::{error_details, redact, sanitize, RemoteError};
use clem_backends::http::images::{Image, ImagePolicy};
use clem_backends::http::retry::{parse_go_duration, server_delay, Policy};
use clem_backends::http::{Adapter, Auth};
use clem_backends::hub::cache::{relative_blob_target, safe_name, safe_relative, valid_repo_id, Layout};
use clem_backends::hub::wire::{self, Clients, Ctx, Failure, FileMeta};
use clem_backends::hub::{fnmatch_one, split_name, GlobMiss};
use clem_backends::openai::chat::{chat_messages, chat_reply, ChatCompletions, ImageUrlStyle};
use clem_backends::vllm::adapter::{Endpoint, VllmAdapter};
use clem_backends::vllm::launcher::{serve_args, LaunchSpec};
use clem_backends::vllm::vllm_args;
use clem_core::cleaning::{py_strip, Cleaner};
use clem_core::keys::Secret;
use clem_core::template::ChatTemplate;
use clem_core::{GenArgs, Message, Role};
use clem_json_strategies as strategies;
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------------------------
// JSON generators

/// Keys the readers look for, so that random objects hit them often.
const KEYS: &[&str] = &[
    "choices",
    "message",
    "content",
    "error",
    "candidates",
    "parts",
    "text",
    "type",
    "finish_reason",
    "refusal",
    "thought",
    "promptFeedback",
    "blockReason",
    "finishReason",
    "detail",
    "msg",
    "code",
    "status",
    "details",
    "@type",
    "retryDelay",
    "sha",
    "siblings",
    "rfilename",
    "role",
    "0",
];

/// Strings the readers compare against.
const WORDS: &[&str] = &[
    "text",
    "thinking",
    "error",
    "image",
    "",
    "stop",
    "SAFETY",
    "type.googleapis.com/google.rpc.RetryInfo",
    "RetryInfo",
    "38s",
    "0.5s",
    "-1s",
    "-0s",
    "1e400s",
    "NaNs",
    "infs",
    "s",
    "18446744073709551616s",
];

fn key() -> BoxedStrategy<String> {
    strategies::key(KEYS)
}

fn scalar() -> BoxedStrategy<Value> {
    strategies::scalar(WORDS, strategies::number(), 3)
}

/// Any JSON, a few levels deep, with the readers' keys and words favoured.
fn tree() -> BoxedStrategy<Value> {
    strategies::tree(scalar(), key(), 4, 48, 6)
}

/// A content block or part: `type`, `text` and `thought`, each maybe missing or of the wrong kind.
fn block() -> BoxedStrategy<Value> {
    let ty = prop_oneof![Just(None), prop::sample::select(WORDS).prop_map(|w| Some(json!(w))), scalar().prop_map(Some)];
    let text = prop_oneof![Just(None), any::<String>().prop_map(|s| Some(json!(s))), scalar().prop_map(Some)];
    let thought = prop_oneof![Just(None), any::<bool>().prop_map(|b| Some(json!(b))), scalar().prop_map(Some)];
    (ty, text, thought)
        .prop_map(|(ty, text, thought)| {
            let mut m = Map::new();
            for (k, v) in [("type", ty), ("text", text), ("thought", thought)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
        .boxed()
}

/// What may sit at the end of a path: a string, a list of blocks, or anything.
fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<String>().prop_map(Value::from),
        prop::collection::vec(prop_oneof![4 => block(), 1 => tree()], 0..5).prop_map(Value::Array),
        tree(),
    ]
    .boxed()
}

/// JSON along `path` (`"0"` is the first item of a list), with noise beside every step and, now and then, an
/// arbitrary tree instead of a step.
fn shaped(path: &'static [&'static str], leaf: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    let Some((step, rest)) = path.split_first() else { return leaf };
    let inner = shaped(rest, leaf);
    let right = if *step == "0" {
        (inner, prop::collection::vec(tree(), 0..3))
            .prop_map(|(v, mut others)| {
                others.insert(0, v);
                Value::Array(others)
            })
            .boxed()
    } else {
        (inner, prop::collection::vec((key(), tree()), 0..3))
            .prop_map(move |(v, noise)| strategies::object([(*step, Some(v))], noise))
            .boxed()
    };
    prop_oneof![5 => right, 1 => tree()].boxed()
}

/// A token count as providers might send it, or not: missing, a whole number, any number, any scalar or tree.
fn count_like() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        1 => Just(None),
        3 => any::<u64>().prop_map(|n| Some(json!(n))),
        1 => (0u32..1000).prop_map(|n| Some(json!(f64::from(n)))),
        2 => strategies::number().prop_map(Some),
        1 => tree().prop_map(Some),
    ]
    .boxed()
}

/// A finish reason as a provider might write it.
fn finish_word() -> BoxedStrategy<Value> {
    const WORDS: [&str; 9] = [
        "length",
        "model_length",
        "max_tokens",
        "model_context_window_exceeded",
        "MAX_TOKENS",
        "stop",
        "STOP",
        "end_turn",
        "COMPLETE",
    ];
    prop_oneof![3 => prop::sample::select(&WORDS[..]).prop_map(|w| json!(w)), 1 => scalar()].boxed()
}

/// `body.usage[key]`.
fn usage_of<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get("usage").and_then(|u| u.get(key))
}

/// `v[key]` when `v` is an object, `v[0]` for `"0"` when it is a list: the readers' own walk, written out.
fn walk<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, step| match v {
        Value::Array(items) if *step == "0" => items.first(),
        Value::Object(m) if *step != "0" => m.get(*step),
        _ => None,
    })
}

/// The `text` of every item of `items` whose `type` is `text`.
fn text_items(items: &[Value]) -> Vec<&str> {
    items
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Messages and images

/// An image entry of a message, as a game could write it.
#[derive(Clone, Debug)]
enum ImageSource {
    Url(String),
    Data(String),
    /// A file in the case's folder: its bytes and extension.
    File(Vec<u8>, String),
    Missing(String),
    /// Any text not starting with `/` (a relative path, a malformed URL...).
    Raw(String),
}

fn image_source() -> impl Strategy<Value = ImageSource> {
    let magic = prop::sample::select(vec![
        b"".to_vec(),
        b"\x89PNG".to_vec(),
        vec![0xFF, 0xD8, 0xFF],
        b"GIF8".to_vec(),
        b"RIFF\0\0\0\0WEBP".to_vec(),
        b"RIFF".to_vec(),
    ]);
    prop_oneof![
        (prop::sample::select(vec!["http://", "https://"]), any::<String>())
            .prop_map(|(s, r)| ImageSource::Url(s.to_string() + &r)),
        (any::<String>(), any::<bool>(), any::<String>()).prop_map(|(t, b64, d)| {
            ImageSource::Data(format!("data:{t}{}{d}", if b64 { ";base64," } else { "," }))
        }),
        (
            magic,
            prop::collection::vec(any::<u8>(), 0..32),
            prop::sample::select(vec!["png", "JPG", "gif", "webp", "txt", ""])
        )
            .prop_map(|(m, rest, ext)| ImageSource::File([m, rest].concat(), ext.into())),
        "[a-z]{1,8}".prop_map(ImageSource::Missing),
        any::<String>().prop_filter("not absolute", |s| !s.starts_with('/')).prop_map(ImageSource::Raw),
    ]
}

impl ImageSource {
    /// The entry's text, writing its file into `dir` first.
    fn materialise(&self, dir: &std::path::Path, n: usize) -> String {
        match self {
            ImageSource::Url(s) | ImageSource::Data(s) | ImageSource::Raw(s) => s.clone(),
            ImageSource::File(bytes, ext) => {
                let path = dir.join(format!("img{n}.{ext}"));
                std::fs::write(&path, bytes).expect("write test image");
                path.to_string_lossy().into_owned()
            }
            ImageSource::Missing(name) => dir.join(format!("missing-{name}")).to_string_lossy().into_owned(),
        }
    }

    /// Whether loading it cannot fail (URLs and base64 data URLs are taken as they are).
    fn always_loads(&self) -> bool {
        match self {
            ImageSource::Url(_) => true,
            ImageSource::Data(s) => s.contains(";base64,"),
            _ => false,
        }
    }
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(vec![Role::System, Role::User, Role::Assistant])
}

/// Messages with any text and up to two images each.
fn messages() -> impl Strategy<Value = Vec<(Role, String, Vec<ImageSource>)>> {
    prop::collection::vec((role(), any::<String>(), prop::collection::vec(image_source(), 0..3)), 0..4)
}

fn materialise(raw: &[(Role, String, Vec<ImageSource>)], dir: &std::path::Path) -> Vec<Message> {
    let mut n = 0;
    raw.iter()
        .map(|(role, content, images)| Message {
            role: *role,
            content: content.clone(),
            image: images
                .iter()
                .map(|i| {
                    n += 1;
                    i.materialise(dir, n)
                })
                .collect(),
        })
        .collect()
}

fn gen_args() -> impl Strategy<Value = GenArgs> {
    let extra = prop::collection::vec((key(), tree()), 0..3).prop_map(|kv| kv.into_iter().collect::<Map<_, _>>());
    (any::<f64>(), any::<u32>(), extra).prop_map(|(temperature, max_tokens, extra)| GenArgs {
        temperature,
        max_tokens,
        stop: Vec::new(),
        extra,
    })
}

fn policy() -> impl Strategy<Value = ImagePolicy> {
    (any::<bool>(), any::<bool>()).prop_map(|(allowed, multiple)| ImagePolicy { allowed, multiple })
}

/// Every request adapter, configured from the case's flags.
fn adapters(images: ImagePolicy, flag: bool, budget: u32) -> Vec<Box<dyn Adapter>> {
    let auth = || Some(Auth::bearer(Secret::new("sk-test-0123456789")));
    let template = ChatTemplate::new("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", "t")
        .expect("test template");
    vec![
        Box::new(ChatCompletions {
            provider: "openai",
            url: "http://x/v1/chat/completions".into(),
            auth: auth(),
            headers: Vec::new(),
            model_id: "m".into(),
            extra_body: Map::new(),
            reasoning_model: flag,
            images,
            image_style: if flag { ImageUrlStyle::String } else { ImageUrlStyle::Object },
        }),
        Box::new(Messages {
            provider: "anthropic",
            url: "http://x/v1/messages".into(),
            auth: auth(),
            headers: Vec::new(),
            model_id: "m".into(),
            extra_body: Map::new(),
            thinking: flag.then_some(budget),
            images,
        }),
        Box::new(GenerateContent {
            url: "http://x/models/m:generateContent".into(),
            auth: auth(),
            model_id: "m".into(),
            extra_body: Map::new(),
            thinking: flag.then_some(budget),
            images,
        }),
        Box::new(CohereChat {
            url: "http://x/v2/chat".into(),
            auth: auth(),
            model_id: "m".into(),
            extra_body: Map::new(),
            thinking: flag.then(|| json!({"type": "enabled"})),
            images,
        }),
        Box::new(VllmAdapter {
            root: "http://x".into(),
            model: "m".into(),
            endpoint: if flag {
                Endpoint::Chat
            } else {
                Endpoint::Completions { template: Box::new(template), variables: Map::new() }
            },
            cleaner: Cleaner::default(),
            extra_body: Map::new(),
            api_key: None,
        }),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// Headers

/// Header values worth trying: numbers of every shape, dates, Go durations, RFC 3339 instants, garbage.
fn header_value() -> BoxedStrategy<String> {
    let date = (0u64..400_000_000_000).prop_map(|s| {
        // fmt_http_date only takes years up to 9999.
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s.min(253_402_300_799)))
    });
    let rfc3339 = (-62_000_000_000i64..253_402_300_799, any::<u32>(), -86_000i32..86_000).prop_map(|(s, ns, off)| {
        let offset = chrono::FixedOffset::east_opt(off).unwrap_or(chrono::FixedOffset::east_opt(0).expect("utc"));
        chrono::DateTime::from_timestamp(s, ns % 2_000_000_000)
            .map(|t| t.with_timezone(&offset).to_rfc3339())
            .unwrap_or_default()
    });
    let go = prop::collection::vec(
        (any::<u32>(), prop::sample::select(vec!["h", "m", "s", "ms", "us", "µs", "ns", "x", ".", ""])),
        0..4,
    )
    .prop_map(|parts| parts.iter().map(|(n, u)| format!("{n}{u}")).collect::<String>());
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-0",
            "-0.0",
            "-1",
            "1e400",
            "-1e400",
            "NaN",
            "inf",
            "-inf",
            "1.5",
            " 7 ",
            "",
            "0x10",
            "18446744073709551616",
            "1e-400",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "9999-12-31T23:59:60Z",
            "0000-01-01T00:00:00+23:59",
            "6m0s",
            "1h2m3.5s",
            "20ms",
            "99999999999999999999h",
        ])
        .prop_map(String::from),
        any::<f64>().prop_map(|f| f.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        date,
        rfc3339,
        go,
        any::<String>(),
    ]
    .boxed()
}

const RETRY_HEADERS: &[&str] = &[
    "retry-after-ms",
    "retry-after",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
];

/// A header map from (name, value) pairs; values that cannot be header values are left out, as no server
/// could send them.
fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(v.as_bytes())) {
            h.append(k, v);
        }
    }
    h
}

fn retry_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![4 => prop::sample::select(RETRY_HEADERS).prop_map(String::from), 1 => "[a-z-]{1,12}"];
    let value = prop_oneof![1 => Just("0".to_string()), 3 => header_value()];
    prop::collection::vec((name, value), 0..6)
}

fn instant() -> impl Strategy<Value = SystemTime> {
    (any::<bool>(), 0u64..400_000_000_000).prop_map(|(later, s)| {
        let d = Duration::from_secs(s);
        if later { UNIX_EPOCH.checked_add(d) } else { UNIX_EPOCH.checked_sub(d) }.unwrap_or(UNIX_EPOCH)
    })
}

// ---------------------------------------------------------------------------------------------------------------
// A raw HTTP server for the hub's wire protocol

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("test runtime"))
}

fn clients() -> Clients {
    static CLIENTS: OnceLock<Clients> = OnceLock::new();
    CLIENTS.get_or_init(|| Clients::new(Duration::from_secs(5), Duration::from_secs(5)).expect("clients")).clone()
}

fn ctx(endpoint: &str) -> Ctx {
    Ctx {
        repo: "org/m".into(),
        endpoint: endpoint.into(),
        token: Some(Secret::new("hf_SECRETSECRET")),
        timeout: Duration::from_secs(5),
    }
}

/// Answers each connection with the next of `answers` (the last one for any further) and closes it; the
/// caller aborts the returned task when done.
async fn serve(answers: Vec<Vec<u8>>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answers[next.min(answers.len() - 1)].clone();
            next += 1;
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = sock.read(&mut buf).await {
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > 65536 {
                        break;
                    }
                }
                let _ = sock.write_all(&answer).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), task)
}

/// An HTTP/1.1 answer, byte for byte (header values need not be valid: the client must cope).
fn answer(status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\nconnection: close\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(vec![200u16, 206, 301, 302, 307, 401, 403, 404, 416, 429, 500, 502]),
        1 => 100u16..600,
    ]
}

const HUB_HEADERS: &[&str] = &[
    "x-repo-commit",
    "etag",
    "x-linked-etag",
    "x-linked-size",
    "content-length",
    "location",
    "x-error-code",
    "x-error-message",
];

/// A hub header value as bytes: plausible ones, numbers, URLs (never a real hub's), and raw bytes.
fn hub_header_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "abc123", "W/\"abc\"", "\"\"", "W/", "\"", "", " ", "0", "1", "-1", "18446744073709551615",
            "99999999999999999999", "GatedRepo", "RepoNotFound", "RevisionNotFound", "EntryNotFound",
            "Invalid credentials in Authorization header", "/other/path", "x", "http://127.0.0.1:1/cdn?sig=s3cr3t",
            "//127.0.0.1:1/x", "http://[::1", ":::", "restricted for hf_SECRETSECRET", "..", "a/b",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        1 => "[ -~]{0,16}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>().prop_filter("no line break", |b| *b != b'\r' && *b != b'\n'), 0..12),
    ]
    .boxed()
}

fn hub_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![6 => prop::sample::select(HUB_HEADERS).prop_map(String::from), 1 => "[a-z-]{1,10}"];
    prop::collection::vec((name, hub_header_value()), 0..7)
}

/// What a client sees of a header it was sent: the first one of that name, its edges' blanks trimmed.
fn first_header(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(|v| v.trim_matches([' ', '\t']).to_string())
}

/// A revision answer: `sha` and `siblings` present or not, of the right kind or not, with noise.
fn repo_body() -> BoxedStrategy<Vec<u8>> {
    let sha = prop_oneof![Just(None), "[0-9a-f]{0,40}".prop_map(|s| Some(json!(s))), scalar().prop_map(Some)];
    let sibling = prop_oneof![
        3 => any::<String>().prop_map(|f| json!({"rfilename": f})),
        1 => tree(),
    ];
    let siblings = prop_oneof![
        1 => Just(None),
        3 => prop::collection::vec(sibling, 0..5).prop_map(|s| Some(Value::Array(s))),
        1 => tree().prop_map(Some),
    ];
    let error = prop_oneof![Just(None), scalar().prop_map(Some)];
    let json =
        (sha, siblings, error, prop::collection::vec((key(), tree()), 0..2)).prop_map(|(sha, sib, err, noise)| {
            let mut m: Map<String, Value> = noise.into_iter().collect();
            for (k, v) in [("sha", sha), ("siblings", sib), ("error", err)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            serde_json::to_vec(&Value::Object(m)).expect("serialises")
        });
    prop_oneof![4 => json, 1 => prop::collection::vec(any::<u8>(), 0..64)].boxed()
}

// ---------------------------------------------------------------------------------------------------------------
// The properties

proptest! {
    /// Chat Completions replies: the reply exists exactly when `choices[0].message.content` is a string or a
    /// list, and a string content is the reply itself.
    #[test]
    fn chat_reply_reads_only_the_content(body in shaped(&["choices", "0", "message", "content"], leaf())) {
        let content = walk(&body, &["choices", "0", "message", "content"]);
        let reply = chat_reply(&body);
        prop_assert_eq!(reply.is_ok(), matches!(content, Some(Value::String(_) | Value::Array(_))), "{:?}", reply);
        if let (Ok(text), Some(Value::String(s))) = (&reply, content) {
            prop_assert_eq!(text, s);
        }
    }

    /// Anthropic replies: a reply exactly when `content` is a list, holding every text block's text.
    #[test]
    fn anthropic_reply_joins_text_blocks(body in shaped(&["content"], leaf())) {
        let reply = messages_reply(&body);
        prop_assert_eq!(reply.is_ok(), body.get("content").is_some_and(Value::is_array));
        if let (Ok(text), Some(Value::Array(blocks))) = (&reply, body.get("content")) {
            prop_assert_eq!(text, &text_items(blocks).concat());
        }
    }

    /// Gemini replies: a reply exactly when the first candidate has a `content.parts` list; a blocked prompt's
    /// error names the reason.
    #[test]
    fn gemini_reply_reads_the_first_candidate(body in prop_oneof![
        3 => shaped(&["candidates", "0", "content", "parts"], leaf()),
        1 => shaped(&["promptFeedback", "blockReason"], leaf()),
    ]) {
        let parts = walk(&body, &["candidates", "0", "content", "parts"]);
        let reply = gemini_reply(&body);
        prop_assert_eq!(reply.is_ok(), parts.is_some_and(Value::is_array), "{:?}", reply);
        if let (Ok(text), Some(Value::Array(parts))) = (&reply, parts) {
            for p in parts.iter().filter(|p| p.get("thought") != Some(&json!(true))) {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    prop_assert!(text.contains(t));
                }
            }
        }
        let first = body.get("candidates").and_then(Value::as_array).and_then(|c| c.first());
        if let (None, Some(reason)) = (first, body.pointer("/promptFeedback/blockReason").and_then(Value::as_str)) {
            prop_assert!(reply.clone().expect_err("blocked").contains(reason));
        }
    }

    /// Cohere replies: a reply exactly when `message.content` is a list, holding every text item's text.
    #[test]
    fn cohere_reply_joins_text_items(body in shaped(&["message", "content"], leaf())) {
        let reply = cohere_reply(&body);
        let content = walk(&body, &["message", "content"]);
        prop_assert_eq!(reply.is_ok(), content.is_some_and(Value::is_array));
        if let (Ok(text), Some(Value::Array(items))) = (&reply, content) {
            prop_assert_eq!(text, &text_items(items).concat());
        }
    }

    /// Usage and finish readers of every adapter on bodies whose count fields hold anything: no panic; a usage
    /// exactly when the provider's required counts are whole non-negative numbers, holding them, its total their
    /// sum (saturating); `Length` only from the provider's own length word.
    #[test]
    fn usage_readers_take_any_counts(
        counts in prop::collection::vec(count_like(), 14),
        words in prop::collection::vec(finish_word(), 4),
        noise in prop::collection::vec((key(), tree()), 0..3),
        flag in any::<bool>(),
    ) {
        let c = |i: usize| counts[i].clone();
        let usage = strategies::object([
            ("prompt_tokens", c(0)), ("completion_tokens", c(1)),
            ("completion_tokens_details", c(2).map(|r| json!({"reasoning_tokens": r}))),
            ("input_tokens", c(3)), ("output_tokens", c(4)),
            ("cache_creation_input_tokens", c(5)), ("cache_read_input_tokens", c(6)),
            ("billed_units", Some(strategies::object([("input_tokens", c(7)), ("output_tokens", c(8))], vec![]))),
            ("tokens", Some(strategies::object([("input_tokens", c(9)), ("output_tokens", c(10))], vec![]))),
        ], noise);
        let metadata = strategies::object([
            ("promptTokenCount", c(11)), ("candidatesTokenCount", c(12)), ("thoughtsTokenCount", c(13)),
        ], vec![]);
        let body = json!({"usage": usage, "usageMetadata": metadata,
            "choices": [{"finish_reason": words[0]}], "stop_reason": words[1],
            "candidates": [{"finishReason": words[2]}], "finish_reason": words[3]});
        let n = |v: Option<&Value>| clem_core::usage::count(v);
        for adapter in adapters(ImagePolicy::default(), flag, 1) {
            let got = adapter.usage(&body);
            if let Some(u) = got {
                prop_assert_eq!(u.total_tokens, u.prompt_tokens.saturating_add(u.completion_tokens));
            }
            let (want_some, length_word) = match adapter.provider() {
                "openai" | "vllm" => {
                    let (p, q) = (n(usage_of(&body, "prompt_tokens")), n(usage_of(&body, "completion_tokens")));
                    if let (Some(u), Some(p), Some(q)) = (got, p, q) {
                        prop_assert_eq!((u.prompt_tokens, u.completion_tokens), (p, q));
                    }
                    (p.is_some() && q.is_some(), matches!(words[0].as_str(), Some("length" | "model_length")))
                }
                "anthropic" => {
                    let (i, o) = (n(usage_of(&body, "input_tokens")), n(usage_of(&body, "output_tokens")));
                    if let (Some(u), Some(i), Some(o)) = (got, i, o) {
                        prop_assert!(u.prompt_tokens >= i && u.completion_tokens == o);
                    }
                    (i.is_some() && o.is_some(),
                     matches!(words[1].as_str(), Some("max_tokens" | "model_context_window_exceeded")))
                }
                "google" => {
                    if let Some(u) = got {
                        prop_assert!(u.reasoning_tokens.unwrap_or(0) <= u.completion_tokens);
                    }
                    (n(body.pointer("/usageMetadata/promptTokenCount")).is_some(), words[2].as_str() == Some("MAX_TOKENS"))
                }
                "cohere" => {
                    let both = |k: &str| n(body.pointer(&format!("/usage/{k}/input_tokens"))).is_some()
                        && n(body.pointer(&format!("/usage/{k}/output_tokens"))).is_some();
                    (both("billed_units") || both("tokens"), words[3].as_str() == Some("MAX_TOKENS"))
                }
                other => { prop_assert!(false, "adapter {} not covered", other); unreachable!() }
            };
            prop_assert_eq!(got.is_some(), want_some, "{}: {:?}", adapter.provider(), got);
            let finish = adapter.finish(&body);
            prop_assert_eq!(finish == Some(clem_core::FinishReason::Length), length_word, "{}: {:?}", adapter.provider(), finish);
        }
    }

    /// vLLM replies, both endpoints: a string (or null) where the endpoint puts it is the reply, stripped.
    #[test]
    fn vllm_reply_reads_its_endpoints_text(
        chat in any::<bool>(),
        body in prop_oneof![
            shaped(&["choices", "0", "text"], leaf()),
            shaped(&["choices", "0", "message", "content"], leaf()),
        ],
    ) {
        let adapter = VllmAdapter {
            root: "http://x".into(),
            model: "m".into(),
            endpoint: if chat {
                Endpoint::Chat
            } else {
                let template = ChatTemplate::new("{{ messages[0].content }}", "t").expect("template");
                Endpoint::Completions { template: Box::new(template), variables: Map::new() }
            },
            cleaner: Cleaner::default(),
            extra_body: Map::new(),
            api_key: None,
        };
        let raw = if chat { body.pointer("/choices/0/message/content") } else { body.pointer("/choices/0/text") };
        match (adapter.reply(&body), raw) {
            (Ok((text, cot)), Some(Value::String(s))) => {
                prop_assert_eq!(text.as_str(), py_strip(s));
                prop_assert_eq!(cot, None);
            }
            (Ok((text, _)), Some(Value::Null)) => prop_assert_eq!(text, ""),
            (Ok(r), other) => prop_assert!(false, "reply {:?} from {:?}", r, other),
            (Err(_), Some(Value::String(_) | Value::Null)) => prop_assert!(false, "no reply from a text"),
            (Err(_), _) => {}
        }
    }

    /// Error bodies of every provider shape, and raw text: `error.message` is found when it is a string, and
    /// the error built from them shows it.
    #[test]
    fn error_details_reads_any_body(
        body in prop_oneof![
            shaped(&["error", "message"], leaf()).prop_map(|v| v.to_string()),
            shaped(&["0", "error", "message"], leaf()).prop_map(|v| v.to_string()),
            shaped(&["message"], leaf()).prop_map(|v| v.to_string()),
            shaped(&["detail"], leaf()).prop_map(|v| v.to_string()),
            any::<String>(),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ],
        status in any::<u16>(),
    ) {
        let (message, kind) = error_details(&body);
        let value: Option<Value> = serde_json::from_str(&body).ok();
        let first = match &value {
            Some(Value::Array(items)) => items.first(),
            v => v.as_ref(),
        };
        if let Some(Value::String(s)) = first.and_then(|v| v.pointer("/error/message")) {
            prop_assert_eq!(message.as_deref(), Some(s.as_str()));
        }
        let shown = message.clone().unwrap_or_default();
        let e = RemoteError::Status {
            provider: "p", status, message: shown.clone(), kind, body: body.clone(), attempts: 1, outcome: "o".into(),
        };
        // Shown escaped and capped (a provider's text never reaches a terminal raw).
        prop_assert!(e.to_string().contains(&sanitize(&shown)));
        prop_assert!(!e.to_string().chars().any(char::is_control));
        let e = RemoteError::NotJson { provider: "p", detail: "d".into(), body, attempts: 1 };
        prop_assert!(e.to_string().starts_with("p: response is not valid JSON"));
    }

    /// Redaction of any text with any key: text without the key is left as it is.
    #[test]
    fn redact_takes_any_text(text in any::<String>(), key in any::<String>()) {
        let out = redact(&text, Some(&Secret::new(key.clone())));
        if !text.contains(&key) {
            prop_assert_eq!(out, text);
        }
    }

    /// Retry headers and Google's RetryInfo body, at any moment: a plain `retry-after: N` (no
    /// `retry-after-ms`) is obeyed to the second.
    #[test]
    fn server_delay_reads_any_headers(
        pairs in retry_headers(),
        body in prop_oneof![
            shaped(&["error", "details"], prop::collection::vec(prop_oneof![
                (prop::sample::select(WORDS), prop::sample::select(WORDS))
                    .prop_map(|(t, d)| json!({"@type": t, "retryDelay": d})),
                tree(),
            ], 0..3).prop_map(Value::Array).boxed()).prop_map(|v| v.to_string()),
            any::<String>(),
        ],
        now in instant(),
        plain in prop::option::of(0u32..1_000_000),
    ) {
        let mut headers = header_map(&pairs);
        let _ = server_delay(&headers, &body, now);
        if let Some(n) = plain {
            headers.remove("retry-after-ms");
            headers.insert("retry-after", HeaderValue::from(n));
            prop_assert_eq!(server_delay(&headers, &body, now), Some(Duration::from_secs(n.into())));
        }
    }

    /// Go durations as OpenAI sends them, and anything else: well-formed ones add up.
    #[test]
    fn go_durations_add_up(
        parts in prop::collection::vec((0u32..50_000, prop::sample::select(vec![
            ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9),
        ])), 1..4),
        junk in any::<String>(),
    ) {
        let _ = parse_go_duration(&junk);
        let text: String = parts.iter().map(|(n, (u, _))| format!("{n}{u}")).collect();
        let want: f64 = parts.iter().map(|(n, (_, scale))| f64::from(*n) * scale).sum();
        let got = parse_go_duration(&text).map(|d| d.as_secs_f64());
        prop_assert!(got.is_some_and(|g| (g - want).abs() <= 1e-6 * want.max(1.0)), "{} -> {:?}", text, got);
    }

    /// Backoff under any policy: never above `max_delay`, whatever the attempt or the server's wish.
    #[test]
    fn retry_waits_stay_under_the_cap(
        base in any::<u64>(), max in any::<u64>(), nanos in 0u32..1_000_000_000, attempt in any::<u32>(),
        server in prop::option::of(any::<u64>()),
    ) {
        let p = Policy {
            base_delay: Duration::new(base, nanos),
            max_delay: Duration::new(max, nanos),
            ..Policy::default()
        };
        prop_assert!(p.delay(attempt, server.map(Duration::from_secs)) <= p.max_delay);
    }

    /// Chat Completions messages with any text and images: one message per input, role and text kept, one
    /// part per image; URLs and base64 data URLs always load.
    #[test]
    fn chat_messages_keep_every_message(raw in messages(), object in any::<bool>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let msgs = materialise(&raw, dir.path());
        let style = if object { ImageUrlStyle::Object } else { ImageUrlStyle::String };
        match chat_messages(&msgs, style) {
            Ok(out) => {
                prop_assert_eq!(out.len(), msgs.len());
                for (m, v) in msgs.iter().zip(&out) {
                    prop_assert_eq!(v["role"].as_str(), Some(m.role.as_str()));
                    if m.image.is_empty() {
                        prop_assert_eq!(v["content"].as_str(), Some(m.content.as_str()));
                    } else {
                        prop_assert_eq!(v["content"][0]["text"].as_str(), Some(m.content.as_str()));
                        prop_assert_eq!(v["content"].as_array().map(Vec::len), Some(m.image.len() + 1));
                    }
                }
            }
            Err(e) => {
                let all_load = raw.iter().all(|(_, _, images)| images.iter().all(ImageSource::always_loads));
                prop_assert!(!all_load, "{}", e);
            }
        }
    }

    /// Images alone: a loaded image is a URL kept as given, or inline data that round-trips through `url()`.
    #[test]
    fn images_load_or_say_why(source in image_source()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = source.materialise(dir.path(), 0);
        match Image::load(&text) {
            Ok(Image::Url(u)) => prop_assert_eq!(u, text),
            Ok(img @ Image::Inline { .. }) => {
                let url = img.url();
                prop_assert!(url.starts_with("data:"));
                prop_assert_eq!(Image::load(&url), Ok(img));
            }
            Err(e) => prop_assert!(!source.always_loads(), "{}", e),
        }
    }

    /// Every request builder with any messages, arguments and image policy: a request is a JSON object to the
    /// adapter's URL that serialises; a refusal is a build error, never a sent request.
    #[test]
    fn request_builders_take_any_messages(
        raw in messages(), args in gen_args(), images in policy(), flag in any::<bool>(), budget in any::<u32>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let msgs = materialise(&raw, dir.path());
        for adapter in adapters(images, flag, budget) {
            match adapter.build(&msgs, &args) {
                Ok(req) => {
                    prop_assert!(req.body.is_object());
                    prop_assert!(req.url.starts_with("http://x/"));
                    prop_assert!(serde_json::to_vec(&req.body).is_ok());
                }
                Err(e) => prop_assert_eq!(e.attempts(), 0, "{}", e),
            }
        }
    }

    /// `vllm_args` of any JSON, and the server command line around any launcher: `serve MODEL` and the
    /// arguments always come out, whatever the launcher list holds (an empty one included).
    #[test]
    fn vllm_command_lines(args in tree(), command in prop::collection::vec(any::<String>(), 0..3), model in any::<String>()) {
        let parsed = vllm_args(Some(&args));
        prop_assert_eq!(parsed.is_ok(), matches!(args, Value::Null | Value::String(_) | Value::Array(_) | Value::Object(_)));
        let args = parsed.unwrap_or_default();
        let spec = LaunchSpec {
            command: command.clone(),
            args: args.clone(),
            model: model.clone(),
            log: "log".into(),
            startup_timeout: Duration::from_secs(1),
        };
        let argv = serve_args(&spec, 8000);
        let lead = command.len().saturating_sub(1);
        prop_assert_eq!(argv.len(), lead + 6 + args.len());
        prop_assert_eq!(&argv[lead..lead + 2], &["serve".to_string(), model][..]);
        prop_assert_eq!(&argv[lead + 6..], &args[..]);
    }

    /// File globs of any pattern over any listing: a match is a listed file, an ambiguity names several.
    #[test]
    fn fnmatch_picks_listed_files(
        files in prop::collection::vec("[a-z*?\\[\\]!./-]{0,10}", 0..6),
        pattern in prop_oneof!["[a-z*?\\[\\]!^./\\\\{}-]{0,12}", any::<String>()],
    ) {
        match fnmatch_one(&files, &pattern) {
            Ok(one) => prop_assert!(files.contains(one)),
            Err(GlobMiss::Many(m)) => prop_assert!(m.len() >= 2),
            Err(GlobMiss::None | GlobMiss::Bad(_)) => {}
        }
    }

    /// Split GGUF names: well-formed ones give their numbers back, anything else is no split.
    #[test]
    fn split_names_parse(prefix in "[a-zA-Z0-9._/-]{0,12}", no in 0u32..100_000, count in 0u32..100_000, junk in any::<String>()) {
        let _ = split_name(&junk);
        let name = format!("{prefix}-{no:05}-of-{count:05}.gguf");
        let want = prefix.rsplit('/').next().filter(|p| !p.is_empty()).map(|p| (p.to_string(), no, count));
        if want.as_ref().is_some_and(|(p, _, _)| p != "." && p != "..") {
            prop_assert_eq!(split_name(&name), want);
        }
    }

    /// Names a server or the disk may hand the cache: what passes as safe stays inside its folder.
    #[test]
    fn cache_names_stay_inside(name in prop_oneof!["[a-zA-Z0-9./\\\\_-]{0,12}", any::<String>()], etag in any::<String>()) {
        if safe_relative(&name) {
            prop_assert!(!name.starts_with('/') && !name.split('/').any(|c| c == ".." || c.is_empty()));
            if safe_name(&etag) {
                let target = relative_blob_target(&name, &etag);
                let ups = target.components().filter(|c| *c == std::path::Component::ParentDir).count();
                prop_assert_eq!(ups, name.split('/').count() + 1);
                prop_assert!(target.ends_with(std::path::Path::new("blobs").join(&etag)));
            }
        }
        if safe_name(&name) {
            prop_assert!(safe_relative(&name) && !name.contains('/'));
        }
        if valid_repo_id(&name) {
            prop_assert!(name.len() <= 96 && !name.contains("..") && !name.contains("--") && !name.starts_with('/'));
        }
    }

    /// The commit of a revision as the cache records it, whatever `refs/<revision>` holds on disk: a commit
    /// found is a safe folder name with a snapshot folder.
    #[test]
    fn cached_commits_are_snapshot_folders(
        revision in prop_oneof![Just("main".to_string()), "[a-z0-9./-]{1,12}", any::<String>()],
        refs in prop_oneof![
            Just(b"c0".to_vec()), Just(b"".to_vec()), Just(b" \n".to_vec()), Just(b"..".to_vec()),
            Just(b"../../..".to_vec()), Just(b"c0/../c0".to_vec()), Just(b"/tmp".to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
        ],
        snapshots in prop::collection::vec("[a-z0-9]{1,4}", 0..3),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path(), "org/m");
        for s in &snapshots {
            std::fs::create_dir_all(layout.snapshot(s)).expect("snapshot dir");
        }
        let refs_dir = layout.repo_dir.join("refs");
        std::fs::create_dir_all(&refs_dir).expect("refs dir");
        std::fs::write(refs_dir.join("main"), &refs).expect("ref");
        if safe_relative(&revision) && revision != "main" {
            let path = revision.split('/').fold(refs_dir.clone(), |p, c| p.join(c));
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(path, &refs);
        }
        if let Some(commit) = layout.cached_commit(&revision) {
            prop_assert!(safe_name(&commit), "{:?}", commit);
            prop_assert!(layout.snapshot(&commit).is_dir(), "{:?}", commit);
        }
    }

    /// Normalised ETags and displayed URLs: quotes and weak markers gone, no query or credentials shown.
    #[test]
    fn etags_and_urls(etag in any::<String>(), url in any::<String>(), endpoint in any::<String>(), repo in any::<String>()) {
        let e = wire::normalize_etag(&etag);
        prop_assert!(!e.starts_with('"') && !e.ends_with('"') && etag.contains(e));
        for u in [Url::parse(&url).ok(), Url::parse(&format!("https://u:p@h/{url}")).ok()].into_iter().flatten() {
            let shown = Url::parse(&wire::display_url(&u)).expect("displayed URLs parse");
            prop_assert!(shown.query().is_none() && shown.fragment().is_none() && shown.password().is_none());
        }
        if let Ok(u) = wire::hub_url(&endpoint, &["api", "models"], &repo, &["revision", etag.as_str()]) {
            prop_assert!(matches!(u.scheme(), "http" | "https"));
        }
    }
}

proptest! {
    // Each case runs real requests against a local server: fewer cases keep the file fast.
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The revision request against any answer: a listing only from a 2xx JSON answer with a non-empty `sha`
    /// and a `siblings` list, holding exactly its `rfilename`s; errors never show the token.
    #[test]
    fn repo_info_reads_any_answer(status in status(), headers in hub_headers(), body in repo_body()) {
        let headers: Vec<_> = headers.into_iter().filter(|(k, _)| !k.eq_ignore_ascii_case("content-length")).collect();
        let result = runtime().block_on(async {
            let (root, server) = serve(vec![answer(status, &headers, &body)]).await;
            let url = Url::parse(&format!("{root}/api/models/org/m/revision/main")).expect("url");
            let r = wire::repo_info(clients(), ctx(&root), url, "main".into()).await;
            server.abort();
            r
        });
        match result {
            Ok(info) => {
                prop_assert!((200..300).contains(&status));
                let json: Value = serde_json::from_slice(&body).expect("a listing comes from JSON");
                prop_assert_eq!(json.get("sha").and_then(Value::as_str), Some(info.sha.as_str()));
                prop_assert!(!info.sha.is_empty());
                let listed: Vec<&str> = json["siblings"]
                    .as_array()
                    .expect("siblings list")
                    .iter()
                    .filter_map(|s| s.get("rfilename").and_then(Value::as_str))
                    .collect();
                prop_assert_eq!(info.files, listed);
            }
            Err(Failure::Hub(e)) => {
                let text = format!("{e} {e:?}");
                prop_assert!(!text.contains("hf_SECRETSECRET"), "{}", text);
            }
            Err(Failure::Unreachable(d)) => prop_assert!(!d.contains("hf_SECRETSECRET")),
        }
    }

    /// The metadata request against any headers: a file's metadata only with an `X-Repo-Commit` and an ETag,
    /// the commit as sent; errors never show the token.
    #[test]
    fn file_meta_reads_any_headers(status in status(), headers in hub_headers()) {
        let result = runtime().block_on(async {
            let (root, server) = serve(vec![answer(status, &headers, b"")]).await;
            let url = Url::parse(&format!("{root}/org/m/resolve/c0/f.bin")).expect("url");
            let r = wire::file_meta(clients(), ctx(&root), url, "c0".into(), "f.bin".into()).await;
            server.abort();
            r
        });
        match result {
            Ok(meta) => {
                prop_assert_eq!(Some(meta.commit), first_header(&headers, "x-repo-commit"));
                prop_assert!(!meta.etag.starts_with('"') && !meta.etag.ends_with('"'));
            }
            Err(Failure::Hub(e)) => {
                let text = format!("{e} {e:?}");
                prop_assert!(!text.contains("hf_SECRETSECRET"), "{}", text);
            }
            Err(Failure::Unreachable(d)) => prop_assert!(!d.contains("hf_SECRETSECRET")),
        }
    }

    /// A download cut short, then resumed against any answer (huge `Content-Length`s included): what it
    /// reports written is what the file holds, and the announced size when there was one.
    #[test]
    fn download_resumes_against_any_answer(
        cut in 1usize..64,
        size in prop_oneof![2 => Just(None), 1 => (0u64..128).prop_map(Some), 1 => any::<u64>().prop_map(Some)],
        status in prop_oneof![3 => Just(206u16), 1 => status()],
        // The largest lengths a client accepts (u64::MAX - 2) come first: added to what was written, they overflow.
        length in prop_oneof![
            3 => (u64::MAX - 66..=u64::MAX).prop_map(Some),
            1 => any::<u64>().prop_map(Some),
            1 => (0u64..128).prop_map(Some),
            1 => Just(None),
        ],
        rest in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("blob.incomplete");
        let first = answer(200, &[("content-length".into(), (cut + 64).to_string().into_bytes())], &vec![b'a'; cut]);
        let length: Vec<(String, Vec<u8>)> =
            length.map(|n| ("content-length".to_string(), n.to_string().into_bytes())).into_iter().collect();
        let second = answer(status, &length, &rest);
        let result = runtime().block_on(async {
            // Progress resets the retry count, so further attempts are refused for good to end the case.
            let (root, server) = serve(vec![first, second, answer(404, &[], b"")]).await;
            let location = Url::parse(&format!("{root}/cdn/blob")).expect("url");
            let fetch = wire::Fetch {
                revision: "c0".into(),
                file: "f.bin".into(),
                meta: FileMeta { commit: "c0".into(), etag: "e".into(), size, location, send_token: true },
                dest: dest.clone(),
                retries: 1,
                retry_delay: Duration::ZERO,
                progress: indicatif::ProgressBar::hidden(),
            };
            let r = tokio::time::timeout(Duration::from_secs(20), wire::download(clients(), ctx(&root), fetch)).await;
            server.abort();
            r
        });
        let result = result.map_err(|_| TestCaseError::fail("the download did not end"))?;
        if let Ok(written) = result {
            prop_assert_eq!(std::fs::metadata(&dest).map(|m| m.len()).ok(), Some(written));
            if let Some(size) = size {
                prop_assert_eq!(written, size);
            }
        }
    }
}
