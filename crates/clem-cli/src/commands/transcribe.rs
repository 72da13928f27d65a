//! `clem transcribe -r RESULTS`: writes a self-contained `transcript.html` and clemcore's `transcript.tex`
//! into every instance folder under the results root, and an `index.html` at the root.
//!
//! Stdout: the index path, then `N transcripts`. Folders whose records cannot be read are named on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The results root folder.
    #[arg(short, long = "results-dir", alias = "results_dir", default_value = "results")]
    results_dir: PathBuf,
}

pub fn run(args: Args, _ctx: &Ctx) -> anyhow::Result<ExitCode> {
    if !args.results_dir.is_dir() {
        bail!("{}: no such results folder", args.results_dir.display());
    }
    let report = clem_run::transcript::transcribe(&args.results_dir)?;
    for (dir, why) in &report.skipped {
        eprintln!("clem: warning: {}: not transcribed: {why}", dir.display());
    }
    for (dir, why) in &report.tex_skipped {
        eprintln!("clem: warning: {}: no transcript.tex: {why}", dir.display());
    }
    if report.written.is_empty() {
        eprintln!("clem: warning: no interactions.json under {}", args.results_dir.display());
    }
    println!("{}", report.index.display());
    println!("{} transcripts", report.written.len());
    Ok(ExitCode::SUCCESS)
}
