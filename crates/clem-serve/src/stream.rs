//! Streaming a reply as it is generated: what text of a sequence may be sent before the sequence ends
//! ([`Holdback`]), the `chat.completion.chunk` objects, and the SSE body fed by a channel ([`SseBody`]).
//!
//! Cleaning and streaming: a local backend cleans its whole reply once it is done (clemcore's order: strip,
//! `output_split_prefix`, `eos_to_cull`, chain of thought; and a stop sequence cuts it first), so text streamed
//! earlier must be text cleaning can no longer change. The rule, per sequence:
//! - the backend's deltas are raw decoded text (local backends): after each, the text so far is cut at a stop
//!   sequence, left-stripped and culled as the backend will do; of that, the part sent is everything but a held
//!   tail: trailing whitespace (the final strip may remove it) and the longest suffix that could still grow into
//!   a cull match or a stop sequence. That needs the cull pattern to be plain text (alternatives of literals,
//!   as every `<|im_end|>`-like entry is); with any other pattern, with `output_split_prefix` or with
//!   `cot_output` (a later marker can discard everything before it) nothing is sent before the end;
//! - the deltas are the reply itself (remote backends, and `generate_stream`'s default of one delta with the
//!   whole reply): they are sent as they come;
//! - when the sequence ends, the rest of the backend's cleaned reply is sent, so the chunks always concatenate
//!   to the non-streaming reply. (Were the text sent ever not a prefix of it, the rest is sent anyway and the
//!   divergence is logged: tests hold that it never happens.)

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use clem_core::cancel::CancelOnDrop;
use clem_core::cleaning::{py_isspace, Cleaner};
use clem_core::pyregex::PyRegex;
use clem_core::ModelSpec;
use hyper::body::{Bytes, Frame};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// What of a sequence's text may be sent so far.
#[derive(Debug)]
pub struct Holdback {
    mode: Mode,
    /// The backend's deltas so far.
    raw: String,
    /// What has been released (always a prefix of what cleaning gives, see the module doc).
    sent: String,
}

#[derive(Debug)]
enum Mode {
    /// The deltas are the reply itself.
    Passthrough,
    /// Raw text the backend cleans at the end with `cull` (its alternatives `literals`) and cuts at `stop`.
    Raw { cull: Option<PyRegex>, literals: Vec<String>, stop: Vec<String> },
    /// Cleaning may discard released text: everything at the end.
    AtEnd,
}

impl Holdback {
    /// For deltas that are the reply itself.
    pub fn passthrough() -> Holdback {
        Holdback { mode: Mode::Passthrough, raw: String::new(), sent: String::new() }
    }

    /// For raw decoded text that a backend cleans with `spec`'s cleaning keys and cuts at `stop`.
    pub fn raw(spec: &ModelSpec, stop: &[String]) -> Holdback {
        let stop: Vec<String> = stop.iter().filter(|s| !s.is_empty()).cloned().collect();
        let mode = match Cleaner::from_spec(spec) {
            Ok(c) if c.output_split_prefix.is_none() && c.cot.is_none() => match c.eos_to_cull {
                None => Mode::Raw { cull: None, literals: Vec::new(), stop },
                Some(re) => match literals(re.as_str()) {
                    Some(literals) => Mode::Raw { cull: Some(re), literals, stop },
                    None => Mode::AtEnd,
                },
            },
            _ => Mode::AtEnd,
        };
        Holdback { mode, raw: String::new(), sent: String::new() }
    }

    /// Takes the next delta; returns the text to send now (often empty while a tail is held).
    pub fn push(&mut self, delta: &str) -> String {
        let (cull, literals, stop) = match &self.mode {
            Mode::Passthrough => {
                self.sent.push_str(delta);
                return delta.to_string();
            }
            Mode::AtEnd => {
                self.raw.push_str(delta);
                return String::new();
            }
            Mode::Raw { cull, literals, stop } => (cull, literals, stop),
        };
        self.raw.push_str(delta);
        let cut = cut_at_stop(&self.raw, stop);
        let stripped = cut.trim_start_matches(py_isspace);
        let culled = match cull {
            None => stripped.to_string(),
            // A pattern that fails while matching fails the backend's cleaning too: send nothing more.
            Some(re) => match re.remove_all(stripped) {
                Ok(t) => t,
                Err(_) => return String::new(),
            },
        };
        let safe = &culled[..safe_len(&culled, literals, stop)];
        match safe.strip_prefix(self.sent.as_str()) {
            Some(new) if !new.is_empty() => {
                let new = new.to_string();
                self.sent.push_str(&new);
                new
            }
            _ => String::new(),
        }
    }

