//! `clem score [-r RESULTS] [-g GAME] [-m MODEL]`: writes scores.json again for every completed episode under
//! the results folder, from its records, with its game's scorer (clemcore's `clem score`); old folders can be
//! rescored after a scorer changed.
//!
//! Stdout: `N episodes scored`. Stderr: episodes that could not be scored (exit status 1), and episodes of
//! games clemrs does not have (clemcore's `clem score` scores those).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clem_run::games::{find_game, names_nearest};
use clem_run::rescore::{rescore, ScoreOptions};

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The results root folder (or a model's or game's folder in it).
    #[arg(short, long = "results-dir", alias = "results_dir", default_value = "results")]
    results_dir: PathBuf,
    /// Only this game (default: every game clemrs plays).
    #[arg(short, long)]
    game: Option<String>,
    /// Only episodes under a folder whose name contains this (a model name).
    #[arg(short, long)]
    model: Option<String>,
}

pub fn run(args: Args, _ctx: &Ctx) -> anyhow::Result<ExitCode> {
    if !args.results_dir.is_dir() {
        bail!("{}: no such results folder", args.results_dir.display());
    }
    if let Some(g) = args.game.as_deref().filter(|g| find_game(g).is_none()) {
        bail!("unknown game {g:?}; clemrs scores: {}", names_nearest(g).join(", "));
    }
    let report = rescore(&args.results_dir, &ScoreOptions { game: args.game, model: args.model });
    for (dir, why) in &report.failed {
        eprintln!("clem: error: {}: not scored: {why}", dir.display());
    }
    if !report.skipped.is_empty() {
        eprintln!("clem: note: {} episode(s) did not complete and were left alone", report.skipped.len());
    }
    for (game, n) in &report.other_games {
        eprintln!(
            "clem: note: {n} episode(s) of {game:?} not scored: clemrs does not have that game (clemcore's `clem score` \
             scores it)"
        );
    }
    println!("{} episodes scored", report.scored.len());
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
