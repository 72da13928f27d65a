//! Chat messages, generation arguments, and the normalisation remote backends apply before a call.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message as clemgames send them: `{"role", "content", "image"?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Image paths or URLs; clemgames send a string or a list.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub image: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => Vec::new(),
    })
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into(), image: Vec::new() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// The message as the JSON object a chat template or an API sees.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Messages as a JSON list.
pub fn messages_to_json(messages: &[Message]) -> Value {
    Value::Array(messages.iter().map(Message::to_json).collect())
}

/// Generation arguments: not part of the spec, they come from the command line (clemcore defaults 0.0 / 300).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenArgs {
    pub temperature: f64,
    pub max_tokens: u32,
    /// Stop sequences: generation ends at the first one and the reply is cut before it. Remote backends send
    /// them as their provider's field (`stop`, `stop_sequences`, `stopSequences`); local ones stop their loop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Further arguments passed through to the backend (`top_p`, `seed`, ...).
    #[serde(default, flatten)]
    pub extra: Map<String, Value>,
}

impl Default for GenArgs {
    fn default() -> Self {
        GenArgs { temperature: 0.0, max_tokens: 300, stop: Vec::new(), extra: Map::new() }
    }
}

impl GenArgs {
    pub fn new(temperature: f64, max_tokens: u32) -> Self {
        GenArgs { temperature, max_tokens, stop: Vec::new(), extra: Map::new() }
    }
}

/// Stop sequences as OpenAI's `stop` takes them: one string, a list of strings, or null (none); `None` for any
/// other value. Empty strings are dropped (they ask for nothing).
pub fn stop_sequences(value: &Value) -> Option<Vec<String>> {
    let all: Vec<String> = match value {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().map(|v| v.as_str().map(String::from)).collect::<Option<_>>()?,
        _ => return None,
    };
    Some(all.into_iter().filter(|s| !s.is_empty()).collect())
}

/// `text` cut before the earliest occurrence of any of `stop` (empty stop strings never match), and whether
/// one occurred.
pub fn cut_at_stop<'t>(text: &'t str, stop: &[String]) -> (&'t str, bool) {
    match stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
        Some(at) => (&text[..at], true),
        None => (text, false),
    }
}

/// clemcore's `ensure_alternating_roles`: drop a leading system message with empty content, then merge
/// consecutive messages of the same role with `"\n\n"` (images of merged messages are kept together).
pub fn normalize_messages(messages: &[Message]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    let skip = usize::from(messages.first().is_some_and(|m| m.role == Role::System && m.content.is_empty()));
    for m in &messages[skip..] {
        match out.last_mut() {
            Some(prev) if prev.role == m.role => {
                prev.content.push_str("\n\n");
                prev.content.push_str(&m.content);
                prev.image.extend(m.image.iter().cloned());
            }
            _ => out.push(m.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_matches_clemcore() {
        let msgs = vec![
            Message::system(""),
            Message::user("a"),
            Message::user("b"),
            Message::assistant("c"),
            Message::assistant("d"),
            Message::user("e"),
        ];
        let n = normalize_messages(&msgs);
        assert_eq!(n, vec![Message::user("a\n\nb"), Message::assistant("c\n\nd"), Message::user("e")]);
        // A non-empty system message stays; only a leading empty one goes.
        let n = normalize_messages(&[Message::system("s"), Message::user("u")]);
        assert_eq!(n.len(), 2);
        assert!(normalize_messages(&[]).is_empty());
    }

    #[test]
    fn stop_cuts_at_the_earliest_sequence() {
        let stop = vec!["END".to_string(), "\n\n".to_string(), String::new()];
        assert_eq!(cut_at_stop("a\n\nb END", &stop), ("a", true));
        assert_eq!(cut_at_stop("aEND\n\n", &stop), ("a", true));
        assert_eq!(cut_at_stop("no stop", &stop), ("no stop", false));
        assert_eq!(cut_at_stop("x", &[]), ("x", false));
    }

    #[test]
    fn image_accepts_string_or_list() {
        let m: Message = serde_json::from_str(r#"{"role":"user","content":"x","image":"a.png"}"#).expect("parses");
        assert_eq!(m.image, vec!["a.png"]);
        let m: Message = serde_json::from_str(r#"{"role":"user","content":"x","image":["a","b"]}"#).expect("parses");
        assert_eq!(m.image.len(), 2);
        assert!(serde_json::from_str::<Message>(r#"{"role":"robot","content":"x"}"#).is_err());
    }
}
