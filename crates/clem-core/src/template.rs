//! Hugging Face chat templates rendered as transformers renders them (jinja2 sandbox, trim_blocks,
//! lstrip_blocks, loopcontrols, `raise_exception`, `strftime_now`, a non-escaping `tojson`, `{% generation %}`).
//!
//! STUB: to be completed (see the template task).

use serde_json::{Map, Value};

/// A compiled chat template.
pub struct ChatTemplate {
    name: String,
    source: String,
}

/// Options for one rendering.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    pub add_generation_prompt: bool,
    /// Special tokens and any other template variables (`bos_token`, `eos_token`, `tools`, ...).
    pub variables: Map<String, Value>,
    /// The clock `strftime_now` reads; `None` for the real clock.
    pub now: Option<chrono::NaiveDateTime>,
}

/// A template that does not compile or failed while rendering.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("chat template of {name}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct TemplateError {
    pub name: String,
    pub line: Option<usize>,
    pub message: String,
}

impl ChatTemplate {
    pub fn new(source: &str, name: &str) -> Result<ChatTemplate, TemplateError> {
        Ok(ChatTemplate { name: name.into(), source: source.into() })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn render(&self, _messages: &Value, _opts: &RenderOptions) -> Result<String, TemplateError> {
        Err(TemplateError { name: self.name.clone(), line: None, message: "not implemented".into() })
    }
}
