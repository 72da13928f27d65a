//! `clem`: list, check and resolve models, render chat templates, register keys and models.
//!
//! Each subcommand lives in `commands/<name>.rs` with its clap `Args` and a `run` function; adding one is a
//! variant in [`Command`] and an arm in [`main`]. Output on stdout is for scripts and stays stable
//! (documented in the README); diagnostics go to stderr.

mod commands;
mod context;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::context::Ctx;

// The registry and JSON handling allocate many small objects; mimalloc makes start-up and large registries
// noticeably faster than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "clem", version, about = "clemrs: one interface, one registry and one command line for chat LLMs")]
struct Cli {
    /// A model registry file, read before the default ones (repeatable; first has highest priority).
    #[arg(long = "registry", global = true, value_name = "FILE")]
    registries: Vec<PathBuf>,
    /// Read only the --registry files, not ./model_registry.json, ~/.clemcore/model_registry.json nor the packaged
    /// registry.
    #[arg(long, global = true)]
    no_default_registries: bool,
    /// The key file to use instead of ./key.json or ~/.clemcore/key.json.
    #[arg(long, global = true, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Threads for local inference (llamacpp, huggingface_local); default: each backend's own.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List models, backends or keys.
    List(commands::list::Args),
    /// Check registry files.
    Registry(commands::registry::Args),
    /// Show the spec a model selector resolves to.
    Resolve(commands::resolve::Args),
    /// Render a chat template exactly as the model would get it.
    Template(commands::template::Args),
    /// Create or update ./key.json and ./model_registry.json.
    Register(commands::register::Args),
    /// Generate one reply from any model.
    Generate(commands::generate::Args),
    /// Play a game and record it in clembench's results layout.
    Run(commands::run::Args),
    /// Score recorded episodes again (scores.json).
    Score(commands::score::Args),
    /// Build clemcore's results table (clemscore) from scored runs.
    Eval(commands::eval::Args),
    /// Write transcripts of recorded episodes (HTML, and clemcore's LaTeX).
    Transcribe(commands::transcribe::Args),
    /// Check a Hugging Face model's chat template (clembench's initial_hf_check).
    #[command(name = "check-hf")]
    CheckHf(commands::check_hf::Args),
    /// Serve models behind an OpenAI-compatible HTTP API.
    Serve(commands::serve::Args),
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(n) = cli.threads {
        let (usable, lowered) = clem_backends::cpu::clamp_threads(usize::from(n));
        if lowered {
            eprintln!(
                "clem: warning: --threads {n} is more than the {usable} core(s) this process may use; using {usable} \
                 (more threads than cores only slows local inference down)"
            );
            cli.threads = Some(u16::try_from(usable).unwrap_or(u16::MAX));
        }
    }
    if let Some(n) = cli.threads {
        // candle (huggingface_local) sizes its thread pool and matrix splits from RAYON_NUM_THREADS. Set here, while
        // the process has one thread, since the environment cannot be changed safely once others run.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let ctx = Ctx::new(cli.registries, cli.no_default_registries, cli.keys, cli.threads.map(usize::from));
    let result = match cli.command {
        Command::List(args) => commands::list::run(args, &ctx),
        Command::Registry(args) => commands::registry::run(args, &ctx),
        Command::Resolve(args) => commands::resolve::run(args, &ctx),
        Command::Template(args) => commands::template::run(args, &ctx),
        Command::Register(args) => commands::register::run(args, &ctx),
        Command::Generate(args) => commands::generate::run(args, &ctx),
        Command::Run(args) => commands::run::run(args, &ctx),
        Command::Score(args) => commands::score::run(args, &ctx),
        Command::Eval(args) => commands::eval::run(args, &ctx),
        Command::Transcribe(args) => commands::transcribe::run(args, &ctx),
        Command::CheckHf(args) => commands::check_hf::run(args, &ctx),
        Command::Serve(args) => commands::serve::run(args, &ctx),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clem: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