    /// The sequence ended with `reply` (the backend's cleaned text): what is left to send. `Err` carries the
    /// same rest when the text sent is not a prefix of `reply` (a bug: the caller logs it).
    pub fn finish(&mut self, reply: &str) -> Result<String, String> {
        let rest = match reply.strip_prefix(self.sent.as_str()) {
            Some(rest) => Ok(rest.to_string()),
            None => Err(reply.to_string()),
        };
        self.sent = reply.to_string();
        rest
    }
}

/// `text` cut before the earliest stop sequence.
fn cut_at_stop<'t>(text: &'t str, stop: &[String]) -> &'t str {
    match stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(at) => &text[..at],
        None => text,
    }
}

/// How much of `text` can no longer change: all but trailing whitespace and the longest suffix that is a proper
/// prefix of a literal or a stop sequence (repeated, as removing one may uncover the other).
fn safe_len(text: &str, literals: &[String], stop: &[String]) -> usize {
    let mut end = text.len();
    loop {
        let before = end;
        end = text[..end].trim_end_matches(py_isspace).len();
        let head = &text[..end];
        // The earliest start whose suffix can still grow into a match is the longest such suffix.
        if let Some(at) = head.char_indices().map(|(i, _)| i).find(|&i| {
            let tail = &head[i..];
            literals.iter().chain(stop).any(|w| w.len() > tail.len() && w.starts_with(tail))
        }) {
            end = at;
        }
        if end == before {
            return end;
        }
    }
}

/// The alternatives of a Python pattern that is plain text (`<\|im_end\|>`, `</s>|<\|eot_id\|>`), unescaped;
/// `None` for anything else (classes, quantifiers, groups, anchors, escapes that are not punctuation).
pub fn literals(pattern: &str) -> Option<Vec<String>> {
    let mut out = vec![String::new()];
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => match chars.next()? {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                e if e.is_ascii_punctuation() || e == ' ' => e,
                _ => return None,
            },
            '|' => {
                out.push(String::new());
                continue;
            }
            '.' | '^' | '$' | '*' | '+' | '?' | '{' | '}' | '[' | ']' | '(' | ')' => return None,
            c => c,
        };
        out.last_mut()?.push(c);
    }
    // An empty alternative matches everywhere.
    (!out.iter().any(String::is_empty)).then_some(out)
}

/// One `chat.completion.chunk` of choice `index`.
pub fn chunk(id: &str, created: u64, model: &str, index: usize, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": null,
        "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

/// The last chunk with `stream_options.include_usage`: no choices, the usage of all of them.
pub fn usage_chunk(id: &str, created: u64, model: &str, usage: Option<Value>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": null, "choices": [], "usage": usage,
    })
}

/// One SSE event.
pub fn event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

pub const DONE: &str = "data: [DONE]\n\n";

/// An SSE response body fed by a channel. Dropped before its end (the client went away, or shutdown gave up on
/// the connection), it cancels the request's sequences through its guard.
pub struct SseBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    cancel: Option<CancelOnDrop>,
}

