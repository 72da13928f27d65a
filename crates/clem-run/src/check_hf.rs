//! clembench's `initial_hf_check.py` on a model's tokenizer files (no weights needed): four test dialogues
//! through the model's chat template with `add_generation_prompt`.
//!
//! 1. proper (user, assistant, user), 2. two user messages in a row (merged as the backends merge them) and
//! 4. a system message must render, else the model does not pass; 3. assistant first only warns.
//!
//! Deviation: clembench's script only warns when a template raises on a system message. clemrs fails it: the
//! backends keep every non-empty system message, so such a model would crash in any game that sets a system
//! prompt. Assistant-first stays a warning (no game starts with the model's own turn); `--strict` fails it too.
//!
//! Deviation: the Python script merges consecutive messages with a space; we merge as clemrs's backends do
//! (`"\n\n"`, clemcore's `ensure_alternating_roles`), since that is what the model will get.

use std::path::PathBuf;

use clem_core::hf::{resolve_model_dir, HfError, TokenizerFiles};
use clem_core::message::{messages_to_json, normalize_messages};
use clem_core::template::{ChatTemplate, RenderOptions};
use clem_core::Message;
use serde_json::Value;

/// The tokenizer files cannot be found or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Hf(#[from] HfError),
}

/// What to show besides the checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOptions {
    /// `-i`: tokenizer information.
    pub tokenizer_info: bool,
    /// `-t`: the chat template source.
    pub show_template: bool,
    /// `--strict`: the warning check (assistant first) must pass too.
    pub strict: bool,
}

/// The outcome: the report text (for stdout) and whether the model passes.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub dir: PathBuf,
    pub text: String,
    pub passes: bool,
    /// Warnings (check 3 failed).
    pub warnings: usize,
}

fn dialogue(first: Message) -> Vec<Message> {
    vec![
        first,
        Message::user("What is your favourite condiment?"),
        Message::assistant("Lard!"),
        Message::user("Do you have mayonnaise recipes?"),
    ]
}

/// Runs the checks on a model folder or a hub id found in the local Hugging Face cache.
pub fn check(dir_or_id: &str, opts: CheckOptions) -> Result<CheckReport, CheckError> {
    let dir = resolve_model_dir(dir_or_id)?;
    let tf = TokenizerFiles::load(&dir)?;
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line(&format!("Model folder: {}", dir.display()));
    line("");
    if opts.tokenizer_info {
        line("Tokenizer info:");
        for l in tokenizer_info(&tf) {
            line(&format!("  {l}"));
        }
        line("");
    }
    let Some(source) = tf.chat_template(None) else {
        line("The tokenizer files have no chat template (no \"chat_template\" in tokenizer_config.json, no chat_template.jinja)!");
        line("");
        line("The model does NOT pass the preliminary chat template checks!");
        return Ok(CheckReport { dir, text: out, passes: false, warnings: 0 });
    };
    if opts.show_template {
        line("Chat template:");
        line(source);
        for (name, t) in tf.chat_templates.iter().filter(|(n, _)| n != "default") {
            line(&format!("Chat template {name:?}:"));
            line(t);
        }
        line("");
    }
    let name = tf.template_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| dir.display().to_string());
    let template = match ChatTemplate::new(source, &name) {
        Ok(t) => t,
        Err(e) => {
            line(&format!("The chat template does not compile: {e}"));
            line("");
            line("The model does NOT pass the preliminary chat template checks!");
            return Ok(CheckReport { dir, text: out, passes: false, warnings: 0 });
        }
    };
    let render_opts = RenderOptions { add_generation_prompt: true, variables: tf.template_variables(), now: None };
    let render = |messages: &[Message]| template.render(&messages_to_json(&normalize_messages(messages)), &render_opts);

    let mut passes = true;
    let mut warnings = 0;
    let proper = vec![
        Message::user("What is your favourite condiment?"),
        Message::assistant("Lard!"),
        Message::user("Do you have mayonnaise recipes?"),
    ];
    match render(&proper) {
        Ok(text) => {
            line("Applied chat template:");
            line(&text);
            line("");
        }
        Err(e) => {
            passes = false;
            line("FAIL: Chat template application on minimal proper messages list failed! Something is wrong with the tokenizer or its config!");
            line(&format!("  {e}"));
        }
    }
    if let Err(e) = render(&dialogue(Message::user("Hello there!"))) {
        passes = false;
        line("FAIL: Chat template application on flattened messages list (two user messages in a row) failed! Something is wrong with the tokenizer or its config!");
        line(&format!("  {e}"));
    }
    if let Err(e) = render(&dialogue(Message::assistant("Hello there!"))) {
        warnings += 1;
        line("WARNING: Chat template application on messages list with assistant first failed! This means this model's tokenizer does not accept first assistant messages. No current clemgame uses this, but be warned.");
        line(&format!("  {e}"));
    }
    if let Err(e) = render(&dialogue(Message::system("You love all kinds of fat."))) {
        passes = false;
        line("FAIL: Chat template application on messages list with system message failed! This model's template does not accept system messages, so any game that sets a system prompt would crash on it. Write a custom_chat_template that handles them.");
        line(&format!("  {e}"));
    }
    line("");
    if opts.strict && warnings > 0 {
        passes = false;
        line("--strict: the warnings above count as failures.");
    }
    if passes {
        line("The model passes the preliminary chat template checks!");
    } else {
        line("The model does NOT pass the preliminary chat template checks!");
    }
    Ok(CheckReport { dir, text: out, passes, warnings })
}

/// What transformers would print about the tokenizer, as far as the files say.
fn tokenizer_info(tf: &TokenizerFiles) -> Vec<String> {
    let mut lines = Vec::new();
    let show = |v: Option<&Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "(not set)".into());
    lines.push(format!("tokenizer_class: {}", show(tf.config.get("tokenizer_class"))));
    for name in clem_core::hf::SPECIAL_TOKEN_NAMES {
        if let Some(tok) = tf.special_token(name) {
            lines.push(format!("{name}: {tok:?}"));
        }
    }
    for key in ["model_max_length", "padding_side", "add_bos_token", "add_eos_token", "clean_up_tokenization_spaces"] {
        if let Some(v) = tf.config.get(key) {
            lines.push(format!("{key}: {v}"));
        }
    }
    if let Some(Value::Object(added)) = tf.config.get("added_tokens_decoder") {
        lines.push(format!("added tokens: {}", added.len()));
    }
    let names: Vec<&str> = tf.chat_templates.iter().map(|(n, _)| n.as_str()).collect();
    lines.push(format!("chat templates: {}", if names.is_empty() { "none".into() } else { names.join(", ") }));
    if let Some(p) = &tf.template_file {
        lines.push(format!("chat template from: {}", p.display()));
    }
    let files: Vec<&str> = ["tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json"]
        .into_iter()
        .filter(|f| tf.dir.join(f).is_file())
        .collect();
    lines.push(format!("tokenizer files: {}", if files.is_empty() { "none".into() } else { files.join(", ") }));
    lines
}
