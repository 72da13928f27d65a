//! `clem eval [-r RESULTS] [--std] [--sort model_name|clemscore]`: clemcore's results table from every
//! scores.json under the results folder, written as `results.csv` and `results.html` in it (the same columns
//! and numbers as clemcore's `clem eval`).
//!
//! Stdout: the table (a header line, then one line per model: the model, then each column as in
//! results.html, `NaN` where there is no number, then clemrs's `prompt_tokens`, `completion_tokens` and `cost`
//! summed over the run_summary.json files' `usage_by_game`, `-` where unknown), then the two files' paths.
//! The token and cost columns are on stdout only: results.csv and results.html stay clemcore's.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::ValueEnum;
use clem_run::eval::{evaluate, EvalOptions};

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The results root folder; it must hold the scores (clem score).
    #[arg(short, long = "results-dir", alias = "results_dir", default_value = "results")]
    results_dir: PathBuf,
    /// Add each game's Quality Score standard deviation.
    #[arg(long)]
    std: bool,
    /// Row order.
    #[arg(long, value_enum, default_value_t = Sort::ModelName)]
    sort: Sort,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Sort {
    #[value(name = "model_name")]
    ModelName,
    Clemscore,
}

pub fn run(args: Args, _ctx: &Ctx) -> anyhow::Result<ExitCode> {
    if !args.results_dir.is_dir() {
        bail!("{}: no such results folder", args.results_dir.display());
    }
    let opts = EvalOptions { show_std: args.std, sort_by_clemscore: args.sort == Sort::Clemscore };
    let table = evaluate(&args.results_dir, opts)?;
    let (csv, html) = table.write(&args.results_dir)?;

    let (usage, unreadable) = clem_run::usage::totals(&args.results_dir);
    for path in unreadable {
        eprintln!("clem: warning: {}: not read (no tokens or cost from it)", path.display());
    }
    let extra = ["prompt_tokens", "completion_tokens", "cost"].map(String::from);
    let mut lines = vec![std::iter::once("model".to_string())
        .chain(table.columns.iter().cloned())
        .chain(extra)
        .collect::<Vec<_>>()];
    for ((model, _), cells) in table.rows.iter().zip(table.formatted()) {
        let u = usage.get(model);
        let tokens = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
        let cost = u.and_then(|u| u.cost).map_or_else(|| "-".to_string(), |c| format!("${c:.4}"));
        let extra = [tokens(u.map(|u| u.usage.prompt_tokens)), tokens(u.map(|u| u.usage.completion_tokens)), cost];
        lines.push(std::iter::once(model.clone()).chain(cells).chain(extra).collect());
    }
    let widths: Vec<usize> =
        (0..lines[0].len()).map(|j| lines.iter().map(|l| l[j].chars().count()).max().unwrap_or(0)).collect();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(j, c)| if j == 0 { format!("{c:<w$}", w = widths[j]) } else { format!("{c:>w$}", w = widths[j]) })
            .collect();
        println!("{}", cells.join("  "));
    }
    println!("{}", csv.display());
    println!("{}", html.display());
    Ok(ExitCode::SUCCESS)
}
