//! `clem check-hf MODEL_DIR_OR_ID [-i] [-t]`: clembench's `initial_hf_check.py` on a model's tokenizer files.
//!
//! Renders four dialogues through the model's chat template: proper and two-user-messages-in-a-row must
//! work, assistant-first and system-message only warn. The report goes to stdout; exit status 1 when the
//! model does not pass (with `--strict`, also when a warning check fails). MODEL_DIR_OR_ID is a folder or a hub id already in the local Hugging Face cache.

use std::process::ExitCode;

use clem_run::check_hf::{check, CheckOptions};

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// A model folder, or a hub id (org/name) in the local Hugging Face cache.
    #[arg(value_name = "MODEL_DIR_OR_ID")]
    model: String,
    /// Show tokenizer information.
    #[arg(short = 'i', long = "tokenizer-info")]
    tokenizer_info: bool,
    /// Show the chat template source.
    #[arg(short = 't', long = "show-template")]
    show_template: bool,
    /// Fail on the warning checks too (assistant first, system message).
    #[arg(long)]
    strict: bool,
}

pub fn run(args: Args, _ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let report = check(
        &args.model,
        CheckOptions { tokenizer_info: args.tokenizer_info, show_template: args.show_template, strict: args.strict },
    )?;
    print!("{}", report.text);
    Ok(if report.passes { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
