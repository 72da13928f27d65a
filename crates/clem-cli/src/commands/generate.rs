//! `clem generate -m MODEL [--messages FILE | PROMPT] [-t T] [-l N] [--json]`: one generation from the shell.
//!
//! Prints the reply on stdout, or with `--json` the whole triple `{"prompt", "response", "response_text"}`
//! exactly as a run would record it, plus what clem reads of it: `usage` (`prompt_tokens`,
//! `completion_tokens`, `total_tokens`, `reasoning_tokens` when the provider counts them; `null` when the
//! backend knows none) and `finish_reason` (`stop`, `length` or `null`). `--messages FILE` reads a JSON list of `{"role", "content", "image"?}`
//! (`-` for standard input); a bare PROMPT is one user message; without either, a prompt piped on standard input
//! is (`echo hi | clem generate -m X`). An empty list of messages is refused.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clem_core::{GenArgs, Message, ModelSpec};
use serde_json::json;

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// A model name, or a JSON (or Python dict) object that must unify with an entry.
    #[arg(short, long = "model", value_name = "SELECTOR")]
    model: String,
    /// A JSON file with the list of messages (`-` for standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    messages: Option<PathBuf>,
    /// The user message, when no --messages file is given (else read from standard input when it is not a
    /// terminal).
    #[arg(value_name = "PROMPT")]
    prompt: Option<String>,
    /// Sampling temperature.
    #[arg(short, long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f64,
    /// The most tokens to generate (at least 1).
    #[arg(short = 'l', long = "max-tokens", default_value_t = 300, allow_negative_numbers = true,
          value_parser = parse_max_tokens)]
    max_tokens: u32,
    /// Print the whole triple (prompt, response, response_text) as JSON instead of the reply.
    #[arg(long)]
    json: bool,
}

/// `-l N`: a whole number of at least 1 (clap's own message for `-l -5` suggested `-- -5`).
fn parse_max_tokens(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= 1 => u32::try_from(n).map_err(|_| format!("{n} is more than {}", u32::MAX)),
        Ok(n) => Err(format!("{n} is not a token count: give a whole number of at least 1")),
        Err(_) => Err(format!("{s:?} is not a token count: give a whole number of at least 1")),
    }
}

/// The prompt piped on standard input, when it is not a terminal.
fn prompt_from_stdin() -> anyhow::Result<Option<String>> {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("reading the prompt from standard input")?;
    let prompt = s.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&s);
    if prompt.trim().is_empty() {
        bail!("no prompt: standard input was empty; give a PROMPT or --messages FILE");
    }
    Ok(Some(prompt.to_string()))
}

fn read_messages(path: &PathBuf) -> anyhow::Result<Vec<Message>> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading messages from standard input")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let messages: Vec<Message> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of {{\"role\", \"content\"}} messages", path.display()))?;
    if messages.is_empty() {
        bail!("{}: the list of messages is empty; give at least one {{\"role\", \"content\"}} message", path.display());
    }
    Ok(messages)
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let messages = match (&args.messages, &args.prompt) {
        (Some(path), _) => read_messages(path)?,
        (None, Some(prompt)) => vec![Message::user(prompt.clone())],
        (None, None) => match prompt_from_stdin()? {
            Some(prompt) => vec![Message::user(prompt)],
            None => bail!("give a PROMPT or --messages FILE (or pipe the prompt on standard input)"),
        },
    };
    if !args.temperature.is_finite() || args.temperature < 0.0 {
        bail!("--temperature must be a number of at least 0");
    }
    let selector = ModelSpec::parse_selector(&args.model)?;
    let load = ctx.load_context()?;
    let model = clem_backends::load_model(ctx.registry()?, &selector, &load)?;
    let generation = model.generate_response(&messages, &GenArgs::new(args.temperature, args.max_tokens))?;
    if args.json {
        let triple = json!({
            "prompt": generation.prompt,
            "response": generation.response,
            "response_text": generation.response_text,
            "usage": generation.usage,
            "finish_reason": generation.finish_reason,
        });
        println!("{}", serde_json::to_string_pretty(&triple)?);
    } else {
        println!("{}", generation.response_text);
    }
    Ok(ExitCode::SUCCESS)
}
