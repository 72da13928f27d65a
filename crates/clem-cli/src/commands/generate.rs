//! `clem generate -m MODEL [--messages FILE | PROMPT] [-t T] [-l N] [--json]`: one generation from the shell.
//!
//! Prints the reply on stdout, or with `--json` the whole triple `{"prompt", "response", "response_text"}`
//! exactly as a run would record it, plus what clem reads of it: `usage` (`prompt_tokens`,
//! `completion_tokens`, `total_tokens`, `reasoning_tokens` when the provider counts them; `null` when the
//! backend knows none) and `finish_reason` (`stop`, `length` or `null`). `--messages FILE` reads a JSON list of `{"role", "content", "image"?}`
//! (`-` for standard input); a bare PROMPT is one user message.

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
    /// The user message, when no --messages file is given.
    #[arg(value_name = "PROMPT")]
    prompt: Option<String>,
    /// Sampling temperature.
    #[arg(short, long, default_value_t = 0.0)]
    temperature: f64,
    /// The most tokens to generate.
    #[arg(short = 'l', long = "max-tokens", default_value_t = 300)]
    max_tokens: u32,
    /// Print the whole triple (prompt, response, response_text) as JSON instead of the reply.
    #[arg(long)]
    json: bool,
}

fn read_messages(path: &PathBuf) -> anyhow::Result<Vec<Message>> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading messages from standard input")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of {{\"role\", \"content\"}} messages", path.display()))
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let messages = match (&args.messages, &args.prompt) {
        (Some(path), _) => read_messages(path)?,
        (None, Some(prompt)) => vec![Message::user(prompt.clone())],
        (None, None) => bail!("give a PROMPT or --messages FILE"),
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
