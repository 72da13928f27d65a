//! `clem`: list, check and resolve models, render chat templates, register keys and models.
//!
//! Each subcommand lives in `commands/<name>.rs` with its clap `Args` and a `run` function; adding one is a
//! variant in [`Command`] and an arm in [`main`]. Output on stdout is for scripts and stays stable
//! (documented in the README); diagnostics go to stderr.

mod commands;
mod context;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::context::Ctx;

// The registry and JSON handling allocate many small objects; mimalloc makes start-up and large registries
// noticeably faster than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "clem", version, about = "clemrs: one interface, one registry and one command line for chat LLMs")]
struct Cli {
    /// A model registry file, read before the default ones (repeatable; first has highest priority).
    #[arg(long = "registry", global = true, value_name = "FILE", help_heading = "Global options")]
    registries: Vec<PathBuf>,
    /// Read only the --registry files, not ./model_registry.json, ~/.clemcore/model_registry.json nor the packaged
    /// registry.
    #[arg(long, global = true, help_heading = "Global options")]
    no_default_registries: bool,
    /// The key file to use instead of ./key.json or ~/.clemcore/key.json.
    #[arg(long, global = true, value_name = "FILE", help_heading = "Global options")]
    keys: Option<PathBuf>,
    /// Threads for local inference (llamacpp, huggingface_local); default: each backend's own.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..), help_heading = "Global options")]
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

/// The command line. The global options are shown once, in `clem --help`: clap copies `global = true` arguments
/// into every subcommand, help included, so each subcommand's help repeated all four. There they are hidden
/// (they still parse anywhere) and a line points to `clem --help`.
fn command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    let globals: Vec<clap::Id> =
        cmd.get_arguments().filter(|a| a.is_global_set()).map(|a| a.get_id().clone()).collect();
    let names: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let note = format!("Global options ({}) are described in `clem --help`.", names.join(", "));
    hide_in_subcommands(&mut cmd, &globals, &note);
    cmd
}

fn hide_in_subcommands(cmd: &mut clap::Command, globals: &[clap::Id], note: &str) {
    for sub in cmd.get_subcommands_mut() {
        let mut s = std::mem::replace(sub, clap::Command::new("placeholder"));
        // In place: `mut_arg` re-inserts the argument, which a built command's index does not follow.
        s = s.mut_args(|a| if globals.contains(a.get_id()) { a.hide(true) } else { a });
        s = s.after_help(note.to_string());
        hide_in_subcommands(&mut s, globals, note);
        *sub = s;
    }
}

/// Says that `asked` (a flag or variable and its value) was lowered to the `usable` cores.
fn warn_threads_lowered(asked: &str, usable: usize) {
    eprintln!(
        "clem: warning: {asked} is more than the {usable} core(s) this process may use; using {usable} (more threads \
         than cores only slows local inference down)"
    );
}

/// `RAYON_NUM_THREADS` (huggingface_local's pool without `--threads`) above the usable cores is lowered as
/// `--threads` is, with a warning: rayon's workers beyond the cores only take them from the thread doing the work
/// (bench/threads: 7-10% slower at 4x the cores). Runs while the process has one thread (see below).
fn clamp_rayon_threads() {
    let Some(n) = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok()) else {
        return;
    };
    // 0 is rayon's "all cores".
    let (usable, lowered) = clem_backends::cpu::clamp_threads(n);
    if n > 0 && lowered {
        warn_threads_lowered(&format!("RAYON_NUM_THREADS={n}"), usable);
        std::env::set_var("RAYON_NUM_THREADS", usable.to_string());
    }
}

fn main() -> ExitCode {
    let mut cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(n) = cli.threads {
        let (usable, lowered) = clem_backends::cpu::clamp_threads(usize::from(n));
        if lowered {
            warn_threads_lowered(&format!("--threads {n}"), usable);
            cli.threads = Some(u16::try_from(usable).unwrap_or(u16::MAX));
        }
    }
    if cli.threads.is_none() {
        clamp_rayon_threads();
    }
    if let Some(n) = cli.threads {
        // candle (huggingface_local) sizes its thread pool and matrix splits from RAYON_NUM_THREADS. Set here, while
        // the process has one thread, since the environment cannot be changed safely once others run.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if !matches!(cli.command, Command::Serve(_)) {
        die_quietly_on_closed_stdout();
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
            eprintln!("clem: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so printing to a pipe whose reader left (`clem list models | head -1`) panicked in
/// `println!`. A command-line tool should end quietly there, as `cat` does: SIGPIPE's default action. Not for
/// `clem serve`, whose peers leave all the time (its sockets never raise SIGPIPE, but pipes to children could).
fn die_quietly_on_closed_stdout() {
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An error and its causes joined by ": ", as `{:#}` does, but a cause is not repeated when the message before it
/// already ends with it (errors that print their source, e.g. `cannot read: Not a directory (os error 20)`).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.is_empty() && out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every (sub)command, `(command path, argument id)`.
    fn all_arguments(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, bool)>) {
        for a in cmd.get_arguments() {
            out.push((path.to_string(), a.get_id().to_string(), a.get_help().is_some() || a.get_long_help().is_some()));
        }
        for sub in cmd.get_subcommands() {
            all_arguments(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    /// Walks clap's tree: every argument says what it is (before: `--set`, NAME, SECTION, FILES had no text).
    #[test]
    fn every_argument_has_a_description() {
        let cmd = command();
        cmd.clone().debug_assert();
        let mut args = Vec::new();
        all_arguments(&cmd, "clem", &mut args);
        assert!(args.len() > 40, "the walk found only {} arguments", args.len());
        let bare: Vec<String> = args.iter().filter(|(_, _, ok)| !ok).map(|(p, id, _)| format!("{p}: {id}")).collect();
        assert!(bare.is_empty(), "arguments without help text:\n{}", bare.join("\n"));
    }

    /// The global options are in `clem --help` and hidden in subcommands' help, yet accepted after them.
    #[test]
    fn global_options_are_shown_once() {
        let mut cmd = command();
        let top = cmd.render_help().to_string();
        assert!(top.contains("Read only the --registry files"), "{top}");
        let mut list = command();
        let sub = list.find_subcommand_mut("list").expect("list");
        let models = sub.find_subcommand_mut("models").expect("models");
        let help = models.render_help().to_string();
        assert!(!help.contains("Read only the --registry files") && help.contains("clem --help"), "{help}");
        let m = command().try_get_matches_from(["clem", "list", "models", "--no-default-registries"]);
        let cli = Cli::from_arg_matches(&m.expect("parses")).expect("cli");
        assert!(cli.no_default_registries);
    }
}
