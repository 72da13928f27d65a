//! `clem template`: the prompt a model gets for a conversation, exactly: messages normalised as the backends
//! normalise them, the chat template rendered with `add_generation_prompt`, nothing else on stdout and no
//! newline added.
//!
//! The template is the model's own (`premade_chat_template`: tokenizer_config.json or chat_template.jinja in
//! its folder; for a llamacpp entry the GGUF's `tokenizer.chat_template` metadata, the GGUF found or fetched
//! as `clem generate` finds it) or the entry's `custom_chat_template`, or `--template FILE`. Special tokens come
//! from the model's tokenizer files (a GGUF's vocabulary) when it has them, else from the entry's
//! `bos_string`/`eos_string`, else the flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clem_core::hf::{resolve_model_dir, TokenizerFiles};
use clem_core::message::{messages_to_json, normalize_messages};
use clem_core::template::{ChatTemplate, RenderOptions};
use clem_core::{Message, ModelSpec};
use serde_json::{Map, Value};

use crate::context::Ctx;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["model", "template"])))]
pub struct Args {
    /// The model whose template to use.
    #[arg(short, long, value_name = "SELECTOR")]
    model: Option<String>,
    /// A Jinja template file instead of a model's.
    #[arg(long, value_name = "FILE")]
    template: Option<PathBuf>,
    /// The conversation: a JSON list of {"role", "content"} messages.
    #[arg(long, value_name = "FILE")]
    messages: PathBuf,
    /// BOS token when the model's tokenizer files do not give one.
    #[arg(long, value_name = "S")]
    bos_token: Option<String>,
    /// EOS token when the model's tokenizer files do not give one.
    #[arg(long, value_name = "S")]
    eos_token: Option<String>,
    /// Render without the assistant generation prompt.
    #[arg(long)]
    no_generation_prompt: bool,
    /// The clock `strftime_now` reads, e.g. 2024-05-01T12:00:00 or 2024-05-01.
    #[arg(long, value_name = "ISO-DATETIME", value_parser = parse_now)]
    now: Option<chrono::NaiveDateTime>,
}

fn parse_now(s: &str) -> Result<chrono::NaiveDateTime, String> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_time(chrono::NaiveTime::MIN)))
        .map_err(|_| format!("{s:?} is not an ISO date or datetime like 2024-05-01T12:00:00"))
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.messages).with_context(|| format!("{}", args.messages.display()))?;
    let messages: Vec<Message> = serde_json::from_str(&text).with_context(|| {
        format!("{}: must be a JSON list of {{\"role\": ..., \"content\": ...}} messages", args.messages.display())
    })?;
    let messages = normalize_messages(&messages);

    let (source, name, mut variables) = match (&args.model, &args.template) {
        (_, Some(file)) => {
            let src = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
            (src, file.display().to_string(), Map::new())
        }
        (Some(selector), None) => model_template(selector, ctx)?,
        (None, None) => bail!("give -m MODEL or --template FILE"),
    };
    for (key, flag) in [("bos_token", &args.bos_token), ("eos_token", &args.eos_token)] {
        match (variables.get(key), flag) {
            (None, Some(v)) => {
                variables.insert(key.into(), Value::String(v.clone()));
            }
            (Some(have), Some(v)) if have.as_str() != Some(v) => {
                eprintln!("clem: warning: --{} ignored: the model's tokenizer gives {have}", key.replace('_', "-"))
            }
            _ => {}
        }
    }
    let template = ChatTemplate::new(&source, &name)?;
    let opts = RenderOptions { add_generation_prompt: !args.no_generation_prompt, variables, now: args.now };
    let rendered = template.render(&messages_to_json(&messages), &opts)?;
    print!("{rendered}");
    Ok(ExitCode::SUCCESS)
}

/// The template source, its name for messages, and the special tokens of a registry model.
fn model_template(selector: &str, ctx: &Ctx) -> anyhow::Result<(String, String, Map<String, Value>)> {
    let selector = ModelSpec::parse_selector(selector)?;
    let registry = ctx.registry()?;
    let (spec, _) = registry.select(&selector)?;
    let name = spec.model_name().unwrap_or("?").to_string();
    // A llamacpp entry's template and special tokens are in its GGUF, as the backend renders them (before: such
    // entries failed with "has no chat template", the tokenizer files being looked for beside the GGUF).
    if spec.backend() == Some("llamacpp") {
        let (source, variables) = clem_backends::llamacpp::model::chat_template(&spec, &ctx.load_context()?)?;
        return Ok((source, name, variables));
    }
    let tokenizer = match spec.get_str("huggingface_id").map(resolve_model_dir) {
        Some(Ok(dir)) => Some(TokenizerFiles::load(&dir)?),
        _ => None,
    };
    let mut variables = tokenizer.as_ref().map(TokenizerFiles::template_variables).unwrap_or_default();
    for (key, entry_key) in [("bos_token", "bos_string"), ("eos_token", "eos_string")] {
        if let (false, Some(v)) = (variables.contains_key(key), spec.config_str(entry_key)) {
            variables.insert(key.into(), Value::String(v.into()));
        }
    }
    let premade = spec.config_flag("premade_chat_template");
    let source = if premade {
        let Some(tf) = &tokenizer else {
            bail!(
                "{name}: premade_chat_template is true but its tokenizer files were not found ({}); \
                 download the model or use --template FILE",
                spec.get_str("huggingface_id")
                    .map(|id| format!("huggingface_id {id:?}"))
                    .unwrap_or("no huggingface_id".into())
            );
        };
        tf.chat_template(None)
            .with_context(|| format!("{name}: {} has no chat template", tf.dir.display()))?
            .to_string()
    } else if let Some(custom) = spec.config_str("custom_chat_template") {
        custom.to_string()
    } else {
        bail!("{name}: the entry has neither premade_chat_template true nor a custom_chat_template");
    };
    Ok((source, name, variables))
}
