//! `clem registry check [FILE...]`: every problem of every entry, one per line on stdout, then a summary on
//! stderr; exit 1 when any problem is an error. Without FILEs, the active registries are checked.
//! `clem registry import FILE [-o OUT]`: see `registry_import.rs`.
//!
//! Line format: `error|warning: FILE: entry N (MODEL): KEY: MESSAGE`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use clem_core::registry::{has_errors, Registry};
use clem_core::schema::Severity;

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Check registry files (default: the active registries).
    Check {
        /// Registry files to check instead of the active registries.
        files: Vec<PathBuf>,
        /// Print problems as a JSON list instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Convert an older clemcore registry into one clemrs loads; entries that cannot be converted are listed with
    /// the reason and what would make them work.
    Import {
        /// The clemcore model_registry.json to convert.
        file: PathBuf,
        /// Where to write the converted registry (default: standard output).
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let (files, json) = match args.what {
        What::Check { files, json } => (files, json),
        What::Import { file, output } => return crate::commands::registry_import::run(&file, output.as_deref()),
    };
    let mut unreadable = 0;
    let registry = if files.is_empty() {
        ctx.registry()?
    } else {
        let mut registry = Registry::default();
        for f in &files {
            if let Err(e) = registry.add_file(f) {
                println!("error: {e}");
                unreadable += 1;
            }
        }
        crate::context::keep(registry)
    };
    let problems = registry.check(&clem_backends::schemas());
    if json {
        println!("{}", serde_json::to_string_pretty(&problems)?);
    } else {
        for p in &problems {
            println!("{p}");
        }
    }
    let errors = problems.iter().filter(|p| p.severity == Severity::Error).count();
    let warnings = problems.len() - errors;
    let n_files = registry.sources().len();
    eprintln!(
        "{} entries in {n_files} file{}: {} error{}, {warnings} warning{}{}",
        registry.entries().len(),
        if n_files == 1 { "" } else { "s" },
        errors + unreadable,
        if errors + unreadable == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
        if unreadable > 0 { format!(" ({unreadable} file(s) unreadable)") } else { String::new() },
    );
    Ok(if has_errors(&problems) || unreadable > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
