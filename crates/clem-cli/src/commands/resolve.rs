//! `clem resolve -m SELECTOR`: the unified spec the selector picks, as pretty JSON on stdout; the picked
//! entry's problems as warnings on stderr (selection is only selection); exit 1 when nothing unifies.

use std::process::ExitCode;

use clem_core::ModelSpec;

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// A model name, or a JSON (or Python dict) object that must unify with an entry.
    #[arg(short, long = "model", value_name = "SELECTOR")]
    model: String,
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let selector = ModelSpec::parse_selector(&args.model)?;
    if selector.is_mock() || selector.is_human() {
        println!("{}", serde_json::to_string_pretty(&clem_backends::resolve(ctx.registry()?, &selector)?)?);
        return Ok(ExitCode::SUCCESS);
    }
    let registry = ctx.registry()?;
    match registry.select(&selector) {
        Ok((spec, entry)) => {
            eprintln!("clem: selected {}", entry.location());
            for p in entry.check(&clem_backends::schemas()) {
                // A problem's text starts with its severity ("warning: ...", "error: ...").
                eprintln!("clem: {p}");
            }
            println!("{}", serde_json::to_string_pretty(&spec)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("clem: error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