impl SseBody {
    pub fn new(rx: mpsc::UnboundedReceiver<Bytes>, cancel: CancelOnDrop) -> SseBody {
        SseBody { rx, cancel: Some(cancel) }
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(None) => {
                // Every sequence has ended and the stream is complete: nothing left to cancel.
                if let Some(guard) = self.cancel.take() {
                    guard.disarm();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(config: Value) -> ModelSpec {
        serde_json::from_value(json!({"model_name": "m", "backend": "llamacpp", "model_config": config})).expect("spec")
    }

    fn stream(h: &mut Holdback, pieces: &[&str], reply: &str) -> (Vec<String>, String) {
        let mut sent: Vec<String> = pieces.iter().map(|p| h.push(p)).collect();
        sent.push(h.finish(reply).expect("a prefix"));
        let all = sent.concat();
        (sent, all)
    }

    #[test]
    fn literal_patterns_only() {
        assert_eq!(literals(r"<\|im_end\|>"), Some(vec!["<|im_end|>".to_string()]));
        assert_eq!(literals(r"</s>|<\|eot_id\|>"), Some(vec!["</s>".into(), "<|eot_id|>".into()]));
        for not in [r"<end_of_turn>\n*<eos>", "END$", r"END\Z", "x{2,3}", "{b}", r"(?<=y)</s>", "a|", r"\d"] {
            assert_eq!(literals(not), None, "{not}");
        }
    }

    #[test]
    fn a_partial_cull_token_and_trailing_space_are_held() {
        let mut h = Holdback::raw(&spec(json!({"eos_to_cull": r"<\|im_end\|>"})), &[]);
        assert_eq!(h.push("  Hello"), "Hello");
        assert_eq!(h.push(" world <|im"), " world");
        assert_eq!(h.push("_end|>"), "");
        assert_eq!(h.push(" bye"), "  bye");
        assert_eq!(h.finish("Hello world  bye"), Ok(String::new()));
    }

    #[test]
    fn stop_sequences_are_held_until_they_cannot_match() {
        let mut h = Holdback::raw(&spec(json!({})), &["END".to_string()]);
        let (sent, all) = stream(&mut h, &["one E", "N", "x"], "one ENx");
        assert_eq!(sent, vec!["one", "", " ENx", ""]);
        assert_eq!(all, "one ENx");
        let mut h = Holdback::raw(&spec(json!({})), &["END".to_string()]);
        let (sent, _) = stream(&mut h, &["one E", "ND and more"], "one");
        assert_eq!(sent, vec!["one", "", ""]);
    }

    #[test]
    fn markers_that_discard_earlier_text_send_everything_at_the_end() {
        for config in [
            json!({"output_split_prefix": "assistant\n"}),
            json!({"eos_to_cull": "END$"}),
            json!({"cot_output": true, "cot_end_tag": "</think>"}),
        ] {
            let mut h = Holdback::raw(&spec(config.clone()), &[]);
            let (sent, all) = stream(&mut h, &["a ", "b"], "b");
            assert_eq!((sent, all), (vec![String::new(), String::new(), "b".to_string()], "b".to_string()), "{config}");
        }
        let mut h = Holdback::passthrough();
        assert_eq!(stream(&mut h, &[" a", "b "], " ab ").1, " ab ");
    }

    proptest::proptest! {
        /// Any split of any text (made of the cull token's and the stop sequence's pieces, spaces and words):
        /// the chunks concatenate to what the backend's cleaning gives for the whole text, and no chunk was
        /// ever taken back.
        #[test]
        fn chunks_concatenate_to_the_cleaned_reply(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec!["<|", "im", "_end", "|>", "<|im_end|>", " ", "\n", "E", "ND", "a", "é", "</s>"]),
                0..24),
            cuts in proptest::collection::vec(0usize..4, 0..24),
            with_stop in proptest::bool::ANY,
        ) {
            let spec = spec(json!({"eos_to_cull": r"<\|im_end\|>|</s>"}));
            let stop = if with_stop { vec!["END".to_string()] } else { Vec::new() };
            let raw: String = pieces.concat();
            let cleaner = Cleaner::from_spec(&spec).expect("cleaner");
            let reply = cleaner.clean(cut_at_stop(&raw, &stop), "", None).expect("cleans").text;
            // Deltas: the pieces regrouped at random.
            let mut deltas: Vec<String> = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                match deltas.last_mut() {
                    Some(last) if cuts.get(i).copied().unwrap_or(0) > 0 => last.push_str(p),
                    _ => deltas.push((*p).to_string()),
                }
            }
            let mut h = Holdback::raw(&spec, &stop);
            let mut sent = String::new();
            for d in &deltas {
                sent.push_str(&h.push(d));
                proptest::prop_assert!(reply.starts_with(&sent), "sent {:?}, reply {:?}", sent, reply);
            }
            let rest = h.finish(&reply);
            proptest::prop_assert!(rest.is_ok());
            sent.push_str(&rest.unwrap_or_default());
            proptest::prop_assert_eq!(sent, reply);
        }
    }
}
