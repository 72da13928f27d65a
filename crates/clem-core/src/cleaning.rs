//! Output cleaning for local backends, in clemcore's order: remove the prompt text and strip; keep what follows
//! the last `output_split_prefix`; remove padding tokens; remove every `eos_to_cull` match; then, with
//! `cot_output`, drop every literal `cot_start_tag` and split on the `cot_end_tag` regex.
//!
//! Differences from clemcore, on purpose: an empty `output_split_prefix` is ignored (Python raises on
//! `rsplit("")`), and a missing `eos_to_cull` culls nothing (Python raises `KeyError`).

use serde_json::Value;

use crate::pyregex::{PyRegex, PyRegexError};
use crate::spec::ModelSpec;

/// The cleaning settings of one model, compiled once.
#[derive(Clone, Debug, Default)]
pub struct Cleaner {
    pub output_split_prefix: Option<String>,
    pub eos_to_cull: Option<PyRegex>,
    pub cot: Option<CotTags>,
    /// The tokenizer's pad token, removed when the text starts or ends with it (batch padding).
    pub pad_token: Option<String>,
}

/// Chain-of-thought delimiters.
#[derive(Clone, Debug)]
pub struct CotTags {
    pub start_tag: Option<String>,
    pub end_tag: PyRegex,
}

/// A cleaned reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cleaned {
    pub text: String,
    /// The chain of thought, when the model has `cot_output`.
    pub cot_content: Option<String>,
}

/// A cleaning key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("model_config.{key}: {source}")]
pub struct CleanerError {
    pub key: &'static str,
    #[source]
    pub source: PyRegexError,
}

impl Cleaner {
    /// Reads the cleaning keys of an entry's `model_config`.
    pub fn from_spec(spec: &ModelSpec) -> Result<Cleaner, CleanerError> {
        let regex = |key: &'static str| -> Result<Option<PyRegex>, CleanerError> {
            spec.config_str(key).map(PyRegex::new).transpose().map_err(|source| CleanerError { key, source })
        };
        let cot = if spec.config_flag("cot_output") {
            regex("cot_end_tag")?.map(|end_tag| CotTags {
                start_tag: spec.config_str("cot_start_tag").filter(|s| !s.is_empty()).map(String::from),
                end_tag,
            })
        } else {
            None
        };
        Ok(Cleaner {
            output_split_prefix: spec.config_str("output_split_prefix").filter(|s| !s.is_empty()).map(String::from),
            eos_to_cull: regex("eos_to_cull")?,
            cot,
            pad_token: None,
        })
    }

    /// Cleans a decoded output. `truncate_answer` cuts a CoT answer to `max_tokens` (clemcore re-tokenizes).
    pub fn clean(
        &self,
        decoded_output: &str,
        prompt_text: &str,
        truncate_answer: Option<&dyn Fn(&str) -> String>,
    ) -> Result<Cleaned, PyRegexError> {
        let mut text = if prompt_text.is_empty() {
            py_strip(decoded_output).to_string()
        } else {
            py_strip(&decoded_output.replace(prompt_text, "")).to_string()
        };
        if let Some(prefix) = &self.output_split_prefix {
            if let Some(pos) = text.rfind(prefix.as_str()) {
                text = text[pos + prefix.len()..].to_string();
            }
        }
        if let Some(pad) = self.pad_token.as_deref().filter(|p| !p.is_empty()) {
            if text.starts_with(pad) || text.ends_with(pad) {
                text = text.replace(pad, "");
            }
        }
        if let Some(eos) = &self.eos_to_cull {
            text = eos.remove_all(&text)?;
        }
        let Some(cot) = &self.cot else {
            return Ok(Cleaned { text, cot_content: None });
        };
        if let Some(start) = &cot.start_tag {
            text = text.replace(start.as_str(), "");
        }
        let (cot_content, answer) = match cot.end_tag.split_first_last(&text)? {
            Some((before, after)) => (before.to_string(), after.to_string()),
            None => (text.clone(), String::new()),
        };
        let answer = match truncate_answer {
            Some(cut) => cut(&answer),
            None => answer,
        };
        Ok(Cleaned { text: py_strip(&answer).to_string(), cot_content: Some(cot_content) })
    }
}

/// The `response` object local backends record: `{"response": raw output}` plus `cot_content` when set.
pub fn response_object(raw_output: &str, cleaned: &Cleaned) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("response".into(), Value::String(raw_output.into()));
    if let Some(cot) = &cleaned.cot_content {
        m.insert("cot_content".into(), Value::String(cot.clone()));
    }
    Value::Object(m)
}

/// Python's `str.isspace()` for one character (Rust's `char::is_whitespace` misses U+001C..U+001F).
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no arguments.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}
